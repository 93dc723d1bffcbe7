"""Regression verdicts with confidence: a speed ratio, its bootstrap interval, and the rule.

The quantity judged is the **speed ratio** of a config: its speed relative to the baseline
variant in this run divided by the stored one (below 1: slower than when the baseline was
stored). Each run's figure comes from its per-round paired ratios, baseline seconds /
variant seconds, of the baseline engine timed right before each round of the variant
(measure.timing.PairedSpeedup): a change of the machine's speed lands in both halves of a
pair, which absolute latencies on a shared machine cannot offer. The ratio of two runs is
the ratio of their **20%-trimmed geometric means** (the mean of the log-ratios after the
lowest and highest 20% are dropped, exponentiated): as robust to an odd round as the
median, and more efficient with ten rounds (Wilcox, *Introduction to Robust Estimation and
Hypothesis Testing*, 3rd ed., 2012, ch. 3 and 5, recommends the 20% trimmed mean with the
percentile bootstrap; on the false-alarm tool's runs the median's intervals were wide enough
to miss 3 of 10 quiet 30% slowdowns, the trimmed mean's none).

The interval: a two-sided ``CONFIDENCE`` percentile bootstrap interval of that ratio
(Efron and Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13; Kalibera and Jones
recommend bootstrap intervals for ratios of execution times, *Rigorous Benchmarking in
Reasonable Time*, ISMM 2013): this run's per-round ratios and, where the stored baseline
kept them, the stored run's are resampled independently (scipy.stats.bootstrap,
``RESAMPLES`` resamples, a fixed seed, so a verdict is reproducible from the files). A stored
baseline without its rounds counts as exact (only this run's noise widens the interval); an
unpaired speedup (--speedup-pairing off) has no rounds and no interval.

The rule: a config **regresses** only when its whole interval lies below ``1 - max_drop``,
i.e. the slowdown is beyond the threshold *and* significant given the rounds; it is
**faster** when the whole interval lies above ``1 / (1 - max_drop)``; otherwise the change is
within the threshold or within the noise (**unchanged**). The false-alarm rate this gives
on a shared machine is measured by tools/false_alarm_rate.py
(docs/baselines.md#how-often-it-is-wrong-toolsfalse_alarm_ratepy).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

CONFIDENCE = 0.99
RESAMPLES = 4000
SEED = 20261207
REGRESSED, FASTER, UNCHANGED = "REGRESSED", "faster", "unchanged"
NOT_JUDGED = "not judged (contended)"
# The gate's verdicts of a sweep, one row per judged config, in its output directory.
VERDICTS_FILE = "regression_gate.csv"
VERDICT_COLUMNS = ("variant", "batch_size", "speed_ratio", "ci_low", "ci_high", "confidence", "rounds", "max_drop", "verdict")


@dataclass(frozen=True)
class Verdict:
    """One config's verdict. ``ratio``: this run's speedup / the stored speedup (the point
    estimate, dimensionless); ``low``/``high``: its ``confidence`` interval (equal to
    ``ratio`` when there are no rounds to resample); ``max_drop``: the threshold (a fraction);
    ``rounds``: this run's paired rounds (0: unpaired)."""

    variant: str
    batch_size: int
    ratio: float
    low: float
    high: float
    max_drop: float
    rounds: int
    confidence: float = CONFIDENCE
    contended: bool = False  # this run's pairs were mostly timed under contention (timing.too_contended)

    @property
    def outcome(self) -> str:
        """REGRESSED, faster or unchanged, by the module's rule; NOT_JUDGED for a config
        whose pairs were mostly timed while other processes competed for the CPUs (engines
        share a busy machine differently, so its ratio measures the contention)."""
        if self.contended:
            return NOT_JUDGED
        if self.high < 1 - self.max_drop:
            return REGRESSED
        if self.low > 1 / (1 - self.max_drop):
            return FASTER
        return UNCHANGED

    @property
    def regressed(self) -> bool:
        return self.outcome == REGRESSED

    @property
    def interval_text(self) -> str:
        if self.rounds == 0:
            return "no interval (unpaired)"
        return f"{self.confidence:.0%} CI {self.low:.3f}-{self.high:.3f}"

    def line(self) -> str:
        """"onnx at batch 1: speed ratio 0.712 (99% CI 0.650-0.770, 10 rounds) vs stored: REGRESSED (beyond -25%)"."""
        rounds = f", {self.rounds} rounds" if self.rounds else ""
        return (f"{self.variant} at batch {self.batch_size}: speed ratio {self.ratio:.3f} ({self.interval_text}{rounds}) "
                f"vs stored: {self.outcome} (threshold -{self.max_drop:.0%})")


