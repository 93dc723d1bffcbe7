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


def _spreadsheet_csv(path: Path, rows: list[list[str]]) -> None:
    """What a spreadsheet's "CSV UTF-8" save writes: a byte-order mark and CRLF line ends."""
    path.write_bytes(b"\xef\xbb\xbf" + "".join(",".join(row) + "\r\n" for row in rows).encode())


def test_read_rows_accepts_a_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / report.RESULTS_FILE
    _spreadsheet_csv(path, [["model_name", "batch_size", "optimization_technique", "device"],
                            ["Densenet121", "4", "baseline", "cpu"]])
    rows = report.read_rows(path)
    assert rows == [{"model_name": "Densenet121", "batch_size": "4", "optimization_technique": "baseline",
                     "device": "cpu"}]
    assert list(rows[0])[0] == "model_name"


def test_upsert_onto_a_spreadsheet_saved_csv_keeps_its_first_column(tmp_path: Path) -> None:
    path = tmp_path / report.RESULTS_FILE
    _spreadsheet_csv(path, [list(report.COLUMNS), [{"model_name": "Densenet121", "batch_size": "1",
                            "optimization_technique": "baseline", "device": "cpu"}.get(c, "") for c in report.COLUMNS]])
    report.upsert_row(path, _row("baseline", 4, 200.0))
    rows = report.read_rows(path)
    assert [(r["model_name"], r["batch_size"]) for r in rows] == [("Densenet121", "1"), ("Densenet121", "4")]


def test_read_rows_of_a_file_that_is_not_utf8_is_one_sentence(tmp_path: Path) -> None:
    from densenet_opt.errors import UserError

    path = tmp_path / report.RESULTS_FILE
    path.write_text("model_name,batch_size\n", encoding="utf-16")
    with pytest.raises(UserError, match=r"is not UTF-8 text: pass a benchmark_results\.csv written by densenet-opt\.$"):
        report.read_rows(path)
