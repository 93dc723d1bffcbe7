"""Speedups over the baseline variant from result rows, and their comparison."""

from __future__ import annotations

from pathlib import Path

from densenet_opt import baselines


def rows(pruned_ms: float) -> list[dict[str, str]]:
    def row(variant: str, size: int, ms: float, device: str = "cpu") -> dict[str, str]:
        return {"optimization_technique": variant, "batch_size": str(size), "latency_ms_per_batch": str(ms),
                "device": device, "device_name": "test cpu"}

    return [row("baseline", 1, 60.0), row("baseline", 8, 400.0), row("onnx", 1, 20.0), row("onnx", 8, 100.0),
            row("pruned", 1, pruned_ms), row("onnx", 4, 50.0), row("onnx", 1, 1.0, device="cuda")]


def test_speedups_pair_each_row_with_the_baseline_of_its_batch_size() -> None:
    assert baselines.speedups(r for r in rows(60.0) if r["device"] == "cpu") == {
        "onnx": {"1": 3.0, "8": 4.0}, "pruned": {"1": 1.0}
    }


def test_round_trip_and_regressions(tmp_path: Path) -> None:
    path = baselines.speedups_file("cpu", tmp_path)
    baselines.save_speedups(rows(60.0), "cpu", path)
    stored = baselines.load_speedups(path)
    assert stored == {"onnx": {"1": 3.0, "8": 4.0}, "pruned": {"1": 1.0}}
    assert baselines.speedup_regressions(rows(70.0), "cpu", stored, 0.25) == []
    (problem,) = baselines.speedup_regressions(rows(120.0), "cpu", stored, 0.25)
    assert problem == "pruned at batch 1: speedup over baseline 0.50x, stored 1.00x (more than 25% lower)"
