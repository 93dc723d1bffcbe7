"""densenet_opt.variants.distillation, and pruned_structured's recovery through it, on a
tiny DenseNet and 64x64 images."""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densenet_opt.accuracy import top1_agreement
from densenet_opt.errors import UserError
from densenet_opt.variants import BuildContext, Engine, get_variant, parse_variant_options, pruning
from densenet_opt.variants import distillation as D
from densenet_opt.variants.pruning import (
    DEFAULT_DISTILL_IMAGES,
    DEFAULT_DISTILL_LR,
    DEFAULT_DISTILL_STEPS,
    DEFAULT_DISTILL_TIME_LIMIT_S,
    DISTILL_BATCH,
    HELDOUT_IMAGES,
    PRUNED_STRUCTURED,
    RECOVERY_CSV,
    DistillSettings,
    bottlenecks,
    channels_to_keep,
    distill_settings,
    prune_bottlenecks,
    pruned_model_path,
    recalibrate_batchnorm,
)

AMOUNT = 0.5
TRAIN = 128
HELDOUT = 64
CLASSES = 16


def structured_images(count: int, seed: int = 3) -> torch.Tensor:
    """float32 [count, 3, 64, 64]: each a smooth pattern of one of CLASSES looks, jittered,
    plus pixel noise. A random DenseNet's logits hardly depend on pure noise; these give
    a teacher whose top-1 class varies with the image."""
    generator = torch.Generator().manual_seed(seed)
    looks = torch.randn(CLASSES, 3, 6, 6, generator=generator)
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    coarse = looks[labels] + 0.6 * torch.randn(count, 3, 6, 6, generator=generator)
    smooth = F.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)
    return smooth + 0.3 * torch.randn(count, 3, 64, 64, generator=generator)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model gains nothing from a second thread, and on a busy 2-core machine two
    threads spin against the other jobs: this file took 86 s so at a load average of 3,
    6 s with one thread (4 s on an idle machine either way)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    """Distinct images: the training ones first, then the held-out ones."""
    return structured_images(TRAIN + HELDOUT)


def tiny_teacher(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """A new tiny DenseNet (conftest.py's ``make_tiny_densenet``), its BatchNorm statistics fit
    to ``images`` and its logits scaled up (same top-1) so that softened probabilities are not
    all flat."""
    recalibrate_batchnorm(model, images)
    with torch.no_grad():
        model.classifier.weight.mul_(10.0)
    return model


@pytest.fixture(scope="module")
def teacher(pool: torch.Tensor, make_tiny_densenet) -> nn.Module:
    return tiny_teacher(make_tiny_densenet(), pool[:TRAIN])


def pruned(teacher: nn.Module) -> nn.Module:
    return prune_bottlenecks(copy.deepcopy(teacher), AMOUNT)


def settings(**changes) -> D.Settings:
    return dataclasses.replace(D.Settings(steps=20, lr=1e-3, batch_size=32, check_every=10), **changes)


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def recovered(teacher: nn.Module, pool: torch.Tensor) -> tuple[nn.Module, D.Result]:
    student = pruned(teacher)
    result = D.recover_densenet(
        student, teacher, pool[:TRAIN], pool[TRAIN:], channels_to_keep(teacher, AMOUNT), settings(), progress=quiet,
    )
    return student, result


# ---------------------------------------------------------------------------------------
# The method (distillation.py)
# ---------------------------------------------------------------------------------------


def test_kd_loss_is_hintons_kl_scaled_by_t_squared() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 10, generator=generator), torch.randn(5, 10, generator=generator)
    p_teacher = F.softmax(teacher / 3, dim=1)
    expected = (p_teacher * (p_teacher.log() - F.log_softmax(student / 3, dim=1))).sum(dim=1).mean() * 9
    torch.testing.assert_close(D.kd_loss(student, teacher, 3.0), expected)
    assert D.kd_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_recovery_raises_agreement_over_the_pruned_model(
    teacher: nn.Module, pool: torch.Tensor, recovered: tuple[nn.Module, D.Result]
) -> None:
    heldout, reference = pool[TRAIN:], D.predict(teacher, pool[TRAIN:])
    assert len(reference.argmax(dim=1).unique()) >= 8  # the teacher's answer depends on the image
    # What pruned_structured did before: BatchNorm recalibrated on the same training images.
    recalibrated = recalibrate_batchnorm(pruned(teacher), pool[:TRAIN])
    before = top1_agreement(D.predict(recalibrated, heldout), reference.argmax(dim=1))
    student, result = recovered
    after = top1_agreement(D.predict(student, heldout), reference.argmax(dim=1))
    assert after >= before + 10, (before, after)  # measured: 25.0% -> 43.8%
    # The curve: step 0 after the layer-wise fit, then each check; its last point is the student's.
    assert [point.step for point in result.curve] == [0, 10, 20] and result.steps == 20
    assert result.heldout_agreement_top_1 == pytest.approx(after)
    assert result.curve[0].heldout_agreement_top_1 > before
    assert result.curve[-1].loss < result.curve[0].loss  # the KD steps lower the loss
    assert not result.stopped_by_time_limit
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(result.curve, result.curve[1:]))
    # An ordinary model again: eval mode, trainable parameters, the pruned shapes.
    assert not student.training and all(p.requires_grad for p in student.parameters())
    assert [b.channels for b in bottlenecks(student)] == [16] * 8


