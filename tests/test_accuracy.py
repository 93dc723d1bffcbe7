"""Top-k on hand-made logits, ties, padding of the last batch, non-finite logits."""

from __future__ import annotations

import pytest
import torch

from densenet_opt.accuracy import ACCURACY, AGREEMENT, NonFiniteLogits, fidelity, in_top_k, predict


def test_top_k_on_hand_made_logits() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.0, -1.0, 2.0], [3.0, 2.0, 1.0, 0.0, -1.0, -2.0]])
    targets = torch.tensor([2, 4])
    assert in_top_k(logits, targets, 1).tolist() == [False, False]
    assert in_top_k(logits, targets, 3).tolist() == [True, False]
    assert in_top_k(logits, targets, 5).tolist() == [True, True]


def test_ties_count_in_the_targets_favour() -> None:
    logits = torch.tensor([[1.0, 1.0, 0.0]])
    assert in_top_k(logits, torch.tensor([0]), 1).item()
    assert in_top_k(logits, torch.tensor([1]), 1).item()
    assert not in_top_k(logits, torch.tensor([2]), 2).item()


class _FixedBatchEngine:
    """Accepts only its own batch size, like a CUDA-graph engine."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.seen: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        assert len(batch) == self.batch_size
        self.seen.append(len(batch))
        return batch.flatten(1)[:, :10] * 2


def test_predict_pads_a_batch_that_does_not_divide_n() -> None:
    images = torch.randn(10, 3, 4, 4)
    engine = _FixedBatchEngine(4)
    logits = predict(engine, images, 4)
    assert engine.seen == [4, 4, 4]
    assert torch.equal(logits, images.flatten(1)[:, :10] * 2)


def test_non_finite_logits_are_a_failure() -> None:
    def engine(batch: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(batch), 5)
        out[0, 1] = float("nan")
        return out

    with pytest.raises(NonFiniteLogits, match="1 of 3 samples"):
        predict(engine, torch.zeros(3, 1), 3)


def test_fidelity_with_and_without_labels() -> None:
    reference = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5.0, 1, 0, 0, 0], [0, 0, 5.0, 1, 0, 0], [0, 0, 0, 5.0, 1, 0]])
    logits = reference.clone()
    logits[3] = torch.tensor([0, 0, 0, 1.0, 5.0, 0])  # top-1 moves to the reference's second choice
    agreement = fidelity(logits, reference, None)
    assert agreement.kind == AGREEMENT
    assert (agreement.top1, agreement.top5, agreement.agreement_top1) == (75.0, 100.0, 75.0)
    assert agreement.relative_error == pytest.approx(
        (torch.linalg.vector_norm(logits - reference) / torch.linalg.vector_norm(reference)).item()
    )
    labelled = fidelity(logits, reference, torch.tensor([0, 2, 2, 4]))
    assert labelled.kind == ACCURACY and labelled.top1 == 75.0 and labelled.agreement_top1 == 75.0
