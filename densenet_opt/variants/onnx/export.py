"""ONNX artifacts of DenseNet-121: export, fp16 conversion, a verified on-disk cache, true size.

Every artifact lives in its own folder under ``<cache_dir>/onnx/``, named by a digest of
its key (what determines its bytes: the weights, the opset, the exporter or converter
version, the recipe), beside a ``manifest.json`` that records the key and the size and
sha256 of every file. An artifact is used only when its manifest matches; a missing,
truncated or corrupt one is rebuilt, never loaded. A folder is built under a temporary
name and renamed into place, so a crash or a concurrent build never leaves half an
artifact where a reader looks.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from densenet_opt.atomic import build_folder, write_failure
from densenet_opt.errors import VariantUnavailable
from densenet_opt.cache import CACHE_OPTION, NOT_CACHED, file_problem, key_digest
from densenet_opt.cache import file_sha256
from densenet_opt.preprocessing import IMAGE_SHAPE

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
# 18 is the newest opset that every execution provider of ONNX Runtime >= 1.17 handles
# for these operators, TensorRT's parser included.
OPSET = 18
# Bump when the export or a transform changes the bytes for the same inputs.
RECIPE_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Artifact:
    """A verified ONNX model on disk."""

    path: Path
    build_s: float  # seconds spent building it in this process; 0.0 when it came from the cache
    from_cache: bool

    @property
    def size_bytes(self) -> int:
        """Bytes on disk, external data included (model_size_bytes)."""
        return model_size_bytes(self.path)

    @property
    def sha256(self) -> str:
        """The model file's sha256 (hex) as its manifest records it."""
        return json.loads((self.path.parent / MANIFEST_FILE).read_text())["files"][self.path.name]["sha256"]


def external_data_files(model_path: Path) -> list[Path]:
    """The files that hold tensors of ``model_path`` outside the protobuf (none for a
    single-file model)."""
    model = onnx.load(str(model_path), load_external_data=False)
    locations = {
        ExternalDataInfo(tensor).location
        for tensor in _all_tensors(model)
        if uses_external_data(tensor)
    }
    return sorted(model_path.parent / location for location in locations)


def model_size_bytes(model_path: Path) -> int:
    """Bytes on disk of the model, external data included: what a deployment copies.

    The .onnx file alone is the graph plus whatever weights were not written beside it; a
    model exported with external data is a few hundred KB of graph and the weights elsewhere.
    """
    return model_path.stat().st_size + sum(path.stat().st_size for path in external_data_files(model_path))


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    # Constant nodes and subgraphs (If, Loop) can hold external data too, not only initializers.
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def exporter_version() -> str:
    """What decides the exported bytes besides the weights and the opset."""
    return f"torch-{torch.__version__}-dynamo-onnxscript-{_package_version('onnxscript')}-onnx-{onnx.__version__}"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def fp32_key(weights_key: str) -> dict[str, object]:
    """What the fp32 export's bytes depend on: the weights, the opset, the exporter, the recipe."""
    return {
        "artifact": "densenet121-fp32",
        "weights": weights_key,
        "opset": OPSET,
        "exporter": exporter_version(),
        "recipe": RECIPE_VERSION,
    }


def export_fp32(model: torch.nn.Module, path: Path) -> None:
    """torch.onnx's exporter (torch.export based) with a dynamic batch axis.

    The exporter folds every BatchNormalization that follows a convolution into it; the
    pre-activation ones (DenseNet's norm1, transitions, norm5) stay as BatchNormalization.
    Weights go inside the one .onnx file: DenseNet-121 is far below protobuf's 2 GiB limit.
    """
    if _package_version("onnxscript") == "absent":
        raise VariantUnavailable(
            "torch.onnx.export needs the onnxscript package: pip install onnxscript "
            "(or pip install -e .[cpu] / .[gpu])"
        )
    # Batch 2, not 1: torch.export specialises a dimension of size 1 to a constant.
    example = torch.zeros(2, *IMAGE_SHAPE)
    torch.onnx.export(
        model.eval(),
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},),
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def fp32_artifact(
    *,
    weights_key: str,
    reference_model: Callable[[], torch.nn.Module],
    cache_dir: Path,
    progress: Callable[[str], None],
) -> Artifact:
    """The fp32 export, from the cache when it is there and intact; the reference model
    is built only when an export is needed."""
    return cached_artifact(
        cache_dir,
        "fp32",
        fp32_key(weights_key),
        lambda path: export_fp32(reference_model(), path),
        progress=progress,
        what="exporting DenseNet-121 to ONNX",
    )


