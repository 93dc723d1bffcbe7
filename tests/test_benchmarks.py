"""The benchmark: latency per (variant, batch size) with pytest-benchmark, and a results row."""

from __future__ import annotations

import pytest

from densenet_opt.measure.timing import benchmark_call
from densenet_opt.report import OUT_OF_MEMORY


def test_inference(benchmark, sweep, engine_config) -> None:
    variant, batch_size, engine = engine_config.variant, engine_config.batch_size, engine_config.engine
    benchmark.group = f"batch size {batch_size}"
    try:
        # Everything but the engine call happens before timing starts.
        accuracy = sweep.fidelity(variant, engine, batch_size)
        memory = sweep.probe(variant, batch_size)
        batch = sweep.input_batch(batch_size)
        latency = benchmark_call(
            benchmark, engine, batch, rounds=sweep.options.rounds, warmup_rounds=sweep.options.warmup_rounds
        )
    except Exception as error:
        fault = sweep.record_fault(variant, batch_size, error)
        if fault == OUT_OF_MEMORY:  # a measured outcome: this batch does not fit here
            pytest.skip(f"{variant} at batch {batch_size}: out of memory, recorded as {fault} in the results")
        if fault is not None:
            pytest.fail(f"{variant} at batch {batch_size}: {error} (recorded as {fault} in the results)", pytrace=False)
        raise
    if latency is None:  # --benchmark-disable: nothing was timed, so no row
        return
    row = sweep.result_row(variant, batch_size, engine, latency, accuracy, memory)
    benchmark.extra_info.update(row)
    sweep.write_row(row)
    sweep.progress(
        f"{variant} batch {batch_size}: {row['latency_ms_per_batch']} ms/batch, "
        f"{row['throughput_samples_per_sec']} samples/s, top-1 {row['accuracy_top_1']}% ({row['accuracy_kind']})"
    )
