"""The fresh process of the memory and cold-start probe (started by probe.run_probe).

Reads ``{"variant", "batch_size", "options"}`` as JSON on standard input (the options as
SweepOptions.to_dict gives them: parsed once, in the parent), builds that one engine,
runs it, and prints one line: ``PROBE_RESULT {json}`` with a ProbeResult, or
``PROBE_UNAVAILABLE reason`` (exit 3) when the variant cannot be built here; a problem the
user can fix is one sentence on standard error (exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import psutil
import torch

from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.measure.memory import (
    MIB, current_rss_bytes, nvml_process_used_bytes, peak_rss_bytes, release_freed_memory, reset_peak_rss,
)
from densenet_opt.measure.probe import RESULT_PREFIX, UNAVAILABLE_PREFIX, USER_ERROR_PREFIX, ProbeResult
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.workbench import Workbench


def measure_in_this_process(variant: str, batch_size: int, options: SweepOptions) -> ProbeResult:
    """RAM (peak RSS of the inference over RSS before the build, MiB), VRAM (NVML's per-process
    used memory and torch's peak allocated, MiB; 0 on CPU) and cold start (process creation to
    first logits, ms) of one config. Raises what building the engine raises."""
    started = psutil.Process().create_time()
    rss_before = current_rss_bytes()
    workbench = Workbench(options, progress=lambda message: print(message, file=sys.stderr))
    engine = workbench.build_engine(variant, batch_size)
    # Memory does not depend on pixel values: a random batch spares loading the data set.
    batch = torch.randn(batch_size, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    if workbench.device.type == "cuda":
        batch = batch.pin_memory()
        torch.cuda.reset_peak_memory_stats(workbench.device)
    release_freed_memory()
    reset_peak_rss()  # keep build-time spikes (export, calibration) out of the inference figure
    engine(batch)
    cold_start_ms = (time.time() - started) * 1e3
    engine(batch)  # steady state: some backends allocate lazily on the second call too
    ram = max(peak_rss_bytes() - rss_before, 0)
    vram = vram_torch = 0
    if workbench.device.type == "cuda":
        vram_torch = torch.cuda.max_memory_allocated(workbench.device)
        vram = nvml_process_used_bytes(workbench.device) or torch.cuda.max_memory_reserved(workbench.device)
    engine.close()
    return ProbeResult(ram / MIB, vram / MIB, vram_torch / MIB, cold_start_ms)


def main() -> int:
    request = json.loads(sys.stdin.read())
    variant, batch_size = request["variant"], int(request["batch_size"])
    try:
        result = measure_in_this_process(variant, batch_size, SweepOptions.from_dict(request["options"]))
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
    sys.exit(main())
