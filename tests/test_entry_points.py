"""The sweep's two entry points as a user meets them.

- ``densenet-opt sweep`` from an installed (not editable) copy, from an empty directory;
- ``pytest --benchmark-only`` with the data and output paths outside the checkout, given as
  separate arguments (the options come from the installed plugin, not from a conftest.py);
- the speedup column does not depend on the order of ``--variants``.
"""

from __future__ import annotations

import pytest

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from PIL import Image

from densenet_opt import report

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--batch-sizes", "1", "--num-samples", "8", "--weights", "synthetic"]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}"
    return result


_NEVER_COPIED = shutil.ignore_patterns(".git", ".nox", "build", "*.egg-info", "__pycache__")


def checkout_ignore(directory: str, names: list[str]) -> set[str]:
    """What copying the checkout leaves out: version control, nox's venvs, build output, and
    the sweeps' results folders at the top only (``densenet_opt/serving/results.py`` is code)."""
    ignored = set(_NEVER_COPIED(directory, names))
    if Path(directory) == REPO:
        ignored |= {name for name in names if name.startswith("results")}
    return ignored


@pytest.mark.slow
def test_an_installed_copy_sweeps_from_an_empty_directory(tmp_path: Path) -> None:
    # A fresh venv whose own site-packages gets the non-editable install; torch and the other
    # dependencies come from this environment's site-packages through a .pth line (a path line
    # adds the folder without running its .pth files, so the editable install stays off).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path / "source"  # building writes build/ and *.egg-info: not into the checkout
    shutil.copytree(REPO, source, ignore=checkout_ignore)
    run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(source)])
    shutil.rmtree(source)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([str(python), "-c", "import densenet_opt; print(densenet_opt.__file__)"], cwd=tmp_path, env=env).stdout.strip()
    assert where.startswith(str(site)), where  # the installed copy, not the checkout

    empty = tmp_path / "empty"
    empty.mkdir()
    command = [str(venv / "bin" / "densenet-opt"), "sweep", "--variants", "baseline", *SMALL, "--output-dir", "out"]
    result = run(command, cwd=empty, env=env)
    rows = report.read_rows(empty / "out" / report.RESULTS_FILE)
    assert [(r.optimization_technique, r.batch_size, r.status) for r in rows] == [("baseline", 1, "ok")], result.stdout[-3000:]
    assert (empty / "out" / "benchmark.json").is_file()
    # Package data: the default budgets (and a machine kind's overrides beside them) come with
    # the installed copy, so the summary checks every row against them and recommend runs.
    summary = (empty / "out" / "summary.md").read_text()
    assert "budgets file" not in summary, summary[-2000:]
    recommended = run([str(venv / "bin" / "densenet-opt"), "recommend", "--results", "out"], cwd=empty, env=env)
    assert "baseline" in recommended.stdout, recommended.stdout
    amd = "amd-epyc_x86v4-vnni-bf16_2c"  # a kind whose overrides are stored beside the default budgets
    overrides = run([str(python), "-c", "from densenet_opt import budgets; "
                     f"print(budgets.load_budgets(kind={amd!r})['int8'].limits['relative_error_max'])"], cwd=empty, env=env)
    assert overrides.stdout.strip() == "0.2", overrides.stdout
    # Stored baselines are the user's data, looked for relative to the current directory: an
    # empty directory has none, and the gate's line says where it looked and what to pass.
    gated = run([str(venv / "bin" / "densenet-opt"), "sweep", "--variants", "baseline", *SMALL, "--rounds", "2",
                 "--output-dir", "gated", "--compare-baseline"], cwd=empty, env=env)
    assert f"{empty / 'benchmarks_baseline'} does not exist" in gated.stdout + gated.stderr, gated.stdout[-3000:]
    assert "--baseline-dir" in gated.stdout + gated.stderr, gated.stdout[-3000:]


def _imagenet_folder(root: Path) -> Path:
    """Two synset folders with one small JPEG each: an ImageNet val subset."""
    for index, wnid in enumerate(("n01440764", "n02102040")):
        (root / wnid).mkdir(parents=True)
        Image.new("RGB", (64, 48), (40 * index, 90, 160)).save(root / wnid / f"ILSVRC2012_val_0000000{index + 1}.JPEG")
    return root


