"""The sweep's clock: count, time left, and what --time-budget skips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from densenet_opt import report, schedule
from densenet_opt.config import options_from_mapping
from densenet_opt.errors import UserError
from densenet_opt.schedule import SweepClock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CONFIGS = [("baseline", 1), ("baseline", 4), ("int8", 1), ("int8", 4)]


def test_count_time_so_far_and_time_left() -> None:
    fake = FakeClock()
    clock = SweepClock(CONFIGS, None, clock=fake)
    assert clock.status() == "[1/4, 0s so far, time left unknown until a config finishes]"
    clock.start("baseline", 1)
    fake.now += 420  # the first config of a variant pays for its accuracy pass ...
    clock.finish(shared_s=300)  # ... and the run's first for the weights and reference logits
    assert clock.measured[("baseline", 1)] == 120
    assert clock.estimate_s("baseline", 4) == 120  # no later config yet: its first's
    clock.start("baseline", 4)
    fake.now += 30
    clock.finish()
    assert clock.estimate_s("baseline", 32) == 30  # the variant's later configs
    assert clock.estimate_s("int8", 1) == 120  # a new variant: the first configs' median
    assert clock.estimate_s("int8", 4) == 30  # a later config of a variant not started: the later configs'
    assert schedule._minutes(119.7) == "2m00s"
    assert clock.status() == "[3/4, 7m30s so far, about 2m30s left]"
    clock.start("int8", 1)
    fake.now += 10
    assert clock.status() == "[3/4, 7m40s so far, about 2m20s left]"  # the running config's time counts


def test_the_budget_skips_what_would_not_fit() -> None:
    fake = FakeClock()
    clock = SweepClock(CONFIGS, 300, clock=fake)
    assert clock.skip_reason("baseline", 1) is None  # nothing known: it starts
    clock.start("baseline", 1)
    fake.now += 120
    clock.finish()
    assert clock.skip_reason("baseline", 4) is None  # 120 s estimated, 180 s left
    clock.start("baseline", 4)
    fake.now += 60
    clock.finish()
    assert clock.skip_reason("int8", 1) is None  # 120 s (the first configs'), 120 s left
    fake.now += 100
    assert clock.skip_reason("int8", 1) == "it would take about 2m00s and 20s of the 5m00s time budget is left"
    assert clock.status() == "[3/4, 4m40s so far, about 3m00s left, budget 5m00s]"
    fake.now += 30
    assert clock.skip_reason("int8", 4) == "the time budget of 5m00s is spent (5m10s so far)"


def test_searches_are_skipped_only_when_they_would_not_fit_and_are_not_cached() -> None:
    fake = FakeClock()
    clock = SweepClock(CONFIGS, 40 * 60, clock=fake)
    # Nothing measured yet: each search is judged against the time left alone, and fits.
    assert clock.searches_to_skip("int8", 1, {}) == []
    assert clock.searches_to_skip("pruned_structured+openvino_int8", 1, {}) == []
    clock.start("baseline", 1)
    fake.now += 5 * 60
    clock.finish()
    # 35 minutes left; the three configs left need about 15: the 15-minute distillation fits
    # beside them, OpenVINO's 30-minute accuracy control does not.
    skipped = clock.searches_to_skip("pruned_structured+openvino_int8", 1, {})
    assert [search.key for search, _ in skipped] == ["openvino_int8.accuracy_control"]
    assert skipped[0][1] == ("NNCF's accuracy control takes about 30m00s on 2 cores, and the configs left need about "
                             "15m00s of the 35m00s left in the time budget: built with openvino_int8.accuracy_control=off")
    # The user's own setting is never overridden, under the variant's name or its shared prefix.
    assert clock.searches_to_skip("openvino_int8", 1, {"openvino_int8.accuracy_control": "on"}) == []
    assert clock.searches_to_skip("openvino_int8", 1, {"openvino.accuracy_control": "on"}) == []
    assert clock.searches_to_skip("onnx_int8", 1, {"onnx.float_nodes": "3"}) == []
    # A search an earlier run completed is cached: never skipped, and costs nothing.
    cached = SweepClock(CONFIGS, 60, searched=[schedule.search_key("int8", schedule.SEARCHES[0])], clock=fake)
    assert cached.searches_to_run("int8", {}) == [] and cached.searches_to_skip("int8", 1, {}) == []
    assert SweepClock(CONFIGS, None, clock=fake).searches_to_skip("int8", 1, {}) == []
    # Decided at a variant's first config: its later configs are built as that one was.
    clock.start("int8", 1)
    clock.finish()
    fake.now += 30 * 60  # too little left for the search, but int8 has started
    assert clock.searches_to_skip("int8", 4, {}) == []


def test_a_search_counts_as_done_only_when_its_build_finished() -> None:
    fake = FakeClock()
    clock = SweepClock(CONFIGS, None, clock=fake)
    searching = clock.searches_to_run("int8", {})
    assert [s.key for s in searching] == ["int8.float_modules"]
    clock.start("int8", 1, searching)
    fake.now += 26 * 60
    clock.finish(built=False)  # the build failed: the search is not cached
    assert clock.searched == set() and clock.searches_to_run("int8", {}) == []  # int8 has started
    again = SweepClock(CONFIGS, None, clock=fake)
    again.start("int8", 1, again.searches_to_run("int8", {}))
    fake.now += 26 * 60
    again.finish()
    assert again.searched == {"int8|int8.float_modules"} and again.search_configs == {("int8", 1)}
    # Its 26 minutes are not what int8's first config costs once the search is cached.
    assert again.estimate_s("onnx", 1) is None


def test_history_round_trips_and_a_damaged_file_is_ignored(tmp_path: Path) -> None:
    fake = FakeClock()
    clock = SweepClock(CONFIGS, None, clock=fake)
    clock.start("baseline", 1)
    fake.now += 42.04
    clock.finish()
    clock.searched.add("int8|int8.float_modules")
    schedule.save_history(tmp_path, "cpu", "samples=1024", clock)
    times, searched = schedule.load_history(tmp_path, "cpu", "samples=1024")
    assert times == {"baseline@1": 42.0} and searched == ["int8|int8.float_modules"]
    assert schedule.load_history(tmp_path, "cpu", "samples=64") == ({}, [])  # another profile: no estimate
    assert SweepClock(CONFIGS, None, times, clock=fake).estimate_s("baseline", 1) == 42.0
    # A run twice as fast as its history estimates the rest at half the history's times.
    paced = SweepClock(CONFIGS, None, {"baseline@1": 40.0, "baseline@4": 20.0}, clock=fake)
    paced.start("baseline", 1)
    fake.now += 20.0
    paced.finish()
    assert paced.pace() == 0.5 and paced.estimate_s("baseline", 4) == 10.0
    schedule.history_path(tmp_path, "cpu").write_text("{broken")
    assert schedule.load_history(tmp_path, "cpu", "samples=1024") == ({}, [])


def test_a_partial_history_estimates_every_config_from_the_first_line() -> None:
    """A stored run that measured only some configs (a time budget cut it short) still
    gives a time left before anything finishes: a config it lacks takes its variant's
    mean, else the history's median."""
    fake = FakeClock()
    history = {"baseline@1": 40.0, "baseline@4": 20.0, "onnx@1": 100.0}
    clock = SweepClock(CONFIGS + [("baseline", 8)], None, history, clock=fake)
    assert clock.estimate_s("baseline", 8) == 30.0  # baseline's mean in the history
    assert clock.estimate_s("int8", 1) == 40.0  # no int8 stored: the median of 20, 40, 100
    assert clock.status() == "[1/5, 0s so far, about 2m50s left]"  # 40 + 20 + 40 + 40 + 30
    clock.start("baseline", 1)
    fake.now += 80.0
    clock.finish()  # twice the history: this run's own figures take over
    assert clock.pace() == 2.0 and clock.estimate_s("baseline", 4) == 40.0