def test_the_layerwise_fit_brings_each_layer_closer(teacher: nn.Module, pool: torch.Tensor) -> None:
    """From the teacher's own input, the refit first dense layer is much closer to the
    teacher's than the one that merely lost half its bottleneck channels."""
    images = pool[:TRAIN]
    targets = D.teacher_targets(teacher, images)
    student, untouched = pruned(teacher), pruned(teacher)
    messages: list[str] = []
    captured = D.reconstruct_densenet(
        student, images, targets, channels_to_keep(teacher, AMOUNT), capture="denseblock2", progress=messages.append,
    )
    assert captured is not None and captured.shape == (TRAIN, 16, 8, 8)  # transition1's output
    assert len(messages) == 4 and all("relative error" in message for message in messages)
    with torch.no_grad():
        stem = teacher.features[:4](images)

    def error(model: nn.Module) -> float:
        layer = model.features.denseblock1.denselayer1
        with torch.no_grad():
            got = D._at(layer([stem]), targets.positions[0])
        expected = targets.new_features[0]
        return (torch.linalg.vector_norm(got - expected) / torch.linalg.vector_norm(expected)).item()

    assert error(student) < 0.8 * error(untouched)


def test_the_divergence_rule() -> None:
    check = D.DivergenceCheck(start=1.0)
    assert [check.update(loss) for loss in (0.5, 0.6, 0.55, 0.7, 0.8, 0.9)] == [None] * 6  # rising, below the start
    assert "rose 4 checks in a row" in check.update(1.1)
    assert "not finite" in D.DivergenceCheck().update(math.nan)
    assert "not finite" in D.DivergenceCheck(start=1.0).update(math.inf)
    assert "grew more than 10-fold" in D.DivergenceCheck(start=1.0).update(11.0)


def test_a_huge_learning_rate_diverges(teacher: nn.Module, pool: torch.Tensor) -> None:
    with pytest.raises(D.Diverged) as error:
        D.distill(pruned(teacher), pool[:TRAIN], D.predict(teacher, pool[:TRAIN]), pool[TRAIN:],
                  D.predict(teacher, pool[TRAIN:]), settings(lr=1e6, steps=30, check_every=2), progress=quiet)
    assert 1 <= error.value.step <= 30


