"""Cached artifacts on disk: one file plus a JSON sidecar with its size and sha256.

A file is used only when it matches its sidecar; a missing, truncated or corrupt one is
reported and built again. Files are published atomically and the sidecar goes last, so a
crash at any point leaves something that fails the check rather than a half-written
artifact that passes it. (ONNX artifacts are folders with a manifest: onnx_export.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from densenet_opt.errors import UserError
from densenet_opt.model import file_sha256

NOT_CACHED = "not cached"


def key_digest(key: Mapping[str, object]) -> str:
    """A short name for a cache key (the full key is kept in the sidecar or manifest)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def tensor_digest(tensor: torch.Tensor) -> str:
    """Identifies data such as calibration images in a cache key."""
    return hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def check_cached(path: Path) -> tuple[dict | None, str]:
    """The sidecar's record when ``path`` matches it, else (None, why not)."""
    if not path.exists():
        return None, NOT_CACHED
    try:
        meta = json.loads(sidecar(path).read_text())
        size, sha256 = int(meta["size"]), str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"its sidecar is missing or unreadable ({error.__class__.__name__})"
    problem = file_problem(path, size, sha256)
    return (None, problem) if problem else (meta, "ok")


def file_problem(path: Path, size: int, sha256: str) -> str | None:
    """Why ``path`` is not the file recorded with ``size`` and ``sha256``; None if it is."""
    if path.stat().st_size != size:
        return f"its size {path.stat().st_size} is not the {size} recorded (truncated?)"
    if file_sha256(path) != sha256:
        return "its sha256 is not the one recorded (corrupt)"
    return None


# A build in progress touches its folder within minutes; one a day old was left by a
# process that was killed (SIGKILL, out of memory) before it could clean up.
ABANDONED_AFTER_S = 24 * 3600


def build_folder(parent: Path, name: str) -> Path:
    """A fresh hidden folder in ``parent`` to build ``name`` in before it is renamed into
    place; removes the ones that killed processes abandoned there, so they do not pile up."""
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f".{name}.*"):
        try:
            if old.is_dir() and time.time() - old.stat().st_mtime > ABANDONED_AFTER_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another process removed it first
            pass
    return Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Readers never see a partial file: ``write`` fills a temp folder beside ``path``
    under the final name (AOTInductor names an archive's contents after its file), then
    the file is renamed into place."""
    try:
        folder = build_folder(path.parent, path.name)
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror}): pass a writable --cache-dir") from None
    try:
        tmp = folder / path.name
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_sidecar(path: Path, record: Mapping[str, object]) -> dict:
    """Record ``path``'s size and sha256 (and ``record``) beside it: call it last, once
    ``path`` is complete."""
    meta = {"size": path.stat().st_size, "sha256": file_sha256(path), **record}
    atomic_write(sidecar(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return meta
