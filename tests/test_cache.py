"""The file cache's building blocks: atomic publication and cleanup after killed builds."""

from __future__ import annotations

import os
import time
from pathlib import Path

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
