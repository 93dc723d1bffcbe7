"""Resident and device memory, as DESIGN.md defines them."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
from dataclasses import dataclass
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


def nvml_processes(device: torch.device) -> list[tuple[int, int | None]] | None:
    """Every compute process NVML lists on ``device``'s GPU, as (pid, used bytes or None
    where the driver does not say), or None when NVML cannot tell (pynvml missing, no
    driver, an NVML error). ``device.index`` None means the current CUDA device; the index
    is mapped through CUDA_VISIBLE_DEVICES, since NVML numbers GPUs physically.

    The pids are those of the driver's PID namespace: inside a container without the
    host's PID namespace they may not match ``os.getpid()``."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index(index))
            return [
                (int(proc.pid), None if proc.usedGpuMemory is None else int(proc.usedGpuMemory))
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            ]
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def nvml_process_used_bytes(device: torch.device) -> int | None:
    """This process's used memory on the GPU as the driver sees it (ONNX Runtime and the
    CUDA context included), or None when NVML cannot tell: no pynvml or driver, this pid
    not listed (another PID namespace), or no figure for it."""
    processes = nvml_processes(device)
    if processes is None:
        return None
    return next((used for pid, used in processes if pid == os.getpid() and used is not None), None)


@dataclass(frozen=True)
class AllocationReadback:
    """A deliberate device allocation of ``expected_bytes`` as each counter saw it: torch's
    allocated-bytes growth and NVML's per-process growth (None: NVML cannot tell, see
    nvml_process_used_bytes), in bytes."""

    expected_bytes: int
    torch_bytes: int
    nvml_bytes: int | None

    def error(self, measured: int | None) -> float | None:
        """|measured - expected| / expected (dimensionless), None for no figure."""
        return None if measured is None else abs(measured - self.expected_bytes) / self.expected_bytes


def cuda_allocation_readback(device: torch.device, size_bytes: int = 1024 * MIB) -> AllocationReadback:
    """Allocate ``size_bytes`` (> 0) on CUDA ``device`` and read the growth back from
    torch's allocator statistics (torch.cuda.memory_allocated, what ``vram_torch_peak_mb``
    counts) and from NVML's per-process figure (what ``vram_usage_mb`` counts); the block is
    freed and the allocator's cache emptied before returning. The CUDA context is created
    first, so it is in neither difference. Raises ValueError for size_bytes <= 0,
    torch.cuda.OutOfMemoryError when the block does not fit."""
    if size_bytes <= 0:
        raise ValueError(f"size_bytes must be positive, got {size_bytes}")
    torch.zeros(1, device=device)  # the CUDA context and the allocator exist before "before"
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch_before = torch.cuda.memory_allocated(device)
    nvml_before = nvml_process_used_bytes(device)
    block = torch.empty(size_bytes, dtype=torch.uint8, device=device)
    torch.cuda.synchronize(device)
    try:
        torch_grown = torch.cuda.memory_allocated(device) - torch_before
        nvml_after = nvml_process_used_bytes(device)
    finally:
        del block
        torch.cuda.empty_cache()
    nvml_grown = None if nvml_before is None or nvml_after is None else nvml_after - nvml_before
    return AllocationReadback(size_bytes, torch_grown, nvml_grown)


def _physical_index(index: int) -> int:
    """NVML numbers GPUs physically, ignoring CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    if ids and all(part.isdigit() for part in ids) and index < len(ids):
        return int(ids[index])
    return index
