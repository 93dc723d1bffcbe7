"""What a person reads after a sweep: plots, summary.md, and a recommendation for given limits.

Everything here works from the results CSV alone (benchmark_results.csv), so it runs
after a sweep, after merging several GPUs' results, or on a file copied from another
machine. Plots use matplotlib's object API (``Figure``), which renders with Agg and
touches no global pyplot state.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from densenet_opt import atomic
from densenet_opt.accuracy import ACCURACY, AGREEMENT, Fidelity
from densenet_opt.errors import UserError
from densenet_opt.report import OK, OUTPUT_OPTION, RESULTS_FILE, markdown_table, read_rows
from densenet_opt.variants import BASELINE

SUMMARY_FILE = "summary.md"
LATENCY_PLOT = "latency_throughput.png"
ACCURACY_PLOT = "accuracy_throughput.png"
MEMORY_PLOT = "memory.png"
FLOPS_PLOT = "achieved_gflops.png"

# Proposed roofline columns; read when the CSV has them, else from engine_info.
GFLOPS_PER_IMAGE = "gflops_per_image"
ACHIEVED_GFLOPS = "achieved_gflops_per_sec"

REQUIRED_COLUMNS = (
    "optimization_technique", "batch_size", "device",
    "latency_ms_per_batch", "throughput_samples_per_sec", "ram_usage_mb", "vram_usage_mb",
)
ACCURACY_LABELS = {ACCURACY: "top-1 accuracy (%)", AGREEMENT: "top-1 agreement with fp32 (%)"}


# ---------------------------------------------------------------------------------------
# Reading results


@dataclass(frozen=True)
class Result:
    """One results row, typed: what the plots, the summary and the recommendation use."""

    variant: str
    device: str
    batch_size: int
    latency_ms: float
    latency_stddev_ms: float | None
    throughput: float
    ram_mb: float
    vram_mb: float
    model_size_mb: float | None
    fidelity: Fidelity | None  # None when the row lacks a fidelity column
    gflops_per_image: float | None
    achieved_gflops_per_sec: float | None

    @property
    def memory_mb(self) -> float:
        """The memory that limits a deployment: VRAM on a GPU, RAM on the CPU."""
        return self.vram_mb if self.device == "cuda" else self.ram_mb

    @property
    def memory_kind(self) -> str:
        return "VRAM" if self.device == "cuda" else "RAM"

    @property
    def label(self) -> str:
        return f"{self.variant} at batch {self.batch_size} on {self.device}"


def results_path(path: Path) -> Path:
    """A results file, or a sweep's output directory holding one."""
    return path / RESULTS_FILE if path.is_dir() else path


def load_results(path: Path) -> list[Result]:
    """Typed measured rows of a results CSV; a missing, empty or foreign file is one UserError."""
    return load_table(path)[0]


def load_table(path: Path) -> tuple[list[Result], list[dict[str, str]]]:
    """The measured rows, typed, and the rows that record a fault (status out_of_memory, ...)."""
    path = results_path(Path(path))
    if not path.is_file():
        raise UserError(f"results file {path} does not exist: run `densenet-opt sweep` first, or pass the {RESULTS_FILE} it wrote")
    try:
        rows = read_rows(path)
    except (UnicodeDecodeError, ValueError) as error:
        raise UserError(f"results file {path} is not a readable CSV ({error}): pass the {RESULTS_FILE} a sweep wrote") from None
    if not rows:
        raise UserError(f"results file {path} holds no rows: run a sweep that measures at least one (variant, batch size)")
    missing = [column for column in REQUIRED_COLUMNS if column not in rows[0]]
    if missing:
        raise UserError(f"results file {path} has no column {', '.join(missing)}: pass a {RESULTS_FILE} written by `densenet-opt sweep`")
    results, faults = [], []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        if row.get("status", OK) not in ("", OK):
            faults.append(row)
            continue
        try:
            results.append(result_from_row(row))
        except ValueError as error:
            raise UserError(f"results file {path}, line {number}: {error}; fix or delete that row") from None
    if not results:
        raise UserError(f"results file {path} holds no measured row ({len(faults)} configs failed, see its status column)")
    return results, faults


