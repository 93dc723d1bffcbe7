"""LoadGen scenarios (densenet_opt.serving) against stand-in engines of known service time.

The measurement-truth tests: a SingleStream run of an engine that sleeps 20 ms (100 ms one
call in 25) reads p50 and p99 within 5% of what the engine's calls took, and the Server
scenario's best QPS under a p99 bound agrees with queueing theory for that service time
(M/D/1: Poisson arrivals, one server, a fixed service time, no batching). Short LoadGen
settings throughout: the tests assert fields and known durations, never this machine's speed.
"""

from __future__ import annotations

import csv
import math
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("mlperf_loadgen")

from densenet_opt import cli  # noqa: E402
from densenet_opt.errors import UserError  # noqa: E402
from densenet_opt.recommend import recommend_qps  # noqa: E402
from densenet_opt.serving import results as lg_results  # noqa: E402
from densenet_opt.serving.plots import BEST_QPS_PLOT, LATENCY_QPS_PLOT  # noqa: E402
from densenet_opt.serving.qsl import QuerySampleLibrary  # noqa: E402
from densenet_opt.serving.results import (  # noqa: E402
    LOADGEN_RESULTS_FILE, SERVER_POINTS_FILE, LoadGenRow, read_loadgen_rows, write_loadgen_rows,
)
from densenet_opt.serving.runner import Point, import_loadgen, run_loadgen, run_test, search_peak_qps, summary_line  # noqa: E402
from densenet_opt.serving.settings import (  # noqa: E402
    MULTI_STREAM, OFFLINE, SERVER, SINGLE_STREAM, LoadGenSettings, settings_from_mapping,
)
from densenet_opt.serving.sut import BatchPolicy, SystemUnderTest, TestAbandoned  # noqa: E402

CPU = torch.device("cpu")


class SleepEngine:
    """A stand-in engine whose every call takes ``seconds`` whatever the batch (every
    ``slow_every``-th call ``slow_seconds`` instead, when given): float32 [N,...] in,
    float32 zeros [N,1000] out; records the batch sizes it got."""

    model_size_bytes = 0
    info: dict[str, str] = {}

    def __init__(self, seconds: float, slow_every: int = 0, slow_seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.slow_every, self.slow_seconds = slow_every, slow_seconds
        self.batch_sizes: list[int] = []
        self.call_seconds: list[float] = []  # what each call really took (perf_counter)
        self.threads: set[int] = set()  # the threads it was called on

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(batch))
        self.threads.add(threading.get_ident())
        slow = self.slow_every and len(self.batch_sizes) % self.slow_every == 0
        started = time.perf_counter()
        time.sleep(self.slow_seconds if slow else self.seconds)
        self.call_seconds.append(time.perf_counter() - started)
        return torch.zeros(len(batch), 1000)

    def percentile_ms(self, fraction: float, last: int) -> float:
        """The ``fraction`` percentile of the last ``last`` calls, ms, as LoadGen picks it
        (sorted[int(n * fraction)], LoadGen results.cc)."""
        calls = sorted(self.call_seconds[-last:])
        return 1000 * calls[int(len(calls) * fraction)]

    def close(self) -> None:
        pass


def library(count: int = 16) -> QuerySampleLibrary:
    """Tiny images: the stand-in engine does not look at them."""
    return QuerySampleLibrary(torch.arange(count, dtype=torch.float32).reshape(count, 1, 1, 1).expand(count, 3, 4, 4).clone(), "test images")


def run(tmp_path: Path, settings: LoadGenSettings, engine: SleepEngine, batch_sizes=(1,), lines: list | None = None):
    return run_loadgen(settings, variants=["sleep"], batch_sizes=batch_sizes, build_engine=lambda variant, size: engine,
                       library=library(), device=CPU, output_dir=tmp_path,
                       progress=(lines.append if lines is not None else lambda line: None))


