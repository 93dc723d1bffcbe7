"""A config's speed over the stored runs of its machine kind, with change points marked.

Every ``--save-baseline`` adds a numbered pytest-benchmark run to the kind's directory
(``benchmarks_baseline/KIND/MACHINE_ID/NNNN_DEVICE.json``; pytest-benchmark never
overwrites one), and each benchmark of a run carries its result row in ``extra_info``. The
history of a config is, run by run in the order they were stored, its paired speedup over
the baseline variant (comparable across a busy and a quiet day, see verdict.py) and its
median latency (comparable only between quiet runs).

Change points: binary segmentation with Welch's t-test as the split criterion, the test
Apache Otava (formerly Hunter, from DataStax's work on E-Divisive means: Fleming et al.,
*Hunter: Using Change Point Detection to Hunt for Performance Regressions*, ICPE 2023)
uses to decide whether a candidate split is significant. The series is split where the
two sides differ most significantly (smallest p-value over every split leaving at least
``MIN_SEGMENT`` runs on each side); the split is kept when p < ``MAX_PVALUE`` and the two
sides' means differ by more than ``MIN_CHANGE`` (a fraction), and each side is searched
again. A step change and a slow drift across many small changes both show up as a split,
the drift where its two halves differ most.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from densenet_opt.errors import UserError

MIN_SEGMENT = 3
MAX_PVALUE = 0.001
MIN_CHANGE = 0.02


@dataclass(frozen=True)
class StoredPoint:
    """One config in one stored run: its run file, when it was stored (pytest-benchmark's
    ``datetime``), the commit, the paired speedup over the baseline variant and the median
    latency (ms per batch)."""

    run: str
    stored_at: str
    commit: str | None
    speedup: float | None
    latency_ms_median: float | None


@dataclass(frozen=True)
class ChangePoint:
    """A change between ``index - 1`` and ``index`` of a series: the means before and after
    (of the segment it splits) and Welch's t-test p-value."""

    index: int
    before: float
    after: float
    pvalue: float

    @property
    def change(self) -> float:
        """after / before - 1 (a fraction; negative: the figure fell)."""
        return self.after / self.before - 1


def stored_history(kind_directory: Path, device: str) -> dict[tuple[str, int], list[StoredPoint]]:
    """{(variant, batch size): its points} over every stored pytest-benchmark run of
    ``device`` in ``kind_directory`` (any machine id), in the order stored. Raises UserError
    naming a run file that is not a pytest-benchmark run."""
    runs = []
    for path in sorted(Path(kind_directory).glob(f"*/*_{device}.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            runs.append((str(document["datetime"]), path, document))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(f"stored run {path} is not a pytest-benchmark run ({error!r}): restore it from git or delete it") from None
    history: dict[tuple[str, int], list[StoredPoint]] = {}
    for stored_at, path, document in sorted(runs, key=lambda run: run[0]):
        commit = (document.get("commit_info") or {}).get("id")
        for benchmark in document.get("benchmarks", []):
            row = benchmark.get("extra_info") or {}
            if row.get("status", "ok") != "ok" or "optimization_technique" not in row:
                continue
            key = (str(row["optimization_technique"]), int(row["batch_size"]))
            median = (benchmark.get("stats") or {}).get("median")
            history.setdefault(key, []).append(StoredPoint(
                run=path.name, stored_at=stored_at, commit=commit[:10] if commit else None,
                speedup=_positive(row.get("speedup_vs_baseline")),
                latency_ms_median=_positive(row.get("latency_ms_median")) or (1000 * median if median else None)))
    return history


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def change_points(series: Sequence[float], *, min_segment: int = MIN_SEGMENT, max_pvalue: float = MAX_PVALUE,
                  min_change: float = MIN_CHANGE) -> list[ChangePoint]:
    """The change points of ``series`` (positive figures in the order measured), by the
    module's rule, sorted by index. Fewer than 2 x ``min_segment`` figures: none."""
    from scipy import stats  # only when a history is read

    found: list[ChangePoint] = []

    def search(start: int, end: int) -> None:
        best = None
        for split in range(start + min_segment, end - min_segment + 1):
            left, right = series[start:split], series[split:end]
            if statistics.pvariance(left) == 0 and statistics.pvariance(right) == 0:
                pvalue = 0.0 if statistics.fmean(left) != statistics.fmean(right) else 1.0
            else:
                pvalue = float(stats.ttest_ind(left, right, equal_var=False).pvalue)
            if best is None or pvalue < best[1]:
                best = (split, pvalue)
        if best is None:
            return
        split, pvalue = best
        before, after = statistics.fmean(series[start:split]), statistics.fmean(series[split:end])
        if pvalue < max_pvalue and abs(after / before - 1) > min_change:
            found.append(ChangePoint(split, before, after, pvalue))
            search(start, split)
            search(split, end)

    search(0, len(series))
    return sorted(found, key=lambda point: point.index)


def history_lines(history: dict[tuple[str, int], list[StoredPoint]], configs: Sequence[tuple[str, int]] | None = None) -> list[str]:
    """A table per config: run, stored at, commit, speedup, median latency, and the change
    points of the speedup series marked where they start."""
    lines = []
    for key in sorted(configs if configs is not None else history):
        points = history.get(key, [])
        variant, batch_size = key
        lines.append(f"\n{variant} at batch {batch_size}: {len(points)} stored run(s)")
        speedups = [p.speedup for p in points]
        marks = {c.index: c for c in change_points(speedups)} if all(s is not None for s in speedups) else {}
        for index, point in enumerate(points):
            mark = marks.get(index)
            note = (f"  <- change point: speedup {mark.before:.3f} -> {mark.after:.3f} ({mark.change:+.1%}, Welch p={mark.pvalue:.1e})"
                    if mark else "")
            speedup = "-" if point.speedup is None else f"{point.speedup:.3f}x"
            latency = "-" if point.latency_ms_median is None else f"{point.latency_ms_median:.2f} ms"
            lines.append(f"  {point.run:16} {point.stored_at[:19]:19} {point.commit or '-':10} speedup {speedup:>8}  "
                         f"median {latency:>11}{note}")
    return lines