def result_from_row(row: Mapping[str, str]) -> Result:
    def required(column: str) -> float:
        value = _number(row.get(column))
        if value is None:
            raise ValueError(f"{column} is {row.get(column)!r}, not a number")
        return value

    gflops = _number(row.get(GFLOPS_PER_IMAGE)) or _number(engine_info(row).get(GFLOPS_PER_IMAGE))
    throughput = required("throughput_samples_per_sec")
    achieved = _number(row.get(ACHIEVED_GFLOPS))
    if achieved is None and gflops is not None:
        achieved = gflops * throughput
    return Result(
        variant=row["optimization_technique"],
        device=row["device"],
        batch_size=int(required("batch_size")),
        latency_ms=required("latency_ms_per_batch"),
        latency_stddev_ms=_number(row.get("latency_ms_stddev")),
        throughput=throughput,
        ram_mb=required("ram_usage_mb"),
        vram_mb=required("vram_usage_mb"),
        model_size_mb=_number(row.get("model_size_mb")),
        fidelity=fidelity_from_row(row),
        gflops_per_image=gflops,
        achieved_gflops_per_sec=achieved,
    )


def fidelity_from_row(row: Mapping[str, str]) -> Fidelity | None:
    """The Fidelity a sweep measured, rebuilt from its CSV columns (None if any is missing)."""
    values = [_number(row.get(c)) for c in ("accuracy_top_1", "accuracy_top_5", "agreement_top_1", "logit_relative_error")]
    kind = row.get("accuracy_kind") or ""
    if kind not in ACCURACY_LABELS or any(v is None for v in values):
        return None
    top1, top5, agreement, relative_error = values
    return Fidelity(kind=kind, top1=top1, top5=top5, agreement_top1=agreement, relative_error=relative_error)


def engine_info(row: Mapping[str, str]) -> dict[str, str]:
    """The engine_info column (k=v;k=v) as a dict."""
    pairs = (part.partition("=") for part in (row.get("engine_info") or "").split(";"))
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


def _number(text: object) -> float | None:
    try:
        value = float(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------
# Accuracy budgets


@dataclass(frozen=True)
class BudgetCheck:
    within: bool | None  # None: could not be checked (no budget table, no fidelity columns)
    reasons: tuple[str, ...]


def check_budgets(results: Sequence[Result], budgets: Mapping[str, object] | None) -> dict[Result, BudgetCheck]:
    """Each row against its variant's fidelity budget; drops are measured against the
    baseline row on the same device, as the sweep measures them against the fp32 model."""
    baselines = {}
    for result in results:
        if result.variant == BASELINE and result.fidelity is not None:
            baselines.setdefault(result.device, result.fidelity)
    checks = {}
    for result in results:
        if budgets is None:
            checks[result] = BudgetCheck(None, ("budgets not loaded",))
        elif result.variant not in budgets:
            checks[result] = BudgetCheck(None, (f"{result.variant} has no budget table",))
        elif result.fidelity is None:
            checks[result] = BudgetCheck(None, ("the row has no accuracy columns",))
        else:
            baseline = baselines.get(result.device)
            if baseline is None and result.fidelity.kind == ACCURACY:
                checks[result] = BudgetCheck(None, (f"no {BASELINE} row on {result.device} to measure the accuracy drop against",))
                continue
            violations = budgets[result.variant].fidelity_violations(result.fidelity, baseline or result.fidelity)
            checks[result] = BudgetCheck(not violations, tuple(violations))
    return checks


def load_budgets_or_none(path: Path | None) -> tuple[dict | None, str | None]:
    """Budgets for the summary, or None and why: a summary is still worth writing without them."""
    from densenet_opt.budgets import BUDGETS_FILE, load_budgets

    try:
        return load_budgets(path or BUDGETS_FILE), None
    except UserError as error:
        return None, str(error)


# ---------------------------------------------------------------------------------------
# Plots


def _series(results: Iterable[Result]) -> dict[str, list[Result]]:
    """Rows per line on a plot, sorted by batch size; the device is named only when several appear."""
    results = list(results)
    several_devices = len({r.device for r in results}) > 1
    series: dict[str, list[Result]] = {}
    for result in results:
        name = f"{result.variant} ({result.device})" if several_devices else result.variant
        series.setdefault(name, []).append(result)
    return {name: sorted(rows, key=lambda r: r.batch_size) for name, rows in series.items()}


def _batch_axis(axes, results: Sequence[Result]) -> None:
    sizes = sorted({r.batch_size for r in results})
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [str(s) for s in sizes])
    axes.minorticks_off()
    axes.set_xlabel("batch size")
    axes.grid(True, alpha=0.3)


