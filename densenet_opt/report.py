"""The results CSV: the seed's columns in the seed's order, then ours; atomic writes."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

RESULTS_FILE = "benchmark_results.csv"

SEED_COLUMNS = (
    "model_name",
    "batch_size",
    "optimization_technique",
    "device",
    "model_size_mb",
    "accuracy_top_1",
    "accuracy_top_5",
    "ram_usage_mb",
    "vram_usage_mb",
    "latency_ms_per_batch",
    "throughput_samples_per_sec",
)
EXTRA_COLUMNS = (
    "status",
    "speedup_vs_baseline",
    "gflops_per_image",
    "achieved_gflops_per_sec",
    "latency_ms_stddev",
    "latency_ms_median",
    "latency_ms_min",
    "latency_ms_max",
    "latency_ms_p90",
    "latency_ms_p99",
    "rounds",
    "accuracy_kind",
    "agreement_top_1",
    "logit_relative_error",
    "num_samples",
    "weights",
    "data",
    "vram_torch_peak_mb",
    "cold_start_ms",
    "engine_info",
    "device_name",
    "cpu",
    "gpu_driver",
    "python",
    "torch",
    "torchvision",
    "cuda",
    "cudnn",
    "onnxruntime",
    "measured_at",
)
COLUMNS = SEED_COLUMNS + EXTRA_COLUMNS
KEY_COLUMNS = ("optimization_technique", "batch_size", "device")
OK = "ok"
OUT_OF_MEMORY = "out_of_memory"
NON_FINITE_LOGITS = "non_finite_logits"


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two sweeps writing one directory take turns instead of overwriting each other."""
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_text_atomic(path: Path, text: str) -> None:
    """A reader (or a crash) sees the old file or the new one, never half of one."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False, newline="") as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    try:
        os.replace(tmp.name, path)
    except BaseException:
        os.unlink(tmp.name)
        raise


def upsert_row(path: Path, row: Mapping[str, object]) -> None:
    """Add ``row``, replacing an earlier one for the same variant, batch size and device."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"not results columns: {sorted(unknown)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        key = tuple(str(row.get(column, "")) for column in KEY_COLUMNS)
        rows = [r for r in read_rows(path) if tuple(r.get(c, "") for c in KEY_COLUMNS) != key]
        rows.append({column: row.get(column, "") for column in COLUMNS})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, buffer.getvalue())


def markdown_table(rows: list[Mapping[str, str]], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