def md1_sojourn_exceeds(bound: float, rate: float, service: float) -> float:
    """P(W + S > bound) in an M/D/1 queue (arrival rate ``rate``, service time ``service``, s).

    The waiting-time distribution of M/D/1 is Erlang's closed form (Erlang 1909; e.g.
    Iversen, "Teletraffic Engineering and Network Planning", DTU 2015, eq. 10.6):
        P(W <= x) = (1 - rho) * sum_{k=0}^{floor(x/S)} (lam (kS - x))^k / k! * exp(-lam (kS - x)),
    rho = lam S < 1. Checked here against a simulation of the queue (1e5 arrivals) to
    within 1% of the p99 while this test was written."""
    x = bound - service
    if x < 0:
        return 1.0
    rho = rate * service
    total = sum((rate * (k * service - x)) ** k / math.factorial(k) * math.exp(-rate * (k * service - x))
                for k in range(int(x // service) + 1))
    return 1.0 - (1.0 - rho) * total


def md1_peak_rate(bound: float, service: float, percentile: float = 0.99) -> float:
    """The arrival rate (queries/s) at which the M/D/1 sojourn time's ``percentile`` equals
    ``bound``: P(W + S > bound) = 1 - percentile, by bisection on (0, 1/S)."""
    low, high = 0.0, 1.0 / service
    for _ in range(80):
        mid = (low + high) / 2
        if md1_sojourn_exceeds(bound, mid, service) > 1 - percentile:
            high = mid
        else:
            low = mid
    return low


def test_md1_formula_against_known_values() -> None:
    # Light load: hardly any waiting, so P(W + S > B) is tiny; at B/S = 5 the 1% rate is rho ~ 0.56.
    assert md1_sojourn_exceeds(0.1, 1.0, 0.02) < 1e-6
    assert md1_peak_rate(0.1, 0.02) * 0.02 == pytest.approx(0.5608, abs=0.002)
    assert md1_peak_rate(0.05, 0.005) * 0.005 == pytest.approx(0.7735, abs=0.002)


@pytest.mark.timing
def test_single_stream_percentiles_match_a_known_service_time(tmp_path: Path, benchmark) -> None:
    """p50 within 5% of the engine's median call (20 ms asked), p99 within 5% of its slow
    calls (100 ms asked, one call in 25).

    Why the slow calls: the p99 of a constant 20 ms sleep is the tail of this machine's
    scheduling noise, not of anything LoadGen computes, and the p99 of a sum (the engine's
    call plus the harness's hand-over, each with its own rare stalls) is not the engine's
    p99 plus a little: CI once read 23.4 ms from LoadGen where the engine's own p99 was
    21.5 ms. With 4% of the calls at 100 ms the p99 (sorted[int(0.99 n)]) falls in the middle
    of the slow group, so it is a robust statistic that only the right percentile gives:
    p90 reads a fast call, p99 a slow one. The asked-for times are lower bounds only (a
    sleep overshoots when both cores are busy: the machine's, not LoadGen's). LoadGen's
    accounting must add no more than 5% to what the engine's calls took (the engine's own
    perf_counter) at p50 and at p99. The slow calls are 100 ms, so that 5% holds the SUT's
    hand-over to its worker thread even on a saturated machine: with two busy loops
    beside the test it read 63-64 ms at p99 for 60 ms calls that took 60.1 ms (a scheduler
    slice to wake the worker), while CI's real noise is a few stalls that this p99 ignores.
    """
    service, slow_service = 0.020, 0.100
    settings = LoadGenSettings(scenarios=(SINGLE_STREAM,), min_duration_ms=1000, min_query_count={SINGLE_STREAM: 300})
    lines: list[str] = []
    engine = SleepEngine(service, slow_every=25, slow_seconds=slow_service)
    report = benchmark.pedantic(run, args=(tmp_path, settings, engine), kwargs={"lines": lines}, rounds=1, iterations=1)
    (row,) = report.rows
    engine_p50, engine_p99 = engine.percentile_ms(0.50, row.query_count), engine.percentile_ms(0.99, row.query_count)
    benchmark.extra_info.update(p50_ms=row.latency_ms_p50, p99_ms=row.latency_ms_p99, engine_p99_ms=engine_p99)
    assert (row.scenario, row.batch_policy, row.result_validity, row.status) == (SINGLE_STREAM, "batch1", "VALID", "ok")
    assert row.query_count >= 300
    # The right percentile: p90 is a fast call, p99 a slow one (sleep never returns early).
    assert service * 1000 <= row.latency_ms_p50 <= row.latency_ms_p90 < 1000 * (service + slow_service) / 2
    assert row.latency_ms_p99 >= slow_service * 1000
    # The accounting: within 5% of what the engine's calls took, at the median and at p99.
    assert row.latency_ms_p50 == pytest.approx(engine_p50, rel=0.05)
    assert row.latency_ms_p99 == pytest.approx(engine_p99, rel=0.05)
    assert row.latency_ms_min >= service * 1000  # sleep never returns early
    assert row.early_stopping_p90_ms >= row.latency_ms_p90  # LoadGen's early-stopping estimate: a bound above p90
    assert row.latency_ms_p50 <= row.latency_ms_p90 <= row.latency_ms_p99 <= row.latency_ms_p99_9
    assert row.mean_batch_size == 1 and row.padded_fraction == 0
    log_dir = Path(row.log_dir)
    assert (log_dir / "mlperf_log_summary.txt").exists() and (log_dir / "mlperf_log_detail.txt").exists()
    assert log_dir == tmp_path / "loadgen_logs" / "sleep" / "batch1" / SINGLE_STREAM
    # The CSV: one row, machine and software columns filled, read back equal.
    (back,) = read_loadgen_rows(tmp_path / LOADGEN_RESULTS_FILE)
    assert back.variant == "sleep" and back.python and back.torch and back.cpu and back.mlperf_loadgen and back.measured_at
    assert back.latency_ms_p99 == pytest.approx(row.latency_ms_p99, abs=1e-3)
    with (tmp_path / LOADGEN_RESULTS_FILE).open(newline="") as handle:
        assert list(csv.DictReader(handle))[0]["result_validity"] == "VALID"
    assert any("elapsed" in line and "left" in line for line in lines)


@pytest.mark.timing
def test_multi_stream_query_latency_is_the_calls_its_samples_need(tmp_path: Path) -> None:
    """A MultiStream query's 4 samples arrive together: with no batching the engine serves
    them one by one (4 x 10 ms per query), with a batcher of 4 in one call (10 ms). LoadGen's
    per-query p50 within 10% of that, "that" being the engine's median call as its own
    perf_counter read it (the asked-for 10 ms is a lower bound: with both cores busy a
    sleep overshoots, and the unbatched p50 read 44 ms against 40 asked; the SingleStream
    test bounds the harness at 5%).
    30 queries: INVALID for early stopping alone (its p99 estimate needs 662), and said so."""
    service = 0.010
    settings = LoadGenSettings(scenarios=(MULTI_STREAM,), min_duration_ms=600, min_query_count={MULTI_STREAM: 30},
                               samples_per_query=4)
    lines: list[str] = []
    engine = SleepEngine(service)
    report = run(tmp_path, settings, engine, batch_sizes=(1, 4), lines=lines)
    unbatched, batched = report.rows
    assert (unbatched.scenario, unbatched.batch_policy, batched.batch_policy) == (MULTI_STREAM, "batch1", "dynamic_max4_delay5ms_padded")
    for row in (unbatched, batched):
        assert row.result_validity == "INVALID" and row.min_duration_met and row.min_queries_met
        assert row.invalid_reason == "early stopping not satisfied (LoadGen: need to process at least 662 queries)"
    assert unbatched.samples_per_query == batched.samples_per_query == 4 and unbatched.query_count >= 30
    call_ms = {size: 1000 * statistics.median(seconds for seconds, batch in zip(engine.call_seconds, engine.batch_sizes)
                                            if batch == size) for size in (1, 4)}
    assert unbatched.latency_ms_p50 >= 4 * service * 1000 and batched.latency_ms_p50 >= service * 1000
    assert unbatched.latency_ms_p50 == pytest.approx(4 * call_ms[1], rel=0.10)
    assert batched.latency_ms_p50 == pytest.approx(call_ms[4], rel=0.10)
    assert batched.mean_batch_size == 4 and batched.padded_fraction == 0
    assert unbatched.latency_ms_p50 <= unbatched.latency_ms_p90 <= unbatched.latency_ms_p99
    assert any("4 samples per query: query latency p50" in line and "INVALID (early stopping" in line for line in lines)
    assert [(r.scenario, r.batch_policy, r.samples_per_query, r.result_validity) for r in read_loadgen_rows(
        tmp_path / LOADGEN_RESULTS_FILE)] == [(MULTI_STREAM, r.batch_policy, 4, "INVALID") for r in report.rows]


def test_csv_opens_in_pandas(tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    write_loadgen_rows(tmp_path / LOADGEN_RESULTS_FILE, [LoadGenRow(variant="a", batch_policy="batch1", scenario=SERVER, device="cpu",
                                                                    result_validity="VALID", best_qps=12.5, latency_ms_p99=80.0)])
    frame = pandas.read_csv(tmp_path / LOADGEN_RESULTS_FILE)
    assert list(frame["best_qps"]) == [12.5] and list(frame["result_validity"]) == ["VALID"]


@pytest.mark.timing
def test_server_best_qps_agrees_with_md1_queueing_theory(tmp_path: Path, benchmark) -> None:
    """Service 5 ms, p99 bound 50 ms (B/S = 10): theory's peak is rho ~ 0.77, ~155 QPS.

    Tolerance 20%: the search stops at a 5% bracket, and the p99 of one run of ~900
    Poisson arrivals is itself a sample (a simulation of this search over 40 arrival
    seeds put the found rate between 0.83 and 1.15 of theory's); the expected rate is
    computed for the engine's measured time per call (sleep overshoots by ~0.1 ms).
    """
    bound_ms, service = 50.0, 0.005
    guess = md1_peak_rate(bound_ms / 1000, service)
    settings = LoadGenSettings(scenarios=(SERVER,), latency_bound_ms=bound_ms, min_duration_ms=6000,
                               min_query_count={SERVER: 100}, server_start_qps=0.85 * guess, search_step=1.3,
                               qps_resolution=0.05, max_search_points=8)
    report = benchmark.pedantic(run, args=(tmp_path, settings, SleepEngine(service)), rounds=1, iterations=1)
    (row,) = report.rows
    measured_service = row.engine_ms_per_batch / 1000
    expected = md1_peak_rate(bound_ms / 1000, measured_service)
    benchmark.extra_info.update(best_qps=row.best_qps, md1_qps=expected, service_ms=row.engine_ms_per_batch)
    assert row.status == "ok" and row.scenario == SERVER and row.best_qps is not None
    assert row.best_qps == pytest.approx(expected, rel=0.20)
    assert row.latency_ms_p99 <= bound_ms and row.perf_constraints_met
    assert row.result_validity in ("VALID", "INVALID") and (row.result_validity == "VALID") == (not row.invalid_reason)
    assert row.search_points == len(report.points) >= 3
    assert any(p.perf_constraints_met is False for p in report.points)  # the search bracketed the peak
    assert len({p.log_dir for p in report.points}) == len(report.points)  # one log folder per QPS point
    assert all((Path(p.log_dir) / "mlperf_log_detail.txt").exists() for p in report.points)
    assert len(read_loadgen_rows(tmp_path / SERVER_POINTS_FILE)) == len(report.points)
    assert (tmp_path / LATENCY_QPS_PLOT).stat().st_size > 0 and (tmp_path / BEST_QPS_PLOT).stat().st_size > 0


@pytest.mark.timing
def test_offline_batches_fully_and_server_pads_partial_batches(tmp_path: Path) -> None:
    engine = SleepEngine(0.010)
    settings = LoadGenSettings(scenarios=(OFFLINE, SERVER), latency_bound_ms=200, max_queue_delay_ms=2, min_duration_ms=1000,
                               min_query_count={SERVER: 30}, server_start_qps=20, search_step=2, qps_resolution=1.0, max_search_points=2)
    report = run(tmp_path, settings, engine, batch_sizes=(4,))
    offline, server = report.rows
    assert offline.batch_policy == "dynamic_max4_delay2ms_padded" and offline.engine_batch_size == 4
    # Four samples per call, at the SUT's own mean time per call (the asked-for 10 ms is a
    # lower bound: a sleep overshoots when both cores are busy).
    assert offline.engine_ms_per_batch >= 10
    assert offline.samples_per_sec == pytest.approx(4 / (offline.engine_ms_per_batch / 1000), rel=0.25)
    assert offline.mean_batch_size > 3.5 and offline.result_validity == "VALID"
    assert set(engine.batch_sizes) == {4}  # the engine only ever sees its own batch size
    assert server.padded_fraction > 0  # at 20-40 QPS most batches are partial, padded to 4


class Sample:
    """A LoadGen QuerySample: ``id`` and the sample's ``index`` in the library."""

    def __init__(self, id: int, index: int) -> None:
        self.id, self.index = id, index


def fake_loadgen(complete):
    """A stand-in for the ``mlperf_loadgen`` module as the SUT uses it: a response is its
    sample id, and QuerySamplesComplete hands the ids to ``complete``."""
    return SimpleNamespace(QuerySampleResponse=lambda id, data, size: id,
                           QuerySamplesComplete=lambda ids: complete(list(ids)))


@pytest.mark.timing
def test_batcher_pads_to_the_engine_batch_and_waits_at_most_the_delay() -> None:
    completed: list[list[int]] = []
    engine = SleepEngine(0.0)
    sut = SystemUnderTest(engine, library(), BatchPolicy(4, 30.0), fake_loadgen(lambda ids: completed.append(list(ids))))

    def test() -> float:  # as LoadGen's StartTest: issue, return when every sample is complete
        started = time.perf_counter()
        sut.issue_query([Sample(1, 0), Sample(2, 1), Sample(3, 2)])
        while not completed:
            time.sleep(0.001)
        return time.perf_counter() - started

    waited = sut.serve_during(test)
    assert engine.threads == {threading.get_ident()}  # the engine ran on the caller's thread
    assert completed == [[1, 2, 3]] and engine.batch_sizes == [4]
    assert 0.025 <= waited < 0.5  # held for the 30 ms delay, no longer than a scheduler hiccup
    assert sut.stats.padded == 1 and sut.stats.padded_fraction == 0.25


def test_an_interrupt_while_serving_abandons_the_test_at_once() -> None:
    """Ctrl-C (here: the first QuerySamplesComplete raising KeyboardInterrupt) on the serving
    thread raises TestAbandoned at once, while LoadGen's test still runs on the helper (a
    Server test can run for minutes: LoadGen has no call that stops it); what the test
    issues afterwards is completed at once without the engine, so LoadGen never waits."""
    completed: list[int] = []
    calls = [0]

    def complete(ids: list[int]) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise KeyboardInterrupt
        completed.extend(ids)

    engine = SleepEngine(0.0)
    sut = SystemUnderTest(engine, library(), BatchPolicy(1), fake_loadgen(complete))
    go_on, ended = threading.Event(), threading.Event()

    def test() -> None:
        sut.issue_query([Sample(1, 0)])
        go_on.wait(10)
        sut.issue_query([Sample(2, 1)])  # after the interrupt: completed on this thread
        ended.set()

    with pytest.raises(TestAbandoned):
        sut.serve_during(test)
    assert not ended.is_set()  # raised while the test still ran
    go_on.set()
    assert ended.wait(10) and completed == [2]
    assert engine.batch_sizes == [1]  # after the interrupt the engine is not called again


@pytest.mark.timing
def test_ctrl_c_during_a_server_test_ends_within_seconds_keeping_finished_rows(tmp_path: Path) -> None:
    """`densenet-opt loadgen`'s Ctrl-C path (cli.loadgen.exit_interrupted) in a real
    process with the real LoadGen: SingleStream finishes, a Server test that would run for
    half an hour is under way, SIGINT. Exit 130 within seconds, one line saying what was
    kept, the SingleStream row on disk, no traceback and no C++ terminate (exit 139)."""
    script = textwrap.dedent("""
        import sys, time, torch
        from pathlib import Path
        from densenet_opt.cli import loadgen as command
        from densenet_opt.serving.qsl import QuerySampleLibrary
        from densenet_opt.serving.runner import run_loadgen
        from densenet_opt.serving.settings import LoadGenSettings

        def engine(batch):
            time.sleep(0.005)
            return torch.zeros(len(batch), 1000)

        out = Path(sys.argv[1])
        images = QuerySampleLibrary(torch.zeros(8, 3, 4, 4), "test images")
        settings = LoadGenSettings(scenarios=("SingleStream", "Server"), min_duration_ms=300, latency_bound_ms=1000,
                                   min_query_count={"SingleStream": 20, "Server": 100000}, server_start_qps=50)
        try:
            run_loadgen(settings, variants=["sleep"], batch_sizes=[1], build_engine=lambda variant, size: engine,
                        library=images, device=torch.device("cpu"), output_dir=out, progress=print)
        except KeyboardInterrupt as interrupt:
            sys.exit(command.exit_interrupted(out, interrupt))
    """)
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    results = tmp_path / LOADGEN_RESULTS_FILE
    deadline = time.monotonic() + 120
    while not results.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert results.exists(), process.communicate(timeout=5)
    # The Server test (100000 queries at 50 QPS) is under way once LoadGen has opened its log
    # (on a loaded machine, measuring the service time between the tests took over 1.5 s).
    while (not list(tmp_path.glob("loadgen_logs/*/*/Server*/**/mlperf_log_detail.txt")) and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.1)
    time.sleep(0.5)
    assert process.poll() is None, process.communicate(timeout=5)
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, (out, err)
    assert time.monotonic() - interrupted < 10
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"densenet-opt loadgen: interrupted (Ctrl-C): the LoadGen test under way was abandoned; "
                     f"the rows of the scenarios that finished are in {results}"], err
    assert [(row.scenario, row.variant) for row in read_loadgen_rows(results)] == [(SINGLE_STREAM, "sleep")]


def test_engine_failure_completes_the_test_then_raises(tmp_path: Path) -> None:
    class Broken(SleepEngine):
        def __call__(self, batch):
            raise RuntimeError("engine broke")

    lg = import_loadgen()
    settings = LoadGenSettings(scenarios=(SINGLE_STREAM,), min_duration_ms=100, min_query_count={SINGLE_STREAM: 5})
    sut = SystemUnderTest(Broken(0), library(), BatchPolicy(1), lg)
    with pytest.raises(RuntimeError, match="engine broke"):
        run_test(lg, sut, library(), SINGLE_STREAM, settings, tmp_path / "logs", expected_latency_s=0.001, expected_qps=100)


@pytest.mark.timing
def test_invalid_run_says_why_and_is_marked(tmp_path: Path) -> None:
    """A Server run of 30 queries: too few for LoadGen's early stopping, so INVALID."""
    lg = import_loadgen()
    settings = LoadGenSettings(scenarios=(SERVER,), latency_bound_ms=100, min_duration_ms=300, min_query_count={SERVER: 30})
    sut = SystemUnderTest(SleepEngine(0.001), library(), BatchPolicy(1), lg)
    result, _ = run_test(lg, sut, library(), SERVER, settings, tmp_path, expected_latency_s=0.001, expected_qps=100, target_qps=100)
    assert result.validity == "INVALID" and result.perf_constraints_met is True and result.early_stopping_met is False
    assert "early stopping" in result.invalid_reason and "more queries" in result.invalid_reason
    row = LoadGenRow(variant="x", batch_policy="batch1", scenario=SERVER, device="cpu", result_validity=result.validity,
                     invalid_reason=result.invalid_reason, best_qps=100.0, latency_ms_p99=result.latency_ms["p99"],
                     latency_ms_p50=result.latency_ms["p50"], latency_bound_ms=100.0, search_points=1)
    assert "INVALID (early stopping" in summary_line(row)
    assert lg_results.figure(row.best_qps, row).startswith("100.0 INVALID (")


def test_search_finds_a_known_threshold_as_loadgen_s_peak_search_would() -> None:
    def threshold_run(limit: float):
        def run_point(qps: float) -> Point:
            result = type("R", (), {"perf_constraints_met": qps <= limit})()
            return Point(qps, result, None, Path("."))  # type: ignore[arg-type]
        return run_point

    best, points = search_peak_qps(threshold_run(37.0), start=10, step=2, resolution=0.05, max_points=20, ceiling=1000)
    assert [p.qps for p in points[:3]] == [10, 20, 40]  # doubling until a run misses, then bisection
    assert 37.0 * 0.95 <= best.qps <= 37.0
    best, points = search_peak_qps(threshold_run(3.0), start=10, step=2, resolution=0.05, max_points=20, ceiling=1000)
    assert [p.qps for p in points[:3]] == [10, 5, 2.5] and 3.0 * 0.95 <= best.qps <= 3.0  # halving when the start misses
    best, points = search_peak_qps(threshold_run(0.01), start=10, step=2, resolution=0.05, max_points=20, ceiling=1000)
    assert best is None and len(points) == 5  # down to start / step**4, then gives up
    best, points = search_peak_qps(threshold_run(1e9), start=10, step=2, resolution=0.05, max_points=20, ceiling=30)
    assert best.qps == 30 and len(points) == 3  # capped at the ceiling
    best, points = search_peak_qps(threshold_run(0.01), start=10, step=2, resolution=0.05, max_points=20, ceiling=1000,
                                   hopeless=lambda point: point.qps < 4)
    assert best is None and [p.qps for p in points] == [10, 5, 2.5]  # stops going down at a hopeless miss


def test_loadgen_not_installed_is_one_sentence_with_the_install_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)
    with pytest.raises(UserError, match=r"pip install -e \.\[loadgen\]"):
        import_loadgen()


def test_a_bound_no_engine_meets_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    settings = LoadGenSettings(scenarios=(SERVER,), latency_bound_ms=5, min_duration_ms=500)
    with pytest.raises(UserError, match="no engine kept its p99 latency under --latency-bound-ms 5"):
        run(tmp_path, settings, SleepEngine(0.020))
    assert not (tmp_path / LOADGEN_RESULTS_FILE).exists() and not (tmp_path / SERVER_POINTS_FILE).exists()


@pytest.mark.parametrize(("raw", "message"), [
    ({"server_start_qps": "0"}, "--server-start-qps"),
    ({"server_start_qps": "-3"}, "--server-start-qps"),
    ({"max_queue_delay_ms": "-1"}, "--max-queue-delay-ms"),
    ({"latency_bound_ms": "0"}, "--latency-bound-ms"),
    ({"scenario": "multistreams"}, "--scenario"),
    ({"samples_per_query": "0"}, "--samples-per-query"),
    ({"search_step": "1"}, "--search-step"),
])
def test_bad_settings_are_one_sentence(raw: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        settings_from_mapping(raw)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_cli_rejects_a_non_positive_target_qps_before_building_anything(tmp_path: Path, capsys) -> None:
    code = cli.main(["loadgen", "--server-start-qps", "0", "--output-dir", str(tmp_path)])
    assert code == 2
    assert "--server-start-qps (the target QPS) must be a positive number" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_runs_single_stream_on_the_real_baseline_engine(tmp_path: Path, capsys) -> None:
    code = cli.main(["loadgen", "--device", "cpu", "--variants", "baseline", "--batch-sizes", "1", "--weights", "synthetic",
                     "--num-samples", "4", "--scenario", "singlestream", "--min-duration-ms", "200", "--min-query-count", "3",
                     "--output-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    (row,) = read_loadgen_rows(tmp_path / LOADGEN_RESULTS_FILE)
    assert (row.variant, row.scenario, row.device, row.num_samples) == ("baseline", SINGLE_STREAM, "cpu", 4)
    assert row.latency_ms_p50 > 0 and row.result_validity in ("VALID", "INVALID") and row.data.startswith("synthetic")
    assert str(tmp_path / LOADGEN_RESULTS_FILE) in capsys.readouterr().out


def _server_row(variant: str, qps: float | None, bound: float, validity: str = "VALID", reason: str | None = None) -> LoadGenRow:
    return LoadGenRow(variant=variant, batch_policy="batch1", scenario=SERVER, device="cpu", best_qps=qps, latency_bound_ms=bound,
                      result_validity=validity, invalid_reason=reason, latency_ms_p99=bound * 0.9 if qps else None,
                      status="ok" if qps else "bound_not_met")


def test_recommend_the_highest_qps_under_a_p99_bound(tmp_path: Path, capsys) -> None:
    path = tmp_path / LOADGEN_RESULTS_FILE
    write_loadgen_rows(path, [_server_row("slow", 10.0, 100), _server_row("fast", 30.0, 100, "INVALID", "early stopping not satisfied"),
                              _server_row("tight", 20.0, 50), _server_row("none", None, 100, "INVALID", "no offered QPS kept p99 under")])
    # A VALID run wins over a faster INVALID one: 'tight' (searched at 50 ms) answers 100 ms too.
    lines = recommend_qps(tmp_path, max_p99_ms=100)
    assert lines[0] == "tight batch1 on cpu: 20.0 QPS with p99 45.0 ms <= 50 ms (LoadGen: VALID)"
    assert recommend_qps(path, max_p99_ms=60)[0].startswith("tight batch1 on cpu: 20.0 QPS")  # searched at 50 ms, within 60
    with pytest.raises(UserError, match="no Server result .* p99 bound of 20 ms or tighter"):
        recommend_qps(path, max_p99_ms=20)
    with pytest.raises(UserError, match="no Server result"):
        recommend_qps(path, max_p99_ms=100, device="cuda")
    # Only INVALID runs qualify: the best of them, with LoadGen's reason beside it.
    invalid = tmp_path / "invalid"
    invalid.mkdir()
    write_loadgen_rows(invalid / LOADGEN_RESULTS_FILE, [_server_row("fast", 30.0, 100, "INVALID", "early stopping not satisfied"),
                                                       _server_row("slow", 10.0, 100, "INVALID", "early stopping not satisfied")])
    assert cli.main(["recommend", "--loadgen-results", str(invalid), "--max-latency-ms", "100"]) == 0
    out = capsys.readouterr().out
    assert "fast batch1 on cpu: 30.0 QPS" in out and "INVALID (early stopping not satisfied)" in out
    # The sweep's filters do not apply to LoadGen results: one sentence, not silence.
    assert cli.main(["recommend", "--loadgen-results", str(tmp_path), "--max-memory-mb", "500"]) == 2
    assert "--max-memory-mb apply to a sweep's results, not to --loadgen-results" in capsys.readouterr().err


@pytest.mark.timing
def test_offline_reruns_once_when_the_engine_outran_its_estimate(tmp_path: Path) -> None:
    """The capacity estimate (the first 7 calls: 2 warm-up, 5 timed) says 20 samples/s; the
    engine then runs at ~200/s, so LoadGen's one query of min_duration x 1.5 x 20 x 1.1
    samples ends early: INVALID (min duration). The runner runs Offline once more, sized
    by the rate LoadGen measured, and that run is VALID."""

    class SpeedsUp(SleepEngine):
        def __call__(self, batch):
            self.seconds = 0.050 if len(self.call_seconds) < 7 else 0.005
            return super().__call__(batch)

    lines: list[str] = []
    report = run(tmp_path, LoadGenSettings(scenarios=(OFFLINE,), min_duration_ms=1000), SpeedsUp(0.05), lines=lines)
    (row,) = report.rows
    assert any("rerunning" in line for line in lines)
    assert row.result_validity == "VALID" and row.min_duration_met and row.samples_per_sec > 100


def test_single_stream_runs_with_batch_size_1_only(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="SingleStream runs with batch size 1 only"):
        run(tmp_path, LoadGenSettings(scenarios=(SINGLE_STREAM,), min_duration_ms=100), SleepEngine(0.001), batch_sizes=(4,))
    settings = LoadGenSettings(scenarios=(SINGLE_STREAM, OFFLINE), min_duration_ms=300, min_query_count={SINGLE_STREAM: 10})
    report = run(tmp_path, settings, SleepEngine(0.002), batch_sizes=(1, 4))
    assert [(r.scenario, r.batch_policy) for r in report.rows] == [
        (SINGLE_STREAM, "batch1"), (OFFLINE, "batch1"), (OFFLINE, "dynamic_max4_delay5ms_padded")]
