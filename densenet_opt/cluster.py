"""Sweeps across a fleet on Ray: one Ray task per (machine, device) shard, rows keyed by machine.

``densenet-opt sweep-cluster`` runs the same sweep on several machines (an A10 and an H100
server, a Graviton and an EPYC node) and merges every machine's rows into one results file,
each row carrying its ``machine`` column, then writes the cross-device report
(render/fleet.py). A machine is a label: the nodes of that machine offer the Ray custom
resource ``machine:LABEL`` (``ray start ... --resources '{"machine:epyc": 1}'``), whose
amount is how many shards the machine runs at once (its GPUs; 1 for a CPU machine). A
shard's task asks for one unit of it, and for ``num_gpus=1`` on cuda (Ray then sets the
task's CUDA_VISIBLE_DEVICES), or ``accelerator_type`` when the machine spec names one.

A task runs exactly what one GPU shard of ``sweep-gpus`` runs (shard.py): the library sweep
in a subprocess (``python -m densenet_opt.runner``, its options as JSON on standard input),
so pytest-benchmark works as in a local run, in a temporary directory of the node; it
returns its results CSV, pytest-benchmark JSON and log as data (the driver may be on another
host). The driver plans with shard.plan_shards, merges with shard.merge_results (keyed by
machine) and writes, per shard, OUTPUT_DIR/shards/LABEL-K/. A shard whose task fails (its
node died, its worker was killed) is one printed line; the other shards' rows are kept.
``--resume`` hands each shard its machine's earlier rows: its sweep skips the configs that
have an ``ok`` row measured with this run's inputs (weights, images, options) and measures
the others, as ``densenet-opt sweep --resume`` does where the weights and images are.

Without an address, a local Ray instance is started whose one node offers every requested
machine's resource: the same code path on one machine, which is what the tests exercise.
``ray`` is imported only inside this module's functions (the optional ``cluster`` extra).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from densenet_opt import atomic, budgets
from densenet_opt.config import SweepOptions, default_cache_dir, parse_machine_label
from densenet_opt.errors import UserError
from densenet_opt.render import fleet
from densenet_opt.report import BENCHMARK_JSON, OUTPUT_OPTION, RESULTS_FILE, Row, csv_text, load_table, read_rows
from densenet_opt.shard import SHARD_COMMAND, SHARDS_DIR, Shard, merge_benchmark_json, merge_results, plan_shards

RESOURCE_PREFIX = "machine:"
INSTALL_HINT = "densenet-opt sweep-cluster needs Ray, which is not installed here: pip install -e .[cluster]"
SHARD_LOG = "sweep.log"
INTERRUPTED = "cancelled by Ctrl-C"
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class MachineSpec:
    """One entry of --machines, ``LABEL[:DEVICE[:ACCELERATOR_TYPE]]``: the label (the Ray
    resource machine:LABEL), the device (None: cuda where the machine's nodes offer GPUs to
    Ray, else cpu) and a Ray accelerator type such as A10G or H100 (None: any)."""

    label: str
    device: str | None = None
    accelerator_type: str | None = None


@dataclass(frozen=True)
class Machine:
    """A machine of the fleet as the driver plans it: ``slots`` is how many of its shards run
    at once (the amount of its machine:LABEL resource; at most its GPUs on cuda)."""

    label: str
    device: str
    slots: int = 1
    accelerator_type: str | None = None

    @property
    def resource(self) -> str:
        """The Ray custom resource its nodes offer: ``machine:LABEL``."""
        return RESOURCE_PREFIX + self.label


@dataclass(frozen=True)
class FleetShard:
    """One Ray task: ``shard``'s configs (variants x batch sizes) on ``machine``; ``index``
    numbers the machine's shards from 1 (its directory is OUTPUT_DIR/shards/LABEL-INDEX)."""

    machine: Machine
    shard: Shard
    index: int

    @property
    def name(self) -> str:
        return f"{self.machine.label}-{self.index}"

    @property
    def describe(self) -> str:
        """"baseline, pruned at batch 1, 8 on epyc (cpu)"."""
        sizes = ", ".join(map(str, self.shard.batch_sizes))
        return f"{', '.join(self.shard.variants)} at batch {sizes} on {self.machine.label} ({self.machine.device})"


@dataclass(frozen=True)
class ShardOutcome:
    """What came back of one shard: the task's result (``code``: the sweep's exit code, the
    texts of its files) or, when the task itself failed, ``failure``: why, in words."""

    shard: FleetShard
    code: int | None = None
    results_csv: str = ""
    benchmark_json: str | None = None
    log: str = ""
    host: str | None = None
    failure: str | None = None


