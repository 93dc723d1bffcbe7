"""The stored-baseline gate and the closing steps of every sweep.

The pytest plugin calls ``benchmark_settings`` when a session starts (pytest-benchmark's
options for the JSON report and the stored run) and ``close_sweep`` when it ends, so that
``pytest --benchmark-only`` and ``densenet-opt sweep`` leave the same files (CSV, JSON,
plots, summary.md), print the same closing table and apply the same gate. The sharded
sweep calls ``close_sweep`` once after merging its shards.
"""

from __future__ import annotations

from pathlib import Path

from pytest_benchmark.utils import get_machine_id, parse_compare_fail, parse_save

from densenet_opt import atomic, baselines, schedule, verdict
from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError
from densenet_opt.measure.contention import contention_refusal
from densenet_opt.measure.env import machine_kind, machine_name
from densenet_opt.report import BASELINE, BENCHMARK_JSON, OUTPUT_OPTION, RESULTS_FILE, SKIPPED_FOR_TIME, read_rows
from densenet_opt.render import markdown, summarize_after_sweep



def kind_baseline(options: SweepOptions) -> Path:
    """This machine kind's baseline directory for the sweep's device (baselines.kind_dir)."""
    return baselines.this_kind_dir(options.baseline_dir, options.device)


def benchmark_settings(options: SweepOptions) -> dict[str, object]:
    """pytest-benchmark's option values (``config.option`` attributes) for this sweep: the
    JSON report in the output directory, and this machine kind's stored baseline to save
    or compare with (kind_baseline). Prints which stored run is compared. Raises UserError
    for a corrupt stored run."""
    settings: dict[str, object] = {"benchmark_json": options.output_dir / BENCHMARK_JSON}
    if not options.gated:
        return settings
    directory = kind_baseline(options)
    stored = baselines.has_baseline(directory, options.device)
    if options.save_baseline or stored:  # pytest-benchmark's storage makes its folder: only where one is wanted
        settings["benchmark_storage"] = f"file://{directory}"
    if options.save_baseline:
        settings["benchmark_save"] = parse_save(options.device)
    if options.compare_baseline and stored:  # else close_sweep says so, once (preflight, under --require-baseline)
        runs = [run for run in baselines.check_benchmark_storage(directory) if run.stem.endswith(f"_{options.device}")]
        if runs:
            # --benchmark-compare takes a run, not a path: the start of its name, which
            # pytest-benchmark looks up in this machine id's folder of the storage.
            settings["benchmark_compare"] = runs[-1].stem
            if options.max_regression is not None:
                settings["benchmark_compare_fail"] = [parse_compare_fail(options.max_regression)]
            print(f"comparing latency with {runs[-1]}"
                  + (f" (judged: {options.max_regression})" if options.max_regression else " (shown, not judged: --max-regression none)"))
        else:
            print(f"no stored {options.device} run of pytest-benchmark's machine id {get_machine_id()} in {directory}: "
                  "comparing speedups only")
    return settings


def baseline_refusal(options: SweepOptions) -> str | None:
    """Why this run's figures must not be stored as a baseline (one sentence), or None:
    a config of the device timed under CPU contention beyond --max-cpu-pressure
    (measure.contention). Reads the results file, which is what the baseline stores."""
    results = options.output_dir / RESULTS_FILE
    if not results.exists():
        return None
    kind = machine_kind(options.device)  # the rows a baseline of this kind stores (close_sweep)
    rows = [r for r in read_rows(results) if r.device == options.device and r.measured and r.machine_kind == kind]
    return contention_refusal(((r.label, r.cpu_pressure_pct, r.load_per_core) for r in rows), options.max_cpu_pressure)


