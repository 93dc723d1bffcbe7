"""densenet_opt.variants.openvino on the sweep's weights (the ONNX export is shared with the
ONNX Runtime tests through the sweep's cache)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from densenet_opt.accuracy import AGREEMENT_RULE, TOP1_OF_FP32_RULE, SearchRule, fidelity, rule_metric
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.workbench import Workbench
from densenet_opt.variants import BuildContext, get_variant, parse_variant_options
from densenet_opt.variants.openvino import (
    IR_FILES,
    OPENVINO,
    OPENVINO_BF16,
    OPENVINO_INT8,
    AccuracyControl,
    OpenVinoEngine,
    matches_validation,
    cached_ir,
    compile_config,
    core,
    int8_key,
    part_size,
    quantize_in_fresh_process,
)

BATCH = 4
CALIBRATION = 16


def test_fp32_and_int8_pin_f32_so_fp32_is_fp32() -> None:
    assert compile_config("fp32", 2)["INFERENCE_PRECISION_HINT"] == "f32"
    assert compile_config("int8", 2)["INFERENCE_PRECISION_HINT"] == "f32"  # the layers NNCF leaves in float
    assert compile_config("bf16", 2)["INFERENCE_PRECISION_HINT"] == "bf16"
    assert compile_config("int8-bf16", 2)["INFERENCE_PRECISION_HINT"] == "bf16"  # openvino_int8.float_precision=bf16


@pytest.mark.parametrize(("option", "has_bf16", "precision"), [
    ("auto", True, "int8-bf16"), ("auto", False, "int8"), ("f32", True, "int8"), ("bf16", True, "int8-bf16")])
def test_int8s_float_layers_follow_openvinos_default_unless_told(option: str, has_bf16: bool, precision: str) -> None:
    from densenet_opt.variants.openvino import int8_precision

    assert int8_precision(option, has_bf16) == precision


def test_bf16_float_layers_on_a_cpu_without_bf16_say_what_to_pass() -> None:
    from densenet_opt.variants.openvino import int8_precision

    with pytest.raises(VariantUnavailable, match="float_precision=bf16 needs a CPU with native bf16 .* pass float_precision=f32"):
        int8_precision("bf16", False)
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


def test_streams_pick_the_throughput_hint_and_split_batches_into_at_most_that_many_parts() -> None:
    assert compile_config("int8", 2)["PERFORMANCE_HINT"] == "LATENCY" and compile_config("int8", 2)["NUM_STREAMS"] == "1"
    assert compile_config("int8", 2, 2)["PERFORMANCE_HINT"] == "THROUGHPUT" and compile_config("int8", 2, 2)["NUM_STREAMS"] == "2"
    assert [part_size(batch, 2) for batch in (1, 3, 4, 32)] == [1, 2, 2, 16]
    assert part_size(32, 3) == 11 and part_size(2, 4) == 1
    with pytest.raises(UserError, match="openvino.streams=0: must be at least 1"):
        parse_variant_options({"openvino.streams": "0"})


class _FakeRequest:
    """An inference request whose logits are each image's sum times [1..1000]: rows can be
    checked for order; ``events`` records starts and waits across requests."""

    def __init__(self, events: list[str], index: int) -> None:
        self.events, self.index, self.output = events, index, None

    def _logits(self, part: np.ndarray) -> np.ndarray:
        return part.reshape(len(part), -1).sum(axis=1, keepdims=True) * np.arange(1, 1001, dtype=np.float32)

    def infer(self, inputs):
        self.events.append(f"infer {self.index}")
        return {"logits": self._logits(inputs[0])}

    def start_async(self, inputs) -> None:
        self.events.append(f"start {self.index} {len(inputs[0])}")
        self.output = self._logits(inputs[0])

    def wait(self) -> None:
        self.events.append(f"wait {self.index}")

    def get_output_tensor(self, index: int):
        return SimpleNamespace(data=self.output)


class _FakeCompiled:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.requests = 0

    def create_infer_request(self) -> _FakeRequest:
        self.requests += 1
        return _FakeRequest(self.events, self.requests - 1)


@pytest.mark.parametrize(("batch", "streams"), [(4, 1), (4, 2), (3, 2), (32, 3), (1, 2)])
def test_the_engine_splits_a_batch_over_requests_all_in_flight_and_keeps_the_order(batch: int, streams: int) -> None:
    compiled = _FakeCompiled()
    engine = OpenVinoEngine(compiled, part_size=part_size(batch, streams), model_size_bytes=0, info={})
    images = torch.rand(batch, 3, 224, 224)
    for _ in range(2):  # the requests are made once and reused
        logits = engine(images)
    assert logits.shape == (batch, 1000) and logits.dtype == torch.float32
    expected = images.reshape(batch, -1).sum(dim=1, keepdim=True) * torch.arange(1, 1001, dtype=torch.float32)
    torch.testing.assert_close(logits, expected)
    parts = -(-batch // part_size(batch, streams))
    assert compiled.requests == parts
    if parts > 1:
        call = compiled.events[-2 * parts:]
        assert [event.split()[0] for event in call] == ["start"] * parts + ["wait"] * parts
        assert all(event.endswith(f" {part_size(batch, streams)}") for event in call[:parts])  # the last part padded


def test_threads_option_is_checked() -> None:
    with pytest.raises(UserError, match="openvino.threads=0"):
        parse_variant_options({"openvino.threads": "0"})
    parse_variant_options({"openvino.threads": "2", "openvino_int8.threads": "1"})


@pytest.mark.parametrize(("key", "text", "message"), [
    ("openvino_int8.accuracy_control", "maybe", "must be one of on, off"),
    ("openvino_int8.accuracy_target", "101", "must be a percentage in \\(0, 100\\]"),
    ("openvino_int8.accuracy_rule", "top5", "must be one of auto, top1_of_fp32, agreement"),
    ("openvino_int8.search_images", "0", "must be at least 1"),
    ("openvino_int8.max_reverted", "-1", "must be at least 1"),
])
def test_accuracy_control_options_are_checked(key: str, text: str, message: str) -> None:
    with pytest.raises(UserError, match=f"{key}={text}: {message}"):
        parse_variant_options({key: text})


class FakeCompiled:
    """An ov.CompiledModel stand-in whose logits put each image's class at its first pixel's value."""

    def create_infer_request(self):
        return self

    def infer(self, inputs: dict) -> dict:
        batch = inputs[0]
        logits = torch.zeros(len(batch), 10)
        logits[torch.arange(len(batch)), torch.as_tensor(batch[:, 0, 0, 0]).long()] = 1.0
        return {"logits": logits.numpy()}


def test_the_validation_function_scores_matches_per_item_by_index() -> None:
    classes = [3, 1, 4, 1]
    items = [(index, torch.full((1, 3, 2, 2), float(c)).numpy()) for index, c in enumerate(classes)]
    validate = matches_validation(torch.tensor([3, 1, 5, 1]).numpy())
    assert validate(FakeCompiled(), items) == (0.75, [1.0, 1.0, 0.0, 1.0])
    # NNCF ranks on subsets: an item is scored against its own reference class.
    assert validate(FakeCompiled(), [items[2], items[3]]) == (0.5, [0.0, 1.0])


def test_the_cache_key_names_the_accuracy_control_settings() -> None:
    pytest.importorskip("openvino", reason="the key names the OpenVINO version: pip install -e .[cpu]")
    pytest.importorskip("nncf", reason="the key names the NNCF version: pip install -e .[cpu]")
    calibration, heldout = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    plain = int8_key("sha", calibration)
    labels = np.array([1, 2])
    controlled = int8_key("sha", calibration, AccuracyControl(TOP1_OF_FP32_RULE, 99.0, 2, 32, 8), heldout, labels)
    assert "accuracy_control" not in plain and controlled["accuracy_control"]["target"] == 99.0
    assert controlled != int8_key("sha", calibration, AccuracyControl(TOP1_OF_FP32_RULE, 98.0, 2, 32, 8), heldout, labels)
    assert controlled != int8_key("sha", calibration, AccuracyControl(TOP1_OF_FP32_RULE, 99.0, 2, 32, 8), heldout * 2, labels)
    assert controlled != int8_key("sha", calibration, AccuracyControl(AGREEMENT_RULE, 99.0, 2, 32, 8), heldout, labels)
    assert controlled != int8_key("sha", calibration, AccuracyControl(TOP1_OF_FP32_RULE, 99.0, 2, 32, 8), heldout,
                                  np.array([1, 3]))


# The tests below build real engines; the ones above and the faked decision at the end run anywhere.
NO_OPENVINO = "OpenVINO is in the cpu extra: pip install -e .[cpu]"


@pytest.fixture(scope="module")
def ov():
    return pytest.importorskip("openvino", reason=NO_OPENVINO)


@pytest.fixture(scope="module")
def ctx(workbench: Workbench, ov) -> BuildContext:
    context = workbench.build_context(BATCH)
    return dataclasses.replace(context, device=torch.device("cpu"), calibration_samples=CALIBRATION,
                               progress=lambda message: None,
                               options=parse_variant_options({"openvino_int8.accuracy_control": "off"}))


# eval_images (the sweep's first BATCH images) and reference_logits (the fp32 model's on them)
# come from conftest.py.


@pytest.mark.slow
def test_openvino_fp32_is_the_reference(ctx: BuildContext, eval_images: torch.Tensor, reference_logits: torch.Tensor) -> None:
    engine = get_variant(OPENVINO).build_engine(ctx)
    try:
        logits = engine(eval_images)
        measured = fidelity(logits, reference_logits, None)
        assert measured.agreement_top_1 == 100.0 and measured.relative_error < 1e-4, measured
        assert engine.info["inference_precision_hint"] == "f32" and engine.info["source"] == "onnx export"
        assert engine.model_size_bytes > 30 * 2**20  # the fp32 weights
    finally:
        engine.close()


@pytest.mark.slow
def test_openvino_bf16_runs_or_says_why(ctx: BuildContext, eval_images: torch.Tensor, reference_logits: torch.Tensor, ov) -> None:
    if "BF16" not in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(VariantUnavailable, match="needs a CPU with native bf16"):
            get_variant(OPENVINO_BF16).build_engine(ctx)
        return
    engine = get_variant(OPENVINO_BF16).build_engine(ctx)
    try:
        assert fidelity(engine(eval_images), reference_logits, None).relative_error < 0.05
    finally:
        engine.close()


@pytest.mark.slow
def test_openvino_int8_is_cached_and_close(ctx: BuildContext, eval_images: torch.Tensor, reference_logits: torch.Tensor) -> None:
    engine = get_variant(OPENVINO_INT8).build_engine(ctx)
    again = get_variant(OPENVINO_INT8).build_engine(ctx)
    try:
        logits = engine(eval_images)
        assert logits.shape == reference_logits.shape and torch.isfinite(logits).all()
        assert fidelity(logits, reference_logits, None).relative_error < 0.5
        assert again.info["int8_cache"] == "hit" and torch.equal(again(eval_images), logits)
        assert engine.model_size_bytes < 16 * 2**20  # int8 weights: about a quarter of fp32's
        assert engine.info["calibration_images"] == str(CALIBRATION)
        assert engine.info["accuracy_control"] == "off" and int(engine.info["fake_quantize_ops"]) > 100
    finally:
        engine.close()
        again.close()


@pytest.mark.slow
def test_two_streams_give_the_logits_of_one(ctx: BuildContext, eval_images: torch.Tensor) -> None:
    one = get_variant(OPENVINO_INT8).build_engine(
        dataclasses.replace(ctx, options=parse_variant_options(dict(ctx.options) | {"openvino.streams": "1"})))
    two = get_variant(OPENVINO_INT8).build_engine(
        dataclasses.replace(ctx, options=parse_variant_options(dict(ctx.options) | {"openvino.streams": "2"})))
    try:
        assert (two.info["performance_hint"], two.info["num_streams"], two.info["requests_per_call"]) == ("THROUGHPUT", "2", "2")
        assert one.info["requests_per_call"] == "1"
        torch.testing.assert_close(two(eval_images), one(eval_images), rtol=1e-3, atol=1e-3)
    finally:
        one.close()
        two.close()


def test_every_build_uses_the_one_shared_core(ctx: BuildContext, ov, monkeypatch) -> None:
    # A second openvino.Core in one process has crashed OpenVINO (variants/openvino.py: core()).
    shared = core()

    def no_second_core(*args, **kwargs):
        raise AssertionError("a second openvino.Core was created")

    monkeypatch.setattr(ov, "Core", no_second_core)
    for name in (OPENVINO, OPENVINO_INT8):
        get_variant(name).build_engine(ctx).close()
    assert core() is shared


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


# --- accuracy control's decision (module docstring), with NNCF and the models faked -----


class FakeNncf:
    """nncf with quantize and quantize_with_accuracy_control returning named models."""

    class DropType:
        ABSOLUTE = "absolute"
        RELATIVE = "relative"

    def __init__(self) -> None:
        self.controlled_calls: list[dict] = []

    @staticmethod
    def Dataset(items, transform=None):  # noqa: N802 (NNCF's name)
        return list(items)

    @staticmethod
    def quantize(model, dataset, subset_size):
        return "all-int8"

    def quantize_with_accuracy_control(self, model, calibration, validation, validate, **settings):
        self.controlled_calls.append(settings)
        return "controlled"


@pytest.mark.parametrize("rule", [TOP1_OF_FP32_RULE, AGREEMENT_RULE])
@pytest.mark.parametrize(("figures", "chosen", "model", "nncf_control_called"), [
    ({"all-int8": 99.5, "controlled": 99.9}, "all-int8 (meets the rule)", "all-int8", False),
    ({"all-int8": 93.0, "controlled": 99.2}, "accuracy control (meets the rule)", "controlled", True),
    ({"all-int8": 93.0, "controlled": 95.0}, "all-int8 (no model met the rule)", "all-int8", True),
])
def test_accuracy_control_takes_the_fastest_model_meeting_the_rule(monkeypatch, figures, chosen, model, nncf_control_called,
                                                                   rule) -> None:
    import densenet_opt.variants.openvino as openvino_module

    fake = FakeNncf()
    monkeypatch.setattr(openvino_module, "import_nncf", lambda: fake)
    monkeypatch.setitem(sys.modules, "nncf.quantization.advanced_parameters",
                        type(sys)("fake_advanced_parameters"))
    sys.modules["nncf.quantization.advanced_parameters"].AdvancedAccuracyRestorerParameters = dict

    class FakeScore:
        def __init__(self, source, images, control, labels) -> None:
            self.items, self.validate = list(enumerate(images)), None
            self.rule = SearchRule.of(control.rule, control.target, np.zeros(len(images)), labels)

        def __call__(self, quantized) -> float:
            return figures[quantized]

    monkeypatch.setattr(openvino_module, "HeldoutScore", FakeScore)
    monkeypatch.setattr(openvino_module, "fake_quantize_ops", lambda quantized: len(quantized))
    control = AccuracyControl(rule, 99.0, 4, 3, 2)
    result, measured = openvino_module.quantize_controlled(
        "fp32", torch.zeros(2, 3, 4, 4), torch.zeros(4, 3, 4, 4), np.zeros(4, dtype=np.int64), control,
        progress=lambda message: None)
    metric = rule_metric(rule)
    assert (result, measured["chosen"]) == (model, chosen)
    assert measured[f"all_int8_{metric}"] == figures["all-int8"] and measured["rule"] == rule
    assert bool(fake.controlled_calls) == nncf_control_called
    if nncf_control_called:
        assert measured[f"controlled_{metric}"] == figures["controlled"]
        settings = fake.controlled_calls[0]
        # MLPerf's rule is NNCF's relative drop of top-1; agreement an absolute drop.
        assert settings["max_drop"] == pytest.approx(0.01)
        assert settings["drop_type"] == ("relative" if rule == TOP1_OF_FP32_RULE else "absolute")
        assert settings["advanced_accuracy_restorer_parameters"] == {"max_num_iterations": 3, "ranking_subset_size": 2}


def test_the_quantization_process_raises_its_error_here_and_leaves_no_ir(ov, tmp_path: Path) -> None:
    pytest.importorskip("nncf", reason=NO_OPENVINO)
    messages: list[str] = []
    with pytest.raises(Exception, match="nosuch.onnx"):
        quantize_in_fresh_process(tmp_path / "nosuch.onnx", torch.zeros(1, 3, 224, 224), None, None, tmp_path, messages.append)
    assert not (tmp_path / IR_FILES[0]).exists()


@pytest.mark.slow
@pytest.mark.parametrize("labelled", [False, True])
def test_accuracy_control_builds_caches_and_reports_on_a_small_cnn(ov, tmp_path: Path, labelled: bool) -> None:
    """The real NNCF path end to end on a small CNN (DenseNet-121's 187 operations take
    minutes to rank on 2 cores; a small random-init DenseNet gives every image the same
    class): a target of 100% on 32 held-out images, one calibration image (ranges too
    narrow for the rest), so that int8 misses and NNCF ranks and reverts operations.
    Without labels the rule is agreement (NNCF's absolute drop); with labels (the fp32
    model's own classes, every fourth one changed: fp32 top-1 75%) MLPerf's rule (NNCF's
    relative drop)."""
    pytest.importorskip("nncf", reason=NO_OPENVINO)
    import copy

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=4), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    ).eval()
    pool = torch.randn(33, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        labels = model(pool).argmax(dim=1)
    labels[::4] = (labels[::4] + 1) % 10
    messages: list[str] = []
    ctx = BuildContext(
        device=torch.device("cpu"), batch_size=2, reference_model=lambda: copy.deepcopy(model),
        calibration_images=lambda count: pool[:count], calibration_samples=1, weights_key="tiny",
        cache_dir=tmp_path, progress=messages.append,
        calibration_labels=lambda count: labels[:count] if labelled else None,
        options=parse_variant_options({"openvino_int8.accuracy_target": "100", "openvino_int8.search_images": "32",
                                       "openvino_int8.ranking_images": "4", "openvino_int8.max_reverted": "2"}),
    )
    engine = get_variant(OPENVINO_INT8).build_engine(ctx)
    again = get_variant(OPENVINO_INT8).build_engine(ctx)
    try:
        info = engine.info
        assert info["accuracy_control"] == "on" and info["heldout_images"] == "32"
        metric = "top1_of_fp32_pct" if labelled else "agreement_top_1"  # auto: MLPerf's rule where labels exist
        assert info["accuracy_rule"] == ("top-1 >= 100% of the fp32 model's (MLPerf's rule)" if labelled
                                         else "top-1 agreement with fp32 >= 100%")
        all_int8 = float(info[f"all_int8_{metric}"])
        if all_int8 >= 100.0:
            assert info["accuracy_control_chosen"] == "all-int8 (meets the rule)"
            assert info[f"controlled_{metric}"] == "n/a"
        else:  # NNCF ran: its model is kept only if it meets the rule
            controlled = float(info[f"controlled_{metric}"])
            expected = "accuracy control (meets the rule)" if controlled >= 100.0 else "all-int8 (no model met the rule)"
            assert info["accuracy_control_chosen"] == expected
        assert any("held-out images" in message for message in messages)
        assert again.info["int8_cache"] == "hit"
        assert {key: again.info[key] for key in (f"all_int8_{metric}", "accuracy_control_chosen")} == {
            key: info[key] for key in (f"all_int8_{metric}", "accuracy_control_chosen")}
        images = pool[1:3]
        assert torch.equal(engine(images), again(images))
    finally:
        engine.close()
        again.close()


@pytest.mark.slow
def test_the_side_by_side_tool_times_streams_and_profiles_layers(ov) -> None:
    # tools/openvino_side_by_side.py, the instrument of docs/performance.md's OpenVINO ratios (issue 14), end to end
    # on the fp32 variant (its ONNX export is the sweep's, cached) at batch 2, one round.
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "tools/openvino_side_by_side.py", "--variants", OPENVINO, "--batch-size", "2", "--rounds", "1",
         "--streams", "1,2", "--layer-profile"], capture_output=True, text=True, cwd=repo, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" (")[0]: line for line in done.stdout.splitlines() if line.startswith(f"{OPENVINO} streams=")}
    assert set(rows) == {f"{OPENVINO} streams=1", f"{OPENVINO} streams=2"}, done.stdout
    assert "ms per call by layer type" in done.stdout and "Convolution" in done.stdout
    bad = subprocess.run([sys.executable, "tools/openvino_side_by_side.py", "--streams", "0"], capture_output=True,
                         text=True, cwd=repo, timeout=120)
    assert bad.returncode == 2 and "--streams: must be at least 1" in bad.stderr
