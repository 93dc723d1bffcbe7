"""`densenet-opt compare`: A/B of two versions on one machine, interleaved (densenet_opt/compare.py).

Both sides of the regression test are copies of this tree whose engines have a fixed cost
(a sleep; each distinct batch's logits computed once by the real engine), so that the
verdict depends on compare's machinery, never on how busy the machine is (a test asserts
no relation between two timings of a real engine): 40 ms for every engine on the base
side, 80 ms for `pruned` on the head side (far above a loaded machine's wake-up delays,
which read 20 ms against 30 as 0.79 instead of 0.67). The compare names pruned as a
regression and leaves the baseline variant unchanged. Two identical trees (real engines)
pass with a CPU hog running beside them the whole time. Small settings: synthetic
weights, batch 1, 4 images.
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
FIXED_COST = textwrap.dedent('''

    # Injected by tests/test_compare.py: engines of a fixed cost, MS milliseconds a call.
    import time as _time

    _real_build_engine = Workbench.build_engine


    def _fixed_cost_build_engine(self, variant, batch_size):
        engine = _real_build_engine(self, variant, batch_size)
        seconds = MS.get(variant, 40) / 1000
        computed = {}

        def call(batch):
            key = (tuple(batch.shape), float(batch.double().sum()))
            if key not in computed:
                computed[key] = engine(batch)
            _time.sleep(seconds)
            return computed[key]
        return call


    Workbench.build_engine = _fixed_cost_build_engine
''')


def fixed_cost_tree(tmp_path: Path, name: str, milliseconds: dict[str, int]) -> Path:
    """A copy of this tree's package whose engines cost ``milliseconds[variant]`` (40 by default)."""
    tree = tmp_path / name
    shutil.copytree(REPOSITORY / "densenet_opt", tree / "densenet_opt", ignore=shutil.ignore_patterns("__pycache__"))
    with (tree / "densenet_opt" / "workbench.py").open("a") as f:
        f.write(FIXED_COST.replace("MS", repr(milliseconds)))
    return tree


def run_compare(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "densenet_opt", "compare", *COMPARE, "--output-dir", str(tmp_path / name), *args],
                          capture_output=True, text=True, cwd=tmp_path)


def verdicts(tmp_path: Path, name: str) -> dict[str, str]:
    with (tmp_path / name / compare.COMPARE_FILE).open() as f:
        return {row["variant"]: row["verdict"] for row in csv.DictReader(f)}


@pytest.mark.slow
def test_a_head_with_pruned_slower_names_pruned(tmp_path: Path) -> None:
    base, head = fixed_cost_tree(tmp_path, "base", {}), fixed_cost_tree(tmp_path, "head", {"pruned": 80})
    result = run_compare(tmp_path, "slowed", "--base", str(base), "--head", str(head), "--rounds", "12")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"head: densenet_opt from {head / 'densenet_opt' / '__init__.py'}" in result.stdout
    assert verdicts(tmp_path, "slowed") == {"baseline": "unchanged", "pruned": "REGRESSED"}
    with (tmp_path / "slowed" / compare.COMPARE_FILE).open() as f:
        pruned = next(row for row in csv.DictReader(f) if row["variant"] == "pruned")
    assert 0.4 < float(pruned["ci_low"]) <= 0.5 * 1.1 and float(pruned["ci_high"]) < 0.75  # 40 ms / 80 ms, clearly below
    line = next(line for line in result.stdout.splitlines() if line.startswith("REGRESSION: pruned at batch 1"))
    assert "99% CI" in line and "head vs base" in line


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
