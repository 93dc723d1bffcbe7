"""ONNX Runtime variants: ``onnx`` (fp32), ``onnx_fp16`` and ``onnx_int8``.

The model is exported once (onnx_export.py) and cached on disk with the fp16 and int8
models derived from it (onnx_quantize.py); an engine is an InferenceSession around one of
them, timed across the same boundary as every engine: host batch in, host float32 logits out.

Execution provider. By default the best one onnxruntime.get_available_providers() offers
for the sweep's device: on CUDA TensorRT, then CUDA; on the CPU the CPU provider.
``--variant-options onnx.provider=tensorrt|cuda|cpu`` forces one for all three variants,
``onnx_int8.provider=...`` (likewise onnx_fp16) for one; a forced provider that is not
installed is an error naming what is. engine_info records the provider the session
really uses (onnxruntime falls back when TensorRT or CUDA fails to start; a forced or
int8 TensorRT session that fell back is not run).

- onnx: fp32 on any provider. TF32 is off on the CUDA provider so the numbers stay fp32;
  TensorRT allows TF32 for fp32 layers by default and ORT has no option to stop it, so on
  TensorRT expect a relative error near 1e-3 (``onnx.provider=cuda`` for strict fp32).
- onnx_fp16: the float16 model (inputs and outputs stay float32, cast on the device at
  each end) on the CUDA or TensorRT provider; skipped on the CPU, whose provider has no
  fast float16 path on x86: it runs the model with a cast around most kernels, about
  1.4x slower than fp32 on this 2-core Zen 4 (agreement 100%, relative error 0.0037 on
  64 synthetic images there, which is what float16 itself costs).
- onnx_int8: static QDQ int8 (see onnx_quantize.py). On a CUDA machine with the TensorRT
  provider it runs on TensorRT's int8 path (explicit quantization); without TensorRT it
  runs on the CPU provider, and engine_info says so: the CUDA provider has no int8
  convolutions, so it would only dequantize back to float.

Session settings (write these in the README):

- graph_optimization_level ORT_ENABLE_ALL everywhere. On the CPU it adds the NCHWc/NHWC
  layout transforms (int8 ran 1.8x slower with ORT_ENABLE_EXTENDED on this machine) and
  fuses each Q/DQ pair around a conv into QLinearConv; cpu_graph_op_counts() below shows
  the graphs it produces.
- CPU provider: intra_op_num_threads = the physical cores this process may run on
  (``onnx.threads=N`` overrides), inter_op_num_threads 1 and sequential execution (a
  CNN is a chain: parallel branches buy nothing), ORT's CPU memory arena and memory
  pattern on (defaults).
- CUDA provider: cudnn_conv_algo_search EXHAUSTIVE (benchmarks every conv algorithm on
  the first run of a shape; the engine does that run while it is built, never in a timed
  call), cudnn_conv_use_max_workspace 1, do_copy_in_default_stream 1, and
  arena_extend_strategy kSameAsRequested: ORT's default, kNextPowerOfTwo, grows the
  device arena to the next power of two, which NVML's per-process figure (our VRAM
  column) would report as used memory although the model never touches it.
- TensorRT provider: an optimization profile from batch 1 to the engine's batch size
  (optimal at that size), engine caches under ``<cache_dir>/tensorrt/batch<N>`` and a
  shared timing cache (the first build of an engine takes minutes; later sessions,
  the probe's included, load it), fp16 on for onnx_fp16,
  int8 and fp16 on for onnx_int8 (a QDQ model needs the int8 flag; fp16 lets the layers
  left unquantized run in half precision).
- On CUDA an IOBinding binds preallocated device buffers, one pair per batch shape: a
  call is one host-to-device copy of the batch (pinned by the sweep), the run, and one
  device-to-host copy of the logits into a new host array; nothing else is copied or
  allocated per call. On the CPU the session reads the batch's memory in place.

VRAM. ORT allocates device memory outside torch, so torch's counters see none of it: the
probe's NVML per-process figure is the one that counts for these engines (it includes
the CUDA context, cuDNN/cuBLAS workspaces, ORT's arena and TensorRT's engine memory).
RAM: ORT's CPU arena keeps the memory of its peak allocation for reuse; the RAM column
(peak resident memory during inference) counts that peak either way.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

from densenet_opt.config import parse_positive_int
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.variants import BuildContext, Engine, Variant
from densenet_opt.variants.onnx_export import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, Artifact, fp16_artifact, fp32_artifact

ONNX, ONNX_FP16, ONNX_INT8 = "onnx", "onnx_fp16", "onnx_int8"
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PREFERENCE = ("tensorrt", "cuda")
OPTION_KEYS = ("provider", "threads")
INSTALL_HINT = "pip install -e .[cpu] (or .[gpu] for the CUDA and TensorRT providers)"


def import_onnxruntime():
    """onnxruntime is an extra: without it the variants are skipped, saying what to install."""
    try:
        import onnxruntime
    except ImportError:
        raise VariantUnavailable(f"onnxruntime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


@dataclass(frozen=True)
class Settings:
    provider: str | None  # a key of PROVIDERS, or None to choose the best available
    threads: int  # intra-op threads of the CPU provider
    provider_key: str  # the option that set the provider, for messages


def default_threads() -> int:
    """Physical cores this process may run on: hyperthreads add little to conv kernels."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(psutil.cpu_count(logical=False) or allowed, allowed))


