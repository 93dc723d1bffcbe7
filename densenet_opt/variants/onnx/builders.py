"""The three ONNX Runtime variants: ``onnx`` (fp32), ``onnx_fp16`` and ``onnx_int8``.

Each build takes the cached fp32 export (export.py), derives its model from it (float16
conversion, or int8 quantization in quantize.py, both cached too), chooses the provider
(providers.py) and opens the session as an engine (engine.py). The package docstring
says what runs where and why.
"""

from __future__ import annotations

from densenet_opt.errors import VariantUnavailable
from densenet_opt.variants import BuildContext, Variant
from densenet_opt.variants.onnx.engine import OrtEngine, open_engine
from densenet_opt.variants.onnx.export import Artifact, fp16_artifact, fp32_artifact
from densenet_opt.variants.onnx.providers import OPTIONS, Settings, choose_provider, import_onnxruntime, int8_provider

ONNX, ONNX_FP16, ONNX_INT8 = "onnx", "onnx_fp16", "onnx_int8"


def fp32_model(ctx: BuildContext) -> Artifact:
    """The fp32 export for ``ctx``'s weights, from the cache when intact (the reference
    model is built only to export)."""
    return fp32_artifact(
        weights_key=ctx.weights_key, reference_model=ctx.reference_model, cache_dir=ctx.cache_dir, progress=ctx.progress,
    )


def export_info(artifact: Artifact) -> dict[str, str]:
    """engine_info entries of the fp32 export: seconds it took here, whether it was cached."""
    return {"export_s": f"{artifact.build_s:.1f}", "export_cached": str(artifact.from_cache).lower()}


def build_fp32(ctx: BuildContext) -> OrtEngine:
    """The fp32 model on the best (or the forced) provider; a forced provider that falls
    back is VariantUnavailable. Raises as choose_provider does."""
    setting = Settings.of(ctx)
    ort = import_onnxruntime()
    provider = choose_provider(setting, ctx.device.type, ort.get_available_providers())
    artifact = fp32_model(ctx)
    return open_engine(
        ctx, artifact, provider=provider, setting=setting, precision="fp32", strict=setting.provider is not None,
        info={"precision": "fp32", **export_info(artifact)},
    )


def build_fp16(ctx: BuildContext) -> OrtEngine:
    """The float16 model (float32 inputs and outputs, cast on the device) on the CUDA or
    TensorRT provider. VariantUnavailable on the CPU, or with provider=cpu: ORT's CPU
    provider has no fast float16 path on x86 (it casts around most kernels)."""
    setting = Settings.of(ctx)
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


def int8_model(ctx: BuildContext, source: Artifact, target: str) -> tuple[Artifact, int]:
    """The int8 model of ``source`` for ``target`` (quantize.CPU or quantize.TENSORRT),
    calibrated on ``ctx.calibration_samples`` of the context's images (cached), and how
    many images it was calibrated on. Needs onnxruntime (quantize imports it)."""
    from densenet_opt.variants.onnx.quantize import int8_artifact  # an optional extra: see build_int8

    return int8_artifact(
        source,
        target=target,
        calibration_images=ctx.calibration_images,
        calibration_samples=ctx.calibration_samples,
        cache_dir=ctx.cache_dir,
        progress=ctx.progress,
    )


def build_int8(ctx: BuildContext) -> OrtEngine:
    """The static int8 QDQ model on TensorRT (CUDA, when installed) or the CPU provider.

    Raises UserError for --calibration-samples 0 (before exporting) and for a forced CUDA
    provider; a session that falls back to another provider is VariantUnavailable."""
    setting = Settings.of(ctx)
    ort = import_onnxruntime()
    # quantize imports onnxruntime.quantization, an optional extra: imported once
    # import_onnxruntime has said it is there, so that without it the variant is skipped.
    from densenet_opt.variants.onnx.quantize import CPU, TENSORRT, check_calibration_count, describe

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


VARIANTS: list[Variant] = [
    Variant(ONNX, "ONNX Runtime fp32 (TensorRT, CUDA or CPU provider)", build_fp32, options=OPTIONS),
    Variant(ONNX_FP16, "ONNX Runtime float16 model (CUDA or TensorRT provider)", build_fp16,
            options=OPTIONS, shared_prefix=ONNX),
    Variant(ONNX_INT8, "ONNX Runtime static int8, QDQ (TensorRT on CUDA, else the CPU provider)", build_int8,
            options=OPTIONS, shared_prefix=ONNX),
]
