"""build_and_run.sh without Docker: fake docker, nvidia-smi and python first on PATH record their calls."""

from __future__ import annotations

import os
import socket
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "build_and_run.sh"
REPO = SCRIPT.parent
UNAVAILABLE = 3  # the script's exit status when Docker/GPU is missing and it may not fall back
SYSTEM_TOOLS = ("bash", "cat", "dirname", "id", "mkdir")

# Each fake logs its name and arguments, and exits with the status its FAKE_* variable names.
FAKE_DOCKER = """#!/bin/sh
echo "docker $*" >> "$FAKE_LOG"
case "$1" in
  info) exit "${FAKE_DOCKER_INFO_RC:-0}" ;;
  build) exit "${FAKE_DOCKER_BUILD_RC:-0}" ;;
  run) exit "${FAKE_DOCKER_RUN_RC:-0}" ;;
esac
"""
FAKE_NVIDIA_SMI = """#!/bin/sh
echo "nvidia-smi $*" >> "$FAKE_LOG"
exit "${FAKE_NVIDIA_SMI_RC:-0}"
"""
FAKE_PYTHON = """#!/bin/sh
echo "python $*" >> "$FAKE_LOG"
if [ "$1" = "-c" ]; then exit "${FAKE_PYTHON_IMPORT_RC:-0}"; fi
exit "${FAKE_PYTHON_RC:-0}"
"""


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.log"
        self.log.touch()
        for tool in SYSTEM_TOOLS:  # only these: no real docker, nvidia-smi or python can leak in
            (self.bin / tool).symlink_to(shutil.which(tool))

    def fake(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(body)
        path.chmod(0o755)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        environ = {"PATH": str(self.bin), "HOME": str(self.root / "home"), "FAKE_LOG": str(self.log), **env}
        return subprocess.run([shutil.which("bash"), str(SCRIPT), *args], capture_output=True, text=True,
                              env=environ, cwd=self.root, timeout=60)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    sandbox = Sandbox(tmp_path)
    sandbox.fake("docker", FAKE_DOCKER)
    sandbox.fake("nvidia-smi", FAKE_NVIDIA_SMI)
    sandbox.fake("python", FAKE_PYTHON)
    return sandbox


def local_sweep(out: Path, *args: str) -> str:
    return " ".join(["python -m densenet_opt sweep-gpus --output-dir", str(out), *args])


def test_with_docker_and_a_gpu_it_builds_and_runs_the_sweep_on_every_gpu(box: Sandbox) -> None:
    result = box.run("--output-dir", "rel/out", "--", "--variants", "baseline", "--batch-sizes", "1,32")
    assert result.returncode == 0, result.stderr
    out, cache = box.root / "rel" / "out", box.root / "home" / ".cache" / "densenet_opt"
    assert out.is_dir() and cache.is_dir()  # made by the caller, so Docker does not make them root's
    user = f"{os.getuid()}:{os.getgid()}"
    assert box.calls() == [
        "docker info",
        "nvidia-smi -L",
        f"docker build --tag densenet-opt:latest {REPO}",
        f"docker run --rm --gpus all --hostname {socket.gethostname()} --ipc=host --user {user} --volume {out}:/results --volume {cache}:/cache densenet-opt:latest "
        "sweep-gpus --device cuda --output-dir /results --variants baseline --batch-sizes 1,32",
    ]
    assert f"results in {out}" in result.stderr


def test_image_and_cache_dir_options(box: Sandbox) -> None:
    result = box.run("--image=me/bench:1", "--cache-dir", "c", "--output-dir=o")
    assert result.returncode == 0, result.stderr
    run = box.calls()[-1]
    assert run.endswith(f"--volume {box.root / 'c'}:/cache me/bench:1 sweep-gpus --device cuda --output-dir /results")


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"remove": "docker"}, "docker is not installed"),
        ({"FAKE_DOCKER_INFO_RC": "1"}, "the Docker engine is not reachable (docker info failed"),
        ({"remove": "nvidia-smi"}, "nvidia-smi is not installed, so no NVIDIA GPU driver is visible"),
        ({"FAKE_NVIDIA_SMI_RC": "9"}, "nvidia-smi failed, so no usable NVIDIA GPU is visible"),
        ({"FAKE_DOCKER_RUN_RC": "125"}, "docker could not start the container with the GPU"),
    ],
)
def test_without_docker_or_a_gpu_it_says_so_and_runs_locally(box: Sandbox, setup: dict, reason: str) -> None:
    env = dict(setup)
    if "remove" in env:
        (box.bin / env.pop("remove")).unlink()
    result = box.run("--output-dir", "out", "--", "--rounds", "3", **env)
    assert result.returncode == 0, result.stderr
    assert f"{reason}" in result.stderr and "running the sweep locally instead" in result.stderr
    calls = box.calls()
    assert calls[-2:] == ["python -c import densenet_opt", local_sweep(box.root / "out", "--rounds", "3")]
    if reason != "docker could not start the container with the GPU":
        assert not any(call.startswith(("docker build", "docker run")) for call in calls)


