"""RAM, VRAM and cold start of one (variant, batch size), in a fresh process.

This module starts the process (probe_worker.py, which gets the typed options as JSON on
its standard input) and reads its answer.

A fresh process per config keeps one config's allocations (and the parent's data and
reference model) out of another's figures; its start is also the cold start a
serverless deployment pays.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

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
    request = {"variant": variant, "batch_size": batch_size, "options": options.to_dict()}
    command = [sys.executable, "-m", "densenet_opt.measure.probe_worker"]
    completed = subprocess.run(command, input=json.dumps(request), capture_output=True, text=True, timeout=timeout_s)
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
