"""summary.md: the throughput matrix, every measured row with its budget check, the fastest
config within budget per batch size, and what was not measured or not checked."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from densenet_opt import atomic, peers
from densenet_opt.accuracy import AGREEMENT, SYNTHETIC_ACCURACY
from densenet_opt.budgets import BudgetCheck
from densenet_opt.config import DEFAULT_MAX_CPU_PRESSURE, OPTIONS
from densenet_opt.measure.contention import CONTENDED_LOAD_PER_CORE
from densenet_opt.measure.env import X86_FEATURES, x86_level
from densenet_opt.render.plots import ACCURACY_LABELS
from densenet_opt.report import BASELINE, OUTPUT_OPTION, SKIPPED_FOR_TIME, Row, read_rows

if TYPE_CHECKING:
    from densenet_opt.verdict import Verdict

SUMMARY_FILE = "summary.md"
FASTEST_HEADING = "## Fastest within its budget (accuracy, size, memory), per batch size"


def markdown_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> str:
    """A GitHub markdown table: a header of ``columns``, then a line per mapping ("" for a missing cell)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _speedup(row: Row) -> str:
    return "" if row.speedup_vs_baseline is None else f"{row.speedup_vs_baseline:.2f}x"


def where(row: Row, by_machine: bool = False) -> str:
    """The row's device as summary.md names it: "cpu", or "cpu of alpha" with ``by_machine``
    (a results file holding several machines' rows; "local" for a row naming none)."""
    return f"{row.device} of {row.machine or 'local'}" if by_machine else row.device


def fastest_within_budget(rows: Sequence[Row], checks: Mapping[Row, BudgetCheck],
                          by_machine: bool = False) -> dict[tuple[str, int], Row]:
    """Per (device, batch size), sorted: the highest-throughput row shown to be within its
    budget (``checks[row].within`` True); per (device of machine, batch size) with ``by_machine``."""
    best: dict[tuple[str, int], Row] = {}
    for row in rows:
        if not checks[row].within:
            continue
        key = (where(row, by_machine), row.batch_size)
        if key not in best or row.latency_ms_per_batch < best[key].latency_ms_per_batch:  # same batch: lower latency, higher throughput
            best[key] = row
    return dict(sorted(best.items()))


CONTENDED_MARK = " (contended)"


def throughput_matrix(rows: Sequence[Row], device: str, max_cpu_pressure: float = DEFAULT_MAX_CPU_PRESSURE) -> str:
    """Variants as rows, batch sizes as columns: samples/s and, in brackets, the row's
    speedup_vs_baseline (the table a README shows), for ``device``'s rows. A cell timed
    under contention (Row.contended at ``max_cpu_pressure``) ends in CONTENDED_MARK, and a
    line under the table says what that means."""
    on_device = [r for r in rows if r.device == device]
    sizes = sorted({r.batch_size for r in on_device})
    cells: dict[str, dict[str, str]] = {}
    for r in on_device:
        speedup = f" ({_speedup(r)})" if r.speedup_vs_baseline is not None else ""
        mark = CONTENDED_MARK if r.contended(max_cpu_pressure) else ""
        cells.setdefault(r.variant, {"variant": f"`{r.variant}`"})[f"batch {r.batch_size}"] = (
            f"{r.throughput_samples_per_sec:.1f}{speedup}{mark}"
        )
    table = markdown_table(list(cells.values()), ("variant", *(f"batch {size}" for size in sizes)))
    contended = [r for r in on_device if r.contended(max_cpu_pressure)]
    if contended:
        table += "\n\n" + contention_note(contended, max_cpu_pressure)
    return table


def contention_note(contended: Sequence[Row], max_cpu_pressure: float) -> str:
    """One sentence on the configs timed under contention."""
    worst = max(contended, key=lambda r: (r.cpu_pressure_pct or 0.0, r.load_per_core or 0.0))
    return (f"{len(contended)} config(s) marked{CONTENDED_MARK} were timed while other processes competed for the "
            f"CPUs (CPU pressure above {max_cpu_pressure:g}%, or without PSI a load above {CONTENDED_LOAD_PER_CORE:g} per core; "
            f"worst {worst.label}, "
            f"{worst.contention_text}): their "
            "figures, speedups included, measure the contention as much as the engine (docs/baselines.md, \"Contention\").")


