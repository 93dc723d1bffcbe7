"""Static post-training int8 on the CPU: PT2E with torchao's X86InductorQuantizer.

The recommended x86 flow: ``torch.export`` with a dynamic batch dimension, torchao's
``prepare_pt2e`` with the X86 inductor quantizer (uint8 per-tensor activations from
histogram observers, int8 per-channel symmetric weights), calibration on images disjoint
from the evaluated ones, ``convert_pt2e``, then inductor with freezing, which lowers the
quantize/dequantize patterns to oneDNN int8 convolutions (VNNI on AVX-512): all 120
convolutions and the classifier run in int8, and each BatchNorm+ReLU fuses with the
dequantize/quantize around it. Compiled into a cached AOTInductor package per batch size
(inductor.py says why not ``torch.compile``, and why not one dynamic-batch package).

What bounds it on a CPU without AMX: VNNI does 4 int8 multiply-adds per 32-bit lane, so
the int8 convolutions can be at most about 4x faster than fp32's, and the rest of the
call (concatenations, BatchNorm+ReLU+quantize) remains; AMX multiplies int8 at 8x the
per-core rate of AVX-512 VNNI. The figures measured on a CPU without AMX are in the
README ("Measurements behind the design").

There is no CUDA path: these patterns lower to oneDNN CPU kernels only, and PyTorch has
no int8 convolution for CUDA GPUs.
"""

from __future__ import annotations

import importlib.metadata

import torch

from densenet_opt.cache import tensor_digest
from densenet_opt.errors import VariantUnavailable
from densenet_opt.variants import BuildContext, Engine, Variant
from densenet_opt.variants.inductor import (
    BATCH_OPTION, BatchShape, PackageEngine, batch_shape, load_or_compile,
)

NAME = "int8"
TORCHAO_REQUIREMENT = "torchao>=0.18"
# Calibration batches: large enough to amortise the observers' overhead, small enough
# that a 2-core machine keeps the activations of a DenseNet in RAM comfortably.
CALIBRATION_BATCH = 32


def import_pt2e():
    """torchao's PT2E API, or VariantUnavailable saying what to install.

    ``torch.ao.quantization.quantize_pt2e`` is gone from torch 2.14, so torchao is the
    only source of this API.
    """
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as error:
        raise VariantUnavailable(
            f"int8 needs torchao's PT2E quantization API, which this environment lacks ({error}): "
            f"pip install '{TORCHAO_REQUIREMENT}'"
        ) from None
    return quantize_pt2e, x86_inductor_quantizer


def calibrate(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Run the observed ``model`` over float32 ``images`` [N,3,224,224] in batches, so its
    observers record the activation ranges."""
    with torch.no_grad():
        for start in range(0, len(images), CALIBRATION_BATCH):
            model(images[start : start + CALIBRATION_BATCH].contiguous(memory_format=torch.channels_last))


# Calibrated, converted models by (weights, calibration data): a run that builds one
# static package per batch size quantizes once. One entry: a run has one model.
_quantized: dict[tuple[str, str], torch.fx.GraphModule] = {}


def quantized_model(ctx: BuildContext, calibration: torch.Tensor, calibration_key: str) -> torch.fx.GraphModule:
    """The converted int8 graph (dynamic batch) of the reference model calibrated on
    ``calibration``; kept for the process by (weights, ``calibration_key``).
    VariantUnavailable without torchao."""
    key = (ctx.weights_key, calibration_key)
    if key not in _quantized:
        quantize_pt2e, xiq = import_pt2e()
        ctx.progress(f"{NAME}: exporting, inserting observers, calibrating on {len(calibration)} images")
        model = ctx.reference_model().eval().to(memory_format=torch.channels_last)
        # Exported with a dynamic batch so that calibration can use any batch size.
        graph = BatchShape(None).export(model).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        calibrate(prepared, calibration)
        _quantized.clear()
        _quantized[key] = quantize_pt2e.convert_pt2e(prepared)
    return _quantized[key]


def build(ctx: BuildContext) -> Engine:
    """The int8 AOTInductor package (cached; quantized and compiled only when missing).
    VariantUnavailable without torchao or a C++ compiler to build the package."""
    shape = batch_shape(ctx)
    import_pt2e()  # fail early, before the calibration images are made
    calibration = ctx.calibration_images(ctx.calibration_samples)
    calibration_key = f"{len(calibration)}-{tensor_digest(calibration)}"
    key = {
        "torchao": importlib.metadata.version("torchao"),
        "calibration": calibration_key,
        "quantizer": "x86-inductor-default",
    }
    runner, package = load_or_compile(
        ctx, NAME, shape, key,
        lambda: shape.export(quantized_model(ctx, calibration, calibration_key)),
        inductor_configs={"freezing": True},
    )
    info = {
        "quantizer": "X86InductorQuantizer(u8 per-tensor act, s8 per-channel weight)",
        "calibration_images": str(len(calibration)),
        "backend": "aotinductor+onednn",
    }
    return PackageEngine(runner, package, dtype=torch.float32, info=info)


VARIANTS = [
    Variant(
        NAME,
        "static int8 PT2E (torchao X86InductorQuantizer) lowered by inductor with freezing to oneDNN; CPU only",
        build,
        devices=("cpu",),
        options=(BATCH_OPTION,),
    )
]
