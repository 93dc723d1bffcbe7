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
    budgets_path: Path | None = None, ignore_budgets: bool = False, machine: str | None = None,
) -> list[str]:
    """``densenet-opt recommend``: the recommendation for the results file (or sweep
    directory) ``results``, as the lines to print. ``device`` keeps only that device's
    rows, ``machine`` only that machine's (the ``machine`` column: a sweep-cluster label
    or host name); budgets come from ``budgets_path`` (default budgets.BUDGETS_FILE) unless
    ``ignore_budgets``. Raises UserError for an unreadable results or budgets file, no
    row on ``device`` or ``machine``, or no row that fits (see recommend)."""
    source = results_path(results)
    rows = load_results(source)
    if machine:
        known = sorted({r.machine for r in rows if r.machine})
        rows = [r for r in rows if r.machine == machine]
        if not rows:
            raise UserError(f"results file {source} has no rows of machine {machine}: its machines are {', '.join(known) or 'not named'}")
    if device:
        rows = [r for r in rows if r.device == device]
        if not rows:
            raise UserError(f"results file {source} has no {device} rows: drop --device or pass results measured on {device}")
    checks = None if ignore_budgets else budgets.check_budgets(rows, budgets.load_budgets(budgets_path or budgets.BUDGETS_FILE))
    best = recommend(rows, max_memory_mb=max_memory_mb, max_latency_ms=max_latency_ms, checks=checks, source=source)
    where = f"{best.device} of {best.machine}" if best.machine and (machine or len({r.machine for r in rows}) > 1) else best.device
    lines = [
        f"{best.variant} at batch size {best.batch_size} on {where}: {best.throughput_samples_per_sec:.1f} samples/s, "
        f"{best.latency_ms_per_batch:.2f} ms per batch, {best.memory_kind} {best.memory_mb:.0f} MiB"
    ]
    left_out = sorted({r.variant for r in rows if checks is not None and not checks[r].within})
    if left_out:
        lines.append(f"not considered (outside or without a budget; --ignore-budgets includes them): {', '.join(left_out)}")
    return lines


def recommend_qps(results: Path, *, max_p99_ms: float | None = None, device: str | None = None) -> list[str]:
    """``densenet-opt recommend --loadgen-results``: the engine and batch policy with the
    highest Server QPS whose p99 latency stays under ``max_p99_ms``, as lines to print.

    Reads loadgen_results.csv (or the ``densenet-opt loadgen`` output directory holding
    it). A Server row's ``best_qps`` was searched against its own ``latency_bound_ms``;
    it answers a bound ``max_p99_ms`` when it was searched against that bound or a tighter
    one (None: any row). ``device`` keeps only that device's rows. A run LoadGen judged
    VALID is preferred; when none qualifies, the best INVALID one is given with LoadGen's
    reason. Raises UserError when the file is missing or unreadable, or no Server row
    qualifies.
    """
    from densenet_opt.serving.results import LOADGEN_RESULTS_FILE, read_loadgen_rows

    source = Path(results)
    source = source / LOADGEN_RESULTS_FILE if source.is_dir() else source
    if not source.exists():
        raise UserError(f"no LoadGen results at {source}: run `densenet-opt loadgen --scenario server` first")
    servers = [r for r in read_loadgen_rows(source) if r.scenario == "Server" and r.best_qps is not None and r.latency_bound_ms
               and (device is None or r.device == device)]
    fitting = [r for r in servers if max_p99_ms is None or r.latency_bound_ms <= max_p99_ms]
    if not fitting:
        bounds = ", ".join(sorted({f"{r.latency_bound_ms:g} ms" for r in servers})) or "none"
        wanted = f"a p99 bound of {max_p99_ms:g} ms or tighter" if max_p99_ms is not None else "a p99 bound"
        raise UserError(f"no Server result in {source} was searched with {wanted} (bounds searched: {bounds}): "
                        "rerun densenet-opt loadgen --scenario server --latency-bound-ms with your bound")
    valid = [r for r in fitting if not r.mark]
    best = max(valid or fitting, key=lambda r: r.best_qps)
    verdict = best.mark or "VALID"
    return [
        f"{best.variant} {best.batch_policy} on {best.device}: {best.best_qps:.1f} QPS with p99 "
        f"{best.latency_ms_p99:.1f} ms <= {best.latency_bound_ms:g} ms (LoadGen: {verdict})"
    ]
