"""`densenet-opt history`: a config's speed over a kind's stored runs, change points marked
(densenet_opt/history.py). Stored runs are written here in pytest-benchmark's format."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from densenet_opt import cli, history
from densenet_opt.errors import UserError

KIND = "test-cpu_x86v3_2c"


def store_runs(directory: Path, onnx: list[float], pruned: list[float]) -> None:
    """One NNNN_cpu.json per run, each with onnx and pruned at batch 1 (their rows in extra_info)."""
    machine = directory / KIND / "Linux-CPython-3.11-64bit"
    machine.mkdir(parents=True)
    for number, (a, b) in enumerate(zip(onnx, pruned, strict=True), 1):
        benchmarks = [{"extra_info": {"optimization_technique": variant, "batch_size": 1, "status": "ok",
                                      "speedup_vs_baseline": speedup, "latency_ms_median": 70 / speedup},
                       "stats": {"median": 0.070 / speedup}} for variant, speedup in (("onnx", a), ("pruned", b))]
        document = {"datetime": f"2026-12-{number:02d}T10:00:00+00:00", "commit_info": {"id": f"{number:040d}"},
                    "benchmarks": benchmarks, "machine_info": {}, "version": "5.2.3"}
        (machine / f"{number:04d}_cpu.json").write_text(json.dumps(document))


def test_a_step_in_a_noisy_series_is_found_where_it_happened() -> None:
    rng = random.Random(3)
    series = [3.0 * rng.gauss(1, 0.01) for _ in range(6)] + [2.4 * rng.gauss(1, 0.01) for _ in range(6)]
    (point,) = history.change_points(series)
    assert point.index == 6 and point.change == pytest.approx(-0.2, abs=0.02) and point.pvalue < 0.001


def test_noise_alone_has_no_change_point_and_a_slow_drift_has_one() -> None:
    rng = random.Random(4)
    assert history.change_points([2.0 * rng.gauss(1, 0.02) for _ in range(20)]) == []
    drift = [2.0 * (1 - 0.01 * i) * rng.gauss(1, 0.005) for i in range(20)]  # 1% slower each run
    points = history.change_points(drift)
    assert points and all(p.after < p.before for p in points)
    assert history.change_points([3.0, 2.0, 3.0]) == []  # too short to say


def test_history_marks_the_change_of_one_config_only(tmp_path: Path, capsys) -> None:
    rng = random.Random(5)
    onnx = [3.0 * rng.gauss(1, 0.01) for _ in range(5)] + [2.4 * rng.gauss(1, 0.01) for _ in range(4)]
    pruned = [1.3 * rng.gauss(1, 0.01) for _ in range(9)]
    store_runs(tmp_path, onnx, pruned)
    found = history.stored_history(tmp_path / KIND, "cpu")
    assert [p.run for p in found[("onnx", 1)]] == [f"{n:04d}_cpu.json" for n in range(1, 10)]
    assert cli.main(["history", "--baseline-dir", str(tmp_path), "--kind", KIND]) == 0
    out = capsys.readouterr().out
    marked = [line for line in out.splitlines() if "change point" in line]
    assert len(marked) == 1 and marked[0].lstrip().startswith("0006_cpu.json")
    assert re.search(r"change point: speedup 2\.9\d\d -> 2\.[34]\d\d \(-1\d\.\d%, Welch p=", marked[0]), marked[0]
    assert "pruned at batch 1: 9 stored run(s)" in out


def test_no_stored_run_of_the_kind_is_one_sentence(tmp_path: Path, capsys) -> None:
    assert cli.main(["history", "--baseline-dir", str(tmp_path), "--kind", "other_2c"]) == 2
    assert "no stored cpu run of machine kind other_2c" in capsys.readouterr().err
    bad = tmp_path / KIND / "Linux-CPython-3.11-64bit"
    bad.mkdir(parents=True)
    (bad / "0001_cpu.json").write_text("{not json")
    with pytest.raises(UserError, match="is not a pytest-benchmark run"):
        history.stored_history(tmp_path / KIND, "cpu")


def test_a_baseline_dir_that_does_not_exist_says_where_to_run(tmp_path: Path, capsys) -> None:
    assert cli.main(["history", "--baseline-dir", str(tmp_path / "benchmarks_baseline")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'benchmarks_baseline'} does not exist: run from the repository root" in err, err
    assert "or pass --baseline-dir" in err, err