def _new_figure(columns: int):
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4 * columns, 4.8), layout="constrained")


def plot_latency_throughput(results: Sequence[Result], path: Path) -> Path:
    figure = _new_figure(2)
    latency, throughput = figure.subplots(1, 2)
    for name, rows in _series(results).items():
        sizes = [r.batch_size for r in rows]
        errors = [r.latency_stddev_ms or 0.0 for r in rows]
        latency.errorbar(sizes, [r.latency_ms for r in rows], yerr=errors, marker="o", capsize=3, label=name)
        throughput.plot(sizes, [r.throughput for r in rows], marker="o", label=name)
    latency.set_ylabel("latency per batch (ms, mean ± stddev)")
    latency.set_title("Latency")
    throughput.set_ylabel("throughput (samples/s)")
    throughput.set_title("Throughput")
    for axes in (latency, throughput):
        _batch_axis(axes, results)
        axes.set_ylim(bottom=0)
    throughput.legend(fontsize="small")
    save_figure(figure, path)
    return path


def accuracy_label(results: Sequence[Result]) -> str:
    kinds = {r.fidelity.kind for r in results if r.fidelity is not None}
    if len(kinds) == 1:
        return ACCURACY_LABELS[kinds.pop()]
    return "top-1 accuracy or agreement with fp32 (%, see accuracy_kind)"


def plot_accuracy_throughput(results: Sequence[Result], path: Path) -> Path | None:
    measured = [r for r in results if r.fidelity is not None]
    if not measured:
        return None
    figure = _new_figure(1)
    axes = figure.subplots()
    for name, rows in _series(measured).items():
        points = axes.plot([r.throughput for r in rows], [r.fidelity.top1 for r in rows], marker="o", linestyle=":", label=name)
        for r in rows:
            axes.annotate(f"bs{r.batch_size}", (r.throughput, r.fidelity.top1), textcoords="offset points",
                          xytext=(4, 4), fontsize="x-small", color=points[0].get_color())
    axes.set_xlabel("throughput (samples/s)")
    axes.set_ylabel(accuracy_label(measured))
    axes.set_title(f"{accuracy_label(measured).split(' (')[0].capitalize()} against throughput")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    save_figure(figure, path)
    return path


def plot_memory(results: Sequence[Result], path: Path) -> Path:
    cuda = [r for r in results if r.device == "cuda"]
    figure = _new_figure(2 if cuda else 1)
    panels = figure.subplots(1, 2 if cuda else 1)
    ram_axes, vram_axes = (panels[0], panels[1]) if cuda else (panels, None)
    for name, rows in _series(results).items():
        ram_axes.plot([r.batch_size for r in rows], [r.ram_mb for r in rows], marker="o", label=name)
    ram_axes.set_ylabel("peak RAM over the process's baseline (MiB)")
    ram_axes.set_title("RAM")
    axes_list = [ram_axes]
    if vram_axes is not None:
        for name, rows in _series(cuda).items():
            vram_axes.plot([r.batch_size for r in rows], [r.vram_mb for r in rows], marker="o", label=name)
        vram_axes.set_ylabel("peak VRAM (MiB)")
        vram_axes.set_title("VRAM")
        axes_list.append(vram_axes)
    for axes in axes_list:
        _batch_axis(axes, results)
        axes.set_ylim(bottom=0)
        axes.legend(fontsize="small")
    save_figure(figure, path)
    return path


def plot_achieved_flops(results: Sequence[Result], path: Path) -> Path | None:
    """Roofline context: achieved GFLOP/s per config (peak FLOP/s of the device is not known here)."""
    counted = [r for r in results if r.achieved_gflops_per_sec is not None]
    if not counted:
        return None
    figure = _new_figure(1)
    axes = figure.subplots()
    for name, rows in _series(counted).items():
        axes.plot([r.batch_size for r in rows], [r.achieved_gflops_per_sec for r in rows], marker="o", label=name)
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


def write_plots(results: Sequence[Result], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_latency_throughput(results, out_dir / LATENCY_PLOT),
        plot_accuracy_throughput(results, out_dir / ACCURACY_PLOT),
        plot_memory(results, out_dir / MEMORY_PLOT),
        plot_achieved_flops(results, out_dir / FLOPS_PLOT),
    ]
    return [path for path in written if path is not None]


