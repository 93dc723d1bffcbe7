"""Resident and device memory, as DESIGN.md defines them."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
from pathlib import Path

import psutil
import torch

MIB = 2**20


def current_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def release_freed_memory() -> None:
    """Collect garbage and hand the heap memory glibc keeps after frees back to the kernel,
    so that resident memory counts what is alive, not what a build (export, calibration)
    freed. Measured on ``pruned_structured`` at batch 1, whose build recalibrates BatchNorm
    in the process: 238-240 MiB without it, 168-187 MiB with it."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory since process start or the last reset_peak_rss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def nvml_process_used_bytes(device: torch.device) -> int | None:
    """This process's used memory on the GPU as the driver sees it (ONNX Runtime and the
    CUDA context included), or None when NVML cannot tell."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index(index))
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    return int(proc.usedGpuMemory)
            return None
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def _physical_index(index: int) -> int:
    """NVML numbers GPUs physically, ignoring CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    if ids and all(part.isdigit() for part in ids) and index < len(ids):
        return int(ids[index])
    return index
