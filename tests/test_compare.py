"""`densenet-opt compare`: A/B of two versions on one machine, interleaved (densenet_opt/compare.py).

The head side is a copy of this tree whose `pruned` engine is deliberately 30% slower
(every call followed by a sleep of 0.3x its own time); the compare names pruned as a
regression and leaves the baseline variant, the same code on both sides, unchanged. Two
identical trees pass with a CPU hog running beside them the whole time. Small settings:
synthetic weights, batch 1, 4 images.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from densenet_opt import compare
from densenet_opt.errors import UserError

REPOSITORY = Path(__file__).resolve().parent.parent
COMPARE = ["--variants", "baseline,pruned", "--batch-sizes", "1", "--num-samples", "4", "--weights", "synthetic",
           "--warmup-rounds", "2"]
SLOWED = textwrap.dedent('''

    # Injected by tests/test_compare.py: every pruned call takes 1.3x its own time.
    import time as _time

    _unslowed_build_engine = Workbench.build_engine


    def _slowed_build_engine(self, variant, batch_size):
        engine = _unslowed_build_engine(self, variant, batch_size)
        if variant != "pruned":
            return engine

        def call(batch):
            started = _time.perf_counter()
            logits = engine(batch)
            _time.sleep(0.3 * (_time.perf_counter() - started))
            return logits
        return call


    Workbench.build_engine = _slowed_build_engine
''')


def run_compare(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "densenet_opt", "compare", *COMPARE, "--output-dir", str(tmp_path / name), *args],
                          capture_output=True, text=True, cwd=tmp_path)


def verdicts(tmp_path: Path, name: str) -> dict[str, str]:
    with (tmp_path / name / compare.COMPARE_FILE).open() as f:
        return {row["variant"]: row["verdict"] for row in csv.DictReader(f)}


@pytest.mark.slow
def test_a_head_with_pruned_30_percent_slower_names_pruned(tmp_path: Path) -> None:
    slowed = tmp_path / "slowed"
    shutil.copytree(REPOSITORY / "densenet_opt", slowed / "densenet_opt", ignore=shutil.ignore_patterns("__pycache__"))
    with (slowed / "densenet_opt" / "workbench.py").open("a") as f:
        f.write(SLOWED)
    result = run_compare(tmp_path, "slowed", "--base", str(REPOSITORY), "--head", str(slowed), "--rounds", "20")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"head: densenet_opt from {slowed / 'densenet_opt' / '__init__.py'}" in result.stdout
    assert verdicts(tmp_path, "slowed") == {"baseline": "unchanged", "pruned": "REGRESSED"}
    line = next(line for line in result.stdout.splitlines() if line.startswith("REGRESSION: pruned at batch 1"))
    assert "speed ratio 0.7" in line and "99% CI" in line and "head vs base" in line


@pytest.mark.timing
@pytest.mark.slow
def test_two_identical_trees_pass_with_a_cpu_hog_beside_them(tmp_path: Path) -> None:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        result = run_compare(tmp_path, "same", "--base", str(REPOSITORY), "--rounds", "10")
    finally:
        hog.kill()
        hog.wait()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert set(verdicts(tmp_path, "same").values()) <= {"unchanged", "faster"}
    assert "REGRESSION" not in result.stdout


def test_a_revision_git_cannot_export_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"git cannot export revision 'no-such-revision' .*name a commit, branch or tag"):
        compare.resolve_side("base", "no-such-revision", None, REPOSITORY, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no densenet_opt package"):
        compare.resolve_side("base", str(tmp_path / "empty"), None, REPOSITORY, tmp_path)


def test_the_committed_tree_exports_and_its_worker_answers(tmp_path: Path) -> None:
    """A git revision becomes a tree of its own (git archive), whose worker imports its own package."""
    side = compare.resolve_side("base", "HEAD", None, REPOSITORY, tmp_path)
    assert side.tree == tmp_path / "base" and (side.tree / "densenet_opt" / "__init__.py").is_file()
