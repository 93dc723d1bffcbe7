"""The RSS measurement against a deliberate allocation of known size."""

from __future__ import annotations

import numpy as np
import pytest

from densenet_opt.measure.memory import MIB, current_rss_bytes, peak_rss_bytes, reset_peak_rss

ALLOCATION_MB = 256


def test_a_known_allocation_is_reported_within_a_few_percent() -> None:
    if not reset_peak_rss():
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    before = current_rss_bytes()
    block = np.ones(ALLOCATION_MB * MIB, dtype=np.uint8)  # ones, not empty: pages must be touched
    del block
    grown = (peak_rss_bytes() - before) / MIB
    assert grown == pytest.approx(ALLOCATION_MB, rel=0.05)