def _results_table(rows: Sequence[Row], checks: Mapping[Row, BudgetCheck], by_machine: bool = False) -> str:
    has_flops = any(r.gflops is not None for r in rows)
    table = []
    for r in rows:
        cells = {
            "variant": r.variant, "device": where(r, by_machine), "batch": str(r.batch_size),
            "latency ms": f"{r.latency_ms_per_batch:.2f}" + (f" ± {r.latency_ms_stddev:.2f}" if r.latency_ms_stddev is not None else ""),
            "samples/s": f"{r.throughput_samples_per_sec:.1f}",
            "top-1 %": _fmt(r.accuracy_top_1, 2), "top-5 %": _fmt(r.accuracy_top_5, 2),
            "agreement %": _fmt(r.agreement_top_1, 2),
            "% of fp32 top-1 (95% CI)": _top1_of_fp32(r),
            "rel. error": "" if r.logit_relative_error is None else f"{r.logit_relative_error:.3g}",
            "size MiB": _fmt(r.model_size_mb), "RAM MiB": _fmt(r.ram_usage_mb), "VRAM MiB": _fmt(r.vram_usage_mb),
            "CPU pressure %": _fmt(r.cpu_pressure_pct, 0),
            "budget": {True: "within", False: "**outside**", None: "unchecked"}[checks[r].within],
        }
        if has_flops:
            cells["GFLOP/image"] = _fmt(r.gflops, 3)
            cells["achieved GFLOP/s"] = _fmt(r.achieved_gflops)
        table.append(cells)
    return markdown_table(table, tuple(table[0]) if table else ())


def _top1_of_fp32(row: Row) -> str:
    """MLPerf's figure with its interval, "99.2 (98.1-100.3)"; empty where not measured."""
    if row.top1_of_fp32_pct is None:
        return ""
    interval = f" ({row.top1_of_fp32_low:.1f}-{row.top1_of_fp32_high:.1f})" if row.top1_of_fp32_low is not None else ""
    return f"{row.top1_of_fp32_pct:.1f}{interval}"


def _fastest_table(best: Mapping[tuple[str, int], Row]) -> str:
    columns = ("device", "batch", "variant", "samples/s", "latency ms", "speedup over baseline", "memory MiB")
    return markdown_table(
        [
            {
                "device": device, "batch": str(size), "variant": r.variant,
                "samples/s": f"{r.throughput_samples_per_sec:.1f}", "latency ms": f"{r.latency_ms_per_batch:.2f}",
                "speedup over baseline": _speedup(r), "memory MiB": f"{r.memory_mb:.1f} ({r.memory_kind})",
            }
            for (device, size), r in best.items()
        ],
        columns,
    )