# ---------------------------------------------------------------------------------------
# summary.md


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def fastest_within_budget(
    results: Sequence[Result], checks: Mapping[Result, BudgetCheck]
) -> dict[tuple[str, int], Result]:
    """Per (device, batch size): the highest-throughput row whose fidelity is within budget."""
    best: dict[tuple[str, int], Result] = {}
    for result in results:
        if not checks[result].within:
            continue
        key = (result.device, result.batch_size)
        if key not in best or result.throughput > best[key].throughput:
            best[key] = result
    return dict(sorted(best.items()))


def throughput_matrix(results: Sequence[Result], device: str) -> str:
    """Variants as rows, batch sizes as columns: samples/s and the speedup over the baseline
    variant at the same batch size in the same results (the table a README shows)."""
    on_device = [r for r in results if r.device == device]
    sizes = sorted({r.batch_size for r in on_device})
    baseline = {r.batch_size: r.throughput for r in on_device if r.variant == BASELINE}
    rows: dict[str, dict[str, str]] = {}
    for r in on_device:
        speedup = f" ({r.throughput / baseline[r.batch_size]:.2f}x)" if r.batch_size in baseline else ""
        rows.setdefault(r.variant, {"variant": f"`{r.variant}`"})[f"batch {r.batch_size}"] = f"{r.throughput:.1f}{speedup}"
    return markdown_table(list(rows.values()), ("variant", *(f"batch {size}" for size in sizes)))


def summary_markdown(
    results: Sequence[Result], checks: Mapping[Result, BudgetCheck], plots: Sequence[Path],
    source: Path, budgets_note: str | None = None, faults: Sequence[Mapping[str, str]] = (),
) -> str:
    has_flops = any(r.gflops_per_image is not None for r in results)
    baseline_throughput = {(r.device, r.batch_size): r.throughput for r in results if r.variant == BASELINE}
    table_rows = []
    for r in results:
        check = checks[r]
        row = {
            "variant": r.variant, "device": r.device, "batch": str(r.batch_size),
            "latency ms": f"{r.latency_ms:.2f}" + (f" ± {r.latency_stddev_ms:.2f}" if r.latency_stddev_ms is not None else ""),
            "samples/s": f"{r.throughput:.1f}",
            "top-1 %": _fmt(r.fidelity.top1 if r.fidelity else None, 2),
            "top-5 %": _fmt(r.fidelity.top5 if r.fidelity else None, 2),
            "agreement %": _fmt(r.fidelity.agreement_top1 if r.fidelity else None, 2),
            "rel. error": f"{r.fidelity.relative_error:.3g}" if r.fidelity else "",
            "size MiB": _fmt(r.model_size_mb), "RAM MiB": _fmt(r.ram_mb), "VRAM MiB": _fmt(r.vram_mb),
            "budget": {True: "within", False: "**outside**", None: "unchecked"}[check.within],
        }
        if has_flops:
            row["GFLOP/image"] = _fmt(r.gflops_per_image, 3)
            row["achieved GFLOP/s"] = _fmt(r.achieved_gflops_per_sec)
        table_rows.append(row)
    columns = tuple(table_rows[0]) if table_rows else ()
    kinds = sorted({r.fidelity.kind for r in results if r.fidelity is not None})
    lines = [
        "# Benchmark summary",
        "",
        f"From `{source.name}`: {len(results)} (variant, batch size) configs on {', '.join(sorted({r.device for r in results}))}. "
        f"Accuracy columns are {' / '.join(ACCURACY_LABELS[k] for k in kinds) or 'not measured'}"
        + (" — agreement with the fp32 model on synthetic weights or images, not ImageNet accuracy." if AGREEMENT in kinds else "."),
        "",
        "## Throughput",
        "",
        "Samples/s (mean over the timed rounds) and, in brackets, the speedup over `baseline` at the same batch size.",
    ]
    for device in sorted({r.device for r in results}):
        lines += ["", f"On {device}:", "", throughput_matrix(results, device)]
    lines += [
        "",
        "## Results",
        "",
        markdown_table(table_rows, columns),
        "",
        "## Fastest within its accuracy budget, per batch size",
        "",
    ]
    best = fastest_within_budget(results, checks)
    if best:
        lines.append(markdown_table(
            [
                {
                    "device": device, "batch": str(size), "variant": r.variant, "samples/s": f"{r.throughput:.1f}",
                    "latency ms": f"{r.latency_ms:.2f}",
                    "speedup over baseline": (f"{r.throughput / baseline_throughput[(device, size)]:.2f}x"
                                              if (device, size) in baseline_throughput else ""),
                    "memory MiB": f"{r.memory_mb:.1f} ({r.memory_kind})",
                }
                for (device, size), r in best.items()
            ],
            ("device", "batch", "variant", "samples/s", "latency ms", "speedup over baseline", "memory MiB"),
        ))
    else:
        lines.append("No config could be shown to be within its accuracy budget.")
    outside = [(r, c) for r, c in checks.items() if c.within is False]
    unchecked = sorted({reason for c in checks.values() if c.within is None for reason in c.reasons})
    if budgets_note:
        unchecked.insert(0, budgets_note)
    if outside:
        lines += ["", "Outside the accuracy budget:", ""]
        lines += [f"- {r.label}: {'; '.join(c.reasons)}" for r, c in outside]
    if unchecked:
        lines += ["", "Not checked against a budget:", ""] + [f"- {reason}" for reason in unchecked]
    if faults:
        lines += ["", "Not measured:", ""]
        lines += [f"- {f.get('optimization_technique')} at batch {f.get('batch_size')} on {f.get('device')}: {f.get('status')}"
                  for f in faults]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{path.stem}]({path.name})" for path in plots]
    return "\n".join(lines) + "\n"


