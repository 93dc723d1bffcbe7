"""Pruning: the seed's unstructured L1 pruning, and structured bottleneck-channel pruning.

Unstructured pruning zeroes weights but keeps every tensor's shape, so dense kernels
do exactly the same work: ``pruned`` reproduces the seed's technique to show that.
``pruned_structured`` physically removes channels, so the model has fewer FLOPs and
parameters on any hardware.

Time falls less than FLOPs: BatchNorm and ReLU over the concatenated feature maps,
the concatenations and the pooling are untouched (a sizeable share of eager CPU time:
README, "Measurements behind the design"), and oneDNN computes channels in blocks of 16,
so 90 kept channels cost as much as 96. Amounts that leave a multiple of 16 of the 128
channels (0.25, 0.375) waste nothing.

Option ``amount`` (``pruned.amount``, ``pruned_structured.amount``): the fraction pruned.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from densenet_opt import atomic, cache
from densenet_opt.flops import count_flops, count_params, weight_sparsity
from densenet_opt.values import fraction
from densenet_opt.variants import BuildContext, Engine, Variant, VariantOption
from densenet_opt.variants.torch_engine import TorchEngine, state_dict_bytes

PRUNED = "pruned"
PRUNED_STRUCTURED = "pruned_structured"
AMOUNT = "amount"
# The seed pruned "around 1%" of the convolution weights.
DEFAULT_UNSTRUCTURED_AMOUNT = 0.01
DEFAULT_STRUCTURED_AMOUNT = 0.3
# Bump when the pruning or recalibration changes what a cached pruned model holds.
PRUNE_RECIPE_VERSION = 1
CACHE_SUBDIR = "pruned"
# Images per forward pass during BatchNorm recalibration: a batch statistic needs a
# few images, and memory grows with it.
RECALIBRATION_BATCH = 32


def amount_option(default: float, what: str) -> VariantOption:
    """The ``amount`` option: the fraction of ``what`` to prune, in [0, 1)."""
    return VariantOption(AMOUNT, fraction, default, f"fraction of {what} to prune, a number in [0, 1)")


def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    """Every Conv2d of ``model``, in module order."""
    return [module for module in model.modules() if isinstance(module, nn.Conv2d)]


def prune_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """Zero the ``amount`` smallest-magnitude weights of every convolution, in place,
    and make it permanent: no weight_orig/weight_mask reparametrisation is left."""
    for conv in conv_layers(model):
        prune.l1_unstructured(conv, "weight", amount=amount)
        prune.remove(conv, "weight")
    return model


@dataclass(frozen=True)
class Bottleneck:
    """The inner channels of one dense layer: conv1 -> norm2 -> relu2 -> conv2.

    They never reach the concatenated feature maps (conv2 always emits growth_rate
    channels), so removing some changes no other layer's shape.
    """

    layer: nn.Module

    @property
    def channels(self) -> int:
        return self.layer.norm2.num_features

    def importance(self) -> torch.Tensor:
        """Per channel: how large its contribution to conv2 can be.

        After norm2 a channel's scale is |gamma| whatever conv1's filter norm was, and
        conv2's weights on that channel carry it forward, hence the product. BatchNorm
        scale alone (network slimming) ranks nothing on untrained weights, where every
        gamma is 1. (On synthetic weights no criterion beat a random ranking by much:
        they spread information evenly over channels.)
        """
        gamma = self.layer.norm2.weight.detach().abs()
        return gamma * self.layer.conv2.weight.detach().abs().sum(dim=(0, 2, 3))

    def keep(self, channels: torch.Tensor) -> None:
        """Replace conv1, norm2 and conv2 with smaller modules holding only ``channels``."""
        layer = self.layer
        layer.conv1 = _conv_subset(layer.conv1, out_channels=channels)
        layer.norm2 = _batchnorm_subset(layer.norm2, channels)
        layer.conv2 = _conv_subset(layer.conv2, in_channels=channels)


def bottlenecks(model: nn.Module) -> list[Bottleneck]:
    """Every dense layer of a torchvision DenseNet (recognised by its parts, since
    torchvision's _DenseLayer class is private)."""
    found = []
    for module in model.modules():
        conv1, norm2, conv2 = (getattr(module, name, None) for name in ("conv1", "norm2", "conv2"))
        if (
            isinstance(conv1, nn.Conv2d)
            and isinstance(norm2, nn.BatchNorm2d)
            and isinstance(conv2, nn.Conv2d)
            and conv1.out_channels == norm2.num_features == conv2.in_channels
            and conv1.groups == conv2.groups == 1
        ):
            found.append(Bottleneck(module))
    if not found:
        raise ValueError(f"{type(model).__name__} has no DenseNet dense layers (conv1 -> norm2 -> conv2)")
    return found


def prune_bottlenecks(model: nn.Module, amount: float) -> nn.Module:
    """Remove the ``amount`` least important bottleneck channels of every dense layer,
    in place; BatchNorm statistics downstream are stale until recalibrated."""
    for bottleneck in bottlenecks(model):
        kept = max(1, round(bottleneck.channels * (1.0 - amount)))
        channels = bottleneck.importance().topk(kept).indices.sort().values
        bottleneck.keep(channels)
    return model


def _conv_subset(
    conv: nn.Conv2d, *, out_channels: torch.Tensor | None = None, in_channels: torch.Tensor | None = None
) -> nn.Conv2d:
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else None
    if out_channels is not None:
        weight = weight[out_channels]
        bias = bias[out_channels] if bias is not None else None
    if in_channels is not None:
        weight = weight[:, in_channels]
    smaller = nn.Conv2d(
        weight.shape[1], weight.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, bias=bias is not None, padding_mode=conv.padding_mode,
        device=weight.device, dtype=weight.dtype,
    )
    with torch.no_grad():
        smaller.weight.copy_(weight)
        if bias is not None:
            smaller.bias.copy_(bias)
    return smaller.train(conv.training)


def _batchnorm_subset(norm: nn.BatchNorm2d, channels: torch.Tensor) -> nn.BatchNorm2d:
    smaller = nn.BatchNorm2d(
        len(channels), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
        track_running_stats=norm.track_running_stats, device=norm.weight.device, dtype=norm.weight.dtype,
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(norm, name)
            if source is not None:
                getattr(smaller, name).copy_(source[channels])
        if norm.num_batches_tracked is not None:
            smaller.num_batches_tracked.copy_(norm.num_batches_tracked)
    # A new module starts in training mode, where BatchNorm would use batch statistics.
    return smaller.train(norm.training)


def _batches(images: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), size):
        yield images[start : start + size]


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = RECALIBRATION_BATCH) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images``, in place.

    momentum=None makes them a plain average over the batches rather than an
    exponential one, so the order of batches does not matter. The model ends in eval mode.
    """
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    saved_momentum = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    device = next(model.parameters()).device
    model.train()
    try:
        with torch.no_grad():
            for batch in _batches(images, batch_size):
                model(batch.to(device))
    finally:
        for norm, momentum in zip(norms, saved_momentum):
            norm.momentum = momentum
        model.eval()
    return model


def cost_info(model: nn.Module) -> dict[str, str]:
    """Parameters, FLOPs per 224x224 image and convolution weight sparsity, for engine.info."""
    return {
        "params": str(count_params(model)),
        "gflops_per_image": f"{count_flops(model) / 1e9:.3f}",
        "sparsity": f"{weight_sparsity([conv.weight for conv in conv_layers(model)]):.4f}",
    }


@dataclass(frozen=True)
class PrunedModel:
    """A pruned model and its engine_info entries (amount, times in seconds, cost_info)."""

    model: nn.Module  # on the CPU, eval mode; every engine gets its own copy
    info: dict[str, str]


# Pruned models by everything they depend on. The weights' and images' sources are part
# of the key (as the context's own callables), so two sweeps never share an entry. It
# spares rebuilding, and recalibrating, for each batch size of a session.
_CACHE_ENTRIES = 4
_cache: dict[tuple[object, ...], PrunedModel] = {}


def _cached(key: tuple[object, ...], build: Callable[[], PrunedModel]) -> PrunedModel:
    if key not in _cache:
        while len(_cache) >= _CACHE_ENTRIES:
            del _cache[next(iter(_cache))]
        _cache[key] = build()
    return _cache[key]


def _engine(ctx: BuildContext, pruned: PrunedModel) -> Engine:
    model = copy.deepcopy(pruned.model).to(ctx.device).eval()
    return TorchEngine(model, ctx.device, model_size_bytes=state_dict_bytes(model), info=dict(pruned.info))


def build_pruned(ctx: BuildContext) -> Engine:
    """The reference model with ``pruned.amount`` of each conv's weights zeroed; kept in
    memory for the other batch sizes of the session."""
    amount = ctx.option(AMOUNT)

    def build() -> PrunedModel:
        started = time.perf_counter()
        model = prune_unstructured(ctx.reference_model(), amount)
        info = {"amount": str(amount), "prune_s": f"{time.perf_counter() - started:.2f}"}
        return PrunedModel(model, {**info, **cost_info(model)})

    return _engine(ctx, _cached((PRUNED, amount, ctx.weights_key, ctx.reference_model), build))


def build_pruned_structured(ctx: BuildContext) -> Engine:
    """The reference model with ``pruned_structured.amount`` of each dense layer's
    bottleneck channels removed and BatchNorm recalibrated on ``ctx.calibration_samples``
    images; cached on disk by everything it depends on (a process that finds it loads it
    without recalibrating). UserError when the cache's disk is full or read-only."""
    amount = ctx.option(AMOUNT)

    def build() -> PrunedModel:
        images = ctx.calibration_images(ctx.calibration_samples)
        started = time.perf_counter()
        model = prune_bottlenecks(ctx.reference_model(), amount)
        pruned_at = time.perf_counter()
        path = pruned_model_path(ctx, amount, images)
        meta, reason = cache.check_cached(path)
        if meta is not None:  # the same channels kept, so the saved tensors fit this model
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            info = {**meta["info"], "pruned_model_cache": "hit", "load_s": f"{time.perf_counter() - pruned_at:.2f}"}
            return PrunedModel(model, info)
        if reason != cache.NOT_CACHED:
            ctx.progress(f"{PRUNED_STRUCTURED}: cached model {path} is unusable ({reason}); building it again")
        ctx.progress(f"{PRUNED_STRUCTURED}: recalibrating BatchNorm on {len(images)} images")
        model = recalibrate_batchnorm(model.to(ctx.device), images).cpu()
        info = {
            "amount": str(amount),
            "bottleneck_channels": str(bottlenecks(model)[0].channels),
            "prune_s": f"{pruned_at - started:.2f}",
            "recalibrate_s": f"{time.perf_counter() - pruned_at:.2f}",
            "calibration_images": str(len(images)),
            **cost_info(model),
        }
        atomic.write_atomic(path, lambda tmp: cache.torch_save(model.state_dict(), tmp), option=cache.CACHE_OPTION)
        cache.write_sidecar(path, {"info": info})
        return PrunedModel(model, {**info, "pruned_model_cache": "miss"})

    key = (
        PRUNED_STRUCTURED, amount, ctx.weights_key, ctx.device, ctx.reference_model,
        ctx.calibration_images, ctx.calibration_samples,
    )
    return _engine(ctx, _cached(key, build))


def pruned_model_path(ctx: BuildContext, amount: float, images: torch.Tensor) -> Path:
    """Where the pruned, recalibrated state dict is cached: keyed by everything it depends on."""
    key = {
        "variant": PRUNED_STRUCTURED, "recipe": PRUNE_RECIPE_VERSION, "weights": ctx.weights_key, "amount": amount,
        "calibration": f"{len(images)}-{cache.tensor_digest(images)}", "torch": torch.__version__,
    }
    return ctx.cache_dir / CACHE_SUBDIR / f"{PRUNED_STRUCTURED}-{cache.key_digest(key)}.pt"


VARIANTS = [
    Variant(PRUNED, "eager fp32, unstructured L1 pruning of conv weights (seed's ~1%; dense kernels, no speedup)",
            build_pruned, options=(amount_option(DEFAULT_UNSTRUCTURED_AMOUNT, "each convolution's weights (smallest |w|)"),)),
    Variant(PRUNED_STRUCTURED, "eager fp32, structured pruning of dense-layer bottleneck channels + BatchNorm recalibration",
            build_pruned_structured,
            options=(amount_option(DEFAULT_STRUCTURED_AMOUNT, "each dense layer's bottleneck channels (least important)"),)),
]