# ---------------------------------------------------------------------------------------
# Planning


def parse_machines(text: str | None) -> list[MachineSpec]:
    """--machines: comma-separated ``LABEL[:DEVICE[:ACCELERATOR_TYPE]]`` (``epyc,a10:cuda:A10G``);
    [] for None, "" or ``all`` (every machine the cluster offers). Raises UserError for a
    bad label, an unknown device or a label given twice."""
    if text is None or text.strip() in ("", "all"):
        return []
    specs = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        label, _, rest = entry.partition(":")
        device, _, accelerator = rest.partition(":")
        label = parse_machine_label("--machines entry", label)
        if label is None:
            raise UserError(f"--machines entry {entry!r} has no label: give LABEL[:DEVICE[:ACCELERATOR_TYPE]], such as epyc or a10:cuda:A10G")
        if device and device not in DEVICES:
            raise UserError(f"--machines entry {entry!r} names device {device!r}: use cpu or cuda")
        specs.append(MachineSpec(label, device or None, accelerator or None))
    labels = [spec.label for spec in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"--machines names {repeated[0]} twice: give each machine once")
    return specs


def discover_machines(specs: Sequence[MachineSpec], nodes: Sequence[Mapping], device: str | None = None) -> list[Machine]:
    """The machines to sweep, from ``specs`` ([]: every ``machine:*`` resource offered) and
    the cluster's ``nodes`` (``ray.nodes()`` entries: ``Alive``, ``Resources``). ``device``
    (cpu/cuda; None: auto) applies where a spec names none; auto is cuda when the machine's
    nodes offer GPUs. Raises UserError naming the machine when no live node offers its
    resource, or cuda is asked of a machine without GPUs."""
    alive = [node for node in nodes if node.get("Alive", True)]
    if not specs:
        labels = sorted({name.removeprefix(RESOURCE_PREFIX) for node in alive for name in node.get("Resources", {})
                         if name.startswith(RESOURCE_PREFIX)})
        if not labels:
            raise UserError("no node of the Ray cluster offers a machine:LABEL resource: start each node with "
                            "ray start --resources '{\"machine:LABEL\": 1}', or pass --machines")
        specs = [MachineSpec(label) for label in labels]
    machines = []
    for spec in specs:
        resource = RESOURCE_PREFIX + spec.label
        offering = [node for node in alive if node.get("Resources", {}).get(resource, 0) > 0]
        if not offering:
            raise UserError(f"no live node of the Ray cluster offers the resource {resource}: start machine {spec.label}'s "
                            f"node with ray start --address HEAD:6379 --resources '{{\"{resource}\": 1}}'")
        amount = sum(node["Resources"][resource] for node in offering)
        gpus = sum(node["Resources"].get("GPU", 0) for node in offering)
        chosen = spec.device or device or ("cuda" if gpus else "cpu")
        if chosen == "cuda" and not gpus:
            raise UserError(f"machine {spec.label} is to sweep on cuda, but its nodes offer Ray no GPU: "
                            f"give it :cpu in --machines, or start its node with its GPUs")
        slots = max(1, int(amount))
        if chosen == "cuda":
            slots = max(1, min(slots, int(gpus)))
        machines.append(Machine(spec.label, chosen, slots, spec.accelerator_type))
    return machines


def plan_fleet(machines: Sequence[Machine], variants: Sequence[str], batch_sizes: Sequence[int]) -> list[FleetShard]:
    """Every machine's shards of the sweep: its configs shared out among the machine's slots
    by shard.plan_shards (whole variants where possible; several shards of one slot run one
    after another)."""
    planned = []
    for machine in machines:
        slots = [str(slot) for slot in range(machine.slots)]
        for shard in plan_shards(list(variants), list(batch_sizes), slots):
            planned.append(FleetShard(machine, shard, len([p for p in planned if p.machine == machine]) + 1))
    return planned


def earlier_rows(rows: Sequence[Row], fleet_shard: FleetShard) -> list[Row]:
    """The rows in ``rows`` of ``fleet_shard``'s machine, device and configs: what its sweep
    resumes from (--resume)."""
    configs = set(fleet_shard.shard.configs)
    return [row for row in rows if row.machine == fleet_shard.machine.label and row.device == fleet_shard.machine.device
            and (row.variant, row.batch_size) in configs]


