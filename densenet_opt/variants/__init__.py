"""The engine abstraction, the variant registry and the options variants declare.

A variant turns the fp32 reference model into an *engine* for one device and batch
size. An engine takes a batch on the host and returns float32 logits on the host, so
every backend is timed across the same boundary. A new technique is a new module (or
package) here that defines ``VARIANTS`` and whose name is added to ``VARIANT_MODULES``.

Each variant declares its settings as ``VariantOption``s. The user gives them as
``--variant-options <variant>.<option>=<text>,...``; ``parse_variant_options`` checks every
key and value against the declarations before any model is built (a typo is an error,
never silently ignored), and a build reads the typed value with ``ctx.option(name)``.
A variant may also take keys under a shared prefix (``onnx.provider`` sets all three ONNX
Runtime variants); its own ``<variant>.<option>`` wins over the shared key.

Stacked techniques: a variant that declares a ``transform`` (a model transform such as
pruning: fp32 torch module in, fp32 torch module out) can be chained before any other
variant, written ``<transform>+<deployment>`` (``pruned_structured+onnx_int8``). The chain
is a variant of its own (own row, budgets entry and cache keys): the deployment is built
exactly as alone, from the transformed module in place of the reference model, and with a
weights key that names the transform, so every artifact it caches (ONNX export, int8
model, compiled package) is the transformed model's. Each part reads its own options
(``pruned_structured.amount`` applies to the chain too); what a part writes for the user
goes to ``<report dir>/<chain>/``. ``get_variant`` makes any such pair; the sweep's
default list adds the pairs in ``STACKED``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Protocol

import torch

from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.flops import count_flops
from densenet_opt.values import did_you_mean, one_of

# Order matters: it is the order of the sweep and of the registry listing.
VARIANT_MODULES: tuple[str, ...] = ("baseline", "pruning", "onnx", "openvino", "quantization", "precision", "compiled")

BASELINE = "baseline"
OPTION_FLAG = "--variant-options"
CHAIN_SEPARATOR = "+"
# The chains a default sweep measures after the registered variants (a deployer prunes,
# then quantizes, then picks a runtime); any other pair is one --variants entry away.
STACKED: tuple[str, ...] = ("pruned_structured+onnx_int8", "pruned_structured+openvino_int8")


class Engine(Protocol):
    """What every variant builds.

    ``__call__``: a float32 batch [N,3,224,224] on the host in, float32 logits [N,1000]
    on the host out, the device synchronised. ``model_size_bytes``: bytes of the deployed
    artifact on disk. ``info``: what engine_info records (text values). ``close``: release
    the engine's memory and sessions; the engine is not called again.
    """

    model_size_bytes: int
    info: dict[str, str]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class VariantOption:
    """One setting a variant takes as ``--variant-options <variant>.<name>=<text>``.

    ``parse`` turns the text into the typed value (a type such as ``int`` works) and raises
    ValueError with a phrase saying what is wanted; ``default`` is the value when the key
    is not given (None reads as "auto": the variant decides). ``choices``, when the text
    is one of a few words, is shown by ``describe_options``.
    """

    name: str
    parse: Callable[[str], object]
    default: object
    help: str
    choices: tuple[str, ...] = ()

    @classmethod
    def choice(cls, name: str, choices: Sequence[str], default: str, help: str) -> VariantOption:
        """An option whose text is one of ``choices`` (lower-case words, matched in any case)."""
        return cls(name, one_of(choices), default, help, tuple(choices))

    @property
    def default_text(self) -> str:
        """The default as the user would write it ("auto" for None)."""
        return "auto" if self.default is None else str(self.default)

    def value(self, key: str, text: str) -> object:
        """The typed value of ``text`` given as ``key``; UserError naming the key otherwise."""
        try:
            return self.parse(text)
        except ValueError as error:
            raise UserError(f"{OPTION_FLAG} {key}={text}: {error} (default {self.default_text})") from None


@dataclass(frozen=True)
class Transformed:
    """What a model transform returns: ``model``, an fp32 torch module on the CPU in eval
    mode (taking and giving the reference model's shapes: [N,3,224,224] -> [N,1000]);
    ``key``, a short text naming everything the module depends on besides the weights (it
    becomes part of every cache key built on it); ``info``, engine_info entries (text)."""

    model: torch.nn.Module
    key: str
    info: dict[str, str]


@dataclass(frozen=True)
class Variant:
    """A registered technique: its name, what it is, how to build its engine, where it
    runs (``devices``: torch device types), the options it takes and, if any, a shared
    prefix whose keys apply to it as well (``onnx`` for the ONNX Runtime variants).

    ``transform``: for a model transform (pruning), the function giving the transformed
    fp32 module, which lets the variant head a chain (module docstring). ``parts``: for a
    chain, its transform and its deployment (whose options it reads); empty otherwise.
    ``calibrates``: it needs images beyond the evaluated ones (calibration, recalibration,
    distillation): the preflight checks that the data set has them.
    """

    name: str
    description: str
    build: Callable[[BuildContext], Engine]
    devices: tuple[str, ...] = ("cpu", "cuda")
    options: tuple[VariantOption, ...] = ()
    shared_prefix: str | None = None
    transform: Callable[[BuildContext], Transformed] | None = None
    parts: tuple[Variant, ...] = ()
    calibrates: bool = False  # takes ctx.calibration_images (at least calibration_samples of them)

    def option(self, name: str) -> VariantOption:
        """The declaration of option ``name``; KeyError if this variant does not declare it."""
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(f"variant {self.name} declares no option {name!r}")

    def build_engine(self, ctx: BuildContext) -> Engine:
        """Build the engine for ``ctx`` (which then knows this variant: ``ctx.option`` works).

        Raises VariantUnavailable with the reason when it cannot run here (another device
        type, a missing package or provider), UserError for a problem the user can fix.
        """
        if ctx.device.type not in self.devices:
            raise VariantUnavailable(
                f"{self.name} runs on {'/'.join(self.devices)} only, not {ctx.device.type}"
            )
        return self.build(dataclasses.replace(ctx, variant=self))


class VariantOptions(Mapping[str, str]):
    """Validated ``--variant-options``: a read-only mapping of each key to its text as the
    user gave it (what a child process is sent; ``parse_variant_options(dict(options))``
    gives the same options back), and each variant's typed values (``value``).

    Made by ``parse_variant_options``; ``VariantOptions()`` is "none given".
    """

    def __init__(self, text: Mapping[str, str] | None = None) -> None:
        self._text = dict(text or {})

    def __getitem__(self, key: str) -> str:
        return self._text[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._text)

    def __len__(self) -> int:
        return len(self._text)

    def __repr__(self) -> str:
        return f"VariantOptions({self._text!r})"

    def key(self, variant: Variant, name: str) -> str | None:
        """The key that sets ``variant``'s option ``name`` (``<variant>.<name>`` before
        ``<shared prefix>.<name>``), or None when neither was given."""
        prefixes = (variant.name, variant.shared_prefix) if variant.shared_prefix else (variant.name,)
        return next((f"{prefix}.{name}" for prefix in prefixes if f"{prefix}.{name}" in self._text), None)

    def value(self, variant: Variant, name: str) -> object:
        """The typed value of ``variant``'s option ``name``: as given, else its default.
        KeyError if the variant does not declare it."""
        option = variant.option(name)
        key = self.key(variant, name)
        return option.default if key is None else option.value(key, self._text[key])


@dataclass(frozen=True)
class BuildContext:
    """Everything a variant may use to build its engine.

    ``reference_model`` returns a private fp32 DenseNet-121 on the CPU in eval mode (a
    variant may change it in place); ``calibration_images(count)`` returns float32
    [count,3,224,224] normalised images disjoint from the evaluated ones. Both are
    callables so that a variant that loads a cached artifact pays for neither (it shows
    in RAM and cold start). ``variant`` is set by ``Variant.build_engine``.
    ``report_dir``: where a variant writes what its build measured for the user (a
    sensitivity table, a training curve), as CSV files named after the variant; None
    (a fresh-process probe, a unit test) means write nothing. ``calibration_labels(count)``:
    int64 [count] labels of the images ``calibration_images(count)`` returns, where labels
    measure top-1 (ImageNet with trained weights, synthetic weights on synthetic images:
    Workbench.accuracy_kind), else None: what an accuracy search's MLPerf rule needs.
    """

    device: torch.device
    batch_size: int
    reference_model: Callable[[], torch.nn.Module]
    calibration_images: Callable[[int], torch.Tensor]
    calibration_samples: int  # how many calibration images quantizing variants should use
    weights_key: str
    cache_dir: Path
    options: VariantOptions = field(default_factory=VariantOptions)
    progress: Callable[[str], None] = print
    variant: Variant | None = None
    report_dir: Path | None = None
    calibration_labels: Callable[[int], torch.Tensor | None] = lambda count: None

    def _built(self) -> Variant:
        if self.variant is None:
            raise RuntimeError("this BuildContext names no variant: build through Variant.build_engine")
        return self.variant

    def option(self, name: str) -> object:
        """The typed value of the built variant's option ``name`` (its default when not given)."""
        return self.options.value(self._built(), name)

    def option_key(self, name: str) -> str | None:
        """The key the user set option ``name`` with (for messages), or None when not given."""
        return self.options.key(self._built(), name)


