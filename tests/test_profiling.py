"""Profiler traces (Chrome JSON + TensorBoard layout), op tables, CUDA memory snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from densenet_opt import cli, profiling
from densenet_opt.errors import VariantUnavailable


class CountingEngine:
    """A tiny conv net standing in for an engine: host batch in, host logits out."""

    def __init__(self) -> None:
        self.module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.calls = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        with torch.inference_mode():
            return self.module(batch)


def test_profile_engine_writes_a_chrome_trace_a_tensorboard_run_and_an_op_table(tmp_path: Path) -> None:
    engine = CountingEngine()
    files = profiling.profile_engine(engine, torch.randn(2, 3, 32, 32), tmp_path, "tiny-bs2-cpu", rounds=2, cuda=False)
    assert engine.calls == 1 + 1 + 2  # untraced warm-up, profiler warm-up step, recorded rounds
    trace = json.loads(files.chrome_trace.read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"aten::conv2d", "tiny-bs2-cpu call 1", "tiny-bs2-cpu call 2"} <= names
    assert "tiny-bs2-cpu call 0" not in names  # the profiler's warm-up step is not in the trace
    conv = next(e for e in trace["traceEvents"] if e.get("name") == "aten::conv2d")
    assert conv["args"]["Input Dims"][0] == [2, 3, 32, 32]  # record_shapes
    assert any(e.get("name") == "[memory]" for e in trace["traceEvents"])  # profile_memory
    (tensorboard_trace,) = files.tensorboard_dir.glob("tiny-bs2-cpu.*.pt.trace.json")
    assert json.loads(tensorboard_trace.read_text())["traceEvents"]
    assert files.tensorboard_dir.parent == tmp_path / profiling.TENSORBOARD_DIR  # --logdir shows one run per config
    assert "aten::conv2d" in files.op_table.read_text()


def test_memory_snapshot_is_dumped_then_recording_stops(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", lambda **kw: calls.append(("record", kw)))
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", lambda path: calls.append(("dump", path)))
    path = tmp_path / "x.memory.pickle"
    with profiling.cuda_memory_history(path, max_entries=10):
        calls.append(("work", None))
    assert calls == [("record", {"max_entries": 10}), ("work", None), ("dump", str(path)), ("record", {"enabled": None})]
    calls.clear()
    with pytest.raises(RuntimeError), profiling.cuda_memory_history(path):
        raise RuntimeError("out of memory")
    assert [c[0] for c in calls] == ["record", "record"]  # no snapshot of a failed block, recording stopped


@pytest.mark.slow
def test_profile_command_on_the_cpu(tmp_path: Path, capsys) -> None:
    code = cli.main(["profile", "--device", "cpu", "--variants", "baseline", "--batch-sizes", "1", "--weights", "synthetic",
                     "--num-samples", "1", "--profile-rounds", "1", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    profiles = tmp_path / profiling.PROFILES_DIR
    assert json.loads((profiles / "baseline-bs1-cpu.trace.json").read_text())["traceEvents"]
    assert "tensorboard --logdir" in out and "ui.perfetto.dev" in out
    assert not (tmp_path / "benchmark_results.csv").exists()  # profiling measures nothing for the results


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--device", "cpu", "--memory-snapshot"], "--memory-snapshot records CUDA allocations"),
        (["--profile-rounds", "0"], "--profile-rounds must be at least 1"),
    ],
)
@pytest.mark.slow
def test_profile_command_bad_input_is_one_sentence(tmp_path: Path, capsys, args: list[str], fragment: str) -> None:
    assert cli.main(["profile", "--output-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err


@pytest.mark.slow
def test_an_unavailable_variant_is_skipped_with_its_reason(tmp_path: Path, monkeypatch, capsys) -> None:
    from densenet_opt.workbench import Workbench

    def unavailable(self, variant, batch_size):
        raise VariantUnavailable("needs CUDA")

    monkeypatch.setattr(Workbench, "build_engine", unavailable)
    code = cli.main(["profile", "--device", "cpu", "--variants", "baseline", "--batch-sizes", "1", "--output-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert "skipped baseline-bs1-cpu: needs CUDA" in captured.out
    assert code == 2 and "no config could be profiled on cpu" in captured.err
