"""Every file the suite writes goes through ``write_atomic``: all or nothing, and a full disk is one sentence.

Results (the CSV, benchmark.json, summary.md, plots), stored baselines and cached
artifacts (synthetic weights, pruned models, AOTInductor packages, sidecars) are written
to a temporary file in a fresh hidden folder beside their final path, fsynced and renamed
into place, so a reader or a crash sees the old file or the new one, never part of one.
Whatever goes wrong, the temporary folder is removed. A write that fails for lack of space
or quota, or because the place is read-only or not ours, becomes a UserError that names the
path and what to do; every other error propagates unchanged.

No heavy imports here: the CLI, the report and the cache all use it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from densenet_opt.errors import UserError, VariantUnavailable

# A build in progress touches its folder within minutes; one a day old was left by a
# process that was killed (SIGKILL, out of memory) before it could clean up.
ABANDONED_AFTER_S = 24 * 3600

# Below this, a failed write that did not say why (torch.save's C++ writer raises a
# RuntimeError, not an OSError) is taken to be a full disk.
NEARLY_FULL_BYTES = 1 << 20

_NO_SPACE = {errno.ENOSPC: "no space is left on the device", errno.EDQUOT: "the disk quota is exceeded",
             errno.EFBIG: "the file is larger than the file system or the process's file size limit allows"}
_NOT_WRITABLE = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission is denied",
                 errno.EPERM: "the operation is not permitted",
                 errno.ENOTDIR: "a file stands where one of its directories should be"}
# The same conditions as worded by tools that report them as text (a compiler, torch's C++ writer).
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded")


def build_folder(parent: Path, name: str) -> Path:
    """A fresh hidden folder in ``parent`` to build ``name`` in before it is renamed into
    place; removes the ones that killed processes abandoned there, so they do not pile up.

    Raises OSError when ``parent`` cannot be created or written (``write_atomic`` turns
    that into a UserError)."""
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f".{name}.*"):
        try:
            if old.is_dir() and time.time() - old.stat().st_mtime > ABANDONED_AFTER_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another process removed it first
            pass
    return Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged process can still write on the file system of ``path`` (or of
    its nearest existing parent); None when that cannot be told."""
    for candidate in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def write_failure(path: Path, error: BaseException, option: str) -> UserError | None:
    """The one sentence for a write of ``path`` that failed with ``error``, or None when
    the failure is not about space, quota or permission (then the caller re-raises it).

    ``option`` is what chooses another place, e.g. ``--output-dir`` or ``--cache-dir``.
    Looks through the exception's causes for an OSError; a failure that gives no errno
    (torch.save, a compiler's message) counts as a full disk when its text says so or when
    the file system of ``path`` has less than NEARLY_FULL_BYTES left. Call it before
    removing the partial file, which would free the space it took.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in {**_NO_SPACE, **_NOT_WRITABLE}:
            return _sentence(_named_path(path, current), current.errno, option)
        current = current.__cause__ or current.__context__
    if not isinstance(error, Exception) or isinstance(error, (UserError, VariantUnavailable)):
        return None
    text = str(error).lower()
    free = free_bytes(path)
    if any(words in text for words in _NO_SPACE_TEXT) or (free is not None and free < NEARLY_FULL_BYTES):
        return _sentence(Path(path), errno.ENOSPC, option)
    return None


def _named_path(path: Path, error: OSError) -> Path:
    """The file the OSError names when it lies outside ``path``'s directory (the inductor
    cache in /tmp, say), else ``path`` (the failure was ours: the temporary copy, the folder)."""
    if error.filename:
        named = Path(os.path.abspath(os.fsdecode(error.filename)))
        directory = Path(os.path.abspath(Path(path).parent))
        if named != directory and directory not in named.parents:
            return named
    return Path(path)


def _sentence(path: Path, code: int, option: str) -> UserError:
    if code in _NO_SPACE:
        return UserError(f"cannot write {path}: {_NO_SPACE[code]}; free space there or pass another {option}")
    return UserError(f"cannot write {path}: {_NOT_WRITABLE[code]}; pass a writable {option}")


def write_atomic(path: Path, write: Callable[[Path], object], *, option: str) -> None:
    """Publish the file that ``write(tmp)`` makes at ``tmp`` as ``path``, all or nothing.

    ``tmp`` carries ``path``'s name (AOTInductor names an archive's contents after its
    file; matplotlib picks the format by the suffix) inside a fresh hidden folder beside
    ``path``. The file is fsynced and renamed over ``path``; the folder is removed whatever
    happens, Ctrl-C included, and an existing ``path`` is left intact when anything fails.

    Raises UserError (one sentence naming the path and ``option``, the command-line option
    that chooses another place) when the write fails for lack of space or quota, or
    because the place is read-only or not writable; any other exception from ``write``
    propagates unchanged.
    """
    path = Path(path)
    try:
        folder = build_folder(path.parent, path.name)
    except OSError as error:
        failure = write_failure(path, error, option)
        if failure is None:
            raise
        raise failure from error
    try:
        tmp = folder / path.name
        write(tmp)
        handle = os.open(tmp, os.O_RDONLY)  # read-only suffices for fsync, whatever mode write gave it
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(tmp, path)
    except BaseException as error:
        failure = write_failure(path, error, option)  # before the partial file frees its space
        shutil.rmtree(folder, ignore_errors=True)
        if failure is None:
            raise
        raise failure from error
    shutil.rmtree(folder, ignore_errors=True)
    _fsync_directory(path.parent)


def write_text(path: Path, text: str, *, option: str) -> None:
    """``text`` as UTF-8, newlines untranslated, through ``write_atomic`` (which says what it raises)."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""), option=option)


def write_bytes(path: Path, data: bytes, *, option: str) -> None:
    """``data`` through ``write_atomic`` (which says what it raises)."""
    write_atomic(path, lambda tmp: tmp.write_bytes(data), option=option)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; best effort (not every file system allows it)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
