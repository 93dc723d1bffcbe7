"""Stored baselines, one directory per machine kind: pytest-benchmark's absolute times and
the speedups over the baseline variant.

A figure of speed belongs to a machine kind (measure/env.py, machine_kind: CPU model,
the instruction-set features that pick kernels, cores; or GPU and compute capability):
int8 and bf16 speedups differ by 2-3x between kinds. So every kind stores its own files
under BASELINE_DIR/KIND/: pytest-benchmark's storage (its own per-machine-id folders,
which only name OS, Python and word size), ``speedups-DEVICE.json`` (with the kind and
the software versions they were measured with), and optionally the kind's stored sweep
(``DEVICE-sweep/``) and config times. Files an older version stored at the top of
BASELINE_DIR name no kind: they are never compared for speed.

BASELINE_DIR is --baseline-dir: the user's data, not the package's, so its default is
``benchmarks_baseline`` in the current directory (the repository's own when run from its
root). A kind's budget overrides are package data (budgets.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_benchmark.stats import Stats
from pytest_benchmark.utils import get_machine_id

from densenet_opt import atomic
from densenet_opt.errors import UserError
from densenet_opt.measure.env import SOFTWARE, machine_kind
from densenet_opt.measure.timing import parse_per_round, too_contended
from densenet_opt.report import BASELINE, RESULTS_FILE, Row, with_speedups, write_rows

if TYPE_CHECKING:
    from densenet_opt.verdict import Verdict

# What a failed write tells the user to change.
BASELINE_OPTION = "--baseline-dir"


# The per-run pytest-benchmark file name: NNNN_DEVICE.json in a machine-id folder.
RUN_GLOB = "[0-9][0-9][0-9][0-9]_*.json"


def kind_dir(baseline_dir: Path, kind: str) -> Path:
    """Where machine kind ``kind`` keeps its baselines: BASELINE_DIR/KIND/."""
    return Path(baseline_dir) / kind


def this_kind_dir(baseline_dir: Path, device: str) -> Path:
    """The kind_dir of this machine's kind for ``device`` (measure.env.machine_kind)."""
    return kind_dir(baseline_dir, machine_kind(device))


class BaselineMissing(UserError):
    """--require-baseline, and this machine kind has no stored baseline: exit 1."""


def no_baseline_line(baseline_dir: Path, device: str) -> str:
    """The one line a gate gives when this machine kind has no stored ``device`` baseline
    in ``baseline_dir``: the kind, the kinds that are stored, files of no kind, and the
    command that stores one; where ``baseline_dir`` does not exist, that it does not and
    how to point at one."""
    kind = machine_kind(device)
    store = f"store one with `nox -s {'gpu_bench' if device == 'cuda' else 'bench'} -- --save-baseline`"
    if not Path(baseline_dir).is_dir():
        return (f"no stored {device} baseline for this machine kind, {kind}: {baseline_dir} does not exist (the default "
                "--baseline-dir is benchmarks_baseline/ in the current directory: run from the repository root or pass "
                f"--baseline-dir); speed is not compared; {store}")
    stored = stored_kinds(baseline_dir, device)
    unknown = files_of_no_kind(baseline_dir, device)
    return (f"no stored {device} baseline for this machine kind, {kind}, in {baseline_dir} (stored kinds: "
            f"{', '.join(stored) or 'none'}" + (f"; {len(unknown)} file(s) of an older version at its top, of unknown "
                                                "kind, never compared" if unknown else "")
            + f"): speed is not compared; {store}")


def speedups_file(device: str, directory: Path) -> Path:
    """``directory``'s stored speedups for ``device`` (``directory``: a kind_dir)."""
    return directory / f"speedups-{device}.json"


def stored_runs(directory: Path, device: str) -> list[Path]:
    """``device``'s pytest-benchmark runs stored in ``directory`` (a kind_dir), in any of
    its machine-id folders, oldest first (by run number)."""
    runs = Path(directory).glob(f"*/{RUN_GLOB}")
    return sorted((p for p in runs if p.name.endswith(f"_{device}.json")), key=lambda p: (p.name, str(p)))


def has_baseline(directory: Path, device: str) -> bool:
    """Whether ``directory`` (a kind_dir) stores anything of ``device`` to compare with."""
    return speedups_file(device, directory).exists() or bool(stored_runs(directory, device))


def stored_kinds(baseline_dir: Path, device: str) -> list[str]:
    """The machine kinds with a stored ``device`` baseline in ``baseline_dir``."""
    if not Path(baseline_dir).is_dir():
        return []
    return sorted(p.name for p in Path(baseline_dir).iterdir() if p.is_dir() and has_baseline(p, device))


def files_of_no_kind(baseline_dir: Path, device: str) -> list[Path]:
    """``device``'s baseline files an older version stored at the top of ``baseline_dir``,
    before baselines were kept per kind: their kind is unknown, they are never compared."""
    top = speedups_file(device, Path(baseline_dir))
    return ([top] if top.exists() else []) + stored_runs(baseline_dir, device)


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


def speedup_rounds(rows: Iterable[Row]) -> dict[str, dict[str, list[float]]]:
    """{variant: {batch size as text: per-round paired speedups}} of the paired rows among
    ``rows`` (the caller filters by device): what the gate's interval resamples."""
    result: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row.variant != BASELINE and row.measured and row.speedup_per_round:
            result.setdefault(row.variant, {})[str(row.batch_size)] = parse_per_round(row.speedup_per_round)
    return result


