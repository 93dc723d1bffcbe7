"""Stored baselines: pytest-benchmark's absolute times, and portable speedups.

Absolute times only compare on the same machine, so pytest-benchmark keys its storage by
machine. A variant's speedup over the baseline variant measured in the same run carries
across machines of a kind, so it is stored per device and checked even where no absolute
baseline exists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from pytest_benchmark.stats import Stats
from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import get_machine_id, safe_dumps

from densenet_opt import atomic
from densenet_opt.errors import UserError
from densenet_opt.report import BASELINE, Row, with_speedups

BASELINE_DIR = Path(__file__).resolve().parent.parent / "benchmarks_baseline"
DEFAULT_MAX_REGRESSION = "mean:25%"  # runs on shared 2-core machines vary by 10-15%
DEFAULT_MAX_SPEEDUP_DROP = 0.25
# What a failed write tells the user to change.
BASELINE_OPTION = "--baseline-dir"
OUTPUT_OPTION = "--output-dir"


def speedups_file(device: str, directory: Path = BASELINE_DIR) -> Path:
    return directory / f"speedups-{device}.json"


def speedups(rows: Iterable[Row]) -> dict[str, dict[str, float]]:
    """{variant: {batch size as text: speedup_vs_baseline}} for one device's rows (the
    caller filters by device), every variant but the baseline; the speedups are those of
    report.with_speedups (baseline latency / variant latency, same batch size, device and
    device_name and machine, 3 digits). Configs without a baseline row are left out."""
    result: dict[str, dict[str, float]] = {}
    for row in with_speedups(rows):
        if row.variant != BASELINE and row.speedup_vs_baseline is not None:
            result.setdefault(row.variant, {})[str(row.batch_size)] = row.speedup_vs_baseline
    return result


def save_speedups(rows: Sequence[Row], device: str, path: Path) -> dict[str, dict[str, float]]:
    """Store the speedups of ``device``'s rows in ``path``, atomically, with the device_name
    they were measured on; returns them. Raises UserError when no variant was measured
    beside the baseline, when the rows come from several machines (a baseline is one
    machine's), or when ``path`` cannot be written (disk full, read-only)."""
    named = sorted({r.machine for r in rows if r.device == device and r.machine})
    if len(named) > 1:
        raise UserError(f"the {device} rows come from several machines ({', '.join(named)}): "
                        "store a baseline from one machine's sweep, not from a merged fleet sweep")
    measured = speedups(r for r in rows if r.device == device)
    if not measured:
        raise UserError(f"no variant was measured beside the baseline on {device}: nothing to store in {path}")
    machine = next(r.device_name for r in rows if r.device == device)
    document = {"device": device, "measured_on": machine, "speedup_over_baseline": measured}
    atomic.write_text(path, json.dumps(document, indent=2, sort_keys=True) + "\n", option=BASELINE_OPTION)
    return measured


def load_speedups(path: Path) -> dict[str, dict[str, float]]:
    if not path.is_file():
        raise UserError(f"stored speedups {path} do not exist: save a baseline first (densenet-opt sweep --save-baseline, with the same --baseline-dir)")
    try:
        document = json.loads(path.read_text())
        stored = document["speedup_over_baseline"]
        speedups = {variant: {str(size): float(value) for size, value in by_size.items()} for variant, by_size in stored.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise UserError(f"stored speedups {path} are not a valid speedups file ({error!r}): restore it from git or save a new baseline") from None
    for variant, by_size in speedups.items():
        for size, value in by_size.items():
            # NaN, inf, 0 or a negative number would let that config never regress.
            if not math.isfinite(value) or value <= 0:
                raise UserError(f"stored speedups {path}: {variant} at batch {size} is {value}, not a positive finite "
                                "speedup: restore the file from git or save a new baseline")
    return speedups


def speedup_regressions(
    rows: Sequence[Row], device: str, stored: Mapping[str, Mapping[str, float]], max_drop: float
) -> list[str]:
    """Configs of ``device`` whose speedup fell below the stored one (``stored`` as
    load_speedups returns it) by more than ``max_drop`` (a fraction) AND by more than the
    measured noise: the interquartile range of the run's per-pair ratios (2 x
    ``speedup_spread``; 0 for an unpaired speedup). One sentence each."""
    problems = []
    for row in with_speedups(r for r in rows if r.device == device):
        now = row.speedup_vs_baseline
        before = stored.get(row.variant, {}).get(str(row.batch_size))
        if row.variant == BASELINE or now is None or before is None:
            continue
        noise = 2 * (row.speedup_spread or 0.0)
        if now < before * (1 - max_drop) and before - now > noise:
            measured = f"{now:.2f}x" + (f" (+-{row.speedup_spread:.2f}, paired)" if row.speedup_spread is not None else "")
            problems.append(
                f"{row.variant} at batch {row.batch_size}: speedup over baseline {measured}, stored {before:.2f}x "
                f"(more than {max_drop:.0%} lower, and beyond the measured noise)"
            )
    return problems


def check_benchmark_storage(storage: Path) -> list[Path]:
    """The stored pytest-benchmark runs for this machine; a corrupt one is named, and so is
    the newest run of a device (the one a gate compares with) in a format this
    pytest-benchmark cannot compare (older runs are left alone: storing a new one is the
    remedy)."""
    runs = sorted((storage / get_machine_id()).glob("[0-9][0-9][0-9][0-9]_*.json"))
    newest = {path.stem.partition("_")[2]: path for path in runs}
    for path in runs:
        try:
            document = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"stored benchmark {path} is not valid JSON ({error}): delete it or restore it from git") from None
        if not isinstance(document, dict) or not isinstance(document.get("benchmarks"), list) or not document["benchmarks"]:
            raise UserError(f"stored benchmark {path} holds no benchmarks: delete it or save a new baseline")
        for benchmark in document["benchmarks"] if path in newest.values() else ():
            stats = benchmark.get("stats") if isinstance(benchmark, dict) else None
            missing = [field for field in Stats.fields if not isinstance(stats, dict) or field not in stats]
            if missing:
                name = benchmark.get("name", "a benchmark") if isinstance(benchmark, dict) else "a benchmark"
                # pytest-benchmark's comparison table would end the run in a KeyError after measuring.
                raise UserError(f"stored benchmark {path} is not in the format of this pytest-benchmark (the stats of "
                                f"{name} lack {', '.join(missing)}): save a new baseline with --save-baseline, or delete it")
    return runs


def stored_device_name(run: Path) -> str | None:
    """The device a stored pytest-benchmark run was measured on (our rows ride in each
    benchmark's extra_info); None when the run does not say."""
    benchmarks = json.loads(run.read_text())["benchmarks"]
    extra = benchmarks[0].get("extra_info") if isinstance(benchmarks[0], dict) else None
    return extra.get("device_name") if isinstance(extra, dict) else None


def benchmark_document_bytes(document: Mapping) -> bytes:
    """A pytest-benchmark JSON document, serialised exactly as pytest-benchmark writes it."""
    return safe_dumps(document, ensure_ascii=True, indent=4).encode()


def write_benchmark_json(path: Path, document: Mapping) -> None:
    """pytest-benchmark's ``--benchmark-json`` file, written atomically (see
    ``route_benchmark_writes``). Raises UserError naming ``path`` when the disk is full or
    the directory read-only; an existing file is left intact."""
    atomic.write_bytes(Path(path), benchmark_document_bytes(document), option=OUTPUT_OPTION)


def store_run(storage: FileStorage, document: Mapping, name: str) -> Path:
    """What pytest-benchmark's ``FileStorage.save`` stores (``--benchmark-save NAME``: the
    next run number, in this machine's folder), written atomically. Returns the file.
    Raises UserError naming the file when the disk is full or the directory read-only."""
    # FileStorage numbers runs itself; --benchmark-compare finds them by that number.
    path = Path(storage.get(f"{storage._next_num}_{name}.json"))
    atomic.write_bytes(path, benchmark_document_bytes(document), option=BASELINE_OPTION)
    return path


def route_benchmark_writes(session, refusal: Callable[[], str | None] = lambda: None) -> None:
    """Make pytest-benchmark's session (``config._benchmarksession``) write its JSON report
    and its stored runs through ``write_atomic``: a full disk is then one sentence
    (UserError) and leaves no partial file, where pytest-benchmark's own writes leave a
    truncated file and end in a traceback. A run is not stored when ``refusal()`` gives a
    reason (a run timed under contention: gate.baseline_refusal, which also says so)."""
    if session.json:
        def save_json(document: Mapping) -> None:
            write_benchmark_json(Path(session.json), document)
            session.logger.info(f"Wrote benchmark data in: {session.json}", purple=True)

        session.save_json = save_json
    storage = session.storage
    if isinstance(storage, FileStorage):
        def save(document: Mapping, name: str) -> None:
            if refusal() is not None:
                return
            path = store_run(storage, document, name)
            session.logger.info(f"Saved benchmark data in: {path}")

        storage.save = save


class AnywhereFileStorage(FileStorage):
    """pytest-benchmark's FileStorage, whose ``location`` also works for storage outside the
    working directory: pytest-benchmark's raises ValueError there (pytest-benchmark issue
    #217), which ended a gate run from another directory in an INTERNALERROR."""

    @property
    def location(self) -> str:
        try:
            return str(self.path.relative_to(Path.cwd()))
        except ValueError:
            return str(self.path)


def locate_anywhere(storage: object) -> None:
    """Give a FileStorage made by pytest-benchmark the ``location`` of AnywhereFileStorage
    (pytest-benchmark makes its storage itself, from --benchmark-storage)."""
    if type(storage) is FileStorage:
        storage.__class__ = AnywhereFileStorage
