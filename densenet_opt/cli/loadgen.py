"""``densenet-opt loadgen``: the sweep's options (engines, weights, images, device) plus LoadGen's.

Parses once (config.options_from_mapping, settings.settings_from_mapping), builds engines
as the sweep does (workbench.Workbench.build_engine), decodes the query sample library's images
before any test (qsl.load_library), and calls runner.run_loadgen.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from densenet_opt.config import SweepOptions, add_sweep_options, options_from_mapping
from densenet_opt.serving import settings as lg_settings
from densenet_opt.serving.plots import BEST_QPS_PLOT, LATENCY_QPS_PLOT
from densenet_opt.serving.qsl import load_library
from densenet_opt.serving.results import LOADGEN_RESULTS_FILE, SERVER_POINTS_FILE
from densenet_opt.serving.runner import LOGS_DIR, LoadGenReport, import_loadgen, run_loadgen
from densenet_opt.serving.settings import LoadGenSettings
from densenet_opt.serving.sut import TestAbandoned

DEFAULT_OUTPUT_DIR = "results-loadgen"
# Sweep options whose meaning or default differs here.
_OVERRIDES = {
    "--batch-sizes": ("1,8", "batch policies, comma-separated: 1 = no batching; N > 1 = a dynamic batcher of at most N "
                             "samples in front of an engine built for batch N, partial batches padded to N"),
    "--num-samples": ("256", "evaluation images in the query sample library, decoded before the tests"),
    "--output-dir": (DEFAULT_OUTPUT_DIR, f"where {LOADGEN_RESULTS_FILE}, {SERVER_POINTS_FILE}, the plots and {LOGS_DIR}/ go"),
    # Every variant would be hours of Server searches: one engine unless asked.
    "--variants": ("baseline", "comma-separated variant names or chains (see `densenet-opt list`), or all"),
}
# Sweep options that only the timed rounds, the stored baselines or the sweep's data loader
# read: not offered here (LoadGen times, and the query sample library is decoded up front).
_SWEEP_ONLY = frozenset({
    "--rounds", "--warmup-rounds", "--speedup-pairing", "--resume", "--save-baseline", "--compare-baseline",
    "--baseline-dir", "--max-regression", "--max-speedup-drop", "--data-workers",
})


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``loadgen`` subcommand."""
    s = lg_settings
    parser = commands.add_parser(
        "loadgen",
        help="latency under load: MLPerf LoadGen SingleStream, MultiStream, Offline and Server scenarios for each engine",
        description="Runs MLPerf LoadGen (pip install -e .[loadgen]) with each variant's engine as the system under test "
        "behind a dynamic batcher: SingleStream (per-query latency percentiles and LoadGen's early-stopping estimate), "
        "Offline (samples/s) and Server (Poisson arrivals; the highest offered QPS whose p99 stays under "
        f"--latency-bound-ms, searched the way LoadGen's FindPeakPerformance does). Writes OUTPUT_DIR/{LOADGEN_RESULTS_FILE}, "
        f"{SERVER_POINTS_FILE}, {LATENCY_QPS_PLOT}, {BEST_QPS_PLOT} and LoadGen's logs under {LOGS_DIR}/. Durations default "
        f"to {s.DEFAULT_MIN_DURATION_MS // 1000} s per run, not MLPerf's {s.MLPERF_MIN_DURATION_MS // 1000} s: results are "
        "not MLPerf-compliant, and each row says whether LoadGen judged its run VALID.",
    )

    def add(name: str, **kwargs) -> None:
        if name in _SWEEP_ONLY:
            return
        if name in _OVERRIDES:
            kwargs["default"], text = _OVERRIDES[name]
            kwargs["help"] = f"{text} (default: {kwargs['default']})"
        parser.add_argument(name, **kwargs)

    add_sweep_options(add)
    parser.add_argument("--scenario", default="all",
                        help=f"{s.SCENARIO_CHOICES} (comma-separated) or all (default: %(default)s)")
    parser.add_argument("--samples-per-query", default=str(s.MLPERF_SAMPLES_PER_QUERY),
                        help="MultiStream: samples in each query, issued together (default: %(default)s, MLPerf's)")
    parser.add_argument("--latency-bound-ms", default=str(s.DEFAULT_LATENCY_BOUND_MS),
                        help="Server: the p99 latency bound the QPS search keeps to (default: %(default)s)")
    parser.add_argument("--max-queue-delay-ms", default=str(s.DEFAULT_MAX_QUEUE_DELAY_MS),
                        help="dynamic batcher: longest wait of a batch's first query for others (default: %(default)s)")
    parser.add_argument("--min-duration-ms", default=str(s.DEFAULT_MIN_DURATION_MS),
                        help=f"LoadGen min_duration_ms of every run (default: %(default)s; MLPerf: {s.MLPERF_MIN_DURATION_MS})")
    parser.add_argument("--min-query-count", default="auto",
                        help="LoadGen min_query_count for SingleStream, MultiStream and Server (auto: "
                        f"{s.DEFAULT_MIN_QUERY_COUNT[s.SINGLE_STREAM]}, {s.DEFAULT_MIN_QUERY_COUNT[s.MULTI_STREAM]} and "
                        f"{s.DEFAULT_MIN_QUERY_COUNT[s.SERVER]}; MLPerf: {s.MLPERF_MIN_QUERY_COUNT[s.SINGLE_STREAM]}, "
                        f"{s.MLPERF_MIN_QUERY_COUNT[s.MULTI_STREAM]} and {s.MLPERF_MIN_QUERY_COUNT[s.SERVER]})")
    parser.add_argument("--server-start-qps", default="auto",
                        help="Server: the first offered QPS of the search (auto: half the engine's measured capacity)")
    parser.add_argument("--search-step", default=str(s.DEFAULT_SEARCH_STEP),
                        help="Server: factor between the search's boundary probes (default: %(default)s, LoadGen's doubling)")
    parser.add_argument("--qps-resolution", default=str(s.DEFAULT_QPS_RESOLUTION),
                        help="Server: stop when (upper - lower) / lower QPS is at most this (default: %(default)s)")
    parser.add_argument("--max-search-points", default=str(s.DEFAULT_MAX_SEARCH_POINTS),
                        help="Server: most LoadGen runs per search (default: %(default)s)")
    parser.add_argument("--keep-trace", action="store_true", help="also keep LoadGen's mlperf_log_trace.json (large)")
    parser.set_defaults(handler=run_command)


