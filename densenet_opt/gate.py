"""The stored-baseline gate and the closing steps of every sweep.

The pytest plugin calls ``benchmark_settings`` when a session starts (pytest-benchmark's
options for the JSON report and the stored run) and ``close_sweep`` when it ends, so that
``pytest --benchmark-only`` and ``densenet-opt sweep`` leave the same files (CSV, JSON,
plots, summary.md), print the same closing table and apply the same gate. The sharded
sweep calls ``close_sweep`` once after merging its shards.
"""

from __future__ import annotations

import torch
from pytest_benchmark.utils import get_machine_id, parse_compare_fail, parse_save

from densenet_opt import baselines
from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError
from densenet_opt.measure.contention import contention_refusal
from densenet_opt.measure.env import device_name
from densenet_opt.report import RESULTS_FILE, SKIPPED_FOR_TIME, read_rows
from densenet_opt.render import summarize_after_sweep

BENCHMARK_JSON = "benchmark.json"


def benchmark_settings(options: SweepOptions) -> dict[str, object]:
    """pytest-benchmark's option values (``config.option`` attributes) for this sweep: the
    JSON report in the output directory, and the stored baseline to save or compare with.
    Prints which stored run is compared and why a run is not; raises UserError for a
    corrupt stored run."""
    settings: dict[str, object] = {"benchmark_json": options.output_dir / BENCHMARK_JSON}
    if not options.gated:
        return settings
    settings["benchmark_storage"] = f"file://{options.baseline_dir}"
    if options.save_baseline:
        settings["benchmark_save"] = parse_save(options.device)
    if options.compare_baseline:
        runs = [run for run in baselines.check_benchmark_storage(options.baseline_dir) if run.stem.endswith(f"_{options.device}")]
        # pytest-benchmark's machine id is only OS, Python and word size: the device must match too.
        stored_on = baselines.stored_device_name(runs[-1]) if runs else None
        here = device_name(torch.device(options.device))
        if runs and stored_on in (None, here):
            # --benchmark-compare takes a run, not a path: the start of its name, which
            # pytest-benchmark looks up in this machine's folder of the storage. The number
            # and the device, since runs stored on two machines of one kind can share a number.
            settings["benchmark_compare"] = runs[-1].stem
            settings["benchmark_compare_fail"] = [parse_compare_fail(options.max_regression)]
            print(f"comparing latency with {runs[-1]}")
        elif runs:
            print(f"the stored run {runs[-1]} was measured on {stored_on}, this is {here}: "
                  "absolute times do not compare across machines, comparing speedups only")
        else:
            print(f"no stored {options.device} run for this machine kind ({get_machine_id()}) in "
                  f"{options.baseline_dir}: comparing speedups only")
    return settings


def baseline_refusal(options: SweepOptions) -> str | None:
    """Why this run's figures must not be stored as a baseline (one sentence), or None:
    a config of the device timed under CPU contention beyond --max-cpu-pressure
    (measure.contention). Reads the results file, which is what the baseline stores."""
    results = options.output_dir / RESULTS_FILE
    if not results.exists():
        return None
    rows = [r for r in read_rows(results) if r.device == options.device and r.measured]
    return contention_refusal(((r.label, r.cpu_pressure_pct, r.load_per_core) for r in rows), options.max_cpu_pressure)


def close_sweep(options: SweepOptions, *, measured_ok: bool, write=print) -> bool:
    """The closing steps of every sweep, whichever way it was started: the summary (plots,
    summary.md, the closing throughput table), then the baseline gate's speedup check and,
    when ``measured_ok``, storing the speedups. Returns True when a speedup regressed.
    Raises UserError for an unreadable stored speedups file, and for a baseline that is
    not stored because it was timed under contention (baseline_refusal), after the
    results and summary are written."""
    results = options.output_dir / RESULTS_FILE
    write(f"\nresults: {results}{'' if results.exists() else ' (no row was measured)'}")
    summarize_after_sweep(options.output_dir, options.max_cpu_pressure)
    rows = read_rows(results)
    if options.save_baseline and measured_ok:
        refusal = baseline_refusal(options)
        if refusal is not None:
            raise UserError(refusal)
        path = baselines.speedups_file(options.device, options.baseline_dir)
        baselines.save_speedups(rows, options.device, path)
        write(f"stored speedups over the baseline variant: {path}")
    if not options.compare_baseline:
        return False
    path = baselines.speedups_file(options.device, options.baseline_dir)
    write(f"comparing speedups over the baseline variant with {path}")
    # --time-budget: a config not measured has nothing to compare, and one built without its
    # search is another engine than the stored one's; both are named, neither is compared.
    on_device = [r for r in rows if r.device == options.device]
    skipped = [r for r in on_device if r.status == SKIPPED_FOR_TIME]
    unsearched = [r for r in on_device if SKIPPED_FOR_TIME in r.engine_details]
    if skipped or unsearched:
        write(f"not compared: {len(skipped)} config(s) skipped for the time budget, {len(unsearched)} built without "
              "their search for it (another engine than the stored one); run with --time-budget none to gate them all")
    compared = [r for r in rows if r not in unsearched]
    problems = baselines.speedup_regressions(compared, options.device, baselines.load_speedups(path), options.max_speedup_drop)
    for problem in problems:
        write(f"SPEEDUP REGRESSION: {problem}")
    return bool(problems)
