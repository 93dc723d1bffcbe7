"""Static post-training int8 on the CPU: PT2E with torchao's X86InductorQuantizer.

The recommended x86 flow: ``torch.export`` with a dynamic batch dimension, torchao's
``prepare_pt2e`` with the X86 inductor quantizer (uint8 per-tensor activations from
histogram observers, int8 per-channel symmetric weights), calibration on images disjoint
from the evaluated ones, ``convert_pt2e``, then inductor with freezing, which lowers the
quantize/dequantize patterns to oneDNN int8 convolutions (VNNI on AVX-512): all 120
convolutions and the classifier run in int8, and each BatchNorm+ReLU fuses with the
dequantize/quantize around it. Compiled into a cached AOTInductor package per batch size
(inductor.py says why not ``torch.compile``, and why not one dynamic-batch package).

What bounds it on a CPU without AMX: VNNI does 4 int8 multiply-adds per 32-bit lane, so
the int8 convolutions can be at most about 4x faster than fp32's, and the rest of the
call (concatenations, BatchNorm+ReLU+quantize) remains; AMX multiplies int8 at 8x the
per-core rate of AVX-512 VNNI. The figures measured on a CPU without AMX are in
docs/results/amd-epyc_x86v4-vnni-bf16_2c.md#measurements-behind-the-design.

Accuracy-aware (option ``float_modules``, default auto): the modules whose int8 adds the
most error are kept in float, the fewest that meet ``accuracy_rule`` (MLPerf's rule where
labels exist: search_rule.py), measured point by point with the variant's own packages
(quantization_search.py), the Pareto table written to the output directory.

There is no CUDA path: these patterns lower to oneDNN CPU kernels only, and PyTorch has
no int8 convolution for CUDA GPUs.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from densenet_opt import atomic, pareto
from densenet_opt.cache import CACHE_OPTION, key_digest, tensor_digest
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.values import auto_or_count, whole_number
from densenet_opt.variants import BuildContext, Engine, Variant, VariantOption
from densenet_opt.variants import quantization_search
from densenet_opt.variants.search_rule import heldout_labels, rule_name, rule_options, search_rule
from densenet_opt.variants.inductor import (
    BATCH_OPTION, CACHE_SUBDIR, BatchShape, PackageEngine, batch_shape, check_cpp_compiler, load_or_compile,
    machine_key,
)

NAME = "int8"
TORCHAO_REQUIREMENT = "torchao>=0.18"
# Calibration batches: large enough to amortise the observers' overhead, small enough
# that a 2-core machine keeps the activations of a DenseNet in RAM comfortably.
CALIBRATION_BATCH = 32
# The search times its points at this batch (or all held-out images when fewer), this many rounds.
SEARCH_BATCH, SEARCH_ROUNDS = 32, 5
# Bump when the ranking or the search measures differently.
RANKING_VERSION = 1
SEARCH_VERSION = 2  # 2: the accuracy rule


def import_pt2e():
    """torchao's PT2E API, or VariantUnavailable saying what to install.

    ``torch.ao.quantization.quantize_pt2e`` is gone from torch 2.14, so torchao is the
    only source of this API.
    """
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as error:
        raise VariantUnavailable(
            f"int8 needs torchao's PT2E quantization API, which this environment lacks ({error}): "
            f"pip install '{TORCHAO_REQUIREMENT}'"
        ) from None
    return quantize_pt2e, x86_inductor_quantizer


def calibrate(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Run the observed ``model`` over float32 ``images`` [N,3,224,224] in batches, so its
    observers record the activation ranges."""
    with torch.no_grad():
        for start in range(0, len(images), CALIBRATION_BATCH):
            model(images[start : start + CALIBRATION_BATCH].contiguous(memory_format=torch.channels_last))


HISTOGRAM, MINMAX = "histogram", "minmax"


