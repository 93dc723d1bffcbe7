"""The (variant, batch size) to deploy: the highest throughput within memory and latency
limits, among configs within their budget (budgets.check_row: accuracy, size, memory)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from densenet_opt import budgets
from densenet_opt.budgets import BudgetCheck
from densenet_opt.errors import UserError
from densenet_opt.report import RESULTS_FILE, Row, load_results, results_path


def recommend(
    rows: Sequence[Row], *, max_memory_mb: float | None, max_latency_ms: float | None,
    checks: Mapping[Row, BudgetCheck] | None = None, source: Path = Path(RESULTS_FILE),
) -> Row:
    """The highest-throughput measured row whose memory (``Row.memory_mb``: VRAM on cuda,
    RAM on the CPU, MiB) and latency per batch (ms) are within the limits (None: no limit)
    and, when ``checks`` is given, that is within its budget; ties go to less memory.
    Raises UserError (one sentence naming ``source``) when no row is within budget, or
    when none fits, naming the three closest."""
    eligible = [r for r in rows if checks is None or checks[r].within]
    if not eligible:
        raise UserError(
            f"no config in {source} is within its budget ({len(rows)} rows checked): "
            "see summary.md, or pass --ignore-budgets"
        )
    memory_limit = math.inf if max_memory_mb is None else max_memory_mb
    latency_limit = math.inf if max_latency_ms is None else max_latency_ms
    fitting = [r for r in eligible if r.memory_mb <= memory_limit and r.latency_ms_per_batch <= latency_limit]
    if fitting:
        # Samples per ms from the latency: the throughput column is rounded to 2 decimals, too coarse
        # to order slow configs (0.18 samples/s for two that differ by 3%).
        return max(fitting, key=lambda r: (r.batch_size / r.latency_ms_per_batch, -r.memory_mb))

    def excess(r: Row) -> float:  # how far over the tighter limit, as a ratio
        return max(r.memory_mb / memory_limit, r.latency_ms_per_batch / latency_limit)

    closest = sorted(eligible, key=excess)[:3]
    limits = " and ".join(
        ([f"memory <= {max_memory_mb:g} MiB"] if max_memory_mb is not None else [])
        + ([f"latency <= {max_latency_ms:g} ms"] if max_latency_ms is not None else [])
    )
    skipped = len(rows) - len(eligible)
    raise UserError(
        f"no config in {source} fits {limits}"
        + (f" ({skipped} configs not shown to be within their budget were left out)" if skipped else "")
        + "; closest: "
        + ", ".join(f"{r.label} ({r.memory_kind} {r.memory_mb:.0f} MiB, {r.latency_ms_per_batch:.1f} ms)" for r in closest)
    )


def recommend_from_results(
    results: Path, *, max_memory_mb: float | None, max_latency_ms: float | None, device: str | None = None,
    budgets_path: Path | None = None, ignore_budgets: bool = False,
) -> list[str]:
    """``densenet-opt recommend``: the recommendation for the results file (or sweep
    directory) ``results``, as the lines to print. ``device`` keeps only that device's
    rows; budgets come from ``budgets_path`` (default budgets.BUDGETS_FILE) unless
    ``ignore_budgets``. Raises UserError for an unreadable results or budgets file, no
    row on ``device``, or no row that fits (see recommend)."""
    source = results_path(results)
    rows = load_results(source)
    if device:
        rows = [r for r in rows if r.device == device]
        if not rows:
            raise UserError(f"results file {source} has no {device} rows: drop --device or pass results measured on {device}")
    checks = None if ignore_budgets else budgets.check_budgets(rows, budgets.load_budgets(budgets_path or budgets.BUDGETS_FILE))
    best = recommend(rows, max_memory_mb=max_memory_mb, max_latency_ms=max_latency_ms, checks=checks, source=source)
    lines = [
        f"{best.variant} at batch size {best.batch_size} on {best.device}: {best.throughput_samples_per_sec:.1f} samples/s, "
        f"{best.latency_ms_per_batch:.2f} ms per batch, {best.memory_kind} {best.memory_mb:.0f} MiB"
    ]
    left_out = sorted({r.variant for r in rows if checks is not None and not checks[r].within})
    if left_out:
        lines.append(f"not considered (outside or without a budget; --ignore-budgets includes them): {', '.join(left_out)}")
    return lines
