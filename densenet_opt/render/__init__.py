"""What a person reads after a sweep: plots (render.plots) and summary.md (render.markdown).

Everything here works from the results CSV alone (benchmark_results.csv), so it runs
after a sweep, after merging several GPUs' results, or on a file copied from another
machine. ``summarize_after_sweep`` is what every sweep calls at its end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from densenet_opt import atomic, budgets
from densenet_opt.errors import UserError
from densenet_opt.config import DEFAULT_MAX_CPU_PRESSURE
from densenet_opt.render import fleet, markdown, plots
from densenet_opt.report import OUTPUT_OPTION, Row, load_table, results_path


def summarize(output_dir: Path, budgets_path: Path | None = None,
              max_cpu_pressure: float = DEFAULT_MAX_CPU_PRESSURE) -> list[Path]:
    """Plots and summary.md for the results in ``output_dir`` (or a results file), written
    beside the results file; returns the files written, summary.md last. Raises UserError
    for an unreadable results file, or when a file cannot be written (disk full,
    read-only: nothing partial is left). Budgets that cannot be loaded are a note in
    summary.md, not an error."""
    source = results_path(Path(output_dir))
    return write_summary(source, *load_table(source), budgets_path, max_cpu_pressure)


def write_summary(source: Path, rows: Sequence[Row], faults: Sequence[Row], budgets_path: Path | None = None,
                  max_cpu_pressure: float = DEFAULT_MAX_CPU_PRESSURE) -> list[Path]:
    """summarize, for the measured ``rows`` and fault rows already read from ``source``.
    When the rows come from several machines, the cross-device report (render.fleet:
    fleet_throughput.png, fleet.md) is written too, before summary.md."""
    loaded, note = budgets.load_budgets_or_none(budgets_path)
    checks = budgets.check_budgets(rows, loaded)
    written = plots.write_plots(rows, source.parent)
    if fleet.is_fleet(rows):
        written += fleet.write_fleet_report(source, rows, faults, budgets_path)
    summary = source.parent / markdown.SUMMARY_FILE
    atomic.write_text(summary, markdown.summary_markdown(
        rows, checks, [p for p in written if p.suffix == ".png"], source, note, faults, max_cpu_pressure), option=OUTPUT_OPTION)
    return [*written, summary]


def summarize_after_sweep(output_dir: Path, max_cpu_pressure: float = DEFAULT_MAX_CPU_PRESSURE) -> None:
    """The end of a sweep: summary.md and the plots, then the throughput matrix per device
    printed. Nothing when no results file exists; a report that cannot be drawn is one
    printed line, never an exception (measured results must not turn into a failed run)."""
    source = results_path(Path(output_dir))
    if not source.is_file():
        return
    try:
        rows, faults = load_table(source)
        written = write_summary(source, rows, faults, max_cpu_pressure=max_cpu_pressure)
    except UserError as error:
        print(f"no summary: {error}")
        return
    except Exception as error:  # a plotting failure must not turn measured results into a failed run
        print(f"no summary: {type(error).__name__}: {error}")
        return
    print(f"summary: {written[-1]} (plots: {', '.join(p.name for p in written[:-1])})")
    for device in sorted({r.device for r in rows}):
        print(f"\nsamples/s (speedup over baseline) on {device}:\n{markdown.throughput_matrix(rows, device, max_cpu_pressure)}")
