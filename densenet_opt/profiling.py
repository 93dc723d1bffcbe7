"""PyTorch profiler traces and CUDA memory snapshots of chosen (variant, batch size) configs.

Profiling is its own step, never part of a timed benchmark round: the profiler slows
every op down. Per config it writes, under OUTPUT_DIR/profiles/:

* ``NAME.trace.json``: Chrome trace JSON (CPU ops with shapes and memory, CUDA kernels);
  open it at https://ui.perfetto.dev ("Open trace file") or chrome://tracing.
* ``tensorboard/NAME/*.pt.trace.json``: the same trace in the TensorBoard profiler's log
  layout (``tensorboard --logdir OUTPUT_DIR/profiles/tensorboard``, localhost:6006).
* ``NAME.ops.txt``: the ops that took the most time, as a table.
* ``NAME.memory.pickle`` (CUDA, with --memory-snapshot): every allocation with its stack,
  from the engine's build to the last call; drag it onto https://pytorch.org/memory_viz.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule, tensorboard_trace_handler

from densenet_opt import atomic
from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.report import OUTPUT_OPTION
from densenet_opt.workbench import Workbench

PROFILES_DIR = "profiles"
TENSORBOARD_DIR = "tensorboard"
DEFAULT_ROUNDS = 3
# Enough entries for DenseNet-121's build and a few batches; the ring buffer keeps the newest.
MEMORY_HISTORY_ENTRIES = 200_000
TOP_OPS = 30


@dataclass(frozen=True)
class ProfileFiles:
    chrome_trace: Path
    tensorboard_dir: Path
    op_table: Path
    memory_snapshot: Path | None = None


def config_name(variant: str, batch_size: int, device: str) -> str:
    return f"{variant}-bs{batch_size}-{device}"


def profile_engine(
    engine: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, out_dir: Path, name: str,
    rounds: int = DEFAULT_ROUNDS, *, cuda: bool | None = None,
) -> ProfileFiles:
    """Record ``rounds`` engine calls (after one untraced warm-up call and one profiler
    warm-up step) with CPU and, when ``cuda``, CUDA activities, shapes and memory.
    Raises UserError for rounds < 1, or when the trace or the op table cannot be written
    (disk full, read-only)."""
    if rounds < 1:
        raise UserError(f"profiling needs at least one round, got {rounds}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ProfileFiles(
        chrome_trace=out_dir / f"{name}.trace.json",
        tensorboard_dir=out_dir / TENSORBOARD_DIR / name,
        op_table=out_dir / f"{name}.ops.txt",
    )
    to_tensorboard = tensorboard_trace_handler(str(files.tensorboard_dir), worker_name=name)

    def export(prof: profile) -> None:
        # Kineto saves a trace once: TensorBoard's file (named by the handler), then a copy.
        to_tensorboard(prof)
        newest = max(files.tensorboard_dir.glob(f"{name}.*.pt.trace.json"), key=lambda p: p.stat().st_mtime_ns)
        atomic.write_atomic(files.chrome_trace, lambda tmp: shutil.copyfile(newest, tmp), option=OUTPUT_OPTION)

    engine(batch)  # first calls compile, autotune and allocate: not what a trace should show
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(
        activities=activities,
        schedule=schedule(wait=0, warmup=1, active=rounds, repeat=1),
        on_trace_ready=export,
        record_shapes=True,
        profile_memory=True,
    ) as prof:
        for step in range(1 + rounds):
            with record_function(f"{name} call {step}"):
                engine(batch)
            prof.step()
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages(group_by_input_shape=True).table(sort_by=sort_by, row_limit=TOP_OPS)
    atomic.write_text(files.op_table, table + "\n", option=OUTPUT_OPTION)
    return files


@contextmanager
def cuda_memory_history(path: Path, max_entries: int = MEMORY_HISTORY_ENTRIES) -> Iterator[Path]:
    """Record every CUDA allocation made inside the block, with its stack, and write the
    snapshot to ``path`` when the block ends (memory_viz reads it)."""
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    try:
        yield path
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)


def profile_configs(options: SweepOptions, rounds: int = DEFAULT_ROUNDS, memory_snapshot: bool = False,
                    progress: Callable[[str], None] = print) -> list[ProfileFiles]:
    """Build each (variant, batch size) engine of ``options`` as the sweep does and profile it."""
    workbench = Workbench(options, progress=progress)
    cuda = workbench.device.type == "cuda"
    if memory_snapshot and not cuda:
        raise UserError("--memory-snapshot records CUDA allocations: use it with --device cuda on a machine with a GPU")
    out_dir = options.output_dir / PROFILES_DIR
    written = []
    for variant in options.variants:
        for batch_size in options.batch_sizes:
            name = config_name(variant, batch_size, workbench.device.type)
            progress(f"profiling {name}")
            snapshot = out_dir / f"{name}.memory.pickle"
            try:
                with cuda_memory_history(snapshot) if memory_snapshot else nullcontext():
                    engine = workbench.build_engine(variant, batch_size)
                    batch = workbench.input_batch(batch_size)
                    if memory_snapshot:  # the snapshot covers the build and a few calls
                        for _ in range(rounds):
                            engine(batch)
            except VariantUnavailable as reason:
                progress(f"skipped {name}: {reason}")
                continue
            try:
                files = profile_engine(engine, batch, out_dir, name, rounds, cuda=cuda)
            finally:
                engine.close()
            if memory_snapshot:
                files = ProfileFiles(files.chrome_trace, files.tensorboard_dir, files.op_table, snapshot)
            written.append(files)
    return written
