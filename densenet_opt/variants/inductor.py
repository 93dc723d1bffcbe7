"""Inductor-compiled engines on the CPU, built once and cached on disk as AOTInductor packages.

Why AOTInductor and not ``torch.compile`` on the CPU: freezing (what makes inductor
fast on CPUs: BatchNorm folded into convolutions, weights pre-packed for oneDNN) leaves
oneDNN tensors in the graph that inductor's FX graph cache cannot pickle, so every
process compiled the model again (``fxgraph_cache_bypass``, reason "mkldnn tensors
unpickleable"): about a minute per process on two cores, paid again by the memory
probe's fresh process for every batch size. ``torch.export`` + AOTInductor runs the same
inductor passes (freezing, the PT2E int8 lowering) and writes a self-contained ``.pt2``
package that any later process loads in well under a second. The batch dimension is
exported dynamic, so one package serves every batch size.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from densenet_opt.variants import BuildContext

# Bump when what goes into a package changes in a way the key below does not capture.
PACKAGE_RECIPE_VERSION = 1
CACHE_SUBDIR = "inductor"
# The exported batch dimension's range; the example batch must be at least 2, since
# export specialises a size-1 dimension to the constant 1.
MAX_BATCH = 4096
EXAMPLE_BATCH = 2
IMAGE_SHAPE = (3, 224, 224)


def machine_key() -> dict[str, str]:
    """What a package's compiled code depends on besides the model: the generated C++
    targets this CPU's instruction set, and the package format belongs to this torch."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "recipe": str(PACKAGE_RECIPE_VERSION),
    }


def tensor_digest(tensor: torch.Tensor) -> str:
    """Identifies calibration data in a cache key (same images, same package)."""
    return hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def example_batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor]:
    return (torch.zeros(EXAMPLE_BATCH, *IMAGE_SHAPE, dtype=dtype).contiguous(memory_format=torch.channels_last),)


def dynamic_batch_shapes() -> tuple[dict[int, torch.export.Dim]]:
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


@dataclass(frozen=True)
class Package:
    path: Path
    compile_s: float  # seconds the compile took when the package was built
    cache_hit: bool
    load_s: float  # seconds to load it in this process


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Readers never see a partial file: write into a temp folder beside it under the
    final name (AOTInductor names the archive's contents after the file), then rename."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        tmp = Path(folder) / path.name
        write(tmp)
        os.replace(tmp, path)


def package_path(ctx: BuildContext, name: str, key: Mapping[str, str]) -> Path:
    full_key = {"name": name, "weights": ctx.weights_key, **machine_key(), **key}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:16]
    return ctx.cache_dir / CACHE_SUBDIR / f"{name}-{digest}.pt2"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _check_cached(path: Path) -> tuple[dict | None, str]:
    """The sidecar's record when the package matches it, else (None, why not)."""
    if not path.exists():
        return None, "not cached"
    try:
        meta = json.loads(_sidecar(path).read_text())
        size, sha256 = int(meta["size"]), str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"its sidecar is missing or unreadable ({error.__class__.__name__})"
    if path.stat().st_size != size:
        return None, f"its size {path.stat().st_size} is not the {size} recorded (truncated?)"
    if _sha256(path) != sha256:
        return None, "its sha256 is not the one recorded (corrupt)"
    return meta, "ok"


def load_or_compile(
    ctx: BuildContext,
    name: str,
    key: Mapping[str, str],
    export: Callable[[], torch.export.ExportedProgram],
    inductor_configs: Mapping[str, object],
):
    """The loaded AOTInductor model and its Package record; ``export`` (which may
    quantize, calibrate...) runs only when no valid package is cached."""
    path = package_path(ctx, name, key)
    meta, reason = _check_cached(path)
    compile_s = float(meta["compile_s"]) if meta else 0.0
    if meta is None:
        if reason != "not cached":
            ctx.progress(f"{name}: cached package {path} is unusable ({reason}); compiling it again")
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with torch.no_grad():
            program = export()
            ctx.progress(f"{name}: compiling with AOTInductor (about a minute per variant on 2 cores; cached after)")
            _atomic_write(
                path,
                lambda tmp: torch._inductor.aoti_compile_and_package(
                    program, package_path=str(tmp), inductor_configs=dict(inductor_configs)
                ),
            )
        compile_s = time.perf_counter() - started
        record = {"size": path.stat().st_size, "sha256": _sha256(path), "compile_s": round(compile_s, 1),
                  "key": {"name": name, "weights": ctx.weights_key, **machine_key(), **key}}
        # The sidecar goes last: a crash before it leaves a package that fails the check.
        _atomic_write(_sidecar(path), lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    started = time.perf_counter()
    runner = torch._inductor.aoti_load_package(str(path))
    return runner, Package(path, compile_s, meta is not None, time.perf_counter() - started)


class PackageEngine:
    """Host batch in, host float32 logits out, through a loaded AOTInductor package.

    The input is converted to the package's dtype and to channels_last (the layout it was
    exported with) inside the timed call, as every engine converts its own input.
    """

    def __init__(self, runner, package: Package, *, dtype: torch.dtype, info: Mapping[str, str]) -> None:
        self.runner = runner
        self.dtype = dtype
        self.model_size_bytes = package.path.stat().st_size
        self.info = {
            **info,
            "compile_s": f"{package.compile_s:.1f}",
            "package_cache": "hit" if package.cache_hit else "miss",
            "load_s": f"{package.load_s:.2f}",
            "dynamic_batch": "yes",
        }

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = batch.to(dtype=self.dtype, memory_format=torch.channels_last)
            return self.runner(x).float()

    def close(self) -> None:
        self.runner = None
