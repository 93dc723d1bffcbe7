"""pytest wiring: the sweep options, and one engine per (variant, batch size) per session."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from densenet_opt import baselines
from densenet_opt.config import OPTIONS, SweepOptions, options_from_mapping
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.sweep import Sweep, preflight
from densenet_opt.variants import Engine

OPTIONS_KEY = pytest.StashKey[SweepOptions]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("densenet-opt", "DenseNet-121 benchmark sweep")
    for option in OPTIONS:
        if option.is_flag:
            group.addoption(option.name, action="store_true", help=option.help)
        else:
            group.addoption(option.name, default=option.default, help=f"{option.help} (default: {option.default})")


def pytest_configure(config: pytest.Config) -> None:
    raw = {option.dest: config.getoption(option.dest) for option in OPTIONS}
    try:
        config.stash[OPTIONS_KEY] = options = options_from_mapping(raw)
        preflight(options)
    except UserError as error:
        raise pytest.UsageError(str(error)) from None


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_benchmark_compare_machine_info(benchmarksession) -> None:
    """Before pytest-benchmark's own check, whose "machine_info is different" warning
    names the storage relative to the working directory and raised ValueError (an
    INTERNALERROR before anything was measured) for a --benchmark-storage outside it."""
    baselines.locate_anywhere(benchmarksession.storage)


def pytest_sessionstart(session: pytest.Session) -> None:
    """pytest-benchmark's JSON report and stored runs are written atomically, and a full
    disk is one sentence (see baselines.route_benchmark_writes)."""
    benchmarks = getattr(session.config, "_benchmarksession", None)
    if benchmarks is not None:
        baselines.route_benchmark_writes(benchmarks)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    """pytest-benchmark writes its files here: one that cannot be written (a full disk)
    ends the run with its one sentence and exit code 2, not a traceback."""
    try:
        return (yield)
    except UserError as error:
        pytest.exit(f"densenet-opt: {error}", returncode=2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A sweep config found unavailable inside its test (by the fresh-process probe) is
    a skip with the reason, as when its engine cannot be built."""
    try:
        return (yield)
    except VariantUnavailable as reason:
        if "engine_config" not in getattr(item, "fixturenames", ()):
            raise
        pytest.skip(f"{item.name}: {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """A problem the user can fix (a corrupt image, say) is one sentence, not a traceback."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(UserError):
        report.longrepr = f"densenet-opt: {call.excinfo.value}"
    return report


@dataclass(frozen=True)
class EngineConfig:
    variant: str
    batch_size: int
    engine: Engine


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_config" in metafunc.fixturenames:
        options = metafunc.config.stash[OPTIONS_KEY]
        configs = [(variant, size) for variant in options.variants for size in options.batch_sizes]
        if options.resume:
            done = Sweep(options).completed_configs()
            configs = [config for config in configs if config not in done]
        metafunc.parametrize(
            "engine_config", configs, ids=[f"{v}-bs{b}" for v, b in configs], indirect=True, scope="session"
        )


@pytest.fixture(scope="session")
def sweep(pytestconfig: pytest.Config) -> Sweep:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def progress(message: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"[densenet-opt] {message}", flush=True)

    return Sweep(pytestconfig.stash[OPTIONS_KEY], progress=progress)


@pytest.fixture(scope="session")
def engine_config(request: pytest.FixtureRequest, sweep: Sweep) -> Iterator[EngineConfig]:
    """Built once per session and shared by every test of that config."""
    variant, batch_size = request.param
    sweep.progress(f"building {variant} for batch {batch_size} on {sweep.device.type}")
    try:
        engine = sweep.build_engine(variant, batch_size)
    except VariantUnavailable as reason:
        pytest.skip(f"{variant} at batch {batch_size} on {sweep.device.type}: {reason}")
    except UserError as error:
        pytest.fail(str(error), pytrace=False)
    yield EngineConfig(variant, batch_size, _with_injected_faults(variant, batch_size, engine))
    engine.close()


# Set only by the tests of the fault handling and of the regression gate, in the sweeps
# they start: comma-separated VARIANT@BATCH=KIND[:MS] (BATCH may be *), where KIND is
# delay (MS per call), oom (the call raises CUDA out of memory) or nan (NaN logits).
INJECT = "DENSENET_OPT_TEST_INJECT"


class _InjectedFault:
    def __init__(self, engine: Engine, kind: str, argument: str) -> None:
        self.engine, self.kind, self.argument = engine, kind, argument
        self.model_size_bytes, self.info = engine.model_size_bytes, engine.info

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.kind == "delay":
            time.sleep(float(self.argument) / 1e3)
        elif self.kind == "oom":
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by {INJECT})")
        logits = self.engine(batch)
        if self.kind == "nan":
            logits = logits.clone()
            logits[0, 0] = float("nan")
        return logits

    def close(self) -> None:
        self.engine.close()


def _with_injected_faults(variant: str, batch_size: int, engine: Engine) -> Engine:
    for item in filter(None, os.environ.get(INJECT, "").split(",")):
        target, _, fault = item.partition("=")
        name, _, size = target.partition("@")
        kind, _, argument = fault.partition(":")
        if name == variant and size in ("*", str(batch_size)):
            return _InjectedFault(engine, kind, argument)
    return engine
