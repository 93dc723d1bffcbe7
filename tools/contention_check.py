#!/usr/bin/env python3
"""How much each engine slows down when another process competes for the cores.

Eager PyTorch was seen to slow 3.6x beside a test suite where ONNX Runtime and OpenVINO
slowed 1.5-2x, so speedups over eager measured on a busy machine measure the contention.
This script measures it directly: in one process per OpenMP setting, it builds the
engines through the registry (as a sweep does), times them round-robin on a quiet
machine, then with a CPU hog (busy-loop processes, ``--hog`` of them) running beside them,
and prints each engine's median latency in both phases and the slowdown (hog / quiet),
with the CPU pressure (PSI) each phase read.

    python tools/contention_check.py                       # batch 1, hog of 1 busy loop
    python tools/contention_check.py --batch-size 8 --rounds 15 --hog 1
    python tools/contention_check.py --settings default,passive,threads-1

Settings (each in a fresh process, since OpenMP reads its environment once):
  default     torch as installed (OMP threads = usable cores, libgomp's spinning waits)
  passive     OMP_WAIT_POLICY=PASSIVE: waiting threads sleep at once instead of spinning
  threads-1   torch.set_num_threads(1) for the eager engine
  free-cores  torch threads = the cores other processes leave free, read before each phase
              (measure.contention.free_cores): the sweep's --torch-threads auto

Uses the sweep's options with their defaults (synthetic weights when torchvision's are not
cached; built artifacts from the cache dir). Needs the cpu extra for onnx and openvino.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "threads-1": {"DENSENET_OPT_CHECK_TORCH_THREADS": "1"},
    "free-cores": {"DENSENET_OPT_CHECK_TORCH_THREADS": "free"},
}


def busy_loop() -> None:
    while True:
        pass


def measure(variants: list[str], batch_size: int, rounds: int, hogs: int) -> dict:
    """One setting, in this process: {variant: {"quiet": ms, "hog": ms}}, and PSI per phase."""
    import torch

    from densenet_opt.config import options_from_mapping
    from densenet_opt.measure.contention import Contention, PressureMark
    from densenet_opt.workbench import Workbench

    from densenet_opt.measure.contention import free_cores

    threads = os.environ.get("DENSENET_OPT_CHECK_TORCH_THREADS")
    if threads and threads != "free":
        torch.set_num_threads(int(threads))
    default_threads = torch.get_num_threads()
    workbench = Workbench(options_from_mapping({"device": "cpu", "batch_sizes": str(batch_size)}), progress=lambda line: None)
    engines = {variant: workbench.build_engine(variant, batch_size) for variant in variants}
    batch = torch.randn(batch_size, 3, 224, 224)
    for engine in engines.values():  # warm-up
        engine(batch)
        engine(batch)
    result: dict = {"phases": {}}
    for phase in ("quiet", "hog", "quiet-again"):
        workers = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(hogs if phase == "hog" else 0)]
        for worker in workers:
            worker.start()
        time.sleep(1.0 if workers else 0.2)
        if threads == "free":
            torch.set_num_threads(min(default_threads, free_cores() or default_threads))
        start = PressureMark.now()
        seconds: dict[str, list[float]] = {variant: [] for variant in variants}
        for _ in range(rounds):
            for variant, engine in engines.items():
                tick = time.perf_counter()
                engine(batch)
                seconds[variant].append(time.perf_counter() - tick)
        pressure = Contention.since(start).cpu_pressure_pct
        for worker in workers:
            worker.terminate()
            worker.join()
        result["phases"][phase] = {"psi": pressure, "threads": torch.get_num_threads(),
                                   "ms": {v: 1e3 * statistics.median(s) for v, s in seconds.items()}}
    for engine in engines.values():
        engine.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="baseline,onnx,openvino", help="engines to time (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15, help="round-robin rounds per phase (default: %(default)s)")
    parser.add_argument("--hog", type=int, default=1, help="busy-loop processes in the hog phase (default: %(default)s)")
    parser.add_argument("--settings", default="default,passive,threads-1,free-cores", help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.child:
        print("RESULT " + json.dumps(measure(variants, args.batch_size, args.rounds, args.hog)), flush=True)
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting {unknown[0]!r}: choose from {', '.join(SETTINGS)}")
    print(f"batch {args.batch_size}, {args.rounds} rounds per phase, hog = {args.hog} busy loop(s), "
          f"{os.cpu_count()} CPUs; median ms per call")
    print(f"{'setting (torch threads quiet/hog/again)':24} {'engine':16} {'quiet':>9} {'hog':>9} {'again':>9} {'slowdown':>9}  PSI quiet/hog/again")
    for setting in settings:
        command = [sys.executable, __file__, "--child", "--variants", args.variants, "--batch-size", str(args.batch_size),
                   "--rounds", str(args.rounds), "--hog", str(args.hog)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **SETTINGS[setting]})
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{setting}: failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            continue
        result = json.loads(line.removeprefix("RESULT "))
        phases = result["phases"]
        psi = "/".join("n/a" if phases[p]["psi"] is None else f"{phases[p]['psi']:.0f}%" for p in phases)
        for variant in variants:
            quiet, hog, again = (phases[p]["ms"][variant] for p in ("quiet", "hog", "quiet-again"))
            threads = "/".join(str(phases[p]["threads"]) for p in phases)
            label = f"{setting}" + (f" ({threads}t)" if variant == "baseline" else "")
            print(f"{label:24} {variant:16} {quiet:9.1f} {hog:9.1f} {again:9.1f} {hog / min(quiet, again):8.2f}x  {psi}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
