"""Latency statistics over pytest-benchmark's timed rounds."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    position = (len(sorted_values) - 1) * pct / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def benchmark_call(
    benchmark, call: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
    *, rounds: int, warmup_rounds: int,
) -> LatencyStats | None:
    """Time ``call(batch)`` with pytest-benchmark; None when benchmarking is disabled.

    One call per round: a round is one host-batch-in, host-logits-out inference, which
    is the latency a user sees, and rounds give the spread.
    """
    benchmark.pedantic(call, args=(batch,), rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    if benchmark.stats is None:
        return None
    return LatencyStats.from_seconds(benchmark.stats.stats.data)
