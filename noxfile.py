"""nox sessions: `tests` (CPU test suite, what CI runs), `bench` (the full sweep), `gpu_bench` (the CUDA sweep)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"  # torch is 5.5 GB: install once per session venv, not every run
PYTHON = "3.11"

# Small enough for a 2-core CI machine, large enough that every path runs:
# two batch sizes (one that does not divide the sample count), 3 timed rounds.
TEST_SWEEP = ["--batch-sizes=1,3", "--num-samples=64", "--calibration-samples=16", "--rounds=3", "--warmup-rounds=1"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """CPU test suite: unit tests plus a small benchmark sweep (results in .nox/test-results)."""
    session.install("-e", ".[cpu,test]")
    session.run("pytest", *TEST_SWEEP, "--output-dir=.nox/test-results", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Full sweep (all variants, batch sizes 1-32, 1024 samples) on the best local device -> results/."""
    gpu = session.run("python", "-c", "import torch; print(torch.cuda.is_available())", silent=True, external=True)
    session.install("-e", ".[gpu,test]" if gpu and gpu.strip() == "True" else ".[cpu,test]")
    session.run("python", "-m", "densenet_opt", "sweep", *session.posargs)


@nox.session(python=PYTHON)
def gpu_bench(session: nox.Session) -> None:
    """The CUDA sweep -> results-gpu/; stops with a clear message on a machine without CUDA."""
    session.install("-e", ".[gpu,test]")
    has_cuda = session.run("python", "-c", "import torch; print(torch.cuda.is_available())", silent=True)
    if not has_cuda or has_cuda.strip() != "True":
        session.error("gpu_bench needs a CUDA GPU and this torch sees none: run `nox -s bench` for the CPU sweep")
    session.run("python", "-m", "densenet_opt", "sweep", "--device=cuda", "--output-dir=results-gpu", *session.posargs)
