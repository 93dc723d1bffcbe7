"""What the repository's tests share: small models, images, a cache, fault-injection set-up.

The sweep's own fixtures are not here. ``sweep`` (one :class:`~densenet_opt.sweep.Sweep` per
session), ``workbench`` (its :class:`~densenet_opt.workbench.Workbench`) and ``engine_config``
(one built engine per (variant, batch size), parametrized from ``--variants`` and
``--batch-sizes`` by the plugin's ``pytest_generate_tests``) live, with the sweep's options
and hooks, in the pytest plugin ``densenet_opt/plugin.py``. The package
registers it through the ``pytest11`` entry point (pyproject.toml), so pytest loads it before
it reads the command line, in this repository and from an installed copy alike, which has no
conftest.py; a test (densenet_opt/bench.py, tests/test_budgets.py) reaches them by naming them
as arguments. This file redefines none of the plugin's fixtures or options, and no test file
redefines one of these (tests/test_layout.py checks both).

**Test kinds.** A test is a unit test unless marked: ``slow`` (builds DenseNet-121 or runs a
sweep in a subprocess: seconds to minutes each), ``timing`` (asserts durations or rates of
real sleeps and engines, which a loaded machine can upset) or ``sweep`` (the benchmark and the
tests over its fixtures). A plain ``pytest`` in the repository runs the unit tests only, fast,
and any DenseNet-121 built there fails the test that built it; ``--all-kinds`` (what
``nox -s tests``, the README's test command, passes) runs everything, as does naming files,
a ``-m``/``-k`` expression or ``--benchmark-only``. These two hooks and the option are the
repository's own: the plugin knows nothing of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

TESTS = Path(__file__).resolve().parent / "tests"

# ---------------------------------------------------------------------------------------
# Test kinds
# ---------------------------------------------------------------------------------------

TEST_KINDS = {
    "slow": "builds DenseNet-121 or runs a sweep in a subprocess (seconds to minutes)",
    "timing": "asserts durations or rates of real sleeps or engines (a loaded machine can upset it)",
    "sweep": "the DenseNet sweep's benchmark, and tests over its fixtures (found by fixture, no mark needed)",
}
ALL_KINDS_OPTION = "--all-kinds"
# A test over one of the plugin's sweep fixtures is of kind "sweep" without a mark (the
# benchmark in densenet_opt/bench.py is the package's, which knows no marks of ours).
SWEEP_FIXTURES = frozenset({"sweep", "workbench", "engine_config"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(ALL_KINDS_OPTION, action="store_true", default=False,
                     help="run every kind of test (unit, " + ", ".join(TEST_KINDS) + "); a plain `pytest` here runs "
                     "the unit tests only")


def unit_tests_only(config: pytest.Config) -> bool:
    """A plain ``pytest`` in the repository: no --all-kinds, no files named, no -m or -k, not
    --benchmark-only."""
    return not (config.getoption(ALL_KINDS_OPTION) or config.option.markexpr or config.option.keyword
                or config.getoption("benchmark_only", False)
                or config.args_source is not pytest.Config.ArgsSource.TESTPATHS)


def _no_densenet121(*args, **kwargs):
    raise RuntimeError("a unit test built DenseNet-121: mark it slow (conftest.py, test kinds)")


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in TEST_KINDS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")
    if unit_tests_only(config):
        import torchvision.models
        import torchvision.models.densenet

        from densenet_opt import model

        for owner in (torchvision.models, torchvision.models.densenet, model):
            owner.densenet121 = _no_densenet121


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests only, unless asked otherwise (unit_tests_only); the others deselected.
    First, so that the sweep's own hook sees no benchmark left to run."""
    if not unit_tests_only(config):
        return
    kept = [item for item in items if not any(item.get_closest_marker(kind) for kind in TEST_KINDS)
            and not SWEEP_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept

# ---------------------------------------------------------------------------------------
# Small models
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def make_tiny_densenet() -> Callable[[], nn.Module]:
    """A builder of the tiny DenseNet (growth 8, blocks 2-2-2-2, seeded 0, eval mode): the
    structure of DenseNet-121 at a fraction of the cost. Each call builds a new one, seeding
    torch's global generator first, as a fixture that adapts its own copy needs."""

    def build() -> nn.Module:
        from torchvision.models import DenseNet

        torch.manual_seed(0)
        return DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=4).eval()

    return build


@pytest.fixture(scope="module")
def tiny_densenet(make_tiny_densenet: Callable[[], nn.Module]) -> nn.Module:
    """One tiny DenseNet per module, for tests of the build wiring (copy it to change it)."""
    return make_tiny_densenet()


@pytest.fixture(scope="module")
def densenet() -> nn.Module:
    """A randomly initialised DenseNet-121 (seeded 0, eval mode), one per module (copy it to
    change it)."""
    from torchvision.models import densenet121

    torch.manual_seed(0)
    return densenet121(weights=None).eval()


@pytest.fixture(scope="module")
def densenet_state_dict(densenet: nn.Module) -> dict[str, torch.Tensor]:
    """``densenet``'s weights as a state dict of their own tensors: what a weights file holds."""
    return {name: tensor.clone() for name, tensor in densenet.state_dict().items()}


# ---------------------------------------------------------------------------------------
# Images: the sweep's evaluation images and the fp32 reference on them
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_images(request: pytest.FixtureRequest, workbench) -> torch.Tensor:
    """The first images of the session's evaluation set (``workbench``, the plugin's fixture):
    the test module's ``BATCH`` of them (4 if it has none), at most the whole set."""
    count = getattr(request.module, "BATCH", 4)
    return workbench.eval_set.head(min(count, len(workbench.eval_set)))


@pytest.fixture(scope="module")
def reference_logits(workbench, eval_images: torch.Tensor) -> torch.Tensor:
    """The fp32 reference model's logits on ``eval_images``: what a variant is compared with."""
    with torch.inference_mode():
        return workbench.reference_model()(eval_images)


# ---------------------------------------------------------------------------------------
# Caches and stand-in processes
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def artifact_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact cache the tests' sweeps and recipes use: $DENSENET_OPT_CACHE when set (as
    CI and ``nox -s tests`` do, so slow artifacts such as the synthetic weights are paid at
    most once across runs and test files), otherwise one temporary folder for the session."""
    env = os.environ.get("DENSENET_OPT_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("cache")


@pytest.fixture
def fake_python(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ``python`` that runs the test module's ``FAKE_SWEEP`` script in place of a shard's
    ``python -m densenet_opt.runner`` (its request as JSON on standard input)."""
    script = tmp_path / "fake_sweep.py"
    script.write_text(request.module.FAKE_SWEEP)
    launcher = tmp_path / "python"
    launcher.write_text(f"#!/bin/sh\nshift 2\nexec {sys.executable} {script} \"$@\"\n")  # drop `-m densenet_opt.runner`
    launcher.chmod(0o755)
    return str(launcher)


# ---------------------------------------------------------------------------------------
# Fault injection: tests/fault_plugin.py (-p fault_plugin) and tests/full_disk.py
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_plugin_pythonpath() -> str:
    """PYTHONPATH with tests/ first: where a process a test starts (a sweep, a Ray worker)
    imports tests/fault_plugin.py (``-- -p fault_plugin``) and tests/full_disk.py."""
    return os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))


@pytest.fixture
def fault_plugin_on_path(monkeypatch: pytest.MonkeyPatch, fault_plugin_pythonpath: str) -> None:
    """For this test, processes it starts with this process's environment find the
    fault-injection modules (``fault_plugin_pythonpath``)."""
    monkeypatch.setenv("PYTHONPATH", fault_plugin_pythonpath)