def settings(variant: str, options: Mapping[str, str]) -> Settings:
    """``<variant>.<key>`` wins over ``onnx.<key>``, which applies to all three variants."""
    for key in options:
        prefix, _, name = key.partition(".")
        if prefix in (ONNX, ONNX_FP16, ONNX_INT8) and name not in OPTION_KEYS:
            raise UserError(
                f"unknown variant option {key!r}: the ONNX Runtime variants take "
                f"{', '.join(f'{prefix}.{k}' for k in OPTION_KEYS)}"
            )

    def lookup(name: str) -> tuple[str, str] | None:
        for key in (f"{variant}.{name}", f"{ONNX}.{name}"):
            if key in options:
                return key, options[key].strip()
        return None

    provider, provider_key = None, f"{variant}.provider"
    if found := lookup("provider"):
        provider_key, value = found
        provider = value.lower()
        if provider == "auto":
            provider = None
        elif provider not in PROVIDERS:
            raise UserError(f"{provider_key}={value} is not a provider: choose auto, {', '.join(PROVIDERS)}")
    threads = default_threads()
    if found := lookup("threads"):
        threads = parse_positive_int(found[0], found[1])
    return Settings(provider, threads, provider_key)


def choose_provider(setting: Settings, device_type: str, available: list[str]) -> str:
    """The provider to run on: the forced one if installed, else the best for the device."""
    if setting.provider is not None:
        name = PROVIDERS[setting.provider]
        if name not in available:
            install = "onnxruntime-gpu (pip install -e .[gpu])" + (" and TensorRT" if setting.provider == "tensorrt" else "")
            raise UserError(
                f"{setting.provider_key}={setting.provider} asks for {name}, but the installed onnxruntime "
                f"offers only {', '.join(available)}: install {install} or choose one of those"
            )
        if setting.provider != "cpu" and device_type != "cuda":
            raise UserError(
                f"{setting.provider_key}={setting.provider} runs on the GPU but this sweep runs on "
                f"--device {device_type}: pass --device cuda, or drop the option"
            )
        return setting.provider
    if device_type != "cuda":
        return "cpu"
    for alias in GPU_PREFERENCE:
        if PROVIDERS[alias] in available:
            return alias
    raise VariantUnavailable(
        f"the installed onnxruntime offers no GPU provider (only {', '.join(available)}): "
        "pip install -e .[gpu], or pass onnx.provider=cpu to run it on the CPU"
    )


def session_options(ort, provider: str, threads: int):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if provider == "cpu":
        options.intra_op_num_threads = threads
    return options