def test_a_deadline_before_the_first_step(teacher: nn.Module, pool: torch.Tensor) -> None:
    with pytest.raises(D.TimeLimitReached):
        D.distill(pruned(teacher), pool[:TRAIN], D.predict(teacher, pool[:TRAIN]), pool[TRAIN:],
                  D.predict(teacher, pool[TRAIN:]), settings(time_limit_s=0.0), progress=quiet)


def test_the_time_limit_stops_training_and_says_so(teacher: nn.Module, pool: torch.Tensor, monkeypatch) -> None:
    """A clock that advances a second each time it is read: the limit falls mid-run."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(D, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    messages: list[str] = []
    result = D.distill(pruned(teacher), pool[:TRAIN], D.predict(teacher, pool[:TRAIN]), pool[TRAIN:],
                       D.predict(teacher, pool[TRAIN:]), settings(steps=100, time_limit_s=40.0), progress=messages.append)
    assert result.stopped_by_time_limit and 1 <= result.steps < 100
    assert result.curve[-1].step == result.steps  # where it stopped is measured
    assert any("time limit reached after step" in message for message in messages)


def test_fewer_inputs_than_a_batch(teacher: nn.Module, pool: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        D.distill(pruned(teacher), pool[:16], D.predict(teacher, pool[:16]), pool[TRAIN:],
                  D.predict(teacher, pool[TRAIN:]), settings(batch_size=32), progress=quiet)


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------


def option(name: str, options: dict[str, str]) -> object:
    return parse_variant_options(options).value(get_variant(PRUNED_STRUCTURED), name)


def test_distill_option_defaults() -> None:
    assert option("distill", {}) == "on"
    assert option("distill_steps", {}) == DEFAULT_DISTILL_STEPS
    assert option("distill_lr", {}) == DEFAULT_DISTILL_LR
    assert option("distill_time_limit", {}) == DEFAULT_DISTILL_TIME_LIMIT_S == 900
    assert option("distill_images", {}) == DEFAULT_DISTILL_IMAGES


@pytest.mark.parametrize("name, text, value", [
    ("distill", "OFF", "off"), ("distill", " on ", "on"), ("distill_steps", "7", 7), ("distill_lr", "3e-4", 3e-4),
    ("distill_time_limit", "60", 60.0), ("distill_time_limit", "0.5", 0.5), ("distill_images", str(DISTILL_BATCH), DISTILL_BATCH),
])
def test_distill_options_parse(name: str, text: str, value: object) -> None:
    assert option(name, {f"pruned_structured.{name}": text}) == value


@pytest.mark.parametrize("name, text, says", [
    ("distill", "yes", "must be one of on, off"),
    ("distill_steps", "0", "must be at least 1, got 0 (to skip training, pass pruned_structured.distill=off)"),
    ("distill_steps", "1.5", "must be a whole number"),
    ("distill_lr", "0", "must be a number greater than 0"),
    ("distill_lr", "-1e-3", "must be a number greater than 0"),
    ("distill_lr", "nan", "must be a number greater than 0"),
    ("distill_lr", "fast", "must be a number greater than 0"),
    ("distill_time_limit", "0", "must be a number of seconds greater than 0"),
    ("distill_time_limit", "inf", "must be a number of seconds greater than 0"),
    ("distill_time_limit", "15m", "must be a number of seconds greater than 0"),
    ("distill_images", str(DISTILL_BATCH - 1), f"must be at least one training batch: pass {DISTILL_BATCH} or more"),
    ("distill_images", "many", "must be a whole number of images"),
])
def test_bad_distill_options_are_one_sentence(name: str, text: str, says: str) -> None:
    with pytest.raises(UserError) as error:
        parse_variant_options({f"pruned_structured.{name}": text})
    message = str(error.value)
    assert f"pruned_structured.{name}={text}" in message and says in message and "\n" not in message


# ---------------------------------------------------------------------------------------
# pruned_structured with distillation
# ---------------------------------------------------------------------------------------

# pruned_structured takes DEFAULT_DISTILL_IMAGES-style counts; the build tests train on
# one batch and hold out HELDOUT_IMAGES, all 64x64.
BUILD_POOL = DISTILL_BATCH + HELDOUT_IMAGES
FAST = {"pruned_structured.amount": str(AMOUNT), "pruned_structured.distill_images": str(DISTILL_BATCH),
        "pruned_structured.distill_steps": "2"}


@pytest.fixture(scope="module")
def build_pool() -> torch.Tensor:
    return structured_images(BUILD_POOL, seed=5)


@pytest.fixture(scope="module")
def build_teacher(build_pool: torch.Tensor, make_tiny_densenet) -> nn.Module:
    return tiny_teacher(make_tiny_densenet(), build_pool[:DISTILL_BATCH])


class Calls:
    """calibration_images, recording the counts asked for."""

    def __init__(self, pool: torch.Tensor) -> None:
        self.pool, self.counts = pool, []

    def __call__(self, count: int) -> torch.Tensor:
        self.counts.append(count)
        return self.pool[:count].clone()


def context(teacher: nn.Module, pool: torch.Tensor, options: dict[str, str], tmp_path: Path, **changes) -> BuildContext:
    ctx = BuildContext(
        device=torch.device("cpu"),
        batch_size=4,
        reference_model=lambda: copy.deepcopy(teacher),
        calibration_images=Calls(pool),
        calibration_samples=16,
        weights_key="test",
        cache_dir=tmp_path / "cache",
        options=parse_variant_options(options),
        progress=quiet,
        report_dir=tmp_path / "report",
    )
    return dataclasses.replace(ctx, **changes)


def build(ctx: BuildContext) -> Engine:
    pruning._cache.clear()  # as a fresh process would
    return get_variant(PRUNED_STRUCTURED).build_engine(ctx)


def read_curve(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_pruned_structured_distills_and_caches(
    build_teacher: nn.Module, build_pool: torch.Tensor, tmp_path: Path, monkeypatch
) -> None:
    messages: list[str] = []
    ctx = context(build_teacher, build_pool, FAST, tmp_path, progress=messages.append)
    engine = build(ctx)
    info = engine.info
    assert info["pruned_model_cache"] == "miss" and info["distill"] == "on"
    assert (info["distill_images"], info["distill_heldout_images"]) == (str(DISTILL_BATCH), str(HELDOUT_IMAGES))
    assert (info["distill_steps"], info["distill_steps_done"], info["distill_stopped_by"]) == ("2", "2", "steps")
    assert float(info["distill_s"]) >= float(info["distill_reconstruct_s"]) > 0
    # Trained on the first images of the pool, held out the next ones: one call for the
    # pool, one for the cache key's fingerprint (its first image).
    assert sorted(ctx.calibration_images.counts) == [1, BUILD_POOL]
    assert any("held-out top-1 agreement" in m and "left" in m for m in messages), messages
    assert [b.channels for b in bottlenecks(engine.module)] == [16] * 8
    assert engine(build_pool[:4]).shape == (4, 1000)

    curve = read_curve(tmp_path / "report" / RECOVERY_CSV)
    assert list(curve[0]) == ["step", "elapsed_s", "loss", "heldout_agreement_top_1"]
    assert [row["step"] for row in curve] == ["0", "2"]
    assert float(curve[-1]["heldout_agreement_top_1"]) == pytest.approx(float(info["distill_heldout_agreement_top_1"]), abs=0.01)

    # A later process finds the model: no images made beyond the fingerprint, no training,
    # the same logits, and the curve written again from the cached copy.
    (tmp_path / "report" / RECOVERY_CSV).unlink()
    monkeypatch.setattr(D, "recover_densenet", lambda *a, **k: pytest.fail("retrained on a cache hit"))
    again_ctx = context(build_teacher, build_pool, FAST, tmp_path)
    again = build(again_ctx)
    assert again_ctx.calibration_images.counts == [1]
    assert again.info["pruned_model_cache"] == "hit"
    assert again.info["distill_heldout_agreement_top_1"] == info["distill_heldout_agreement_top_1"]
    torch.testing.assert_close(again(build_pool[:4]), engine(build_pool[:4]), rtol=0, atol=0)
    assert read_curve(tmp_path / "report" / RECOVERY_CSV) == curve


def test_without_a_report_dir_nothing_is_written(build_teacher: nn.Module, build_pool: torch.Tensor, tmp_path: Path) -> None:
    build(context(build_teacher, build_pool, FAST, tmp_path, report_dir=None))
    assert not (tmp_path / "report").exists()


def test_a_diverging_run_is_one_sentence_and_caches_nothing(
    build_teacher: nn.Module, build_pool: torch.Tensor, tmp_path: Path
) -> None:
    options = {**FAST, "pruned_structured.distill_lr": "1e6", "pruned_structured.distill_steps": "30"}
    with pytest.raises(UserError) as error:
        build(context(build_teacher, build_pool, options, tmp_path))
    message = str(error.value)
    assert "diverged" in message and "pass a smaller --variant-options pruned_structured.distill_lr than 1e+06" in message
    assert "\n" not in message
    assert not list((tmp_path / "cache").rglob("*.pt")) and not (tmp_path / "report").exists()


def test_a_time_limit_too_short_for_one_step_is_one_sentence(
    build_teacher: nn.Module, build_pool: torch.Tensor, tmp_path: Path
) -> None:
    options = {**FAST, "pruned_structured.distill_time_limit": "0.001"}
    with pytest.raises(UserError) as error:
        build(context(build_teacher, build_pool, options, tmp_path))
    message = str(error.value)
    assert "time limit of 0.001 s ran out" in message and "before one training step" in message
    assert "pass a larger --variant-options pruned_structured.distill_time_limit" in message and "\n" not in message
    assert not list((tmp_path / "cache").rglob("*.pt"))


def test_distill_off_recalibrates_only(build_teacher: nn.Module, build_pool: torch.Tensor, tmp_path: Path) -> None:
    ctx = context(build_teacher, build_pool, {**FAST, "pruned_structured.distill": "off"}, tmp_path)
    engine = build(ctx)
    assert engine.info["distill"] == "off" and "recalibrate_s" in engine.info
    assert not any(key.startswith("distill_") for key in engine.info)
    assert sorted(ctx.calibration_images.counts) == [1, ctx.calibration_samples]
    assert not (tmp_path / "report" / RECOVERY_CSV).exists()


def test_the_cache_key_holds_every_distillation_setting(
    build_teacher: nn.Module, build_pool: torch.Tensor, tmp_path: Path
) -> None:
    ctx = context(build_teacher, build_pool, {}, tmp_path)
    base = DistillSettings(steps=10, lr=1e-4, time_limit_s=900.0, images=64)
    variants = [base, None, *(dataclasses.replace(base, **{field.name: getattr(base, field.name) * 2})
                              for field in dataclasses.fields(DistillSettings))]
    paths = {pruned_model_path(ctx, AMOUNT, settings) for settings in variants}
    assert len(paths) == len(variants)
    assert pruned_model_path(ctx, AMOUNT, base) == pruned_model_path(ctx, AMOUNT, dataclasses.replace(base))
    # The options as given reach the settings.
    options = {"pruned_structured.distill_steps": "7", "pruned_structured.distill_lr": "0.01"}
    given = context(build_teacher, build_pool, options, tmp_path)
    assert distill_settings(dataclasses.replace(given, variant=get_variant(PRUNED_STRUCTURED))) == DistillSettings(
        steps=7, lr=0.01, time_limit_s=DEFAULT_DISTILL_TIME_LIMIT_S, images=DEFAULT_DISTILL_IMAGES)
