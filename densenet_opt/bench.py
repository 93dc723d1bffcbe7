"""The benchmark pytest collects: one test per (variant, batch size).

A thin wrapper over :meth:`densenet_opt.sweep.Sweep.measure`, which does the work (fidelity,
the fresh-process probe, pytest-benchmark's timed rounds, the results row). It lives in
the package so that ``densenet-opt sweep`` runs it from an installed copy; in the repository
``pytest --benchmark-only`` collects it too (pytest.ini's testpaths), and anywhere else
``pytest --benchmark-only --pyargs densenet_opt.bench`` does.
"""

from __future__ import annotations

import pytest

from densenet_opt.report import OUT_OF_MEMORY
from densenet_opt.sweep import ConfigFault


def test_inference(benchmark, sweep, engine_config) -> None:
    """Measure one config and write its row; a fault that is a measured outcome (out of
    memory) is a skip, one that is the variant's failure (NaN logits) a failure, both
    recorded in the results."""
    variant, batch_size = engine_config.variant, engine_config.batch_size
    benchmark.group = f"batch size {batch_size}"
    # One name wherever pytest runs from (its node id depends on the rootdir): the name a
    # stored baseline is compared by.
    benchmark.fullname = f"densenet_opt/bench.py::{benchmark.name}"
    try:
        row = sweep.measure(variant, batch_size, engine_config.engine, benchmark)
    except ConfigFault as fault:
        if fault.status == OUT_OF_MEMORY:
            pytest.skip(f"{variant} at batch {batch_size}: out of memory, recorded as {fault.status} in the results")
        pytest.fail(f"{variant} at batch {batch_size}: {fault} (recorded as {fault.status} in the results)", pytrace=False)
    if row is not None:
        benchmark.extra_info.update(row.as_dict())
