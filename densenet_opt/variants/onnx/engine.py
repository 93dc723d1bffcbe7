"""An ONNX Runtime InferenceSession as an engine: host float32 batch in, host float32 logits out.

On the CPU the session reads the batch's memory in place. On CUDA an IOBinding binds
preallocated device buffers, one pair per batch shape: a call is one host-to-device copy
of the batch (pinned by the sweep), the run, and one device-to-host copy of the logits
into a new host array; nothing else is copied or allocated per call.

VRAM: ORT allocates device memory outside torch, so torch's counters see none of it; the
probe's NVML per-process figure is the one that counts for these engines (CUDA context,
cuDNN/cuBLAS workspaces, ORT's arena and TensorRT's engine memory). RAM: ORT's CPU arena
keeps the memory of its peak allocation for reuse; the RAM column counts that peak.
"""

from __future__ import annotations

import time
from types import ModuleType

import numpy as np
import torch

from densenet_opt.errors import VariantUnavailable
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.variants import BuildContext
from densenet_opt.variants.onnx.export import INPUT_NAME, OUTPUT_NAME, Artifact
from densenet_opt.variants.onnx.providers import (
    PROVIDERS, Settings, disabled_optimizers, import_onnxruntime, provider_entries, session_options,
)


class DeviceIO:
    """IOBinding with preallocated buffers on ``device_type`` ("cuda", or "cpu" in tests),
    one input/output pair per batch shape.

    A call takes a float32 numpy batch [N,3,224,224], copies it into the bound input once,
    runs, and returns float32 logits [N,num_classes] as a new host tensor (a caller may
    keep it while later calls run).
    """

    def __init__(self, session, ort: ModuleType, device_type: str, device_id: int) -> None:
        self.session = session
        self.ort = ort
        self.device_type = device_type
        self.device_id = device_id
        self.binding = session.io_binding()
        self.buffers: dict[tuple[int, ...], tuple[object, object]] = {}
        self.bound_shape: tuple[int, ...] | None = None
        self.num_classes = int(session.get_outputs()[0].shape[1])

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        shape = tuple(batch.shape)
        if shape not in self.buffers:
            allocate = self.ort.OrtValue.ortvalue_from_shape_and_type
            self.buffers[shape] = (
                allocate(list(shape), np.float32, self.device_type, self.device_id),
                allocate([shape[0], self.num_classes], np.float32, self.device_type, self.device_id),
            )
        inputs, outputs = self.buffers[shape]
        if shape != self.bound_shape:
            self.binding.bind_ortvalue_input(INPUT_NAME, inputs)
            self.binding.bind_ortvalue_output(OUTPUT_NAME, outputs)
            self.bound_shape = shape
        inputs.update_inplace(batch)
        # Ordering between the copy and ORT's compute stream is not ours to assume.
        self.binding.synchronize_inputs()
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()
        logits = outputs.numpy()  # from the device: the one device-to-host copy, into a new array
        # From a CPU buffer numpy() is a view of the bound output, which the next call overwrites.
        return torch.from_numpy(logits.copy() if self.device_type == "cpu" else logits)


class OrtEngine:
    """An InferenceSession as an Engine: float32 batch [N,3,224,224] on the host in (any
    dtype is converted), float32 logits [N,1000] on the host out; through ``io`` (device
    buffers) when given, else the session reads the batch in place."""

    def __init__(self, session, *, io: DeviceIO | None, model_size_bytes: int, info: dict[str, str]) -> None:
        self.session = session
        self.io = io
        self.model_size_bytes = model_size_bytes
        self.info = info

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        images = batch.to(torch.float32).contiguous().numpy()
        if self.io is not None:
            return self.io(images)
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0])

    def close(self) -> None:
        self.io = None
        self.session = None


def cuda_device_id(device: torch.device) -> int:
    """The CUDA ordinal of ``device`` (the current device when it names none)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def open_engine(
    ctx: BuildContext,
    artifact: Artifact,
    *,
    provider: str,
    setting: Settings,
    precision: str,
    strict: bool,
    info: dict[str, str],
) -> OrtEngine:
    """Create the session on ``provider`` (an alias), check the provider it really got,
    and run it once at ``ctx.batch_size`` so that first-run work (TensorRT engine build,
    cuDNN algorithm search) is done before anything is timed. engine_info gets ``info``
    plus the provider used, the threads or IO binding, and ``session_s``/``first_run_s``
    (seconds).

    ``strict``: a session that onnxruntime moved to a fallback provider raises
    VariantUnavailable instead of running (otherwise engine_info notes the fallback).
    """
    ort = import_onnxruntime()
    device_id = cuda_device_id(ctx.device) if provider != "cpu" else 0
    entries = provider_entries(
        provider, precision=precision, batch_size=ctx.batch_size, device_id=device_id, cache_dir=ctx.cache_dir
    )
    started = time.perf_counter()
    session = ort.InferenceSession(
        str(artifact.path),
        session_options(ort, provider, setting.threads),
        providers=[name for name, _ in entries],
        provider_options=[options for _, options in entries],
        disabled_optimizers=disabled_optimizers(precision),
    )
    session_s = time.perf_counter() - started
    wanted, used = PROVIDERS[provider], session.get_providers()[0]
    if used != wanted:
        message = f"{wanted} failed to start (onnxruntime fell back to {used}; its error is printed above)"
        if strict:
            raise VariantUnavailable(message)
        info["note"] = message
    io = DeviceIO(session, ort, "cuda", device_id) if used != PROVIDERS["cpu"] else None
    engine = OrtEngine(
        session,
        io=io,
        model_size_bytes=artifact.size_bytes,
        info={
            "provider": used,
            **info,
            "graph_optimization": "ORT_ENABLE_ALL",
            **({"intra_op_threads": str(setting.threads)} if used == PROVIDERS["cpu"] else {"io_binding": "device buffers"}),
            "onnxruntime": ort.__version__,
            "session_s": f"{session_s:.2f}",
        },
    )
    if used == PROVIDERS["tensorrt"]:
        ctx.progress(f"{info['precision']} on TensorRT: first run builds the engine (minutes unless cached)")
    started = time.perf_counter()
    engine(torch.zeros(ctx.batch_size, *IMAGE_SHAPE))
    engine.info["first_run_s"] = f"{time.perf_counter() - started:.2f}"
    return engine
