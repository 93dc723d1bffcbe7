"""LoadGen's own accounting as typed rows, and the CSV files they are written to.

Every figure comes from LoadGen's detail log, ``mlperf_log_detail.txt``: one
``:::MLLOG {json}`` line per key (LoadGen ``results.cc``, ``PerformanceSummary::LogDetail``):
``result_validity`` (VALID / INVALID), ``result_perf_constraints_met`` (Server: the p99
within the bound), ``result_min_duration_met``, ``result_min_queries_met``,
``early_stopping_met`` and ``early_stopping_result``, ``result_<P>_percentile_latency_ns``
for P in 50, 90, 95, 97, 99, 99.9, ``result_samples_per_second`` (Offline),
``result_completed_samples_per_sec`` (Server), ``result_qps_with_loadgen_overhead`` and
``early_stopping_latency_ss`` / ``early_stopping_latency_ms`` (SingleStream: the early
stopping estimates of the p90 and the p99; MultiStream: ``early_stopping_latency_ms``, the
p99 per-query estimate, and ``result_<P>_percentile_per_query_latency_ns`` /
``result_{min,max,mean}_query_latency_ns``, the latency of whole queries). The human-readable ``mlperf_log_summary.txt``
beside it says the same; both stay in the row's ``log_dir``.

Files (written atomically, atomic.write_atomic; a rerun replaces rows with the same key):
``loadgen_results.csv`` (LOADGEN_RESULTS_FILE), one row per engine, batch policy and
scenario; ``loadgen_server_points.csv`` (SERVER_POINTS_FILE), one row per offered QPS the
Server search ran. Both open in pandas (``pandas.read_csv``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from densenet_opt import atomic
from densenet_opt.errors import UserError

LOADGEN_RESULTS_FILE = "loadgen_results.csv"
SERVER_POINTS_FILE = "loadgen_server_points.csv"
DETAIL_LOG = "mlperf_log_detail.txt"
SUMMARY_LOG = "mlperf_log_summary.txt"
OUTPUT_OPTION = "--output-dir"
VALID = "VALID"
INVALID = "INVALID"
# status column: whether the row holds a measurement.
OK = "ok"
BOUND_NOT_MET = "bound_not_met"  # Server: no offered QPS kept the p99 under the bound
PERCENTILES = {"50.00": "p50", "90.00": "p90", "95.00": "p95", "97.00": "p97", "99.00": "p99", "99.90": "p99_9"}
_PERCENTILE_KEY = re.compile(r"result_(\d+\.\d+)_percentile_latency_ns")
# MultiStream's figure is the latency of a whole query (all its samples), LoadGen's per-query keys.
_PER_QUERY_KEY = re.compile(r"result_(\d+\.\d+)_percentile_per_query_latency_ns")
# What LoadGen's early_stopping_result says is missing (Server / SingleStream wording, results.cc).
_EARLY_STOPPING_NEED = re.compile(r"(would need to run at least \d+ more queries|need to process at least \d+ queries)", re.IGNORECASE)


@dataclass(frozen=True)
class LogResult:
    """One LoadGen test as its detail log reports it. Latencies in ms (LoadGen logs ns);
    ``latency_ms``: percentile name (p50 ... p99_9) -> ms. None where the log has no value."""

    scenario: str
    validity: str
    perf_constraints_met: bool | None
    min_duration_met: bool | None
    min_queries_met: bool | None
    early_stopping_met: bool | None
    early_stopping_result: str
    query_count: int | None
    overlatency_query_count: int | None
    samples_per_sec: float | None
    latency_ms: dict[str, float]
    latency_ms_mean: float | None
    latency_ms_min: float | None
    latency_ms_max: float | None
    early_stopping_p90_ms: float | None
    early_stopping_p99_ms: float | None
    target_qps: float | None
    target_latency_ms: float | None
    invalid_reason: str

    @property
    def valid(self) -> bool:
        return self.validity == VALID


def read_detail_log(log_dir: Path) -> dict[str, object]:
    """The ``:::MLLOG`` entries of ``log_dir``'s detail log as key -> value (the last one of
    a key wins). Raises UserError when the log is missing (LoadGen did not finish)."""
    path = Path(log_dir) / DETAIL_LOG
    if not path.exists():
        raise UserError(f"LoadGen wrote no {DETAIL_LOG} in {log_dir}: the test did not finish (see the output above)")
    entries: dict[str, object] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(":::MLLOG "):
            try:
                record = json.loads(line[len(":::MLLOG "):])
            except json.JSONDecodeError:
                continue  # a value LoadGen did not escape; none that we read
            entries[record["key"]] = record.get("value")
    return entries


def _ms(ns: object) -> float | None:
    if isinstance(ns, (int, float)) and math.isfinite(ns) and ns > 0:
        return ns / 1e6
    return None


def parse_detail_log(log_dir: Path) -> LogResult:
    """LoadGen's result of the test whose logs are in ``log_dir`` (see the module doc).
    ``invalid_reason`` names each unmet condition in words ("" when VALID); LoadGen's own
    ``result_invalid_reason`` leaves early stopping out, so it is composed here from the
    flags. Raises UserError when the detail log is missing or holds no result."""
    log = read_detail_log(log_dir)
    if "result_validity" not in log:
        raise UserError(f"{Path(log_dir) / DETAIL_LOG} holds no result_validity: the LoadGen test did not finish")
    scenario = str(log.get("effective_scenario", ""))
    per_query = scenario == "MultiStream"
    latency = {}
    for key, value in log.items():
        match = (_PER_QUERY_KEY if per_query else _PERCENTILE_KEY).fullmatch(key)
        if match and match.group(1) in PERCENTILES and _ms(value) is not None:
            latency[PERCENTILES[match.group(1)]] = _ms(value)
    stat = (lambda name: f"result_{name}_query_latency_ns") if per_query else (lambda name: f"result_{name}_latency_ns")
    target_latency_ms = _ms(log.get("effective_target_latency_ns"))
    samples_per_sec = log.get("result_samples_per_second", log.get("result_completed_samples_per_sec",
                                                                    log.get("result_qps_with_loadgen_overhead")))
    early_text = " ".join(str(log.get("early_stopping_result", "")).split())
    reasons = []
    if log.get("result_perf_constraints_met") is False:
        reasons.append(f"p99 latency {latency.get('p99', math.nan):.1f} ms over the {target_latency_ms or math.nan:g} ms bound")
    if log.get("result_min_duration_met") is False:
        reasons.append("min duration not met")
    if log.get("result_min_queries_met") is False:
        reasons.append("too few queries (min query count not met)")
    if log.get("early_stopping_met") is False:
        need = _EARLY_STOPPING_NEED.search(early_text)
        reasons.append(f"early stopping not satisfied (LoadGen: {need.group(0).lower()})" if need else "early stopping not satisfied")
    return LogResult(
        scenario=scenario,
        validity=str(log["result_validity"]),
        perf_constraints_met=log.get("result_perf_constraints_met"),  # type: ignore[arg-type]
        min_duration_met=log.get("result_min_duration_met"),  # type: ignore[arg-type]
        min_queries_met=log.get("result_min_queries_met"),  # type: ignore[arg-type]
        early_stopping_met=log.get("early_stopping_met"),  # type: ignore[arg-type]
        early_stopping_result=early_text,
        query_count=log.get("result_query_count"),  # type: ignore[arg-type]
        overlatency_query_count=log.get("result_overlatency_query_count"),  # type: ignore[arg-type]
        samples_per_sec=float(samples_per_sec) if isinstance(samples_per_sec, (int, float)) else None,
        latency_ms=latency,
        latency_ms_mean=_ms(log.get(stat("mean"))),
        latency_ms_min=_ms(log.get(stat("min"))),
        latency_ms_max=_ms(log.get(stat("max"))),
        early_stopping_p90_ms=_ms(log.get("early_stopping_latency_ss")) if scenario == "SingleStream" else None,
        early_stopping_p99_ms=_ms(log.get("early_stopping_latency_ms")) if scenario in ("SingleStream", "MultiStream") else None,
        target_qps=float(log["effective_target_qps"]) if isinstance(log.get("effective_target_qps"), (int, float)) else None,
        target_latency_ms=target_latency_ms,
        invalid_reason="; ".join(reasons) if log["result_validity"] != VALID else "",
    )


@dataclass(frozen=True, kw_only=True)
class LoadGenRow:
    """One line of loadgen_results.csv (or of loadgen_server_points.csv); fields are the columns.

    Key: (variant, batch_policy, scenario, device); the points file holds several rows of
    one key, one per offered QPS (``target_qps``).
    ``result_validity`` is LoadGen's VALID / INVALID for the run the figures come from and
    ``invalid_reason`` says why not; an INVALID row's figures are measurements LoadGen
    did not accept, never to be quoted without that mark. Server: ``best_qps`` is the
    highest offered QPS whose p99 stayed under ``latency_bound_ms`` (LoadGen's
    performance constraint), the latencies are that run's; ``status`` BOUND_NOT_MET when no
    offered QPS met it (figures empty). Offline / Server: ``samples_per_sec`` LoadGen's
    samples per second (Server: completed). SingleStream: queries per second with LoadGen's
    overhead; ``early_stopping_p90_ms`` / ``_p99_ms`` its early-stopping estimates.
    MultiStream: the latencies are per query (all ``samples_per_query`` samples done).
    Latencies in ms; ``padded_fraction``: padded rows / rows the engine computed.
    """

    variant: str
    batch_policy: str
    scenario: str
    device: str
    status: str = OK
    result_validity: str | None = None
    invalid_reason: str | None = None
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    engine_batch_size: int | None = None
    latency_bound_ms: float | None = None
    target_qps: float | None = None
    best_qps: float | None = None
    samples_per_sec: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p97: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_p99_9: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_min: float | None = None
    latency_ms_max: float | None = None
    early_stopping_p90_ms: float | None = None
    early_stopping_p99_ms: float | None = None
    perf_constraints_met: bool | None = None
    min_duration_met: bool | None = None
    min_queries_met: bool | None = None
    early_stopping_met: bool | None = None
    early_stopping_result: str | None = None
    query_count: int | None = None
    overlatency_query_count: int | None = None
    mean_batch_size: float | None = None
    padded_fraction: float | None = None
    engine_ms_per_batch: float | None = None
    search_points: int | None = None
    samples_per_query: int | None = None
    min_duration_ms: int | None = None
    min_query_count: int | None = None
    num_samples: int | None = None
    data: str | None = None
    log_dir: str | None = None
    device_name: str | None = None
    machine_kind: str | None = None  # measure.env.machine_kind: what decides speed
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
    mlperf_loadgen: str | None = None
    measured_at: str | None = None

    @property
    def key(self) -> tuple:
        """(variant, batch_policy, scenario, device): a rerun replaces every older row of it
        (in the points file: all the points of the earlier search)."""
        return (self.variant, self.batch_policy, self.scenario, self.device)

    @property
    def valid(self) -> bool:
        return self.result_validity == VALID

    @property
    def mark(self) -> str:
        """"" for a VALID row, else "INVALID (reason)": what must stand beside its figures."""
        if self.valid:
            return ""
        return f"{INVALID} ({self.invalid_reason})" if self.invalid_reason else INVALID

    def as_csv(self) -> dict[str, str]:
        """Column -> text: floats to 3 decimals (ms, QPS), booleans as true/false, None empty."""
        out = {}
        for column in dataclasses.fields(self):
            value = getattr(self, column.name)
            if value is None:
                out[column.name] = ""
            elif isinstance(value, bool):
                out[column.name] = "true" if value else "false"
            elif isinstance(value, float):
                out[column.name] = f"{value:.3f}"
            else:
                out[column.name] = str(value)
        return out

    @classmethod
    def from_csv(cls, record: dict[str, str]) -> LoadGenRow:
        """The row a CSV line holds; ValueError naming the column for a bad value."""
        values: dict[str, object] = {}
        for column in dataclasses.fields(cls):
            text = record.get(column.name)
            if text is None or text == "":
                continue
            kind = str(column.type)
            try:
                if "bool" in kind:
                    values[column.name] = text.strip().lower() == "true"
                elif "int" in kind:
                    values[column.name] = int(text)
                elif "float" in kind:
                    values[column.name] = float(text)
                else:
                    values[column.name] = text
            except ValueError:
                raise ValueError(f"column {column.name}: {text!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]


COLUMNS = tuple(column.name for column in dataclasses.fields(LoadGenRow))


def read_loadgen_rows(path: Path) -> list[LoadGenRow]:
    """The rows of a loadgen CSV ([] when the file does not exist); UserError naming the
    file and line for one that is not a loadgen CSV."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            records = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{path} is not a readable CSV ({error}): pass a {LOADGEN_RESULTS_FILE} written by densenet-opt loadgen") from None
    rows = []
    for line, record in enumerate(records, start=2):
        try:
            rows.append(LoadGenRow.from_csv(record))
        except (TypeError, ValueError) as error:
            raise UserError(f"{path}, line {line}: {error}; pass a {LOADGEN_RESULTS_FILE} written by densenet-opt loadgen") from None
    return rows


def write_loadgen_rows(path: Path, rows: list[LoadGenRow]) -> None:
    """Merge ``rows`` into the CSV at ``path`` (an older row with the same key is replaced)
    and write the whole file atomically (atomic.write_atomic: a reader or a crash sees the
    old file or the new one). Raises UserError when it cannot be written or read."""
    keys = {row.key for row in rows}
    kept = [row for row in read_loadgen_rows(path) if row.key not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(row.as_csv() for row in [*kept, *rows])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(Path(path), buffer.getvalue(), option=OUTPUT_OPTION)


def figure(value: float | None, row: LoadGenRow, unit: str = "") -> str:
    """``value`` as text for a table, marked "INVALID (reason)" when its run was: the one
    way figures are printed, so an INVALID figure never appears bare."""
    text = "-" if value is None else f"{value:.1f}{unit}"
    return f"{text} {row.mark}".rstrip() if value is not None else text