def provider_entries(
    provider: str, *, precision: str, batch_size: int, device_id: int, cache_dir: Path,
) -> list[tuple[str, dict[str, object]]]:
    """(name, options) pairs in priority order for InferenceSession(providers=...)."""
    cpu = (PROVIDERS["cpu"], {})
    if provider == "cpu":
        return [cpu]
    cuda = (
        PROVIDERS["cuda"],
        {
            "device_id": str(device_id),
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "cudnn_conv_use_max_workspace": "1",
            "do_copy_in_default_stream": "1",
            "arena_extend_strategy": "kSameAsRequested",
            # Off for fp32 so that `onnx` stays fp32; it changes nothing for float16 kernels.
            "use_tf32": "0",
        },
    )
    if provider == "cuda":
        return [cuda, cpu]
    timings = cache_dir / "tensorrt"
    # ORT keeps one engine per model in a folder and rebuilds it when the profile changes:
    # a folder per batch size keeps the engines of a sweep's batch sizes from evicting each other.
    engines = timings / f"batch{batch_size}"
    engines.mkdir(parents=True, exist_ok=True)
    shape = "x".join(map(str, IMAGE_SHAPE))
    tensorrt = (
        PROVIDERS["tensorrt"],
        {
            # TensorRT's boolean options must be the strings True/False: bools are passed as str().
            "device_id": str(device_id),
            "trt_fp16_enable": precision in ("fp16", "int8"),
            "trt_int8_enable": precision == "int8",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(timings),
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x{shape}",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:{batch_size}x{shape}",
            "trt_profile_max_shapes": f"{INPUT_NAME}:{batch_size}x{shape}",
        },
    )
    return [tensorrt, cuda, cpu]


class DeviceIO:
    """IOBinding with preallocated device buffers, one input/output pair per batch shape.

    A call copies the host batch into the bound input once, runs, and copies the logits
    once into a fresh host array (a caller may keep it while later calls run).
    """

    def __init__(self, session, ort, device_type: str, device_id: int) -> None:
        self.session = session
        self.ort = ort
        self.device_type = device_type
        self.device_id = device_id
        self.binding = session.io_binding()
        self.buffers: dict[tuple[int, ...], tuple[object, object]] = {}
        self.bound_shape: tuple[int, ...] | None = None
        self.num_classes = int(session.get_outputs()[0].shape[1])

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        shape = tuple(batch.shape)
        if shape not in self.buffers:
            allocate = self.ort.OrtValue.ortvalue_from_shape_and_type
            self.buffers[shape] = (
                allocate(list(shape), np.float32, self.device_type, self.device_id),
                allocate([shape[0], self.num_classes], np.float32, self.device_type, self.device_id),
            )
        inputs, outputs = self.buffers[shape]
        if shape != self.bound_shape:
            self.binding.bind_ortvalue_input(INPUT_NAME, inputs)
            self.binding.bind_ortvalue_output(OUTPUT_NAME, outputs)
            self.bound_shape = shape
        inputs.update_inplace(batch)
        # Ordering between the copy and ORT's compute stream is not ours to assume.
        self.binding.synchronize_inputs()
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()
        logits = outputs.numpy()  # from the device: the one device-to-host copy, into a new array
        # From a CPU buffer numpy() is a view of the bound output, which the next call overwrites.
        return torch.from_numpy(logits.copy() if self.device_type == "cpu" else logits)


class OrtEngine:
    """An InferenceSession as an engine: host float32 batch in, host float32 logits out."""

    def __init__(self, session, *, io: DeviceIO | None, model_size_bytes: int, info: dict[str, str]) -> None:
        self.session = session
        self.io = io
        self.model_size_bytes = model_size_bytes
        self.info = info

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        images = batch.to(torch.float32).contiguous().numpy()
        if self.io is not None:
            return self.io(images)
        # On the CPU the session reads the numpy buffer in place: no copy to make.
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0])

    def close(self) -> None:
        self.io = None
        self.session = None


