"""The command line: bad input is one sentence and exit code 2; a tiny sweep writes a full row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densenet_opt import report


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "densenet_opt", *args], capture_output=True, text=True, cwd=cwd)


def assert_one_sentence(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("densenet-opt: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--batch-sizes", "0"], "at least 1, got 0"),
        (["--batch-sizes", "4,x"], "whole number, got 'x'"),
        (["--batch-sizes", "-3"], "at least 1, got -3"),
        (["--variants", "baseline,turbo"], "unknown variant 'turbo': choose from baseline"),
        (["--device", "tpu"], "unknown --device 'tpu'"),
        (["--num-samples", "ten"], "--num-samples must be a whole number"),
        (["--variant-options", "pruned.amount"], "KEY=VALUE"),
    ],
)
@pytest.mark.slow
def test_bad_options_get_one_sentence(args: list[str], fragment: str) -> None:
    assert_one_sentence(run_cli("sweep", *args), fragment)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it() -> None:
    assert_one_sentence(run_cli("sweep", "--device", "cuda"), "sees no CUDA device", "--device cpu")


@pytest.mark.slow
def test_missing_and_empty_imagenet_folders(tmp_path: Path) -> None:
    assert_one_sentence(run_cli("sweep", "--imagenet-val", str(tmp_path / "absent")), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_sentence(run_cli("sweep", "--imagenet-val", str(tmp_path / "empty")), str(tmp_path / "empty"))


@pytest.mark.slow
def test_weights_of_another_model(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pt"
    torch.save(resnet18(weights=None).state_dict(), path)
    assert_one_sentence(run_cli("sweep", "--weights", str(path)), "not a DenseNet-121 state_dict")


def test_list_shows_the_registry() -> None:
    result = run_cli("list")
    assert result.returncode == 0 and result.stdout.startswith("baseline")
    assert "chains: <transform>+<variant>" in result.stdout and "transforms: pruned, pruned_structured" in result.stdout


@pytest.mark.slow
def test_help_names_every_option() -> None:
    result = run_cli("sweep", "--help")
    for option in ("--device", "--batch-sizes", "--variants", "--weights", "--imagenet-val", "--num-samples", "--output-dir"):
        assert option in result.stdout


@pytest.mark.slow
def test_a_tiny_sweep_writes_a_complete_row(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = run_cli(
        "sweep", "--variants", "baseline", "--batch-sizes", "2", "--num-samples", "4",
        "--rounds", "2", "--warmup-rounds", "0", "--output-dir", str(out), "--weights", "synthetic",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test_inference[baseline-bs2]" in result.stdout  # pytest-benchmark's table
    (row,) = [r.as_csv() for r in report.read_rows(out / report.RESULTS_FILE)]
    # The baseline pairs with nothing: its speedup is 1 by definition, with no rounds of ratios.
    assert [c for c in report.COLUMNS if row[c] == ""] == ["speedup_per_round", "contended_pairs"]
    assert (row["batch_size"], row["device"], row["vram_usage_mb"]) == ("2", "cpu", "0.0")
    assert float(row["latency_ms_per_batch"]) > 0 and float(row["ram_usage_mb"]) > 30
    assert (out / "benchmark.json").exists()