def fp16_artifact(source: Artifact, *, cache_dir: Path, progress: Callable[[str], None]) -> Artifact:
    """The fp32 export with float16 weights and compute; inputs and outputs stay float32
    (a Cast at each end runs on the device), so callers feed and get the same tensors as
    from every other engine."""
    import onnxruntime

    key = {
        "artifact": "densenet121-fp16",
        "source_sha256": source.sha256,
        "converter": f"onnxruntime-{onnxruntime.__version__}-float16-keep_io_types",
        "recipe": RECIPE_VERSION,
    }

    def convert(path: Path) -> None:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = convert_float_to_float16(onnx.load(str(source.path)), keep_io_types=True)
        # The converter appends the input/output Casts at the end of the node list;
        # the ONNX spec (and onnx.checker) want nodes in topological order.
        OnnxModel.graph_topological_sort(model.graph, is_deterministic=True)
        onnx.save(model, str(path))

    return cached_artifact(cache_dir, "fp16", key, convert, progress=progress, what="converting the ONNX model to float16")


def check_cached(folder: Path, key: Mapping[str, object]) -> str | None:
    """None when ``folder`` holds the artifact for ``key`` intact, else why it cannot be used."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.exists():
        return NOT_CACHED if not folder.exists() else "no manifest (an interrupted build)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = {name: (int(meta["size"]), str(meta["sha256"])) for name, meta in manifest["files"].items()}
        recorded_key = manifest["key"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"manifest unreadable ({error.__class__.__name__})"
    if recorded_key != json.loads(json.dumps(key)):
        return "manifest key differs"
    if MODEL_FILE not in files:
        return f"manifest lists no {MODEL_FILE}"
    for name, (size, sha256) in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if problem := file_problem(path, size, sha256):
            return f"{name}: {problem}"
    return None


def cached_artifact(
    cache_dir: Path,
    kind: str,
    key: Mapping[str, object],
    build: Callable[[Path], None],
    *,
    progress: Callable[[str], None],
    what: str,
) -> Artifact:
    """The artifact for ``key``: verified from the cache, or built by ``build(path)``,
    checked with onnx.checker, and published atomically.

    Raises UserError naming the folder when the cache's disk is full, over quota or
    read-only (nothing partial is left); any other error from ``build`` propagates."""
    root = Path(cache_dir) / "onnx"
    folder = root / f"densenet121-{kind}-{key_digest(key)}"
    problem = check_cached(folder, key)
    if problem is None:
        return Artifact(folder / MODEL_FILE, build_s=0.0, from_cache=True)
    if problem != NOT_CACHED:
        progress(f"onnx: cached {kind} model in {folder} is unusable ({problem}); rebuilding it")
    try:
        staging = build_folder(root, folder.name)
    except OSError as error:
        if (failure := write_failure(folder, error, CACHE_OPTION)) is None:
            raise
        raise failure from error
    try:
        progress(f"onnx: {what} ({kind}, cached in {folder})")
        started = time.perf_counter()
        build(staging / MODEL_FILE)
        build_s = time.perf_counter() - started
        # The path form of the checker also reads external data and models over 2 GiB.
        onnx.checker.check_model(str(staging / MODEL_FILE))
        files = {
            path.name: {"size": path.stat().st_size, "sha256": file_sha256(path)}
            for path in [staging / MODEL_FILE, *external_data_files(staging / MODEL_FILE)]
        }
        manifest = {"key": key, "files": files, "build_s": round(build_s, 2)}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        _publish(staging, folder, key)
    except Exception as error:
        # Asked before the staging folder goes: removing it frees the space it took.
        if (failure := write_failure(folder, error, CACHE_OPTION)) is None:
            raise
        raise failure from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Artifact(folder / MODEL_FILE, build_s=build_s, from_cache=False)


def _publish(staging: Path, folder: Path, key: Mapping[str, object]) -> None:
    # Another process (a parallel sweep) may have published the same artifact meanwhile:
    # theirs is as good as ours, and a reader may be about to open it.
    if folder.exists():
        if check_cached(folder, key) is None:
            return
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(staging, folder)
    except OSError:
        if check_cached(folder, key) is not None:
            raise