@cache
def registry() -> dict[str, Variant]:
    """Every variant by name, in sweep order; imports the variant modules on first use."""
    variants: dict[str, Variant] = {}
    for module_name in VARIANT_MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        for variant in module.VARIANTS:
            if variant.name in variants:
                raise RuntimeError(f"variant {variant.name!r} is registered twice")
            variants[variant.name] = variant
    return variants


def get_variant(name: str) -> Variant:
    """The registered variant ``name``, or the chain it names (``<transform>+<deployment>``,
    spaces around the parts ignored: the Variant's name is the canonical one); UserError
    listing the variants (or the transforms) otherwise."""
    variants = registry()
    if CHAIN_SEPARATOR in name:
        return chain(CHAIN_SEPARATOR.join(part.strip() for part in name.split(CHAIN_SEPARATOR)))
    if name not in variants:
        heads = " or ".join(f"{head}{CHAIN_SEPARATOR}<variant>" for head in transforms())
        raise UserError(f"unknown variant {name!r}: choose from {', '.join(variants)} (or a chain: {heads})")
    return variants[name]


def transforms() -> list[str]:
    """The registered variants that can head a chain (they declare a ``transform``)."""
    return [variant.name for variant in registry().values() if variant.transform is not None]


@cache
def chain(name: str) -> Variant:
    """The stacked variant ``<transform>+<deployment>`` (module docstring). UserError, naming
    the valid parts, when ``name`` has not exactly two registered parts, its first part is
    no transform, or its second is a transform or the baseline."""
    parts = [part.strip() for part in name.split(CHAIN_SEPARATOR)]
    if len(parts) != 2 or not all(parts):
        raise UserError(f"variant {name!r}: a chain is <transform>{CHAIN_SEPARATOR}<variant>, two names, e.g. {STACKED[0]}")
    variants = registry()
    heads = " or ".join(f"{head}{CHAIN_SEPARATOR}<variant>" for head in transforms())
    deployments = [variant.name for variant in variants.values() if variant.transform is None and variant.name != BASELINE]
    for part in parts:
        if part not in variants:
            hint = did_you_mean(part, list(variants))
            raise UserError(
                f"variant {name!r}: unknown part {part!r}{';' + hint if hint else ''}; "
                f"write {heads}, where <variant> is one of {', '.join(deployments)}"
            )
    first, then = (variants[part] for part in parts)
    if first.transform is None:
        raise UserError(
            f"variant {name!r}: {first.name} is not a model transform and cannot head a chain; "
            f"the transforms are {', '.join(transforms())}"
        )
    if then.transform is not None or then.name == BASELINE:
        what = "two transforms do not stack" if then.transform is not None else f"{first.name} alone is that"
        raise UserError(
            f"variant {name!r}: the second part deploys the transformed model and {what}; "
            f"choose one of {', '.join(deployments)}"
        )
    devices = tuple(device for device in then.devices if device in first.devices)
    return Variant(
        f"{first.name}{CHAIN_SEPARATOR}{then.name}", f"{first.name}, then {then.name}: {then.description}",
        build=lambda ctx: _build_chain(ctx, first, then), devices=devices, parts=(first, then),
        calibrates=first.calibrates or then.calibrates,
    )


