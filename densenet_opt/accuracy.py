"""Top-k accuracy against labels, and agreement with the fp32 reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ACCURACY = "imagenet_accuracy"
AGREEMENT = "agreement_with_fp32"


class NonFiniteLogits(Exception):
    """An engine produced NaN or Inf: a failure of that variant, never averaged in."""


def in_top_k(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Per sample: is the target among the k highest logits?

    Ties are resolved in the target's favour: it counts when fewer than k classes score
    strictly higher, so the answer never depends on how topk orders equal values.
    """
    target_logit = logits.gather(1, targets.view(-1, 1))
    return (logits > target_logit).sum(dim=1) < k


def predict(engine: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for all images, in batches of exactly ``batch_size`` (the last one padded),
    so that engines built for a static batch size see only that size."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        real = len(batch)
        if real < batch_size:
            batch = torch.cat([batch, batch[-1:].expand(batch_size - real, *batch.shape[1:])])
        outputs.append(engine(batch)[:real].float())
    logits = torch.cat(outputs)
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise NonFiniteLogits(f"{bad} of {len(logits)} samples have NaN or Inf logits")
    return logits


@dataclass(frozen=True)
class Fidelity:
    """accuracy_top_1/5 are % of samples; their meaning is given by ``kind``."""

    kind: str
    top1: float
    top5: float
    agreement_top1: float  # % of samples whose top-1 class equals the reference's
    relative_error: float  # ||logits - reference|| / ||reference|| over all samples


def fidelity(logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> Fidelity:
    """With labels: top-k accuracy. Without: the reference's top-1 class stands in for
    the label, so top-1/top-5 become agreement with the fp32 model."""
    reference_top1 = reference.argmax(dim=1)
    targets = labels if labels is not None else reference_top1
    agreement = (logits.argmax(dim=1) == reference_top1).float().mean().item() * 100
    return Fidelity(
        kind=ACCURACY if labels is not None else AGREEMENT,
        top1=in_top_k(logits, targets, 1).float().mean().item() * 100,
        top5=in_top_k(logits, targets, 5).float().mean().item() * 100,
        agreement_top1=agreement,
        relative_error=(torch.linalg.vector_norm(logits - reference) / torch.linalg.vector_norm(reference)).item(),
    )