@pytest.mark.parametrize("text", ["0", "-3", "nan", "soon"])
def test_a_bad_time_budget_is_one_sentence(text: str) -> None:
    with pytest.raises(UserError, match=r"^--time-budget must be a positive number of minutes or none"):
        options_from_mapping({"device": "cpu", "time_budget": text})


@pytest.mark.slow
def test_a_spent_budget_skips_the_rest_and_keeps_the_rows(tmp_path: Path) -> None:
    """A tiny sweep whose budget (3 s from collection) its first config uses up (it loads
    the weights, computes the reference, probes memory in a fresh process: more than 3 s):
    the first is measured, the second is skipped with its reason, in the results and
    summary.md. The first config always starts: nothing estimates it yet."""
    out = tmp_path / "out"
    # A cache dir of its own (no history from other runs), with the synthetic weights of the
    # shared one, which take minutes to build.
    cache = tmp_path / "cache"
    cache.mkdir()
    for path in options_from_mapping({}).cache_dir.glob("densenet121-synthetic-*"):
        (cache / path.name).symlink_to(path)
    command = [sys.executable, "-m", "densenet_opt", "sweep", "--variants", "baseline", "--batch-sizes", "1,2",
               "--num-samples", "4", "--rounds", "2", "--warmup-rounds", "0", "--weights", "synthetic",
               "--output-dir", str(out), "--cache-dir", str(cache), "--time-budget", "0.05"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "[1/2, " in result.stdout and "] building baseline for batch 1" in result.stdout
    assert "[2/2, " in result.stdout and "skipping baseline at batch 2: " in result.stdout
    rows = {r.batch_size: r for r in report.read_rows(out / report.RESULTS_FILE)}
    assert rows[1].status == report.OK and rows[2].status == report.SKIPPED_FOR_TIME
    summary = (out / "summary.md").read_text()
    assert "- baseline at batch 2 on cpu: skipped_for_time (" in summary and "time budget" in summary
    assert (cache / "cpu-config_times.json").exists()  # the next run with this cache dir starts with an estimate


@pytest.mark.slow
def test_a_skipped_config_never_replaces_a_measured_row(tmp_path: Path) -> None:
    from densenet_opt.sweep import Sweep

    options = options_from_mapping({"device": "cpu", "output_dir": str(tmp_path)})
    sweep = Sweep(options, progress=lambda line: None)
    measured = report.Row(optimization_technique="baseline", batch_size=32, device="cpu", latency_ms_per_batch=900.0,
                          throughput_samples_per_sec=35.6, ram_usage_mb=800.0, vram_usage_mb=0.0, machine=sweep.machine)
    report.write_rows(tmp_path / report.RESULTS_FILE, [measured])
    sweep.record_skipped_for_time("baseline", 32, "the time budget of 50m00s is spent")
    assert report.read_rows(tmp_path / report.RESULTS_FILE) == [measured]
    sweep.record_skipped_for_time("baseline", 16, "the time budget of 50m00s is spent")
    rows = {r.batch_size: r.status for r in report.read_rows(tmp_path / report.RESULTS_FILE)}
    assert rows == {32: report.OK, 16: report.SKIPPED_FOR_TIME}
