"""Machine and software description recorded with every result: the device's name, the
machine kind (what decides speed: the key baselines are stored under) and the versions of
the software that ran."""

from __future__ import annotations

import os
import platform
import re
import socket
from collections.abc import Collection
from functools import cache
from importlib import metadata
from pathlib import Path

import torch


@cache
def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The instruction-set features that pick the kernels of oneDNN, ONNX Runtime's MLAS and
# OpenVINO's CPU plugin (int8 dot products, bf16/fp16 arithmetic, AMX tiles), in the key's
# order: (/proc/cpuinfo flag, its name in the key). x86's AVX2 and AVX-512 foundations are
# named by the x86-64 microarchitecture level (x86-64-v3: AVX2 and FMA; x86-64-v4: AVX-512
# F, BW, CD, DQ and VL), as in the x86-64 psABI.
X86_FEATURES = (("avx_vnni", "avxvnni"), ("avx512_vnni", "vnni"), ("avx512_bf16", "bf16"), ("avx512_fp16", "fp16"),
                ("amx_bf16", "amxbf16"), ("amx_int8", "amxint8"), ("amx_fp16", "amxfp16"))
X86_V4 = frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})
X86_V3 = frozenset({"avx2", "fma"})
ARM_FEATURES = (("asimddp", "dotprod"), ("i8mm", "i8mm"), ("bf16", "bf16"), ("sve", "sve"), ("sve2", "sve2"))
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}
# Words of a CPU's model name that say nothing about which CPU it is.
_NOISE = re.compile(r"\((r|tm)\)|\b(cpu|processor|\d+-core)\b|@.*$", re.IGNORECASE)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def x86_level(flags: Collection[str]) -> str:
    """The x86-64 microarchitecture level an x86 CPU's /proc/cpuinfo ``flags`` reach: x86v4
    (AVX-512 F/BW/CD/DQ/VL), x86v3 (AVX2 and FMA), x86v2 (SSE4.2 and POPCNT), else x86v1."""
    flags = set(flags)
    return ("x86v4" if X86_V4 <= flags else "x86v3" if X86_V3 <= flags
            else "x86v2" if {"sse4_2", "popcnt"} <= flags else "x86v1")


def cpu_kind(cpuinfo: str, usable_cpus: Collection[int], machine: str = "x86_64", cpu_quota: int | None = None) -> str:
    """The machine kind of a CPU, from the text of its /proc/cpuinfo, the logical CPUs the
    process may use (``os.sched_getaffinity(0)``), the platform's architecture
    (``platform.machine()``) and the CPUs a cgroup quota allows (``cpu_quota``; None: no
    quota): ``MODEL_FEATURES_CORES``, e.g.
    ``intel-xeon_x86v4-avxvnni-vnni-bf16-fp16-amxbf16-amxint8_2c`` or ``amd-epyc-7763_x86v3_1c2t``.

    MODEL: the model name without trademarks, "Processor" or "N-Core", vendor first (ARM,
    which names none: the architecture, implementer and part, ``aarch64-0x41-0xd0c``;
    POWER: its ``cpu`` line); FEATURES: on x86 the x86-64 level (x86v4: AVX-512
    F/BW/CD/DQ/VL; x86v3: AVX2+FMA; else x86v2 or x86v1) and the X86_FEATURES present; on
    ARM the ARM_FEATURES present (``armv8`` for none); elsewhere ``base``; CORES: the
    physical cores among the usable CPUs (distinct physical id and core id), ``{cores}c``,
    with ``{threads}t`` added where SMT gives the process more threads than cores. Two
    machines with one key run the same kernels on the same number of cores."""
    processors: list[dict[str, str]] = []
    for block in cpuinfo.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
        processors.append(fields)
    first = next((p for p in processors if "processor" in p), processors[0] if processors else {})
    architecture = _slug(machine) or "unknown"
    vendor = VENDORS.get(first.get("vendor_id", ""), "")
    named = first.get("model name") or (first.get("cpu", "").split(",")[0] if architecture.startswith("ppc") else "")
    model = _slug(_NOISE.sub(" ", named))
    if architecture in ("x86-64", "amd64", "i386", "i686"):
        flags = set(first.get("flags", "").split())
        features = [x86_level(flags)] + [name for flag, name in X86_FEATURES if flag in flags]
    elif architecture in ("aarch64", "arm64") or architecture.startswith("arm"):
        flags = set(first.get("Features", "").split())
        features = [name for flag, name in ARM_FEATURES if flag in flags] or ["armv8"]
        part = [first[k] for k in ("CPU implementer", "CPU part") if first.get(k)]
        model = model or _slug("-".join([architecture, *part]))
    else:
        features = ["base"]
    model = model or architecture
    if vendor and not model.startswith(vendor):
        model = f"{vendor}-{model}"
    usable = [p for p in processors if p.get("processor", "").isdigit() and int(p["processor"]) in usable_cpus]
    threads = max(1, min(len(usable_cpus), cpu_quota or len(usable_cpus)))
    cores = len({(p.get("physical id"), p.get("core id")) for p in usable if "core id" in p}) or threads
    cores = min(cores, threads)
    count = f"{cores}c" if cores == threads else f"{cores}c{threads}t"
    return f"{model}_{'-'.join(features)}_{count}"


