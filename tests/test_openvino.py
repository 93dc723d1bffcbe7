"""densenet_opt.variants.openvino on the sweep's weights (the ONNX export is shared with the
ONNX Runtime tests through the sweep's cache)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from densenet_opt.accuracy import fidelity
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.sweep import Sweep
from densenet_opt.variants import BuildContext, get_variant, parse_variant_options
from densenet_opt.variants.openvino import (
    IR_FILES,
    OPENVINO,
    OPENVINO_BF16,
    OPENVINO_INT8,
    cached_ir,
    compile_config,
)

BATCH = 4
CALIBRATION = 16


def test_fp32_and_int8_pin_f32_so_fp32_is_fp32() -> None:
    assert compile_config("fp32", 2)["INFERENCE_PRECISION_HINT"] == "f32"
    assert compile_config("int8", 2)["INFERENCE_PRECISION_HINT"] == "f32"  # the layers NNCF leaves in float
    assert compile_config("bf16", 2)["INFERENCE_PRECISION_HINT"] == "bf16"
    assert compile_config("fp32", 3) | {"INFERENCE_NUM_THREADS": "3"} == compile_config("fp32", 3)


def test_without_openvino_the_variants_say_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    ctx = BuildContext(device=torch.device("cpu"), batch_size=1, reference_model=torch.nn.Identity,
                       calibration_images=torch.zeros, calibration_samples=1, weights_key="none", cache_dir=tmp_path)
    for name in (OPENVINO, OPENVINO_BF16, OPENVINO_INT8):
        with pytest.raises(VariantUnavailable, match=r"pip install"):
            get_variant(name).build_engine(ctx)


def test_a_cuda_sweep_skips_them_with_the_reason(tmp_path: Path) -> None:
    ctx = BuildContext(device=torch.device("cuda"), batch_size=1, reference_model=torch.nn.Identity,
                       calibration_images=torch.zeros, calibration_samples=1, weights_key="none", cache_dir=tmp_path)
    with pytest.raises(VariantUnavailable, match="runs on cpu only, not cuda"):
        get_variant(OPENVINO_INT8).build_engine(ctx)


def test_threads_option_is_checked() -> None:
    with pytest.raises(UserError, match="openvino.threads=0"):
        parse_variant_options({"openvino.threads": "0"})
    parse_variant_options({"openvino.threads": "2", "openvino_int8.threads": "1"})


ov = pytest.importorskip("openvino", reason="OpenVINO is the openvino extra: pip install -e .[openvino]")


@pytest.fixture(scope="module")
def ctx(sweep: Sweep) -> BuildContext:
    context = sweep.build_context(BATCH)
    return dataclasses.replace(context, device=torch.device("cpu"), calibration_samples=CALIBRATION,
                               progress=lambda message: None, options=parse_variant_options({}))


@pytest.fixture(scope="module")
def images(sweep: Sweep) -> torch.Tensor:
    return sweep.eval_set.head(min(BATCH, len(sweep.eval_set)))


@pytest.fixture(scope="module")
def reference(sweep: Sweep, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return sweep.reference_model()(images)


def test_openvino_fp32_is_the_reference(ctx: BuildContext, images: torch.Tensor, reference: torch.Tensor) -> None:
    engine = get_variant(OPENVINO).build_engine(ctx)
    try:
        logits = engine(images)
        measured = fidelity(logits, reference, None)
        assert measured.agreement_top1 == 100.0 and measured.relative_error < 1e-4, measured
        assert engine.info["inference_precision_hint"] == "f32" and engine.info["source"] == "onnx export"
        assert engine.model_size_bytes > 30 * 2**20  # the fp32 weights
    finally:
        engine.close()


def test_openvino_bf16_runs_or_says_why(ctx: BuildContext, images: torch.Tensor, reference: torch.Tensor) -> None:
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(VariantUnavailable, match="needs a CPU with native bf16"):
            get_variant(OPENVINO_BF16).build_engine(ctx)
        return
    engine = get_variant(OPENVINO_BF16).build_engine(ctx)
    try:
        assert fidelity(engine(images), reference, None).relative_error < 0.05
    finally:
        engine.close()


def test_openvino_int8_is_cached_and_close(ctx: BuildContext, images: torch.Tensor, reference: torch.Tensor) -> None:
    engine = get_variant(OPENVINO_INT8).build_engine(ctx)
    again = get_variant(OPENVINO_INT8).build_engine(ctx)
    try:
        logits = engine(images)
        assert logits.shape == reference.shape and torch.isfinite(logits).all()
        assert fidelity(logits, reference, None).relative_error < 0.5
        assert again.info["int8_cache"] == "hit" and torch.equal(again(images), logits)
        assert engine.model_size_bytes < 16 * 2**20  # int8 weights: about a quarter of fp32's
        assert engine.info["calibration_images"] == str(CALIBRATION)
    finally:
        engine.close()
        again.close()


def test_zero_calibration_images_is_one_sentence(ctx: BuildContext) -> None:
    with pytest.raises(UserError, match="--calibration-samples") as error:
        get_variant(OPENVINO_INT8).build_engine(dataclasses.replace(ctx, calibration_samples=0))
    assert "\n" not in str(error.value)


def test_a_corrupt_cached_ir_is_built_again(tmp_path: Path) -> None:
    folder, key, builds = tmp_path / "ir", {"k": 1}, []

    def build(staging: Path) -> None:
        builds.append(staging)
        for name in IR_FILES:
            (staging / name).write_bytes(b"ir " + name.encode())

    assert cached_ir(folder, key, build) is False and cached_ir(folder, key, build) is True
    (folder / IR_FILES[1]).write_bytes(b"damaged")
    assert cached_ir(folder, key, build) is False and len(builds) == 2
    assert cached_ir(folder, {"k": 2}, build) is False and len(builds) == 3  # another key: stale
    assert (folder / IR_FILES[1]).read_bytes() == b"ir model.bin"