@dataclass(frozen=True)
class Recipe:
    """How activations are calibrated: torchao's observer (``histogram``, its default, or
    ``minmax``) and ``reduce_range`` (7-bit activations, u8 in [0, 127]: what torchao's
    get_default_x86_inductor_quantization_config advises on CPUs without VNNI, whose u8 x s8
    kernels can saturate 16-bit intermediate sums)."""

    observer: str = HISTOGRAM
    reduce_range: bool = False

    @property
    def name(self) -> str:
        """The package key's quantizer entry: "x86-inductor-default" for torchao's default
        (the key every all-int8 package had before these options), else what differs."""
        if self == Recipe():
            return "x86-inductor-default"
        return "x86-inductor-" + "-".join([self.observer] + (["reduce-range"] if self.reduce_range else []))

    @property
    def key(self) -> dict[str, str]:
        """What a ranking's or search's cache key adds for this recipe: nothing for the
        default (so that earlier results stay valid), else its name."""
        return {} if self == Recipe() else {"quantizer": self.name}

    def describe(self) -> str:
        """engine_info's quantizer text."""
        activations = "u7 (reduce_range)" if self.reduce_range else "u8"
        return f"X86InductorQuantizer({activations} per-tensor act from {self.observer} observers, s8 per-channel weight)"

    def config(self):
        """torchao's QuantizationConfig for this recipe."""
        _, xiq = import_pt2e()
        config = xiq.get_default_x86_inductor_quantization_config(reduce_range=self.reduce_range)
        if self.observer == MINMAX:
            from torchao.quantization.pt2e.observer import MinMaxObserver

            spec = dataclasses.replace(config.input_activation,
                                       observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
            config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
        return config

    @classmethod
    def of(cls, ctx: BuildContext) -> Recipe:
        """The recipe ``ctx``'s options ask for."""
        return cls(ctx.option("observer"), ctx.option("reduce_range") == "on")


def quantizer(excluded: Sequence[str] = (), recipe: Recipe = Recipe()):
    """torchao's X86InductorQuantizer with ``recipe``'s config (u8 per-tensor activations,
    [0, 127] with reduce_range; s8 per-channel symmetric weights), the modules named in
    ``excluded`` (``named_modules`` names) given none: they stay in float."""
    _, xiq = import_pt2e()
    chosen = xiq.X86InductorQuantizer().set_global(recipe.config())
    for name in excluded:
        chosen.set_module_name_qconfig(name, None)
    return chosen


def float_graph(ctx: BuildContext) -> torch.fx.GraphModule:
    """The reference model exported with a dynamic batch (so that calibration can use any
    batch size), channels_last, as a graph module."""
    model = ctx.reference_model().eval().to(memory_format=torch.channels_last)
    return BatchShape(None).export(model).module()


def quantize(graph: torch.fx.GraphModule, calibration: torch.Tensor, excluded: Sequence[str] = (),
             recipe: Recipe = Recipe()) -> torch.fx.GraphModule:
    """prepare_pt2e (which changes ``graph``), calibration on ``calibration`` (float32
    [N,3,224,224]), convert_pt2e: the converted int8 graph, ``excluded`` modules in float."""
    quantize_pt2e, _ = import_pt2e()
    prepared = quantize_pt2e.prepare_pt2e(graph, quantizer(excluded, recipe))
    calibrate(prepared, calibration)
    return quantize_pt2e.convert_pt2e(prepared)


# Calibrated, converted models by (weights, calibration data, modules in float): a run
# that builds one static package per batch size quantizes once. One entry: a run has one model.
_quantized: dict[tuple[str, str, tuple[str, ...], Recipe], torch.fx.GraphModule] = {}


def quantized_model(ctx: BuildContext, calibration: torch.Tensor, calibration_key: str,
                    excluded: tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """The converted int8 graph (dynamic batch) of the reference model calibrated on
    ``calibration``, the ``excluded`` modules in float; kept for the process by (weights,
    ``calibration_key``, ``excluded``). VariantUnavailable without torchao."""
    recipe = Recipe.of(ctx)
    key = (ctx.weights_key, calibration_key, tuple(excluded), recipe)
    if key not in _quantized:
        import_pt2e()
        kept = f", {len(excluded)} module(s) in float" if excluded else ""
        ctx.progress(f"{NAME}: exporting, inserting observers, calibrating on {len(calibration)} images{kept}")
        converted = quantize(float_graph(ctx), calibration, excluded, recipe)
        _quantized.clear()
        _quantized[key] = converted
    return _quantized[key]


def package(ctx: BuildContext, shape: BatchShape, calibration: torch.Tensor, calibration_key: str,
            excluded: tuple[str, ...] = ()):
    """The loaded AOTInductor package (runner, Package) of the int8 model with ``excluded``
    in float, for ``shape``: from the cache, else quantized and compiled. The all-int8
    package keeps the key it had before modules could be kept in float."""
    key = {
        "torchao": importlib.metadata.version("torchao"),
        "calibration": calibration_key,
        "quantizer": Recipe.of(ctx).name,
        **({"float_modules": ";".join(excluded)} if excluded else {}),
    }
    return load_or_compile(
        ctx, NAME, shape, key,
        lambda: shape.export(quantized_model(ctx, calibration, calibration_key, excluded)),
        inductor_configs={"freezing": True},
    )


def _cached_json(path: Path, compute, progress, what: str):
    """The JSON at ``path``, else ``compute()``'s, written there atomically."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError as error:
            progress(f"{NAME}: cached {what} {path} is unusable ({error}); measuring again")
    value = compute()
    atomic.write_text(path, json.dumps(value, indent=1) + "\n", option=CACHE_OPTION)
    return value


def ranking(ctx: BuildContext, calibration: torch.Tensor, calibration_key: str) -> list[str]:
    """The modules ranked by the error each adds to the all-int8 model, worst first
    (quantization_search.rank_modules on the first SENSITIVITY_IMAGES calibration images);
    cached by weights, torchao and calibration."""
    key = {
        "version": RANKING_VERSION, "weights": ctx.weights_key, "torchao": importlib.metadata.version("torchao"),
        "calibration": calibration_key, "sensitivity_images": quantization_search.SENSITIVITY_IMAGES,
        **Recipe.of(ctx).key,
    }

    def compute() -> list[str]:
        images = calibration[: quantization_search.SENSITIVITY_IMAGES].contiguous(memory_format=torch.channels_last)
        ctx.progress(f"{NAME}: ranking modules by the error each adds (torchao numeric debugger on {len(images)} "
                     "calibration images)")
        return quantization_search.rank_modules(
            float_graph(ctx), lambda graph: quantize(graph, calibration, (), Recipe.of(ctx)), images
        )

    path = ctx.cache_dir / CACHE_SUBDIR / f"{NAME}-ranking-{key_digest(key)}.json"
    return list(_cached_json(path, compute, ctx.progress, "ranking"))


def _search(ctx: BuildContext, calibration: torch.Tensor, calibration_key: str, heldout: torch.Tensor):
    """The cached (or measured) float-modules search for ``ctx``'s options, and whether it was cached."""
    if len(heldout) == 0:
        raise UserError(
            f"the accuracy-aware int8 search found no held-out images after the {len(calibration)} calibration images: "
            f"give a data folder with more images, or pass --variant-options {NAME}.float_modules=0 (all-int8)"
        )
    target, most = ctx.option("accuracy_target"), ctx.option("max_float_modules")
    labels = heldout_labels(ctx, len(calibration), len(heldout))
    rule = rule_name(ctx, labels)
    batch = min(SEARCH_BATCH, len(heldout))
    key = {
        "version": SEARCH_VERSION, "weights": ctx.weights_key, "torchao": importlib.metadata.version("torchao"),
        **machine_key(), "calibration": calibration_key, "heldout": f"{len(heldout)}-{tensor_digest(heldout)}",
        "rule": rule, "labels": None if labels is None else tensor_digest(torch.from_numpy(labels)),
        "target": target, "max_float_modules": most, "batch_size": batch,
        "sensitivity_images": quantization_search.SENSITIVITY_IMAGES, **Recipe.of(ctx).key,
    }

    def run() -> pareto.Search:
        check_cpp_compiler()  # every point is a package: seconds, where the ranking would fail after minutes
        ranked = ranking(ctx, calibration, calibration_key)
        ctx.progress(f"{NAME}: fp32 reference on {len(heldout)} held-out images")
        model = ctx.reference_model().eval()
        with torch.no_grad():
            reference = quantization_search.batched_logits(model, heldout, batch).argmax(axis=1)
        del model
        shape = BatchShape(batch)

        def build_point(excluded: tuple[str, ...]):
            runner, built = package(ctx, shape, calibration, calibration_key, excluded)
            return PackageEngine(runner, built, dtype=torch.float32, info={})

        return quantization_search.search(
            ranked=ranked, build_point=build_point, rule=search_rule(rule, target, reference, labels, NAME),
            heldout=heldout, max_float_modules=most, batch_size=batch, rounds=SEARCH_ROUNDS, progress=ctx.progress,
        )

    path = ctx.cache_dir / CACHE_SUBDIR / "search" / f"{NAME}-float-modules-{key_digest(key)}.json"
    return pareto.cached_search(path, run, ctx.progress, NAME)


def build(ctx: BuildContext) -> Engine:
    """The int8 AOTInductor package (cached; quantized and compiled only when missing),
    the modules that cost most accuracy in float (option float_modules: auto searches,
    quantization_search.py). VariantUnavailable without torchao or a C++ compiler to build
    the package; UserError when the calibration pool has no image left to search on."""
    shape = batch_shape(ctx)
    import_pt2e()  # fail early, before the calibration images are made
    float_modules = ctx.option("float_modules")
    searching = float_modules is None
    pool = ctx.calibration_images(ctx.calibration_samples + (ctx.option("search_images") if searching else 0))
    calibration, heldout = pool[: ctx.calibration_samples], pool[ctx.calibration_samples :]
    if len(calibration) == 0:
        raise UserError(f"{NAME} needs calibration images and the data gave none: pass --calibration-samples N "
                        "with N >= 1, with a data folder that holds more than --num-samples images")
    calibration_key = f"{len(calibration)}-{tensor_digest(calibration)}"
    excluded: tuple[str, ...] = ()
    info: dict[str, str] = {}
    if searching:
        result, cached = _search(ctx, calibration, calibration_key, heldout)
        excluded = result.chosen.excluded
        table = pareto.write_pareto_table(result, ctx.report_dir, NAME)
        ctx.progress(f"{NAME}: {result.chosen_text()}" + (f"; Pareto table {table}" if table else ""))
        info = pareto.search_info(result, cached, quantization_search.UNIT)
    elif float_modules:
        excluded = tuple(ranking(ctx, calibration, calibration_key)[:float_modules])
    runner, built = package(ctx, shape, calibration, calibration_key, excluded)
    info = {
        "quantizer": Recipe.of(ctx).describe(),
        "calibration_images": str(len(calibration)),
        "float_modules": str(len(excluded)),
        **info,
        "backend": "aotinductor+onednn",
    }
    return PackageEngine(runner, built, dtype=torch.float32, info=info)


OPTIONS = (
    BATCH_OPTION,
    VariantOption(
        "float_modules", auto_or_count, None,
        "modules (convolutions, the classifier) kept in float, most harmful first (quantization_search.py): auto "
        "measures k = 0, 1, 2, 4, ... and takes the fewest that meet accuracy_rule, writing the Pareto table to "
        "the output directory; 0 is all-int8",
    ),
    *rule_options("float_modules=auto"),
    VariantOption("search_images", lambda text: whole_number(text, minimum=1), 256,
                  "held-out images of the calibration pool that float_modules=auto measures accuracy_rule on"),
    VariantOption("max_float_modules", lambda text: whole_number(text, minimum=1), 16,
                  "the largest k float_modules=auto tries (each point is an AOTInductor compile: minutes on 2 cores)"),
    VariantOption.choice("observer", (HISTOGRAM, MINMAX), HISTOGRAM,
                         "activation calibration: torchao's HistogramObserver (its default) or MinMaxObserver"),
    VariantOption.choice("reduce_range", ("off", "on"), "off",
                         "7-bit activations, as torchao advises on CPUs without VNNI (u8 x s8 sums can saturate)"),
)

VARIANTS = [
    Variant(
        NAME,
        "static int8 PT2E (torchao X86InductorQuantizer) lowered by inductor with freezing to oneDNN, the modules "
        "that cost most accuracy kept in float; CPU only",
        build,
        devices=("cpu",),
        options=OPTIONS,
        calibrates=True,
    )
]