def run_from_options(options: SweepOptions, settings: LoadGenSettings, progress: Callable[[str], None] = print) -> LoadGenReport:
    """run_loadgen over the engines the sweep would build for ``options`` (variants,
    weights, device, variant options) and ``options.num_samples`` decoded images.
    ``options.batch_sizes`` are the batch policies. Raises UserError as run_loadgen does,
    and for bad data or weights (sweep.preflight)."""
    from densenet_opt.sweep import preflight
    from densenet_opt.workbench import Workbench

    import_loadgen()  # in a second, before engines are built
    preflight(options)
    library = load_library(options.imagenet_val, options.num_samples, options.ground_truth)
    progress(f"query sample library: {library.source}, {len(library)} images decoded")
    workbench = Workbench(options, progress=progress)
    return run_loadgen(settings, variants=options.variants, batch_sizes=options.batch_sizes,
                       build_engine=workbench.build_engine, library=library, device=workbench.device,
                       output_dir=options.output_dir, progress=progress)


def run_command(args: argparse.Namespace) -> int:
    """The ``loadgen`` subcommand: prints progress and the files written; UserError for
    bad input; Ctrl-C: exit_interrupted."""
    settings = lg_settings.settings_from_mapping(vars(args))
    options = options_from_mapping(vars(args))
    try:
        report = run_from_options(options, settings)
    except KeyboardInterrupt as interrupt:
        return exit_interrupted(Path(options.output_dir), interrupt)
    for path in report.files:
        print(path)
    print(Path(options.output_dir) / LOGS_DIR)
    return 0


def exit_interrupted(output_dir: Path, interrupt: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C: one line on stderr saying what was kept, then exit code 130 (128 + SIGINT).

    When a LoadGen test was running (sut.TestAbandoned) its threads still run inside the
    mlperf_loadgen extension; letting the interpreter shut down under them ends in
    "terminate called without an active exception" and a segfault; and once, on a loaded CI
    machine, the process outlived the test's 30 s after SIGINT by the normal shutdown path
    (cause not established: an interrupt between two tests takes that path). The rows of
    finished scenarios are already on disk (runner.run_loadgen writes each, atomically, as
    it finishes), so the process always ends at once with os._exit(130), after flushing
    stdout and stderr."""
    results = output_dir / LOADGEN_RESULTS_FILE
    kept = (f"the rows of the scenarios that finished are in {results}" if results.exists()
            else "no scenario had finished, nothing was written")
    stopped = "the LoadGen test under way was abandoned; " if isinstance(interrupt, TestAbandoned) else ""
    print(f"densenet-opt loadgen: interrupted (Ctrl-C): {stopped}{kept}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)