def summary_markdown(
    rows: Sequence[Row], checks: Mapping[Row, BudgetCheck], plots: Sequence[Path],
    source: Path, budgets_note: str | None = None, faults: Sequence[Row] = (),
    max_cpu_pressure: float = DEFAULT_MAX_CPU_PRESSURE,
) -> str:
    """The text of summary.md for the measured ``rows`` (each a key of ``checks``), the
    ``plots`` written beside it, the ``faults`` (rows with another status) and, when the
    budgets could not be loaded, ``budgets_note`` saying why."""
    devices = sorted({r.device for r in rows})
    kinds = sorted({r.accuracy_kind for r in rows if r.accuracy_kind in ACCURACY_LABELS})
    lines = [
        "# Benchmark summary",
        "",
        f"From `{source.name}`: {len(rows)} (variant, batch size) configs on {', '.join(devices)}. "
        f"Accuracy columns are {' / '.join(ACCURACY_LABELS[k] for k in kinds) or 'not measured'}"
        + (" — agreement with the fp32 model on synthetic weights or images, not ImageNet accuracy" if AGREEMENT in kinds else "")
        + (" — synthetic weights on synthetic images, scored against each image's pseudo-class: not ImageNet accuracy"
           if SYNTHETIC_ACCURACY in kinds else "") + ".",
        "",
        "## Throughput",
        "",
        f"Samples/s (mean over the timed rounds) and, in brackets, the speedup over `{BASELINE}` at the same batch size.",
    ]
    # Several named machines (sweep-cluster): each its own matrix; fleet.md has them side by side.
    by_machine = len({r.machine for r in rows if r.machine}) > 1
    for device in devices:
        if not by_machine:
            lines += ["", f"On {device}:", "", throughput_matrix(rows, device, max_cpu_pressure)]
            continue
        for machine in dict.fromkeys(r.machine for r in rows if r.device == device):
            own = [r for r in rows if r.machine == machine]
            lines += ["", f"On {where(own[0], True)}:", "", throughput_matrix(own, device, max_cpu_pressure)]
    lines += ["", "## Results", "", _results_table(rows, checks, by_machine), "", FASTEST_HEADING, ""]
    best = fastest_within_budget(rows, checks, by_machine)
    lines.append(_fastest_table(best) if best else "No config could be shown to be within its budget.")
    outside = [(r, c) for r, c in checks.items() if c.within is False]
    unchecked = sorted({reason for c in checks.values() if c.within is None for reason in c.reasons})
    if budgets_note:
        unchecked.insert(0, budgets_note)
    if outside:
        lines += ["", "Outside the budget:", ""] + [f"- {r.label}: {'; '.join(c.reasons)}" for r, c in outside]
    if unchecked:
        lines += ["", "Not checked against a budget:", ""] + [f"- {reason}" for reason in unchecked]
    if faults:
        lines += ["", "Not measured:", ""] + [
            f"- {f.label}: {f.status}" + (f" ({f.engine_details['reason']})" if "reason" in f.engine_details else "")
            for f in faults]
    searches = [r for r in rows if SKIPPED_FOR_TIME in r.engine_details]
    if searches:
        lines += ["", "Searches not run for the time budget (the row measures the variant built without them):", ""]
        lines += [f"- {r.label}: {r.engine_details[SKIPPED_FOR_TIME]}" for r in searches]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{path.stem}]({path.name})" for path in plots]
    return "\n".join(lines) + "\n"


# docs/performance.md's comparison with the peers sits between these lines: the newest kind's
# (newest_peer_kind, stored_peer_tables); every kind's is in its results page (kind_page).
PEERS_BEGIN = "<!-- peer comparisons: generated from benchmarks_baseline/KIND/peers/peers.md (tools/peers.py --store) by tools/performance_tables.py; edit those, not this -->"
PEERS_END = "<!-- end of the generated peer comparisons -->"
PEERS_MARKDOWN = "peers.md"  # tools/peers.py's markdown, beside its peers.csv
ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")  # the date tools/peers.py and tools/false_alarm_rate.py write
PEERS_PRESSURE = re.compile(r"CPU pressure while timed: [^;\n]*")  # as tools/peers.py writes it


def stored_peer_tables(baseline_dir: Path, kinds: Sequence[str] | None = None) -> str:
    """tools/peers.py's stored output of each machine kind (only ``kinds`` when given)
    (``baseline_dir/KIND/peers/peers.md``, kinds in name order), as written: its peer
    tables, each with the batch size's layer profile under it where it was measured."""
    stored = [path for path in sorted(Path(baseline_dir).glob(f"*/peers/{PEERS_MARKDOWN}"))
              if kinds is None or path.parent.parent.name in kinds]
    return "\n\n".join(path.read_text(encoding="utf-8").strip() for path in stored) or (
        "No stored comparison yet: `python tools/peers.py --store` stores one for the machine kind it runs on.")


def newest_peer_kind(baseline_dir: Path) -> str | None:
    """The machine kind whose stored comparison with the peers is dated latest (the first
    date in its peers.md; the last kind in name order on a tie); None: none stored."""
    newest = {}
    for path in sorted(Path(baseline_dir).glob(f"*/peers/{PEERS_MARKDOWN}")):
        date = ISO_DATE.search(path.read_text(encoding="utf-8"))
        newest[date.group() if date else ""] = path.parent.parent.name
    return newest[max(newest)] if newest else None


def stored_sweeps(baseline_dir: Path) -> list[Path]:
    """The stored sweeps, ``baseline_dir/KIND/DEVICE-sweep/benchmark_results.csv``, kinds in name order."""
    return sorted(Path(baseline_dir).glob("*/*-sweep/benchmark_results.csv"))


