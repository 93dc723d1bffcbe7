"""Reduced precision: fp16 and bf16 weights and activations.

On CUDA: the eager model cast to the dtype, channels_last (the layout tensor cores'
convolutions want), cuDNN benchmark mode (the fastest algorithm per shape, picked on the
first call, which the build makes). On the CPU: only where the CPU computes the dtype
natively (bf16: AVX512-BF16 or AMX; fp16: AVX512-FP16 or AMX-FP16); elsewhere oneDNN
emulates it and it is slower than fp32, so the variant is skipped. There the model is
compiled by inductor with freezing into a cached AOTInductor package, which beat eager
bf16 (channels_last) in our measurements.

What bounds bf16 on a CPU: without AMX, oneDNN's avx512_core_bf16 convolutions do two
bf16 multiply-adds per 32-bit lane, so they can be at most about 2x faster than fp32's,
and the rest of the call (concatenations, BatchNorm, pooling) does not shrink; AMX
multiplies bf16 at 8x the per-core rate of AVX512-BF16. The figures measured on a CPU
without AMX are in docs/results/amd-epyc_x86v4-vnni-bf16_2c.md#measurements-behind-the-design.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch

from densenet_opt.errors import VariantUnavailable
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.variants import BuildContext, Engine, Variant
from densenet_opt.variants.inductor import BATCH_OPTION, PackageEngine, batch_shape, load_or_compile
from densenet_opt.variants.torch_engine import TorchEngine, state_dict_bytes

DTYPES: Mapping[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}


class CudnnBenchmarkEngine(TorchEngine):
    """A TorchEngine whose calls run with cuDNN benchmark mode on, restored afterwards so
    that other engines in the same process (the fp32 baseline) are measured as they are."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return super().__call__(batch)
        finally:
            torch.backends.cudnn.benchmark = previous


def check_cuda_dtype(name: str, dtype: torch.dtype, device: torch.device) -> None:
    """VariantUnavailable (naming variant ``name`` and the GPU) when ``dtype`` is bf16 and
    ``device`` has no native bf16 (compute capability below 8.0)."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise VariantUnavailable(
            f"{name}: {torch.cuda.get_device_name(device)} has no native bf16 (it needs compute capability 8.0+)"
        )


def cuda_model(ctx: BuildContext, dtype: torch.dtype) -> torch.nn.Module:
    """The reference model in ``dtype``, channels_last, on ``ctx.device``, in eval mode."""
    return ctx.reference_model().to(device=ctx.device, dtype=dtype, memory_format=torch.channels_last).eval()


def build_cuda(ctx: BuildContext, name: str, dtype: torch.dtype) -> Engine:
    """The eager ``dtype`` engine on CUDA, its cuDNN algorithms picked by a first call in
    the build (info["autotune_s"], seconds). VariantUnavailable as check_cuda_dtype."""
    check_cuda_dtype(name, dtype, ctx.device)
    model = cuda_model(ctx, dtype)
    engine = CudnnBenchmarkEngine(
        model, ctx.device, model_size_bytes=state_dict_bytes(model), dtype=dtype, channels_last=True,
        info={"layout": "channels_last", "cudnn_benchmark": "on"},
    )
    started = time.perf_counter()
    # cuDNN benchmarks its algorithms on the first call for a shape: not in a timed round.
    engine(torch.zeros(ctx.batch_size, *IMAGE_SHAPE))
    engine.info["autotune_s"] = f"{time.perf_counter() - started:.1f}"
    return engine


def native_cpu_isa(dtype: torch.dtype) -> str | None:
    """The CPU feature that computes ``dtype`` natively, or None if oneDNN would emulate it."""
    if dtype == torch.bfloat16:
        if torch.cpu._is_amx_tile_supported():
            return "amx"
        if torch.cpu._is_avx512_bf16_supported():
            return "avx512_bf16"
        return None
    # oneDNN reports fp16 support only for AVX512-FP16 or AMX-FP16 hardware.
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        return "amx_fp16" if torch.cpu._is_amx_fp16_supported() else "avx512_fp16"
    return None


def build_cpu(ctx: BuildContext, name: str, dtype: torch.dtype) -> Engine:
    """The ``dtype`` AOTInductor package (freezing, channels_last) on a CPU that computes
    ``dtype`` natively; VariantUnavailable naming the missing ISA elsewhere, or without a
    C++ compiler to build the package."""
    isa = native_cpu_isa(dtype)
    if isa is None:
        wanted = "AVX512-BF16 or AMX" if dtype == torch.bfloat16 else "AVX512-FP16 or AMX-FP16"
        raise VariantUnavailable(
            f"{name} on this CPU: it lacks {wanted}, so oneDNN would emulate {name} and run slower "
            "than fp32; run it on CUDA"
        )

    shape = batch_shape(ctx)

    def export() -> torch.export.ExportedProgram:
        return shape.export(ctx.reference_model().to(dtype=dtype, memory_format=torch.channels_last).eval(), dtype)

    runner, package = load_or_compile(ctx, name, shape, {"dtype": name}, export, inductor_configs={"freezing": True})
    info = {"backend": "aotinductor+onednn", "cpu_isa": isa, "layout": "channels_last"}
    return PackageEngine(runner, package, dtype=dtype, info=info)


def build_for(name: str) -> Callable[[BuildContext], Engine]:
    """The build function of variant ``name`` (a key of DTYPES): CUDA eager, or the CPU package."""
    dtype = DTYPES[name]

    def build(ctx: BuildContext) -> Engine:
        if ctx.device.type == "cuda":
            return build_cuda(ctx, name, dtype)
        return build_cpu(ctx, name, dtype)

    return build


VARIANTS = [
    Variant("fp16", "fp16 weights and activations: CUDA eager, channels_last, cuDNN benchmark "
            "(CPU only with native fp16)", build_for("fp16"), options=(BATCH_OPTION,)),
    Variant("bf16", "bf16 weights and activations: CUDA eager, channels_last, cuDNN benchmark; "
            "CPU with native bf16: inductor with freezing (AOTInductor package)", build_for("bf16"), options=(BATCH_OPTION,)),
]
