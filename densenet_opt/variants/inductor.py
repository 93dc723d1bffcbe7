"""Inductor-compiled engines on the CPU, built once and cached on disk as AOTInductor packages.

Why AOTInductor and not ``torch.compile`` on the CPU: freezing (what makes inductor
fast on CPUs: BatchNorm folded into convolutions, weights pre-packed for oneDNN) leaves
oneDNN tensors in the graph that inductor's FX graph cache cannot pickle, so every
process compiled the model again (``fxgraph_cache_bypass``, reason "mkldnn tensors
unpickleable"), paid again by the memory probe's fresh process for every batch size.
``torch.export`` + AOTInductor runs the same inductor passes (freezing, the PT2E int8
lowering) and writes a self-contained ``.pt2`` package that any later process loads in
well under a second.

One package per batch size by default (option ``<variant>.batch=static``): with a dynamic
batch dimension inductor cannot pre-pack the convolution weights for oneDNN (packing wants
the input shape), so oneDNN re-lays the weights out on every call (ONEDNN_VERBOSE shows
a weight reorder per convolution per call; none with static shapes), which costs most at
small batch sizes. ``<variant>.batch=dynamic`` compiles one package for every batch size:
less compile time over a sweep, for that cost per call. The measurements are in
docs/results/amd-epyc_x86v4-vnni-bf16_2c.md#measurements-behind-the-design.
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from densenet_opt import atomic, cache
from densenet_opt.errors import VariantUnavailable
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.variants import BuildContext, VariantOption

# Bump when what goes into a package changes in a way the key below does not capture.
PACKAGE_RECIPE_VERSION = 1
CACHE_SUBDIR = "inductor"
# The exported batch dimension's range; the example batch must be at least 2, since
# export specialises a size-1 dimension to the constant 1.
MAX_BATCH = 4096
DYNAMIC_EXAMPLE_BATCH = 2
STATIC, DYNAMIC = "static", "dynamic"
# What every variant that builds a package takes (on the CPU).
BATCH_OPTION = VariantOption.choice(
    "batch", (STATIC, DYNAMIC), STATIC,
    f"CPU package: {STATIC}, one per batch size (fastest); {DYNAMIC}, one for every batch size (compiles once, "
    "re-lays the weights out on each call)",
)
COMPILER_REMEDY = "install g++ or point CXX at a working C++ compiler"
# A program that needs what inductor's generated C++ needs: the C++ standard headers, linking.
TRIVIAL_PROGRAM = "#include <vector>\nint main() { std::vector<int> v(1); return v[0]; }\n"
COMPILER_TIMEOUT_S = 120


@dataclass(frozen=True)
class BatchShape:
    """The batch size a package is compiled for; None means any (a dynamic dimension)."""

    size: int | None

    @property
    def key(self) -> str:
        """"dynamic" or "static-<size>": the package's cache key and engine_info's batch."""
        return DYNAMIC if self.size is None else f"{STATIC}-{self.size}"

    def example(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor]:
        """The export's example input: zeros [size (2 if dynamic),3,224,224] of ``dtype``, channels_last."""
        batch = DYNAMIC_EXAMPLE_BATCH if self.size is None else self.size
        return (torch.zeros(batch, *IMAGE_SHAPE, dtype=dtype).contiguous(memory_format=torch.channels_last),)

    def dynamic_shapes(self) -> tuple[dict[int, torch.export.Dim]] | None:
        """torch.export's dynamic_shapes: the batch dimension from 1 to MAX_BATCH, or None when static."""
        return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if self.size is None else None

    def export(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.export.ExportedProgram:
        """``model`` (taking ``dtype`` channels_last input) exported for this shape."""
        return torch.export.export(model, self.example(dtype), dynamic_shapes=self.dynamic_shapes())


def batch_shape(ctx: BuildContext) -> BatchShape:
    """The shape to compile for, from the built variant's ``batch`` option: the context's
    batch size (static, the default) or any (dynamic)."""
    return BatchShape(ctx.batch_size if ctx.option(BATCH_OPTION.name) == STATIC else None)


def machine_key() -> dict[str, str]:
    """What a package's compiled code depends on besides the model: the generated C++
    targets this CPU's instruction set, and the package format belongs to this torch."""
    flags = {
        "amx": torch.cpu._is_amx_tile_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "vnni": torch.cpu._is_vnni_supported(),
    }
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": ",".join(name for name, present in flags.items() if present),
        "machine": platform.machine(),
        "recipe": str(PACKAGE_RECIPE_VERSION),
    }


