"""The results CSV: one typed Row, seed schema first, upserts, speedups in one place, atomic writes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from densenet_opt import report


def _row(variant: str, batch_size: int, latency: float, **fields: object) -> report.Row:
    return report.Row(model_name="Densenet121", optimization_technique=variant, batch_size=batch_size,
                      device="cpu", latency_ms_per_batch=latency, **fields)


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
    assert [(r.batch_size, r.latency_ms_per_batch) for r in rows] == [(4, 200.0), (1, 55.0)]


def test_unknown_column_or_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="latency_typo"):
        _row("baseline", 1, 1.0, latency_typo=1)
    with pytest.raises(TypeError, match="takes a report.Row"):
        report.upsert_row(tmp_path / "r.csv", {"optimization_technique": "baseline", "batch_size": 1, "device": "cpu"})


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
    assert sorted((r.variant, r.batch_size) for r in rows) == [
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
    assert rows == [report.Row(model_name="Densenet121", batch_size=4, optimization_technique="baseline", device="cpu")]


def test_upsert_onto_a_spreadsheet_saved_csv_keeps_its_first_column(tmp_path: Path) -> None:
    path = tmp_path / report.RESULTS_FILE
    _spreadsheet_csv(path, [list(report.COLUMNS), [{"model_name": "Densenet121", "batch_size": "1",
                            "optimization_technique": "baseline", "device": "cpu"}.get(c, "") for c in report.COLUMNS]])
    report.upsert_row(path, _row("baseline", 4, 200.0))
    rows = report.read_rows(path)
    assert [(r.model_name, r.batch_size) for r in rows] == [("Densenet121", 1), ("Densenet121", 4)]


def test_read_rows_of_a_file_that_is_not_utf8_is_one_sentence(tmp_path: Path) -> None:
    from densenet_opt.errors import UserError

    path = tmp_path / report.RESULTS_FILE
    path.write_text("model_name,batch_size\n", encoding="utf-16")
    with pytest.raises(UserError, match=r"is not UTF-8 text: pass a benchmark_results\.csv written by densenet-opt\.$"):
        report.read_rows(path)


# ---------------------------------------------------------------------------------------
# The typed row


def _measured_row() -> report.Row:
    """A row as Sweep.result_row builds it: unrounded measurements."""
    return report.Row(
        model_name="Densenet121", batch_size=8, optimization_technique="onnx", device="cuda",
        model_size_mb=31.4159, accuracy_top_1=99.21875, accuracy_top_5=100.0, ram_usage_mb=812.34,
        vram_usage_mb=0, latency_ms_per_batch=12.3456, throughput_samples_per_sec=648.0103,
        gflops_per_image=2.8651, achieved_gflops_per_sec=1856.6053, latency_ms_stddev=0.123,
        rounds=10, accuracy_kind="agreement_with_fp32", agreement_top_1=99.21875, logit_relative_error=0.00123456,
        num_samples=1024, engine_info="provider=CUDAExecutionProvider", device_name="NVIDIA H200", onnxruntime="",
        measured_at="2025-01-31T12:00:00+00:00",
    )


def test_a_row_holds_what_the_csv_holds_and_reads_back_equal() -> None:
    row = _measured_row()
    text = row.as_csv()
    assert list(text) == list(report.COLUMNS)
    assert {c: text[c] for c in ("batch_size", "model_size_mb", "accuracy_top_1", "ram_usage_mb", "vram_usage_mb",
                                 "latency_ms_per_batch", "throughput_samples_per_sec", "gflops_per_image",
                                 "achieved_gflops_per_sec", "rounds", "logit_relative_error", "speedup_vs_baseline",
                                 "status", "onnxruntime")} == {
        "batch_size": "8", "model_size_mb": "31.42", "accuracy_top_1": "99.22", "ram_usage_mb": "812.3",
        "vram_usage_mb": "0.0", "latency_ms_per_batch": "12.35", "throughput_samples_per_sec": "648.01",
        "gflops_per_image": "2.865", "achieved_gflops_per_sec": "1856.6", "rounds": "10",
        "logit_relative_error": "0.00123", "speedup_vs_baseline": "", "status": "ok", "onnxruntime": "",
    }
    assert report.Row.from_csv(text) == row
    assert json.loads(json.dumps(row.as_dict())) == row.as_dict()
    assert row.as_dict()["latency_ms_per_batch"] == 12.35 and row.as_dict()["cpu"] is None
    assert row.key == ("onnx", 8, "cuda", None) and row.speedup_key == (8, "cuda", "NVIDIA H200", None)
    assert row.config == ("onnx", 8, "cuda")
    assert (row.memory_mb, row.memory_kind, row.label) == (0.0, "VRAM", "onnx at batch 8 on cuda")


def test_from_csv_tolerates_missing_columns_and_names_a_bad_value() -> None:
    row = report.Row.from_csv({"optimization_technique": "baseline", "batch_size": "4", "device": "cpu", "status": ""})
    assert (row.status, row.latency_ms_per_batch, row.device_name) == (report.OK, None, None)
    with pytest.raises(ValueError, match=r"^latency_ms_per_batch is 'fast', not a number$"):
        report.Row.from_csv({"optimization_technique": "a", "batch_size": "1", "device": "cpu", "latency_ms_per_batch": "fast"})
    with pytest.raises(ValueError, match=r"^batch_size is '1.5', not a whole number$"):
        report.Row.from_csv({"optimization_technique": "a", "batch_size": "1.5", "device": "cpu"})
    with pytest.raises(ValueError, match=r"^ram_usage_mb is 'nan', not a number$"):
        report.Row.from_csv({"optimization_technique": "a", "batch_size": "1", "device": "cpu", "ram_usage_mb": "nan"})
    with pytest.raises(ValueError, match="^device is '': every row needs"):
        report.Row.from_csv({"optimization_technique": "a", "batch_size": "1"})


def test_a_bad_line_in_a_results_file_is_one_sentence_naming_it(tmp_path: Path) -> None:
    from densenet_opt.errors import UserError

    path = tmp_path / report.RESULTS_FILE
    path.write_text("optimization_technique,batch_size,device,latency_ms_per_batch\nbaseline,1,cpu,5\nonnx,1,cpu,fast\n")
    with pytest.raises(UserError, match=r"line 3: latency_ms_per_batch is 'fast', not a number; fix or delete that row$"):
        report.read_rows(path)


@pytest.mark.parametrize("damage", ["cut", "joined"])
def test_a_damaged_line_of_a_results_file_is_refused_naming_it(tmp_path: Path, damage: str) -> None:
    """A crash or a full disk cut the file's last line inside a cell ("...,147.33,6"): it
    read as an ok row of 6.0 samples/s where the file said 6.79. A line with a field too
    many (two lines run together) is refused the same way."""
    from densenet_opt.errors import UserError

    path = tmp_path / report.RESULTS_FILE
    rows = [report.Row(optimization_technique=v, batch_size=1, device="cpu", latency_ms_per_batch=147.33,
                       throughput_samples_per_sec=6.79) for v in ("baseline", "onnx")]
    report.write_rows(path, rows)
    text = path.read_text()
    damaged = text[: text.rindex("6.79") + 1] if damage == "cut" else text.rstrip("\n") + ",extra\n"
    path.write_text(damaged)
    with pytest.raises(UserError, match=r"line 3: it has \d+ fields where the header has \d+ \(a line cut short or two lines run together\)"):
        report.read_rows(path)


@pytest.mark.parametrize("order", [("onnx", "baseline"), ("baseline", "onnx")])
def test_the_speedup_does_not_depend_on_the_order_rows_are_written(tmp_path: Path, order: tuple[str, str]) -> None:
    path = tmp_path / report.RESULTS_FILE
    latency = {"onnx": 20.0, "baseline": 60.0}
    for variant in order:
        report.upsert_row(path, _row(variant, 1, latency[variant], device_name="cpu A"))
    speedups = {r.variant: r.speedup_vs_baseline for r in report.read_rows(path)}
    assert speedups == {"onnx": 3.0, "baseline": 1.0}


def test_speedups_pair_rows_of_the_same_batch_size_device_and_device_name() -> None:
    rows = report.with_speedups([
        _row("onnx", 1, 30.0, device_name="cpu A"), _row("baseline", 1, 70.0, device_name="cpu A"),
        _row("onnx", 4, 30.0, device_name="cpu A"),  # no baseline at batch 4
        _row("onnx", 1, 10.0, device_name="cpu B"),  # the baseline ran on another machine
        report.Row(optimization_technique="int8", batch_size=1, device="cpu", status=report.OUT_OF_MEMORY, device_name="cpu A"),
    ])
    assert [r.speedup_vs_baseline for r in rows] == [2.333, 1.0, None, None, None]


def test_a_path_that_is_not_utf8_is_written_without_loss(tmp_path: Path) -> None:
    """A latin-1 folder name under LANG=C reaches Python with surrogate escapes: writing the
    row failed with UnicodeEncodeError and the measured row was lost. Its bytes are kept as
    escapes, and the row reads back equal."""
    import os

    name = os.fsdecode(b"/data/val_\xe9t\xe9")  # what os.listdir gives for those bytes under LANG=C
    row = report.Row(optimization_technique="baseline", batch_size=1, device="cpu", data=f"imagenet-val {name} (first 8)")
    assert row.data == "imagenet-val /data/val_\\xe9t\\xe9 (first 8)"
    report.upsert_row(tmp_path / report.RESULTS_FILE, row)
    assert report.read_rows(tmp_path / report.RESULTS_FILE) == [row]