@pytest.mark.parametrize("env", [{"FAKE_DOCKER_INFO_RC": "1"}, {"FAKE_NVIDIA_SMI_RC": "1"}, {"FAKE_DOCKER_RUN_RC": "125"}])
def test_no_fallback_stops_instead(box: Sandbox, env: dict) -> None:
    result = box.run("--no-fallback", **env)
    assert result.returncode == UNAVAILABLE
    assert "stopping (--no-fallback)" in result.stderr and len(result.stderr.strip().splitlines()[-1]) < 200
    assert not any(call.startswith("python") for call in box.calls())


def test_a_sweep_that_fails_in_the_container_is_not_rerun_locally(box: Sandbox) -> None:
    result = box.run(FAKE_DOCKER_RUN_RC="1")
    assert result.returncode == 1
    assert not any(call.startswith("python") for call in box.calls())


def test_a_failed_build_stops_before_running(box: Sandbox) -> None:
    result = box.run(FAKE_DOCKER_BUILD_RC="17")
    assert result.returncode == 17
    assert not any(call.startswith("docker run") for call in box.calls())


def test_local_skips_docker(box: Sandbox) -> None:
    result = box.run("--local", "--output-dir", "o", "--", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert box.calls() == ["python -c import densenet_opt", local_sweep(box.root / "o", "--device", "cpu")]


def test_the_local_sweeps_exit_status_is_the_scripts(box: Sandbox) -> None:
    assert box.run("--local", FAKE_PYTHON_RC="1").returncode == 1


def test_a_local_python_without_the_package_is_named(box: Sandbox) -> None:
    result = box.run("--local", FAKE_PYTHON_IMPORT_RC="1")
    assert result.returncode == UNAVAILABLE
    assert "no local Python with densenet-opt installed: run pip install -e" in result.stderr
    other = box.root / "other-python"
    other.write_text(FAKE_PYTHON.replace('"python ', '"other '))
    other.chmod(0o755)
    assert box.run("--local", PYTHON=str(other)).returncode == 0
    assert box.calls()[-1].startswith("other -m densenet_opt sweep-gpus")


def test_help(box: Sandbox) -> None:
    result = box.run("--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: ./build_and_run.sh")
    for option in ("--output-dir", "--image", "--cache-dir", "--no-fallback", "--local"):
        assert option in result.stdout
    assert box.calls() == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bogus"], "unknown argument '--bogus'; sweep arguments go after --"),
        (["--output-dir"], "--output-dir needs a value"),
        (["--image="], "--image needs a value"),
        (["--local", "--no-fallback"], "contradict"),
        (["--", "--output-dir=/elsewhere"], "give --output-dir before --, to build_and_run.sh itself"),
    ],
)
def test_bad_arguments_are_one_line_and_touch_nothing(box: Sandbox, args: list[str], fragment: str) -> None:
    result = box.run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and fragment in result.stderr
    assert box.calls() == [] and not (box.root / "test_results").exists()
