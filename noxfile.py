"""nox sessions: `tests` (CPU test suite, what CI runs), `bench` (the full sweep), `gpu_bench` (the CUDA sweep), `loadgen` (MLPerf LoadGen scenarios), `compare` (A/B of two versions on this machine)."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"  # torch is 5.5 GB: install once per session venv, not every run
PYTHON = "3.11"

# Small enough for a 2-core CI machine, large enough that every path runs:
# two batch sizes (one that does not divide the sample count), 3 timed rounds,
# onnx_int8's accuracy-aware search cut to 3 points on 16 held-out images (the search of
# tests/test_onnx_accuracy_aware.py: one search, cached, serves both), int8 all-int8 (its
# search compiles a DenseNet package per point, minutes each: tests/test_int8_search.py
# runs a real one on a small CNN), and pruned_structured without its recovery (minutes of
# teacher passes and training on 2 cores; tests/test_distillation.py runs it on a small
# DenseNet), and openvino_int8 without accuracy control (NNCF's ranking compiles the model
# once per quantized operation: tests/test_openvino.py runs it on a small CNN), and bf16,
# fp16 and compiled as one dynamic-batch AOTInductor package each instead of one per batch
# size (40-50 s a compile on 2 cores; int8 keeps the default static packages, so the static
# path runs on DenseNet too, and tests/test_torch_variants.py checks both kinds).
TEST_SWEEP = [
    "--batch-sizes=1,3", "--num-samples=64", "--calibration-samples=16", "--rounds=3", "--warmup-rounds=1",
    "--variant-options=onnx_int8.search_images=16,onnx_int8.max_float_nodes=2,int8.float_modules=0,"
    "pruned_structured.distill=off,openvino_int8.accuracy_control=off,"
    "bf16.batch=dynamic,fp16.batch=dynamic,compiled.batch=dynamic",
]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """CPU test suite: unit tests plus a small benchmark sweep (results in .nox/test-results)."""
    session.install("-e", ".[cpu,test]")
    # One cache for the tests and the sweeps they start: the synthetic weights take minutes to build.
    session.env["DENSENET_OPT_CACHE"] = os.environ.get("DENSENET_OPT_CACHE") or str(Path.home() / ".cache" / "densenet_opt")
    # --all-kinds: the slow, timing and sweep tests too (a plain `pytest` runs the unit tests only: conftest.py).
    session.run("pytest", "--all-kinds", *TEST_SWEEP, "--output-dir=.nox/test-results", "--durations=30", *session.posargs)


def compare_args(posargs: list[str]) -> list[str]:
    """Gate against this machine kind's stored baseline (benchmarks_baseline/KIND/) unless
    storing one; a kind with none is named in one line and not compared for speed."""
    return [] if "--save-baseline" in posargs else ["--compare-baseline"]


def has_cuda(session: nox.Session) -> bool:
    answer = session.run("python", "-c", "import torch; print(torch.cuda.is_available())", silent=True)
    return bool(answer) and answer.strip() == "True"


# The main job's default bound on its sweep (minutes): with the install, a fresh clone's
# `nox -s bench` ends within an hour; `-- --time-budget none` runs everything (hours on 2 cores).
BENCH_TIME_BUDGET_MIN = 50


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Full sweep (all variants, batch sizes 1-32, 1024 samples) on the best local device -> results/,
    gated by that device's stored baseline; bounded by --time-budget (default 50 minutes)."""
    session.install("-e", ".[test]")
    device = "cuda" if has_cuda(session) else "cpu"
    session.install("-e", ".[gpu]" if device == "cuda" else ".[cpu]")
    # A stored baseline must hold every config: --save-baseline runs without a budget unless given one.
    bounded = any(arg.startswith("--time-budget") for arg in session.posargs) or "--save-baseline" in session.posargs
    budget = [] if bounded else [f"--time-budget={BENCH_TIME_BUDGET_MIN}"]
    args = [f"--device={device}", *budget, *compare_args(session.posargs), *session.posargs]
    session.run("python", "-m", "densenet_opt", "sweep", *args)


@nox.session(python=PYTHON)
def gpu_bench(session: nox.Session) -> None:
    """The CUDA sweep -> results-gpu/, gated by the stored CUDA baseline; stops without CUDA.
    Uses every visible GPU: one sweep process per GPU, results merged (densenet_opt/shard.py)."""
    session.install("-e", ".[gpu,test]")
    if not has_cuda(session):
        session.error("gpu_bench needs a CUDA GPU and this torch sees none: run `nox -s bench` for the CPU sweep")
    args = ["--device=cuda", "--output-dir=results-gpu", *compare_args(session.posargs), *session.posargs]
    session.run("python", "-m", "densenet_opt", "sweep-gpus", *args)


@nox.session(python=PYTHON)
def loadgen(session: nox.Session) -> None:
    """MLPerf LoadGen scenarios (SingleStream, Offline, Server search) on the CPU -> results-loadgen/;
    arguments after -- go to `densenet-opt loadgen`, e.g. -- --variants onnx_int8,int8 --latency-bound-ms 100."""
    session.install("-e", ".[cpu,loadgen]")
    session.env["DENSENET_OPT_CACHE"] = os.environ.get("DENSENET_OPT_CACHE") or str(Path.home() / ".cache" / "densenet_opt")
    session.run("python", "-m", "densenet_opt", "loadgen", "--device=cpu", *session.posargs)


@nox.session(python=PYTHON)
def compare(session: nox.Session) -> None:
    """A/B on this machine, no stored baseline (densenet_opt/compare.py): the working tree against
    --base (default: main), interleaved round by round -> results-compare/; e.g. -- --base HEAD~1 --variants onnx."""
    session.install("-e", ".[cpu]")
    base = [] if any(arg.startswith("--base") and not arg.startswith("--base-python") for arg in session.posargs) else ["--base", "main"]
    session.run("python", "-m", "densenet_opt", "compare", *base, *session.posargs)
