"""A full disk without root (tests only): files opened for writing whose path matches take
half of their first write and then fail with ENOSPC, as writes to a full file system do.

In a test: ``monkeypatch.setattr(builtins, "open", full_open(builtins.open, matches))`` and
the same for ``io.open`` (pathlib opens through it). In a subprocess: ``install(matches)``.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from collections.abc import Callable


class _FullFile:
    """A real file whose first write stores half of its data, then raises ENOSPC."""

    def __init__(self, handle, name: str) -> None:
        self._handle, self._name = handle, name

    def write(self, data):
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.close()


def full_open(real_open: Callable, matches: Callable[[str], bool]) -> Callable:
    """``open`` that gives a full file for writes to a path for which ``matches`` is true."""

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and matches(os.fsdecode(file)):
            return _FullFile(handle, os.fsdecode(file))
        return handle

    return open_


def install(matches: Callable[[str], bool]) -> None:
    """For the rest of this process (a subprocess started by a test)."""
    builtins.open = io.open = full_open(builtins.open, matches)
