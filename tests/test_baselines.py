"""Speedups over the baseline variant from result rows, and their comparison."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from pytest_benchmark.stats import Stats
from pytest_benchmark.utils import get_machine_id

from densenet_opt.measure.timing import per_round_text
from densenet_opt import baselines, benchmark_session, gate, report
from densenet_opt.config import options_from_mapping
from densenet_opt.errors import UserError
from densenet_opt.measure.env import machine_kind


def rows(pruned_ms: float) -> list[report.Row]:
    def row(variant: str, size: int, ms: float, device: str = "cpu") -> report.Row:
        return report.Row(optimization_technique=variant, batch_size=size, latency_ms_per_batch=ms,
                          device=device, device_name="test cpu")

    return [row("baseline", 1, 60.0), row("baseline", 8, 400.0), row("onnx", 1, 20.0), row("onnx", 8, 100.0),
            row("pruned", 1, pruned_ms), row("onnx", 4, 50.0), row("onnx", 1, 1.0, device="cuda")]


def test_speedups_pair_each_row_with_the_baseline_of_its_batch_size() -> None:
    assert baselines.speedups(r for r in rows(60.0) if r.device == "cpu") == {
        "onnx": {"1": 3.0, "8": 4.0}, "pruned": {"1": 1.0}
    }


def test_round_trip_and_regressions(tmp_path: Path) -> None:
    path = baselines.speedups_file("cpu", tmp_path)
    baselines.save_speedups(rows(60.0), "cpu", path)
    stored = baselines.load_speedups(path)
    assert stored == {"onnx": {"1": 3.0, "8": 4.0}, "pruned": {"1": 1.0}}
    assert [v.outcome for v in baselines.speedup_verdicts(rows(70.0), "cpu", stored, 0.25)] == ["unchanged"] * 3
    verdicts = baselines.speedup_verdicts(rows(120.0), "cpu", stored, 0.25)
    assert [v.line() for v in verdicts if v.regressed] == [
        "pruned at batch 1: speed ratio 0.500 (no interval (unpaired)) vs stored: REGRESSED (threshold -25%)"]


# A benchmark's stats as pytest-benchmark 5 stores them (every field its tables read).
STATS = {field: 1.0 for field in Stats.fields} | {"rounds": 2, "outliers": "0;0", "iterations": 1}


def _stored_run(storage: Path, kind: str = machine_kind("cpu")) -> Path:
    """A stored baseline of machine kind ``kind`` in ``storage`` (a --baseline-dir)."""
    run = storage / kind / get_machine_id() / "0001_cpu.json"
    run.parent.mkdir(parents=True)
    run.write_text(json.dumps({"benchmarks": [{"name": "test_inference[baseline-bs1]", "stats": STATS,
                                               "params": {"engine_config": ["baseline", 1]}}]}))
    baselines.save_speedups(rows(60.0), "cpu", baselines.speedups_file("cpu", storage / kind))
    return run


def _gate_settings(storage: Path | str) -> dict[str, object]:
    options = options_from_mapping({"device": "cpu", "compare_baseline": True, "baseline_dir": str(storage)})
    return gate.benchmark_settings(options)


def test_absolute_times_are_compared_only_with_a_run_of_this_machine_kind(tmp_path: Path) -> None:
    run = _stored_run(tmp_path / "same")
    # pytest-benchmark takes the run's name (looked up in this machine id's folder), not a path.
    assert _gate_settings(tmp_path / "same")["benchmark_compare"] == run.stem
    assert baselines.stored_configs(run.parent.parent, "cpu") == {("baseline", 1)}

    other = f"other-than-{machine_kind('cpu')}"  # a kind this machine can never be
    _stored_run(tmp_path / "other", other)
    settings = _gate_settings(tmp_path / "other")
    assert "benchmark_compare" not in settings and "benchmark_storage" not in settings  # no empty folder made
    assert baselines.stored_kinds(tmp_path / "other", "cpu") == [other]


def test_the_storage_is_this_kinds_directory_as_an_absolute_path(tmp_path: Path, monkeypatch) -> None:
    _stored_run(tmp_path / "baseline")
    monkeypatch.chdir(tmp_path)
    assert _gate_settings("baseline")["benchmark_storage"] == f"file://{tmp_path / 'baseline' / machine_kind('cpu')}"


def test_software_changes_are_named_package_by_package() -> None:
    stored = {"torch": "2.14.1", "onnxruntime": "1.32.0"}
    now = {"torch": "2.15.0", "onnxruntime": "1.32.0", "openvino": "2026.1"}
    assert baselines.software_changes(stored, now) == ["torch 2.14.1 -> 2.15.0", "openvino none -> 2026.1"]
    assert baselines.software_changes(stored, stored) == []


def test_a_file_storage_outside_the_working_directory_has_a_location(tmp_path: Path, monkeypatch) -> None:
    """pytest-benchmark's own FileStorage.location raises ValueError there (its issue #217)."""
    import logging

    from pytest_benchmark.storage.file import FileStorage

    storage = FileStorage(tmp_path / "baseline", logging.getLogger(__name__), default_machine_id=get_machine_id())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    benchmark_session.locate_anywhere(storage)
    assert storage.location == str(tmp_path / "baseline")
    monkeypatch.chdir(tmp_path)
    assert storage.location == "baseline"


