"""The accuracy rule of the accuracy-aware int8 searches (``onnx_int8``, ``int8``,
``openvino_int8``): their two options and which rule ``auto`` is.

A search keeps the fewest operations in float that meet its rule on held-out images of the
calibration pool (never evaluated ones). ``accuracy_rule=auto`` (the default) is MLPerf's
rule where the images' labels measure top-1 (ImageNet with trained weights, or the
synthetic weights on their synthetic images): the candidate's top-1 at least
``accuracy_target`` % of the fp32 model's on the same images (accuracy.SearchRule); where
labels mean nothing (trained weights on synthetic images, random weights on ImageNet) it is
top-1 agreement with the fp32 model, which needs none. ``accuracy_rule=agreement`` keeps
agreement everywhere (the stricter: an int8 model may flip images the fp32 model gets wrong
anyway without losing top-1).
"""

from __future__ import annotations

import numpy as np

from densenet_opt.accuracy import AGREEMENT_RULE, MLPERF_TOP1_OF_FP32, SEARCH_RULES, TOP1_OF_FP32_RULE, SearchRule
from densenet_opt.errors import UserError
from densenet_opt.values import percent
from densenet_opt.variants import BuildContext, VariantOption

AUTO = "auto"


def rule_options(search: str) -> tuple[VariantOption, VariantOption]:
    """The ``accuracy_rule`` and ``accuracy_target`` options of a variant whose search is
    started by ``search`` (the option text that starts it, for the help: "float_nodes=auto")."""
    return (
        VariantOption.choice(
            "accuracy_rule", (AUTO, *SEARCH_RULES), AUTO,
            f"what {search} must keep on its held-out images: top1_of_fp32 (MLPerf's rule: top-1 against the labels "
            "at least accuracy_target % of the fp32 model's), agreement (top-1 agreement with fp32 at least "
            "accuracy_target %), auto (top1_of_fp32 where the labels measure top-1, else agreement)",
        ),
        VariantOption("accuracy_target", percent, MLPERF_TOP1_OF_FP32,
                      f"the % accuracy_rule asks of {search} (99: MLPerf's rule)"),
    )


def heldout_labels(ctx: BuildContext, calibration: int, heldout: int) -> np.ndarray | None:
    """int64 [heldout] labels of the calibration pool's images [calibration, calibration +
    heldout) (the held-out ones after the calibration images), or None where labels do not
    measure top-1 (BuildContext.calibration_labels)."""
    labels = ctx.calibration_labels(calibration + heldout)
    return None if labels is None else labels[calibration:].numpy().astype(np.int64)


def rule_name(ctx: BuildContext, labels: np.ndarray | None) -> str:
    """``ctx``'s accuracy_rule with auto resolved: TOP1_OF_FP32_RULE where ``labels`` exist,
    else AGREEMENT_RULE. UserError for top1_of_fp32 asked for without labels."""
    asked = ctx.option("accuracy_rule")
    if asked == AUTO:
        return TOP1_OF_FP32_RULE if labels is not None else AGREEMENT_RULE
    if asked == TOP1_OF_FP32_RULE and labels is None:
        raise UserError(
            f"{ctx.option_key('accuracy_rule')}={asked} needs labels that measure top-1 (ImageNet images with trained "
            "weights, or the synthetic weights on synthetic images), and these have none: pass accuracy_rule=agreement "
            "or auto"
        )
    return str(asked)


def search_rule(name: str, target: float, reference_top1: np.ndarray, labels: np.ndarray | None,
                variant: str) -> SearchRule:
    """SearchRule.of, with its ValueError (the fp32 model gets no held-out image right, so
    the rule has no scale) as a UserError naming ``variant``'s option to change."""
    try:
        return SearchRule.of(name, target, reference_top1, labels)
    except ValueError as error:
        raise UserError(f"{variant}: {error}: pass --variant-options {variant}.accuracy_rule=agreement") from None