def shard_request(options: SweepOptions, fleet_shard: FleetShard, pytest_args: Sequence[str], *, node_cache: bool,
                  resume_from: Sequence[Row] = ()) -> dict:
    """What one task receives: its share of the options as data (device, machine label,
    variants and batch sizes its own; no baseline gate: baselines are per machine), the
    pytest arguments, its name, whether to use the node's own cache directory
    (``node_cache``: --cache-dir was not given), the driver's thread variables, and with
    ``options.resume`` the earlier rows it resumes from (earlier_rows, as CSV text): its
    sweep, where the weights and images are, skips the configs measured with this run's
    inputs and measures the others again, naming the option that differs, as
    ``densenet-opt sweep --resume`` does."""
    own = dataclasses.replace(
        options, variants=fleet_shard.shard.variants, batch_sizes=fleet_shard.shard.batch_sizes,
        device=fleet_shard.machine.device, machine_label=fleet_shard.machine.label,
        save_baseline=False, compare_baseline=False,
    )
    return {"options": own.to_dict(), "pytest_args": list(pytest_args), "name": fleet_shard.name, "node_cache": node_cache,
            "threads": {name: os.environ.get(name) for name in THREAD_VARIABLES},
            "results_csv": csv_text(resume_from) if options.resume and resume_from else None}


# The variables that set the engines' thread pools, which Ray sets in its workers (1 for a
# task of num_cpus=1): a shard's sweep gets the driver's values (unset where it has none), so
# that it measures as `densenet-opt sweep` does on that machine, not on one thread.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ---------------------------------------------------------------------------------------
# The task (runs in a Ray worker on the machine's node)


def run_shard(request: Mapping, python: str | None = None) -> dict:
    """One shard, where Ray placed it: the sweep of ``request`` (shard_request) in a
    subprocess (``python -m densenet_opt.runner``; ``python`` defaults to this worker's
    interpreter) in a temporary directory, its output lines printed with the shard's name
    (Ray forwards them to the driver). Returns {"code": exit code, "results_csv": text,
    "benchmark_json": text or None, "log": text, "host": host name}: data, since the driver
    may be on another host."""
    with tempfile.TemporaryDirectory(prefix="densenet-opt-shard-") as directory:
        options = {**request["options"], "output_dir": directory}
        if request.get("results_csv"):  # the rows --resume starts from
            Path(directory, RESULTS_FILE).write_text(request["results_csv"], encoding="utf-8")
        if request.get("node_cache"):
            options["cache_dir"] = str(default_cache_dir())
        environ = dict(os.environ)
        for name, value in request.get("threads", {}).items():  # the driver's, not Ray's
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        process = subprocess.Popen([python or sys.executable, *SHARD_COMMAND], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ)
        process.stdin.write(json.dumps({"options": options, "pytest_args": list(request.get("pytest_args", []))}))
        process.stdin.close()
        log = []
        for line in process.stdout:
            log.append(line)
            print(f"[{request['name']}] {line}", end="", flush=True)
        code = process.wait()
        results = Path(directory) / RESULTS_FILE
        benchmark = Path(directory) / BENCHMARK_JSON
        return {
            "code": code,
            "results_csv": results.read_text() if results.is_file() else "",
            "benchmark_json": benchmark.read_text() if benchmark.is_file() else None,
            "log": "".join(log),
            "host": socket.gethostname(),
        }


# ---------------------------------------------------------------------------------------
# The driver


def import_ray():
    """The ``ray`` module; UserError with what to install when it is missing."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


def connect(ray, address: str | None, specs: Sequence[MachineSpec], *, device: str | None = None,
            num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:10001``), or,
    with none, start a local Ray instance whose node offers a machine:LABEL resource per
    spec: one unit, or one per local GPU for a spec on cuda (its device, else ``device``,
    else cuda when this machine has GPUs). Nothing when this process already joined one.
    Returns whether this call connected (the caller then disconnects). Raises UserError
    when the cluster cannot be reached."""
    if ray.is_initialized():
        return False
    unreachable = address and unreachable_reason(address)
    if unreachable:  # ray.init would retry for minutes, deaf to SIGTERM
        raise UserError(f"cannot reach the Ray cluster at {address} ({unreachable}): start it with ray start --head, "
                        "or pass the address ray start printed")
    try:
        if address:
            ray.init(address=address, include_dashboard=False)
        else:
            import torch

            gpus = torch.cuda.device_count()
            resources = {RESOURCE_PREFIX + s.label: float(gpus if (s.device or device or "cuda") == "cuda" and gpus else 1)
                         for s in specs}
            ray.init(num_cpus=num_cpus, resources=resources, include_dashboard=False)
    except (ConnectionError, TimeoutError, RuntimeError) as error:  # RuntimeError: a GCS that never answered
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"cannot reach the Ray cluster at {address} ({reason}): start it with ray start --head, "
                        "or pass the address ray start printed") from None
    return True


