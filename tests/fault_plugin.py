"""Test-only pytest plugin: injects faults into the engines of a sweep.

Loaded only by the tests that need it, in the sweeps they start:
``densenet-opt sweep ... -- -p fault_plugin --inject-fault baseline@1=oom`` with this folder
on PYTHONPATH. Nothing in densenet_opt/ reads it; it implements the plugin's
``pytest_densenet_opt_engine`` hook.

A fault is VARIANT@BATCH=KIND[:ARG] (BATCH may be ``*``):
  delay:MS       sleep MS milliseconds in every call
  pad:MS         every call takes MS milliseconds (the engine's own time, then a sleep for
                 the rest): a stand-in whose cost is set by the test, not by how busy the
                 machine is (as long as the engine itself takes less)
  oom            every call raises torch.cuda.OutOfMemoryError
  nan            the first logit of every call is NaN
  slowdown:X@N   from the N-th call of any engine in this process on, every call takes
                 X times as long (the machine getting slower partway through a sweep)
  kill_worker:M  on a sweep whose --machine-label is M, the first call kills the parent
                 process (the Ray worker running a sweep-cluster shard) with SIGKILL and
                 ends this one: the shard's task dies mid-run, as on a lost node

``--fake-cpu-pressure PCT`` makes the sweep read a CPU pressure (PSI) of PCT% of wall time
throughout, as on a machine where other processes compete for the cores.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

# Calls of every wrapped engine in this process, for slowdown's "from the N-th call on".
_calls = [0]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("densenet-opt test faults").addoption(
        "--inject-fault", action="append", default=[], metavar="VARIANT@BATCH=KIND[:ARG]",
        help="inject a fault into one config's engine (tests only; see tests/fault_plugin.py)",
    )
    parser.getgroup("densenet-opt test faults").addoption(
        "--fake-cpu-pressure", type=float, default=None, metavar="PCT",
        help="read PSI's CPU pressure as PCT%% of wall time (tests only)",
    )


def pytest_configure(config: pytest.Config) -> None:
    percent = config.getoption("fake_cpu_pressure")
    if percent is not None:
        from densenet_opt.measure import contention

        # PSI's "some total" counter (µs) growing at PCT% of wall time.
        contention.read_psi_some_total_us = lambda path=None: int(time.perf_counter() * 1e6 * percent / 100)


class InjectedFault:
    """Wraps an engine: same interface, with the fault applied to each call."""

    def __init__(self, engine, kind: str, argument: str) -> None:
        self.engine, self.kind, self.argument = engine, kind, argument
        self.model_size_bytes, self.info = engine.model_size_bytes, engine.info

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.engine, InjectedFault):  # one count per engine call, however many faults wrap it
            _calls[0] += 1
        if self.kind == "kill_worker":
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(1)
        if self.kind == "delay":
            time.sleep(float(self.argument) / 1e3)
        elif self.kind == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by tests/fault_plugin.py)")
        started = time.perf_counter()
        logits = self.engine(batch)
        if self.kind == "pad":
            rest = float(self.argument) / 1e3 - (time.perf_counter() - started)
            if rest > 0:
                time.sleep(rest)
        if self.kind == "slowdown":
            factor, _, from_call = self.argument.partition("@")
            if _calls[0] >= int(from_call or 0):
                time.sleep((time.perf_counter() - started) * (float(factor) - 1))
        if self.kind == "nan":
            logits = logits.clone()
            logits[0, 0] = float("nan")
        return logits

    def close(self) -> None:
        self.engine.close()


def pytest_densenet_opt_engine(config: pytest.Config, variant: str, batch_size: int, engine):
    """Every matching fault wraps the engine (in the order given); None when none matches."""
    wrapped = engine
    machine = None
    for item in config.getoption("inject_fault"):
        for spec in filter(None, item.split(",")):
            target, _, fault = spec.partition("=")
            name, _, size = target.partition("@")
            kind, _, argument = fault.partition(":")
            if kind == "kill_worker":
                if machine is None:
                    from densenet_opt.plugin import sweep_options

                    machine = sweep_options(config).machine_label or ""
                if argument != machine:
                    continue
            if name in ("*", variant) and size in ("*", str(batch_size)):
                wrapped = InjectedFault(wrapped, kind, argument)
    return None if wrapped is engine else wrapped