def cuda_kind(name: str, capability: tuple[int, int], count: int) -> str:
    """The machine kind of CUDA GPUs: ``cuda_NAME_smXY_xCOUNT``, e.g.
    ``cuda_nvidia-h100-80gb-hbm3_sm90_x1`` (``capability``: torch.cuda.get_device_capability;
    ``count``: the GPUs the process sees, which sweep-gpus shares out). A MIG slice reads as its GPU."""
    return f"cuda_{_slug(name)}_sm{capability[0]}{capability[1]}_x{count}"


def cgroup_cpu_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """The CPUs a cgroup v2 quota allows this process (``docker --cpus``: "150000 100000" ->
    2, rounded up), None without one."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


@cache
def _local_cpu_kind() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else f"model name : {platform.processor() or platform.machine()}\n"
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    return cpu_kind(text, usable, platform.machine(), cgroup_cpu_quota())


# Names the machine kind instead of measuring it (a kind directory's name): set by
# sweep-gpus for its shards, so that each shard's one GPU files under the parent's kind.
KIND_VARIABLE = "DENSENET_OPT_MACHINE_KIND"


def machine_kind(device: torch.device | str) -> str:
    """This machine's kind for ``device`` (cpu_kind or cuda_kind, over every GPU the
    process sees), or $DENSENET_OPT_MACHINE_KIND where set: the key its stored baselines
    live under (benchmarks_baseline/KIND/) and the ``machine_kind`` column. Raises
    RuntimeError for cuda without a GPU (torch's)."""
    named = re.sub(r"[^A-Za-z0-9_.+-]+", "-", os.environ.get(KIND_VARIABLE, "").strip())  # a directory name
    if named.strip("."):  # "." or ".." would name the baseline dir itself or its parent
        return named
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return cuda_kind(torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index),
                         torch.cuda.device_count())
    return _local_cpu_kind()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def machine_name(label: str | None = None) -> str:
    """The ``machine`` column of this process's rows: ``label`` (--machine-label) when
    given, else the host name (``socket.gethostname()``, its first dot-separated part)."""
    return label or socket.gethostname().split(".")[0] or "localhost"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def nvidia_driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: nothing to record
        return ""


def environment_info(device: torch.device) -> dict[str, str]:
    cuda = device.type == "cuda"
    ort = _version("onnxruntime-gpu") or _version("onnxruntime")
    return {
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "gpu_driver": nvidia_driver() if cuda else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        # The versions torch was built with, recorded on CPU too: they say which build ran.
        "cuda": torch.version.cuda or "none",
        "cudnn": str(torch.backends.cudnn.version() or "none"),
        "onnxruntime": ort,
        "openvino": _version("openvino"),
        "nncf": _version("nncf"),
        "torchao": _version("torchao"),
        "machine_kind": machine_kind(device),
    }


# The software environment_info records, compared between a run and its stored baseline.
SOFTWARE = ("python", "torch", "torchvision", "cuda", "cudnn", "gpu_driver", "onnxruntime", "openvino", "nncf", "torchao")


def software_versions(device: torch.device) -> dict[str, str]:
    """{package: version} of what ran (SOFTWARE), as environment_info records it."""
    info = environment_info(device)
    return {name: info[name] for name in SOFTWARE}
