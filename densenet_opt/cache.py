"""Cached artifacts on disk: one file plus a JSON sidecar with its size and sha256.

A file is used only when it matches its sidecar; a missing, truncated or corrupt one is
reported and built again. Files are published atomically and the sidecar goes last, so a
crash at any point leaves something that fails the check rather than a half-written
artifact that passes it. (ONNX artifacts are folders with a manifest: variants/onnx/export.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from densenet_opt import atomic
from densenet_opt.errors import UserError

NOT_CACHED = "not cached"
# What a failed write into the cache tells the user to change.
CACHE_OPTION = "--cache-dir"



# Where synthetic weights and built artifacts are cached unless --cache-dir says otherwise.
CACHE_VARIABLE = "DENSENET_OPT_CACHE"


def default_cache_dir() -> Path:
    """$DENSENET_OPT_CACHE, else ~/.cache/densenet_opt. The home directory is looked up only
    when the variable is unset: a container user with no home can set it. Raises UserError
    when neither is available."""
    named = os.environ.get(CACHE_VARIABLE)
    if named:
        return Path(named)
    try:
        return Path.home() / ".cache" / "densenet_opt"
    except RuntimeError:  # no HOME and no passwd entry
        raise UserError(f"there is no home directory to cache artifacts in: set {CACHE_VARIABLE} or pass --cache-dir") from None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

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


def torch_save(obj: object, path: Path) -> None:
    """``torch.save`` through a Python file: a failed write then keeps its OSError (and its
    errno: a full disk) as the context of torch's RuntimeError, which ``atomic`` reads.
    Meant as the ``write`` of ``atomic.write_atomic``; raises what torch.save raises."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def write_sidecar(path: Path, record: Mapping[str, object]) -> dict:
    """Record ``path``'s size and sha256 (and ``record``) beside it: call it last, once
    ``path`` is complete. Raises UserError when the cache's disk is full or read-only."""
    meta = {"size": path.stat().st_size, "sha256": file_sha256(path), **record}
    atomic.write_text(sidecar(path), json.dumps(meta, indent=2) + "\n", option=CACHE_OPTION)
    return meta
