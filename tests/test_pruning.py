"""densenet_opt.variants.pruning on a seeded random DenseNet-121 and small images."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from densenet_opt.errors import UserError
from densenet_opt.flops import count_flops, count_params
from densenet_opt.variants import BuildContext, Engine, get_variant, parse_variant_options, pruning
from densenet_opt.variants.pruning import (
    AMOUNT,
    DEFAULT_STRUCTURED_AMOUNT,
    DEFAULT_UNSTRUCTURED_AMOUNT,
    PRUNED,
    PRUNED_STRUCTURED,
    bottlenecks,
    conv_layers,
    prune_bottlenecks,
    prune_unstructured,
    recalibrate_batchnorm,
)

# DenseNet-121's spatial size shrinks 32x; 64x64 keeps every layer and costs ~1/12 of 224x224.
SMALL_IMAGES = (2, 3, 64, 64)


# densenet (a seeded random DenseNet-121) and tiny_densenet (same structure, a fraction of the
# cost: for tests of the build wiring) come from conftest.py.


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(SMALL_IMAGES, generator=torch.Generator().manual_seed(1))


def context(model: nn.Module, images: torch.Tensor, options: dict[str, str], tmp_path: Path) -> BuildContext:
    """pruned_structured recovers by BatchNorm recalibration alone here (distill=off):
    distillation, its default, is tested in test_distillation.py."""
    return BuildContext(
        device=torch.device("cpu"),
        batch_size=len(images),
        reference_model=lambda: copy.deepcopy(model),
        calibration_images=lambda count: images[torch.arange(count) % len(images)],
        calibration_samples=len(images),
        weights_key="test",
        cache_dir=tmp_path,
        options=parse_variant_options({"pruned_structured.distill": "off", **options}),
        progress=lambda message: None,
    )


def build_pruned(ctx: BuildContext) -> Engine:
    return get_variant(PRUNED).build_engine(ctx)


def build_pruned_structured(ctx: BuildContext) -> Engine:
    return get_variant(PRUNED_STRUCTURED).build_engine(ctx)


def amount(variant: str, options: dict[str, str]) -> float:
    return parse_variant_options(options).value(get_variant(variant), AMOUNT)


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------


def test_amount_defaults() -> None:
    assert amount(PRUNED, {}) == DEFAULT_UNSTRUCTURED_AMOUNT
    assert amount(PRUNED_STRUCTURED, {}) == DEFAULT_STRUCTURED_AMOUNT


@pytest.mark.parametrize("text, value", [("0", 0.0), ("0.5", 0.5), (" 0.25 ", 0.25), ("1e-2", 0.01)])
def test_amount_accepts_fractions(text: str, value: float) -> None:
    assert amount(PRUNED, {"pruned.amount": text}) == value


@pytest.mark.parametrize("text", ["1", "1.5", "-0.1", "abc", "", "nan", "inf", "30%"])
def test_amount_outside_zero_one_is_a_user_error(text: str) -> None:
    with pytest.raises(UserError) as error:
        parse_variant_options({"pruned_structured.amount": text})
    message = str(error.value)
    assert "pruned_structured.amount" in message and "[0, 1)" in message and "\n" not in message


def test_bad_amount_fails_before_the_build(tiny_densenet: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="pruned.amount"):
        context(tiny_densenet, images, {"pruned.amount": "2"}, tmp_path)


# ---------------------------------------------------------------------------------------
# Unstructured
# ---------------------------------------------------------------------------------------


UNSTRUCTURED_AMOUNT = 0.3


@pytest.fixture(scope="module")
def unstructured(densenet: nn.Module) -> nn.Module:
    return prune_unstructured(copy.deepcopy(densenet), UNSTRUCTURED_AMOUNT)


@pytest.mark.slow
def test_unstructured_reaches_the_requested_sparsity(densenet: nn.Module, unstructured: nn.Module) -> None:
    for conv, original in zip(conv_layers(unstructured), conv_layers(densenet), strict=True):
        zeros = int((conv.weight == 0).sum())
        assert zeros == round(UNSTRUCTURED_AMOUNT * conv.weight.numel())
        # The smallest magnitudes went: every kept weight is at least as large as any removed one.
        removed = original.weight.detach().abs()[conv.weight == 0]
        assert removed.max() <= conv.weight.detach().abs()[conv.weight != 0].min()


@pytest.mark.slow
def test_unstructured_leaves_no_reparametrisation(densenet: nn.Module, unstructured: nn.Module) -> None:
    model = unstructured
    assert set(model.state_dict()) == set(densenet.state_dict())
    assert not any(name.endswith(("_orig", "_mask")) for name, _ in model.named_parameters())
    assert not any(name.endswith("_mask") for name, _ in model.named_buffers())
    assert all(not conv._forward_pre_hooks for conv in conv_layers(model))


def test_pruned_engine_defaults_to_the_seeds_amount(tiny_densenet: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    engine = build_pruned(context(tiny_densenet, images, {}, tmp_path))
    logits = engine(images)
    assert logits.shape == (len(images), 1000) and logits.dtype == torch.float32
    expected = sum(round(DEFAULT_UNSTRUCTURED_AMOUNT * c.weight.numel()) for c in conv_layers(tiny_densenet))
    total = sum(c.weight.numel() for c in conv_layers(tiny_densenet))
    assert float(engine.info["sparsity"]) == pytest.approx(expected / total, abs=1e-4)
    assert int(engine.info["params"]) == count_params(tiny_densenet)  # zeros are still stored
    engine.close()


# ---------------------------------------------------------------------------------------
# Structured
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def structured(densenet: nn.Module) -> nn.Module:
    return prune_bottlenecks(copy.deepcopy(densenet), DEFAULT_STRUCTURED_AMOUNT)


@pytest.mark.slow
def test_structured_removes_bottleneck_channels(densenet: nn.Module, structured: nn.Module) -> None:
    before, after = bottlenecks(densenet), bottlenecks(structured)
    assert len(after) == len(before) == 58  # 6 + 12 + 24 + 16 dense layers
    for old, new in zip(before, after):
        kept = round(old.channels * (1 - DEFAULT_STRUCTURED_AMOUNT))
        layer = new.layer
        assert layer.conv1.out_channels == layer.conv1.weight.shape[0] == kept
        assert layer.norm2.num_features == len(layer.norm2.running_mean) == kept
        assert layer.conv2.in_channels == layer.conv2.weight.shape[1] == kept
        # The concatenated feature maps keep their shapes.
        assert layer.conv1.in_channels == old.layer.conv1.in_channels
        assert layer.conv2.out_channels == old.layer.conv2.out_channels


@pytest.mark.slow
def test_structured_model_runs(structured: nn.Module, images: torch.Tensor) -> None:
    assert not any(m.training for m in structured.modules())  # the new modules too
    with torch.inference_mode():
        logits = structured(images)
    assert logits.shape == (len(images), 1000) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_structured_cuts_params_and_flops(densenet: nn.Module, structured: nn.Module) -> None:
    # Each removed channel takes its conv1 filter, its conv2 input slice and norm2's scale and shift.
    removed = sum(
        (old.channels - new.channels) * (old.layer.conv1.in_channels + old.layer.conv2.out_channels * 9 + 2)
        for old, new in zip(bottlenecks(densenet), bottlenecks(structured))
    )
    assert count_params(structured) == count_params(densenet) - removed
    # The bottleneck convolutions are most, not all, of the FLOPs (stem, transitions, head).
    flops_ratio = count_flops(structured) / count_flops(densenet)
    assert 1 - DEFAULT_STRUCTURED_AMOUNT < flops_ratio < 1 - DEFAULT_STRUCTURED_AMOUNT / 2


@pytest.mark.slow
def test_structured_keeps_the_important_channels_exactly(densenet: nn.Module, images: torch.Tensor) -> None:
    """Channels whose BatchNorm scale and shift are 0 output nothing after ReLU; removing
    exactly those must leave the logits unchanged, which checks that every kept channel's
    conv1 filter, norm2 parameters and statistics, and conv2 weights still line up."""
    model = copy.deepcopy(densenet)
    generator = torch.Generator().manual_seed(2)
    for bottleneck in bottlenecks(model):
        dead = torch.randperm(bottleneck.channels, generator=generator)[: bottleneck.channels // 4]
        with torch.no_grad():
            bottleneck.layer.norm2.weight[dead] = 0.0
            bottleneck.layer.norm2.bias[dead] = 0.0
    with torch.inference_mode():
        expected = model(images)
        pruned = prune_bottlenecks(model, 0.25)
        assert all(b.channels == 96 for b in bottlenecks(pruned))
        torch.testing.assert_close(pruned(images), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_recalibration_rewrites_running_statistics(structured: nn.Module, images: torch.Tensor) -> None:
    model = copy.deepcopy(structured)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items() if "running_" in name}
    recalibrate_batchnorm(model, images)
    after = model.state_dict()
    assert not model.training and all(not m.training for m in model.modules())
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # The stem's BatchNorm now holds the statistics of these images' stem convolution.
    with torch.no_grad():
        stem = model.features.conv0(images)
    torch.testing.assert_close(model.features.norm0.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_recalibration_averages_batches_equally(structured: nn.Module, images: torch.Tensor) -> None:
    one_by_one = recalibrate_batchnorm(copy.deepcopy(structured), images, batch_size=1)
    with torch.no_grad():
        stems = [one_by_one.features.conv0(image[None]).mean(dim=(0, 2, 3)) for image in images]
    torch.testing.assert_close(one_by_one.features.norm0.running_mean, torch.stack(stems).mean(0), rtol=1e-4, atol=1e-5)


def test_pruned_structured_engine(tiny_densenet: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    engine = build_pruned_structured(context(tiny_densenet, images, {"pruned_structured.amount": "0.5"}, tmp_path))
    logits = engine(images)
    assert logits.shape == (len(images), 1000) and logits.dtype == torch.float32
    half = bottlenecks(tiny_densenet)[0].channels // 2
    assert all(b.channels == half for b in bottlenecks(engine.module))
    assert int(engine.info["params"]) == count_params(engine.module) < count_params(tiny_densenet)
    assert float(engine.info["gflops_per_image"]) < count_flops(tiny_densenet) / 1e9
    assert engine.info["amount"] == "0.5" and engine.info["bottleneck_channels"] == str(half)
    # Recalibrated on the calibration images, and in eval mode.
    assert not any(m.training for m in engine.module.modules())
    assert not torch.equal(engine.module.features.norm0.running_mean, tiny_densenet.features.norm0.running_mean)
    engine.close()


def test_one_build_per_context_and_options(tiny_densenet: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    """Each batch size of a session gets an engine, but the pruning and recalibration run once."""
    ctx = context(tiny_densenet, images, {"pruned_structured.amount": "0.4"}, tmp_path)
    built = []
    counting = dataclasses.replace(ctx, reference_model=lambda: built.append(1) or ctx.reference_model())
    first, second = build_pruned_structured(counting), build_pruned_structured(counting)
    assert len(built) == 1 and first.module is not second.module
    torch.testing.assert_close(first(images), second(images))
    # Another amount, or another context (another sweep's weights and images), builds anew.
    build_pruned_structured(dataclasses.replace(counting, options=parse_variant_options({"pruned_structured.amount": "0.5"})))
    build_pruned_structured(dataclasses.replace(counting, reference_model=lambda: built.append(1) or ctx.reference_model()))
    assert len(built) == 3


def test_the_pruned_model_is_cached_on_disk_for_later_processes(
    tiny_densenet: nn.Module, images: torch.Tensor, tmp_path: Path, monkeypatch
) -> None:
    """A fresh process (the memory probe) loads the pruned, recalibrated model instead of
    recalibrating again; a damaged file is reported and built again."""
    recalibrated = []
    real_recalibrate = pruning.recalibrate_batchnorm
    monkeypatch.setattr(pruning, "recalibrate_batchnorm", lambda *a, **k: recalibrated.append(1) or real_recalibrate(*a, **k))
    messages: list[str] = []
    ctx = dataclasses.replace(context(tiny_densenet, images, {}, tmp_path), progress=messages.append)

    def fresh_process_build():
        pruning._cache.clear()
        return build_pruned_structured(ctx)

    built = fresh_process_build()
    loaded = fresh_process_build()
    assert recalibrated == [1]
    assert (built.info["pruned_model_cache"], loaded.info["pruned_model_cache"]) == ("miss", "hit")
    assert loaded.info["recalibrate_s"] == built.info["recalibrate_s"]  # the build's cost is still reported
    torch.testing.assert_close(loaded(images), built(images), rtol=0, atol=0)

    (path,) = (tmp_path / pruning.CACHE_SUBDIR).glob("*.pt")
    path.write_bytes(path.read_bytes()[:-5])
    again = fresh_process_build()
    assert recalibrated == [1, 1] and again.info["pruned_model_cache"] == "miss"
    assert any("is unusable" in m and "truncated" in m for m in messages), messages


def test_an_unwritable_cache_dir_is_one_sentence(tiny_densenet: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    pruning._cache.clear()
    with pytest.raises(UserError, match="pass a writable --cache-dir"):
        build_pruned_structured(context(tiny_densenet, images, {}, blocker))