def summarize(output_dir: Path, budgets_path: Path | None = None) -> list[Path]:
    """Plots and summary.md for the results in ``output_dir``; returns the files written.
    Raises UserError for an unreadable results file, or when a file cannot be written
    (disk full, read-only: nothing partial is left)."""
    source = results_path(Path(output_dir))
    return write_summary(source, *load_table(source), budgets_path)


def write_summary(
    source: Path, results: Sequence[Result], faults: Sequence[Mapping[str, str]], budgets_path: Path | None = None,
) -> list[Path]:
    budgets, note = load_budgets_or_none(budgets_path)
    checks = check_budgets(results, budgets)
    plots = write_plots(results, source.parent)
    summary = source.parent / SUMMARY_FILE
    atomic.write_text(summary, summary_markdown(results, checks, plots, source, note, faults), option=OUTPUT_OPTION)
    return [*plots, summary]


# ---------------------------------------------------------------------------------------
# recommend


def recommend(
    results: Sequence[Result], *, max_memory_mb: float | None, max_latency_ms: float | None,
    checks: Mapping[Result, BudgetCheck] | None = None, source: Path = Path(RESULTS_FILE),
) -> Result:
    """The highest-throughput config within both limits (and, when ``checks`` is given,
    within its accuracy budget); a UserError naming the closest candidates otherwise."""
    eligible = [r for r in results if checks is None or checks[r].within]
    if not eligible:
        raise UserError(
            f"no config in {source} is within its accuracy budget ({len(results)} rows checked): "
            "see summary.md, or pass --ignore-budgets"
        )
    memory_limit = math.inf if max_memory_mb is None else max_memory_mb
    latency_limit = math.inf if max_latency_ms is None else max_latency_ms
    fitting = [r for r in eligible if r.memory_mb <= memory_limit and r.latency_ms <= latency_limit]
    if fitting:
        return max(fitting, key=lambda r: (r.throughput, -r.memory_mb))

    def excess(r: Result) -> float:  # how far over the tighter limit, as a ratio
        return max(r.memory_mb / memory_limit, r.latency_ms / latency_limit)

    closest = sorted(eligible, key=excess)[:3]
    limits = " and ".join(
        ([f"memory <= {max_memory_mb:g} MiB"] if max_memory_mb is not None else [])
        + ([f"latency <= {max_latency_ms:g} ms"] if max_latency_ms is not None else [])
    )
    skipped = len(results) - len(eligible)
    raise UserError(
        f"no config in {source} fits {limits}"
        + (f" ({skipped} configs not shown to be within their accuracy budget were left out)" if skipped else "")
        + "; closest: "
        + ", ".join(f"{r.label} ({r.memory_kind} {r.memory_mb:.0f} MiB, {r.latency_ms:.1f} ms)" for r in closest)
    )


