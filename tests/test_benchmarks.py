"""The benchmark: latency per (variant, batch size) with pytest-benchmark, and a results row."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from densenet_opt.measure.timing import benchmark_call

# "VARIANT:MS" slows one variant's timed call. Set only by tests/test_regression_gate.py,
# to show that the stored-baseline gate fails a slower engine.
INJECTED_DELAY = "DENSENET_OPT_TEST_DELAY"


def _timed_call(variant: str, engine: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    slowed_variant, _, delay_ms = os.environ.get(INJECTED_DELAY, "").partition(":")
    if slowed_variant != variant:
        return engine

    def slowed(batch: torch.Tensor) -> torch.Tensor:
        time.sleep(float(delay_ms) / 1e3)
        return engine(batch)

    return slowed


def test_inference(benchmark, sweep, engine_config) -> None:
    variant, batch_size, engine = engine_config.variant, engine_config.batch_size, engine_config.engine
    # Everything but the engine call happens before timing starts.
    accuracy = sweep.fidelity(variant, engine, batch_size)
    memory = sweep.probe(variant, batch_size)
    batch = sweep.input_batch(batch_size)
    benchmark.group = f"batch size {batch_size}"
    latency = benchmark_call(
        benchmark, _timed_call(variant, engine), batch, rounds=sweep.options.rounds, warmup_rounds=sweep.options.warmup_rounds
    )
    if latency is None:  # --benchmark-disable: nothing was timed, so no row
        return
    row = sweep.result_row(variant, batch_size, engine, latency, accuracy, memory)
    benchmark.extra_info.update(row)
    sweep.write_row(row)
    sweep.progress(
        f"{variant} batch {batch_size}: {row['latency_ms_per_batch']} ms/batch, "
        f"{row['throughput_samples_per_sec']} samples/s, top-1 {row['accuracy_top_1']}% ({row['accuracy_kind']})"
    )
