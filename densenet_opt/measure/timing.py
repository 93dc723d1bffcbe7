"""Latency statistics over pytest-benchmark's timed rounds, and the order engines timed side by side are called in."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per call over the timed rounds (warm-up rounds excluded)."""

    rounds: int
    mean_ms: float
    stddev_ms: float
    median_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> LatencyStats:
        if not seconds:
            raise ValueError("no timed rounds to summarise")
        ms = sorted(s * 1e3 for s in seconds)
        return cls(
            rounds=len(ms),
            mean_ms=statistics.fmean(ms),
            stddev_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0,
            median_ms=statistics.median(ms),
            min_ms=ms[0],
            max_ms=ms[-1],
            p90_ms=percentile(ms, 90),
            p99_ms=percentile(ms, 99),
        )


# Seed of the orders interleaved() deals: the same run calls engines in the same orders.
ORDER_SEED = 20261207


def interleaved(count: int, rounds: int, seed: int = ORDER_SEED) -> Iterator[list[int]]:
    """The order in which ``count`` engines timed side by side are called in each of
    ``rounds`` rounds: a fresh random permutation of range(count) every round (numpy's
    generator, ``seed``), so that a change of the machine's speed lands on all of them and
    each engine follows every other about equally often.

    Why not one fixed or rotated order: rotating where a round starts keeps every engine's
    predecessor the same, and an engine pays for what the one before it leaves behind (a
    runtime's threads still spinning after its call: OpenMP's, ONNX Runtime's). Measured on
    the Intel AMX Xeon kind, batch 1, one process: the suite's openvino_int8 always called
    after torch.compile bf16 read 12.28 ms against 11.61 ms for the same IR under OpenVINO's
    defaults; in shuffled rounds 11.12 against 11.90 ms (benchmarks_baseline/<that kind>/notes.md).
    Raises ValueError for a negative count or rounds."""
    if count < 0 or rounds < 0:
        raise ValueError(f"count and rounds must be >= 0, got {count} and {rounds}")
    generator = np.random.default_rng(seed)
    for _ in range(rounds):
        yield [int(index) for index in generator.permutation(count)]


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    position = (len(sorted_values) - 1) * pct / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def benchmark_call(
    benchmark, call: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
    *, rounds: int, warmup_rounds: int, before_each: Callable[[], None] | None = None,
) -> tuple[LatencyStats, list[float]] | None:
    """Time ``call(batch)`` with pytest-benchmark; None when benchmarking is disabled.

    One call per round: a round is one host-batch-in, host-logits-out inference, which
    is the latency a user sees, and rounds give the spread. ``before_each`` runs untimed
    before every round, warm-up rounds included (pytest-benchmark's ``setup``): the paired
    speedup times the baseline engine there. Returns the statistics and the timed rounds'
    durations in seconds, in the order they ran.
    """
    def setup() -> tuple[tuple[torch.Tensor], dict]:
        if before_each is not None:
            before_each()
        return (batch,), {}

    benchmark.pedantic(call, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    if benchmark.stats is None:
        return None
    seconds = list(benchmark.stats.stats.data)
    return LatencyStats.from_seconds(seconds), seconds


# The fewest quiet pairs a paired speedup is taken from (PairedSpeedup.from_seconds).
MIN_QUIET_PAIRS = 3


def too_contended(pairs: int, contended_pairs: int) -> bool:
    """Whether a paired speedup of ``pairs`` pairs, ``contended_pairs`` of them timed under
    contention, has too few quiet ones to be taken from them alone: fewer than half, or
    fewer than MIN_QUIET_PAIRS (unless none was contended)."""
    quiet = pairs - contended_pairs
    return contended_pairs > 0 and quiet < max(MIN_QUIET_PAIRS, pairs / 2)


@dataclass(frozen=True)
class PairedSpeedup:
    """The baseline engine timed right before each round of a variant (A B A B ...), so that
    a change of the machine's speed during the sweep lands in both halves of each pair.

    ``speedup`` is the median of the per-pair ratios baseline seconds / variant seconds;
    ``spread`` half their interquartile range (a robust +-), both dimensionless. The
    method is that of paired benchmark comparisons (e.g. pyperf's and hyperfine's
    interleaved runs): ratios of neighbours, summarised by robust statistics."""

    speedup: float
    spread: float
    pairs: int
    ratios: tuple[float, ...] = ()  # the ratios the figures come from, in the order the rounds ran (verdict.judge resamples them)
    contended_pairs: int = 0  # pairs timed while other processes competed for the CPUs
    # Too few quiet pairs: the figures come from every pair, contended ones included.
    contended: bool = False

    @classmethod
    def from_seconds(cls, baseline: Sequence[float], variant: Sequence[float],
                     quiet: Sequence[bool] | None = None) -> PairedSpeedup:
        """Pair the i-th baseline round with the i-th variant round; ValueError when the
        counts differ or are zero, or a duration is not positive.

        ``quiet``: per pair, whether no other process competed for the CPUs while it ran
        (None: unknown, all count as quiet). Engines share a busy machine differently (eager
        PyTorch on the one free core slowed 1.4x beside a busy loop where ONNX Runtime's two
        threads slowed 2x and more), so a pair timed under contention measures the
        contention: the figures come from the quiet pairs when they are at least half of
        them and at least MIN_QUIET_PAIRS, else from all pairs with ``contended`` set."""
        if len(baseline) != len(variant) or not variant:
            raise ValueError(f"paired rounds must match: {len(baseline)} baseline, {len(variant)} variant")
        if min(*baseline, *variant) <= 0:
            raise ValueError("paired rounds must have positive durations")
        if quiet is not None and len(quiet) != len(variant):
            raise ValueError(f"one quiet flag per pair: {len(quiet)} for {len(variant)} pairs")
        all_pairs = tuple(b / v for b, v in zip(baseline, variant, strict=True))
        flags = list(quiet) if quiet is not None else [True] * len(all_pairs)
        kept = tuple(r for r, q in zip(all_pairs, flags) if q)
        enough = not too_contended(len(all_pairs), len(all_pairs) - len(kept))
        in_order = kept if enough else all_pairs
        ratios = sorted(in_order)
        return cls(
            speedup=statistics.median(ratios),
            spread=(percentile(ratios, 75) - percentile(ratios, 25)) / 2,
            pairs=len(ratios),
            ratios=in_order,
            contended_pairs=len(all_pairs) - len(kept),
            contended=not enough,
        )


def per_round_text(ratios: Sequence[float]) -> str:
    """Per-round speedups as the results CSV's ``speedup_per_round`` cell: space-separated,
    4 significant digits, in the order the rounds ran."""
    return " ".join(f"{r:.4g}" for r in ratios)


def parse_per_round(text: str | None) -> list[float]:
    """The inverse of per_round_text ([] for an empty cell); ValueError for a bad number."""
    return [float(part) for part in (text or "").split()]
