"""Hooks the densenet-opt pytest plugin calls, for other plugins to implement.

Registered by ``densenet_opt.plugin`` through ``pytest_addhooks``; see pytest's
"Declaring new hooks" (https://docs.pytest.org/en/stable/how-to/writing_hook_functions.html).
"""

from __future__ import annotations

import pluggy
import pytest

hookspec = pluggy.HookspecMarker("pytest")


@hookspec(firstresult=True)
def pytest_densenet_opt_engine(config: pytest.Config, variant: str, batch_size: int, engine: object) -> object | None:
    """Called once per (variant, batch size) after its engine is built, before anything is
    measured with it. Return an object with the engine's interface (``__call__(batch)`` ->
    logits, ``model_size_bytes``, ``info``, ``close()``) to measure that instead, or None to
    keep ``engine``. The project's own tests use it to inject faults (tests/fault_plugin.py);
    a production sweep has no implementation of it."""