def newest_sweep_kind(baseline_dir: Path) -> str | None:
    """The machine kind whose stored sweep holds the most recently measured row (None: none stored)."""
    newest = {max((r.measured_at or "" for r in read_rows(path)), default=""): path.parent.parent.name
              for path in stored_sweeps(baseline_dir)}
    return newest[max(newest)] if newest else None


def stored_sweep_tables(baseline_dir: Path, kinds: Sequence[str] | None = None) -> str:
    """One throughput_matrix per stored sweep (stored_sweeps; only ``kinds`` when given),
    each under a heading naming the machine kind and the device and a line saying what was
    measured (dates, CPU or GPU, software, images, rounds, weights). Raises UserError for an
    unreadable results file."""
    sections = []
    for results in stored_sweeps(baseline_dir):
        kind, device = results.parent.parent.name, results.parent.name.removesuffix("-sweep")
        if kinds is not None and kind not in kinds:
            continue
        rows = [r for r in read_rows(results) if r.device == device and r.measured]
        if not rows:
            continue
        first = rows[0]
        software = ", ".join(f"{name} {getattr(first, name)}" for name in ("torch", "onnxruntime", "openvino", "nncf", "torchao")
                             if getattr(first, name))
        rounds = sorted({r.rounds for r in rows if r.rounds})
        sections.append(
            f"#### `{kind}` ({device})\n\n"
            f"Measured {measured_span(rows)} on "
            f"{first.device_name or 'an unnamed device'}; {software or 'software not recorded'}; {first.num_samples} "
            f"evaluation images, {'/'.join(map(str, rounds)) or 'an unrecorded number of'} timed rounds, "
            f"{first.weights} weights; `{Path(baseline_dir).name}/{kind}/{results.parent.name}/{results.name}`. "
            "Samples/s (speedup over `baseline` at the same batch size, in the same sweep):\n\n"
            + throughput_matrix(rows, device))
    return "\n\n".join(sections) or ("No stored sweep yet: `nox -s bench -- --save-baseline` (CPU) or "
                                      "`nox -s gpu_bench -- --save-baseline` (CUDA) stores one for the machine kind it runs on.")


# The results pages, docs/RESULTS_PAGES/KIND.md, one per folder of benchmarks_baseline/
# (kind_page); KIND_NOTES in that folder holds the kind's hand-written, dated measurement
# notes. The list of pages sits between these lines in docs/performance.md and docs/README.md.
RESULTS_PAGES = "results"
KIND_NOTES = "notes.md"
FALSE_ALARM_MARKDOWN = "false_alarm.md"  # tools/false_alarm_rate.py's table, stored in KIND/false-alarm/
KINDS_BEGIN = "<!-- results pages: generated from the folders of benchmarks_baseline/ by tools/performance_tables.py -->"
KINDS_END = "<!-- end of the generated list of results pages -->"
NOTE_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def generated_page_line(kind: str, source: str) -> str:
    """The line a results page opens with: what it is generated from (``source``: the
    baseline folder's name), and not to edit it."""
    return (f"Generated by tools/performance_tables.py from {source}/{kind}; do not edit: change the files there "
            f"(the hand-written notes: `{source}/{kind}/{KIND_NOTES}`) and run the tool.")


def cpu_summary(cpu: Mapping[str, object]) -> str:
    """A stored pytest-benchmark run's ``machine_info["cpu"]`` (py-cpuinfo's fields) in one
    line: the model, logical CPUs and clock; on x86 the x86-64 level and which of the flags
    that pick kernels (measure.env.X86_FEATURES) the CPU has and lacks."""
    text = f"{cpu.get('brand_raw') or 'an unnamed CPU'}, {cpu.get('count') or 'an unrecorded number of'} logical CPUs"
    if cpu.get("hz_advertised_friendly"):
        text += f" at {cpu['hz_advertised_friendly']}"
    flags = {str(flag) for flag in cpu.get("flags") or ()}
    if flags and str(cpu.get("arch", "")).upper().startswith("X86"):
        has = [flag for flag, _ in X86_FEATURES if flag in flags]
        lacks = [flag for flag, _ in X86_FEATURES if flag not in flags]
        text += (f"; x86-64 level {x86_level(flags)}; of the flags that pick kernels, with {', '.join(has) or 'none'}, "
                 f"without {', '.join(lacks) or 'none'}")
    return text


