"""Faults during a sweep: out of memory, NaN logits, Ctrl-C, resume, a bad output directory.

Each starts a real tiny sweep in a subprocess; faults are injected by the test-only pytest
plugin tests/fault_plugin.py, which only these sweeps load (``-p fault_plugin``).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from densenet_opt import report
from densenet_opt.accuracy import NonFiniteLogits
from densenet_opt.errors import UserError
from densenet_opt.faults import OUT_OF_MEMORY_PATTERNS, classify_fault

TINY = ["--variants", "baseline", "--num-samples", "4", "--rounds", "2", "--warmup-rounds", "0", "--weights", "synthetic"]


def command(out: Path, *args: str, faults: str = "") -> list[str]:
    """The tiny sweep; ``faults`` (VARIANT@BATCH=KIND[:ARG],...) go to tests/fault_plugin.py, which
    a test that injects any finds through conftest.py's ``fault_plugin_on_path``."""
    pytest_args = ["--", "-p", "fault_plugin", "--inject-fault", faults] if faults else []
    return [sys.executable, "-m", "densenet_opt", "sweep", *TINY, "--output-dir", str(out), *args, *pytest_args]


def statuses(out: Path) -> dict[str, str]:
    return {str(row.batch_size): row.status for row in report.read_rows(out / report.RESULTS_FILE)}


