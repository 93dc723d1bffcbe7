"""The LoadGen plots: the latency-throughput curve and the Server scenario's best QPS per engine.

Drawn from the CSV rows alone (results.read_loadgen_rows) with matplotlib's object API, as
render/plots.py draws the sweep's, and written atomically (render.plots.save_figure).
A point or bar from a run LoadGen judged INVALID is drawn hollow / hatched and labelled
INVALID: an INVALID figure never appears unmarked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from densenet_opt.render.plots import save_figure
from densenet_opt.serving.results import BOUND_NOT_MET, INVALID, LoadGenRow

LATENCY_QPS_PLOT = "loadgen_latency_vs_qps.png"
BEST_QPS_PLOT = "loadgen_server_best_qps.png"


def _new_figure(columns: int = 1):
    from matplotlib.figure import Figure  # only drawing needs matplotlib

    return Figure(figsize=(6.4 * columns, 4.8), layout="constrained")


def _name(row: LoadGenRow, several_devices: bool) -> str:
    name = f"{row.variant} {row.batch_policy}"
    return f"{name} ({row.device})" if several_devices else name


def plot_latency_vs_qps(points: Sequence[LoadGenRow], path: Path) -> Path | None:
    """p50 (dashed) and p99 (solid) latency (ms) against offered QPS, one colour per engine
    and batch policy, from every Server run; hollow markers: runs LoadGen judged INVALID.
    The bound is the horizontal line. None (nothing drawn) without Server points."""
    points = [p for p in points if p.target_qps is not None and p.latency_ms_p99 is not None]
    if not points:
        return None
    several = len({p.device for p in points}) > 1
    figure = _new_figure()
    axes = figure.subplots()
    series: dict[str, list[LoadGenRow]] = {}
    for point in points:
        series.setdefault(_name(point, several), []).append(point)
    for index, (name, members) in enumerate(series.items()):
        members.sort(key=lambda p: p.target_qps)
        colour = f"C{index % 10}"
        qps = [p.target_qps for p in members]
        axes.plot(qps, [p.latency_ms_p99 for p in members], "-", color=colour, label=f"{name} p99")
        axes.plot(qps, [p.latency_ms_p50 for p in members], "--", color=colour, alpha=0.7, label=f"{name} p50")
        for p in members:
            face = colour if p.result_validity == "VALID" else "none"
            for value in (p.latency_ms_p99, p.latency_ms_p50):
                axes.plot([p.target_qps], [value], "o", color=colour, markerfacecolor=face)
    for bound in sorted({p.latency_bound_ms for p in points if p.latency_bound_ms}):
        axes.axhline(bound, color="grey", linestyle=":", label=f"p99 bound {bound:g} ms")
    axes.set_xlabel("offered load (queries/s, Poisson arrivals)")
    axes.set_ylabel("latency (ms)")
    axes.set_title("LoadGen Server: latency against offered QPS (hollow: run INVALID)")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    save_figure(figure, path)
    return path


def plot_best_qps(rows: Sequence[LoadGenRow], path: Path) -> Path | None:
    """The Server scenario's best QPS (the highest offered QPS whose p99 met the bound) per
    engine and batch policy, as bars; a hatched bar marked INVALID where LoadGen judged
    that run INVALID, an empty slot marked "bound not met". None without Server rows."""
    rows = [r for r in rows if r.scenario == "Server"]
    if not rows:
        return None
    several = len({r.device for r in rows}) > 1
    figure = _new_figure()
    axes = figure.subplots()
    names = [_name(r, several) for r in rows]
    heights = [r.best_qps or 0.0 for r in rows]
    bars = axes.bar(range(len(rows)), heights, color=[f"C{i % 10}" for i in range(len(rows))])
    for bar, row in zip(bars, rows):
        if row.status == BOUND_NOT_MET:
            label = "bound not met"
        elif row.result_validity != "VALID":
            bar.set_hatch("//")
            bar.set_alpha(0.6)
            label = f"{row.best_qps:.1f} {INVALID}"
        else:
            label = f"{row.best_qps:.1f}"
        axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize="small")
    bounds = sorted({r.latency_bound_ms for r in rows if r.latency_bound_ms})
    axes.set_xticks(range(len(rows)), names, rotation=20, ha="right")
    axes.set_ylabel("best QPS with p99 under the bound")
    axes.set_title(f"LoadGen Server: highest QPS with p99 <= {', '.join(f'{b:g}' for b in bounds)} ms")
    axes.grid(True, axis="y", alpha=0.3)
    save_figure(figure, path)
    return path


def write_plots(rows: Sequence[LoadGenRow], points: Sequence[LoadGenRow], out_dir: Path) -> list[Path]:
    """Both plots where they have data, into ``out_dir``; the files written (UserError when
    one cannot be written: disk full, read-only)."""
    written = [plot_latency_vs_qps(points, out_dir / LATENCY_QPS_PLOT), plot_best_qps(rows, out_dir / BEST_QPS_PLOT)]
    return [path for path in written if path is not None]
