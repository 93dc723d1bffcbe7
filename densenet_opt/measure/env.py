"""Machine and software description recorded with every result."""

from __future__ import annotations

import os
import platform
import socket
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
    }
