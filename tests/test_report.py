"""The results CSV: seed schema first, upserts, atomic writes that survive a crash."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from densenet_opt import report


def _row(variant: str, batch_size: int, latency: float) -> dict[str, object]:
    return {"model_name": "Densenet121", "optimization_technique": variant, "batch_size": batch_size,
            "device": "cpu", "latency_ms_per_batch": latency}


def test_schema_starts_with_the_seed_columns_in_order(tmp_path: Path) -> None:
    path = tmp_path / report.RESULTS_FILE
    report.upsert_row(path, _row("baseline", 1, 60.0))
    header = next(csv.reader(path.open()))
    assert tuple(header[:11]) == report.SEED_COLUMNS == (
        "model_name", "batch_size", "optimization_technique", "device", "model_size_mb", "accuracy_top_1",
        "accuracy_top_5", "ram_usage_mb", "vram_usage_mb", "latency_ms_per_batch", "throughput_samples_per_sec",
    )
    assert {"latency_ms_stddev", "latency_ms_median", "latency_ms_p90", "latency_ms_p99", "device_name",
            "accuracy_kind"} <= set(header)


def test_upsert_replaces_the_same_config_and_keeps_others(tmp_path: Path) -> None:
    path = tmp_path / "out" / report.RESULTS_FILE
    report.upsert_row(path, _row("baseline", 1, 60.0))
    report.upsert_row(path, _row("baseline", 4, 200.0))
    report.upsert_row(path, _row("baseline", 1, 55.0))
    rows = report.read_rows(path)
    assert [(r["batch_size"], r["latency_ms_per_batch"]) for r in rows] == [("4", "200.0"), ("1", "55.0")]


def test_unknown_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="latency_typo"):
        report.upsert_row(tmp_path / "r.csv", {**_row("baseline", 1, 1.0), "latency_typo": 1})


def test_a_crash_while_writing_keeps_the_rows_already_written(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / report.RESULTS_FILE
    report.upsert_row(path, _row("baseline", 1, 60.0))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        report.upsert_row(path, _row("baseline", 4, 200.0))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _write_rows(path: Path, variant: str, count: int) -> None:
    for size in range(1, count + 1):
        report.upsert_row(path, _row(variant, size, float(size)))


def test_two_writers_on_one_file_lose_no_row(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / report.RESULTS_FILE
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_rows, args=(path, name, 25)) for name in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    rows = report.read_rows(path)
    assert sorted((r["optimization_technique"], int(r["batch_size"])) for r in rows) == [
        (name, size) for name in ("a", "b") for size in range(1, 26)
    ]
