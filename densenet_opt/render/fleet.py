"""The cross-device report: one results file holding several machines' rows, side by side.

For each (variant, batch size), every machine's throughput (samples/s), p99 latency per
batch (ms) and speedup over its own baseline; then, per machine and device, the fastest
config within its budget (budgets.check_row, as summary.md and recommend use it). Written
as fleet.md and one plot, fleet_throughput.png, by ``densenet-opt sweep-cluster`` and by
``densenet-opt summary`` when the results file holds more than one machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from densenet_opt import atomic, budgets
from densenet_opt.budgets import BudgetCheck
from densenet_opt.errors import UserError
from densenet_opt.recommend import recommend
from densenet_opt.render.markdown import markdown_table
from densenet_opt.render.plots import _new_figure, save_figure
from densenet_opt.report import OUTPUT_OPTION, Row

FLEET_FILE = "fleet.md"
FLEET_PLOT = "fleet_throughput.png"
# How a row without a machine (a results file of an older version) is shown.
UNKNOWN_MACHINE = "local"


def machine_of(row: Row) -> str:
    """The row's machine as the report names it: the ``machine`` column, or "local"."""
    return row.machine or UNKNOWN_MACHINE


def machines(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """The (machine, device) pairs of ``rows``, in order of first appearance."""
    return list(dict.fromkeys((machine_of(r), r.device) for r in rows))


def is_fleet(rows: Sequence[Row]) -> bool:
    """Whether ``rows`` name more than one machine (the report is then worth writing); rows
    naming none (files of older versions) are the local machine's and do not count."""
    return len({r.machine for r in rows if r.machine}) > 1


def _cell(row: Row | None) -> str:
    if row is None:
        return "—"
    p99 = f", p99 {row.latency_ms_p99:.1f} ms" if row.latency_ms_p99 is not None else ""
    speedup = f" ({row.speedup_vs_baseline:.2f}x)" if row.speedup_vs_baseline is not None else ""
    return f"{row.throughput_samples_per_sec:.1f}/s{p99}{speedup}"


def side_by_side(rows: Sequence[Row]) -> str:
    """A markdown table: a line per (variant, batch size), a column per (machine, device);
    each cell "samples/s, p99 ms (speedup over that machine's baseline)", "—" where that
    machine has no measured row. ``rows``: measured rows (report.load_table)."""
    pairs = machines(rows)
    columns = [f"{machine} ({device})" for machine, device in pairs]
    by_config: dict[tuple[str, int], dict[str, str]] = {}
    for row in rows:
        line = by_config.setdefault((row.variant, row.batch_size), {"variant": f"`{row.variant}`", "batch": str(row.batch_size)})
        line[f"{machine_of(row)} ({row.device})"] = _cell(row)
    ordered = [by_config[key] for key in sorted(by_config, key=lambda k: (k[1], list(by_config).index(k)))]
    for line in ordered:
        for column in columns:
            line.setdefault(column, "—")
    return markdown_table(ordered, ("variant", "batch", *columns))


def fastest_per_machine(rows: Sequence[Row], checks: Mapping[Row, BudgetCheck] | None) -> dict[tuple[str, str], Row | None]:
    """Per (machine, device): the highest-throughput row within its budget (recommend.recommend
    with no memory or latency limit; every row when ``checks`` is None), or None when none is."""
    best: dict[tuple[str, str], Row | None] = {}
    for machine, device in machines(rows):
        own = [r for r in rows if machine_of(r) == machine and r.device == device]
        try:
            best[(machine, device)] = recommend(own, max_memory_mb=None, max_latency_ms=None, checks=checks)
        except UserError:
            best[(machine, device)] = None
    return best


def fleet_markdown(rows: Sequence[Row], faults: Sequence[Row], checks: Mapping[Row, BudgetCheck] | None,
                   source: Path, note: str | None = None) -> str:
    """fleet.md's text for the measured ``rows`` and fault rows of ``source``: the machines,
    the side-by-side table and the fastest config within budget per machine."""
    machine_lines = []
    for machine, device in machines(rows):
        own = [r for r in rows if machine_of(r) == machine and r.device == device]
        machine_lines.append({
            "machine": machine, "device": device, "device name": own[0].device_name or "",
            "configs measured": str(len(own)),
            "failed": str(sum(1 for f in faults if machine_of(f) == machine and f.device == device)),
        })
    best_lines = []
    for (machine, device), row in fastest_per_machine(rows, checks).items():
        best_lines.append({
            "machine": f"{machine} ({device})",
            "fastest within budget": "none within budget" if row is None else f"`{row.variant}` at batch {row.batch_size}",
            "samples/s": "" if row is None else f"{row.throughput_samples_per_sec:.1f}",
            "p99 ms": "" if row is None or row.latency_ms_p99 is None else f"{row.latency_ms_p99:.1f}",
            "memory MiB": "" if row is None or row.memory_mb is None else f"{row.memory_kind} {row.memory_mb:.0f}",
        })
    parts = [
        "# Across machines",
        f"From `{source}`. Each cell: throughput (samples/s), p99 latency per batch (ms) and, in brackets, "
        "the speedup over the baseline variant measured on the same machine and device.",
        "## Machines",
        markdown_table(machine_lines, ("machine", "device", "device name", "configs measured", "failed")),
        "## Throughput and p99 latency, side by side",
        side_by_side(rows),
        "## Fastest within its budget, per machine",
        markdown_table(best_lines, ("machine", "fastest within budget", "samples/s", "p99 ms", "memory MiB")),
    ]
    if checks is None:
        parts.append(f"Budgets were not checked ({note}): the fastest config of each machine is shown." if note
                     else "Budgets were not checked: the fastest config of each machine is shown.")
    return "\n\n".join(parts) + "\n"


def plot_fleet(rows: Sequence[Row], path: Path) -> Path:
    """Grouped bars: a group per (variant, batch size), a bar per (machine, device), the
    throughput (samples/s, log scale) on top and the p99 latency per batch (ms) below.
    Raises UserError when ``path`` cannot be written."""
    pairs = machines(rows)
    configs = sorted(dict.fromkeys((r.variant, r.batch_size) for r in rows), key=lambda c: (c[1], c[0]))
    by_key = {(r.variant, r.batch_size, machine_of(r), r.device): r for r in rows}
    figure = _new_figure(max(1, min(3, len(configs) // 4 + 1)))
    throughput, latency = figure.subplots(2, 1, sharex=True)
    width = 0.8 / max(1, len(pairs))
    for index, (machine, device) in enumerate(pairs):
        xs, tps, p99s = [], [], []
        for position, (variant, size) in enumerate(configs):
            row = by_key.get((variant, size, machine, device))
            if row is None:
                continue
            xs.append(position + (index - (len(pairs) - 1) / 2) * width)
            tps.append(row.throughput_samples_per_sec)
            p99s.append(row.latency_ms_p99 if row.latency_ms_p99 is not None else row.latency_ms_per_batch)
        throughput.bar(xs, tps, width, label=f"{machine} ({device})")
        latency.bar(xs, p99s, width, label=f"{machine} ({device})")
    values = [(throughput, [r.throughput_samples_per_sec for r in rows]),
              (latency, [r.latency_ms_p99 if r.latency_ms_p99 is not None else r.latency_ms_per_batch for r in rows])]
    for axes, measured in values:  # log scale: machines differ by orders of magnitude; bars start below the smallest
        axes.set_yscale("log")
        axes.set_ylim(bottom=min(measured) / 3)
    throughput.set_ylabel("samples/s")
    latency.set_ylabel("p99 latency per batch (ms)")
    latency.set_xticks(range(len(configs)), [f"{v}\nbs{s}" for v, s in configs], fontsize=8)
    throughput.legend(fontsize=8)
    throughput.set_title("throughput and p99 latency per machine")
    for axes in (throughput, latency):
        axes.grid(True, axis="y", alpha=0.3)
    save_figure(figure, path)
    return path


def write_fleet_report(source: Path, rows: Sequence[Row], faults: Sequence[Row], budgets_path: Path | None = None) -> list[Path]:
    """fleet.md and fleet_throughput.png beside ``source`` (a results CSV) for its measured
    ``rows`` and fault rows; returns [plot, fleet.md]. Budgets that cannot be loaded are a
    note in fleet.md. Raises UserError when a file cannot be written (disk full, read-only)."""
    loaded, note = budgets.load_budgets_or_none(budgets_path)
    checks = budgets.check_budgets(rows, loaded) if loaded is not None else None
    directory = Path(source).parent
    directory.mkdir(parents=True, exist_ok=True)
    plot = plot_fleet(rows, directory / FLEET_PLOT)
    report = directory / FLEET_FILE
    atomic.write_text(report, fleet_markdown(rows, faults, checks, Path(source), note), option=OUTPUT_OPTION)
    return [plot, report]