def unreachable_reason(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) over TCP
    within ``timeout_s`` seconds, or None when something does (or for ``auto``, which Ray
    resolves itself)."""
    target = address.removeprefix("ray://")
    if target == "auto" or "://" in target:
        return None
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host or "localhost", int(port)), timeout=timeout_s).close()
    except ValueError:
        return f"{port!r} is not a port: give HOST:PORT, ray://HOST:PORT or auto"
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def failure_reason(ray, error: BaseException) -> str:
    """Why a task failed, in words, from the exception ray.get raised."""
    exceptions = ray.exceptions
    first_line = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, exceptions.NodeDiedError):
        return "its node died"
    if isinstance(error, exceptions.WorkerCrashedError):
        return "the Ray worker running it died (killed, or out of memory)"
    if isinstance(error, exceptions.TaskCancelledError):
        return "it was cancelled"
    if isinstance(error, exceptions.OutOfMemoryError):
        return "Ray's memory monitor killed it: its node ran out of memory"
    if isinstance(error, exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        return f"the task raised {type(cause).__name__}: {cause}" if cause is not None else f"the task raised: {first_line}"
    return f"{type(error).__name__}: {first_line}"


def run_tasks(ray, requests: Sequence[tuple[FleetShard, dict]], *, python: str | None = None,
              progress: Callable[[str], None] = print) -> list[ShardOutcome]:
    """Submit one task per (shard, request), placed by its machine's resource (and GPU or
    accelerator type), and wait for all; a failed task becomes an outcome with ``failure``.
    On KeyboardInterrupt (Ctrl-C) the tasks still running are cancelled (force) and become
    outcomes with failure INTERRUPTED, so that the finished shards' rows are still merged."""
    task = ray.remote(run_shard)
    pending = {}
    for fleet_shard, request in requests:
        machine = fleet_shard.machine
        placement = {"num_cpus": 1, "num_gpus": 1 if machine.device == "cuda" else 0,
                     "resources": {machine.resource: 1}, "max_retries": 0}
        if machine.accelerator_type:
            placement["accelerator_type"] = machine.accelerator_type
        pending[task.options(**placement).remote(request, python)] = fleet_shard
        progress(f"[{fleet_shard.name}] queued: {fleet_shard.describe}")
    outcomes = {}
    remaining = list(pending)
    try:
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            for ref in ready:
                fleet_shard = pending[ref]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as error:
                    outcomes[ref] = ShardOutcome(fleet_shard, failure=failure_reason(ray, error))
                    continue
                outcomes[ref] = ShardOutcome(fleet_shard, **result)
    except KeyboardInterrupt:
        for ref in pending:
            if ref not in outcomes:
                ray.cancel(ref, force=True)
                outcomes[ref] = ShardOutcome(pending[ref], failure=INTERRUPTED)
    return [outcomes[ref] for ref in pending]


def write_outcomes(output_dir: Path, outcomes: Sequence[ShardOutcome]) -> list[Path]:
    """Each returned shard's files into OUTPUT_DIR/shards/LABEL-K/ (benchmark_results.csv,
    benchmark.json, sweep.log, atomically); returns the shard directories. Raises UserError
    when a file cannot be written."""
    directories = []
    for outcome in outcomes:
        directory = output_dir / SHARDS_DIR / outcome.shard.name
        directory.mkdir(parents=True, exist_ok=True)
        directories.append(directory)
        if outcome.failure is not None:
            continue
        atomic.write_text(directory / SHARD_LOG, outcome.log, option=OUTPUT_OPTION)
        if outcome.results_csv:
            atomic.write_text(directory / RESULTS_FILE, outcome.results_csv, option=OUTPUT_OPTION)
        if outcome.benchmark_json:
            atomic.write_text(directory / BENCHMARK_JSON, outcome.benchmark_json, option=OUTPUT_OPTION)
    return directories


def benchmark_file(output_dir: Path, label: str) -> Path:
    """A machine's merged pytest-benchmark JSON: OUTPUT_DIR/benchmark-LABEL.json (pytest-benchmark
    runs are per machine, so machines are not joined into one)."""
    return output_dir / f"benchmark-{label}.json"


def failure_line(outcome: ShardOutcome, directory: Path) -> str | None:
    """The one line a failed shard prints; None for a shard that succeeded."""
    if outcome.failure is not None:
        return (f"shard failed: {outcome.shard.name}, {outcome.shard.describe}: {outcome.failure}; "
                "its rows were not returned, rerun with --resume to measure them")
    if outcome.code:
        return (f"shard failed: {outcome.shard.name}, {outcome.shard.describe}: its sweep exited with {outcome.code} "
                f"(log {directory / SHARD_LOG}); the rows it measured are kept")
    return None