def measured_span(rows: Sequence[Row]) -> str:
    """The days ``rows`` were measured on: "2026-11-28", "2026-11-28 to 2026-11-30", or
    "on an unrecorded date"."""
    dates = sorted({(r.measured_at or "")[:10] for r in rows} - {""})
    return " to ".join(dict.fromkeys([dates[0], dates[-1]])) if dates else "on an unrecorded date"


def sweep_fact(device: str, rows: Sequence[Row]) -> str:
    """What a stored sweep's ``rows`` of ``device`` say of when and how quietly they were
    timed: the dates, the configs measured, the CPU pressure (lowest-highest)."""
    measured = [r for r in rows if r.device == device and r.measured]
    pressures = sorted(r.cpu_pressure_pct for r in measured if r.cpu_pressure_pct is not None)
    pressure = ("not recorded" if not pressures else
                "-".join(dict.fromkeys([f"{pressures[0]:.1f}", f"{pressures[-1]:.1f}"])) + "%")
    return (f"the stored {device} sweep: measured {measured_span(measured)}, {len(measured)} configs; "
            f"CPU pressure while timed: {pressure}")


def stored_date(markdown: str) -> str:
    """The first date a stored report (peers.md, false_alarm.md) names; "undated" for none."""
    date = ISO_DATE.search(markdown)
    return date.group() if date else "undated"


def peers_fact(peers_markdown: str) -> str:
    """A stored peers.md's date and CPU pressure, as tools/peers.py wrote them."""
    pressure = PEERS_PRESSURE.search(peers_markdown)
    return (f"the comparison with the peers: {stored_date(peers_markdown)}; "
            f"{pressure.group() if pressure else 'CPU pressure not recorded'}")


def note_titles(notes: str) -> list[str]:
    """The headings of a kind's hand-written notes, in order."""
    return NOTE_HEADING.findall(notes)


def kind_page(kind: str, source: str, facts: Sequence[str], peers: str, sweeps: str,
              false_alarm: str | None = None, notes: str | None = None) -> str:
    """docs/results/KIND.md: a heading naming ``kind``, generated_page_line (``source``: the
    baseline folder's name), the ``facts`` the stored files give (the CPU, dates, CPU
    pressure), its comparison with the peers and its stored sweeps (as stored_peer_tables
    and stored_sweep_tables render them), the gate's false-alarm table where stored, and the
    kind's hand-written ``notes``."""
    lines = [f"# Results on `{kind}`", "",
             "[README](../../README.md) · [all pages](../README.md) · [what is measured and how](../performance.md)", "",
             generated_page_line(kind, source), "", "What the stored files say:", "",
             *(f"- {fact}" for fact in facts or ["no stored run, sweep or comparison yet: only notes"]), "",
             "## Against the peers' own defaults", "",
             "How they are measured: [Performance](../performance.md#against-the-peers-own-defaults).", "", peers, "",
             "## The stored sweep", "",
             "How it is measured: [Performance](../performance.md#the-stored-sweeps).", "", sweeps, ""]
    if false_alarm:
        lines += ["## The gate's false alarms", "", "How they are counted: "
                  "[Baselines](../baselines.md#how-often-it-is-wrong-toolsfalse_alarm_ratepy).", "", false_alarm.strip(), ""]
    lines += ["## Measurement notes", "",
              notes.strip() if notes else f"None yet: a kind's hand-written, dated notes go in `{source}/{kind}/{KIND_NOTES}`."]
    return "\n".join(lines) + "\n"


def kind_index(contents: Mapping[str, Sequence[str]]) -> str:
    """The list of the results pages: per kind (``contents``: kind -> what its page holds,
    in name order), a link to docs/RESULTS_PAGES/KIND.md and what it holds."""
    return "\n".join(f"- [`{kind}`]({RESULTS_PAGES}/{kind}.md): {'; '.join(held) or 'nothing stored yet'}"
                     for kind, held in sorted(contents.items())) or "No machine kind stored yet."


OPTIONS_BEGIN = "<!-- options table: generated from densenet_opt/config.py's OPTIONS by tools/performance_tables.py -->"
OPTIONS_END = "<!-- end of the generated options table -->"
README_TABLE_BEGIN = "<!-- README_TABLE_BEGIN -->"
README_TABLE_END = "<!-- README_TABLE_END -->"


