"""Which exceptions are a measured outcome of a config: out of memory in any backend, NaN logits.

The sweep's measurement (sweep.Sweep) writes such an outcome as the config's row; the
workbench halves the fp32 reference's batch on out of memory. Both ask classify_fault.
"""

from __future__ import annotations

import errno
import re

import torch

from densenet_opt.accuracy import NonFiniteLogits
from densenet_opt.report import NON_FINITE_LOGITS, OUT_OF_MEMORY

# Text that each runtime puts in the exception it raises when an allocation fails; matched
# case-insensitively, and only in exceptions that report a runtime's failure as text (see
# classify_fault), never in a ValueError or a UserError that merely mentions memory.
OUT_OF_MEMORY_PATTERNS: tuple[tuple[str, str], ...] = (
    # torch.cuda.OutOfMemoryError ("CUDA out of memory. Tried to allocate ...") as a probe's tail;
    # the CUDA runtime's "CUDA error: out of memory" (cudaErrorMemoryAllocation's text);
    # CUDA driver/NVRTC "CUDA_ERROR_OUT_OF_MEMORY"; MPS/XPU "... out of memory".
    (r"out of memory", "torch, CUDA runtime and driver"),
    (r"cudaErrorMemoryAllocation", "CUDA runtime error name (ONNX Runtime's CUDA provider prints it)"),
    (r"CUDA_ERROR_OUT_OF_MEMORY", "CUDA driver API error name (Triton, cuda-python)"),
    (r"CUBLAS_STATUS_ALLOC_FAILED", "cuBLAS workspace or handle allocation"),
    (r"CUDNN_STATUS_ALLOC_FAILED", "cuDNN workspace allocation"),
    # torch's CPU allocator (c10/core/impl/alloc_cpu.cpp): "[enforce fail at alloc_cpu.cpp:127]
    # err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes.
    # Error code 12 (Cannot allocate memory)"; on other platforms "not enough memory".
    (r"DefaultCPUAllocator", "torch CPU allocator"),
    (r"can't allocate memory", "torch CPU allocator"),
    # ONNX Runtime's arenas (BFCArena, CPU and CUDA): "Failed to allocate memory for
    # requested buffer of size N", raised as onnxruntime's RuntimeException or Fail.
    (r"Failed to allocate memory", "ONNX Runtime arena"),
    # C++ operator new failing inside a native library whose binding turns the exception into
    # text: ONNX Runtime ("std::bad_alloc", MSVC's "bad allocation"), OpenVINO ("std::bad_alloc").
    (r"bad_alloc|bad allocation", "C++ std::bad_alloc (ONNX Runtime, OpenVINO)"),
    # strerror(ENOMEM): OpenVINO's and torch's allocators append it to their messages.
    (r"Cannot allocate memory", "strerror(ENOMEM) (OpenVINO, torch)"),
    # A Python MemoryError in the fresh-process probe, seen in the child's traceback tail
    # (numpy's _ArrayMemoryError is a MemoryError subclass and prints its own name).
    (r"^[\w.]*MemoryError\b", "Python MemoryError in the probe's child process"),
)
_OUT_OF_MEMORY_RE = re.compile("|".join(f"(?:{pattern})" for pattern, _ in OUT_OF_MEMORY_PATTERNS), re.I | re.M)
# Modules whose exception types carry a native runtime's failure as text but derive from
# Exception only (onnxruntime's RuntimeException, Fail, EPFail ...; OpenVINO's).
_RUNTIME_EXCEPTION_MODULES = ("onnxruntime", "openvino")


def classify_fault(error: BaseException) -> str | None:
    """The results ``status`` for an exception that is a measured outcome of a config:
    NON_FINITE_LOGITS for NonFiniteLogits, OUT_OF_MEMORY for an allocation failure in any
    backend (by type: torch.cuda.OutOfMemoryError, MemoryError, an OSError with errno
    ENOMEM; by text, per OUT_OF_MEMORY_PATTERNS, in a RuntimeError -- torch's c10 errors,
    OpenVINO's, the fresh-process probe's carrying its child's tail -- or in an onnxruntime
    or openvino exception); None for anything else. Follows ``__cause__`` (``raise X from
    error``), so an allocation failure re-raised as another error still counts; an error
    merely raised while handling another (``__context__``) is judged on its own."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        kind = _classify_one(error)
        if kind is not None:
            return kind
        error = error.__cause__
    return None


def _classify_one(error: BaseException) -> str | None:
    if isinstance(error, NonFiniteLogits):
        return NON_FINITE_LOGITS
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
        return OUT_OF_MEMORY
    if isinstance(error, OSError) and error.errno == errno.ENOMEM:
        return OUT_OF_MEMORY
    from_text = isinstance(error, RuntimeError) or type(error).__module__.startswith(_RUNTIME_EXCEPTION_MODULES)
    if from_text and _OUT_OF_MEMORY_RE.search(str(error)):
        return OUT_OF_MEMORY
    return None
