"""Eager fp32 PyTorch: the reference every other variant is compared with."""

from __future__ import annotations

from densenet_opt.variants import BASELINE, BuildContext, Engine, Variant
from densenet_opt.variants.torch_engine import TorchEngine, state_dict_bytes


def build(ctx: BuildContext) -> Engine:
    """The reference model in eval mode on ``ctx.device``; its size is its state_dict's bytes."""
    model = ctx.reference_model().to(ctx.device).eval()
    return TorchEngine(model, ctx.device, model_size_bytes=state_dict_bytes(model))


VARIANTS = [Variant(BASELINE, "eager PyTorch fp32 (reference)", build)]
