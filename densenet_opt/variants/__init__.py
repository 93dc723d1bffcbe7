"""The engine abstraction and the variant registry.

A variant turns the fp32 reference model into an *engine* for one device and batch
size. An engine takes a batch on the host and returns float32 logits on the host, so
every backend is timed across the same boundary. A new technique is a new module in
this package that defines ``VARIANTS`` and whose name is added to ``VARIANT_MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Protocol

import torch

from densenet_opt.errors import UserError, VariantUnavailable

# Order matters: it is the order of the sweep and of the registry listing.
VARIANT_MODULES: tuple[str, ...] = ("baseline", "pruning", "onnx", "quantization", "precision", "compiled")

BASELINE = "baseline"


class Engine(Protocol):
    """What every variant builds; see the module docstring for the contract."""

    model_size_bytes: int
    info: dict[str, str]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BuildContext:
    """Everything a variant may use to build its engine.

    ``reference_model`` and ``calibration_images`` are callables so that a variant
    that loads a cached artifact pays for neither (it shows in RAM and cold start).
    """

    device: torch.device
    batch_size: int
    reference_model: Callable[[], torch.nn.Module]
    calibration_images: Callable[[int], torch.Tensor]
    calibration_samples: int  # how many calibration images quantizing variants should use
    weights_key: str
    cache_dir: Path
    options: Mapping[str, str] = field(default_factory=dict)
    progress: Callable[[str], None] = print


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    build: Callable[[BuildContext], Engine]
    devices: tuple[str, ...] = ("cpu", "cuda")

    def build_engine(self, ctx: BuildContext) -> Engine:
        """Build, or raise VariantUnavailable with the reason it cannot run here."""
        if ctx.device.type not in self.devices:
            raise VariantUnavailable(
                f"{self.name} runs on {'/'.join(self.devices)} only, not {ctx.device.type}"
            )
        return self.build(ctx)


@cache
def registry() -> dict[str, Variant]:
    variants: dict[str, Variant] = {}
    for module_name in VARIANT_MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        for variant in module.VARIANTS:
            if variant.name in variants:
                raise RuntimeError(f"variant {variant.name!r} is registered twice")
            variants[variant.name] = variant
    return variants


def get_variant(name: str) -> Variant:
    variants = registry()
    if name not in variants:
        raise UserError(
            f"unknown variant {name!r}: choose from {', '.join(variants)}"
        )
    return variants[name]
