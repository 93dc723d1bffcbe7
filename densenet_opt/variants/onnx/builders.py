"""The three ONNX Runtime variants: ``onnx`` (fp32), ``onnx_fp16`` and ``onnx_int8``.

Each build takes the cached fp32 export (export.py), derives its model from it (float16
conversion, or int8 quantization in quantize.py, both cached too), chooses the provider
(providers.py) and opens the session as an engine (engine.py). The package docstring
says what runs where and why.
"""

from __future__ import annotations

from densenet_opt import pareto
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.values import auto_or_count, whole_number
from densenet_opt.variants import BuildContext, Variant, VariantOption
from densenet_opt.variants.search_rule import heldout_labels, rule_name, rule_options
from densenet_opt.variants.onnx.engine import OrtEngine, open_engine
from densenet_opt.variants.onnx.export import Artifact, fp16_artifact, fp32_artifact
from densenet_opt.variants.onnx.providers import (
    OPTIONS, PROVIDERS, Settings, choose_provider, disabled_optimizers, import_onnxruntime, int8_provider,
    session_options,
)

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


def _positive(text: str) -> int:
    return whole_number(text, minimum=1)


INT8_OPTIONS = (
    VariantOption(
        "float_nodes", auto_or_count, None,
        "nodes kept in float, most harmful first (accuracy_aware.py): auto measures k = 0, 1, 2, 4, ... and takes "
        "the fewest that meet accuracy_rule, writing the Pareto table to the output directory; 0 is all-int8",
    ),
    *rule_options("float_nodes=auto"),
    VariantOption("search_images", _positive, 256,
                  "held-out images of the calibration pool that float_nodes=auto measures accuracy_rule on"),
    VariantOption("max_float_nodes", _positive, 64, "the largest k float_nodes=auto tries"),
    VariantOption.choice("calibration", ("percentile", "minmax", "entropy"), "percentile",
                         "calibration method of the activation ranges (onnxruntime CalibrationMethod)"),
)
# The search times its points at this batch (or all held-out images when fewer), this many rounds.
SEARCH_BATCH, SEARCH_ROUNDS = 32, 5


def build_int8(ctx: BuildContext) -> OrtEngine:
    """The static int8 QDQ model on TensorRT (CUDA, when installed) or the CPU provider,
    with the nodes that cost most accuracy kept in float (option float_nodes; on the CPU
    provider ``auto`` measures the Pareto points, accuracy_aware.py).

    Raises UserError for --calibration-samples 0 (before exporting) and for a forced CUDA
    provider; a session that falls back to another provider is VariantUnavailable."""
    setting = Settings.of(ctx)
    ort = import_onnxruntime()
    # quantize imports onnxruntime.quantization, an optional extra: imported once
    # import_onnxruntime has said it is there, so that without it the variant is skipped.
    import densenet_opt.variants.onnx.accuracy_aware as accuracy_aware
    from densenet_opt.variants.onnx.quantize import (
        CPU, TENSORRT, check_calibration_count, describe, int8_artifact, recipe_for,
    )

    check_calibration_count(ctx.calibration_samples)  # before an export that takes a while
    provider, note = int8_provider(setting, ctx.device.type, ort.get_available_providers())
    if note:
        ctx.progress(f"onnx_int8: {note}")
    target = TENSORRT if provider == "tensorrt" else CPU
    recipe = recipe_for(target, ctx.option("calibration"))
    source = fp32_model(ctx)
    float_nodes = ctx.option("float_nodes")
    searching = float_nodes is None and target == CPU
    extra = ctx.option("search_images") if searching else 0
    pool = ctx.calibration_images(ctx.calibration_samples + extra)
    calibration, heldout = pool[: ctx.calibration_samples], pool[ctx.calibration_samples :]
    check_calibration_count(len(calibration))
    exclude: tuple[str, ...] = ()
    search_info: dict[str, str] = {}
    if searching:
        result, cached = _search(ctx, source, recipe, calibration, heldout, ort)
        exclude = result.chosen.excluded
        table = pareto.write_pareto_table(result, ctx.report_dir, ONNX_INT8)
        ctx.progress(f"onnx_int8: {result.chosen_text()}" + (f"; Pareto table {table}" if table else ""))
        search_info = pareto.search_info(result, cached, "nodes")
    elif float_nodes:
        if target != CPU:
            raise UserError(f"onnx_int8.float_nodes={float_nodes} is for the CPU provider's QDQ model; "
                            "TensorRT chooses its own precision per layer: leave float_nodes unset")
        exclude = tuple(accuracy_aware.ranked_nodes(
            source, recipe=recipe, calibration=calibration, cache_dir=ctx.cache_dir, progress=ctx.progress,
        )[:float_nodes])
    artifact = int8_artifact(
        source, recipe=recipe, images=calibration, cache_dir=ctx.cache_dir, progress=ctx.progress, exclude=exclude
    )
    return open_engine(
        ctx, artifact, provider=provider, setting=setting, precision="int8", strict=True,
        info={
            "precision": "int8",
            "quantization": describe(recipe),
            "calibration_images": str(len(calibration)),
            "float_nodes": str(len(exclude)),
            **search_info,
            **export_info(source),
            "quantize_s": f"{artifact.build_s:.1f}",
            **({"note": note} if note else {}),
        },
    )


def _cpu_session(ort, threads: int):
    return lambda path: ort.InferenceSession(
        str(path), session_options(ort, "cpu", threads), providers=[PROVIDERS["cpu"]],
        disabled_optimizers=disabled_optimizers("int8"),
    )


def _search(ctx: BuildContext, source: Artifact, recipe, calibration, heldout, ort):
    """The cached (or measured) float-nodes search for ``ctx``'s options, and whether it was cached."""
    import densenet_opt.variants.onnx.accuracy_aware as accuracy_aware  # needs onnxruntime.quantization

    target, max_nodes = ctx.option("accuracy_target"), ctx.option("max_float_nodes")
    labels = heldout_labels(ctx, len(calibration), len(heldout))
    rule = rule_name(ctx, labels)
    batch = min(SEARCH_BATCH, len(heldout)) or 1
    key = accuracy_aware.search_key(source, recipe, calibration, heldout, rule, target, labels, max_nodes, batch)
    return pareto.cached_search(
        accuracy_aware.search_cache_path(ctx.cache_dir, key),
        lambda: accuracy_aware.search(
            source, recipe=recipe, calibration=calibration, heldout=heldout, rule=rule, target=target, labels=labels,
            max_float_nodes=max_nodes, batch_size=batch, rounds=SEARCH_ROUNDS,
            open_session=_cpu_session(ort, Settings.of(ctx).threads), cache_dir=ctx.cache_dir, progress=ctx.progress,
        ),
        ctx.progress, ONNX_INT8,
    )


VARIANTS: list[Variant] = [
    Variant(ONNX, "ONNX Runtime fp32 (TensorRT, CUDA or CPU provider)", build_fp32, options=OPTIONS),
    Variant(ONNX_FP16, "ONNX Runtime float16 model (CUDA or TensorRT provider)", build_fp16,
            options=OPTIONS, shared_prefix=ONNX),
    Variant(ONNX_INT8, "ONNX Runtime static int8, QDQ (TensorRT on CUDA, else the CPU provider), "
            "the nodes that cost most accuracy kept in float", build_int8,
            options=OPTIONS + INT8_OPTIONS, shared_prefix=ONNX, calibrates=True),
]