def close_sweep(options: SweepOptions, *, measured_ok: bool, write=print, started_at: str | None = None) -> bool:
    """The closing steps of every sweep, whichever way it was started: the summary (plots,
    summary.md, the closing throughput table), storing the speedups when saving and
    ``measured_ok``, then the baseline gate's speedup check against this machine kind's
    stored baseline. Returns True when the gate fails: a speedup regressed, or the gate
    compared nothing (no config measured here has a stored figure). A kind with no stored
    baseline is one line (no_baseline_line) and passes. Raises UserError for an unreadable
    stored speedups file, and for a baseline that is not stored because it was timed
    under contention (baseline_refusal), after the results and summary are written.
    ``started_at``: when this run started (report.utc_timestamp); only rows measured since
    (with --resume: also those it resumes), on this machine and kind, are compared (the
    output directory keeps earlier runs' rows)."""
    results = options.output_dir / RESULTS_FILE
    write(f"\nresults: {results}{'' if results.exists() else ' (no row was measured)'}")
    summarize_after_sweep(options.output_dir, options.max_cpu_pressure)
    rows = read_rows(results)
    if not options.gated:
        return False
    kind = machine_kind(options.device)
    directory = kind_baseline(options)
    path = baselines.speedups_file(options.device, directory)
    if options.save_baseline and not measured_ok:
        write("not storing the baseline: the sweep did not end cleanly (a config failed, or it was stopped); "
              "fix that and rerun with --save-baseline")
    if options.save_baseline and measured_ok:
        refusal = baseline_refusal(options)
        if refusal is not None:
            raise UserError(refusal)
        rows = [r for r in rows if r.machine_kind == kind]  # the kind's folder holds the kind's rows only
        baselines.save_speedups(rows, options.device, path)
        write(f"stored speedups over the baseline variant: {path}")
        write(f"stored the sweep (the tables of README.md and docs/results/{kind}.md: tools/performance_tables.py): "
              f"{baselines.save_sweep(rows, options.device, directory)}")
        if schedule.store_history(options, directory):
            write(f"stored the config times (the next cold run's estimates): {schedule.history_path(directory, options.device)}")
    if not options.compare_baseline:
        return False
    (options.output_dir / verdict.VERDICTS_FILE).unlink(missing_ok=True)  # an earlier run's verdicts
    if not baselines.has_baseline(directory, options.device):
        write(baselines.no_baseline_line(options.baseline_dir, options.device))
        return False
    write(f"comparing speedups over the baseline variant with {path}")
    stored = baselines.load_speedups(path)
    # --time-budget: a config not measured has nothing to compare, and one built without its
    # search is another engine than the stored one's; both are named, neither is compared.
    # This run's rows (--resume: with those it resumes), of this machine and kind.
    since = None if options.resume else started_at
    here = machine_name(options.machine_label)
    ours = [r for r in rows if r.device == options.device and r.machine_kind == kind and r.machine in (None, here)]
    on_device = [r for r in ours if since is None or (r.measured_at or "") >= since]
    skipped = [r for r in on_device if r.status == SKIPPED_FOR_TIME]
    unsearched = [r for r in on_device if SKIPPED_FOR_TIME in r.engine_details]
    if skipped or unsearched:
        write(f"not compared: {len(skipped)} config(s) skipped for the time budget, {len(unsearched)} built without "
              "their search for it (another engine than the stored one); run with --time-budget none to gate them all")
    measured = [r for r in on_device if r.measured and r not in unsearched]
    if measured:
        changes = baselines.software_changes(baselines.stored_software(path), baselines.software_of(measured[0]))
        if changes:
            write(f"software differs from the stored baseline, still gated (an upgrade that slows an engine is a "
                  f"regression): {', '.join(changes)}")
    with_latency = baselines.stored_configs(directory, options.device)
    compared = [r for r in measured if (r.variant, r.batch_size) in with_latency
                or (r.speedup_vs_baseline is not None and r.variant != BASELINE and str(r.batch_size) in stored.get(r.variant, {}))]
    if not compared:
        stored_configs = sorted({(v, int(b)) for v, sizes in stored.items() for b in sizes} | with_latency)
        write(f"the baseline gate compared nothing: {len(measured)} config(s) measured here, none with a figure stored "
              f"in {directory} ({_configs(stored_configs)} stored); measure a stored config (benchmarks not disabled "
              "or skipped), or store a baseline of these configs with --save-baseline")
        return True
    write(f"compared {len(compared)} of {len(measured)} measured config(s) with the stored baseline of {directory.name}")
    # The baseline rows of this machine and kind pair with them (with_speedups recomputes an
    # unpaired speedup), also one an earlier run measured; only this run's configs are judged.
    pairs = measured + [r for r in ours if r.variant == BASELINE and r.measured and r not in measured]
    verdicts = baselines.speedup_verdicts(pairs, options.device, stored, options.max_speedup_drop,
                                          judged={(r.variant, r.batch_size) for r in measured},
                                          stored_rounds=baselines.load_speedup_rounds(path))
    if verdicts:
        write(f"speedups against the stored ones (densenet_opt/verdict.py: a regression is a {verdict.CONFIDENCE:.0%} "
              f"interval wholly below 1 - {options.max_speedup_drop:g}):")
    for one in verdicts:
        write(f"{'SPEEDUP REGRESSION: ' if one.regressed else '  '}{one.line()}")
    markdown.append_gate_table(options.output_dir, verdicts, directory.name)
    atomic.write_text(options.output_dir / verdict.VERDICTS_FILE, verdict.verdicts_csv(verdicts), option=OUTPUT_OPTION)
    return any(one.regressed for one in verdicts)


def _configs(configs: list[tuple[str, int]], most: int = 6) -> str:
    """"baseline at batch 1, pruned at batch 1 and 3 more"."""
    named = ", ".join(f"{variant} at batch {size}" for variant, size in configs[:most])
    return (named + (f" and {len(configs) - most} more" if len(configs) > most else "")) or "nothing"