VARIANTS_BEGIN = "<!-- variants: generated from the registry (each Variant's name, description, devices) by tools/performance_tables.py -->"
VARIANTS_END = "<!-- end of the generated variants -->"
VARIANT_OPTIONS_BEGIN = "<!-- variant options: generated from each variant's declared options by tools/performance_tables.py -->"
VARIANT_OPTIONS_END = "<!-- end of the generated variant options -->"


def variants_table() -> str:
    """Every registered variant as ``densenet-opt list`` names it: name, description (its
    Variant's), devices, and the module that builds it."""
    from densenet_opt.variants import registry

    rows = [{"variant": f"`{v.name}`", "what it is": v.description.replace("|", "\\|"), "devices": ", ".join(v.devices),
             "module": f"`{v.build.__module__.removeprefix('densenet_opt.')}`"} for v in registry().values()]
    return markdown_table(rows, ["variant", "what it is", "devices", "module"])


def variant_options_table() -> str:
    """Every registered variant's options (variants.VariantOption: what ``--variant-options``
    and ``densenet-opt list`` take) as a table: key, default, meaning."""
    from densenet_opt.variants import registry

    rows = []
    for variant in registry().values():
        for option in variant.options:
            meaning = option.help + (f"; one of {', '.join(option.choices)}" if option.choices else "")
            if variant.shared_prefix:
                meaning += f"; `{variant.shared_prefix}.{option.name}` sets it too"
            rows.append({"key": f"`{variant.name}.{option.name}`", "default": f"`{option.default_text}`",
                         "meaning": meaning.replace("|", "\\|")})
    return markdown_table(rows, ["key", "default", "meaning"])


def options_table() -> str:
    """The sweep's options (config.OPTIONS, as the CLI and the plugin offer them) as a table:
    option, default, meaning."""
    rows = [{"option": f"`{o.name}`", "default": "off" if o.is_flag else (f"`{o.default}`" if o.default else ""),
             "meaning": o.help.replace("|", "\\|")} for o in OPTIONS]
    return markdown_table(rows, ["option", "default", "meaning"])


GATE_HEADING = "## Regression gate"


def gate_table(verdicts: Sequence[Verdict], kind: str) -> str:
    """The gate's verdicts as a summary.md section: per config the speed ratio (this run's
    speedup / the stored one), its interval and the verdict (densenet_opt/verdict.py)."""
    lines = [f"{GATE_HEADING} (stored baseline of {kind})", "",
             "Speed ratio: this run's speedup over `baseline` / the stored one (below 1: slower). "
             "A regression is an interval wholly below 1 - threshold (densenet_opt/verdict.py).", ""]
    table = [{"variant": v.variant, "batch": str(v.batch_size), "speed ratio": f"{v.ratio:.3f}",
              "interval": v.interval_text, "rounds": str(v.rounds or "-"), "threshold": f"-{v.max_drop:.0%}",
              "verdict": f"**{v.outcome}**" if v.regressed else v.outcome} for v in verdicts]
    columns = ["variant", "batch", "speed ratio", "interval", "rounds", "threshold", "verdict"]
    return "\n".join(lines) + (markdown_table(table, columns) if table else "No config had a stored speedup.") + "\n"


