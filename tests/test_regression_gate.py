"""The stored-baseline gate: an unchanged run passes, a deliberately slowed engine fails.

Each step is a real (tiny) sweep in a subprocess, storing into a temporary baseline dir.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_benchmark.utils import get_machine_id

from densenet_opt import report
from densenet_opt.measure.env import machine_kind

KIND = machine_kind("cpu")  # the stored baselines of this machine live in BASELINE_DIR/KIND/
OTHER_KIND = f"other-than-{KIND}"  # a kind this machine can never be

# 6 rounds: the interval of a speed ratio resamples them (densenet_opt/verdict.py); 3 rounds
# with one outlier (a padded call that overran its 200 ms on a loaded machine) read as an
# interval too wide to call anything.
ROUNDS, WARMUP_ROUNDS = 6, 1
TINY_SWEEP = ["--variants", "baseline,pruned", "--batch-sizes", "1", "--num-samples", "4",
              "--rounds", str(ROUNDS), "--warmup-rounds", str(WARMUP_ROUNDS), "--weights", "synthetic"]
# Every engine call takes 200 ms (tests/fault_plugin.py's pad): stand-in engines whose cost
# the test sets, so that the timing relations asserted below hold on a busy machine too
# (eager DenseNet-121 at batch 1 takes 60 ms on a quiet 2-core VM, 76 ms on the one core a
# busy loop leaves it; CI once read pruned at 0.3x the baseline's unpaired latency, where
# the two run the same kernels).
PAD = "*@*=pad:200"
# The machine gets 3x slower from some moment of the sweep on: after the baseline's own
# config (4 accuracy calls + its warm-up and timed rounds), before pruned is measured.
DRIFT = f"*@*=slowdown:3@{4 + WARMUP_ROUNDS + ROUNDS + 1}"
SLOWED = "pruned@*=slowdown:2"  # a build truly slowed: each pruned call takes 2x
# The drift alone is 3x the stored latency (passes at min:400%); drift and slowdown, 6x (fails).
TIGHT = ["--max-regression", "min:400%", "--max-speedup-drop", "0.4"]

# The sweeps these tests start find tests/fault_plugin.py (-p fault_plugin): conftest.py.
pytestmark = pytest.mark.usefixtures("fault_plugin_on_path")


def sweep(tmp_path: Path, name: str, *args: str, faults: str = "", plugin_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "densenet_opt", "sweep", *TINY_SWEEP, "--output-dir", str(tmp_path / name),
               "--baseline-dir", str(tmp_path / "baseline"), *args]
    if faults or plugin_args:
        command += ["--", "-p", "fault_plugin", *(("--inject-fault", faults) if faults else ()), *plugin_args]
    return subprocess.run(command, capture_output=True, text=True)


def show(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.slow
def test_gate_passes_unchanged_and_fails_a_slowed_engine(tmp_path: Path) -> None:
    machine_dir = tmp_path / "baseline" / KIND / get_machine_id()
    # Stored whatever else the machine runs (this test is about the gate, not contention).
    saved = sweep(tmp_path, "save", "--save-baseline", "--max-cpu-pressure", "100", faults=PAD)
    assert saved.returncode == 0, show(saved)
    assert [p.name for p in machine_dir.glob("*.json")] == ["0001_cpu.json"]
    stored = json.loads((tmp_path / "baseline" / KIND / "speedups-cpu.json").read_text())
    assert stored["machine_kind"] == KIND and stored["software"]["torch"]  # what the figures belong to
    machine_info = json.loads((machine_dir / "0001_cpu.json").read_text())["machine_info"]
    assert machine_info["densenet_opt"]["machine_kind"] == KIND and "onnxruntime" in machine_info["densenet_opt"]["software"]

    # No engine changed, so the gate passes: the latency within its loose threshold, the
    # paired speedup unaffected by the drift (this run is also the "unchanged passes" case).
    drifted = sweep(tmp_path, "drift", "--compare-baseline", *TIGHT, faults=f"{PAD},{DRIFT}")
    assert drifted.returncode == 0, show(drifted)
    assert "comparing latency with" in drifted.stdout and "SPEEDUP REGRESSION" not in drifted.stdout
    assert f"compared 2 of 2 measured config(s) with the stored baseline of {KIND}" in drifted.stdout
    # Without the pairing, the same drift reads as a regression that is not there.
    unpaired = sweep(tmp_path, "drift-unpaired", "--compare-baseline", *TIGHT, "--speedup-pairing", "off", faults=f"{PAD},{DRIFT}")
    assert "SPEEDUP REGRESSION: pruned at batch 1" in unpaired.stdout, show(unpaired)
    # A build truly slowed fails, under the drift too: its latency and its paired speedup.
    drifted_slow = sweep(tmp_path, "drift-slow", "--compare-baseline", *TIGHT, faults=f"{PAD},{SLOWED},{DRIFT}")
    assert drifted_slow.returncode == 1, show(drifted_slow)
    assert "LATENCY REGRESSION: test_inference[pruned-bs1] (0001_cpu): Field 'min' has failed" in drifted_slow.stdout
    assert "(beyond min:400% against the stored run;" in drifted_slow.stdout
    assert "the baseline gate FAILED (exit 1)" in drifted_slow.stdout
    assert "SPEEDUP REGRESSION: pruned at batch 1" in drifted_slow.stdout

    # A run of another pytest-benchmark machine id (another Python) of this kind still
    # checks the speedups.
    shutil.rmtree(machine_dir)
    elsewhere = sweep(tmp_path, "elsewhere", "--compare-baseline", *TIGHT, faults=f"{PAD},{SLOWED}")
    assert elsewhere.returncode == 1, show(elsewhere)
    assert "comparing speedups only" in elsewhere.stdout
    assert "SPEEDUP REGRESSION: pruned at batch 1" in elsewhere.stdout


@pytest.mark.parametrize(
    ("relative_path", "content", "fragment"),
    [
        ("speedups-cpu.json", "{not json", "are not a valid speedups file"),
        ("speedups-cpu.json", '{"device": "cpu"}', "are not a valid speedups file"),
        (f"{get_machine_id()}/0001_cpu.json", "", "is not valid JSON"),
        (f"{get_machine_id()}/0001_cpu.json", '{"benchmarks": []}', "holds no benchmarks"),
    ],
)
@pytest.mark.slow
def test_a_corrupt_baseline_is_one_sentence(tmp_path: Path, relative_path: str, content: str, fragment: str) -> None:
    (tmp_path / "baseline" / KIND / get_machine_id()).mkdir(parents=True)
    (tmp_path / "baseline" / KIND / "speedups-cpu.json").write_text('{"speedup_over_baseline": {}}')
    target = tmp_path / "baseline" / KIND / relative_path
    target.write_text(content)
    result = sweep(tmp_path, "x", "--compare-baseline")
    assert result.returncode == 2, show(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0] and fragment in lines[0], result.stderr


@pytest.mark.slow
def test_a_partial_baseline_says_how_to_make_one(tmp_path: Path) -> None:
    """This kind stores a pytest-benchmark run but no speedups: refused before measuring."""
    (tmp_path / "baseline" / KIND / get_machine_id()).mkdir(parents=True)
    (tmp_path / "baseline" / KIND / get_machine_id() / "0001_cpu.json").write_text(json.dumps(STORED_RUN))
    result = sweep(tmp_path, "x", "--compare-baseline")
    assert result.returncode == 2, show(result)
    assert "save a baseline first (densenet-opt sweep --save-baseline" in result.stderr


def store_another_kind(tmp_path: Path) -> None:
    """A baseline of another machine kind, and files an older version stored at the top."""
    other = tmp_path / "baseline" / OTHER_KIND
    (other / get_machine_id()).mkdir(parents=True)
    (other / get_machine_id() / "0001_cpu.json").write_text(json.dumps(STORED_RUN))
    (other / "speedups-cpu.json").write_text('{"device": "cpu", "speedup_over_baseline": {"pruned": {"1": 50.0}}}')
    (tmp_path / "baseline" / "speedups-cpu.json").write_text('{"device": "cpu", "speedup_over_baseline": {"pruned": {"1": 50.0}}}')


@pytest.mark.slow
def test_a_kind_with_no_baseline_is_named_and_not_compared_for_speed(tmp_path: Path) -> None:
    """Another kind's files and files of no kind are never compared (neither its latency nor
    its speedups): one line names this kind, the stored ones and the command; exit 0."""
    store_another_kind(tmp_path)
    result = sweep(tmp_path, "x", "--compare-baseline", "--variants", "baseline", faults=PAD)
    assert result.returncode == 0, show(result)
    lines = [line for line in result.stdout.splitlines() if "no stored cpu baseline for this machine kind" in line]
    assert len(lines) == 1, show(result)
    assert f"kind, {KIND}, in" in lines[0] and f"(stored kinds: {OTHER_KIND}; 1 file(s) of an older version" in lines[0]
    assert "store one with `nox -s bench -- --save-baseline`" in lines[0]
    assert "REGRESSION" not in result.stdout and "comparing latency" not in result.stdout


@pytest.mark.slow
def test_require_baseline_fails_before_measuring_where_the_kind_has_none(tmp_path: Path) -> None:
    store_another_kind(tmp_path)
    result = sweep(tmp_path, "x", "--compare-baseline", "--require-baseline")
    assert result.returncode == 1, show(result)
    assert result.stderr.count("no stored cpu baseline for this machine kind") == 1, show(result)
    assert "--require-baseline makes this a failure" in result.stderr
    assert not (tmp_path / "x" / report.RESULTS_FILE).exists()  # nothing was measured


def store_this_kind_at_batch_1(tmp_path: Path) -> None:
    """This kind's baseline: baseline's latency and pruned's speedup, at batch 1 only."""
    directory = tmp_path / "baseline" / KIND
    (directory / get_machine_id()).mkdir(parents=True)
    (directory / get_machine_id() / "0001_cpu.json").write_text(json.dumps(STORED_RUN))
    (directory / "speedups-cpu.json").write_text('{"device": "cpu", "speedup_over_baseline": {"pruned": {"1": 1.0}}}')


