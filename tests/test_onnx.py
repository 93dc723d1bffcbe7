"""densenet_opt.variants.onnx (builders, providers, engine, export, quantize) on the sweep's weights.

The export of DenseNet-121 takes about half a minute on two cores, so these tests share
the sweep's on-disk cache: one export (and one int8 model, calibrated as the sweep does)
serves the benchmark sweep and these tests alike. Tests that damage a cached artifact do
so on a copy under tmp_path.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from densenet_opt.accuracy import fidelity
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.workbench import Workbench
from densenet_opt.variants import BuildContext, Engine, get_variant, parse_variant_options
from densenet_opt.variants.onnx import builders as ort_variants
from densenet_opt.variants.onnx import export as onnx_export
from densenet_opt.variants.onnx.builders import ONNX, ONNX_FP16, ONNX_INT8
from densenet_opt.variants.onnx.engine import DeviceIO
from densenet_opt.variants.onnx.export import MANIFEST_FILE, MODEL_FILE, cached_artifact, model_size_bytes
from densenet_opt.variants.onnx.providers import (
    PROVIDERS,
    Settings,
    choose_provider,
    default_threads,
    int8_provider,
    provider_entries,
)

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is an extra: pip install -e .[cpu]")
from densenet_opt.variants.onnx.graph_ops import optimized_op_counts  # noqa: E402 - needs onnxruntime
from densenet_opt.variants.onnx.quantize import (  # noqa: E402 - needs onnxruntime
    CPU,
    RECIPES,
    TENSORRT,
    batchnorm_to_depthwise_conv,
    int8_artifact,
    int8_key,
    quantize,
)

BATCH = 4
FLOAT_COMPUTE_OPS = {"Conv", "FusedConv", "BatchNormalization", "Gemm", "FusedGemm", "MatMul"}
FP32_RELATIVE_ERROR_MAX = 1e-4
CALIBRATION_SAMPLES_MAX = 16


def quiet(message: str) -> None:
    pass


def build(variant: str, ctx: BuildContext) -> Engine:
    return get_variant(variant).build_engine(ctx)


def build_fp32(ctx: BuildContext) -> Engine:
    return build(ONNX, ctx)


def build_fp16(ctx: BuildContext) -> Engine:
    return build(ONNX_FP16, ctx)


def build_int8(ctx: BuildContext) -> Engine:
    return build(ONNX_INT8, ctx)


def settings(variant: str, options: dict[str, str]) -> Settings:
    """The provider settings the build of ``variant`` reads from ``options``."""
    ctx = BuildContext(
        device=torch.device("cpu"), batch_size=1, reference_model=torch.nn.Identity, calibration_images=torch.zeros,
        calibration_samples=1, weights_key="none", cache_dir=Path("."), options=parse_variant_options(options),
        variant=get_variant(variant),
    )
    return Settings.of(ctx)


@pytest.fixture(scope="module")
def ctx(workbench: Workbench) -> BuildContext:
    context = workbench.build_context(BATCH)
    # At most CI's count (its sweep then has calibrated the same model already): the
    # int8 graph's structure does not depend on it, and 128 images take minutes here.
    calibration = min(context.calibration_samples, CALIBRATION_SAMPLES_MAX)
    # All-int8 (float_nodes=0): the accuracy-aware search has its own tests.
    return dataclasses.replace(
        context, device=torch.device("cpu"), options=parse_variant_options({"onnx_int8.float_nodes": "0"}),
        progress=quiet, calibration_samples=calibration,
    )


# eval_images (the sweep's first BATCH images) and reference_logits (the fp32 model's on them)
# come from conftest.py.


@pytest.fixture(scope="module")
def fp32_engine(ctx: BuildContext):
    engine = build_fp32(ctx)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def fp32_model(ctx: BuildContext) -> onnx_export.Artifact:
    return ort_variants.fp32_model(ctx)


# ---------------------------------------------------------------------------------------
# fp32: fidelity, dynamic batch, size, what engine_info records
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fp32_matches_torch(fp32_engine, eval_images: torch.Tensor, reference_logits: torch.Tensor) -> None:
    result = fidelity(fp32_engine(eval_images), reference_logits, None)
    assert result.agreement_top_1 == 100.0
    assert result.relative_error < FP32_RELATIVE_ERROR_MAX


@pytest.mark.slow
def test_one_session_takes_any_batch_size(fp32_engine, eval_images: torch.Tensor, reference_logits: torch.Tensor) -> None:
    for size in (1, 3):
        logits = fp32_engine(eval_images[:size])
        assert logits.shape == (size, reference_logits.shape[1]) and logits.dtype == torch.float32
        torch.testing.assert_close(logits, reference_logits[:size], rtol=0, atol=1e-3 * reference_logits.abs().max().item())


def test_engine_records_provider_and_build_times(fp32_engine) -> None:
    info = fp32_engine.info
    assert info["provider"] == PROVIDERS["cpu"]
    assert info["intra_op_threads"] == str(default_threads())
    for key in ("export_s", "session_s", "first_run_s"):
        assert float(info[key]) >= 0
    assert not any(";" in value or "=" in value for value in info.values())  # engine_info is k=v;k=v


def test_model_size_is_the_whole_model(fp32_engine, fp32_model, workbench: Workbench) -> None:
    parameters = sum(p.numel() for p in workbench.reference_model().parameters())
    assert fp32_engine.model_size_bytes == model_size_bytes(fp32_model.path)
    # Every fp32 weight is in there (less the BatchNorms folded into convs).
    assert fp32_engine.model_size_bytes > 0.95 * parameters * 4


def test_model_size_counts_external_data(fp32_model, tmp_path: Path) -> None:
    model = onnx.load(str(fp32_model.path))
    split = tmp_path / "split.onnx"
    onnx.save(model, str(split), save_as_external_data=True, all_tensors_to_one_file=True, location="split.onnx.data")
    data_file = tmp_path / "split.onnx.data"
    assert split.stat().st_size < data_file.stat().st_size / 10  # the .onnx alone is mostly graph
    assert onnx_export.external_data_files(split) == [data_file]
    assert model_size_bytes(split) == split.stat().st_size + data_file.stat().st_size
    assert model_size_bytes(split) == pytest.approx(model_size_bytes(fp32_model.path), rel=0.05)


@pytest.mark.slow
def test_fp16_model_keeps_float32_inputs_and_outputs(ctx: BuildContext, fp32_model, eval_images, reference_logits) -> None:
    fp16 = onnx_export.fp16_artifact(fp32_model, cache_dir=ctx.cache_dir, progress=quiet)
    model = onnx.load(str(fp16.path))
    assert [value.type.tensor_type.elem_type for value in (*model.graph.input, *model.graph.output)] == [
        TensorProto.FLOAT, TensorProto.FLOAT,
    ]
    conv_weights = [tensor for tensor in model.graph.initializer if len(tensor.dims) == 4]
    assert conv_weights and all(tensor.data_type == TensorProto.FLOAT16 for tensor in conv_weights)
    assert fp16.size_bytes < 0.55 * fp32_model.size_bytes
    # ORT's CPU provider runs it too (slowly), which checks the numbers without a GPU.
    session = ort.InferenceSession(str(fp16.path), providers=[PROVIDERS["cpu"]])
    logits = torch.from_numpy(session.run(None, {onnx_export.INPUT_NAME: eval_images.numpy()})[0])
    assert fidelity(logits, reference_logits, None).relative_error < 0.02


# ---------------------------------------------------------------------------------------
# The on-disk cache
# ---------------------------------------------------------------------------------------


def test_export_cache_is_reused_without_the_reference_model(ctx: BuildContext, fp32_model) -> None:
    def no_model() -> torch.nn.Module:
        raise AssertionError("a cached export must not build the reference model")

    again = onnx_export.fp32_artifact(
        weights_key=ctx.weights_key, reference_model=no_model, cache_dir=ctx.cache_dir, progress=quiet
    )
    assert again.from_cache and again.build_s == 0.0 and again.path == fp32_model.path


def test_cache_key_changes_with_weights_and_opset() -> None:
    key = onnx_export.fp32_key("weights-a")
    assert onnx_export.key_digest(key) != onnx_export.key_digest(onnx_export.fp32_key("weights-b"))
    assert onnx_export.key_digest(key) != onnx_export.key_digest({**key, "opset": onnx_export.OPSET + 1})
    assert "torch-" in key["exporter"] and "onnxscript" in key["exporter"]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def drop_manifest(path: Path) -> None:
    (path.parent / MANIFEST_FILE).unlink()


@pytest.mark.parametrize("damage", [flip_a_byte, truncate, drop_manifest], ids=["corrupt", "truncated", "no-manifest"])
def test_damaged_cache_is_detected_and_rebuilt(damage, fp32_model, tmp_path: Path) -> None:
    key = {"artifact": "test", "source": fp32_model.sha256}
    exports: list[Path] = []

    def export(path: Path) -> None:  # stands in for the half-minute export with the same bytes
        exports.append(path)
        shutil.copyfile(fp32_model.path, path)

    first = cached_artifact(tmp_path, "test", key, export, progress=quiet, what="test export")
    assert not first.from_cache and len(exports) == 1
    damage(first.path)
    messages: list[str] = []
    rebuilt = cached_artifact(tmp_path, "test", key, export, progress=messages.append, what="test export")
    assert len(exports) == 2 and not rebuilt.from_cache
    assert any("unusable" in message for message in messages)
    assert rebuilt.sha256 == fp32_model.sha256 and onnx_export.check_cached(rebuilt.path.parent, key) is None
    assert cached_artifact(tmp_path, "test", key, export, progress=quiet, what="test export").from_cache


def test_a_build_that_fails_the_checker_is_not_cached(tmp_path: Path) -> None:
    with pytest.raises(onnx.checker.ValidationError):
        cached_artifact(tmp_path, "test", {"k": 1}, lambda path: path.write_bytes(b"not onnx"), progress=quiet, what="x")
    assert not any((tmp_path / "onnx").glob(f"*/{MODEL_FILE}"))


# ---------------------------------------------------------------------------------------
# Providers and options
# ---------------------------------------------------------------------------------------


def test_a_forced_missing_provider_names_what_is_installed(ctx: BuildContext) -> None:
    available = ort.get_available_providers()
    missing = next((alias for alias in ("tensorrt", "cuda") if PROVIDERS[alias] not in available), None)
    if missing is None:
        pytest.skip("every provider is installed here")
    with pytest.raises(UserError) as error:
        build_fp32(dataclasses.replace(ctx, options=parse_variant_options({"onnx.provider": missing})))
    message = str(error.value)
    assert f"onnx.provider={missing}" in message and PROVIDERS[missing] in message
    assert all(name in message for name in available) and "\n" not in message


@pytest.mark.parametrize(
    "device, available, expected",
    [
        ("cuda", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "tensorrt"),
        ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"),
        ("cpu", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "cpu"),
    ],
)
def test_best_available_provider(device: str, available: list[str], expected: str) -> None:
    assert choose_provider(settings(ONNX, {}), device, available) == expected


def test_no_gpu_provider_on_cuda_is_a_skip_reason() -> None:
    with pytest.raises(VariantUnavailable, match=r"pip install -e \.\[gpu\]"):
        choose_provider(settings(ONNX, {}), "cuda", ["CPUExecutionProvider"])


def test_variant_option_wins_over_the_family_option() -> None:
    options = {"onnx.provider": "cpu", "onnx_int8.provider": "tensorrt", "onnx.threads": "3"}
    assert settings(ONNX_INT8, options) == Settings("tensorrt", 3, "onnx_int8.provider")
    assert settings(ONNX_FP16, options).provider == "cpu"


@pytest.mark.parametrize(
    "options, named",
    [
        ({"onnx.provder": "cpu"}, "onnx.provder"),
        ({"onnx.provider": "rocm"}, "onnx.provider=rocm"),
        ({"onnx_int8.threads": "0"}, "onnx_int8.threads"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, str], named: str) -> None:
    with pytest.raises(UserError, match=named.replace(".", r"\.")):
        parse_variant_options(options)


def test_int8_on_cuda_without_tensorrt_runs_on_the_cpu_and_says_so() -> None:
    provider, note = int8_provider(settings(ONNX_INT8, {}), "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert provider == "cpu" and "CPU" in note
    assert int8_provider(settings(ONNX_INT8, {}), "cuda", list(PROVIDERS.values())) == ("tensorrt", None)
    with pytest.raises(UserError, match="no int8 convolutions"):
        int8_provider(settings(ONNX_INT8, {"onnx.provider": "cuda"}), "cuda", list(PROVIDERS.values()))


def test_tensorrt_options(tmp_path: Path) -> None:
    entries = dict(provider_entries("tensorrt", precision="int8", batch_size=32, device_id=0, cache_dir=tmp_path))
    assert list(entries) == [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]]
    trt = entries[PROVIDERS["tensorrt"]]
    assert trt["trt_int8_enable"] is True and trt["trt_fp16_enable"] is True
    assert trt["trt_profile_min_shapes"] == "images:1x3x224x224"
    assert trt["trt_profile_max_shapes"] == trt["trt_profile_opt_shapes"] == "images:32x3x224x224"
    assert Path(trt["trt_engine_cache_path"]).is_dir() and "32" in Path(trt["trt_engine_cache_path"]).name
    cuda = entries[PROVIDERS["cuda"]]
    assert cuda["arena_extend_strategy"] == "kSameAsRequested" and cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"


def test_fp16_is_skipped_on_the_cpu_with_a_reason(ctx: BuildContext) -> None:
    with pytest.raises(VariantUnavailable, match="CUDA and TensorRT providers only"):
        build_fp16(ctx)
    # A CUDA sweep that forces the CPU provider: same reason, and nothing touches CUDA.
    with pytest.raises(VariantUnavailable, match="CUDA and TensorRT providers only"):
        forced_cpu = parse_variant_options({"onnx.provider": "cpu"})
        build_fp16(dataclasses.replace(ctx, device=torch.device("cuda"), options=forced_cpu))


def test_without_onnxruntime_the_variants_say_what_to_install(ctx: BuildContext, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    # Re-imported on use, as in a fresh process: it must not be reached before the check.
    monkeypatch.delitem(sys.modules, "densenet_opt.variants.onnx.quantize")
    for build in (build_fp32, build_int8):
        with pytest.raises(VariantUnavailable, match=r"pip install -e \.\[cpu\]"):
            build(ctx)


def test_without_onnxscript_the_export_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(onnx_export, "_package_version", lambda name: "absent")
    with pytest.raises(VariantUnavailable, match="pip install onnxscript"):
        onnx_export.export_fp32(torch.nn.Identity(), tmp_path / MODEL_FILE)


# ---------------------------------------------------------------------------------------
# IOBinding, exercised on CPU buffers (the CUDA path binds the same way, on the device)
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_device_io_matches_plain_run(fp32_engine, eval_images: torch.Tensor) -> None:
    io = DeviceIO(fp32_engine.session, ort, "cpu", 0)
    expected = fp32_engine(eval_images)
    first = io(eval_images.numpy())
    small = io(eval_images[:1].numpy())
    again = io(eval_images.numpy())
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(small, expected[:1])
    assert first.data_ptr() != again.data_ptr()  # each call returns its own host array
    torch.testing.assert_close(first, again)


# ---------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------


def test_zero_calibration_images_is_a_user_error(ctx: BuildContext, fp32_model, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--calibration-samples") as error:
        build_int8(dataclasses.replace(ctx, calibration_samples=0))
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="got 0"):
        quantize(fp32_model.path, tmp_path / "int8.onnx", np.zeros((0, 3, 224, 224), np.float32), RECIPES[CPU])
    with pytest.raises(UserError, match="got 0"):  # a data source that returns fewer images than asked
        int8_artifact(
            fp32_model, recipe=RECIPES[CPU], images=torch.zeros(0, 3, 224, 224), cache_dir=tmp_path, progress=quiet,
        )
    with pytest.raises(UserError, match="got 0"):
        build_int8(dataclasses.replace(ctx, calibration_images=lambda n: torch.zeros(0, 3, 224, 224)))


def test_batchnorm_as_depthwise_conv_is_exact(tmp_path: Path) -> None:
    channels = 5
    rng = np.random.default_rng(0)
    params = {
        "scale": rng.uniform(0.5, 2, channels), "bias": rng.normal(size=channels),
        "mean": rng.normal(size=channels), "var": rng.uniform(0.1, 3, channels),
    }
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", *params], ["y"], name="bn", epsilon=1e-3)],
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, channels, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, channels, 3, 3])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_export.OPSET)])
    x = rng.normal(size=(2, channels, 3, 3)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert batchnorm_to_depthwise_conv(model) == 1
    onnx.checker.check_model(model)
    assert [node.op_type for node in model.graph.node] == ["Conv"]
    assert len(model.graph.initializer) == 2  # the BatchNorm parameters are gone
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def int8_model(ctx: BuildContext, fp32_model) -> onnx_export.Artifact:
    return int8_artifact(
        fp32_model, recipe=RECIPES[CPU], images=ctx.calibration_images(ctx.calibration_samples),
        cache_dir=ctx.cache_dir, progress=quiet,
    )


def test_int8_graph_is_int8_end_to_end(int8_model, fp32_model) -> None:
    fp32_ops = optimized_op_counts(fp32_model.path, precision="fp32")
    int8_ops = optimized_op_counts(int8_model.path, precision="int8")
    float_convs = sum(fp32_ops[op] for op in ("Conv", "FusedConv"))
    assert float_convs == 120 + 62  # every conv, and every BatchNorm that the exporter could not fold
    assert not FLOAT_COMPUTE_OPS & {op for op, count in int8_ops.items() if count}, int8_ops
    assert int8_ops["QLinearConv"] == float_convs
    assert int8_ops["QLinearConcat"] == fp32_ops["Concat"]
    assert int8_ops["QuantizeLinear"] <= 2 and int8_ops["DequantizeLinear"] <= 2  # at the ends only


@pytest.mark.slow
def test_int8_engine(ctx: BuildContext, int8_model, eval_images: torch.Tensor, reference_logits: torch.Tensor) -> None:
    engine = build_int8(ctx)
    try:
        assert engine.info["quantization"].startswith("qdq-u8s8-per-channel")
        assert engine.info["calibration_images"] == str(ctx.calibration_samples)
        assert engine.model_size_bytes == model_size_bytes(int8_model.path)
        assert engine.model_size_bytes < model_size_bytes(ort_variants.fp32_model(ctx).path) / 3
        logits = engine(eval_images)
        assert logits.shape == reference_logits.shape and torch.isfinite(logits).all()
    finally:
        engine.close()


@pytest.mark.slow
def test_int8_key_follows_the_calibration_images_and_target(fp32_model, eval_images: torch.Tensor) -> None:
    key = onnx_export.key_digest(int8_key(fp32_model, RECIPES[CPU], eval_images))
    assert key == onnx_export.key_digest(int8_key(fp32_model, RECIPES[CPU], eval_images.clone()))
    assert key != onnx_export.key_digest(int8_key(fp32_model, RECIPES[CPU], eval_images + 1e-3))
    assert key != onnx_export.key_digest(int8_key(fp32_model, RECIPES[CPU], eval_images[:-1]))
    assert key != onnx_export.key_digest(int8_key(fp32_model, RECIPES[TENSORRT], eval_images))
