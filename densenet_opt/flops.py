"""Model cost figures for results: parameters, FLOPs per image, weight sparsity.

FLOPs are counted the way ``torch.utils.flop_counter.FlopCounterMode`` counts them: a
multiply-add is 2 FLOPs, and only matrix products and convolutions count (BatchNorm,
ReLU, pooling and concatenation are free; quantized kernels are not counted at all).
DenseNet-121 at 224x224 is ~5.7 GFLOP by that count, i.e. the ~2.9 GMACs usually quoted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from densenet_opt.preprocessing import IMAGE_SHAPE


def count_flops(model: torch.nn.Module, input_shape: Sequence[int] = (1, *IMAGE_SHAPE)) -> int:
    """FLOPs of one forward pass per image (input_shape includes the batch dimension)."""
    try:
        # Shapes are all the counter needs: on meta tensors it costs no compute and no memory.
        return _flops_per_image(model, input_shape, torch.device("meta"))
    except (NotImplementedError, RuntimeError):
        # Modules whose weights are not plain tensors (packed, quantized) need real data.
        parameter = next(model.parameters(), None)
        return _flops_per_image(model, input_shape, parameter.device if parameter is not None else None)


def _flops_per_image(model: torch.nn.Module, input_shape: Sequence[int], device: torch.device | None) -> int:
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    batch = torch.zeros(tuple(input_shape), device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        if device is not None and device.type == "meta":
            state = {
                name: torch.empty_like(tensor, device=device)
                for name, tensor in (*model.named_parameters(), *model.named_buffers())
            }
            functional_call(model, state, (batch,))
        else:
            model(batch)
    return counter.get_total_flops() // input_shape[0]


def count_params(model: torch.nn.Module) -> int:
    """Parameters (weights and biases, not BatchNorm running statistics)."""
    return sum(p.numel() for p in model.parameters())


def weight_sparsity(weights: Sequence[torch.Tensor]) -> float:
    """Fraction of exactly-zero entries over all the given tensors."""
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0