@pytest.mark.parametrize(("args", "pytest_args"), [
    (("--batch-sizes", "2"), ()),  # no config in common with the stored run
    ((), ("--benchmark-skip",)),  # nothing measured at all
])
@pytest.mark.slow
def test_a_gate_that_compared_nothing_fails(tmp_path: Path, args: tuple, pytest_args: tuple) -> None:
    store_this_kind_at_batch_1(tmp_path)
    result = sweep(tmp_path, "x", "--compare-baseline", "--max-regression", "mean:400%", "--variants", "baseline", *args,
                   faults=PAD, plugin_args=pytest_args)
    assert result.returncode == 1, show(result)
    lines = [line for line in result.stdout.splitlines() if "the baseline gate compared nothing" in line]
    assert len(lines) == 1 and "pruned at batch 1" in lines[0], show(result)
    assert "the baseline gate FAILED (exit 1)" in result.stdout


# A stored run as pytest-benchmark stores it, taken on another host of this machine kind
# (a different machine_info: that is when pytest-benchmark names the storage's location),
# 100 s per batch so that any real run compares as faster.
STORED_STATS = {"min": 100.0, "max": 100.0, "mean": 100.0, "stddev": 0.0, "rounds": 2, "median": 100.0,
                "iqr": 0.0, "q1": 100.0, "q3": 100.0, "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0",
                "ld15iqr": 100.0, "hd15iqr": 100.0, "ops": 0.01, "total": 200.0, "iterations": 1}
