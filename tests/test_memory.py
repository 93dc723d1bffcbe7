"""The RSS measurement against a deliberate allocation of known size."""

from __future__ import annotations

import numpy as np
import pytest

from densenet_opt.measure.memory import MIB, current_rss_bytes, peak_rss_bytes, release_freed_memory, reset_peak_rss

ALLOCATION_MB = 256


def test_a_known_allocation_is_reported_within_a_few_percent() -> None:
    if not reset_peak_rss():
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    before = current_rss_bytes()
    block = np.ones(ALLOCATION_MB * MIB, dtype=np.uint8)  # ones, not empty: pages must be touched
    del block
    grown = (peak_rss_bytes() - before) / MIB
    assert grown == pytest.approx(ALLOCATION_MB, rel=0.05)


def test_memory_freed_into_the_heap_is_handed_back_before_measuring() -> None:
    # 64 KiB blocks stay below glibc's mmap threshold, so they live in the heap; every other
    # one freed leaves holes that glibc keeps (the heap's top is still in use).
    blocks = [np.ones(64 * 1024, dtype=np.uint8) for _ in range(ALLOCATION_MB * 16)]
    held = blocks[1::2]
    del blocks
    before = current_rss_bytes()
    release_freed_memory()
    handed_back = (before - current_rss_bytes()) / MIB
    assert handed_back > ALLOCATION_MB / 2 * 0.8, f"only {handed_back:.1f} MiB handed back"
    del held