def append_gate_table(output_dir: Path, verdicts: Sequence[Verdict], kind: str) -> Path | None:
    """Add gate_table to OUTPUT_DIR/summary.md (replacing an earlier gate section); None
    when there is no summary.md. Raises UserError when it cannot be written."""
    path = Path(output_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    text = text.split(f"\n{GATE_HEADING}", 1)[0].rstrip("\n") + "\n\n"
    atomic.write_text(path, text + gate_table(verdicts, kind), option=OUTPUT_OPTION)
    return path


def _engine_label(contender: peers.Contender) -> str:
    return f"**{contender.name}** (suite)" if contender.group == peers.SUITE else f"{contender.name} (peer default)"


def peers_tables(results: Sequence[peers.Result], heading: str,
                 profiles: Mapping[int, peers.LayerProfile] | None = None) -> str:
    """tools/peers.py's comparison (peers.Result) as a markdown table per batch size, under
    ``heading`` (which names the machine kind and the conditions), fastest first; under a
    batch size's table, its layer profile where ``profiles`` (by batch size) has one."""
    lines = [heading, ""]
    for size in sorted({r.batch_size for r in results}, reverse=True):
        lines += [f"Batch {size}:", "", "| engine | images/s | ms per batch | % of fp32 top-1 (95% CI) | MLPerf rule | "
                  "fraction of compute limit | x best peer (95% CI) |", "|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in results if r.batch_size == size), key=lambda r: r.median_ms):
            figure = r.accuracy.top1_of_fp32 if r.accuracy else None
            accuracy = "" if figure is None else f"{figure.pct:.2f} ({figure.low:.2f}-{figure.high:.2f})"
            limit = "" if r.limit is None else f"{r.limit.fraction(r.images_per_s):.1%} of {r.limit.images_per_s:.0f} ({r.limit.precision})"
            speed = "" if r.over_best_peer is None else (f"{r.over_best_peer[1]:.2f} ({r.over_best_peer[2]:.2f}-"
                                                         f"{r.over_best_peer[3]:.2f}) vs {r.over_best_peer[0]}")
            lines.append(f"| {_engine_label(r.contender)} | {r.images_per_s:.1f} | {r.median_ms:.2f} | {accuracy} | "
                         f"{'meets' if r.meets else 'below' if figure else 'not measured'} | {limit} | {speed} |")
        lines.append("")
        if profiles and size in profiles:
            lines += [layer_profile_section(profiles[size]), ""]
    return "\n".join(lines)


def layer_profile_section(profile: peers.LayerProfile) -> str:
    """One batch size's peers.LayerProfile: a sentence saying what was measured, the
    layer_profile_table of the engines profiled, and why any group has none."""
    text = (f"Where the time goes at batch {profile.batch_size}: OpenVINO's per-layer counters (`PERF_COUNT=YES`), "
            "ms per call by executed layer type (in brackets, its share of the engine's counted total), the mean of "
            f"{profile.calls} calls, the engines called in a fresh random order each round; each model compiled again from its model file with "
            f"the properties it was timed with, but in one stream: one infer request holding the whole batch of "
            f"{profile.batch_size}. Types under 1 ms and 2% in every engine are summed as other types; the counters' "
            "total leaves out the time between layers: it is not the latency above.")
    if profile.profiled:
        text += "\n\n" + layer_profile_table({_engine_label(c): ms for c, ms in profile.profiled})
    return text + "".join(f"\n\nNot profiled: {reason}." for reason in profile.left_out)


def layer_profile_table(profiles: Mapping[str, Mapping[str, float]], min_ms: float = 1.0, min_share_pct: float = 2.0) -> str:
    """ms per call by layer type (``profiles``: engine name -> layer type -> ms), a column per
    engine, each cell "ms (share of the engine's total %)": a row per layer type of at least
    ``min_ms`` or ``min_share_pct`` in some engine, the first engine's largest first, then
    the other types together and the total (the sum of every type)."""
    totals = {name: sum(ms.values()) for name, ms in profiles.items()}

    def share(name: str, ms: float) -> float:
        return 100.0 * ms / totals[name] if totals[name] > 0 else 0.0

    kinds = {kind for ms in profiles.values() for kind in ms}
    shown = [kind for kind in kinds if any(ms.get(kind, 0.0) >= min_ms or share(name, ms.get(kind, 0.0)) >= min_share_pct
                                           for name, ms in profiles.items())]
    first = next(iter(profiles.values()), {})
    shown.sort(key=lambda kind: (-first.get(kind, 0.0), -max(ms.get(kind, 0.0) for ms in profiles.values()), kind))

    def cells(label: str, values: Mapping[str, float]) -> dict[str, str]:
        return {"layer type": label, **{name: f"{values[name]:.2f} ({share(name, values[name]):.1f}%)" for name in profiles}}

    rows = [cells(kind, {name: ms.get(kind, 0.0) for name, ms in profiles.items()}) for kind in shown]
    if len(shown) < len(kinds):
        rows.append(cells(f"other types ({len(kinds) - len(shown)})",
                          {name: sum(v for k, v in ms.items() if k not in shown) for name, ms in profiles.items()}))
    rows.append(cells("total", totals))
    return markdown_table(rows, ["layer type", *profiles])