STORED_RUN = {
    "machine_info": {"node": "another-host"}, "commit_info": {}, "datetime": "2026-01-01T00:00:00", "version": "5.3.1",
    "benchmarks": [{"group": "batch size 1", "name": "test_inference[baseline-bs1]",
                    "fullname": "densenet_opt/bench.py::test_inference[baseline-bs1]",
                    "params": {"engine_config": ["baseline", 1]}, "param": "baseline-bs1", "options": {},
                    "stats": STORED_STATS, "extra_info": {}}],
}


@pytest.mark.slow
def test_the_gate_runs_from_any_directory(tmp_path: Path) -> None:
    """Run from a directory that holds neither the repository nor the baseline dir, given
    relative to it: pytest-benchmark named a storage outside the working directory with a
    ValueError, an INTERNALERROR before anything was measured."""
    storage = tmp_path / "baseline" / KIND
    (storage / get_machine_id()).mkdir(parents=True)
    (storage / get_machine_id() / "0001_cpu.json").write_text(json.dumps(STORED_RUN))
    (storage / "speedups-cpu.json").write_text('{"device": "cpu", "speedup_over_baseline": {}}')
    cwd = tmp_path / "somewhere" / "else"
    cwd.mkdir(parents=True)
    command = [sys.executable, "-m", "densenet_opt", "sweep", "--variants", "baseline", "--batch-sizes", "1",
               "--num-samples", "8", "--rounds", "2", "--warmup-rounds", "0", "--weights", "synthetic",
               "--output-dir", str(tmp_path / "out"), "--baseline-dir", "../../baseline", "--compare-baseline",
               "--max-regression", "mean:400%"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, show(result)
    assert "INTERNALERROR" not in output and "Traceback" not in output, show(result)
    assert f"comparing latency with {storage / get_machine_id() / '0001_cpu.json'}" in result.stdout
    assert "test_inference[baseline-bs1] (0001_cpu)" in result.stdout, show(result)  # compared, row by row
    assert f"(location: {storage})" in output  # pytest-benchmark's machine_info warning, now with a location