@pytest.mark.slow
def test_pytest_takes_paths_outside_the_checkout_as_separate_arguments(tmp_path: Path) -> None:
    val = _imagenet_folder(tmp_path / "data" / "val")
    out = tmp_path / "results"
    command = [sys.executable, "-m", "pytest", "--benchmark-only", "--imagenet-val", str(val), "--output-dir", str(out),
               "densenet_opt/bench.py", "--variants", "baseline", "--batch-sizes", "1", "--num-samples", "2",
               "--calibration-samples", "1", "--rounds", "2", "--warmup-rounds", "0", "--weights", "synthetic",
               "-p", "no:cacheprovider"]
    result = run(command, cwd=REPO)
    (row,) = report.read_rows(out / report.RESULTS_FILE)
    assert row.status == "ok" and str(val) in row.data and row.num_samples == 2, result.stdout[-3000:]


@pytest.mark.slow
def test_the_speedup_does_not_depend_on_the_order_of_variants(tmp_path: Path) -> None:
    # Unpaired, the speedup divides by the baseline's own row: where the order used to matter.
    # (Paired, each variant's speedup is measured beside its own baseline rounds: test_regression_gate.)
    for order in ("pruned,baseline", "baseline,pruned"):
        out = tmp_path / order.replace(",", "-")
        run([sys.executable, "-m", "densenet_opt", "sweep", "--variants", order, *SMALL, "--rounds", "3",
             "--warmup-rounds", "0", "--speedup-pairing", "off", "--output-dir", str(out)], env={**os.environ})
        rows = {r.optimization_technique: r for r in report.read_rows(out / report.RESULTS_FILE)}
        baseline, pruned = rows["baseline"], rows["pruned"]
        assert pruned.speedup_vs_baseline == round(baseline.latency_ms_per_batch / pruned.latency_ms_per_batch, 3), order
        assert baseline.speedup_vs_baseline == 1.0, order


TIMING_COLUMNS = {
    "model_size_mb", "ram_usage_mb", "vram_usage_mb", "latency_ms_per_batch", "throughput_samples_per_sec",
    "achieved_gflops_per_sec", "latency_ms_stddev", "latency_ms_median", "latency_ms_min", "latency_ms_max",
    "latency_ms_p90", "latency_ms_p99", "vram_torch_peak_mb", "cold_start_ms", "engine_info", "measured_at",
    "cpu_pressure_pct", "load_per_core", "torch_threads",
}


@pytest.mark.slow
def test_pytest_and_the_cli_leave_the_same_outputs(tmp_path: Path) -> None:
    sweep = ["--variants", "baseline", "--batch-sizes", "1", "--num-samples", "4", "--rounds", "2",
             "--warmup-rounds", "0", "--weights", "synthetic"]
    cli = run([sys.executable, "-m", "densenet_opt", "sweep", *sweep, "--output-dir", str(tmp_path / "cli")])
    plain = run([sys.executable, "-m", "pytest", "--benchmark-only", "densenet_opt/bench.py", *sweep,
                 "--output-dir", str(tmp_path / "pytest"), "-p", "no:cacheprovider"], cwd=REPO)
    files = {name: sorted(p.name for p in (tmp_path / name).iterdir() if not p.name.endswith(".lock")) for name in ("cli", "pytest")}
    assert files["cli"] == files["pytest"], files
    assert {"benchmark_results.csv", "benchmark.json", "summary.md", "latency_throughput.png"} <= set(files["cli"])

    def rows(name: str) -> list[dict[str, str]]:
        found = report.read_rows(tmp_path / name / report.RESULTS_FILE)
        return [{k: v for k, v in row.as_csv().items() if k not in TIMING_COLUMNS} for row in found]

    assert rows("cli") == rows("pytest")
    for output in (cli.stdout, plain.stdout):  # the same closing table
        assert "samples/s (speedup over baseline) on cpu:" in output