def cuda_device_id(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def open_engine(
    ctx: BuildContext,
    artifact: Artifact,
    *,
    provider: str,
    setting: Settings,
    precision: str,
    strict: bool,
    info: dict[str, str],
) -> OrtEngine:
    """Create the session, check the provider it really got, and run it once so that
    first-run work (TensorRT engine build, cuDNN algorithm search) is done before timing.

    ``strict``: a session that onnxruntime moved to a fallback provider is not run.
    """
    ort = import_onnxruntime()
    device_id = cuda_device_id(ctx.device) if provider != "cpu" else 0
    entries = provider_entries(
        provider, precision=precision, batch_size=ctx.batch_size, device_id=device_id, cache_dir=ctx.cache_dir
    )
    started = time.perf_counter()
    session = ort.InferenceSession(
        str(artifact.path),
        session_options(ort, provider, setting.threads),
        providers=[name for name, _ in entries],
        provider_options=[options for _, options in entries],
    )
    session_s = time.perf_counter() - started
    wanted, used = PROVIDERS[provider], session.get_providers()[0]
    if used != wanted:
        message = f"{wanted} failed to start (onnxruntime fell back to {used}; its error is printed above)"
        if strict:
            raise VariantUnavailable(message)
        info["note"] = message
    io = DeviceIO(session, ort, "cuda", device_id) if used != PROVIDERS["cpu"] else None
    engine = OrtEngine(
        session,
        io=io,
        model_size_bytes=artifact.size_bytes,
        info={
            "provider": used,
            **info,
            "graph_optimization": "ORT_ENABLE_ALL",
            **({"intra_op_threads": str(setting.threads)} if used == PROVIDERS["cpu"] else {"io_binding": "device buffers"}),
            "onnxruntime": ort.__version__,
            "session_s": f"{session_s:.2f}",
        },
    )
    if used == PROVIDERS["tensorrt"]:
        ctx.progress(f"{info['precision']} on TensorRT: first run builds the engine (minutes unless cached)")
    started = time.perf_counter()
    engine(torch.zeros(ctx.batch_size, *IMAGE_SHAPE))
    engine.info["first_run_s"] = f"{time.perf_counter() - started:.2f}"
    return engine


def fp32_model(ctx: BuildContext) -> Artifact:
    return fp32_artifact(
        weights_key=ctx.weights_key, reference_model=ctx.reference_model, cache_dir=ctx.cache_dir, progress=ctx.progress,
    )


def export_info(artifact: Artifact) -> dict[str, str]:
    return {"export_s": f"{artifact.build_s:.1f}", "export_cached": str(artifact.from_cache).lower()}


def build_fp32(ctx: BuildContext) -> Engine:
    setting = settings(ONNX, ctx.options)
    ort = import_onnxruntime()
    provider = choose_provider(setting, ctx.device.type, ort.get_available_providers())
    artifact = fp32_model(ctx)
    return open_engine(
        ctx, artifact, provider=provider, setting=setting, precision="fp32", strict=setting.provider is not None,
        info={"precision": "fp32", **export_info(artifact)},
    )


def build_fp16(ctx: BuildContext) -> Engine:
    setting = settings(ONNX_FP16, ctx.options)
    if ctx.device.type != "cuda" or setting.provider == "cpu":
        raise VariantUnavailable(
            "onnx_fp16 runs on the CUDA and TensorRT providers only: ONNX Runtime's CPU provider has "
            "no fast float16 path on x86 (it casts around most kernels and runs slower than fp32)"
        )
    ort = import_onnxruntime()
    provider = choose_provider(setting, ctx.device.type, ort.get_available_providers())
    source = fp32_model(ctx)
    artifact = fp16_artifact(source, cache_dir=ctx.cache_dir, progress=ctx.progress)
    return open_engine(
        ctx, artifact, provider=provider, setting=setting, precision="fp16", strict=setting.provider is not None,
        info={
            "precision": "fp16",
            "io": "float32 inputs/outputs, cast on the device",
            **export_info(source),
            "convert_s": f"{artifact.build_s:.1f}",
        },
    )


def int8_provider(setting: Settings, device_type: str, available: list[str]) -> tuple[str, str | None]:
    """(provider, note): TensorRT's int8 path on CUDA when installed, else the CPU provider."""
    if setting.provider == "cuda":
        raise UserError(
            f"{setting.provider_key}=cuda: the CUDA provider has no int8 convolutions (it would dequantize "
            "the model back to float): choose tensorrt or cpu"
        )
    if setting.provider is not None:
        return choose_provider(setting, device_type, available), None
    if device_type == "cuda":
        if PROVIDERS["tensorrt"] in available:
            return "tensorrt", None
        return "cpu", "no TensorRT provider installed: int8 runs on the CPU provider, not the GPU"
    return "cpu", None


def int8_model(ctx: BuildContext, source: Artifact, target: str) -> tuple[Artifact, int]:
    """The int8 model for ``target`` calibrated on the context's images (cached), and how
    many images it was calibrated on."""
    from densenet_opt.variants.onnx_quantize import int8_artifact

    return int8_artifact(
        source,
        target=target,
        calibration_images=ctx.calibration_images,
        calibration_samples=ctx.calibration_samples,
        cache_dir=ctx.cache_dir,
        progress=ctx.progress,
    )


def build_int8(ctx: BuildContext) -> Engine:
    setting = settings(ONNX_INT8, ctx.options)
    ort = import_onnxruntime()
    # Imported once onnxruntime is known to be there: it imports onnxruntime.quantization.
    from densenet_opt.variants.onnx_quantize import CPU, TENSORRT, check_calibration_count, describe

    check_calibration_count(ctx.calibration_samples)  # before an export that takes a while
    provider, note = int8_provider(setting, ctx.device.type, ort.get_available_providers())
    if note:
        ctx.progress(f"onnx_int8: {note}")
    target = TENSORRT if provider == "tensorrt" else CPU
    source = fp32_model(ctx)
    artifact, calibrated_on = int8_model(ctx, source, target)
    return open_engine(
        ctx, artifact, provider=provider, setting=setting, precision="int8", strict=True,
        info={
            "precision": "int8",
            "quantization": describe(target),
            "calibration_images": str(calibrated_on),
            **export_info(source),
            "quantize_s": f"{artifact.build_s:.1f}",
            **({"note": note} if note else {}),
        },
    )


def optimized_op_counts(model_path: Path, *, threads: int | None = None) -> Counter[str]:
    """Op types of the graph the CPU provider really runs (after ORT_ENABLE_ALL), as
    ORT writes it through SessionOptions.optimized_model_filepath."""
    ort = import_onnxruntime()
    import onnx

    with tempfile.TemporaryDirectory(prefix="densenet-opt-ort-") as folder:
        options = session_options(ort, "cpu", threads or default_threads())
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        # ORT warns that a graph optimized with NCHWc kernels is machine specific: known, and we only count it.
        options.log_severity_level = 3
        ort.InferenceSession(str(model_path), options, providers=[PROVIDERS["cpu"]])
        optimized = onnx.load(options.optimized_model_filepath)
    return Counter(node.op_type for node in optimized.graph.node)


def cpu_graph_op_counts(ctx: BuildContext) -> dict[str, Counter[str]]:
    """Op counts of the optimized CPU graphs of onnx (fp32) and onnx_int8, for the README:
    builds (or takes from the cache) both models."""
    import_onnxruntime()
    from densenet_opt.variants.onnx_quantize import CPU

    source = fp32_model(ctx)
    int8, _ = int8_model(ctx, source, CPU)
    return {ONNX: optimized_op_counts(source.path), ONNX_INT8: optimized_op_counts(int8.path)}


def op_count_table(counts: Mapping[str, Counter[str]]) -> str:
    """A markdown table: one row per op type, one column per model."""
    names = list(counts)
    ops = sorted({op for counter in counts.values() for op in counter}, key=lambda op: (-max(c[op] for c in counts.values()), op))
    lines = ["| op type | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {op} | " + " | ".join(str(counts[name][op]) for name in names) + " |" for op in ops]
    return "\n".join(lines)


VARIANTS = [
    Variant(ONNX, "ONNX Runtime fp32 (TensorRT, CUDA or CPU provider)", build_fp32),
    Variant(ONNX_FP16, "ONNX Runtime float16 model (CUDA or TensorRT provider)", build_fp16),
    Variant(ONNX_INT8, "ONNX Runtime static int8, QDQ (TensorRT on CUDA, else the CPU provider)", build_int8),
]
