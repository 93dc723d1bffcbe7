"""densenet_opt.flops: FLOPs as torch.utils.flop_counter counts them, parameters, sparsity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densenet_opt.flops import count_flops, count_params, weight_sparsity

# DenseNet-121's well-known figures: ~2.83 GMACs at 224x224 (the counter says 2 FLOPs per
# multiply-add) and torchvision's parameter count.
DENSENET121_FLOPS = 5.668e9
DENSENET121_PARAMS = 7_978_856


@pytest.mark.slow
def test_densenet121_flops_per_image(densenet: nn.Module) -> None:
    assert count_flops(densenet) == pytest.approx(DENSENET121_FLOPS, rel=1e-3)


@pytest.mark.slow
def test_densenet121_params(densenet: nn.Module) -> None:
    assert count_params(densenet) == DENSENET121_PARAMS


@pytest.mark.slow
def test_flops_are_per_image(densenet: nn.Module) -> None:
    assert count_flops(densenet, (3, 3, 64, 64)) == count_flops(densenet, (1, 3, 64, 64))


def test_conv_flops_by_hand() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    # 2 FLOPs per multiply-add, one multiply-add per (output element, input channel, tap).
    assert count_flops(conv, (2, 3, 16, 16)) == 2 * (8 * 16 * 16) * (3 * 3 * 3)


def test_counting_leaves_the_model_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    count_flops(model, (1, 3, 8, 8))
    after = model.state_dict()
    assert all(after[name].device.type == "cpu" and torch.equal(after[name], before[name]) for name in before)


class DataDependent(nn.Module):
    """Its forward needs real values (a meta tensor has none)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float(x.abs().sum().item() >= 0)


def test_models_that_need_real_data_are_counted_on_their_device() -> None:
    assert count_flops(DataDependent(), (5, 6)) == 2 * 6 * 4


def test_weight_sparsity() -> None:
    weights = [torch.tensor([0.0, 1.0, 0.0, 2.0]), torch.tensor([[0.0, 3.0], [4.0, 5.0]])]
    assert weight_sparsity(weights) == pytest.approx(3 / 8)
    assert weight_sparsity([]) == 0.0