def _build_chain(ctx: BuildContext, first: Variant, then: Variant) -> Engine:
    """``then``'s engine built from ``first``'s transformed model (module docstring)."""
    name = f"{first.name}{CHAIN_SEPARATOR}{then.name}"
    report_dir = None if ctx.report_dir is None else Path(ctx.report_dir) / name
    transformed = first.transform(dataclasses.replace(ctx, variant=first, report_dir=report_dir))
    model = transformed.model
    engine = then.build_engine(dataclasses.replace(
        ctx, reference_model=lambda: copy.deepcopy(model), report_dir=report_dir,
        weights_key=f"{ctx.weights_key}{CHAIN_SEPARATOR}{transformed.key}",
    ))
    # The work per image is the transformed model's (pruning removes some): the transform's
    # own count, else the model's, not the reference's that a plain deployment reports.
    gflops = transformed.info.get("gflops_per_image") or f"{count_flops(model) / 1e9:.3f}"
    engine.info = {"chain": name, **{f"{first.name}.{key}": value for key, value in transformed.info.items()},
                   **engine.info, "gflops_per_image": gflops}
    return engine


def parse_variant_options(raw: Mapping[str, str], variants: Sequence[str] | None = None) -> VariantOptions:
    """Check every ``<variant>.<option>`` key and its value; the validated options.

    ``raw``: keys to texts, as ``--variant-options`` gives them (a VariantOptions works
    too). ``variants``: the variant names whose options are accepted; by default every
    registered one. Keys under a shared prefix (``onnx.<option>``) are checked with each
    variant that takes them. Raises UserError naming the key: for an unknown variant
    (listing the variants), an unknown option (with a "did you mean" and the variant's
    valid keys), or a value its parser refuses.
    """
    text = {str(key).strip(): str(value).strip() for key, value in raw.items()}
    named = list(registry().values()) if variants is None else [get_variant(name) for name in variants]
    declared = list(dict.fromkeys(part for variant in named for part in (variant.parts or (variant,))))
    takers: dict[str, list[Variant]] = {}
    for variant in declared:
        for prefix in dict.fromkeys(filter(None, (variant.name, variant.shared_prefix))):
            takers.setdefault(prefix, []).append(variant)
    for key, value in text.items():
        prefix, _, name = key.partition(".")
        if prefix not in takers:
            raise UserError(_unknown_variant(key, takers, [variant.name for variant in declared]))
        valid = _valid_keys(prefix, takers[prefix])
        if key not in valid:
            raise UserError(_unknown_option(key, prefix, takers[prefix], valid))
        for variant in takers[prefix]:
            if any(option.name == name for option in variant.options):
                variant.option(name).value(key, value)
    return VariantOptions(text)


