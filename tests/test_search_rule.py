"""The accuracy rule of the int8 searches: SearchRule's figure, auto's choice, the labels a
search is given (accuracy.py, variants/search_rule.py, Workbench.calibration_labels)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from densenet_opt.accuracy import AGREEMENT_RULE, TOP1_OF_FP32_RULE, SearchRule, rule_metric
from densenet_opt.config import options_from_mapping
from densenet_opt.errors import UserError
from densenet_opt import model
from densenet_opt.data import load_eval_set
from densenet_opt.variants import BuildContext, get_variant, parse_variant_options
from densenet_opt.variants.search_rule import heldout_labels, rule_name, search_rule
from densenet_opt.workbench import Workbench


def logits_of(classes: list[int], width: int = 5) -> np.ndarray:
    return np.eye(width, dtype=np.float32)[classes]


def test_mlperf_rule_scores_top1_against_labels_relative_to_fp32() -> None:
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    reference = np.array([0, 1, 2, 3, 0, 1, 1, 2])  # fp32 right on 6 of 8: 75%
    rule = SearchRule.of(TOP1_OF_FP32_RULE, 99.0, reference, labels)
    assert rule.reference_rate == pytest.approx(0.75) and rule.metric == "top1_of_fp32_pct"
    # A candidate that flips one image fp32 got wrong anyway (index 5: 1 -> 2) keeps all of fp32's top-1 ...
    same_top1 = [0, 1, 2, 3, 0, 2, 1, 2]
    assert rule.score(logits_of(same_top1)) == pytest.approx(100.0) and rule.meets(rule.score(logits_of(same_top1)))
    # ... while its agreement with fp32 is 87.5%: the agreement rule would refuse it.
    agreement = SearchRule.of(AGREEMENT_RULE, 99.0, reference)
    assert agreement.score(logits_of(same_top1)) == pytest.approx(87.5) and not agreement.meets(87.5)
    # One more right than fp32 is above 100%; one fewer is 5/6.
    assert rule.score(logits_of([0, 1, 2, 3, 4, 1, 1, 2])) == pytest.approx(700 / 6)
    assert rule.score(logits_of([1, 1, 2, 3, 0, 1, 1, 2])) == pytest.approx(500 / 6)
    assert rule.score_of_matches(0.75) == pytest.approx(100.0)
    assert torch.tensor(rule.score(torch.from_numpy(logits_of(same_top1)))) == pytest.approx(100.0)


def test_mlperf_rule_without_labels_or_scale_is_refused() -> None:
    reference = np.array([0, 1])
    with pytest.raises(ValueError, match="needs a label for each of the 2"):
        SearchRule.of(TOP1_OF_FP32_RULE, 99.0, reference)
    with pytest.raises(ValueError, match="got 3 labels"):
        SearchRule.of(TOP1_OF_FP32_RULE, 99.0, reference, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="none of the 2 held-out images right"):
        SearchRule.of(TOP1_OF_FP32_RULE, 99.0, reference, np.array([1, 0]))
    with pytest.raises(ValueError, match="not one of"):
        SearchRule.of("top5", 99.0, reference)
    with pytest.raises(UserError, match="int8.accuracy_rule=agreement") as error:
        search_rule(TOP1_OF_FP32_RULE, 99.0, reference, np.array([1, 0]), "int8")
    assert "\n" not in str(error.value)
    assert rule_metric(AGREEMENT_RULE) == "agreement_top_1"


def context(options: dict[str, str], labels: torch.Tensor | None) -> BuildContext:
    return BuildContext(device=torch.device("cpu"), batch_size=1, reference_model=lambda: None,
                        calibration_images=lambda count: torch.zeros(count, 3, 2, 2), calibration_samples=2,
                        weights_key="test", cache_dir=Path("."), options=parse_variant_options(options, ["int8"]),
                        calibration_labels=lambda count: None if labels is None else labels[:count])


@pytest.mark.parametrize(("given", "labels", "expected"), [
    ({}, torch.arange(4), TOP1_OF_FP32_RULE),  # auto: MLPerf's rule where labels measure top-1
    ({}, None, AGREEMENT_RULE),  # auto: agreement where they do not
    ({"int8.accuracy_rule": "agreement"}, torch.arange(4), AGREEMENT_RULE),
    ({"int8.accuracy_rule": "top1_of_fp32"}, torch.arange(4), TOP1_OF_FP32_RULE),
])
def test_auto_is_mlperfs_rule_where_labels_exist(given: dict[str, str], labels, expected: str) -> None:
    variant = dataclasses.replace(get_variant("int8"), build=lambda ctx: rule_name(ctx, ctx.calibration_labels(4)),
                                  devices=("cpu",))
    assert variant.build_engine(context(given, labels)) == expected


def test_mlperfs_rule_asked_for_without_labels_is_one_sentence() -> None:
    variant = dataclasses.replace(get_variant("int8"), build=lambda ctx: rule_name(ctx, None), devices=("cpu",))
    with pytest.raises(UserError, match="int8.accuracy_rule=top1_of_fp32 needs labels") as error:
        variant.build_engine(context({"int8.accuracy_rule": "top1_of_fp32"}, None))
    assert "\n" not in str(error.value)


def test_heldout_labels_are_those_after_the_calibration_images() -> None:
    ctx = context({}, torch.arange(10) * 7)
    assert heldout_labels(ctx, 3, 4).tolist() == [21, 28, 35, 42]
    assert heldout_labels(context({}, None), 3, 4) is None


def test_the_workbench_gives_the_pseudo_labels_of_the_calibration_pool(tmp_path: Path) -> None:
    """Synthetic weights on synthetic images: the calibration pool (after the evaluated
    images) has its pseudo-classes as labels, listed without rendering an image."""
    workbench = Workbench(options_from_mapping({"num_samples": "5", "device": "cpu", "cache_dir": str(tmp_path)}),
                          progress=lambda message: None)
    # The weights resolved as the synthetic ones, without building them (cached_property's slot).
    workbench.__dict__["weights"] = type("W", (), {"trained": False, "source": model.SYNTHETIC, "key": "k"})()
    labels = workbench.calibration_labels(3)
    assert labels.tolist() == load_eval_set(None, 3, skip=5).labels.tolist() == [5, 6, 7]
    workbench.__dict__["weights"] = type("W", (), {"trained": True, "source": "file", "key": "k"})()
    assert workbench.calibration_labels(3) is None  # a trained network on synthetic images: labels mean nothing
