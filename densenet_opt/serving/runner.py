"""LoadGen tests of engines: SingleStream, Offline, and the Server scenario's peak-QPS search.

``run_loadgen`` is the one library function behind ``densenet-opt loadgen``, ``nox -s
loadgen`` and the tests: for each engine (variant) and batch policy it builds the engine
once, measures its time per call (to size LoadGen's expected latency and QPS), then runs
each scenario with LoadGen as the load generator and the engine behind a dynamic
batcher as the system under test (sut.SystemUnderTest), over the query sample library of
decoded evaluation images (qsl.QuerySampleLibrary). Every figure is LoadGen's own
(results.parse_detail_log); LoadGen's summary and detail logs stay under
``OUTPUT_DIR/loadgen_logs/<variant>/<batch policy>/<scenario>[/qps_<QPS>]/``.

The Server search. LoadGen's FindPeakPerformance mode (``TestMode.FindPeakPerformance``,
which the Python binding exposes) finds the highest ``server_target_qps`` whose run meets
the performance constraint (p99 within ``server_target_latency_ns``: LoadGen's
``PerfConstraintsMet``) by doubling an upper boundary from the given QPS and then
bisecting (LoadGen ``loadgen.cc``: FindBoundaries, FindPeakPerformanceBinarySearch). It
logs only the final run. We run the same search in our code instead, one LoadGen
``PerformanceOnly`` test per offered QPS, so that every point keeps its own logs, its
p50/p99 (the latency-throughput curve) and its VALID / INVALID verdict: grow the QPS by
``search_step`` from ``server_start_qps`` (default half the engine's measured capacity)
until a run misses the bound (or shrink it until one meets it), then bisect until the
bracket is within ``qps_resolution`` of its lower end. The criterion is LoadGen's
performance constraint alone, as in FindPeakPerformance; whether that run was also VALID
(duration, query count, early stopping) is recorded beside it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType

import torch

from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.measure.env import environment_info
from densenet_opt.report import utc_timestamp
from densenet_opt.serving import plots
from densenet_opt.serving.qsl import QuerySampleLibrary
from densenet_opt.serving.results import (
    BOUND_NOT_MET, INVALID, LOADGEN_RESULTS_FILE, SERVER_POINTS_FILE, LoadGenRow, LogResult,
    parse_detail_log, read_loadgen_rows, write_loadgen_rows,
)
from densenet_opt.serving.settings import (
    MULTI_STREAM, OFFLINE, SERVER, SERVER_LATENCY_PERCENTILE, SINGLE_STREAM, LoadGenSettings,
)
from densenet_opt.serving.sut import BatcherStats, BatchPolicy, SystemUnderTest, TestAbandoned, measure_service_time
from densenet_opt.variants import Engine

LOGS_DIR = "loadgen_logs"
INSTALL_HINT = "pip install -e .[loadgen]"
# The search never offers more than this many times the engine's measured capacity:
# beyond it the queue only grows, and a run takes as long to drain as to issue.
CEILING_OVER_CAPACITY = 2.0
# Nor fewer than the start QPS divided by step**FLOOR_STEPS.
FLOOR_STEPS = 4
# Going down stops early at a missed point whose load is this light (offered QPS x the
# engine's time per call): queueing adds almost nothing there, so the p99 over the bound is
# the engine's own, and a lower rate would only make the run longer (400 queries at 0.6 QPS
# is 11 minutes). Likewise at a moderate load with the p50 already over the bound.
LIGHT_LOAD, MODERATE_LOAD = 0.1, 0.25
# Offline: LoadGen's offline_expected_qps is the measured capacity times this, so that a
# machine slower during the run than during the estimate still fills min_duration.
OFFLINE_MARGIN = 1.5
# ... and a rerun, when the engine outran that, is sized at this times LoadGen's measured rate.
OFFLINE_RERUN_MARGIN = 2.0
# Runs a Server search is expected to take, for the time-left estimate.
EXPECTED_SEARCH_POINTS = 7


def import_loadgen() -> ModuleType:
    """The ``mlperf_loadgen`` module; UserError with the install command when it is missing."""
    try:
        import mlperf_loadgen
    except ImportError:
        raise UserError(f"MLPerf LoadGen (package mlcommons-loadgen) is not installed: run `{INSTALL_HINT}`") from None
    return mlperf_loadgen


def loadgen_version() -> str:
    try:
        return metadata.version("mlcommons-loadgen")
    except metadata.PackageNotFoundError:
        return ""


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Progress:
    """Prints each LoadGen run as it starts, with the time elapsed and an estimate of the
    time left: (mean seconds per finished run) x (runs still expected; a Server search
    counts EXPECTED_SEARCH_POINTS until it ends). ``first_guess_s``: a run's length before
    any has finished (the minimum duration plus a little)."""

    expected_runs: int
    first_guess_s: float
    emit: Callable[[str], None] = print
    started: float = field(default_factory=time.perf_counter)
    finished: int = 0

    def run(self, label: str) -> None:
        elapsed = time.perf_counter() - self.started
        per_run = elapsed / self.finished if self.finished else self.first_guess_s
        left = max(0, self.expected_runs - self.finished) * per_run
        self.emit(f"[loadgen run {self.finished + 1}/~{max(self.expected_runs, self.finished + 1)}, "
                  f"{_clock(elapsed)} elapsed, ~{_clock(left)} left] {label}")

    def done(self, runs: int = 1) -> None:
        self.finished += runs

    def adjust(self, delta: int) -> None:
        """A search ended after more or fewer runs than expected."""
        self.expected_runs += delta


@dataclass(frozen=True)
class EngineUnderTest:
    """One engine and what the runner measured of it before any LoadGen test: its time
    per call at its batch size (seconds) and so its capacity (samples/s)."""

    variant: str
    policy: BatchPolicy
    engine: Engine | Callable
    seconds_per_batch: float  # the median call
    fastest_seconds: float  # the fastest call

    @property
    def capacity_qps(self) -> float:
        return self.policy.engine_batch_size / self.seconds_per_batch


def run_test(
    lg: ModuleType, sut: SystemUnderTest, library: QuerySampleLibrary, scenario: str, settings: LoadGenSettings,
    log_dir: Path, *, expected_latency_s: float, expected_qps: float, target_qps: float | None = None,
) -> tuple[LogResult, BatcherStats]:
    """One LoadGen test (PerformanceOnly) of ``sut`` in ``scenario``, logs in ``log_dir``.

    TestSettings (LoadGen ``test_settings.h``): ``min_duration_ms``, ``min_query_count``;
    SingleStream ``single_stream_expected_latency_ns`` = ``expected_latency_s`` (sizes the
    pre-generated queries); MultiStream ``multi_stream_samples_per_query`` =
    ``settings.samples_per_query`` and ``multi_stream_expected_latency_ns`` = ``expected_latency_s``
    (one query's); Offline ``offline_expected_qps`` = ``expected_qps`` (the one
    query's sample count: LoadGen issues min_duration x expected QPS x 1.1 samples);
    Server ``server_target_qps`` = ``target_qps`` (Poisson arrivals), with
    ``server_target_latency_ns`` the latency bound at percentile SERVER_LATENCY_PERCENTILE.
    Returns LoadGen's result (parsed from the detail log) and what the batcher did.
    Raises whatever the engine raised (after LoadGen finished), UserError when LoadGen
    wrote no result."""
    log_dir.mkdir(parents=True, exist_ok=True)
    test = lg.TestSettings()
    test.scenario = getattr(lg.TestScenario, scenario)
    test.mode = lg.TestMode.PerformanceOnly
    test.min_duration_ms = int(settings.min_duration_ms)
    test.min_query_count = settings.query_count(scenario)
    if scenario == SINGLE_STREAM:
        test.single_stream_expected_latency_ns = max(1, int(expected_latency_s * 1e9))
    elif scenario == MULTI_STREAM:
        test.multi_stream_samples_per_query = settings.samples_per_query
        test.multi_stream_expected_latency_ns = max(1, int(expected_latency_s * 1e9))
    elif scenario == OFFLINE:
        test.offline_expected_qps = float(expected_qps)
    elif scenario == SERVER:
        test.server_target_qps = float(target_qps)
        test.server_target_latency_ns = int(settings.latency_bound_ms * 1e6)
        test.server_target_latency_percentile = SERVER_LATENCY_PERCENTILE
    logs = lg.LogSettings()
    logs.log_output.outdir = str(log_dir)
    logs.log_output.copy_summary_to_stdout = False
    logs.enable_trace = settings.keep_trace
    sut.reset_stats()
    sut_handle = lg.ConstructSUT(sut.issue_query, sut.flush_queries)
    qsl_handle = lg.ConstructQSL(len(library), len(library), library.load_samples_to_ram, library.unload_samples_from_ram)
    try:
        # A path that does not exist: no audit.config from the working directory changes the test.
        sut.serve_during(lambda: lg.StartTestWithLogSettings(sut_handle, qsl_handle, test, logs, str(log_dir / "no-audit.config")))
    except TestAbandoned:
        raise  # the test still runs on LoadGen's thread and uses both handles: not destroyed
    except BaseException:
        _destroy(lg, sut_handle, qsl_handle)
        raise
    _destroy(lg, sut_handle, qsl_handle)
    sut.raise_failure()
    if not settings.keep_trace:
        (log_dir / "mlperf_log_trace.json").unlink(missing_ok=True)
    return parse_detail_log(log_dir), sut.stats


def _destroy(lg: ModuleType, sut_handle, qsl_handle) -> None:
    lg.DestroyQSL(qsl_handle)
    lg.DestroySUT(sut_handle)


@dataclass(frozen=True)
class Point:
    """One Server run at ``qps`` offered queries per second."""

    qps: float
    result: LogResult
    stats: BatcherStats
    log_dir: Path

    @property
    def meets_bound(self) -> bool:
        """LoadGen's performance constraint: p99 within the latency bound."""
        return bool(self.result.perf_constraints_met)


def search_peak_qps(
    run_point: Callable[[float], Point], *, start: float, step: float, resolution: float, max_points: int,
    ceiling: float, hopeless: Callable[[Point], bool] = lambda point: False,
) -> tuple[Point | None, list[Point]]:
    """The highest offered QPS whose run meets the bound, searched as LoadGen's
    FindPeakPerformance does (module doc): from ``start``, multiply by ``step`` until a
    run misses the bound (at most ``ceiling``: a run there that meets it ends the search),
    or divide until one meets it (down to start / step**FLOOR_STEPS, or until a missed
    point is ``hopeless``: no lower rate can meet the bound); then bisect until
    (upper - lower) / lower <= ``resolution``, within ``max_points`` runs in all.
    Returns the best point (None when none met the bound) and every point, in run order."""
    points: list[Point] = []

    def run(qps: float) -> Point:
        point = run_point(qps)
        points.append(point)
        return point

    lower: Point | None = None
    upper: Point | None = None
    qps = min(start, ceiling)
    floor = start / step**FLOOR_STEPS
    while len(points) < max_points:
        point = run(qps)
        if point.meets_bound:
            lower = point
            if upper is not None or qps >= ceiling:
                break
            qps = min(qps * step, ceiling)
        else:
            upper = point
            if lower is not None or hopeless(point):
                break
            qps /= step
            if qps < floor:
                break
    if lower is None:
        return None, points
    while upper is not None and (upper.qps - lower.qps) / lower.qps > resolution and len(points) < max_points:
        point = run((lower.qps + upper.qps) / 2)
        if point.meets_bound:
            lower = point
        else:
            upper = point
    return lower, points


@dataclass(frozen=True)
class LoadGenReport:
    """What run_loadgen measured and wrote: a row per engine, batch policy and scenario;
    every Server point; the files written."""

    rows: list[LoadGenRow]
    points: list[LoadGenRow]
    files: list[Path]


class _Context:
    """What every row of one run_loadgen call shares."""

    def __init__(self, settings: LoadGenSettings, device: torch.device, library: QuerySampleLibrary, output_dir: Path) -> None:
        self.settings = settings
        self.device = device
        self.library = library
        self.output_dir = output_dir
        columns = {column.name for column in dataclasses.fields(LoadGenRow)}
        # The machine and software columns of the main CSV (measure/env.py) that this CSV has.
        self.env = {k: v for k, v in {**environment_info(device), "mlperf_loadgen": loadgen_version()}.items() if k in columns}

    def keep(self, row: LoadGenRow, points: Sequence[LoadGenRow] = ()) -> None:
        """Write a finished scenario's row, and a Server search's points, as soon as they
        are measured: Ctrl-C or a failure later keeps them. A Server row that met no bound
        waits for run_loadgen, which writes it only when some engine met the bound."""
        if row.status != BOUND_NOT_MET:
            write_loadgen_rows(self.output_dir / LOADGEN_RESULTS_FILE, [row])
        if points:
            write_loadgen_rows(self.output_dir / SERVER_POINTS_FILE, list(points))

    def row(self, unit: EngineUnderTest, scenario: str, result: LogResult | None, stats: BatcherStats | None,
            log_dir: Path | None, **extra) -> LoadGenRow:
        latency = result.latency_ms if result else {}
        values = dict(
            variant=unit.variant, batch_policy=unit.policy.label, scenario=scenario, device=self.device.type,
            max_batch_size=unit.policy.max_batch_size,
            max_queue_delay_ms=unit.policy.max_queue_delay_ms if unit.policy.max_batch_size > 1 else 0.0,
            engine_batch_size=unit.policy.engine_batch_size,
            min_duration_ms=self.settings.min_duration_ms, min_query_count=self.settings.query_count(scenario),
            num_samples=len(self.library), data=self.library.source or None,
            log_dir=str(log_dir) if log_dir else None, measured_at=utc_timestamp(), **self.env,
        )
        if result is not None:
            values.update(
                result_validity=result.validity, invalid_reason=result.invalid_reason or None,
                target_qps=result.target_qps if scenario == SERVER else None,
                samples_per_sec=result.samples_per_sec,
                **{f"latency_ms_{name}": latency.get(name) for name in ("p50", "p90", "p95", "p97", "p99", "p99_9")},
                latency_ms_mean=result.latency_ms_mean, latency_ms_min=result.latency_ms_min, latency_ms_max=result.latency_ms_max,
                early_stopping_p90_ms=result.early_stopping_p90_ms, early_stopping_p99_ms=result.early_stopping_p99_ms,
                perf_constraints_met=result.perf_constraints_met, min_duration_met=result.min_duration_met,
                min_queries_met=result.min_queries_met, early_stopping_met=result.early_stopping_met,
                early_stopping_result=result.early_stopping_result or None, query_count=result.query_count,
                overlatency_query_count=result.overlatency_query_count,
            )
        if scenario == SERVER:
            values["latency_bound_ms"] = self.settings.latency_bound_ms
        if scenario == MULTI_STREAM:
            values["samples_per_query"] = self.settings.samples_per_query
        if stats is not None:
            values.update(
                mean_batch_size=stats.mean_batch_size, padded_fraction=stats.padded_fraction,
                engine_ms_per_batch=1000 * sum(stats.engine_seconds) / len(stats.engine_seconds) if stats.engine_seconds else None,
            )
        values.update(extra)
        return LoadGenRow(**values)


def _log_dir(output_dir: Path, unit: EngineUnderTest, scenario: str, qps: float | None = None) -> Path:
    path = output_dir / LOGS_DIR / unit.variant / unit.policy.label / scenario
    return path / f"qps_{qps:.2f}" if qps is not None else path


def run_loadgen(
    settings: LoadGenSettings, *, variants: Sequence[str], batch_sizes: Sequence[int],
    build_engine: Callable[[str, int], Engine | Callable], library: QuerySampleLibrary, device: torch.device,
    output_dir: Path, progress: Callable[[str], None] = print,
) -> LoadGenReport:
    """Run ``settings.scenarios`` for every variant and batch policy, write the results and plots.

    ``batch_sizes``: one batch policy each (sut.BatchPolicy: 1 is no batching; n > 1 a
    dynamic batcher of at most n samples waiting at most ``settings.max_queue_delay_ms``,
    the engine built for n, partial batches padded). ``build_engine(variant, batch_size)``
    builds an engine (float32 [batch_size,3,224,224] host batch in, float32 logits out;
    workbench.Workbench.build_engine); VariantUnavailable skips that variant. ``library``:
    the decoded images. SingleStream runs with the batch-1 policy only: one query is in
    flight at a time, so a batcher has nothing to batch, and its figure would only be the
    padded batch's time plus the delay. Writes OUTPUT_DIR/loadgen_results.csv and
    OUTPUT_DIR/loadgen_server_points.csv (after each scenario: an interrupted run keeps
    what finished), LoadGen's logs under OUTPUT_DIR/loadgen_logs/, and the plots.

    Raises UserError: LoadGen not installed (with the install command); no engine could
    be built here; the Server scenario asked for and no engine kept its p99 under the
    bound at any offered QPS (its rows are then not written: the other scenarios' are).
    Anything the engine raises propagates after LoadGen has finished its test. Ctrl-C
    during a LoadGen test raises sut.TestAbandoned at once (the rows of the scenarios that
    finished are already written; cli.loadgen ends the process).
    """
    lg = import_loadgen()
    output_dir = Path(output_dir)
    context = _Context(settings, device, library, output_dir)
    policies = [BatchPolicy(size, settings.max_queue_delay_ms) for size in dict.fromkeys(batch_sizes)]
    if SINGLE_STREAM in settings.scenarios and all(p.max_batch_size > 1 for p in policies):
        if settings.scenarios == (SINGLE_STREAM,):
            raise UserError("SingleStream runs with batch size 1 only (one query in flight: nothing to batch): add 1 to --batch-sizes")
        progress("SingleStream runs with batch size 1 only, and --batch-sizes has no 1: SingleStream skipped")
    expected = [sum(EXPECTED_SEARCH_POINTS if s == SERVER else 1 for s in settings.scenarios
                    if not (s == SINGLE_STREAM and p.max_batch_size > 1)) for p in policies]
    clock = Progress(len(variants) * sum(expected), settings.min_duration_ms / 1000 + 3, progress)
    rows: list[LoadGenRow] = []
    points: list[LoadGenRow] = []
    unmet: list[tuple[LoadGenRow, list[LoadGenRow]]] = []
    for variant in variants:
        for policy in policies:
            try:
                engine = build_engine(variant, policy.engine_batch_size)
            except VariantUnavailable as reason:
                progress(f"skipped {variant} ({policy.label}): {reason}")
                clock.adjust(-expected[policies.index(policy)])
                continue
            try:
                service = measure_service_time(engine, library, policy.engine_batch_size)
                unit = EngineUnderTest(variant, policy, engine, service.median_s, service.fastest_s)
                progress(f"{variant} {policy.label}: {1000 * service.median_s:.1f} ms per batch of {policy.engine_batch_size} "
                         f"(capacity ~{unit.capacity_qps:.1f} samples/s)")
                unit_rows, unit_points = _run_unit(lg, unit, context, clock)
            finally:
                close = getattr(engine, "close", None)
                if close is not None:
                    close()
            done = [r for r in unit_rows if r.status != BOUND_NOT_MET]
            unmet += [(r, unit_points) for r in unit_rows if r.status == BOUND_NOT_MET]
            rows += done
            points += unit_points
    if SERVER in settings.scenarios and unmet and not any(r.scenario == SERVER for r in rows):
        raise UserError(_no_engine_meets(settings, unmet))
    if unmet:
        write_loadgen_rows(output_dir / LOADGEN_RESULTS_FILE, [r for r, _ in unmet])
        rows += [r for r, _ in unmet]
    if not rows:
        raise UserError("no engine could be built on this device: every variant asked for is unavailable here")
    files = [output_dir / LOADGEN_RESULTS_FILE] + ([output_dir / SERVER_POINTS_FILE] if points else [])
    files += plots.write_plots(read_loadgen_rows(output_dir / LOADGEN_RESULTS_FILE), read_loadgen_rows(output_dir / SERVER_POINTS_FILE), output_dir)
    for line in summary_lines(rows):
        progress(line)
    return LoadGenReport(rows, points, files)


def _no_engine_meets(settings: LoadGenSettings, unmet: list[tuple[LoadGenRow, list[LoadGenRow]]]) -> str:
    closest = [(p.latency_ms_p99, p.target_qps, r.variant, r.batch_policy) for r, pts in unmet for p in pts
               if p.latency_ms_p99 is not None and p.variant == r.variant and p.batch_policy == r.batch_policy]
    if closest:
        p99, qps, variant, policy = min(closest)
        detail = f"the closest, {variant} {policy}, had a p99 of {p99:.1f} ms at {qps:.2f} QPS"
    else:
        detail = "; ".join(f"{r.variant} {r.batch_policy}: {r.invalid_reason}" for r, _ in unmet[:3])
    return (f"no engine kept its p99 latency under --latency-bound-ms {settings.latency_bound_ms:g} at any offered QPS "
            f"({detail}): raise the bound or choose faster variants")


def _run_unit(lg: ModuleType, unit: EngineUnderTest, context: _Context, clock: Progress) -> tuple[list[LoadGenRow], list[LoadGenRow]]:
    """Every scenario of ``context.settings`` for one engine: its rows and its Server points."""
    settings = context.settings
    rows: list[LoadGenRow] = []
    points: list[LoadGenRow] = []
    label = f"{unit.variant} {unit.policy.label}"
    sut = SystemUnderTest(unit.engine, context.library, unit.policy, lg)
    for scenario in settings.scenarios:
        if scenario == SINGLE_STREAM and unit.policy.max_batch_size > 1:
            continue  # one query in flight: nothing to batch (run_loadgen's doc)
        if scenario in (SINGLE_STREAM, MULTI_STREAM, OFFLINE):
            log_dir = _log_dir(context.output_dir, unit, scenario)
            clock.run(f"{scenario} {label}")
            result, stats = run_test(lg, sut, context.library, scenario, settings, log_dir,
                                     expected_latency_s=unit.seconds_per_batch * _calls_per_query(unit, scenario, settings),
                                     expected_qps=OFFLINE_MARGIN * unit.capacity_qps)
            clock.done()
            if scenario == OFFLINE and result.min_duration_met is False and result.samples_per_sec:
                # LoadGen issues min_duration x expected QPS samples: the engine ran faster than
                # estimated and finished early; once more, sized by the rate LoadGen just measured.
                clock.emit(f"  Offline ended before its min duration (the engine ran faster than estimated): "
                           f"rerunning sized for {result.samples_per_sec:.1f} samples/s")
                clock.adjust(1)
                clock.run(f"{scenario} {label} (rerun)")
                result, stats = run_test(lg, sut, context.library, scenario, settings, log_dir, expected_latency_s=unit.seconds_per_batch,
                                         expected_qps=OFFLINE_RERUN_MARGIN * result.samples_per_sec)
                clock.done()
            rows.append(context.row(unit, scenario, result, stats, log_dir))
            context.keep(rows[-1])
            _say(clock, rows[-1])
            continue
        row, search_points = _search(lg, sut, unit, context, clock)
        context.keep(row, search_points)
        rows.append(row)
        points += search_points
    return rows, points


def _calls_per_query(unit: EngineUnderTest, scenario: str, settings: LoadGenSettings) -> int:
    """Engine calls one query takes when nothing else waits: a MultiStream query's samples
    arrive together, so the batcher serves them in ceil(samples / max batch) calls."""
    if scenario != MULTI_STREAM:
        return 1
    return -(-settings.samples_per_query // unit.policy.max_batch_size)


def _search(lg: ModuleType, sut: SystemUnderTest, unit: EngineUnderTest, context: _Context, clock: Progress) -> tuple[LoadGenRow, list[LoadGenRow]]:
    settings = context.settings
    bound_s = settings.latency_bound_ms / 1000
    label = f"{unit.variant} {unit.policy.label}"
    if unit.fastest_seconds > bound_s:  # even the fastest call took longer than the bound: no QPS can meet it
        clock.adjust(-EXPECTED_SEARCH_POINTS)
        reason = (f"its fastest call took {1000 * unit.fastest_seconds:.1f} ms at batch {unit.policy.engine_batch_size}, "
                  f"over the {settings.latency_bound_ms:g} ms bound")
        return context.row(unit, SERVER, None, None, None, status=BOUND_NOT_MET, result_validity=INVALID,
                           invalid_reason=reason, search_points=0), []

    def run_point(qps: float) -> Point:
        log_dir = _log_dir(context.output_dir, unit, SERVER, qps)
        clock.run(f"Server {label} at {qps:.2f} QPS (p99 bound {settings.latency_bound_ms:g} ms)")
        result, stats = run_test(lg, sut, context.library, SERVER, settings, log_dir, expected_latency_s=unit.seconds_per_batch,
                                 expected_qps=unit.capacity_qps, target_qps=qps)
        clock.done()
        point = Point(qps, result, stats, log_dir)
        verdict = "meets" if point.meets_bound else "misses"
        clock.emit(f"  {qps:.2f} QPS: p50 {_fmt(result.latency_ms.get('p50'))} ms, p99 {_fmt(result.latency_ms.get('p99'))} ms "
                   f"({verdict} the bound; LoadGen: {result.validity}{': ' + result.invalid_reason if result.invalid_reason else ''})")
        return point

    def hopeless(point: Point) -> bool:
        """A missed point whose queue was nearly empty: the engine's own latency misses the
        bound. The load is the offered QPS times the engine's median call in that run (the
        one server's utilisation with one query per call; with batches forming it overstates
        the load, so the rule stops later, never earlier): at most LIGHT_LOAD, or at most
        MODERATE_LOAD with the p50 itself over the bound (M/D/1 at 0.25 waits 0.17 calls on
        average)."""
        calls = sorted(point.stats.engine_seconds) if point.stats is not None else []
        load = point.qps * (calls[len(calls) // 2] if calls else unit.seconds_per_batch)
        p50 = point.result.latency_ms.get("p50")
        return load <= LIGHT_LOAD or (load <= MODERATE_LOAD and p50 is not None and p50 > settings.latency_bound_ms)

    start = settings.server_start_qps or unit.capacity_qps / 2
    best, tried = search_peak_qps(run_point, start=start, step=settings.search_step, resolution=settings.qps_resolution,
                                  max_points=settings.max_search_points, ceiling=CEILING_OVER_CAPACITY * unit.capacity_qps,
                                  hopeless=hopeless)
    clock.adjust(len(tried) - EXPECTED_SEARCH_POINTS)
    point_rows = [context.row(unit, SERVER, p.result, p.stats, p.log_dir, search_points=None) for p in tried]
    if best is None:
        lowest = min(tried, key=lambda p: p.qps)
        reason = (f"no offered QPS kept p99 under {settings.latency_bound_ms:g} ms (lowest tried {lowest.qps:.2f} QPS: "
                  f"p50 {_fmt(lowest.result.latency_ms.get('p50'))} ms, p99 {_fmt(lowest.result.latency_ms.get('p99'))} ms)")
        return context.row(unit, SERVER, None, None, None, status=BOUND_NOT_MET, result_validity=INVALID,
                           invalid_reason=reason, search_points=len(tried)), point_rows
    row = context.row(unit, SERVER, best.result, best.stats, best.log_dir, best_qps=best.qps, search_points=len(tried))
    _say(clock, row)
    return row, point_rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _say(clock: Progress, row: LoadGenRow) -> None:
    clock.emit("  " + summary_line(row))


def summary_line(row: LoadGenRow) -> str:
    """One row in words, its figures marked INVALID (reason) when LoadGen judged the run so."""
    head = f"{row.variant} {row.batch_policy} {row.scenario}: "
    if row.status == BOUND_NOT_MET:
        return head + f"no QPS met the p99 bound ({row.invalid_reason})"
    if row.scenario == SINGLE_STREAM:
        body = (f"p50 {_fmt(row.latency_ms_p50)} ms, p90 {_fmt(row.latency_ms_p90)} ms, p99 {_fmt(row.latency_ms_p99)} ms, "
                f"early-stopping p90 estimate {_fmt(row.early_stopping_p90_ms)} ms")
    elif row.scenario == MULTI_STREAM:
        body = (f"{row.samples_per_query} samples per query: query latency p50 {_fmt(row.latency_ms_p50)} ms, "
                f"p99 {_fmt(row.latency_ms_p99)} ms")
    elif row.scenario == OFFLINE:
        body = f"{_fmt(row.samples_per_sec)} samples/s"
    else:
        body = (f"best {row.best_qps:.2f} QPS with p99 {_fmt(row.latency_ms_p99)} ms <= {row.latency_bound_ms:g} ms "
                f"(p50 {_fmt(row.latency_ms_p50)} ms, {row.search_points} runs)")
    return head + body + (f" - {row.mark}" if row.mark else " - VALID")


def summary_lines(rows: Sequence[LoadGenRow]) -> list[str]:
    """The closing table, one line per row (see summary_line)."""
    return ["LoadGen results:"] + ["  " + summary_line(r) for r in rows]

