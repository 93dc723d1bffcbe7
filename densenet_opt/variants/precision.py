"""Reduced precision: fp16 and bf16 weights and activations.

On CUDA: the eager model cast to the dtype, channels_last (the layout tensor cores'
convolutions want), cuDNN benchmark mode (the fastest algorithm per shape, picked on the
first call, which the build makes). On the CPU: only where the CPU computes the dtype
natively (bf16: AVX512-BF16 or AMX; fp16: AVX512-FP16 or AMX-FP16); elsewhere oneDNN
emulates it and it is slower than fp32, so the variant is skipped. There the model is
compiled by inductor with freezing into a cached AOTInductor package: eager bf16
(channels_last) took 1545 ms at batch 32 on one thread, the package 1162 ms.

This Zen4 has AVX512-BF16 and no AMX (torch.ops.mkldnn._is_mkldnn_bf16_supported() is
True, _is_mkldnn_fp16_supported() False). bf16 measured 3.6x eager fp32 at batch 32 (one
thread): oneDNN's avx512_core_bf16 convolutions take 930 ms, 2.1x less than fp32's 1937 ms,
which is what two bf16 multiply-adds per 32-bit lane allow, plus 355 ms outside them. 4.5x
(988 ms) would leave 58 ms for the rest; AMX, where 4.9x was measured, multiplies bf16 at
8x the per-core rate of AVX512-BF16.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from densenet_opt.errors import VariantUnavailable
from densenet_opt.variants import BuildContext, Engine, Variant
from densenet_opt.variants.inductor import PackageEngine, batch_shape, load_or_compile
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
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise VariantUnavailable(
            f"{name}: {torch.cuda.get_device_name(device)} has no native bf16 (it needs compute capability 8.0+)"
        )


def cuda_model(ctx: BuildContext, dtype: torch.dtype) -> torch.nn.Module:
    return ctx.reference_model().to(device=ctx.device, dtype=dtype, memory_format=torch.channels_last).eval()


def build_cuda(ctx: BuildContext, name: str, dtype: torch.dtype) -> Engine:
    check_cuda_dtype(name, dtype, ctx.device)
    model = cuda_model(ctx, dtype)
    engine = CudnnBenchmarkEngine(
        model, ctx.device, model_size_bytes=state_dict_bytes(model), dtype=dtype, channels_last=True,
        info={"layout": "channels_last", "cudnn_benchmark": "on"},
    )
    started = time.perf_counter()
    # cuDNN benchmarks its algorithms on the first call for a shape: not in a timed round.
    engine(torch.zeros(ctx.batch_size, 3, 224, 224))
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
    isa = native_cpu_isa(dtype)
    if isa is None:
        wanted = "AVX512-BF16 or AMX" if dtype == torch.bfloat16 else "AVX512-FP16 or AMX-FP16"
        raise VariantUnavailable(
            f"{name} on this CPU: it lacks {wanted}, so oneDNN would emulate {name} and run slower "
            "than fp32; run it on CUDA"
        )

    shape = batch_shape(ctx, name)

    def export() -> torch.export.ExportedProgram:
        return shape.export(ctx.reference_model().to(dtype=dtype, memory_format=torch.channels_last).eval(), dtype)

    runner, package = load_or_compile(ctx, name, shape, {"dtype": name}, export, inductor_configs={"freezing": True})
    info = {"backend": "aotinductor+onednn", "cpu_isa": isa, "layout": "channels_last"}
    return PackageEngine(runner, package, dtype=dtype, info=info)


def build_for(name: str):
    dtype = DTYPES[name]

    def build(ctx: BuildContext) -> Engine:
        if ctx.device.type == "cuda":
            return build_cuda(ctx, name, dtype)
        return build_cpu(ctx, name, dtype)

    return build


VARIANTS = [
    Variant("fp16", "fp16 weights and activations: CUDA eager, channels_last, cuDNN benchmark "
            "(CPU only with native fp16)", build_for("fp16")),
    Variant("bf16", "bf16 weights and activations: CUDA eager, channels_last, cuDNN benchmark; "
            "CPU with native bf16: inductor with freezing (AOTInductor package)", build_for("bf16")),
]