def sweep_on_cluster(
    options: SweepOptions, specs: Sequence[MachineSpec], pytest_args: Sequence[str] = (), *,
    address: str | None = None, device: str | None = None, node_cache: bool = True, python: str | None = None,
    num_cpus: int | None = None, progress: Callable[[str], None] = print,
) -> int:
    """The fleet sweep: plan every machine's shards (with ``options.resume``, each resumes
    from its machine's earlier rows: shard_request), run them as Ray tasks, merge their rows into OUTPUT_DIR's results
    file (keyed by machine: nothing is overwritten by another machine's rows; speedups per
    machine and device), each machine's pytest-benchmark JSON into benchmark-LABEL.json,
    and write fleet.md and fleet_throughput.png. ``device``: the device of specs naming
    none (None: auto). Returns the exit code: 0, the first failing shard's exit code, 1
    for a failed task, 130 after Ctrl-C (the finished shards' rows merged). Raises
    UserError for bad input (see discover_machines, connect)."""
    refuse_baselines(options)
    ray = import_ray()
    output_dir = options.output_dir
    results = output_dir / RESULTS_FILE
    connected = connect(ray, address, specs, device=device, num_cpus=num_cpus)
    try:
        machines = discover_machines(specs, ray.nodes(), device)
        earlier = read_rows(results) if options.resume else []
        planned = plan_fleet(machines, options.variants, options.batch_sizes)
        shutil.rmtree(output_dir / SHARDS_DIR, ignore_errors=True)  # a stale shard would merge old rows back
        progress(f"sweeping {len(planned)} shards on {', '.join(f'{m.label} ({m.device})' for m in machines)}; "
                 f"shard files in {output_dir / SHARDS_DIR}"
                 + ("; --resume: each shard skips the configs its machine measured with this run's inputs" if options.resume else ""))
        requests = [(s, shard_request(options, s, pytest_args, node_cache=node_cache, resume_from=earlier_rows(earlier, s)))
                    for s in planned]
        outcomes = run_tasks(ray, requests, python=python, progress=progress)
    finally:
        if connected:
            ray.shutdown()
    directories = write_outcomes(output_dir, outcomes)
    rows = merge_results([d / RESULTS_FILE for d in directories], results)
    for machine in machines:
        own = [d / BENCHMARK_JSON for o, d in zip(outcomes, directories, strict=True) if o.shard.machine == machine]
        target = benchmark_file(output_dir, machine.label)
        merge_benchmark_json([target, *own], target)
    counted = {label: sum(1 for r in rows if r.machine == label) for label in (m.label for m in machines)}
    progress(f"\nmerged results: {results} ({', '.join(f'{label}: {n} rows' for label, n in counted.items())})")
    report_fleet(results, progress)
    failures = [line for o, d in zip(outcomes, directories, strict=True) if (line := failure_line(o, d))]
    for line in failures:
        progress(line)
    if any(o.failure == INTERRUPTED for o in outcomes):
        return 130
    code = next((o.code for o in outcomes if o.code), 0)
    return code or (1 if failures else 0)


def refuse_baselines(options: SweepOptions) -> None:
    """UserError for --save-baseline / --compare-baseline: a stored baseline is one machine's."""
    if options.save_baseline or options.compare_baseline:
        raise UserError("sweep-cluster does not store or compare baselines (they are per machine): "
                        "run densenet-opt sweep --save-baseline / --compare-baseline on each machine")


def report_fleet(results: Path, progress: Callable[[str], None] = print, budgets_path: Path | None = None) -> list[Path]:
    """fleet.md and fleet_throughput.png for ``results``, with one printed line per machine's
    fastest config within budget; a report that cannot be made is one printed line (the
    measured rows stay). Returns the files written."""
    try:
        rows, faults = load_table(results)
        written = fleet.write_fleet_report(results, rows, faults, budgets_path)
    except UserError as error:
        progress(f"no cross-device report: {error}")
        return []
    progress(f"cross-device report: {written[-1]} (plot: {written[0].name})")
    loaded, _ = budgets.load_budgets_or_none(budgets_path)
    checks = budgets.check_budgets(rows, loaded) if loaded is not None else None
    for (machine, device), best in fleet.fastest_per_machine(rows, checks).items():
        answer = "no config within budget" if best is None else (
            f"{best.variant} at batch {best.batch_size}: {best.throughput_samples_per_sec:.1f} samples/s"
            + (f", p99 {best.latency_ms_p99:.1f} ms" if best.latency_ms_p99 is not None else ""))
        progress(f"  fastest within budget on {machine} ({device}): {answer}")
    return written
