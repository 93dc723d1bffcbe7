"""The file cache's building blocks: atomic publication and cleanup after killed builds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from densenet_opt.atomic import ABANDONED_AFTER_S, build_folder, write_atomic


def test_a_build_folder_abandoned_by_a_killed_process_is_removed(tmp_path: Path) -> None:
    abandoned = tmp_path / ".model.pt.abc123"
    (abandoned / "model.pt").parent.mkdir()
    (abandoned / "model.pt").write_bytes(b"half written")
    old = time.time() - ABANDONED_AFTER_S - 60
    os.utime(abandoned, (old, old))
    in_progress = tmp_path / ".model.pt.def456"  # another process building right now
    in_progress.mkdir()
    other = tmp_path / ".other.pt.abc123"  # not ours to judge
    other.mkdir()
    os.utime(other, (old, old))

    fresh = build_folder(tmp_path, "model.pt")

    assert not abandoned.exists()
    assert in_progress.is_dir() and other.is_dir() and fresh.is_dir()
    assert fresh.name.startswith(".model.pt.")


def test_atomic_write_publishes_the_file_and_leaves_no_build_folder(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "weights.pt"
    write_atomic(target, lambda tmp: tmp.write_bytes(b"weights"), option="--cache-dir")
    assert target.read_bytes() == b"weights"
    assert sorted(p.name for p in target.parent.iterdir()) == ["weights.pt"]


def test_no_home_directory_is_needed_when_the_cache_is_named(monkeypatch, tmp_path: Path) -> None:
    """A container user with no home (HOME unset, no passwd entry): Path.home() raises. With
    $DENSENET_OPT_CACHE set nothing asks for it; without, one sentence says what to set."""
    from densenet_opt.cache import default_cache_dir
    from densenet_opt.config import options_from_mapping
    from densenet_opt.errors import UserError

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.setenv("DENSENET_OPT_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    assert options_from_mapping({"device": "cpu"}).cache_dir == tmp_path / "cache"
    monkeypatch.delenv("DENSENET_OPT_CACHE")
    with pytest.raises(UserError, match="no home directory to cache artifacts in: set DENSENET_OPT_CACHE or pass --cache-dir"):
        options_from_mapping({"device": "cpu"})
    assert options_from_mapping({"device": "cpu", "cache_dir": str(tmp_path / "c2")}).cache_dir == tmp_path / "c2"
