"""Compiled fp32 (``compiled``) and CUDA graphs of the reduced-precision engine (``cuda_graphs``).

``compiled`` on the CPU: inductor with freezing, channels_last, an AOTInductor package
per batch size cached on disk (inductor.py says why not ``torch.compile`` there).
On CUDA: ``torch.compile`` with max-autotune (option ``compiled.mode``), channels_last,
static shapes per batch size (autotuning and CUDA graphs want them); inductor's FX graph
and autotuning caches carry across processes there, since no oneDNN tensors are involved.
Compilation happens in the build, with its time in ``info["compile_s"]``.

``cuda_graphs``: the fp16 or bf16 eager engine (whichever replays faster, or the one
``cuda_graphs.dtype`` names) captured in one CUDA graph per static batch size. A call
copies the host batch into the static input buffer, replays, and copies the logits out.
"""

from __future__ import annotations

import time

import torch

from densenet_opt.errors import UserError
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.values import one_of
from densenet_opt.variants import BuildContext, Engine, Variant, VariantOption
from densenet_opt.variants.inductor import BATCH_OPTION, PackageEngine, batch_shape, load_or_compile
from densenet_opt.variants.precision import DTYPES, check_cuda_dtype, cuda_model
from densenet_opt.variants.torch_engine import TorchEngine, state_dict_bytes

COMPILED = "compiled"
CUDA_GRAPHS = "cuda_graphs"
DEFAULT_CUDA_MODE = "max-autotune"
# Replays timed per dtype when cuda_graphs picks the faster of fp16 and bf16.
SELECTION_REPLAYS = 20


def compile_modes() -> tuple[str, ...]:
    """torch.compile's modes in this torch ("lite" is not one of torch.compile's)."""
    return tuple(mode for mode in torch._inductor.list_mode_options() if mode != "lite")


def parse_compile_mode(text: str) -> str:
    """One of compile_modes(); ValueError naming them otherwise."""
    return one_of(compile_modes())(text)


MODE_OPTION = VariantOption(
    "mode", parse_compile_mode, DEFAULT_CUDA_MODE,
    "torch.compile mode on CUDA (default, reduce-overhead, max-autotune, ...); not on the CPU",
)
DTYPE_OPTION = VariantOption.choice(
    "dtype", ("auto", *DTYPES), "auto", "dtype of the captured engine; auto: whichever of fp16 and bf16 replays faster",
)


def compile_mode(ctx: BuildContext) -> str:
    """The ``compiled.mode`` to compile with on CUDA; UserError when it is given for a CPU
    sweep, where compiled is an AOTInductor package and takes no mode."""
    if ctx.device.type != "cuda" and (key := ctx.option_key(MODE_OPTION.name)) is not None:
        raise UserError(
            f"--variant-options {key} applies on CUDA only (on the CPU, compiled is an AOTInductor "
            "package with freezing): drop the option or use --device cuda"
        )
    return ctx.option(MODE_OPTION.name)


def build_compiled(ctx: BuildContext) -> Engine:
    """fp32 inductor: on CUDA torch.compile (compiled and autotuned here, in the build),
    on the CPU a cached AOTInductor package with freezing. Raises UserError for an
    option that does not apply, VariantUnavailable without a C++ compiler to build a
    package."""
    mode = compile_mode(ctx)
    if ctx.device.type == "cuda":
        return build_compiled_cuda(ctx, mode)

    shape = batch_shape(ctx)

    def export() -> torch.export.ExportedProgram:
        return shape.export(ctx.reference_model().eval().to(memory_format=torch.channels_last))

    runner, package = load_or_compile(ctx, COMPILED, shape, {"dtype": "fp32"}, export, inductor_configs={"freezing": True})
    info = {"backend": "aotinductor+onednn", "freezing": "on", "layout": "channels_last"}
    return PackageEngine(runner, package, dtype=torch.float32, info=info)


def build_compiled_cuda(ctx: BuildContext, mode: str) -> Engine:
    """torch.compile(mode, static shapes) of the channels_last fp32 model on ``ctx.device``,
    compiled, and its CUDA graphs recorded, before it is returned; info["compile_s"] in seconds."""
    model = ctx.reference_model().to(ctx.device, memory_format=torch.channels_last).eval()
    size = state_dict_bytes(model)
    # Static shapes: one compiled graph per batch size, so that autotuning and CUDA graphs
    # see the real shape, and a second engine in this process cannot turn dynamic.
    compiled = torch.compile(model, mode=mode, dynamic=False)
    engine = TorchEngine(
        compiled, ctx.device, model_size_bytes=size, channels_last=True,
        info={"backend": "torch.compile+inductor", "mode": mode, "layout": "channels_last"},
    )
    ctx.progress(f"{COMPILED}: torch.compile mode={mode} for batch {ctx.batch_size} (minutes with max-autotune)")
    batch = torch.zeros(ctx.batch_size, *IMAGE_SHAPE)
    started = time.perf_counter()
    engine(batch)  # compiles (and autotunes)
    engine.info["compile_s"] = f"{time.perf_counter() - started:.1f}"
    # CUDA graph trees warm up on the next call and record on the one after: not in a timed round.
    engine(batch)
    engine(batch)
    return engine