@pytest.mark.slow
@pytest.mark.usefixtures("fault_plugin_on_path")
def test_oom_and_nan_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    result = subprocess.run(command(tmp_path, "--batch-sizes", "1,2,3", faults="baseline@1=oom,baseline@2=nan"),
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stdout[-3000:]  # the NaN config is a failure of that variant
    assert statuses(tmp_path) == {"1": "out_of_memory", "2": "non_finite_logits", "3": "ok"}
    assert "baseline at batch 1: out of memory, recorded as out_of_memory" in result.stdout
    assert "NaN or Inf logits (recorded as non_finite_logits" in result.stdout


@pytest.mark.slow
def test_resume_measures_again_a_row_of_other_inputs(tmp_path: Path) -> None:
    """--resume with a changed option kept the old rows as this run's (a speedup of 47x against
    a baseline of other weights and another sample count): the row is measured again, and one
    line names the option. A row of this run's inputs is still skipped. (Each option that
    counts: tests/test_streaming.py's resume_mismatch test.)"""
    changed, option = ("--variant-options", "pruned.amount=0.2"), "--variant-options"
    first = subprocess.run(command(tmp_path, "--variants", "baseline,pruned", "--batch-sizes", "1"),
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:]
    before = {row.variant: row for row in report.read_rows(tmp_path / report.RESULTS_FILE)}
    resumed = subprocess.run(command(tmp_path, "--variants", "baseline,pruned", "--batch-sizes", "1", "--resume", *changed),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    after = {row.variant: row for row in report.read_rows(tmp_path / report.RESULTS_FILE)}
    again = [v for v in after if after[v].measured_at != before[v].measured_at or after[v].inputs != before[v].inputs]
    # Only pruned's options changed: baseline is resumed.
    assert again == ["pruned"] and "pruned-bs1" in resumed.stdout and "baseline-bs1" not in resumed.stdout
    assert f"--resume: 1 config(s) in the results were measured with another {option} than this run's" in resumed.stdout
    assert after["pruned"].inputs.endswith("options=pruned.amount=0.2")


@pytest.mark.timing
@pytest.mark.slow
@pytest.mark.usefixtures("fault_plugin_on_path")
def test_a_killed_sweep_keeps_completed_rows_and_resume_skips_them(tmp_path: Path) -> None:
    sweep = subprocess.Popen(command(tmp_path, "--batch-sizes", "1,2", faults="baseline@2=delay:3000"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
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
    (second,) = [row for row in report.read_rows(results) if row.batch_size == 2]
    assert second.speedup_vs_baseline == 1.0


# Address space the sweep may map beyond what importing it maps (torch with its CUDA
# libraries: 3.5 GB of virtual memory before any tensor). Measured on 2 CPU cores with
# MALLOC_ARENA_MAX=2, above the import's VmPeak: the sweep at batch 1 (reference logits,
# accuracy, timing) peaks at +0.5 GB and its probe child at +0.3 GB, while DenseNet-121
# at batch 256 peaks at +3.4 GB (it needs ~7.0 GB in all). +2 GiB sits between the two.
HEADROOM_BYTES = 2 * 2**30


def _import_vm_peak_bytes(env: dict[str, str]) -> int:
    code = (
        "import pytest, torch, torchvision, densenet_opt.cli, densenet_opt.sweep\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak:')][0])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(result.stdout.strip()) * 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's RLIMIT_AS and /proc")
def test_a_batch_too_large_for_memory_costs_only_its_own_row(tmp_path: Path) -> None:
    """Under an address-space limit batch 256 cannot fit: it is recorded as out_of_memory
    (the fresh-process probe fails with torch's CPU allocator message), while batch 1,
    its reference logits and its accuracy (never computed at the largest batch) run."""
    import resource

    # CPU only (CUDA reserves far more address space than any limit here would allow), and
    # few glibc malloc arenas (each thread's arena reserves 64 MB of address space).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MALLOC_ARENA_MAX": "2"}
    limit = _import_vm_peak_bytes(env) + HEADROOM_BYTES

    def limit_address_space() -> None:  # inherited by the probe's child processes too
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    args = ["--variants", "baseline", "--batch-sizes", "1,256", "--num-samples", "8", "--rounds", "1",
            "--warmup-rounds", "0", "--weights", "synthetic", "--device", "cpu", "--output-dir", str(tmp_path)]
    result = subprocess.run([sys.executable, "-m", "densenet_opt", "sweep", *args], capture_output=True, text=True,
                            env=env, preexec_fn=limit_address_space, timeout=600)
    output = f"limit {limit / 2**30:.2f} GiB\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    assert result.returncode == 0, output
    assert statuses(tmp_path) == {"1": "ok", "256": "out_of_memory"}, output
    (ok,) = [row for row in report.read_rows(tmp_path / report.RESULTS_FILE) if row.batch_size == 1]
    assert ok.num_samples == 8 and ok.agreement_top_1 == 100.0, output
    assert "baseline at batch 256: out of memory, recorded as out_of_memory" in result.stdout, output


@pytest.mark.slow
def test_an_unwritable_output_directory_is_one_sentence(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = subprocess.run(command(not_a_dir / "out"), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"densenet-opt: error: cannot write results to {not_a_dir / 'out'}")
    assert len(result.stderr.strip().splitlines()) == 1


def _ort(name: str, message: str) -> Exception:
    ort_state = pytest.importorskip("onnxruntime.capi.onnxruntime_pybind11_state")
    return getattr(ort_state, name)(message)


class _OpenVINOError(Exception):
    """Stands in for an exception type of OpenVINO's binding (not installed here)."""


_OpenVINOError.__module__ = "openvino._pyopenvino"

TORCH_CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 411041792 bytes. Error code 12 (Cannot allocate memory)"
)
PROBE_TAIL = (
    "the memory probe for baseline at batch 256 failed (exit 1):\n"
    "  File \"/venv/lib/python3.11/site-packages/torch/nn/modules/conv.py\", line 549, in _conv_forward\n"
    "    return F.conv2d(\n"
)

OUT_OF_MEMORY_FAULTS = {
    # by type
    "torch.cuda.OutOfMemoryError": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "MemoryError": lambda: MemoryError(),
    "numpy _ArrayMemoryError": lambda: _numpy_memory_error(),
    "OSError ENOMEM": lambda: OSError(errno.ENOMEM, "Cannot allocate memory"),
    "subprocess fork ENOMEM": lambda: BlockingIOError(errno.ENOMEM, "Cannot allocate memory"),
    # torch's CPU allocator, as measured under ulimit -v (the exact text)
    "torch CPU allocator": lambda: RuntimeError(TORCH_CPU_OOM),
    "torch CPU allocator, not enough memory": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 1024 bytes."),
    # CUDA, cuBLAS, cuDNN through torch (RuntimeError)
    "CUDA runtime": lambda: RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    "cudaErrorMemoryAllocation": lambda: RuntimeError("CUDA failure 2: cudaErrorMemoryAllocation ; GPU=0"),
    "CUDA driver": lambda: RuntimeError("Triton Error [CUDA]: CUDA_ERROR_OUT_OF_MEMORY"),
    "cuBLAS": lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "cuDNN": lambda: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    # ONNX Runtime's own exception types (not RuntimeErrors)
    "ORT RuntimeException arena": lambda: _ort(
        "RuntimeException", "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
        "Conv node. Name:'/features/conv0/Conv' Status Message: Failed to allocate memory for requested buffer of size 524288"),
    "ORT Fail bad_alloc": lambda: _ort("Fail", "[ONNXRuntimeError] : 1 : FAIL : std::bad_alloc"),
    "ORT EPFail CUDA": lambda: _ort("EPFail", "[ONNXRuntimeError] : 11 : EP_FAIL : CUDA failure 2: out of memory"),
    "ORT MSVC bad allocation": lambda: _ort("RuntimeException", "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation"),
    # OpenVINO: RuntimeErrors from its binding, or its own types
    "OpenVINO std::bad_alloc": lambda: RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp:223:\nstd::bad_alloc"),
    "OpenVINO ENOMEM": lambda: _OpenVINOError("Exception from src/core/src/runtime/allocator.cpp:56: Cannot allocate memory"),
    # the fresh-process probe: its RuntimeError carries the child's tail
    "probe, torch CPU allocator": lambda: RuntimeError(PROBE_TAIL + "RuntimeError: " + TORCH_CPU_OOM),
    "probe, CUDA": lambda: RuntimeError(PROBE_TAIL + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 392.00 MiB."),
    "probe, MemoryError": lambda: RuntimeError(PROBE_TAIL + "MemoryError"),
    "probe, numpy": lambda: RuntimeError(PROBE_TAIL + "numpy._core._exceptions._ArrayMemoryError: Unable to allocate 8.00 GiB"),
    # an allocation failure re-raised as another error
    "raised from an OOM": lambda: _raised_from(MemoryError()),
}

NOT_OUT_OF_MEMORY = {
    "ORT invalid model": lambda: _ort("Fail", "[ONNXRuntimeError] : 1 : FAIL : model is invalid"),
    "ValueError mentioning memory": lambda: ValueError("out of memory"),
    "UserError mentioning memory": lambda: UserError("Cannot allocate memory for this: pass fewer samples"),
    "other OSError": lambda: OSError(errno.ENOSPC, "No space left on device"),
    "OSError without errno, ENOMEM text": lambda: OSError("Cannot allocate memory"),
    "other RuntimeError": lambda: RuntimeError("shape '[1, 1000]' is invalid for input of size 500"),
    "probe failed otherwise": lambda: RuntimeError(PROBE_TAIL + "ModuleNotFoundError: No module named 'onnx'"),
    "DataLoader shared memory": lambda: RuntimeError(
        "DataLoader worker (pid 1234) is killed by signal: Bus error. It is possible that dataloader's workers "
        "are out of shared memory. Please try to raise your shared memory limit."),
    "OOM only as the context of another error": lambda: _during(MemoryError(), ValueError("bad option")),
}


def _numpy_memory_error() -> BaseException:
    import numpy as np

    internals = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed it
    error_type = internals._exceptions._ArrayMemoryError  # what np.empty raises when malloc fails
    assert issubclass(error_type, MemoryError)
    return error_type((2**40,), np.dtype(np.uint8))


def _raised_from(cause: BaseException) -> BaseException:
    try:
        raise ValueError("the engine call failed") from cause
    except ValueError as error:
        return error


def _during(first: BaseException, second: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise second
    except BaseException as error:
        return error


@pytest.mark.parametrize("make", OUT_OF_MEMORY_FAULTS.values(), ids=OUT_OF_MEMORY_FAULTS.keys())
def test_allocation_failures_of_every_backend_are_out_of_memory(make) -> None:
    assert classify_fault(make()) == report.OUT_OF_MEMORY


@pytest.mark.parametrize("make", NOT_OUT_OF_MEMORY.values(), ids=NOT_OUT_OF_MEMORY.keys())
def test_other_errors_are_not_out_of_memory(make) -> None:
    assert classify_fault(make()) is None


def test_non_finite_logits_are_their_own_kind() -> None:
    assert classify_fault(NonFiniteLogits("1 of 8 samples have NaN or Inf logits")) == report.NON_FINITE_LOGITS


def test_every_out_of_memory_pattern_is_exercised() -> None:
    messages = "\n".join(str(make()) for make in OUT_OF_MEMORY_FAULTS.values())
    for pattern, source in OUT_OF_MEMORY_PATTERNS:
        assert re.search(pattern, messages, re.I | re.M), f"no test message for {pattern!r} ({source})"


@pytest.mark.slow
def test_a_setup_time_problem_is_one_sentence_once_with_exit_2(tmp_path: Path, monkeypatch) -> None:
    """A zero-byte torchvision hub file found when the first engine is built (after the
    preflight): the sentence came twice inside pytest's "ERROR at setup", with chained
    exceptions and torch's DEBUG lines, and exit 1 where docs/troubleshooting.md documents 2."""
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "densenet121-a639ec97.pth").write_bytes(b"")
    result = subprocess.run(command(tmp_path / "out", "--batch-sizes", "1", "--weights", "torchvision"),
                            capture_output=True, text=True, env={**os.environ, "TORCH_HOME": str(tmp_path / "torch")})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert output.count("is not a readable PyTorch file") == 1, output[-3000:]
    assert "Traceback" not in output and "DEBUG" not in output and "ERROR at setup" not in output, output[-3000:]