def test_paired_rounds_decide_by_their_interval_and_are_stored_with_the_baseline(tmp_path: Path) -> None:
    """0.70x is 30% below 1.00x: past a 25% threshold, but with rounds as noisy as 0.45-0.95
    the interval reaches above 0.75, so it is no regression; with tight rounds it is."""
    base = report.Row(optimization_technique="baseline", batch_size=1, device="cpu", latency_ms_per_batch=60.0,
                      device_name="x", speedup_vs_baseline=1.0, speedup_spread=0.0)

    def pruned(rounds: list[float]) -> report.Row:
        return report.Row(optimization_technique="pruned", batch_size=1, device="cpu", latency_ms_per_batch=90.0,
                          device_name="x", speedup_vs_baseline=statistics.median(rounds), speedup_spread=0.01,
                          speedup_per_round=per_round_text(rounds))

    path = baselines.speedups_file("cpu", tmp_path)
    baselines.save_speedups([base, pruned([0.99, 1.0, 1.01, 1.0, 0.98, 1.02])], "cpu", path)
    stored, stored_rounds = baselines.load_speedups(path), baselines.load_speedup_rounds(path)
    assert stored_rounds == {"pruned": {"1": [0.99, 1.0, 1.01, 1.0, 0.98, 1.02]}}
    noisy = [0.45, 0.95, 0.7, 0.5, 0.9, 0.6, 0.8, 0.7]
    (verdict,) = baselines.speedup_verdicts([base, pruned(noisy)], "cpu", stored, 0.25, stored_rounds=stored_rounds)
    assert verdict.ratio == pytest.approx(0.69, abs=0.01) and verdict.high > 0.75 and verdict.outcome == "unchanged"
    tight = [0.69, 0.71, 0.7, 0.7, 0.68, 0.72, 0.7, 0.71]
    (verdict,) = baselines.speedup_verdicts([base, pruned(tight)], "cpu", stored, 0.25, stored_rounds=stored_rounds)
    assert verdict.regressed and verdict.line().startswith("pruned at batch 1: speed ratio 0.702 (99% CI 0.6")
    # The paired figure is used, not the ratio of the rows' own latencies (60 / 90).
    assert report.with_speedups([base, pruned([1.02])])[1].speedup_vs_baseline == 1.02


@pytest.mark.parametrize("value", ["NaN", "Infinity", "0", "-1.5"])
def test_a_stored_speedup_that_could_never_regress_is_refused(tmp_path: Path, value: str) -> None:
    path = baselines.speedups_file("cpu", tmp_path)
    path.write_text('{"device": "cpu", "speedup_over_baseline": {"onnx": {"1": 2.5, "8": %s}}}' % value)
    with pytest.raises(UserError) as caught:
        baselines.load_speedups(path)
    assert str(caught.value).startswith(f"stored speedups {path}: onnx at batch 8 is ")
    assert "not a positive finite speedup: restore the file from git or save a new baseline" in str(caught.value)


def test_a_stored_run_of_an_older_pytest_benchmark_is_refused_before_measuring(tmp_path: Path) -> None:
    """Stats without iqr, ops, q1, q3 ... ended a whole sweep in pytest-benchmark's KeyError."""
    run = tmp_path / get_machine_id() / "0001_cpu.json"
    run.parent.mkdir(parents=True)
    old_stats = {"min": 1.0, "max": 1.0, "mean": 1.0, "stddev": 0.0, "rounds": 2, "median": 1.0}
    run.write_text(json.dumps({"benchmarks": [{"name": "test_inference[baseline-bs1]", "stats": old_stats}]}))
    with pytest.raises(UserError) as caught:
        baselines.check_benchmark_storage(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"stored benchmark {run} is not in the format of this pytest-benchmark")
    assert "test_inference[baseline-bs1] lack iqr, q1, q3" in message and message.endswith("--save-baseline, or delete it")


def test_an_older_run_in_the_old_format_does_not_block_a_new_baseline(tmp_path: Path) -> None:
    folder = tmp_path / get_machine_id()
    folder.mkdir()
    (folder / "0001_cpu.json").write_text(json.dumps({"benchmarks": [{"name": "x", "stats": {"min": 1.0}}]}))
    (folder / "0002_cpu.json").write_text(json.dumps({"benchmarks": [{"name": "x", "stats": STATS}]}))
    assert [p.name for p in baselines.check_benchmark_storage(tmp_path)] == ["0001_cpu.json", "0002_cpu.json"]


def test_the_no_baseline_line_says_when_the_baseline_dir_does_not_exist(tmp_path: Path) -> None:
    """The default --baseline-dir is relative to the current directory (the stored baselines
    are the user's data, not the package's): run elsewhere, the line says so."""
    assert options_from_mapping({}).baseline_dir == Path("benchmarks_baseline").resolve()
    missing = tmp_path / "benchmarks_baseline"
    line = baselines.no_baseline_line(missing, "cpu")
    assert f"{missing} does not exist" in line and "pass --baseline-dir" in line, line
    assert "speed is not compared; store one with `nox -s bench -- --save-baseline`" in line, line
    missing.mkdir()  # exists, holds nothing: the stored kinds are named
    assert f"in {missing} (stored kinds: none)" in baselines.no_baseline_line(missing, "cpu")
