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
from dataclasses import asdict, dataclass
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

from densenet_opt.cache import tensor_digest
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


RECIPES: dict[str, Recipe] = {
    CPU: Recipe("QUInt8", "QInt8", symmetric_activations=False, batchnorm_as_depthwise_conv=True, op_types=None),
    TENSORRT: Recipe("QInt8", "QInt8", symmetric_activations=True, batchnorm_as_depthwise_conv=False, op_types=("Conv", "Gemm")),
}


def describe(target: str) -> str:
    """A compact name of the recipe for engine_info, e.g. qdq-u8s8-per-channel-percentile-bn-as-dwconv."""
    recipe = RECIPES[target]
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


def quantize(source: onnx.ModelProto | Path, output: Path, images: np.ndarray, target: str) -> None:
    """Write the int8 QDQ model of ``source`` for ``target`` (cpu or tensorrt) to ``output``."""
    check_calibration_count(len(images))
    recipe = RECIPES[target]
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    if recipe.batchnorm_as_depthwise_conv:
        batchnorm_to_depthwise_conv(model)
    quantize_static(
        model,
        str(output),
        ImageBatchReader(np.ascontiguousarray(images, dtype=np.float32)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(recipe.op_types) if recipe.op_types else None,
        per_channel=recipe.per_channel,
        activation_type=QuantType[recipe.activations],
        weight_type=QuantType[recipe.weights],
        calibrate_method=CalibrationMethod[recipe.calibration],
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


def int8_key(source: Artifact, target: str, images: torch.Tensor) -> dict[str, object]:
    """What the int8 bytes depend on: the fp32 model's bytes, the calibration images'
    bytes (another data set or sample count is another model), the quantizer and recipe."""
    return {
        "artifact": f"densenet121-int8-{target}",
        "source_sha256": source.sha256,
        "calibration_images": len(images),
        "calibration_sha256": tensor_digest(images),
        "quantizer": f"onnxruntime-{onnxruntime.__version__}",
        "recipe": {**asdict(RECIPES[target]), "version": RECIPE_VERSION, "batch": CALIBRATION_BATCH},
    }


def int8_artifact(
    source: Artifact,
    *,
    target: str,
    calibration_images: Callable[[int], torch.Tensor],
    calibration_samples: int,
    cache_dir: Path,
    progress: Callable[[str], None],
) -> tuple[Artifact, int]:
    """The int8 model for ``target`` and the number of calibration images it was built from."""
    check_calibration_count(calibration_samples)
    images = calibration_images(calibration_samples)
    check_calibration_count(len(images))
    artifact = cached_artifact(
        cache_dir,
        f"int8-{target}",
        int8_key(source, target, images),
        lambda path: quantize(source.path, path, images.numpy(), target),
        progress=progress,
        what=f"calibrating on {len(images)} images and quantizing to int8 for {target}",
    )
    return artifact, len(images)
