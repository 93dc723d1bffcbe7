"""Accuracy-aware quantization's Pareto table: points, the choice among them, the file.

Shared by the accuracy-aware int8 searches (``onnx_int8``: variants/onnx/accuracy_aware.py,
``int8``: variants/quantization_search.py). Each search keeps k = 0, 1, 2, 4, ... of its
most harmful parts (ONNX nodes, torch modules: the table's ``unit``) in float, measures
every point's accuracy by the search's rule (accuracy.SearchRule: MLPerf's top-1 as % of
fp32's where labels exist, else top-1 agreement with fp32) on held-out images and its
throughput, and picks the point the variant runs: the fewest float parts that meet the
rule's target, else the all-int8 point (k = 0), flagged as missing it (trading throughput
for accuracy that still misses the target is the user's call: each variant takes any k as
an option).

This module imports no optional package, so both searches (and the tests) can use it.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from densenet_opt import atomic
from densenet_opt.accuracy import AGREEMENT_RULE, rule_metric, rule_text, score_text
from densenet_opt.cache import CACHE_OPTION
from densenet_opt.measure.timing import interleaved


def columns(unit: str, rule: str = AGREEMENT_RULE) -> tuple[str, ...]:
    """The Pareto table's CSV header for a search over ``unit`` ("nodes", "modules") by
    ``rule`` (its figure's column: accuracy.rule_metric)."""
    return (
        f"float_{unit}", rule_metric(rule), "throughput_samples_per_sec", "throughput_vs_all_int8",
        "meets_target", "chosen", f"excluded_{unit}",
    )


@dataclass(frozen=True)
class ParetoPoint:
    """One measured point: ``kept_float`` parts kept in float (``excluded``: their names,
    most harmful first), its ``score`` by the search's rule on the held-out images (%:
    accuracy.SearchRule.score), throughput in samples/s at the search's batch size, and its
    ratio to the all-int8 point (k = 0) timed in the same rounds."""

    kept_float: int
    excluded: tuple[str, ...]
    score: float
    throughput_samples_per_sec: float
    throughput_vs_all_int8: float

    def meets(self, target: float) -> bool:
        """Whether the score reaches ``target`` (%)."""
        return self.score >= target


@dataclass(frozen=True)
class Search:
    """A finished search: every point, the rule (accuracy.SEARCH_RULES) and its target (%),
    the held-out image count and the batch size it was measured with, the point chosen, and
    what a part is (``unit``: "nodes" for ONNX, "modules" for torch)."""

    points: tuple[ParetoPoint, ...]
    target: float
    heldout_images: int
    batch_size: int
    unit: str = "nodes"
    rule: str = AGREEMENT_RULE

    @property
    def chosen(self) -> ParetoPoint:
        """The fewest float parts that meet the target, else the all-int8 point (k = 0)."""
        meeting = [point for point in self.points if point.meets(self.target)]
        return min(meeting or self.points, key=lambda point: point.kept_float)

    def to_json(self) -> dict:
        return {
            "points": [asdict(point) for point in self.points], "target": self.target,
            "heldout_images": self.heldout_images, "batch_size": self.batch_size, "unit": self.unit,
            "rule": self.rule,
        }

    @classmethod
    def from_json(cls, data: dict) -> Search:
        points = tuple(ParetoPoint(**{**point, "excluded": tuple(point["excluded"])}) for point in data["points"])
        return cls(points, float(data["target"]), int(data["heldout_images"]), int(data["batch_size"]),
                   str(data["unit"]), str(data["rule"]))

    def table_csv(self) -> str:
        """The Pareto table as CSV text (``columns(unit, rule)``; the excluded names joined by ';')."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns(self.unit, self.rule))
        chosen = self.chosen
        for point in self.points:
            writer.writerow([
                point.kept_float, f"{point.score:.2f}", f"{point.throughput_samples_per_sec:.2f}",
                f"{point.throughput_vs_all_int8:.3f}", str(point.meets(self.target)).lower(),
                str(point == chosen).lower(), ";".join(point.excluded),
            ])
        return out.getvalue()

    def verdict(self) -> str:
        """One phrase on the chosen point against the target, for progress lines."""
        rule = rule_text(self.rule, self.target)
        if self.chosen.meets(self.target):
            return f"meets {rule}"
        best = max(point.score for point in self.points)
        return f"no point meets (best {best:.2f}%), so all-int8 misses {rule}"

    def chosen_text(self) -> str:
        """The chosen point in words, for progress lines: its float parts, score and verdict."""
        return (f"{self.chosen.kept_float} float {self.unit}, {score_text(self.rule, self.chosen.score)} on "
                f"{self.heldout_images} held-out images: {self.verdict()}")


def ladder(max_parts: int, available: int) -> list[int]:
    """k = 0, 1, 2, 4, ... (powers of two) up to min(``max_parts``, ``available``), that
    bound included."""
    top = min(max_parts, available)
    points, k = [0], 1
    while k < top:
        points.append(k)
        k *= 2
    if top > 0:
        points.append(top)
    return points


def round_robin_throughput(calls: Sequence[Callable[[], object]], batch_size: int, rounds: int) -> list[float]:
    """Samples/s of each of ``calls`` (each runs one batch of ``batch_size``): the median
    of ``rounds`` timed calls, the calls interleaved round by round in a fresh random order
    (measure.timing.interleaved) so that a drift of the machine's speed lands on every one
    alike and none always follows the same one (perf_counter)."""
    seconds: list[list[float]] = [[] for _ in calls]
    for order in interleaved(len(calls), rounds):
        for index in order:
            tick = time.perf_counter()
            calls[index]()
            seconds[index].append(time.perf_counter() - tick)
    return [batch_size / float(np.median(times)) for times in seconds]


def measure_ladder(
    ranked: Sequence[str], max_parts: int, *, build: Callable[[tuple[str, ...]], object],
    score: Callable[[object], float], rule: str, run_batch: Callable[[object], object], batch_size: int, rounds: int,
    heldout_images: int, progress: Callable[[str], None], name: str, unit: str,
) -> tuple[ParetoPoint, ...]:
    """The Pareto points of a search: for k on ``ladder(max_parts, len(ranked))``,
    ``build(the k most harmful of ranked)`` makes an engine and ``score(engine)`` gives its
    figure (%) by the search's ``rule`` (accuracy.SEARCH_RULES) on the ``heldout_images``
    held-out images (a progress line per point, with the time left); then every engine is
    timed round-robin, ``run_batch(engine)`` running one batch of ``batch_size``, ``rounds``
    times. ``name``: the variant, ``unit``: what a part is ("node", "module"), for the
    progress lines."""
    started = time.perf_counter()
    counts = ladder(max_parts, len(ranked))
    engines, scores = [], []
    for index, k in enumerate(counts):
        engine = build(tuple(ranked[:k]))
        scores.append(score(engine))
        engines.append(engine)
        elapsed = time.perf_counter() - started
        left = elapsed / (index + 1) * (len(counts) - index - 1)
        progress(f"{name}: {k} float {unit}(s): {score_text(rule, scores[-1])} on {heldout_images} held-out images "
                 f"(point {index + 1}/{len(counts)}, about {left:.0f} s left)")
    throughput = round_robin_throughput([lambda engine=engine: run_batch(engine) for engine in engines], batch_size, rounds)
    return points_from(counts, ranked, scores, throughput)


def points_from(counts: Sequence[int], ranked: Sequence[str], scores: Sequence[float],
                throughput: Sequence[float]) -> tuple[ParetoPoint, ...]:
    """The Pareto points of a ladder: k = ``counts[i]`` most harmful of ``ranked`` in float,
    with its score (%) and throughput (samples/s); the ratio is to ``throughput[0]`` (the
    all-int8 point, k = 0)."""
    return tuple(
        ParetoPoint(k, tuple(ranked[:k]), round(score, 4), round(speed, 3), round(speed / throughput[0], 4))
        for k, score, speed in zip(counts, scores, throughput)
    )


def cached_search(path: Path, run: Callable[[], Search], progress: Callable[[str], None], name: str) -> tuple[Search, bool]:
    """The search cached at ``path``, else ``run()``'s, saved there atomically; and whether
    it came from the cache. A cache file that does not parse is run again. ``name``: the
    variant, for the progress line."""
    if path.is_file():
        try:
            return Search.from_json(json.loads(path.read_text())), True
        except (ValueError, KeyError, TypeError) as error:
            progress(f"{name}: cached search {path} is unusable ({error}); searching again")
    result = run()
    atomic.write_text(path, json.dumps(result.to_json(), indent=1) + "\n", option=CACHE_OPTION)
    return result, False


def write_pareto_table(result: Search, report_dir: Path | None, name: str) -> Path | None:
    """Write ``result``'s Pareto table to ``report_dir/<name>_pareto.csv`` (None: nothing
    written). Returns the file. UserError (from atomic) when the folder cannot be written."""
    if report_dir is None:
        return None
    path = Path(report_dir) / f"{name}_pareto.csv"
    atomic.write_text(path, result.table_csv(), option="--output-dir")
    return path


def search_info(result: Search, cached: bool, unit: str) -> dict[str, str]:
    """engine_info entries of a search: whether it was measured or cached, its rule, the
    chosen point's figure by that rule (``search_<metric>``), whether it meets the target."""
    chosen = result.chosen
    return {
        f"float_{unit}_search": "cached" if cached else "measured",
        "search_rule": rule_text(result.rule, result.target),
        f"search_{rule_metric(result.rule)}": f"{chosen.score:.2f}",
        "search_target_met": str(chosen.meets(result.target)).lower(),
    }
