"""The pytest plugin: the sweep's options, fixtures and hooks; the logic lives in sweep.py and workbench.py.

Registered through the ``pytest11`` entry point in pyproject.toml, so the options exist
before pytest parses the command line (``pytest --benchmark-only --imagenet-val /data/val``
works with the path as a separate argument, from any directory) and an installed package
needs no conftest.py. ``densenet-opt sweep`` runs the same plugin in-process and hands it
the options it has already parsed (``OptionsHandover``), so they are parsed once.

Fixtures: ``sweep`` (one :class:`~densenet_opt.sweep.Sweep` per session), ``workbench``
(its :class:`~densenet_opt.workbench.Workbench`: weights, data, the fp32 reference) and
``engine_config`` (one engine per (variant, batch size), parametrized from the options).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from pytest_benchmark.session import PerformanceRegression

from densenet_opt import baselines, benchmark_session, gate, hookspecs, schedule
from densenet_opt.config import SweepOptions, add_sweep_options, options_from_mapping, option_dests
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.report import utc_timestamp
from densenet_opt.measure.env import machine_kind, software_versions
from densenet_opt.resume import OLDER_VERSION, resume_plan
from densenet_opt.sweep import Sweep, preflight
from densenet_opt.variants import Engine
from densenet_opt.workbench import Workbench

OPTIONS_KEY = pytest.StashKey[SweepOptions]()
ENGINE_FIXTURE = "engine_config"


class OptionsHandover:
    """A plugin object ``densenet-opt sweep`` passes to ``pytest.main``: the options it
    parsed, so that the plugin does not read them again from the command line."""

    def __init__(self, options: SweepOptions) -> None:
        self.options = options


@dataclass(frozen=True)
class EngineConfig:
    """What the ``engine_config`` fixture gives a test: one built engine and its config."""

    variant: str
    batch_size: int
    engine: Engine


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("densenet-opt", "DenseNet-121 benchmark sweep (densenet-opt)")
    add_sweep_options(group.addoption)


def pytest_configure(config: pytest.Config) -> None:
    """Parse and validate the options once (UsageError with the one sentence). The rest
    waits until a sweep test is collected (``is_sweep``), so that an unrelated pytest run in
    this environment is left alone."""
    handover = next((p for p in config.pluginmanager.get_plugins() if isinstance(p, OptionsHandover)), None)
    if handover is not None:
        config.stash[OPTIONS_KEY] = handover.options
        return
    raw = {dest: config.getoption(dest) for dest in option_dests()}
    try:
        config.stash[OPTIONS_KEY] = options_from_mapping(raw)
    except UserError as error:
        raise pytest.UsageError(str(error)) from None


def is_sweep(config: pytest.Config) -> bool:
    """Whether this session collected the sweep's benchmark."""
    return config.stash.get(IS_SWEEP_KEY, False)


IS_SWEEP_KEY = pytest.StashKey[bool]()
CLOCK_KEY = pytest.StashKey[schedule.SweepClock]()


