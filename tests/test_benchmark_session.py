"""Every private point of pytest-benchmark that densenet_opt/benchmark_session.py uses, checked
against the installed pytest-benchmark: an upgrade that moves one fails here, naming it,
rather than silently turning the gate off."""

from __future__ import annotations

import importlib.metadata
import inspect
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from pytest_benchmark.session import BenchmarkSession
from pytest_benchmark.storage.file import FileStorage

from densenet_opt import benchmark_session


def test_the_installed_pytest_benchmark_is_in_the_tested_range() -> None:
    version = importlib.metadata.version("pytest-benchmark")
    assert version in SpecifierSet(benchmark_session.TESTED), (
        f"pytest-benchmark {version} is outside the tested range {benchmark_session.TESTED}: rerun these tests and "
        "widen TESTED and pyproject.toml's pin only when they pass")
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("pytest-benchmark")]
    assert pins == [f"pytest-benchmark{benchmark_session.TESTED}"], pins


@pytest.mark.parametrize("name", ["handle_loading", "save_json"])
def test_the_session_methods_replaced_or_called_exist(name: str) -> None:
    assert callable(getattr(BenchmarkSession, name, None)), f"BenchmarkSession.{name} is gone: see benchmark_session.py"


def test_the_session_attributes_set_exist_after_construction() -> None:
    """apply_settings sets storage, save, compare and compare_fail; performance_regressions
    is read. pytest-benchmark assigns them all in BenchmarkSession.__init__ (and
    performance_regressions in its check)."""
    source = inspect.getsource(BenchmarkSession)
    for attribute in ("self.storage", "self.save", "self.compare", "self.compare_fail", "self.json",
                      "self.machine_id", "self.logger", "self.performance_regressions"):
        assert attribute in source, f"BenchmarkSession no longer sets {attribute}: see benchmark_session.py"


def test_file_storage_numbers_runs_and_saves_as_we_call_it(tmp_path) -> None:
    storage = FileStorage(tmp_path, default_machine_id="m", logger=None)
    assert storage._next_num == "0001", "FileStorage._next_num changed: see benchmark_session.store_run"
    assert callable(storage.save) and callable(storage.get)
    assert isinstance(inspect.getattr_static(FileStorage, "location"), property)
    benchmark_session.locate_anywhere(storage)
    assert type(storage) is benchmark_session.AnywhereFileStorage and storage.location