def _valid_keys(prefix: str, variants: Sequence[Variant]) -> list[str]:
    return list(dict.fromkeys(f"{prefix}.{option.name}" for variant in variants for option in variant.options))


def _unknown_variant(key: str, takers: Mapping[str, Sequence[Variant]], names: Sequence[str]) -> str:
    every_key = [valid for prefix, variants in takers.items() for valid in _valid_keys(prefix, variants)]
    prefix = key.partition(".")[0]
    hint = did_you_mean(key, every_key) or did_you_mean(prefix, list(takers))
    return (
        f"unknown variant {prefix!r} in {OPTION_FLAG} key {key!r} (keys are <variant>.<option>):{hint} "
        f"the variants are: {', '.join(names)}"
    )


def _unknown_option(key: str, prefix: str, variants: Sequence[Variant], valid: Sequence[str]) -> str:
    shared = f" (for {', '.join(variant.name for variant in variants)})" if len(variants) > 1 else ""
    takes = f"takes: {', '.join(valid)}{shared}" if valid else "takes no options"
    return f"unknown variant option {key!r}:{did_you_mean(key, valid)} {prefix} {takes}"


def describe_options(variant: Variant | str) -> list[str]:
    """One line per option of ``variant`` for ``densenet-opt list``, e.g.
    ``pruned.amount=0.01: fraction of ... (a number in [0, 1))``; empty when it takes none."""
    variant = get_variant(variant) if isinstance(variant, str) else variant
    lines = []
    for option in variant.options:
        choices = f"; one of {', '.join(option.choices)}" if option.choices else ""
        shared = f"; {variant.shared_prefix}.{option.name} sets it too" if variant.shared_prefix else ""
        lines.append(f"{variant.name}.{option.name}={option.default_text}: {option.help}{choices}{shared}")
    return lines
