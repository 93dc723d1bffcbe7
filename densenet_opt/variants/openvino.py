"""OpenVINO on the CPU: ``openvino`` (fp32), ``openvino_bf16`` and ``openvino_int8`` (NNCF).

What an engineer deploying on an x86 server CPU reaches for first. Each variant reads the
cached, verified ONNX export that the ONNX Runtime variants use (``ov.convert_model`` of
``onnx/export.py``'s model): the same graph for both runtimes, and no second trace of the
torch module (about 30 s on 2 cores). Settings, written down because OpenVINO's defaults
change the answer:

- ``INFERENCE_PRECISION_HINT``: ``f32`` for ``openvino``, so that it really is fp32 (OpenVINO's
  CPU plugin runs in bf16 by default on a CPU with native bf16); ``bf16`` for
  ``openvino_bf16``, which is unavailable where the CPU plugin does not list BF16 among its
  OPTIMIZATION_CAPABILITIES (AVX-512 BF16 or AMX); ``openvino_int8`` leaves the non-int8
  layers at f32.
- ``PERFORMANCE_HINT = LATENCY`` and ``NUM_STREAMS = 1``: one inference request at a time on
  all the threads, the same call boundary as every other engine (batch in, logits out,
  synchronous); ``INFERENCE_NUM_THREADS`` = the physical cores (``openvino.threads=N``).
- ``openvino_int8``: ``nncf.quantize`` with its default preset (symmetric int8 weights and
  activations, mixed where NNCF chooses) on the same calibration images as every other int8
  variant, never evaluated ones; the quantized IR is cached on disk keyed by the export's
  sha256, the calibration images, and the OpenVINO and NNCF versions.

OpenVINO and NNCF are the ``openvino`` extra; without them the variants are skipped with the
install command. On a CUDA sweep they are skipped (CPU device only).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from densenet_opt import atomic
from densenet_opt.cache import CACHE_OPTION, file_problem, file_sha256, key_digest, tensor_digest
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.variants import BuildContext, Engine, Variant, VariantOption

OPENVINO, OPENVINO_BF16, OPENVINO_INT8 = "openvino", "openvino_bf16", "openvino_int8"
INSTALL_HINT = "pip install -e .[openvino] (or pip install openvino nncf)"
MANIFEST = "manifest.json"
IR_FILES = ("model.xml", "model.bin")
# Images per nncf.Dataset item: NNCF feeds them one item at a time.
CALIBRATION_BATCH = 1


def import_openvino():
    """The openvino module, or VariantUnavailable with the install command."""
    try:
        import openvino
    except ImportError:
        raise VariantUnavailable(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def import_nncf():
    """The nncf module, or VariantUnavailable with the install command."""
    try:
        import nncf
    except ImportError:
        raise VariantUnavailable(f"NNCF is not installed (openvino_int8 quantizes with it): {INSTALL_HINT}") from None
    return nncf


def _threads(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


THREADS_OPTION = VariantOption("threads", _threads, None, "INFERENCE_NUM_THREADS of the CPU plugin (auto: physical cores)")


class OpenVinoEngine:
    """A compiled OpenVINO model behind the engine contract: float32 [N,3,224,224] host
    batch in, float32 [N,1000] host logits out, one synchronous inference request."""

    def __init__(self, compiled, *, model_size_bytes: int, info: dict[str, str]) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.model_size_bytes = model_size_bytes
        self.info = info

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        outputs = self._request.infer({0: np.ascontiguousarray(batch.numpy(), dtype=np.float32)})
        return torch.from_numpy(np.array(next(iter(outputs.values())), dtype=np.float32, copy=True))

    def close(self) -> None:
        self._request = None
        self._compiled = None


def cpu_supports_bf16(core) -> bool:
    """Whether OpenVINO's CPU plugin lists BF16 among its optimization capabilities."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_config(precision: str, threads: int) -> dict[str, str]:
    """The CPU plugin properties for ``precision`` (fp32, bf16 or int8): module docstring."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads),
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
    }


def _source_model(ctx: BuildContext):
    """The fp32 ONNX export (cached; shared with the ONNX Runtime variants) and its OpenVINO model."""
    from densenet_opt.variants.onnx.builders import fp32_model  # needs onnx only, not onnxruntime

    ov = import_openvino()
    source = fp32_model(ctx)
    started = time.perf_counter()
    model = ov.convert_model(str(source.path))
    return source, model, time.perf_counter() - started


def _compile(ctx: BuildContext, model, precision: str, size_bytes: int, info: dict[str, str]) -> OpenVinoEngine:
    """Compile ``model`` (an ov.Model) for the CPU at ``ctx.batch_size`` with compile_config;
    ``info`` must name the ``model_file`` it came from (tools/openvino_side_by_side.py reads it)."""
    from densenet_opt.variants.onnx.providers import default_threads

    ov = import_openvino()
    threads = ctx.option("threads") or default_threads()
    config = compile_config(precision, threads)
    model.reshape([ctx.batch_size, *IMAGE_SHAPE])  # a static shape, as the other CPU packages
    started = time.perf_counter()
    compiled = ov.Core().compile_model(model, "CPU", config)
    engine = OpenVinoEngine(
        compiled, model_size_bytes=size_bytes,
        info={
            "runtime": f"openvino-{ov.__version__.split('-')[0]}",
            "precision": precision,
            **info,
            **{key.lower(): value for key, value in config.items()},
            "compile_s": f"{time.perf_counter() - started:.2f}",
        },
    )
    started = time.perf_counter()
    engine(torch.zeros(ctx.batch_size, *IMAGE_SHAPE))
    engine.info["first_run_s"] = f"{time.perf_counter() - started:.2f}"
    return engine


def build_fp32(ctx: BuildContext) -> Engine:
    """OpenVINO fp32 (inference precision pinned to f32) of the cached ONNX export.
    VariantUnavailable without OpenVINO."""
    source, model, convert_s = _source_model(ctx)
    return _compile(ctx, model, "fp32", source.size_bytes,
                    {"model_file": str(source.path), "source": "onnx export", "convert_s": f"{convert_s:.2f}"})


def build_bf16(ctx: BuildContext) -> Engine:
    """OpenVINO with bf16 inference precision. VariantUnavailable where the CPU plugin has
    no BF16 capability (no AVX-512 BF16 or AMX) or without OpenVINO."""
    ov = import_openvino()
    if not cpu_supports_bf16(ov.Core()):
        raise VariantUnavailable(
            "openvino_bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX): OpenVINO's CPU plugin lists "
            f"only {', '.join(ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))} here"
        )
    source, model, convert_s = _source_model(ctx)
    return _compile(ctx, model, "bf16", source.size_bytes,
                    {"model_file": str(source.path), "source": "onnx export", "convert_s": f"{convert_s:.2f}"})


def int8_key(source_sha256: str, images: torch.Tensor) -> dict[str, object]:
    """What the NNCF int8 IR depends on."""
    ov, nncf = import_openvino(), import_nncf()
    return {
        "artifact": "densenet121-openvino-int8", "source_sha256": source_sha256,
        "calibration": f"{len(images)}-{tensor_digest(images)}", "openvino": ov.__version__,
        "nncf": nncf.__version__, "preset": "default", "version": 1,
    }


def build_int8(ctx: BuildContext) -> Engine:
    """NNCF post-training int8 of the OpenVINO model, calibrated on ``ctx.calibration_samples``
    images, cached as IR. UserError for --calibration-samples 0 or a full cache disk;
    VariantUnavailable without OpenVINO or NNCF."""
    ov, nncf = import_openvino(), import_nncf()
    if ctx.calibration_samples < 1:
        raise UserError(
            f"int8 quantization needs calibration images, got {ctx.calibration_samples}: pass "
            "--calibration-samples N with N >= 1 (128 by default)"
        )
    from densenet_opt.variants.onnx.builders import fp32_model

    source = fp32_model(ctx)
    images = ctx.calibration_images(ctx.calibration_samples)
    if len(images) < 1:
        raise UserError("int8 quantization found no calibration images: give a data folder with more images")
    key = int8_key(source.sha256, images)
    folder = Path(ctx.cache_dir) / "openvino" / f"densenet121-int8-{key_digest(key)}"

    def quantize(staging: Path) -> None:
        ctx.progress(f"{OPENVINO_INT8}: nncf.quantize on {len(images)} calibration images (cached in {folder})")
        model = ov.convert_model(str(source.path))
        dataset = nncf.Dataset([images[i : i + CALIBRATION_BATCH].numpy() for i in range(0, len(images), CALIBRATION_BATCH)])
        quantized = nncf.quantize(model, dataset, subset_size=len(images))
        ov.save_model(quantized, str(staging / IR_FILES[0]), compress_to_fp16=False)

    started = time.perf_counter()
    cached = cached_ir(folder, key, quantize)
    quantize_s = time.perf_counter() - started
    model = ov.Core().read_model(str(folder / IR_FILES[0]))
    size = sum((folder / name).stat().st_size for name in IR_FILES)
    return _compile(ctx, model, "int8", size, {
        "model_file": str(folder / IR_FILES[0]),
        "quantizer": f"nncf-{nncf.__version__} default preset", "calibration_images": str(len(images)),
        "int8_cache": "hit" if cached else "miss", "quantize_s": f"{0.0 if cached else quantize_s:.1f}",
    })


def cached_ir(folder: Path, key: Mapping[str, object], build: Callable[[Path], None]) -> bool:
    """Make ``folder`` hold the IR for ``key`` (built by ``build(staging)`` when missing,
    corrupt or stale, and published atomically); True when it was already there.
    UserError naming the folder when the cache's disk is full or read-only."""
    if _cached_problem(folder, key) is None:
        return True
    try:
        staging = atomic.build_folder(folder.parent, folder.name)
    except OSError as error:
        if (failure := atomic.write_failure(folder, error, CACHE_OPTION)) is None:
            raise
        raise failure from error
    try:
        build(staging)
        files = {name: {"size": (staging / name).stat().st_size, "sha256": file_sha256(staging / name)} for name in IR_FILES}
        (staging / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=2) + "\n")
        staging.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    except Exception as error:
        if (failure := atomic.write_failure(folder, error, CACHE_OPTION)) is None:
            raise
        raise failure from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return False


def _cached_problem(folder: Path, key: Mapping[str, object]) -> str | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return "missing"
    if manifest.get("key") != json.loads(json.dumps(key)):
        return "stale"
    for name in IR_FILES:
        record = manifest.get("files", {}).get(name)
        if record is None or not (folder / name).is_file():
            return f"{name} missing"
        if problem := file_problem(folder / name, int(record["size"]), str(record["sha256"])):
            return problem
    return None


VARIANTS = [
    Variant(OPENVINO, "OpenVINO fp32 (inference precision pinned to f32) of the ONNX export, CPU plugin",
            build_fp32, devices=("cpu",), options=(THREADS_OPTION,)),
    Variant(OPENVINO_BF16, "OpenVINO with bf16 inference precision (CPUs with AVX-512 BF16 or AMX)",
            build_bf16, devices=("cpu",), options=(THREADS_OPTION,), shared_prefix=OPENVINO),
    Variant(OPENVINO_INT8, "OpenVINO int8 by NNCF post-training quantization (default preset), CPU plugin",
            build_int8, devices=("cpu",), options=(THREADS_OPTION,), shared_prefix=OPENVINO),
]
