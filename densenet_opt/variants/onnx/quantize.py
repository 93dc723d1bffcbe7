"""Static INT8 quantization of the ONNX export with onnxruntime.quantization (QDQ format).

Two recipes, one per place the int8 model runs:

- ``cpu`` (ONNX Runtime's CPU provider): uint8 activations, int8 per-channel weights
  (u8s8, which the VNNI and AVX2 kernels take directly), percentile calibration. Before
  quantizing, each standalone BatchNormalization (DenseNet's 58 norm1, 3 transition norms
  and norm5 are pre-activation, so the exporter cannot fold them into a conv) is rewritten
  as the equivalent 1x1 depthwise Conv. Left as BatchNormalization they stay in float, with
  a dequantize/quantize and NCHW/NHWC transposes around each; as convs they quantize like
  every other conv, and the optimized graph is int8 from the first conv to the classifier.
  With the default s8 activations about half the convs and the concats stay in float on
  x86, hence u8.
- ``tensorrt``: int8 activations and weights, both symmetric (TensorRT's explicit
  quantization takes zero points of 0 only), Q/DQ on the inputs of Conv and Gemm, where the
  work is; TensorRT fuses BatchNormalization and ReLU itself.

Calibration statistics are collected one small batch at a time: the augmented model
exposes every activation (about 120 MB per image for DenseNet-121), so a whole calibration
set at once would need gigabytes.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from densenet_opt import atomic
from densenet_opt.cache import CACHE_OPTION, key_digest, tensor_digest
from densenet_opt.errors import UserError
from densenet_opt.variants.onnx.export import (
    INPUT_NAME,
    RECIPE_VERSION,
    Artifact,
    cached_artifact,
)

CPU = "cpu"
TENSORRT = "tensorrt"
# Images per calibration step: bounds the activations held at once (~120 MB per image).
CALIBRATION_BATCH = 4


@dataclass(frozen=True)
class Recipe:
    """How quantize_static is called for one target (the type and method names are
    onnxruntime.quantization's enum member names)."""

    activations: str  # QuantType member name
    weights: str
    symmetric_activations: bool
    batchnorm_as_depthwise_conv: bool
    op_types: tuple[str, ...] | None  # None: every op type the quantizer supports
    calibration: str = "Percentile"  # CalibrationMethod member name
    per_channel: bool = True


# --variant-options onnx_int8.calibration words -> CalibrationMethod member names.
CALIBRATIONS = {"percentile": "Percentile", "minmax": "MinMax", "entropy": "Entropy"}

RECIPES: dict[str, Recipe] = {
    CPU: Recipe("QUInt8", "QInt8", symmetric_activations=False, batchnorm_as_depthwise_conv=True, op_types=None),
    TENSORRT: Recipe("QInt8", "QInt8", symmetric_activations=True, batchnorm_as_depthwise_conv=False, op_types=("Conv", "Gemm")),
}


def describe(recipe: Recipe) -> str:
    """A compact name of ``recipe`` for engine_info, e.g. qdq-u8s8-per-channel-percentile-bn-as-dwconv."""
    bits = {"QUInt8": "u8", "QInt8": "s8"}
    parts = [
        f"qdq-{bits[recipe.activations]}{bits[recipe.weights]}",
        "per-channel" if recipe.per_channel else "per-tensor",
        "symmetric" if recipe.symmetric_activations else "",
        recipe.calibration.lower(),
        "bn-as-dwconv" if recipe.batchnorm_as_depthwise_conv else "",
    ]
    return "-".join(part for part in parts if part)


def batchnorm_to_depthwise_conv(model: onnx.ModelProto) -> int:
    """Rewrite, in place, each inference BatchNormalization whose parameters are
    initializers as the 1x1 depthwise Conv that computes the same per-channel affine map;
    returns how many were rewritten. Assumes 4-D (NCHW) inputs, as in DenseNet."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        params = list(node.input[1:5])
        if (
            node.op_type != "BatchNormalization"
            or node.domain not in ("", "ai.onnx")
            or len(node.output) != 1
            or _attribute(node, "training_mode", 0)
            or not all(name in initializers for name in params)
        ):
            nodes.append(node)
            continue
        scale, shift, mean, variance = (numpy_helper.to_array(initializers[name]).astype(np.float64) for name in params)
        gain = scale / np.sqrt(variance + _attribute(node, "epsilon", 1e-5))
        name = f"{node.name or f'batchnorm{rewritten}'}_as_depthwise_conv"
        graph.initializer.extend(
            [
                numpy_helper.from_array(gain.reshape(-1, 1, 1, 1).astype(np.float32), f"{name}.weight"),
                numpy_helper.from_array((shift - mean * gain).astype(np.float32), f"{name}.bias"),
            ]
        )
        nodes.append(
            helper.make_node(
                "Conv", [node.input[0], f"{name}.weight", f"{name}.bias"], list(node.output),
                name=name, group=len(gain), kernel_shape=[1, 1],
            )
        )
        rewritten += 1
    graph.ClearField("node")
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    return rewritten


def _attribute(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


class ImageBatchReader(CalibrationDataReader):
    """Calibration images in batches of ``batch_size``.

    ``set_range`` (used by quantize_static's CalibStridedMinMax option) makes the
    calibrator collect one batch at a time, merging statistics as it goes.
    """

    def __init__(self, images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> None:
        self.batches = [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._pending, None)
        return None if batch is None else {INPUT_NAME: batch}


def recipe_for(target: str, calibration: str | None = None) -> Recipe:
    """The recipe of ``target`` (cpu or tensorrt), with ``calibration`` (a CALIBRATIONS
    word, e.g. "entropy") replacing its calibration method when given."""
    recipe = RECIPES[target]
    return replace(recipe, calibration=CALIBRATIONS[calibration]) if calibration else recipe


def quantize(
    source: onnx.ModelProto | Path,
    output: Path,
    images: np.ndarray | None,
    recipe: Recipe,
    *,
    exclude: Sequence[str] = (),
    calibration_cache: Path | None = None,
) -> None:
    """Write the int8 QDQ model of ``source`` quantized by ``recipe`` to ``output``.

    ``images``: float32 [N,3,224,224] calibration images (None when ``calibration_cache``
    exists). ``exclude``: names of nodes kept in float (quantize_static's nodes_to_exclude,
    names as in the model after the recipe's BatchNormalization rewrite).
    ``calibration_cache``: onnxruntime's calibration cache (quantize_static's
    calibration_cache_path): the tensor ranges are read from it when the file exists, else
    computed from ``images`` and saved there, so that quantizing the same model with other
    nodes excluded does not calibrate again. UserError for an empty calibration set."""
    if images is not None:
        check_calibration_count(len(images))
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    if recipe.batchnorm_as_depthwise_conv:
        batchnorm_to_depthwise_conv(model)
    quantize_static(
        model,
        str(output),
        None if images is None else ImageBatchReader(np.ascontiguousarray(images, dtype=np.float32)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(recipe.op_types) if recipe.op_types else None,
        per_channel=recipe.per_channel,
        activation_type=QuantType[recipe.activations],
        weight_type=QuantType[recipe.weights],
        calibrate_method=CalibrationMethod[recipe.calibration],
        nodes_to_exclude=list(exclude),
        calibration_cache_path=None if calibration_cache is None else str(calibration_cache),
        extra_options={
            "CalibStridedMinMax": 1,  # one reader batch per collection step (see ImageBatchReader)
            "ActivationSymmetric": recipe.symmetric_activations,
            "CalibTensorRangeSymmetric": recipe.symmetric_activations,
        },
    )


def check_calibration_count(count: int) -> None:
    """UserError naming --calibration-samples unless ``count`` >= 1."""
    if count < 1:
        raise UserError(
            f"int8 quantization needs calibration images, got {count}: pass --calibration-samples N "
            "with N >= 1 (128 by default)"
        )


def int8_key(source: Artifact, recipe: Recipe, images: torch.Tensor, exclude: Sequence[str] = ()) -> dict[str, object]:
    """What the int8 bytes depend on: the fp32 model's bytes, the calibration images'
    bytes (another data set or sample count is another model), the quantizer, the recipe
    and the nodes kept in float."""
    target = TENSORRT if recipe.symmetric_activations else CPU
    key: dict[str, object] = {
        "artifact": f"densenet121-int8-{target}",
        "source_sha256": source.sha256,
        "calibration_images": len(images),
        "calibration_sha256": tensor_digest(images),
        "quantizer": f"onnxruntime-{onnxruntime.__version__}",
        "recipe": {**asdict(recipe), "version": RECIPE_VERSION, "batch": CALIBRATION_BATCH},
    }
    if exclude:
        key["float_nodes"] = list(exclude)
    return key


def calibration_cache_path(cache_dir: Path, source: Artifact, recipe: Recipe, images: torch.Tensor) -> Path:
    """Where onnxruntime's calibration cache (tensor ranges) of ``source`` calibrated on
    ``images`` by ``recipe`` is kept, keyed by everything the ranges depend on."""
    key = {
        "source_sha256": source.sha256, "calibration_sha256": tensor_digest(images), "images": len(images),
        "method": recipe.calibration, "bn_as_dwconv": recipe.batchnorm_as_depthwise_conv,
        "op_types": recipe.op_types, "symmetric": recipe.symmetric_activations,
        "quantizer": f"onnxruntime-{onnxruntime.__version__}", "version": RECIPE_VERSION,
    }
    return Path(cache_dir) / "onnx" / "calibration" / f"ranges-{key_digest(key)}.json"


def int8_artifact(
    source: Artifact,
    *,
    recipe: Recipe,
    images: torch.Tensor,
    cache_dir: Path,
    progress: Callable[[str], None],
    exclude: Sequence[str] = (),
) -> Artifact:
    """The int8 model of ``source`` by ``recipe``, calibrated on ``images`` (float32
    [N,3,224,224]), with the nodes ``exclude`` kept in float; cached by int8_key. The
    calibration ranges are cached too (calibration_cache_path), so another set of float
    nodes costs a quantization, not a calibration. UserError for no images or a full disk."""
    check_calibration_count(len(images))
    ranges = calibration_cache_path(cache_dir, source, recipe, images)

    def build(path: Path) -> None:
        if ranges.is_file():
            quantize(source.path, path, None, recipe, exclude=exclude, calibration_cache=ranges)
            return
        # onnxruntime writes the cache in place: written aside, published only when whole.
        staging = path.parent / "calibration-ranges.json"
        quantize(source.path, path, images.numpy(), recipe, exclude=exclude, calibration_cache=staging)
        atomic.write_bytes(ranges, staging.read_bytes(), option=CACHE_OPTION)

    float_note = f", {len(exclude)} node(s) kept in float" if exclude else ""
    ranges_note = "with the cached calibration ranges" if ranges.is_file() else f"calibrating on {len(images)} images and"
    return cached_artifact(
        cache_dir,
        f"int8-{TENSORRT if recipe.symmetric_activations else CPU}",
        int8_key(source, recipe, images, exclude),
        build,
        progress=progress,
        what=f"{ranges_note} quantizing to int8{float_note}",
    )