def save_speedups(rows: Sequence[Row], device: str, path: Path) -> dict[str, dict[str, float]]:
    """Store the speedups of ``device``'s rows in ``path``, atomically, with the device_name
    they were measured on; returns them. Raises UserError when no variant was measured
    beside the baseline, when the rows come from several machines (a baseline is one
    machine's), or when ``path`` cannot be written (disk full, read-only)."""
    on_device = [r for r in rows if r.device == device]
    named = sorted({r.machine for r in on_device if r.machine})
    if len(named) > 1:
        raise UserError(f"the {device} rows come from several machines ({', '.join(named)}): "
                        "store a baseline from one machine's sweep, not from a merged fleet sweep")
    measured = speedups(on_device)
    if not measured:
        raise UserError(f"no variant was measured beside the baseline on {device}: nothing to store in {path}")
    first = next(r for r in on_device if r.measured)
    document = {"device": device, "machine_kind": first.machine_kind, "measured_on": first.device_name,
                "software": software_of(first), "speedup_over_baseline": measured,
                "speedup_per_round": speedup_rounds(on_device)}
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


def load_speedup_rounds(path: Path) -> dict[str, dict[str, list[float]]]:
    """The per-round speedups a stored speedups file kept ({} for files of versions that
    kept none); read after load_speedups checked the file. Raises UserError for rounds that
    are not positive finite numbers."""
    stored = json.loads(path.read_text()).get("speedup_per_round") or {}
    try:
        rounds = {str(v): {str(b): [float(x) for x in xs] for b, xs in by_size.items()} for v, by_size in stored.items()}
    except (TypeError, AttributeError, ValueError) as error:
        raise UserError(f"stored speedups {path}: speedup_per_round is not a table of numbers ({error!r}): "
                        "restore the file from git or save a new baseline") from None
    if any(not math.isfinite(x) or x <= 0 for by_size in rounds.values() for xs in by_size.values() for x in xs):
        raise UserError(f"stored speedups {path}: speedup_per_round holds a figure that is not a positive finite "
                        "speedup: restore the file from git or save a new baseline")
    return rounds


def sweep_file(device: str, directory: Path) -> Path:
    """The stored sweep of ``device`` in ``directory`` (a kind_dir): the results CSV the
    tables of that kind in README.md and docs/results/KIND.md are generated from (render.markdown.stored_sweep_tables)."""
    return directory / f"{device}-sweep" / RESULTS_FILE


def save_sweep(rows: Sequence[Row], device: str, directory: Path) -> Path:
    """Store ``device``'s rows as ``directory``'s sweep (sweep_file), atomically; returns the
    file. Raises UserError when it cannot be written (disk full, read-only)."""
    path = sweep_file(device, directory)
    write_rows(path, [r for r in rows if r.device == device])
    return path


def software_of(row: Row) -> dict[str, str]:
    """{package: version} of what measured ``row`` (its SOFTWARE columns that are set)."""
    return {name: getattr(row, name) for name in SOFTWARE if getattr(row, name)}


def stored_software(path: Path) -> dict[str, str]:
    """The software versions a stored speedups file was measured with ({} for files of
    versions that did not record them); read after load_speedups checked the file."""
    software = json.loads(path.read_text()).get("software")
    return {str(k): str(v) for k, v in software.items()} if isinstance(software, dict) else {}


def software_changes(stored: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """"torch 2.14.1 -> 2.15.0" for each package whose version differs (one side may lack it)."""
    return [f"{name} {stored.get(name) or 'none'} -> {now.get(name) or 'none'}"
            for name in SOFTWARE if (stored.get(name) or None) != (now.get(name) or None) and name in {*stored, *now}]


def speedup_verdicts(
    rows: Sequence[Row], device: str, stored: Mapping[str, Mapping[str, float]], max_drop: float,
    judged: Collection[tuple[str, int]] | None = None, stored_rounds: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> list[Verdict]:
    """The verdict (densenet_opt/verdict.py) on each config of ``device`` with a stored
    speedup (``stored`` as load_speedups returns it; ``stored_rounds`` as load_speedup_rounds
    does, {} or None for a file that kept no rounds): this run's per-round paired speedups
    (or its one unpaired speedup, recomputed from the baseline row: report.with_speedups)
    against the stored ones, ``max_drop`` the threshold (a fraction); a row whose pairs
    were mostly contended (timing.too_contended) is NOT_JUDGED. ``judged``: the
    (variant, batch size) configs to judge (None: all); the other rows only pair."""
    from densenet_opt.verdict import judge  # scipy: only when a gate compares

    stored_rounds = stored_rounds or {}
    verdicts = []
    for row in with_speedups(r for r in rows if r.device == device):
        if judged is not None and (row.variant, row.batch_size) not in judged:
            continue
        before = stored.get(row.variant, {}).get(str(row.batch_size))
        if row.variant == BASELINE or row.speedup_vs_baseline is None or before is None:
            continue
        now = parse_per_round(row.speedup_per_round) or row.speedup_vs_baseline
        then = stored_rounds.get(row.variant, {}).get(str(row.batch_size)) or before
        contended = too_contended(row.rounds or 0, row.contended_pairs or 0)
        verdicts.append(judge(row.variant, row.batch_size, now, then, max_drop, contended=contended))
    return verdicts


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


def stored_configs(directory: Path, device: str) -> set[tuple[str, int]]:
    """The (variant, batch size) configs of ``device``'s newest pytest-benchmark run in
    ``directory`` (a kind_dir) for this machine id: what pytest-benchmark compares
    latency with (check_benchmark_storage has checked the file)."""
    runs = [run for run in check_benchmark_storage(directory) if run.stem.endswith(f"_{device}")]
    configs = set()
    for benchmark in json.loads(runs[-1].read_text())["benchmarks"] if runs else ():
        param = (benchmark.get("params") or {}).get("engine_config") if isinstance(benchmark, dict) else None
        if isinstance(param, list) and len(param) == 2:
            configs.add((str(param[0]), int(param[1])))
    return configs
