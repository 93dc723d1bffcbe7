"""Stored baselines: pytest-benchmark's absolute times, and portable speedups.

Absolute times only compare on the same machine, so pytest-benchmark keys its storage by
machine. A variant's speedup over the baseline variant measured in the same run carries
across machines of a kind, so it is stored per device and checked even where no absolute
baseline exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pytest_benchmark.utils import get_machine_id

from densenet_opt.errors import UserError
from densenet_opt.report import write_text_atomic
from densenet_opt.variants import BASELINE

BASELINE_DIR = Path(__file__).resolve().parent.parent / "benchmarks_baseline"
DEFAULT_MAX_REGRESSION = "mean:25%"  # runs on shared 2-core machines vary by 10-15%
DEFAULT_MAX_SPEEDUP_DROP = 0.25


def speedups_file(device: str, directory: Path = BASELINE_DIR) -> Path:
    return directory / f"speedups-{device}.json"


def speedups(rows: Iterable[Mapping[str, str]]) -> dict[str, dict[str, float]]:
    """{variant: {batch size: baseline latency / variant latency}} for one device's rows."""
    rows = list(rows)
    baseline = {r["batch_size"]: float(r["latency_ms_per_batch"]) for r in rows if r["optimization_technique"] == BASELINE}
    result: dict[str, dict[str, float]] = {}
    for row in rows:
        size = row["batch_size"]
        if row["optimization_technique"] != BASELINE and size in baseline:
            result.setdefault(row["optimization_technique"], {})[size] = round(
                baseline[size] / float(row["latency_ms_per_batch"]), 3
            )
    return result


def save_speedups(rows: list[Mapping[str, str]], device: str, path: Path) -> dict[str, dict[str, float]]:
    measured = speedups(r for r in rows if r["device"] == device)
    if not measured:
        raise UserError(f"no variant was measured beside the baseline on {device}: nothing to store in {path}")
    machine = next(r["device_name"] for r in rows if r["device"] == device)
    document = {"device": device, "measured_on": machine, "speedup_over_baseline": measured}
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return measured


def load_speedups(path: Path) -> dict[str, dict[str, float]]:
    if not path.is_file():
        raise UserError(f"stored speedups {path} do not exist: save a baseline first (densenet-opt sweep --save-baseline NAME)")
    try:
        document = json.loads(path.read_text())
        stored = document["speedup_over_baseline"]
        return {variant: {str(size): float(value) for size, value in by_size.items()} for variant, by_size in stored.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise UserError(f"stored speedups {path} are not a valid speedups file ({error!r}): restore it from git or save a new baseline") from None


def speedup_regressions(
    rows: list[Mapping[str, str]], device: str, stored: Mapping[str, Mapping[str, float]], max_drop: float
) -> list[str]:
    """Configs whose speedup fell more than ``max_drop`` (a fraction) below the stored one."""
    problems = []
    for variant, by_size in speedups(r for r in rows if r["device"] == device).items():
        for size, now in by_size.items():
            before = stored.get(variant, {}).get(size)
            if before is not None and now < before * (1 - max_drop):
                problems.append(
                    f"{variant} at batch {size}: speedup over baseline {now:.2f}x, stored {before:.2f}x "
                    f"(more than {max_drop:.0%} lower)"
                )
    return problems


def check_benchmark_storage(storage: Path) -> list[Path]:
    """The stored pytest-benchmark runs for this machine; a corrupt one is named."""
    runs = sorted((storage / get_machine_id()).glob("[0-9][0-9][0-9][0-9]_*.json"))
    for path in runs:
        try:
            document = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"stored benchmark {path} is not valid JSON ({error}): delete it or restore it from git") from None
        if not isinstance(document, dict) or not isinstance(document.get("benchmarks"), list) or not document["benchmarks"]:
            raise UserError(f"stored benchmark {path} holds no benchmarks: delete it or save a new baseline")
    return runs


def stored_device_name(run: Path) -> str | None:
    """The device a stored pytest-benchmark run was measured on (our rows ride in each
    benchmark's extra_info); None when the run does not say."""
    benchmarks = json.loads(run.read_text())["benchmarks"]
    extra = benchmarks[0].get("extra_info") if isinstance(benchmarks[0], dict) else None
    return extra.get("device_name") if isinstance(extra, dict) else None
