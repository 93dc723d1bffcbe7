"""The (variant, batch size) to deploy: the highest throughput within memory and latency
limits, among configs within their budget (budgets.check_row: accuracy, size, memory) that
meet MLPerf's accuracy rule (top-1 at least 99% of the fp32 model's: accuracy.MLPERF_TOP1_OF_FP32)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from densenet_opt import budgets
from densenet_opt.accuracy import MLPERF_TOP1_OF_FP32
from densenet_opt.budgets import BudgetCheck
from densenet_opt.errors import UserError
from densenet_opt.report import RESULTS_FILE, Row, load_results, results_path


def meets_rule(row: Row, min_top1_of_fp32: float | None) -> bool:
    """Whether ``row``'s measured top-1 is at least ``min_top1_of_fp32`` % of the fp32
    model's (MLPerf's rule at 99; the figure, not its interval, as MLPerf judges it). A row
    without the figure (an older version's) does not meet it; None: no rule, True."""
    if min_top1_of_fp32 is None:
        return True
    return row.top1_of_fp32_pct is not None and row.top1_of_fp32_pct >= min_top1_of_fp32


def recommend(
    rows: Sequence[Row], *, max_memory_mb: float | None, max_latency_ms: float | None,
    checks: Mapping[Row, BudgetCheck] | None = None, source: Path = Path(RESULTS_FILE),
    min_top1_of_fp32: float | None = None,
) -> Row:
    """The highest-throughput measured row whose memory (``Row.memory_mb``: VRAM on cuda,
    RAM on the CPU, MiB) and latency per batch (ms) are within the limits (None: no limit),
    that, when ``checks`` is given, is within its budget and that meets the accuracy rule
    ``min_top1_of_fp32`` (meets_rule; None: no rule); ties go to less memory. Raises
    UserError (one sentence naming ``source``) when no row is within budget and the rule,
    or when none fits, naming the three closest."""
    eligible = [r for r in rows if (checks is None or checks[r].within) and meets_rule(r, min_top1_of_fp32)]
    if not eligible and min_top1_of_fp32 is not None and all(r.top1_of_fp32_pct is None for r in rows):
        raise UserError(
            f"no row of {source} has MLPerf's accuracy figure (top1_of_fp32_pct: a file of an older version, or "
            "faults only): measure again, or pass --min-top1-of-fp32 none to recommend by the budgets alone"
        )
    if not eligible:
        rule = f" and at least {min_top1_of_fp32:g}% of the fp32 model's top-1" if min_top1_of_fp32 is not None else ""
        raise UserError(
            f"no config in {source} is within its budget{rule} ({len(rows)} rows checked): "
            "see summary.md, or pass --ignore-budgets" + (" or a lower --min-top1-of-fp32 (none: no rule)" if rule else "")
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
    min_top1_of_fp32: float | None = MLPERF_TOP1_OF_FP32,
) -> list[str]:
    """``densenet-opt recommend``: the recommendation for the results file (or sweep
    directory) ``results``, as the lines to print. ``device`` keeps only that device's
    rows, ``machine`` only that machine's (the ``machine`` column: a sweep-cluster label
    or host name); rows below ``min_top1_of_fp32`` % of the fp32 model's top-1 (MLPerf's
    rule by default; None: no rule) are left out and listed; budgets come from ``budgets_path`` (default budgets.BUDGETS_FILE) unless
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
    best = recommend(rows, max_memory_mb=max_memory_mb, max_latency_ms=max_latency_ms, checks=checks, source=source,
                     min_top1_of_fp32=min_top1_of_fp32)
    where = f"{best.device} of {best.machine}" if best.machine and (machine or len({r.machine for r in rows}) > 1) else best.device
    lines = [
        f"{best.variant} at batch size {best.batch_size} on {where}: {best.throughput_samples_per_sec:.1f} samples/s, "
        f"{best.latency_ms_per_batch:.2f} ms per batch, {best.memory_kind} {best.memory_mb:.0f} MiB"
    ]
    if best.top1_of_fp32_pct is not None:
        lines.append(f"accuracy: top-1 {best.top1_of_fp32_pct:.2f}% of the fp32 model's (95% CI "
                     f"{best.top1_of_fp32_low:.2f}-{best.top1_of_fp32_high:.2f}, {best.num_samples} images, {best.accuracy_kind})")
    left_out = sorted({r.variant for r in rows if checks is not None and not checks[r].within})
    if left_out:
        lines.append(f"not considered (outside or without a budget; --ignore-budgets includes them): {', '.join(left_out)}")
    below = sorted({f"{r.variant} ({'not measured' if r.top1_of_fp32_pct is None else f'{r.top1_of_fp32_pct:.2f}%'})"
                    for r in rows if not meets_rule(r, min_top1_of_fp32) and r.variant not in left_out})
    if below:
        lines.append(f"not considered (top-1 below {min_top1_of_fp32:g}% of the fp32 model's, MLPerf's rule; "
                     f"--min-top1-of-fp32 none includes them): {', '.join(below)}")
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
