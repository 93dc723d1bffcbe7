"""The results CSV as typed rows: one ``Row`` per (variant, batch size, device).

The columns are ``Row``'s fields: the seed's columns first, in the seed's order, then
ours. A Row holds exactly what its CSV line holds (numbers rounded as the CSV writes
them), so a row read back equals the row written. ``speedup_vs_baseline`` is computed in
one place, ``with_speedups``, whenever rows are written (``upsert_row``) or merged, so it
never depends on the order the variants ran in. Writes are atomic and locked: two sweeps
writing one directory take turns, and a crash leaves the old file or the new one.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import fcntl
import io
import math
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from densenet_opt import atomic
from densenet_opt.accuracy import Top1OfFp32
from densenet_opt.errors import UserError
from densenet_opt.config import DEFAULT_MAX_CPU_PRESSURE
from densenet_opt.measure.contention import is_contended
from densenet_opt.variants import BASELINE  # the variant speedups are taken over; re-exported

RESULTS_FILE = "benchmark_results.csv"
BENCHMARK_JSON = "benchmark.json"  # pytest-benchmark's JSON report of a sweep, beside RESULTS_FILE
# What a failed write of results tells the user to change.
OUTPUT_OPTION = "--output-dir"
# The variant speedups are measured against; densenet_opt.variants registers it under this name.
OK = "ok"
OUT_OF_MEMORY = "out_of_memory"
NON_FINITE_LOGITS = "non_finite_logits"
# A config not started because it would not fit in --time-budget (engine_info: reason=...);
# as an engine_info key, the searches a measured config was built without for the budget.
SKIPPED_FOR_TIME = "skipped_for_time"


def _number(digits: int | None = None, *, significant: int | None = None):
    """An optional number column, rounded to ``digits`` decimals or ``significant`` digits."""
    return field(default=None, metadata={"digits": digits, "significant": significant})


@dataclass(frozen=True, kw_only=True)
class Row:
    """One line of the results CSV, typed; the fields are the columns, in the file's order.

    Only ``optimization_technique``, ``batch_size`` and ``device`` are required (with
    ``machine``, None for "the local or unknown machine", they are the row's key): a
    row that records a fault (``status`` out_of_memory, non_finite_logits) has the key,
    ``status``, ``device_name`` and ``measured_at``, every other field None. Units are in
    the names (ms, MiB as ``_mb``, samples/s, GFLOP); accuracies are percentages.

    Floats are rounded on construction to what the CSV keeps (latencies and accuracies
    to 2 decimals, memory to 1, speedup to 3, the logit relative error to 3 significant
    digits), so ``Row.from_csv(row.as_csv()) == row``. An empty optional text becomes
    None. Raises TypeError for a value of the wrong type (text for a number, a float for
    an int) and ValueError for a non-finite number, naming the column.
    """

    # The seed's columns, in the seed's order.
    model_name: str | None = None
    batch_size: int
    optimization_technique: str
    device: str  # "cpu" or "cuda"
    model_size_mb: float | None = _number(2)
    accuracy_top_1: float | None = _number(2)
    accuracy_top_5: float | None = _number(2)
    ram_usage_mb: float | None = _number(1)
    vram_usage_mb: float | None = _number(1)
    latency_ms_per_batch: float | None = _number(2)
    throughput_samples_per_sec: float | None = _number(2)
    # Ours.
    status: str = OK
    speedup_vs_baseline: float | None = _number(3)
    speedup_spread: float | None = _number(3)  # half the IQR of the paired ratios; None: unpaired
    # The paired ratios the speedup was taken from, in the order the rounds ran
    # (timing.per_round_text): what the regression gate's interval resamples (verdict.py).
    speedup_per_round: str | None = None
    # Pairs timed while other processes competed for the CPUs (PSI above --max-cpu-pressure
    # over the pair): left out of the speedup, unless too few quiet ones remained
    # (timing.too_contended: then the speedup is every pair's, and the gate does not judge it).
    contended_pairs: int | None = None
    gflops_per_image: float | None = _number(3)
    achieved_gflops_per_sec: float | None = _number(1)
    latency_ms_stddev: float | None = _number(2)
    latency_ms_median: float | None = _number(2)
    latency_ms_min: float | None = _number(2)
    latency_ms_max: float | None = _number(2)
    latency_ms_p90: float | None = _number(2)
    latency_ms_p99: float | None = _number(2)
    rounds: int | None = None
    # Contention while the rounds ran (measure/contention.py): PSI "some" CPU pressure, % of
    # wall time; the 1-minute load average per usable core. None where not measured.
    cpu_pressure_pct: float | None = _number(1)
    load_per_core: float | None = _number(2)
    # Intra-op threads torch's engines (eager, and the paired baseline) ran with while timed:
    # --torch-threads, or with auto the cores other processes left free (measure/contention.py).
    torch_threads: int | None = None
    accuracy_kind: str | None = None
    agreement_top_1: float | None = _number(2)
    # MLPerf's accuracy rule (accuracy.Top1OfFp32): top-1 as % of the fp32 reference's top-1 on
    # the same images, and the 95% paired-bootstrap interval of that figure.
    top1_of_fp32_pct: float | None = _number(2)
    top1_of_fp32_low: float | None = _number(2)
    top1_of_fp32_high: float | None = _number(2)
    logit_relative_error: float | None = _number(significant=3)
    num_samples: int | None = None
    weights: str | None = None
    data: str | None = None
    # What else the row was measured with ("weights=KEY;calibration=N;options=k=v,..."): the
    # weights' bytes, the calibration images, the variant's options; what --resume compares.
    inputs: str | None = None
    vram_torch_peak_mb: float | None = _number(1)
    cold_start_ms: float | None = _number(1)
    engine_info: str | None = None  # "key=value;key=value"
    device_name: str | None = None
    # What decides speed (measure/env.py, machine_kind): the key its baselines are stored under.
    machine_kind: str | None = None
    cpu: str | None = None
    gpu_driver: str | None = None
    python: str | None = None
    torch: str | None = None
    torchvision: str | None = None
    cuda: str | None = None
    cudnn: str | None = None
    onnxruntime: str | None = None
    openvino: str | None = None
    nncf: str | None = None
    torchao: str | None = None
    measured_at: str | None = None  # UTC, ISO 8601 to the second (utc_timestamp)
    # The machine that measured the row: --machine-label, else the host name; None in files
    # of older versions (the local / unknown machine). Part of the key: see Row.key.
    machine: str | None = None

    def __post_init__(self) -> None:
        for column in dataclasses.fields(self):
            value = getattr(self, column.name)
            if value is not None:
                object.__setattr__(self, column.name, _checked(column, value))

    @classmethod
    def from_csv(cls, record: Mapping[str, str | None]) -> Row:
        """The row a CSV line holds (``record``: column -> text, as csv.DictReader gives it).

        Columns the record lacks, or leaves empty, are None (files of older versions lack
        some); an empty ``status`` is OK. Raises ValueError naming the column and its text
        for a number column that holds no finite number, or a missing key column."""
        values: dict[str, object] = {}
        for name in COLUMNS:
            text = record.get(name)
            if text is not None and text.strip():
                values[name] = _parse(name, text)
        missing = [name for name in KEY_COLUMNS if name not in values]
        if missing:
            raise ValueError(f"{missing[0]} is {record.get(missing[0]) or ''!r}: every row needs {', '.join(KEY_COLUMNS)}")
        return cls(**values)

    def as_csv(self) -> dict[str, str]:
        """Column -> the text the CSV holds: "" for None, the logit relative error in
        ``%.3g`` form, other numbers as Python prints them (``60.0``, ``4``)."""
        return {column.name: _text(column, getattr(self, column.name)) for column in dataclasses.fields(self)}

    def as_dict(self) -> dict[str, str | int | float | None]:
        """Column -> value, JSON-safe (numbers finite, None for a missing value): what a
        pytest-benchmark ``extra_info`` records."""
        return {name: getattr(self, name) for name in COLUMNS}

    @property
    def variant(self) -> str:
        """The optimization_technique column: the registered variant's name."""
        return self.optimization_technique

    @property
    def key(self) -> tuple[str, int, str, str | None]:
        """(variant, batch size, device, machine): a file holds one row per key; a new one
        replaces it. Rows of two machines never replace each other."""
        return self.optimization_technique, self.batch_size, self.device, self.machine

    @property
    def config(self) -> tuple[str, int, str]:
        """(variant, batch size, device): the config, whichever machine measured it."""
        return self.optimization_technique, self.batch_size, self.device

    @property
    def speedup_key(self) -> tuple[int, str, str | None, str | None]:
        """(batch size, device, device_name, machine): what the baseline row a speedup
        divides by shares; a speedup never pairs rows of two machines or two devices."""
        return self.batch_size, self.device, self.device_name, self.machine

    def replaces(self, other: Row) -> bool:
        """Whether this row, written to a file holding ``other``, takes its place: the same
        key, or the same config in a row of an older version that names no machine (that
        row was measured by the machine writing to the file: the local one)."""
        return self.key == other.key or (other.machine is None and self.config == other.config)

    @property
    def measured(self) -> bool:
        """True for a row with a measured latency (status ok), False for a fault row."""
        return self.status == OK and self.latency_ms_per_batch is not None

    @property
    def memory_mb(self) -> float | None:
        """The memory that limits a deployment (MiB): VRAM on a GPU, RAM on the CPU."""
        return self.vram_usage_mb if self.device == "cuda" else self.ram_usage_mb

    @property
    def memory_kind(self) -> str:
        """What memory_mb is: "VRAM" on cuda, "RAM" otherwise."""
        return "VRAM" if self.device == "cuda" else "RAM"

    @property
    def label(self) -> str:
        """The config in words, as messages name it: "onnx at batch 8 on cuda"."""
        return f"{self.variant} at batch {self.batch_size} on {self.device}"

    def contended(self, limit_pct: float = DEFAULT_MAX_CPU_PRESSURE) -> bool:
        """Whether the row was timed under contention (measure.contention.is_contended):
        CPU pressure above ``limit_pct``, or without PSI a high load per core."""
        return is_contended(self.cpu_pressure_pct, self.load_per_core, limit_pct)

    @property
    def contention_text(self) -> str:
        """The row's contention in words: "CPU pressure 43%", "load 1.80 per core", or ""."""
        if self.cpu_pressure_pct is not None:
            return f"CPU pressure {self.cpu_pressure_pct:.0f}%"
        return "" if self.load_per_core is None else f"load {self.load_per_core:.2f} per core"

    @property
    def engine_details(self) -> dict[str, str]:
        """The engine_info column ("k=v;k=v") as a dict."""
        pairs = (part.partition("=") for part in (self.engine_info or "").split(";"))
        return {key.strip(): value.strip() for key, sep, value in pairs if sep}

    @property
    def gflops(self) -> float | None:
        """GFLOP per image: the column, else what engine_info recorded (files of older versions)."""
        if self.gflops_per_image is not None:
            return self.gflops_per_image
        try:
            value = float(self.engine_details.get("gflops_per_image", "nan"))
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    @property
    def achieved_gflops(self) -> float | None:
        """Achieved GFLOP/s: the column, else ``gflops`` x samples/s; None when either is unknown."""
        if self.achieved_gflops_per_sec is not None:
            return self.achieved_gflops_per_sec
        if self.gflops is None or self.throughput_samples_per_sec is None:
            return None
        return self.gflops * self.throughput_samples_per_sec


_TYPES = typing.get_type_hints(Row)
COLUMNS: tuple[str, ...] = tuple(column.name for column in dataclasses.fields(Row))
SEED_COLUMNS = COLUMNS[:11]
EXTRA_COLUMNS = COLUMNS[11:]
KEY_COLUMNS = ("optimization_technique", "batch_size", "device")


def _kind(name: str) -> type:
    """int, float or str: the type a column holds when it holds a value."""
    hint = _TYPES[name]
    return next(kind for kind in (int, float, str) if hint is kind or kind in typing.get_args(hint))


def _checked(column: dataclasses.Field, value: object) -> object:
    """``value`` as ``column`` holds it (rounded, "" -> None for optional text), or TypeError/ValueError."""
    kind = _kind(column.name)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"{column.name} must be text, got {value!r}")
        if value == "" and type(None) in typing.get_args(_TYPES[column.name]):
            return None
        return printable_path_text(value)
    if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
        raise TypeError(f"{column.name} must be {'an int' if kind is int else 'a number'}, got {value!r}")
    if kind is int:
        return value
    if not math.isfinite(value):
        raise ValueError(f"{column.name} is {value!r}, not a number")
    if column.metadata["significant"] is not None:
        return float(f"{value:.{column.metadata['significant']}g}")
    if column.metadata["digits"] is not None:
        return round(float(value), column.metadata["digits"])
    return float(value)