def cpp_compiler() -> str:
    """The C++ compiler inductor builds a package with, as torch._inductor.cpp_builder's
    get_cpp_compiler picks it: $CXX when set, else the one named in
    ``torch._inductor.config.cpp.cxx`` (g++). $CXX is read now: inductor reads it when its
    config is imported, which gives the same answer in a process started with it set."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    from torch._inductor import config

    search = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    return next((compiler for compiler in search if compiler), "g++")


def check_cpp_compiler() -> None:
    """Raises VariantUnavailable, with the reason and the remedy, unless the compiler that
    inductor would use compiles and links a trivial C++ program. Asked once per process
    and compiler. Only building a package needs it: loading a cached one does not."""
    if os.environ.get("TORCH_INDUCTOR_INSTALL_GXX"):  # inductor installs its own g++ with conda
        return
    compiler = cpp_compiler()
    problem = _compiler_problem(compiler)
    if problem is not None:
        raise VariantUnavailable(
            f"AOTInductor compiles its package with a C++ compiler, and {problem}: {COMPILER_REMEDY}"
        )


@functools.cache
def _compiler_problem(compiler: str) -> str | None:
    """Why ``compiler`` cannot build a trivial program; None when it can."""
    try:
        command = shlex.split(compiler)
    except ValueError:
        command = []
    if not command:
        return f"the compiler command {compiler!r} (CXX) cannot be parsed"
    if shutil.which(command[0]) is None:
        return f"the compiler {command[0]}{' (from CXX)' if os.environ.get('CXX') else ''} does not exist"
    with tempfile.TemporaryDirectory(prefix="densenet_opt-cxx-") as folder:
        source = Path(folder) / "check.cpp"
        source.write_text(TRIVIAL_PROGRAM)
        try:
            result = subprocess.run(
                # A shared library, as inductor builds: libstdc++ is resolved when it is loaded.
                [*command, "-shared", "-fPIC", str(source), "-o", str(Path(folder) / "check.so")],
                capture_output=True, text=True, timeout=COMPILER_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return f"the compiler {compiler} did not compile a trivial program within {COMPILER_TIMEOUT_S} s"
        except OSError as error:
            return f"the compiler {compiler} cannot be run ({error.strerror})"
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()] or lines
        said = f" ({errors[0].strip()[:200]})" if errors else ""
        return f"the compiler {compiler} failed on a trivial program (exit {result.returncode}){said}"
    return None


@dataclass(frozen=True)
class Package:
    """A loaded AOTInductor package: where it is, what it was compiled for, and what it cost."""

    name: str
    path: Path
    shape: BatchShape
    compile_s: float  # seconds the compile took when the package was built
    cache_hit: bool
    load_s: float  # seconds to load it in this process


def package_key(ctx: BuildContext, name: str, key: Mapping[str, str]) -> dict[str, str]:
    """Everything a package's bytes depend on (recorded in its sidecar)."""
    return {"name": name, "weights": ctx.weights_key, **machine_key(), **key}


def package_path(ctx: BuildContext, full_key: Mapping[str, str]) -> Path:
    """Where the package for ``full_key`` (from package_key) is cached: a .pt2 under the cache dir."""
    return ctx.cache_dir / CACHE_SUBDIR / f"{full_key['name']}-{cache.key_digest(full_key)}.pt2"


def load_or_compile(
    ctx: BuildContext,
    name: str,
    shape: BatchShape,
    key: Mapping[str, str],
    export: Callable[[], torch.export.ExportedProgram],
    inductor_configs: Mapping[str, object],
):
    """The loaded AOTInductor model and its Package record; ``export`` (which may
    quantize, calibrate...) runs only when no valid package is cached.

    Raises VariantUnavailable before exporting when a package must be built and there is
    no working C++ compiler (loading a cached package needs none), and UserError when the
    cache's disk is full or read-only."""
    full_key = package_key(ctx, name, {**key, "batch": shape.key})
    path = package_path(ctx, full_key)
    meta, reason = cache.check_cached(path)
    compile_s = float(meta["compile_s"]) if meta else 0.0
    if meta is None:
        if reason != cache.NOT_CACHED:
            ctx.progress(f"{name}: cached package {path} is unusable ({reason}); compiling it again")
        check_cpp_compiler()  # seconds, where the export and compile would fail after minutes
        started = time.perf_counter()
        with torch.no_grad():
            program = export()
            ctx.progress(f"{name}: compiling with AOTInductor for batch {shape.key} (minutes on 2 cores; cached after)")
            atomic.write_atomic(
                path,
                lambda tmp: torch._inductor.aoti_compile_and_package(
                    program, package_path=str(tmp), inductor_configs=dict(inductor_configs)
                ),
                option=cache.CACHE_OPTION,
            )
        compile_s = time.perf_counter() - started
        cache.write_sidecar(path, {"compile_s": round(compile_s, 1), "key": full_key})
    started = time.perf_counter()
    runner = torch._inductor.aoti_load_package(str(path))
    return runner, Package(name, path, shape, compile_s, meta is not None, time.perf_counter() - started)


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
            "batch": package.shape.key,
        }
        self.batch_size = package.shape.size
        self.name = package.name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.batch_size is not None and len(batch) != self.batch_size:
            raise ValueError(
                f"this package was compiled for batch {self.batch_size}, got {len(batch)}: "
                f"build one per batch size, or pass --variant-options {self.name}.batch=dynamic"
            )
        with torch.inference_mode():
            x = batch.to(dtype=self.dtype, memory_format=torch.channels_last)
            return self.runner(x).float()

    def close(self) -> None:
        self.runner = None
