"""Faults during a sweep: out of memory, NaN logits, Ctrl-C, resume, a bad output directory.

Each starts a real tiny sweep in a subprocess; faults are injected through the test-only
DENSENET_OPT_TEST_INJECT variable that conftest.py reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from densenet_opt import report
from densenet_opt.sweep import classify_fault

TINY = ["--variants", "baseline", "--num-samples", "4", "--rounds", "2", "--warmup-rounds", "0", "--weights", "synthetic"]


def command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "densenet_opt", "sweep", *TINY, "--output-dir", str(out), *args]


def statuses(out: Path) -> dict[str, str]:
    return {row["batch_size"]: row["status"] for row in report.read_rows(out / report.RESULTS_FILE)}


def test_oom_and_nan_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    env = {**os.environ, "DENSENET_OPT_TEST_INJECT": "baseline@1=oom,baseline@2=nan"}
    result = subprocess.run(command(tmp_path, "--batch-sizes", "1,2,3"), capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stdout[-3000:]  # the NaN config is a failure of that variant
    assert statuses(tmp_path) == {"1": "out_of_memory", "2": "non_finite_logits", "3": "ok"}
    assert "baseline at batch 1: out of memory, recorded as out_of_memory" in result.stdout
    assert "NaN or Inf logits (recorded as non_finite_logits" in result.stdout


def test_a_killed_sweep_keeps_completed_rows_and_resume_skips_them(tmp_path: Path) -> None:
    env = {**os.environ, "DENSENET_OPT_TEST_INJECT": "baseline@2=delay:3000"}
    sweep = subprocess.Popen(command(tmp_path, "--batch-sizes", "1,2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env, start_new_session=True)
    results = tmp_path / report.RESULTS_FILE
    deadline = time.monotonic() + 600
    while not results.exists() and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.5)
    time.sleep(2)  # well inside the slowed second config
    # SIGKILL: no handler runs, so only the atomic writes keep the CSV valid (Ctrl-C
    # unwinds through pytest and is the gentler case of the same).
    os.killpg(sweep.pid, signal.SIGKILL)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode != 0, output[-3000:]
    assert statuses(tmp_path) == {"1": "ok"}, output[-3000:]

    resumed = subprocess.run(command(tmp_path, "--batch-sizes", "1,2", "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "baseline-bs2" in resumed.stdout and "baseline-bs1" not in resumed.stdout
    assert statuses(tmp_path) == {"1": "ok", "2": "ok"}
    (second,) = [row for row in report.read_rows(results) if row["batch_size"] == "2"]
    assert second["speedup_vs_baseline"] == "1.0"


def test_an_unwritable_output_directory_is_one_sentence(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = subprocess.run(command(not_a_dir / "out"), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"densenet-opt: error: cannot write results to {not_a_dir / 'out'}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_allocation_failures_are_classified_as_out_of_memory() -> None:
    ort_state = pytest.importorskip("onnxruntime.capi.onnxruntime_pybind11_state")
    # The message CUDA's BFC arena gives; ORT's exceptions are not RuntimeErrors.
    ort_error = ort_state.RuntimeException("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer of size 524288")
    assert classify_fault(ort_error) == report.OUT_OF_MEMORY
    assert classify_fault(torch.cuda.OutOfMemoryError("CUDA out of memory")) == report.OUT_OF_MEMORY
    assert classify_fault(RuntimeError("probe: DefaultCPUAllocator: not enough memory... out of memory")) == report.OUT_OF_MEMORY
    assert classify_fault(ort_state.Fail("[ONNXRuntimeError] : 1 : FAIL : model is invalid")) is None
    assert classify_fault(ValueError("out of memory")) is None  # not an allocation failure reported by a runtime
