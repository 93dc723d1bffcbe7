"""One sweep over every visible GPU: one process per GPU, results merged into one CSV and one JSON.

pytest-benchmark turns itself off under pytest-xdist, so parallelism comes from whole
sweeps instead: each GPU gets a process pinned to it with CUDA_VISIBLE_DEVICES that runs the sweep
(runner.main, its options as JSON on standard input) on its share of the (variant, batch size) configs, into its own
directory under OUTPUT_DIR/shards/, and the parent merges what they wrote. With one GPU,
or on the CPU, it is a plain sweep.

Configs of one variant stay together where the GPU count allows, because a process
builds (exports, compiles, quantizes) a variant once and measures its accuracy once.

``densenet-opt sweep-cluster`` (cluster.py) runs the same shard process as Ray tasks on
several machines, planned by ``plan_shards`` and merged by ``merge_results``: rows are keyed
by machine, so several machines' rows share one results file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import get_machine_id

from densenet_opt import atomic, benchmark_session, gate
from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError
from densenet_opt.measure.env import KIND_VARIABLE, machine_kind, machine_name
from densenet_opt.report import BENCHMARK_JSON, OUTPUT_OPTION, RESULTS_FILE, Row, read_rows, utc_timestamp, with_speedups, write_rows

SHARDS_DIR = "shards"


@dataclass(frozen=True)
class Shard:
    """One ``densenet-opt sweep`` process: these variants at these batch sizes, on one GPU."""

    gpu: str  # the CUDA_VISIBLE_DEVICES entry: an index, or a GPU-/MIG- UUID
    variants: tuple[str, ...]
    batch_sizes: tuple[int, ...]

    @property
    def configs(self) -> list[tuple[str, int]]:
        return [(variant, size) for variant in self.variants for size in self.batch_sizes]


# ---------------------------------------------------------------------------------------
# Planning


def visible_gpus(environ: Mapping[str, str] | None = None, device_count: Callable[[], int] | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries for its children."""
    environ = os.environ if environ is None else environ
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count
    count = device_count()  # already honours CUDA_VISIBLE_DEVICES, including entries CUDA rejects
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


def parse_gpus(text: str, environ: Mapping[str, str] | None = None, device_count: Callable[[], int] | None = None) -> list[str]:
    """``all`` (every visible GPU) or a comma-separated list of CUDA_VISIBLE_DEVICES entries."""
    if text.strip() in ("", "all"):
        return visible_gpus(environ, device_count)
    gpus = list(dict.fromkeys(entry.strip() for entry in text.split(",") if entry.strip()))
    if not gpus:
        raise UserError(f"--gpus {text!r} names no GPU: give all, or indices such as 0,1")
    return gpus


def plan_shards(variants: Sequence[str], batch_sizes: Sequence[int], gpus: Sequence[str]) -> list[Shard]:
    """Share the configs out among ``gpus``; several shards on one GPU run one after another.

    Work units are whole variants; while there are fewer units than GPUs, the unit with
    the most batch sizes is split in two, alternating sizes so that both halves get small
    and large batches. Units go to the least loaded GPU, largest first, and units of one
    GPU that share their batch sizes become one process.
    """
    variants, batch_sizes = tuple(variants), tuple(batch_sizes)
    if not variants or not batch_sizes:
        return []
    if len(gpus) <= 1:
        return [Shard(gpus[0] if gpus else "", variants, batch_sizes)]
    units = [(variant, batch_sizes) for variant in variants]
    while len(units) < len(gpus):
        widest = max(range(len(units)), key=lambda i: len(units[i][1]))
        variant, sizes = units[widest]
        if len(sizes) < 2:
            break
        units[widest : widest + 1] = [(variant, sizes[0::2]), (variant, sizes[1::2])]
    loads = {gpu: 0 for gpu in gpus}
    assigned: dict[str, list[tuple[str, tuple[int, ...]]]] = {gpu: [] for gpu in gpus}
    for variant, sizes in sorted(units, key=lambda unit: -len(unit[1])):  # stable: ties keep sweep order
        gpu = min(gpus, key=lambda g: loads[g])
        assigned[gpu].append((variant, sizes))
        loads[gpu] += len(sizes)
    shards = []
    for gpu in gpus:
        by_sizes: dict[tuple[int, ...], list[str]] = {}
        for variant, sizes in assigned[gpu]:
            by_sizes.setdefault(tuple(sorted(sizes, key=batch_sizes.index)), []).append(variant)
        for sizes, names in by_sizes.items():
            shards.append(Shard(gpu, tuple(sorted(names, key=variants.index)), sizes))
    return shards


