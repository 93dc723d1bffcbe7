"""The plots of a sweep's results: latency and throughput, accuracy, memory, achieved compute.

Each function takes measured rows (``report.load_results``) and writes one PNG atomically.
They use matplotlib's object API (``Figure``), which renders with Agg and touches no
global pyplot state; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from densenet_opt import atomic
from densenet_opt.accuracy import ACCURACY, AGREEMENT, SYNTHETIC_ACCURACY
from densenet_opt.report import OUTPUT_OPTION, Row

LATENCY_PLOT = "latency_throughput.png"
ACCURACY_PLOT = "accuracy_throughput.png"
MEMORY_PLOT = "memory.png"
FLOPS_PLOT = "achieved_gflops.png"

ACCURACY_LABELS = {
    ACCURACY: "top-1 accuracy (%)",
    AGREEMENT: "top-1 agreement with fp32 (%)",
    SYNTHETIC_ACCURACY: "top-1 accuracy on synthetic pseudo-classes (%)",
}


def _series(rows: Iterable[Row]) -> dict[str, list[Row]]:
    """Rows per line on a plot, sorted by batch size; the device is named only when several appear."""
    rows = list(rows)
    several_devices = len({r.device for r in rows}) > 1
    series: dict[str, list[Row]] = {}
    for row in rows:
        name = f"{row.variant} ({row.device})" if several_devices else row.variant
        series.setdefault(name, []).append(row)
    return {name: sorted(members, key=lambda r: r.batch_size) for name, members in series.items()}


def _batch_axis(axes, rows: Sequence[Row]) -> None:
    sizes = sorted({r.batch_size for r in rows})
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [str(s) for s in sizes])
    axes.minorticks_off()
    axes.set_xlabel("batch size")
    axes.grid(True, alpha=0.3)


def _new_figure(columns: int):
    from matplotlib.figure import Figure  # drawing is the only use; reading results needs no matplotlib

    return Figure(figsize=(6.4 * columns, 4.8), layout="constrained")


def plot_latency_throughput(rows: Sequence[Row], path: Path) -> Path:
    """Latency per batch (ms, mean ± stddev) and throughput (samples/s) against batch size."""
    figure = _new_figure(2)
    latency, throughput = figure.subplots(1, 2)
    for name, series in _series(rows).items():
        sizes = [r.batch_size for r in series]
        errors = [r.latency_ms_stddev or 0.0 for r in series]
        latency.errorbar(sizes, [r.latency_ms_per_batch for r in series], yerr=errors, marker="o", capsize=3, label=name)
        throughput.plot(sizes, [r.throughput_samples_per_sec for r in series], marker="o", label=name)
    latency.set_ylabel("latency per batch (ms, mean ± stddev)")
    latency.set_title("Latency")
    throughput.set_ylabel("throughput (samples/s)")
    throughput.set_title("Throughput")
    for axes in (latency, throughput):
        _batch_axis(axes, rows)
        axes.set_ylim(bottom=0)
    throughput.legend(fontsize="small")
    save_figure(figure, path)
    return path


def accuracy_label(rows: Sequence[Row]) -> str:
    """The accuracy axis' label: accuracy or agreement (accuracy_kind), or both when mixed."""
    kinds = {r.accuracy_kind for r in rows if r.accuracy_kind in ACCURACY_LABELS}
    if len(kinds) == 1:
        return ACCURACY_LABELS[kinds.pop()]
    return "top-1 accuracy or agreement with fp32 (%, see accuracy_kind)"


def plot_accuracy_throughput(rows: Sequence[Row], path: Path) -> Path | None:
    """Top-1 accuracy (or agreement) against throughput, a point per batch size; None (no
    file) when no row has a top-1 figure of a known kind."""
    measured = [r for r in rows if r.accuracy_kind in ACCURACY_LABELS and r.accuracy_top_1 is not None]
    if not measured:
        return None
    figure = _new_figure(1)
    axes = figure.subplots()
    for name, series in _series(measured).items():
        throughputs = [r.throughput_samples_per_sec for r in series]
        points = axes.plot(throughputs, [r.accuracy_top_1 for r in series], marker="o", linestyle=":", label=name)
        for r in series:
            axes.annotate(f"bs{r.batch_size}", (r.throughput_samples_per_sec, r.accuracy_top_1), textcoords="offset points",
                          xytext=(4, 4), fontsize="x-small", color=points[0].get_color())
    axes.set_xlabel("throughput (samples/s)")
    axes.set_ylabel(accuracy_label(measured))
    axes.set_title(f"{accuracy_label(measured).split(' (')[0].capitalize()} against throughput")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    save_figure(figure, path)
    return path


def plot_memory(rows: Sequence[Row], path: Path) -> Path:
    """Peak RAM (MiB) against batch size, and peak VRAM beside it when a row ran on cuda."""
    cuda = [r for r in rows if r.device == "cuda"]
    figure = _new_figure(2 if cuda else 1)
    panels = figure.subplots(1, 2 if cuda else 1)
    ram_axes, vram_axes = (panels[0], panels[1]) if cuda else (panels, None)
    for name, series in _series(rows).items():
        ram_axes.plot([r.batch_size for r in series], [r.ram_usage_mb for r in series], marker="o", label=name)
    ram_axes.set_ylabel("peak RAM over the process's baseline (MiB)")
    ram_axes.set_title("RAM")
    axes_list = [ram_axes]
    if vram_axes is not None:
        for name, series in _series(cuda).items():
            vram_axes.plot([r.batch_size for r in series], [r.vram_usage_mb for r in series], marker="o", label=name)
        vram_axes.set_ylabel("peak VRAM (MiB)")
        vram_axes.set_title("VRAM")
        axes_list.append(vram_axes)
    for axes in axes_list:
        _batch_axis(axes, rows)
        axes.set_ylim(bottom=0)
        axes.legend(fontsize="small")
    save_figure(figure, path)
    return path


def plot_achieved_flops(rows: Sequence[Row], path: Path) -> Path | None:
    """Roofline context: achieved GFLOP/s per config (peak FLOP/s of the device is not known
    here); None (no file) when no row records FLOPs."""
    counted = [r for r in rows if r.achieved_gflops is not None]
    if not counted:
        return None
    figure = _new_figure(1)
    axes = figure.subplots()
    for name, series in _series(counted).items():
        axes.plot([r.batch_size for r in series], [r.achieved_gflops for r in series], marker="o", label=name)
    axes.set_ylabel("achieved GFLOP/s (FLOPs per image x samples/s)")
    axes.set_title("Achieved compute")
    _batch_axis(axes, counted)
    axes.set_ylim(bottom=0)
    axes.legend(fontsize="small")
    save_figure(figure, path)
    return path


def save_figure(figure, path: Path) -> None:
    """``figure`` as ``path`` (the format from its suffix), written atomically. Raises
    UserError naming ``path`` when the disk is full or the directory read-only; an existing
    plot is then left as it was."""
    atomic.write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=120), option=OUTPUT_OPTION)


def write_plots(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """Every plot that has data, into ``out_dir``; returns the files written (see save_figure for errors)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_latency_throughput(rows, out_dir / LATENCY_PLOT),
        plot_accuracy_throughput(rows, out_dir / ACCURACY_PLOT),
        plot_memory(rows, out_dir / MEMORY_PLOT),
        plot_achieved_flops(rows, out_dir / FLOPS_PLOT),
    ]
    return [path for path in written if path is not None]