def printable_path_text(text: str) -> str:
    """``text`` as UTF-8 can hold it: a path whose bytes are not UTF-8 (a latin-1 ``val_été``
    under ``LANG=C``) reaches Python with surrogate escapes, which no UTF-8 file can store;
    those bytes become ``\\xe9`` escapes, the rest is kept as it is. Writing the row then
    cannot fail, and the escapes name the original bytes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _parse(name: str, text: str) -> object:
    """A CSV cell as its column's type; ValueError naming the column and the text otherwise."""
    kind = _kind(name)
    if kind is str:
        return text
    try:
        number = float(text)
        if not math.isfinite(number) or (kind is int and not number.is_integer()):
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} is {text!r}, not {'a whole number' if kind is int else 'a number'}") from None
    return int(number) if kind is int else number


def _text(column: dataclasses.Field, value: object) -> str:
    if value is None:
        return ""
    if column.metadata.get("significant") is not None:
        return f"{value:.{column.metadata['significant']}g}"
    return str(value)


def utc_timestamp() -> str:
    """Now as ``measured_at`` holds it: UTC, ISO 8601 to the second ("2025-01-31T12:00:00+00:00")."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def with_speedups(rows: Iterable[Row]) -> list[Row]:
    """``rows`` (same order) with ``speedup_vs_baseline`` filled in. A row whose speedup was
    measured beside the baseline engine (paired, ``speedup_spread`` set: see
    measure.timing.PairedSpeedup) keeps it. Every other measured row gets the latency of the
    baseline row of the same batch size, device, device_name and machine / its own latency
    (1.0 for the baseline row itself); a fault row, or one without a baseline row, gets None.
    Rounded to 3 digits (Row's rounding). The one place the column is computed: whatever
    order rows were measured or merged in, the same rows give the same speedups."""
    rows = list(rows)
    baseline_ms = {r.speedup_key: r.latency_ms_per_batch for r in rows if r.variant == BASELINE and r.measured}
    return [
        r if r.measured and r.speedup_spread is not None
        else dataclasses.replace(r, speedup_vs_baseline=_speedup(baseline_ms.get(r.speedup_key), r))
        for r in rows
    ]


def _speedup(baseline_ms: float | None, row: Row) -> float | None:
    if baseline_ms is None or not row.measured or not row.latency_ms_per_batch:
        return None
    return baseline_ms / row.latency_ms_per_batch


def _read_records(path: Path) -> list[dict[str, str]]:
    """The lines of a CSV as column -> text ([] when the file does not exist); UserError
    for a file that is not UTF-8 text or not CSV."""
    if not path.exists():
        return []
    try:
        # utf-8-sig drops a byte-order mark, which would otherwise glue itself to the first column name.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: pass a {RESULTS_FILE} written by densenet-opt.") from None
    except csv.Error as error:
        raise UserError(f"{path} is not a readable CSV ({error}): pass a {RESULTS_FILE} written by densenet-opt.") from None


def _bad_line(path: Path, line: int, problem: str) -> UserError:
    return UserError(f"results file {path}, line {line}: {problem}; fix or delete that row")


def _parse_records(path: Path, records: list[dict[str, str]]) -> list[Row]:
    """Rows of ``records`` (csv.DictReader's); UserError naming the line for a line with
    more or fewer fields than the header (cut short by a crash or a full disk, or two lines
    run together): its last cell would otherwise read as a complete, wrong number."""
    rows = []
    for line, record in enumerate(records, start=2):  # line 1 is the header
        fields = len(record) - (None in record)
        if None in record or None in record.values():
            given = fields - sum(value is None for value in record.values()) + len(record.get(None) or ())
            raise _bad_line(path, line, f"it has {given} fields where the header has {fields} "
                                        "(a line cut short or two lines run together)")
        try:
            rows.append(Row.from_csv(record))
        except ValueError as error:
            raise _bad_line(path, line, str(error)) from None
    return rows


def read_rows(path: Path) -> list[Row]:
    """The rows of a results CSV, in file order ([] when the file does not exist).

    A UTF-8 byte-order mark (a spreadsheet's "CSV UTF-8") and CRLF line ends are
    accepted. Raises UserError for a file that is not UTF-8 CSV, and for a line whose
    number column holds no number, that lacks a key column, or whose field count differs
    from the header's (naming line and column)."""
    return _parse_records(path, _read_records(path))


# The columns a results file must have for reports (summary, plots, recommend).
REQUIRED_COLUMNS = (
    "optimization_technique", "batch_size", "device",
    "latency_ms_per_batch", "throughput_samples_per_sec", "ram_usage_mb", "vram_usage_mb",
)


def results_path(path: Path) -> Path:
    """A results file, or a sweep's output directory holding one."""
    return path / RESULTS_FILE if path.is_dir() else path


def top1_of_fp32_columns(figure: Top1OfFp32 | None) -> dict[str, float | None]:
    """Row's top1_of_fp32_pct/_low/_high columns of MLPerf's figure (all None for None)."""
    return {"top1_of_fp32_pct": None if figure is None else figure.pct,
            "top1_of_fp32_low": None if figure is None else figure.low,
            "top1_of_fp32_high": None if figure is None else figure.high}


def load_results(path: Path) -> list[Row]:
    """The measured rows of a results CSV (or of a sweep's output directory); see load_table."""
    return load_table(path)[0]


def load_table(path: Path) -> tuple[list[Row], list[Row]]:
    """The measured rows and the fault rows (status out_of_memory, ...) of a results CSV or
    a sweep's output directory, in file order. A missing, empty or foreign file, a bad line,
    or a file without a measured row raises UserError: one sentence naming the file."""
    path = results_path(Path(path))
    if not path.is_file():
        raise UserError(f"results file {path} does not exist: run `densenet-opt sweep` first, or pass the {RESULTS_FILE} it wrote")
    records = _read_records(path)
    if not records:
        raise UserError(f"results file {path} holds no rows: run a sweep that measures at least one (variant, batch size)")
    missing = [column for column in REQUIRED_COLUMNS if column not in records[0]]
    if missing:
        raise UserError(f"results file {path} has no column {', '.join(missing)}: pass a {RESULTS_FILE} written by `densenet-opt sweep`")
    measured, faults = [], []
    for line, row in enumerate(_parse_records(path, records), start=2):
        if row.status != OK:
            faults.append(row)
            continue
        empty = [column for column in REQUIRED_COLUMNS if getattr(row, column) is None]
        if empty:
            raise _bad_line(path, line, f"{empty[0]} is empty in a row with status {OK}")
        measured.append(row)
    if not measured:
        raise UserError(f"results file {path} holds no measured row ({len(faults)} configs failed, see its status column)")
    return measured, faults


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


def write_rows(path: Path, rows: Iterable[Row]) -> None:
    """Write ``rows`` as the whole CSV at ``path`` (header COLUMNS), atomically, as they are:
    callers that change rows pass them through with_speedups first. Raises UserError when
    the file cannot be written (disk full, read-only); the old file is then left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, csv_text(rows))


def csv_text(rows: Iterable[Row]) -> str:
    """``rows`` as the text of a results CSV (header COLUMNS), as write_rows writes it."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(row.as_csv() for row in rows)
    return buffer.getvalue()


def upsert_row(path: Path, row: Row) -> None:
    """Add ``row`` to the CSV at ``path``, replacing an earlier one with the same ``key``
    (variant, batch size, device, machine; see Row.replaces), and recompute every row's speedup_vs_baseline. Raises
    TypeError for anything but a Row, UserError when the file holds a bad line or cannot
    be written (disk full, read-only); the file is then left as it was."""
    if not isinstance(row, Row):
        raise TypeError(f"upsert_row takes a report.Row, got {type(row).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        rows = [r for r in read_rows(path) if not row.replaces(r)]
        write_rows(path, with_speedups([*rows, row]))