# ---------------------------------------------------------------------------------------
# Merging


def merge_results(sources: Iterable[Path], target: Path) -> list[Row]:
    """Upsert every row of ``sources`` into ``target`` (rows of configs not measured now stay,
    as in a plain sweep); a later source wins for the same key (variant, batch size,
    device, machine: rows of two machines never replace each other; see Row.replaces) and
    moves to the end, as upsert_row does. Speedups are recomputed over the merged rows
    (report.with_speedups, per machine and device): a shard without the baseline variant
    could not compute its own. Returns the rows written; a missing source is skipped.
    Raises UserError for a source with a bad line, or when ``target`` cannot be written."""
    merged = read_rows(target)
    for source in sources:
        for row in read_rows(source):
            merged = [r for r in merged if not row.replaces(r)]
            merged.append(row)
    rows = with_speedups(merged)
    write_rows(target, rows)
    return rows


def merge_benchmark_json(sources: Iterable[Path], target: Path) -> dict | None:
    """One pytest-benchmark JSON from several runs of the same machine: the ``benchmarks``
    lists joined (a later run wins for the same test), the first run's machine_info,
    commit_info, datetime and version kept. None when no source exists. Raises UserError
    for a source that is not a pytest-benchmark JSON, or when ``target`` cannot be written."""
    documents = []
    for source in sources:
        if not source.is_file():
            continue
        try:
            document = json.loads(source.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{source} is not valid JSON ({error}): that shard's run did not finish; see its sweep.log") from None
        if not isinstance(document, dict) or not isinstance(document.get("benchmarks"), list):
            raise UserError(f"{source} is not a pytest-benchmark JSON (no benchmarks list): see its shard's sweep.log")
        documents.append(document)
    if not documents:
        return None
    benchmarks: dict[str, dict] = {}
    for document in documents:
        for benchmark in document["benchmarks"]:
            name = benchmark.get("fullname") or benchmark.get("name")
            benchmarks.pop(name, None)
            benchmarks[name] = benchmark
    merged = {**documents[0], "benchmarks": list(benchmarks.values())}
    atomic.write_text(target, json.dumps(merged, indent=4) + "\n", option=OUTPUT_OPTION)
    return merged


# ---------------------------------------------------------------------------------------
# Running


def shard_dirs(output_dir: Path, shards: Sequence[Shard]) -> list[Path]:
    counts: dict[str, int] = {}
    names = []
    for shard in shards:
        counts[shard.gpu] = counts.get(shard.gpu, 0) + 1
        names.append(output_dir / SHARDS_DIR / f"gpu{_safe(shard.gpu)}-{counts[shard.gpu]}")
    return names


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def seed_shard(results: Path, shard: Shard, device: str, directory: Path, machine: str | None = None) -> None:
    """Give a shard the rows already measured for its own configs (on ``machine``, or by
    no named machine; any machine when None), so --resume and upserts behave as they do
    in one directory. Raises UserError when ``results`` holds a bad line or the shard's
    CSV cannot be written."""
    configs = {(variant, size, device) for variant, size in shard.configs}
    rows = [row for row in read_rows(results)
            if row.config in configs and (machine is None or row.machine in (None, machine))]
    directory.mkdir(parents=True, exist_ok=True)
    if rows:
        write_rows(directory / RESULTS_FILE, rows)


def shard_request(options: SweepOptions, shard: Shard, directory: Path, pytest_args: Sequence[str]) -> str:
    """What one shard's process reads on standard input (runner.main): its share of the
    options, as data. A shard compares latency with the stored run itself; the speedups are
    checked and the baseline stored once, by the parent, from the merged results."""
    own = dataclasses.replace(options, variants=shard.variants, batch_sizes=shard.batch_sizes,
                              output_dir=directory, save_baseline=False)
    return json.dumps({"options": own.to_dict(), "pytest_args": list(pytest_args)})


SHARD_COMMAND = ("-m", "densenet_opt.runner")


def run_shards(commands: Sequence[tuple[Shard, Path, str]], *, python: str = sys.executable,
               environ: Mapping[str, str] | None = None) -> list[int]:
    """Run one process per (shard, directory, request), the ones of one GPU in turn and the
    GPUs at once; each process sees only its GPU. Output goes to DIR/sweep.log and, prefixed
    with the GPU, to stdout. Returns each process's exit code."""
    environ = dict(os.environ if environ is None else environ)
    codes = [0] * len(commands)
    printing = threading.Lock()

    def run_gpu(gpu: str) -> None:
        for index, (shard, directory, request) in enumerate(commands):
            if shard.gpu != gpu:
                continue
            with printing:
                sizes = ",".join(map(str, shard.batch_sizes))
                print(f"[gpu {gpu}] {', '.join(shard.variants)} at batch sizes {sizes} -> {directory}", flush=True)
            with (directory / "sweep.log").open("w") as log:
                process = subprocess.Popen([python, *SHARD_COMMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True, env={**environ, "CUDA_VISIBLE_DEVICES": gpu})
                process.stdin.write(request)
                process.stdin.close()
                for line in process.stdout:
                    log.write(line)
                    with printing:
                        print(f"[gpu {gpu}] {line}", end="", flush=True)
                codes[index] = process.wait()

    threads = [threading.Thread(target=run_gpu, args=(gpu,)) for gpu in dict.fromkeys(s.gpu for s, _, _ in commands)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def sweep_on_gpus(
    options: SweepOptions, gpus: Sequence[str], pytest_args: Sequence[str],
    *, python: str = sys.executable, environ: Mapping[str, str] | None = None,
) -> int:
    """The sharded sweep; returns the exit code (the first failing shard's, or the gate's)."""
    started_at = utc_timestamp()
    shards = plan_shards(options.variants, options.batch_sizes, gpus)
    output_dir = options.output_dir
    shutil.rmtree(output_dir / SHARDS_DIR, ignore_errors=True)  # a stale shard would merge old rows back
    results = output_dir / RESULTS_FILE
    directories = shard_dirs(output_dir, shards)
    commands = []
    for shard, directory in zip(shards, directories, strict=True):
        seed_shard(results, shard, options.device, directory, machine_name(options.machine_label))
        commands.append((shard, directory, shard_request(options, shard, directory, pytest_args)))
    used = ", ".join(dict.fromkeys(s.gpu for s in shards))
    print(f"sweeping {len(shards)} shards on GPUs {used}; logs in {output_dir / SHARDS_DIR}", flush=True)
    environ = dict(os.environ if environ is None else environ)
    if options.gated or torch.cuda.is_available():
        # Each shard sees one GPU: it files its rows and its gate under the kind of all of them.
        environ[KIND_VARIABLE] = machine_kind(options.device)
    codes = run_shards(commands, python=python, environ=environ)
    merge_results([d / RESULTS_FILE for d in directories], results)
    merged_json = merge_benchmark_json([d / BENCHMARK_JSON for d in directories], output_dir / BENCHMARK_JSON)
    print(f"\nmerged results: {results}" + ("" if merged_json else " (no shard wrote a benchmark JSON)"))
    failed = [f"{', '.join(s.variants)} on GPU {s.gpu} (exit {c}, log {d / 'sweep.log'})"
              for (s, d, _), c in zip(commands, codes, strict=True) if c != 0]
    for failure in failed:
        print(f"shard failed: {failure}")
    code = next((c for c in codes if c != 0), 0)
    if options.save_baseline and code == 0 and merged_json and gate.baseline_refusal(options) is None:
        store_benchmark_run(merged_json, options.device, gate.kind_baseline(options))  # else close_sweep says why not
    if gate.close_sweep(options, measured_ok=code == 0, started_at=started_at):
        code = code or 1
    return code


def store_benchmark_run(merged_json: dict, device: str, directory: Path) -> Path:
    """What ``sweep --save-baseline`` stores of pytest-benchmark's, from the merged run: its
    per-machine JSON, named as --benchmark-save names it (the speedups are stored by
    gate.close_sweep). Raises UserError when it cannot be written (disk full, read-only)."""
    stored = {**merged_json, "benchmarks": [
        {**b, "stats": {k: v for k, v in b.get("stats", {}).items() if k != "data"}} for b in merged_json["benchmarks"]
    ]}
    storage = FileStorage(directory, logging.getLogger(__name__), default_machine_id=get_machine_id())
    path = benchmark_session.store_run(storage, stored, device)
    print(f"stored the merged run as this machine kind's {device} baseline: {path}")
    return path