def judge(variant: str, batch_size: int, current: Sequence[float] | float, stored: Sequence[float] | float,
          max_drop: float, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, contended: bool = False) -> Verdict:
    """The verdict on one config. ``current``/``stored``: the per-round paired speedups
    (baseline seconds / variant seconds, each > 0) of this run and of the stored run, or a
    single speedup where the rounds are not known; the ratio is of their 20%-trimmed
    geometric means (module docstring). ``max_drop``: the allowed drop of the
    speed ratio, a fraction in (0, 1). ``contended``: the verdict is NOT_JUDGED. Raises ValueError for an empty, non-positive or
    non-finite figure, or a max_drop outside (0, 1)."""
    if not 0 < max_drop < 1:
        raise ValueError(f"max_drop must be a fraction in (0, 1), not {max_drop}")
    now, before = _figures(current, "current"), _figures(stored, "stored")
    centers = _center(now), _center(before)
    ratio = centers[0] / centers[1]
    rounds = len(now) if len(now) > 1 else 0
    varying = [len(sample) > 1 and len(set(sample)) > 1 for sample in (now, before)]
    if not any(varying):  # nothing to resample: the point is the interval
        return Verdict(variant, batch_size, ratio, ratio, ratio, max_drop, rounds, confidence, contended)

    def statistic(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        values = iter(resampled)
        top, bottom = (_center(next(values), axis=axis) if vary else center for vary, center in zip(varying, centers))
        return top / bottom

    data = tuple(np.asarray(sample, dtype=float) for sample, vary in zip((now, before), varying) if vary)
    result = stats.bootstrap(data, statistic, n_resamples=resamples, confidence_level=confidence, method="percentile",
                             vectorized=True, rng=np.random.default_rng(SEED))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Verdict(variant, batch_size, ratio, min(low, ratio), max(high, ratio), max_drop, rounds, confidence, contended)


TRIM = 0.2  # the proportion cut from each end before the mean of the log-ratios


def _center(values, axis: int = -1):
    """The 20%-trimmed geometric mean of positive ``values`` along ``axis`` (a float for a
    sequence, an array for a batch of resamples)."""
    center = np.exp(stats.trim_mean(np.log(np.asarray(values, dtype=float)), TRIM, axis=axis))
    return float(center) if np.ndim(center) == 0 else center


def _figures(values: Sequence[float] | float, name: str) -> list[float]:
    figures = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if not figures:
        raise ValueError(f"no {name} speedup to judge")
    if any(not math.isfinite(v) or v <= 0 for v in figures):
        raise ValueError(f"{name} speedups must be positive and finite: {figures[:5]}")
    return figures


def verdicts_csv(verdicts: Sequence[Verdict]) -> str:
    """The text of VERDICTS_FILE: VERDICT_COLUMNS, one row per verdict (ratios to 4 digits)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(VERDICT_COLUMNS)
    for v in verdicts:
        writer.writerow([v.variant, v.batch_size, f"{v.ratio:.4f}", f"{v.low:.4f}", f"{v.high:.4f}", v.confidence,
                         v.rounds, v.max_drop, v.outcome])
    return buffer.getvalue()


def read_verdicts(path: Path) -> list[dict[str, str]]:
    """The rows of a VERDICTS_FILE as dicts of text ([] when it does not exist)."""
    path = Path(path)
    return list(csv.DictReader(path.open(encoding="utf-8"))) if path.is_file() else []
