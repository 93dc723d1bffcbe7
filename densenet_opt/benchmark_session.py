"""pytest-benchmark's session and storage: every use of its internals, in one module.

pytest-benchmark (pinned in pyproject.toml to the range tested here) offers hooks and
options, but no API for what the sweep needs when it sets the gate's options after pytest
has parsed them, or writes its files atomically. The private points used, each behind a
function here and each checked by tests/test_benchmark_session.py, which fails naming the
point when an upgrade changes it:

- ``config._benchmarksession`` (the BenchmarkSession object): ``session_of``;
- the session's ``storage``, ``save``, ``compare``, ``compare_fail`` attributes, then its
  ``handle_loading()`` to reload the stored run to compare with: ``apply_settings``;
- the session's ``save_json`` method and its storage's ``save``, replaced by atomic writes:
  ``route_benchmark_writes``;
- ``FileStorage._next_num``, the next run number: ``store_run``;
- a FileStorage's ``__class__``, swapped to fix ``location`` outside the working directory
  (pytest-benchmark issue #217): ``locate_anywhere``;
- the session's ``performance_regressions`` list after ``--benchmark-compare-fail``:
  ``performance_regressions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import load_storage, safe_dumps

from densenet_opt import atomic
from densenet_opt.baselines import BASELINE_OPTION
from densenet_opt.report import OUTPUT_OPTION

# The pytest-benchmark versions this module was tested with (pyproject.toml pins them).
TESTED = ">=5.3.1,<5.4"


def session_of(config: pytest.Config):
    """pytest-benchmark's BenchmarkSession of this pytest run."""
    return config._benchmarksession


def apply_settings(session, settings: Mapping[str, object]) -> None:
    """Give pytest-benchmark's session the gate's storage and options (gate.benchmark_settings:
    ``benchmark_storage``, ``benchmark_save``, ``benchmark_compare``, ``benchmark_compare_fail``)
    after it read its own options, then reload the run to compare with, as it does at start."""
    if "benchmark_storage" not in settings:
        return
    session.storage = load_storage(settings["benchmark_storage"], logger=session.logger,
                                   default_machine_id=session.machine_id, netrc="")
    for name in ("benchmark_save", "benchmark_compare", "benchmark_compare_fail"):
        if name in settings:
            setattr(session, name.removeprefix("benchmark_"), settings[name])
    session.handle_loading()


def performance_regressions(config: pytest.Config) -> list[tuple[str, str]]:
    """pytest-benchmark's own list of (benchmark and stored run, the check that failed) after
    its --benchmark-compare-fail check; [] when it kept none."""
    return list(getattr(session_of(config), "performance_regressions", None) or [])


def benchmark_document_bytes(document: Mapping) -> bytes:
    """A pytest-benchmark JSON document, serialised exactly as pytest-benchmark writes it."""
    return safe_dumps(document, ensure_ascii=True, indent=4).encode()


def write_benchmark_json(path: Path, document: Mapping) -> None:
    """pytest-benchmark's ``--benchmark-json`` file, written atomically (see
    ``route_benchmark_writes``). Raises UserError naming ``path`` when the disk is full or
    the directory read-only; an existing file is left intact."""
    atomic.write_bytes(Path(path), benchmark_document_bytes(document), option=OUTPUT_OPTION)


def store_run(storage: FileStorage, document: Mapping, name: str) -> Path:
    """What pytest-benchmark's ``FileStorage.save`` stores (``--benchmark-save NAME``: the
    next run number, in this machine's folder), written atomically. Returns the file.
    Raises UserError naming the file when the disk is full or the directory read-only."""
    # FileStorage numbers runs itself; --benchmark-compare finds them by that number.
    path = Path(storage.get(f"{storage._next_num}_{name}.json"))
    atomic.write_bytes(path, benchmark_document_bytes(document), option=BASELINE_OPTION)
    return path


def route_benchmark_writes(session, refusal: Callable[[], str | None] = lambda: None) -> None:
    """Make pytest-benchmark's session (``config._benchmarksession``) write its JSON report
    and its stored runs through ``write_atomic``: a full disk is then one sentence
    (UserError) and leaves no partial file, where pytest-benchmark's own writes leave a
    truncated file and end in a traceback. A run is not stored when ``refusal()`` gives a
    reason (a run timed under contention: gate.baseline_refusal, which also says so)."""
    if session.json:
        def save_json(document: Mapping) -> None:
            write_benchmark_json(Path(session.json), document)
            session.logger.info(f"Wrote benchmark data in: {session.json}", purple=True)

        session.save_json = save_json
    storage = session.storage
    if isinstance(storage, FileStorage):
        def save(document: Mapping, name: str) -> None:
            if refusal() is not None:
                return
            path = store_run(storage, document, name)
            session.logger.info(f"Saved benchmark data in: {path}")

        storage.save = save


class AnywhereFileStorage(FileStorage):
    """pytest-benchmark's FileStorage, whose ``location`` also works for storage outside the
    working directory: pytest-benchmark's raises ValueError there (pytest-benchmark issue
    #217), which ended a gate run from another directory in an INTERNALERROR."""

    @property
    def location(self) -> str:
        try:
            return str(self.path.relative_to(Path.cwd()))
        except ValueError:
            return str(self.path)


def locate_anywhere(storage: object) -> None:
    """Give a FileStorage made by pytest-benchmark the ``location`` of AnywhereFileStorage
    (pytest-benchmark makes its storage itself, from --benchmark-storage)."""
    if type(storage) is FileStorage:
        storage.__class__ = AnywhereFileStorage