def sweep_options(config: pytest.Config) -> SweepOptions:
    """The session's typed options (set in pytest_configure)."""
    return config.stash[OPTIONS_KEY]


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Once the sweep's benchmark is collected: check the input (data set, weights file,
    output directory, stored baseline) in seconds, and point pytest-benchmark at the
    output directory's benchmark.json and at the stored baseline (gate.benchmark_settings),
    before anything is measured."""
    if not any(ENGINE_FIXTURE in getattr(item, "fixturenames", ()) for item in items):
        return
    config.stash[IS_SWEEP_KEY] = True
    options = sweep_options(config)
    # An empty parametrization (--resume with nothing left) gives one item whose param is
    # pytest's NOTSET: only real (variant, batch size) pairs are configs.
    params = [item.callspec.params.get(ENGINE_FIXTURE) for item in items if hasattr(item, "callspec")]
    configs = [tuple(param) for param in params if isinstance(param, tuple | list)]
    history, searched = schedule.estimates(options)
    config.stash[CLOCK_KEY] = schedule.SweepClock(list(dict.fromkeys(configs)), options.time_budget_s, history, searched)
    try:
        preflight(options)
        benchmarks = benchmark_session.session_of(config)
        settings = gate.benchmark_settings(options)
        if not benchmarks.json:  # a --benchmark-json given to pytest wins
            benchmarks.json = settings.pop("benchmark_json")
        # pytest-benchmark read its options when pytest started; these are the ones the gate implies.
        benchmark_session.apply_settings(benchmarks, settings)
        benchmark_session.route_benchmark_writes(benchmarks, refusal=lambda: stored_run_refusal(config, options))
    except baselines.BaselineMissing as error:
        config.stash[IS_SWEEP_KEY] = False  # nothing measured, nothing to close: the sentence once
        pytest.exit(f"densenet-opt: {error}", returncode=1)
    except UserError as error:
        raise pytest.UsageError(str(error)) from None


def stored_run_refusal(config: pytest.Config, options: SweepOptions) -> str | None:
    """Why pytest-benchmark's run must not be stored as the kind's baseline: a sweep that did
    not end cleanly (a failed config, an early exit: close_sweep stores no speedups then, and
    a stored run without them would break every later gate), or gate.baseline_refusal."""
    session = config.stash.get(SESSION_KEY, None)
    if session is not None and session.exitstatus != 0:
        return "the sweep did not end cleanly"
    return gate.baseline_refusal(options)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_benchmark_compare_machine_info(benchmarksession) -> None:
    """Before pytest-benchmark's own check, whose "machine_info is different" warning
    names the storage relative to the working directory and raised ValueError (an
    INTERNALERROR before anything was measured) for a --benchmark-storage outside it."""
    benchmark_session.locate_anywhere(benchmarksession.storage)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """benchmark.json and every stored run name what their figures belong to: the machine
    kind and the software that ran (measure.env), under ``densenet_opt``."""
    if not is_sweep(config):
        return
    device = torch.device(sweep_options(config).device)
    machine_info["densenet_opt"] = {"machine_kind": machine_kind(device), "software": software_versions(device)}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    """pytest-benchmark writes its files here: one that cannot be written (a full disk)
    ends the run with its one sentence and exit code 2, not a traceback."""
    try:
        return (yield)
    except UserError as error:
        pytest.exit(f"densenet-opt: {error}", returncode=2)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[SESSION_KEY] = session
    session.config.stash[STARTED_KEY] = utc_timestamp()


SESSION_KEY = pytest.StashKey[pytest.Session]()
STARTED_KEY = pytest.StashKey[str]()  # when the session started (report.utc_timestamp): the gate's "this run"


@pytest.hookimpl(wrapper=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> Iterator[None]:
    """After pytest-benchmark's table and its latency comparison (which raises
    PerformanceRegression): the sweep's closing steps (gate.close_sweep), whichever way the
    sweep was started; then the exit code: 1 for a latency or speedup regression, 2 for an
    unreadable stored baseline. Results and the summary are written either way."""
    latency_regressed = False
    try:
        yield
    except PerformanceRegression:
        latency_regressed = True
    if not is_sweep(config):
        if latency_regressed:
            raise PerformanceRegression("Performance has regressed.")
        return
    session = config.stash[SESSION_KEY]
    options = sweep_options(config)
    try:
        gate_failed = gate.close_sweep(
            options, measured_ok=exitstatus == 0 and not latency_regressed, write=terminalreporter.write_line,
            started_at=config.stash.get(STARTED_KEY, None),
        )
    except UserError as error:
        terminalreporter.write_line(f"densenet-opt: {error}")
        session.exitstatus = 2
        return
    if latency_regressed:
        # pytest-benchmark's own list: (the benchmark and the stored run, the check that failed).
        failed = benchmark_session.performance_regressions(config) or [("a benchmark", "")]
        # An absolute latency timed while other processes competed for the CPUs says how busy
        # the machine was, not how fast the build is: named, not judged (the paired speedups
        # above are, by the interval rule).
        contended = gate.baseline_refusal(options)
        for name, check in failed:
            terminalreporter.write_line(
                f"LATENCY REGRESSION: {name}: {check or 'a latency'} (beyond {options.max_regression} against the stored run; "
                "pytest-benchmark's comparison table above)"
                + (f" - not judged: {_contended_configs(contended)}" if contended else ""), red=not contended)
        latency_regressed = contended is None
    if latency_regressed or gate_failed:
        terminalreporter.write_line("densenet-opt: the baseline gate FAILED (exit 1); results and summary are written", red=True)
        if session.exitstatus == 0:
            session.exitstatus = 1


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A sweep config found unavailable inside its test (by the fresh-process probe) is
    a skip with the reason, as when its engine cannot be built."""
    try:
        return (yield)
    except VariantUnavailable as reason:
        if ENGINE_FIXTURE not in getattr(item, "fixturenames", ()):
            raise
        pytest.skip(f"{item.name}: {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """A problem the user can fix (a corrupt image, say) is one sentence, not a traceback."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(UserError):
        report.longrepr = f"densenet-opt: {call.excinfo.value}"
    return report


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if ENGINE_FIXTURE in metafunc.fixturenames:
        options = sweep_options(metafunc.config)
        # Under a time budget, batch size by batch size: a budget too short for everything then
        # measures every variant at the first batch sizes, not the first variants at all of them.
        configs = ([(variant, size) for size in options.batch_sizes for variant in options.variants]
                   if options.time_budget_s is not None else
                   [(variant, size) for variant in options.variants for size in options.batch_sizes])
        if options.resume:
            try:
                done, stale = resume_plan(Workbench(options), set(configs))
            except UserError as error:  # the weights or data it compares with: one sentence
                raise pytest.UsageError(str(error)) from None
            configs = [config for config in configs if config not in done]
            capture = metafunc.config.pluginmanager.getplugin("capturemanager")
            for option, measured in stale.items():
                what = ("by an older version, which recorded no inputs" if option == OLDER_VERSION
                        else f"with another {option} than this run's")
                with capture.global_and_fixture_disabled():  # to the terminal, as the sweep's progress lines
                    print(f"[densenet-opt] --resume: {len(measured)} config(s) in the results were measured {what}: "
                          f"measuring them again ({', '.join(f'{v} at batch {b}' for v, b in measured[:4])}"
                          f"{' ...' if len(measured) > 4 else ''})", flush=True)
        metafunc.parametrize(
            ENGINE_FIXTURE, configs, ids=[f"{v}-bs{b}" for v, b in configs], indirect=True, scope="session"
        )


@pytest.fixture(scope="session")
def sweep(pytestconfig: pytest.Config) -> Iterator[Sweep]:
    """The session's Sweep; its progress lines go to the terminal even under capture, and
    every engine it builds passes through the ``pytest_densenet_opt_engine`` hook."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def progress(message: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"[densenet-opt] {message}", flush=True)

    def wrap_engine(variant: str, batch_size: int, engine: Engine) -> Engine:
        replaced = pytestconfig.hook.pytest_densenet_opt_engine(
            config=pytestconfig, variant=variant, batch_size=batch_size, engine=engine
        )
        return engine if replaced is None else replaced

    sweep = Sweep(sweep_options(pytestconfig), progress=progress, wrap_engine=wrap_engine)
    yield sweep
    sweep.close()


@pytest.fixture(scope="session")
def workbench(sweep: Sweep) -> Workbench:
    """The session sweep's Workbench, for tests that build engines or read the evaluation
    data without measuring: its weights, images and reference are the sweep's own."""
    return sweep.workbench


@pytest.fixture(scope="session")
def engine_config(request: pytest.FixtureRequest, sweep: Sweep) -> Iterator[EngineConfig]:
    """Built once per session and shared by every test of that config; skipped with the
    reason when the variant cannot run here (VariantUnavailable) or would not fit in the
    time budget (schedule.SweepClock). Each start prints the count, the time so far and
    the time left."""
    variant, batch_size = request.param
    clock = request.config.stash[CLOCK_KEY]
    too_long = clock.skip_reason(variant, batch_size)
    if too_long is not None:
        sweep.progress(f"{clock.status()} skipping {variant} at batch {batch_size}: {too_long}")
        clock.skip(variant, batch_size)
        sweep.record_skipped_for_time(variant, batch_size, too_long)
        pytest.skip(f"{variant} at batch {batch_size}: skipped for the time budget: {too_long}")
    searching = clock.searches_to_run(variant, sweep.options.variant_options)
    for search, reason in clock.searches_to_skip(variant, batch_size, sweep.options.variant_options):
        sweep.override_options(variant, {search.key: search.skip_value}, reason)
        sweep.progress(f"{variant}: not running {reason}")
        searching.remove(search)
    sweep.progress(f"{clock.status()} building {variant} for batch {batch_size} on {sweep.device.type}")
    clock.start(variant, batch_size, searching)
    shared_before = sweep.workbench.shared_setup_s
    try:
        engine = sweep.workbench.build_engine(variant, batch_size)
    except VariantUnavailable as reason:
        clock.skip(variant, batch_size)  # not a measured time: it would skew the estimates
        pytest.skip(f"{variant} at batch {batch_size} on {sweep.device.type}: {reason}")
    except UserError as error:
        # A problem the user fixes (a full cache, a zero-byte weights file) ends the sweep: one
        # sentence, exit 2 as from the CLI; the closing steps keep what is written.
        clock.finish(built=False)
        pytest.exit(f"densenet-opt: {error}", returncode=2)
    except BaseException:
        clock.finish(built=False)
        raise
    yield EngineConfig(variant, batch_size, engine)
    engine.close()
    clock.finish(shared_s=sweep.workbench.shared_setup_s - shared_before)
    schedule.save_history(sweep.options.cache_dir, sweep.options.device, schedule.history_profile(sweep.options), clock)


def _contended_configs(refusal: str) -> str:
    """"N config(s) were timed while other processes competed for the CPUs (worst: ...)",
    from gate.baseline_refusal's sentence."""
    return refusal.removeprefix("not storing the baseline: ").split(", so their")[0]
