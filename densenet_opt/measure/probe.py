"""RAM, VRAM and cold start of one (variant, batch size), in a fresh process.

A fresh process per config keeps one config's allocations (and the parent's data and
reference model) out of another's figures; its start is also the cold start a
serverless deployment pays.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil

from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError, VariantUnavailable

RESULT_PREFIX = "PROBE_RESULT "
UNAVAILABLE_PREFIX = "PROBE_UNAVAILABLE "
USER_ERROR_PREFIX = "densenet-opt probe: "


@dataclass(frozen=True)
class ProbeResult:
    ram_usage_mb: float  # peak RSS during inference minus RSS before the model was built
    vram_usage_mb: float  # NVML's used memory of the process (0 on CPU)
    vram_torch_peak_mb: float  # torch's peak allocated bytes (0 on CPU and for non-torch engines)
    cold_start_ms: float  # process start to first logits


def run_probe(options: SweepOptions, variant: str, batch_size: int, timeout_s: float = 1800) -> ProbeResult:
    """Memory and cold start of one config, measured in a fresh process.

    Raises VariantUnavailable with the fresh process's reason when the variant cannot be
    built there (say, no C++ compiler for a package that is not cached), UserError with its
    sentence for a problem the user can fix, RuntimeError with its output otherwise."""
    command = [sys.executable, "-m", "densenet_opt.measure.probe", variant, str(batch_size), *options.to_args()]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return ProbeResult(**json.loads(line.removeprefix(RESULT_PREFIX)))
        if line.startswith(UNAVAILABLE_PREFIX):
            raise VariantUnavailable(line.removeprefix(UNAVAILABLE_PREFIX))
    said = [line for line in completed.stderr.splitlines() if line.startswith(USER_ERROR_PREFIX)]
    if completed.returncode == 2 and said:
        raise UserError(said[-1].removeprefix(USER_ERROR_PREFIX))
    tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"the memory probe for {variant} at batch {batch_size} failed (exit {completed.returncode}):\n{tail}")


def measure_in_this_process(variant: str, batch_size: int, options: SweepOptions) -> ProbeResult:
    import torch

    from densenet_opt.measure.memory import (
        MIB, current_rss_bytes, nvml_process_used_bytes, peak_rss_bytes, release_freed_memory, reset_peak_rss,
    )
    from densenet_opt.sweep import Sweep

    started = psutil.Process().create_time()
    rss_before = current_rss_bytes()
    sweep = Sweep(options, progress=lambda message: print(message, file=sys.stderr))
    engine = sweep.build_engine(variant, batch_size)
    # Memory does not depend on pixel values: a random batch spares loading the data set.
    batch = torch.randn(batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    if sweep.device.type == "cuda":
        batch = batch.pin_memory()
        torch.cuda.reset_peak_memory_stats(sweep.device)
    release_freed_memory()
    reset_peak_rss()  # keep build-time spikes (export, calibration) out of the inference figure
    engine(batch)
    cold_start_ms = (time.time() - started) * 1e3
    engine(batch)  # steady state: some backends allocate lazily on the second call too
    ram = max(peak_rss_bytes() - rss_before, 0)
    vram = vram_torch = 0
    if sweep.device.type == "cuda":
        vram_torch = torch.cuda.max_memory_allocated(sweep.device)
        vram = nvml_process_used_bytes(sweep.device) or torch.cuda.max_memory_reserved(sweep.device)
    engine.close()
    return ProbeResult(ram / MIB, vram / MIB, vram_torch / MIB, cold_start_ms)


def main(argv: list[str]) -> int:
    from densenet_opt.cli import options_parser

    variant, batch_size, *rest = argv
    options = options_parser().parse_args(rest)
    from densenet_opt.config import options_from_mapping

    try:
        result = measure_in_this_process(variant, int(batch_size), options_from_mapping(vars(options)))
    except VariantUnavailable as reason:
        print(UNAVAILABLE_PREFIX + " ".join(str(reason).split()), flush=True)
        print(f"densenet-opt probe: {variant} is unavailable here: {reason}", file=sys.stderr)
        return 3
    except UserError as error:
        print(USER_ERROR_PREFIX + " ".join(str(error).split()), file=sys.stderr)
        return 2
    print(RESULT_PREFIX + json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
