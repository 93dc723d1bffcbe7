"""ONNX Runtime's execution providers: which one a variant runs on, and the settings of each.

The provider is the best that ``onnxruntime.get_available_providers()`` offers for the
sweep's device (on CUDA TensorRT, then CUDA; on the CPU the CPU provider), unless the
user forces one with ``provider``; a forced provider that is not installed is an error
naming those that are. The settings (docs/variants.md#onnx-runtime-settings) and why:

- ``graph_optimization_level`` ORT_ENABLE_ALL everywhere: on the CPU it adds the
  NCHWc/NHWC layout transforms and fuses each Q/DQ pair around a conv into QLinearConv.
- CPU provider: intra-op threads = the physical cores this process may run on (hyper-
  threads add little to conv kernels; option ``threads``), inter-op 1 and sequential
  execution (a CNN is a chain: parallel branches buy nothing), ORT's CPU memory arena and
  memory pattern on (defaults).
- CUDA provider: cuDNN's EXHAUSTIVE algorithm search (run once when the engine is built,
  never in a timed call), its largest workspace, and ``arena_extend_strategy``
  kSameAsRequested: the default, kNextPowerOfTwo, grows the device arena to the next
  power of two, which NVML's per-process figure (the VRAM column) would report as used
  memory the model never touches. TF32 off, so that ``onnx`` stays fp32.
- TensorRT provider: an optimization profile from batch 1 to the engine's batch size,
  engine caches per batch size and a shared timing cache under the cache dir (the first
  build of an engine takes minutes; later sessions load it), fp16 for ``onnx_fp16``, int8
  and fp16 for ``onnx_int8`` (a QDQ model needs the int8 flag; fp16 lets the layers left
  unquantized run in half precision). TensorRT allows TF32 for fp32 layers and ORT has no
  option to stop it, so ``onnx`` on TensorRT is not strict fp32 (``provider=cuda`` is).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import psutil

from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.values import whole_number
from densenet_opt.variants import BuildContext, VariantOption
from densenet_opt.variants.onnx.export import INPUT_NAME

AUTO = "auto"
# Aliases the user writes -> ONNX Runtime's provider names.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PREFERENCE = ("tensorrt", "cuda")
INSTALL_HINT = "pip install -e .[cpu] (or .[gpu] for the CUDA and TensorRT providers)"


def parse_threads(text: str) -> int | None:
    """``auto`` -> None (default_threads()), else a whole number >= 1; ValueError otherwise."""
    return None if text.strip().lower() == AUTO else whole_number(text)


PROVIDER_OPTION = VariantOption.choice(
    "provider", (AUTO, *PROVIDERS), AUTO,
    "execution provider; auto: TensorRT, then CUDA on a CUDA sweep, the CPU provider on a CPU sweep",
)
THREADS_OPTION = VariantOption(
    "threads", parse_threads, None,
    "intra-op threads of the CPU provider, a whole number >= 1; auto: the physical cores this process may run on",
)
# What each of the three ONNX Runtime variants takes (also as onnx.<option>, for all three).
OPTIONS = (PROVIDER_OPTION, THREADS_OPTION)


def import_onnxruntime() -> ModuleType:
    """The onnxruntime module; onnxruntime is an extra, so without it VariantUnavailable
    says what to install (the variant is skipped, never a failure)."""
    try:
        import onnxruntime
    except ImportError:
        raise VariantUnavailable(f"onnxruntime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def default_threads() -> int:
    """The physical cores this process may run on (at least 1)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(psutil.cpu_count(logical=False) or allowed, allowed))


@dataclass(frozen=True)
class Settings:
    """A variant's provider settings, from its options."""

    provider: str | None  # a key of PROVIDERS the user forced, or None to choose the best available
    threads: int  # intra-op threads of the CPU provider
    provider_key: str  # the option that set the provider (e.g. onnx.provider), for messages

    @classmethod
    def of(cls, ctx: BuildContext) -> Settings:
        """The settings of the variant ``ctx`` builds (``ctx.variant`` must be set)."""
        provider = ctx.option(PROVIDER_OPTION.name)
        threads = ctx.option(THREADS_OPTION.name)
        return cls(
            provider=None if provider == AUTO else provider,
            threads=default_threads() if threads is None else threads,
            provider_key=ctx.option_key(PROVIDER_OPTION.name) or f"{ctx.variant.name}.{PROVIDER_OPTION.name}",
        )


def choose_provider(setting: Settings, device_type: str, available: list[str]) -> str:
    """The provider alias (a key of PROVIDERS) to run on: the forced one if installed,
    else the best for ``device_type`` ("cpu" or "cuda") among ``available`` (ORT's names).

    Raises UserError when a forced provider is not installed or needs a GPU the sweep
    does not use; VariantUnavailable on CUDA when no GPU provider is installed."""
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


def int8_provider(setting: Settings, device_type: str, available: list[str]) -> tuple[str, str | None]:
    """(provider alias, note for engine_info or None) for the int8 model: TensorRT's int8
    path on CUDA when installed, else the CPU provider (the note says so on CUDA).

    Raises UserError for a forced CUDA provider, which has no int8 convolutions (it would
    only dequantize back to float), and as choose_provider does."""
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


# ONNX Runtime's WeightBiasQuantization transformer (ORT_ENABLE_ALL) quantizes the float
# weights of any node that sits between a DequantizeLinear and a QuantizeLinear: it would
# silently turn onnx_int8's nodes kept in float (accuracy_aware.py) back into int8
# QLinearConvs. In an all-int8 QDQ model it has nothing to do (every weight is quantized
# already: the optimized graph is the same with it disabled), so int8 sessions disable it.
INT8_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


def disabled_optimizers(precision: str) -> list[str]:
    """The graph transformers an onnxruntime session of a ``precision`` model runs without
    (InferenceSession's ``disabled_optimizers``)."""
    return list(INT8_DISABLED_OPTIMIZERS) if precision == "int8" else []


def session_options(ort: ModuleType, provider: str, threads: int):
    """onnxruntime.SessionOptions for ``provider`` (an alias): ORT_ENABLE_ALL, sequential,
    one inter-op thread, ``threads`` intra-op threads on the CPU provider."""
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
    """(ORT provider name, provider options) pairs in priority order for
    ``InferenceSession(providers=..., provider_options=...)``: ``provider`` (an alias)
    first, then its fallbacks. ``precision`` is fp32, fp16 or int8 (TensorRT's flags);
    TensorRT's engine and timing caches are created under ``cache_dir``/tensorrt."""
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
