"""The regression rule (densenet_opt/verdict.py) on stand-in engines with injected noise.

A stand-in "engine" is a service time; a round pairs the baseline's call with the
variant's, and the machine's speed drifts and jumps between rounds (a hog starting and
stopping) the same way for both halves of a pair, as on a shared VM, plus each call's own
jitter. No DenseNet, no timing of this machine: the rounds are generated, so the verdicts
are exact functions of the seeds.
"""

from __future__ import annotations

import random

import pytest

from densenet_opt.measure.timing import PairedSpeedup, too_contended
from densenet_opt.verdict import NOT_JUDGED, REGRESSED, UNCHANGED, judge

BASELINE_S, VARIANT_S = 0.070, 0.030  # eager baseline and an onnx-like variant, seconds per call


def paired_rounds(seed: int, slowdown: float = 0.0, rounds: int = 10, jitter: float = 0.06, hog: bool = True) -> list[float]:
    """Per-round paired speedups of the variant (slowed by ``slowdown``, a fraction) over the
    baseline: a machine whose speed drifts and, in a random stretch of rounds, is shared
    with a CPU hog (everything 1.5-3.6x slower, the baseline more than the variant, as
    measured on the 2-core VM; ``hog`` False: no hog), each call with lognormal jitter."""
    rng = random.Random(seed)
    hog_from, hog_to = sorted(rng.sample(range(rounds + 1), 2))
    baseline, variant = [], []
    for i in range(rounds):
        machine = 1 + 0.1 * i / rounds  # drift
        hogged = hog and hog_from <= i < hog_to
        baseline.append(BASELINE_S * machine * (3.6 if hogged else 1) * rng.lognormvariate(0, jitter))
        variant.append(VARIANT_S * (1 + slowdown) * machine * (2.0 if hogged else 1) * rng.lognormvariate(0, jitter))
    return list(PairedSpeedup.from_seconds(baseline, variant).ratios)


def stored_rounds(seed: int = 1000) -> list[float]:
    """The stored baseline's rounds: a quiet run."""
    rng = random.Random(seed)
    return [(BASELINE_S * rng.lognormvariate(0, 0.03)) / (VARIANT_S * rng.lognormvariate(0, 0.03)) for _ in range(10)]


def outcomes(slowdown: float, max_drop: float = 0.10, runs: int = 20, jitter: float = 0.06, hog: bool = True) -> list[str]:
    return [judge("onnx", 1, paired_rounds(seed, slowdown, jitter=jitter, hog=hog), stored_rounds(), max_drop).outcome
            for seed in range(runs)]


def test_unchanged_with_injected_noise_and_a_hog_passes() -> None:
    """No slowdown: no run of twenty regresses, whatever the hog did (it slows the baseline
    more than the variant, so the speedup only rises)."""
    assert REGRESSED not in outcomes(0.0)


def test_a_quiet_unchanged_run_is_unchanged() -> None:
    assert set(outcomes(0.0, jitter=0.03, runs=10, hog=False)) == {UNCHANGED}


def test_a_30_percent_slowdown_fails() -> None:
    """On a quiet machine every run of ten calls it. (Under a hog that slows the baseline
    more than the variant, the speedup rises and can hide a slowdown: a paired speedup is
    not invariant to contention. tools/false_alarm_rate.py measures what that costs.)"""
    assert outcomes(0.30, jitter=0.03, runs=10, hog=False).count(REGRESSED) == 10


def test_a_3_percent_change_within_the_noise_passes() -> None:
    assert REGRESSED not in outcomes(0.03, jitter=0.03) and REGRESSED not in outcomes(0.03, jitter=0.03, hog=False)


def test_each_verdict_line_prints_the_ratio_and_its_interval() -> None:
    verdict = judge("onnx", 1, [1.6, 1.62, 1.58, 1.61, 1.6], [2.0, 2.02, 1.98, 2.0, 2.01], 0.10)
    assert verdict.ratio == pytest.approx(0.8, abs=0.002) and verdict.low <= 0.8 <= verdict.high
    assert verdict.line() == (f"onnx at batch 1: speed ratio 0.800 (99% CI {verdict.low:.3f}-{verdict.high:.3f}, 5 rounds) "
                              "vs stored: REGRESSED (threshold -10%)")


def test_the_interval_is_reproducible_and_widens_with_noise() -> None:
    quiet = judge("onnx", 1, paired_rounds(3, jitter=0.02, hog=False), stored_rounds(), 0.10)
    noisy = judge("onnx", 1, paired_rounds(3, jitter=0.20, hog=False), stored_rounds(), 0.10)
    assert quiet == judge("onnx", 1, paired_rounds(3, jitter=0.02, hog=False), stored_rounds(), 0.10)
    assert noisy.high - noisy.low > quiet.high - quiet.low


def test_a_single_figure_has_no_interval_and_bad_input_is_refused() -> None:
    verdict = judge("onnx", 8, 1.5, 2.0, 0.10)
    assert (verdict.low, verdict.high, verdict.rounds) == (0.75, 0.75, 0) and verdict.regressed
    assert "no interval (unpaired)" in verdict.line()
    for bad in ([], [1.0, float("nan")], [0.0, 1.0]):
        with pytest.raises(ValueError):
            judge("onnx", 1, bad, 2.0, 0.10)
    with pytest.raises(ValueError, match="fraction"):
        judge("onnx", 1, 1.0, 1.0, 1.5)


def test_contended_pairs_are_left_out_when_enough_quiet_ones_remain() -> None:
    """A hog on for rounds 3-5: the pairs it spoiled (the variant's share of the machine
    halved) are left out, and the speedup is the quiet pairs'."""
    baseline = [0.070] * 10
    variant = [0.030] * 3 + [0.060] * 3 + [0.030] * 4
    quiet = [True] * 3 + [False] * 3 + [True] * 4
    paired = PairedSpeedup.from_seconds(baseline, variant, quiet)
    assert paired.speedup == pytest.approx(70 / 30) and paired.pairs == 7 and paired.contended_pairs == 3
    assert not paired.contended and len(paired.ratios) == 7
    # Mostly contended: every pair's figures, marked, and the gate does not judge them.
    mostly = PairedSpeedup.from_seconds(baseline, variant, [True] * 4 + [False] * 6)
    assert mostly.contended and mostly.pairs == 10 and mostly.contended_pairs == 6
    assert too_contended(10, 6) and not too_contended(10, 5) and not too_contended(2, 0) and too_contended(4, 2)
    verdict = judge("onnx", 1, list(mostly.ratios), 2.333, 0.10, contended=True)
    assert verdict.outcome == NOT_JUDGED and not verdict.regressed