class CudaGraphEngine:
    """One captured inference of ``model`` (already in ``dtype``, channels_last, on
    ``device``) for one static batch size: a host batch [batch_size,3,224,224] in (any
    float dtype), host float32 logits [batch_size,1000] out; ValueError for another shape."""

    def __init__(self, model: torch.nn.Module, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.batch_size = batch_size
        self.static_input = torch.zeros(batch_size, *IMAGE_SHAPE, device=device)
        self.stream = torch.cuda.Stream(device)
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            with torch.no_grad():
                # Warm up on a side stream, as capture requires; cuDNN picks its algorithms here.
                self.stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(self.stream):
                    for _ in range(3):
                        self._forward(dtype)
                torch.cuda.current_stream(device).wait_stream(self.stream)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    # The dtype and layout conversion of the input is part of the graph.
                    self.static_output = self._forward(dtype).float()
        finally:
            torch.backends.cudnn.benchmark = previous
        torch.cuda.synchronize(device)

    def _forward(self, dtype: torch.dtype) -> torch.Tensor:
        return self.model(self.static_input.to(dtype=dtype, memory_format=torch.channels_last))

    def replay_ms(self, replays: int) -> float:
        """Mean milliseconds of one replay over ``replays`` back-to-back replays (CUDA events)."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            self.graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / replays

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape != self.static_input.shape:
            raise ValueError(
                f"this CUDA graph was captured for input {tuple(self.static_input.shape)}, got {tuple(batch.shape)}"
            )
        self.static_input.copy_(batch, non_blocking=True)
        self.graph.replay()
        return self.static_output.cpu()  # a fresh host tensor; waits for the replay

    def close(self) -> None:
        self.graph = self.model = self.static_input = self.static_output = None  # type: ignore[assignment]
        torch.cuda.empty_cache()


class CapturedEngine:
    """A CudaGraphEngine plus the Engine protocol's size and info."""

    def __init__(self, graph: CudaGraphEngine, model_size_bytes: int, info: dict[str, str]) -> None:
        self.graph = graph
        self.model_size_bytes = model_size_bytes
        self.info = info

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.graph(batch)

    def close(self) -> None:
        self.graph.close()


def build_cuda_graphs(ctx: BuildContext) -> Engine:
    """The fp16 or bf16 eager engine captured in a CUDA graph for ``ctx.batch_size``: the
    one ``cuda_graphs.dtype`` names, or (auto) the faster replay of the two (fp16 alone
    without native bf16). VariantUnavailable for bf16 without native support."""
    choice = ctx.option(DTYPE_OPTION.name)
    names = [name for name in DTYPES if choice in ("auto", name)]
    if choice == "auto" and not torch.cuda.is_bf16_supported(including_emulation=False):
        names = ["fp16"]
    info: dict[str, str] = {"layout": "channels_last", "cudnn_benchmark": "on"}
    best: tuple[float, str, CudaGraphEngine, int] | None = None
    started = time.perf_counter()
    for name in names:
        check_cuda_dtype(CUDA_GRAPHS, DTYPES[name], ctx.device)
        engine = CudaGraphEngine(cuda_model(ctx, DTYPES[name]), ctx.batch_size, ctx.device, DTYPES[name])
        replay_ms = engine.replay_ms(SELECTION_REPLAYS)
        info[f"{name}_replay_ms"] = f"{replay_ms:.3f}"
        if best is None or replay_ms < best[0]:
            if best is not None:
                best[2].close()
            best = (replay_ms, name, engine, state_dict_bytes(engine.model))
        else:
            engine.close()
    assert best is not None  # names is never empty
    _, name, engine, size = best
    info.update(dtype=name, selected="fastest replay" if choice == "auto" else "option", capture_s=f"{time.perf_counter() - started:.1f}")
    return CapturedEngine(engine, size, info)


VARIANTS = [
    Variant(COMPILED, "fp32 inductor, channels_last: CPU AOTInductor package with freezing, "
            "CUDA torch.compile max-autotune", build_compiled, options=(MODE_OPTION, BATCH_OPTION)),
    Variant(CUDA_GRAPHS, "fp16/bf16 eager engine (faster replay) captured in a CUDA graph per batch size",
            build_cuda_graphs, devices=("cuda",), options=(DTYPE_OPTION,)),
]