def _positive_limit(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    value = _number(text)
    if value is None or value <= 0:
        raise UserError(f"{name} must be a positive number, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------
# CLI


def add_commands(commands: argparse._SubParsersAction) -> None:
    recommend_parser = commands.add_parser(
        "recommend",
        help="the variant and batch size with the highest throughput within memory and latency limits",
        description="Reads a results file and prints the (variant, batch size) with the highest throughput whose "
        "memory (RAM for CPU rows, VRAM for CUDA rows) and latency per batch are within the limits, and whose "
        "accuracy is within its budget (benchmarks_baseline/budgets.toml).",
    )
    recommend_parser.add_argument("--results", type=Path, default=Path("results") / RESULTS_FILE,
                                  help=f"a {RESULTS_FILE}, or the sweep's output directory (default: %(default)s)")
    recommend_parser.add_argument("--max-memory-mb", help="largest peak memory per process: RAM on CPU, VRAM on CUDA (MiB)")
    recommend_parser.add_argument("--max-latency-ms", help="largest mean latency per batch (ms)")
    recommend_parser.add_argument("--device", choices=("cpu", "cuda"), help="only rows measured on this device")
    recommend_parser.add_argument("--budgets", type=Path, help="budgets file (default: the repository's benchmarks_baseline/budgets.toml)")
    recommend_parser.add_argument("--ignore-budgets", action="store_true", help="consider configs outside their accuracy budget too")
    recommend_parser.set_defaults(handler=run_recommend)

    summary_parser = commands.add_parser(
        "summary",
        help="write the plots and summary.md for a results directory",
        description=f"Writes {LATENCY_PLOT}, {ACCURACY_PLOT}, {MEMORY_PLOT} ({FLOPS_PLOT} when FLOPs were "
        f"recorded) and {SUMMARY_FILE} beside the results file. A sweep does this at its end.",
    )
    summary_parser.add_argument("--output-dir", type=Path, default=Path("results"),
                                help="the sweep's output directory (default: %(default)s)")
    summary_parser.add_argument("--budgets", type=Path, help="budgets file (default: the repository's benchmarks_baseline/budgets.toml)")
    summary_parser.set_defaults(handler=run_summary)


def run_recommend(args: argparse.Namespace) -> int:
    max_memory = _positive_limit("--max-memory-mb", args.max_memory_mb)
    max_latency = _positive_limit("--max-latency-ms", args.max_latency_ms)
    source = results_path(args.results)
    results = load_results(source)
    if args.device:
        results = [r for r in results if r.device == args.device]
        if not results:
            raise UserError(f"results file {source} has no {args.device} rows: drop --device or pass results measured on {args.device}")
    checks = None
    if not args.ignore_budgets:
        from densenet_opt.budgets import BUDGETS_FILE, load_budgets

        checks = check_budgets(results, load_budgets(args.budgets or BUDGETS_FILE))
    best = recommend(results, max_memory_mb=max_memory, max_latency_ms=max_latency, checks=checks, source=source)
    print(
        f"{best.variant} at batch size {best.batch_size} on {best.device}: {best.throughput:.1f} samples/s, "
        f"{best.latency_ms:.2f} ms per batch, {best.memory_kind} {best.memory_mb:.0f} MiB"
    )
    left_out = sorted({r.variant for r in results if checks is not None and not checks[r].within})
    if left_out:
        print(f"not considered (outside or without an accuracy budget; --ignore-budgets includes them): {', '.join(left_out)}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    for path in summarize(args.output_dir, args.budgets):
        print(path)
    return 0


def summarize_after_sweep(output_dir: Path) -> None:
    """The end of a sweep: a report that cannot be drawn is one line, never a lost exit code."""
    source = results_path(Path(output_dir))
    if not source.is_file():
        return
    try:
        results, faults = load_table(source)
        written = write_summary(source, results, faults)
    except UserError as error:
        print(f"no summary: {error}")
        return
    except Exception as error:  # a plotting failure must not turn measured results into a failed run
        print(f"no summary: {type(error).__name__}: {error}")
        return
    print(f"summary: {written[-1]} (plots: {', '.join(p.name for p in written[:-1])})")
    for device in sorted({r.device for r in results}):
        print(f"\nsamples/s (speedup over baseline) on {device}:\n{throughput_matrix(results, device)}")
