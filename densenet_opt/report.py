"""The results CSV: the seed's columns in the seed's order, then ours; atomic writes."""

from __future__ import annotations

import csv
import fcntl
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from densenet_opt import atomic
from densenet_opt.errors import UserError

RESULTS_FILE = "benchmark_results.csv"
# What a failed write of results tells the user to change.
OUTPUT_OPTION = "--output-dir"

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
    """The rows of a results CSV ([] when the file does not exist).

    A UTF-8 byte-order mark (a spreadsheet's "CSV UTF-8") and CRLF line ends are
    accepted; a file that is not UTF-8 text raises UserError.
    """
    if not path.exists():
        return []
    try:
        # utf-8-sig drops a byte-order mark, which would otherwise glue itself to the first column name.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: pass a {RESULTS_FILE} written by densenet-opt.") from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two sweeps writing one directory take turns instead of overwriting each other.
    Raises UserError when the lock file cannot be created (disk full, read-only)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock = open(lock_path, "w")
    except OSError as error:
        failure = atomic.write_failure(lock_path, error, OUTPUT_OPTION)
        if failure is None:
            raise
        raise failure from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_text_atomic(path: Path, text: str, option: str = OUTPUT_OPTION) -> None:
    """A reader (or a crash) sees the old file or the new one, never half of one: see
    atomic.write_atomic. Raises UserError naming ``path`` and ``option`` when the disk is
    full or the directory read-only."""
    atomic.write_text(path, text, option=option)


def upsert_row(path: Path, row: Mapping[str, object]) -> None:
    """Add ``row``, replacing an earlier one for the same variant, batch size and device.
    Raises ValueError for a column that is not in COLUMNS, UserError when the file cannot
    be written (disk full, read-only); the file is then left as it was."""
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
