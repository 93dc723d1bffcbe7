"""The CUDA paths' logic that needs no GPU, and tools/gpu_check's dry run.

No GPU is available to CI, so what can be checked without one is checked here: ONNX
Runtime's IO binding and provider fallback (a fake session that claims a GPU provider;
CPU OrtValues), NVML's per-process figure (a fake pynvml), the CUDA graph engine's
capture and replay wiring (fake streams and graphs) and its dtype selection, the suite
importing without the optional packages the device machine lacks, and gpu_check itself:
its pure functions, and its dry run as a subprocess (what CI runs of it).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from densenet_opt.errors import VariantUnavailable
from densenet_opt.measure import memory
from densenet_opt.report import OK, OUT_OF_MEMORY, Row, write_rows
from densenet_opt.variants import BuildContext, get_variant
from densenet_opt.variants import compiled
from densenet_opt.variants.onnx import engine as ort_engine
from densenet_opt.variants.onnx.export import INPUT_NAME, OUTPUT_NAME, Artifact
from densenet_opt.variants.onnx.providers import PROVIDERS, Settings

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "tools" / "gpu_check"


def load_gpu_check() -> types.ModuleType:
    """tools/gpu_check as a module (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(GPU_CHECK))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


# ---------------------------------------------------------------------------------------
# ONNX Runtime: IO binding and the provider a session really got
# ---------------------------------------------------------------------------------------


def tiny_onnx_model(path: Path, classes: int = 1000) -> Path:
    """An ONNX model with the suite's input/output names: images [N,3,224,224] ->
    global average pool -> [N,3] @ W[3,classes] -> logits [N,classes]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((3, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weight"], [OUTPUT_NAME]),
        ],
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_io_binding_on_cpu_ortvalues_converts_the_batch_and_rebinds_per_shape(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = tiny_onnx_model(tmp_path / "tiny.onnx")
    session = ort.InferenceSession(str(path), providers=[PROVIDERS["cpu"]])
    engine = ort_engine.OrtEngine(session, io=ort_engine.DeviceIO(session, ort, "cpu", 0), model_size_bytes=1, info={})
    batch = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    expected = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])
    # float64 and channels_last: OrtEngine hands DeviceIO a contiguous float32 array.
    odd = batch.double().contiguous(memory_format=torch.channels_last)
    first = engine(odd)
    one = engine(batch[:1])
    again = engine(batch)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, expected[:1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, expected, rtol=1e-5, atol=1e-5)
    assert set(engine.io.buffers) == {(4, 3, 224, 224), (1, 3, 224, 224)}  # one buffer pair per shape, reused
    assert engine.io.bound_shape == (4, 3, 224, 224)
    engine(torch.zeros(4, 3, 224, 224))
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)  # an earlier result is not overwritten


class FakeOrtValue:
    """A device buffer: records where it was allocated and what was copied into it."""

    allocated: list[tuple[list[int], str, int]] = []

    def __init__(self, shape: list[int], device_type: str, device_id: int) -> None:
        self.shape, self.device_type, self.device_id = shape, device_type, device_id
        self.data = np.zeros(shape, np.float32)

    @classmethod
    def ortvalue_from_shape_and_type(cls, shape, dtype, device_type, device_id):
        assert dtype is np.float32
        cls.allocated.append((list(shape), device_type, device_id))
        return cls(list(shape), device_type, device_id)

    def update_inplace(self, array: np.ndarray) -> None:
        assert array.dtype == np.float32 and array.flags["C_CONTIGUOUS"]
        self.data[...] = array

    def numpy(self) -> np.ndarray:
        return self.data.copy()  # from the device: a new host array


class FakeSession:
    """An InferenceSession that reports ``used`` as its provider and computes logits as
    the per-image mean of the input in every class (so results can be checked)."""

    def __init__(self, path, options, providers, provider_options, disabled_optimizers, *, used: str, log: list) -> None:
        self.requested, self.used, self.log = providers, used, log
        self.binding = FakeBinding(log)

    def get_providers(self) -> list[str]:
        return [self.used, PROVIDERS["cpu"]] if self.used != PROVIDERS["cpu"] else [self.used]

    def get_outputs(self):
        return [types.SimpleNamespace(shape=["N", 1000])]

    def io_binding(self) -> FakeBinding:
        return self.binding

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        self.log.append("run")
        binding.outputs.data[...] = binding.inputs.data.reshape(len(binding.inputs.data), -1).mean(1, keepdims=True)

    def run(self, names, feeds):
        self.log.append("plain run")
        images = feeds[INPUT_NAME]
        return [np.repeat(images.reshape(len(images), -1).mean(1, keepdims=True), 1000, axis=1)]


class FakeBinding:
    def __init__(self, log: list) -> None:
        self.log = log
        self.inputs = self.outputs = None

    def bind_ortvalue_input(self, name, value) -> None:
        assert name == INPUT_NAME
        self.inputs = value
        self.log.append("bind input")

    def bind_ortvalue_output(self, name, value) -> None:
        assert name == OUTPUT_NAME
        self.outputs = value
        self.log.append("bind output")

    def synchronize_inputs(self) -> None:
        self.log.append("sync inputs")

    def synchronize_outputs(self) -> None:
        self.log.append("sync outputs")


def fake_onnxruntime(used: str, log: list) -> types.SimpleNamespace:
    import onnxruntime as real

    def session(*args, **kwargs):
        return FakeSession(*args, **kwargs, used=used, log=log)

    return types.SimpleNamespace(
        InferenceSession=session, OrtValue=FakeOrtValue, SessionOptions=real.SessionOptions,
        GraphOptimizationLevel=real.GraphOptimizationLevel, ExecutionMode=real.ExecutionMode, __version__="fake",
    )


def cuda_context(tmp_path: Path, device: torch.device = torch.device("cuda", 1)) -> BuildContext:
    return BuildContext(
        device=device, batch_size=2, reference_model=lambda: None, calibration_images=lambda n: None,
        calibration_samples=0, weights_key="test", cache_dir=tmp_path, progress=lambda message: None,
    )


def open_fake(tmp_path: Path, monkeypatch, *, provider: str, used: str, strict: bool):
    pytest.importorskip("onnxruntime")
    log: list[str] = []
    FakeOrtValue.allocated = []
    monkeypatch.setattr(ort_engine, "import_onnxruntime", lambda: fake_onnxruntime(used, log))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x" * 10)
    engine = ort_engine.open_engine(
        cuda_context(tmp_path), Artifact(model, 0.0, True), provider=provider, setting=Settings(None, 2, "onnx.provider"),
        precision="fp32", strict=strict, info={"precision": "fp32"},
    )
    return engine, log


def test_a_gpu_session_binds_device_buffers_and_copies_once_each_way(tmp_path: Path, monkeypatch) -> None:
    engine, log = open_fake(tmp_path, monkeypatch, provider="cuda", used=PROVIDERS["cuda"], strict=True)
    # The build's first run at the engine's batch: buffers on the GPU named by the context (cuda:1).
    assert FakeOrtValue.allocated == [([2, 3, 224, 224], "cuda", 1), ([2, 1000], "cuda", 1)]
    assert engine.info["provider"] == PROVIDERS["cuda"] and engine.info["io_binding"] == "device buffers"
    assert "intra_op_threads" not in engine.info and "first_run_s" in engine.info
    log.clear()
    batch = torch.arange(2 * 3 * 224 * 224, dtype=torch.float32).reshape(2, 3, 224, 224) / 1e5
    logits = engine(batch)
    # Already bound at this shape: copy in, wait for it, run, wait, copy out; nothing rebound.
    assert log == ["sync inputs", "run", "sync outputs"]
    torch.testing.assert_close(logits[:, 0], batch.reshape(2, -1).mean(1))
    assert logits.shape == (2, 1000) and logits.dtype == torch.float32
    log.clear()
    engine(batch[:1])
    assert log == ["bind input", "bind output", "sync inputs", "run", "sync outputs"]  # a new shape: new buffers
    assert FakeOrtValue.allocated[-2:] == [([1, 3, 224, 224], "cuda", 1), ([1, 1000], "cuda", 1)]


def test_a_session_that_fell_back_to_the_cpu_is_refused_when_strict(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(VariantUnavailable, match="CUDAExecutionProvider failed to start.*fell back to CPUExecutionProvider"):
        open_fake(tmp_path, monkeypatch, provider="cuda", used=PROVIDERS["cpu"], strict=True)


def test_a_fallback_is_noted_and_runs_without_device_buffers_when_not_strict(tmp_path: Path, monkeypatch) -> None:
    engine, log = open_fake(tmp_path, monkeypatch, provider="tensorrt", used=PROVIDERS["cpu"], strict=False)
    assert engine.io is None and FakeOrtValue.allocated == []
    assert engine.info["provider"] == PROVIDERS["cpu"]
    assert "TensorrtExecutionProvider failed to start" in engine.info["note"]
    assert log == ["plain run"]  # the first run went through session.run


def test_tensorrt_falling_back_to_cuda_keeps_device_buffers_and_says_so(tmp_path: Path, monkeypatch) -> None:
    engine, _ = open_fake(tmp_path, monkeypatch, provider="tensorrt", used=PROVIDERS["cuda"], strict=False)
    assert engine.io is not None and engine.io.device_type == "cuda"
    assert "fell back to CUDAExecutionProvider" in engine.info["note"]
    assert (tmp_path / "tensorrt" / "batch2").is_dir()  # TensorRT's engine cache folder per batch size


# ---------------------------------------------------------------------------------------
# NVML: the per-process figure of the VRAM column
# ---------------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


def fake_pynvml(processes: list[tuple[int, int | None]], calls: list, *, fail: str | None = None) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    module.NVMLError = FakeNVMLError

    def step(name: str, result=None):
        def call(*args):
            calls.append((name, *args))
            if fail == name:
                raise FakeNVMLError(f"{name} failed")
            return result(*args) if callable(result) else result
        return call

    module.nvmlInit = step("init")
    module.nvmlShutdown = step("shutdown")
    module.nvmlDeviceGetHandleByIndex = step("handle", lambda index: f"handle{index}")
    module.nvmlDeviceGetComputeRunningProcesses = step(
        "processes", lambda handle: [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in processes])
    return module


def test_nvml_reports_this_process_and_maps_the_index_through_cuda_visible_devices(monkeypatch) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(1, 5), (os.getpid(), 300 * 2**20)], calls))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert memory.nvml_process_used_bytes(torch.device("cuda", 1)) == 300 * 2**20
    assert ("handle", 5) in calls  # cuda:1 is the second visible GPU, physical index 5
    assert calls[-1] == ("shutdown",)
    assert memory.nvml_processes(torch.device("cuda", 0)) == [(1, 5), (os.getpid(), 300 * 2**20)]
    assert ("handle", 3) in calls


def test_nvml_without_this_pid_or_its_figure_says_it_cannot_tell(monkeypatch) -> None:
    calls: list = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # Another PID namespace: the driver lists a pid that is not ours.
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(os.getpid() + 100_000, 5 * 2**20)], calls))
    assert memory.nvml_process_used_bytes(torch.device("cuda", 0)) is None
    assert memory.nvml_processes(torch.device("cuda", 0)) == [(os.getpid() + 100_000, 5 * 2**20)]
    # Our pid, but no figure (usedGpuMemory None, as under some virtualised GPUs).
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(os.getpid(), None)], calls))
    assert memory.nvml_process_used_bytes(torch.device("cuda", 0)) is None


@pytest.mark.parametrize("fail", ["init", "handle", "processes"])
def test_an_nvml_error_is_no_figure_and_nvml_is_shut_down(monkeypatch, fail: str) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(os.getpid(), 1)], calls, fail=fail))
    assert memory.nvml_processes(torch.device("cuda", 0)) is None
    assert memory.nvml_process_used_bytes(torch.device("cuda", 0)) is None
    assert (("shutdown",) in calls) == (fail != "init")  # initialised NVML is always shut down


def test_no_pynvml_is_no_figure(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert memory.nvml_process_used_bytes(torch.device("cuda", 0)) is None


def test_allocation_readback_error_and_bad_size() -> None:
    readback = memory.AllocationReadback(expected_bytes=1000, torch_bytes=1000, nvml_bytes=1060)
    assert readback.error(readback.torch_bytes) == 0
    assert readback.error(readback.nvml_bytes) == pytest.approx(0.06)
    assert readback.error(None) is None
    with pytest.raises(ValueError, match="positive"):  # before anything touches CUDA
        memory.cuda_allocation_readback(torch.device("cuda", 0), 0)


# ---------------------------------------------------------------------------------------
# cuda_graphs: capture and replay wiring, and the choice of dtype
# ---------------------------------------------------------------------------------------


class FakeCuda:
    """Stand-ins for the torch.cuda pieces CudaGraphEngine uses; records what ran where."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.stream = "default"
        self.capturing = False
        self.replay = None  # set by the test: what the captured graph computes

    def install(self, monkeypatch) -> None:
        fake = self

        class Stream:
            def __init__(self, device=None) -> None:
                self.name = "side"

            def wait_stream(self, other) -> None:
                fake.events.append(f"{self.name} waits")

        class DefaultStream(Stream):
            def __init__(self) -> None:
                self.name = "default"

        @contextlib.contextmanager
        def stream(s):
            previous, fake.stream = fake.stream, s.name
            try:
                yield
            finally:
                fake.stream = previous

        class Graph:
            def replay(self) -> None:
                fake.events.append("replay")
                fake.replay()

        @contextlib.contextmanager
        def graph(g):
            fake.capturing = True
            fake.events.append("capture begins")
            try:
                yield
            finally:
                fake.capturing = False
                fake.events.append("capture ends")

        class Event:
            clock = 0.0

            def __init__(self, enable_timing=False) -> None:
                self.at = 0.0

            def record(self) -> None:
                Event.clock += 4.0
                self.at = Event.clock

            def synchronize(self) -> None:
                pass

            def elapsed_time(self, other) -> float:
                return other.at - self.at

        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: DefaultStream())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: fake.events.append("synchronize"))
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: fake.events.append("empty_cache"))


class Recorder(torch.nn.Module):
    """A tiny conv net that records the stream, capture state, dtype, layout and cuDNN
    benchmark mode of every forward."""

    def __init__(self, fake: FakeCuda) -> None:
        super().__init__()
        self.fake = fake
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(4, 1000))
        self.calls: list[tuple] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.fake.stream, self.fake.capturing, x.dtype,
                           x.is_contiguous(memory_format=torch.channels_last), torch.backends.cudnn.benchmark))
        return self.net(x)


def test_cuda_graph_engine_warms_up_on_a_side_stream_captures_once_and_replays_into_static_buffers(monkeypatch) -> None:
    fake = FakeCuda()
    fake.install(monkeypatch)
    model = Recorder(fake).to(torch.bfloat16)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    engine = compiled.CudaGraphEngine(model, 2, torch.device("cpu"), torch.bfloat16)
    # Three warm-up forwards on the side stream, then one captured; bf16, channels_last, cuDNN benchmark on.
    assert model.calls == [("side", False, torch.bfloat16, True, True)] * 3 + [("default", True, torch.bfloat16, True, True)]
    assert fake.events == ["side waits", "default waits", "capture begins", "capture ends", "synchronize"]
    assert torch.backends.cudnn.benchmark is False  # restored
    assert engine.static_output.dtype == torch.float32 and engine.static_output.shape == (2, 1000)

    def replay() -> None:  # what the captured graph does: the model on the static input, into the static output
        with torch.no_grad():
            engine.static_output.copy_(engine._forward(torch.bfloat16).float())

    fake.replay = replay
    fake.events.clear()
    batch = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    logits = engine(batch)
    assert fake.events == ["replay"]
    assert torch.equal(engine.static_input, batch)  # copied in before the replay
    with torch.no_grad():
        expected = model(batch.to(torch.bfloat16, memory_format=torch.channels_last)).float()
    torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match=r"captured for input \(2, 3, 224, 224\), got \(1, 3, 224, 224\)"):
        engine(batch[:1])
    assert engine.replay_ms(5) == pytest.approx(4.0 / 5)  # CUDA events around 5 replays
    engine.close()
    assert engine.graph is None and fake.events[-1] == "empty_cache"


def test_cuda_graph_capture_failure_restores_cudnn_benchmark(monkeypatch) -> None:
    fake = FakeCuda()
    fake.install(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)

    class Broken(Recorder):
        def forward(self, x):
            if self.fake.capturing:
                raise RuntimeError("operation not permitted when stream is capturing")
            return super().forward(x)

    with pytest.raises(RuntimeError, match="capturing"):
        compiled.CudaGraphEngine(Broken(fake), 1, torch.device("cpu"), torch.float32)
    assert torch.backends.cudnn.benchmark is False


class FakeGraphEngine:
    """A captured engine whose replay time is set per dtype by the test."""

    replay_times: dict[torch.dtype, float] = {}
    made: list[FakeGraphEngine] = []

    def __init__(self, model, batch_size, device, dtype) -> None:
        self.model, self.dtype, self.closed = model, dtype, False
        FakeGraphEngine.made.append(self)

    def replay_ms(self, replays: int) -> float:
        return self.replay_times[self.dtype]

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("option", "bf16_native", "times", "chosen", "built"),
    [
        ("auto", True, {torch.float16: 2.0, torch.bfloat16: 1.5}, "bf16", ["fp16", "bf16"]),
        ("auto", True, {torch.float16: 1.0, torch.bfloat16: 1.5}, "fp16", ["fp16", "bf16"]),
        ("auto", False, {torch.float16: 3.0, torch.bfloat16: 1.0}, "fp16", ["fp16"]),  # no native bf16: not tried
        ("bf16", True, {torch.float16: 1.0, torch.bfloat16: 9.0}, "bf16", ["bf16"]),  # named: no race
    ],
)
def test_cuda_graphs_keeps_the_faster_replay_and_closes_the_other(
    monkeypatch, tmp_path: Path, option, bf16_native, times, chosen, built,
) -> None:
    from densenet_opt.variants import parse_variant_options

    FakeGraphEngine.replay_times, FakeGraphEngine.made = times, []
    monkeypatch.setattr(compiled, "CudaGraphEngine", FakeGraphEngine)
    monkeypatch.setattr(compiled, "check_cuda_dtype", lambda name, dtype, device: None)
    monkeypatch.setattr(compiled, "cuda_model", lambda ctx, dtype: torch.nn.Linear(2, 2).to(dtype))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_native)
    ctx = cuda_context(tmp_path, torch.device("cuda", 0))
    ctx = BuildContext(**{**ctx.__dict__, "options": parse_variant_options({"cuda_graphs.dtype": option})})
    engine = get_variant("cuda_graphs").build_engine(ctx)
    names = {torch.float16: "fp16", torch.bfloat16: "bf16"}
    assert [names[e.dtype] for e in FakeGraphEngine.made] == built
    assert engine.info["dtype"] == chosen
    assert engine.info["selected"] == ("fastest replay" if option == "auto" else "option")
    assert [e.closed for e in FakeGraphEngine.made] == [names[e.dtype] != chosen for e in FakeGraphEngine.made]
    assert all(f"{names[e.dtype]}_replay_ms" in engine.info for e in FakeGraphEngine.made)


# ---------------------------------------------------------------------------------------
# The suite on the device machine: no torchao, no OpenVINO (nor NNCF)
# ---------------------------------------------------------------------------------------


def test_the_suite_imports_and_skips_with_reasons_without_torchao_and_openvino() -> None:
    code = """
import sys, pkgutil, importlib
for name in ("torchao", "openvino", "nncf"):
    sys.modules[name] = None  # import raises ImportError, as where the package is absent
import densenet_opt
for info in pkgutil.walk_packages(densenet_opt.__path__, "densenet_opt."):
    if not info.name.endswith("__main__"):  # that one runs the CLI
        importlib.import_module(info.name)
from densenet_opt.errors import VariantUnavailable
from densenet_opt.variants import registry, quantization, openvino
names = list(registry())
for needs in (quantization.import_pt2e, openvino.import_openvino, openvino.import_nncf):
    try:
        needs()
    except VariantUnavailable as reason:
        print("UNAVAILABLE", " ".join(str(reason).split()))
    else:
        print("AVAILABLE", needs.__name__)
print("VARIANTS", ",".join(names))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    unavailable = [line for line in lines if line.startswith("UNAVAILABLE")]
    assert len(unavailable) == 3, done.stdout
    assert "torchao" in unavailable[0] and "pip install" in unavailable[0]
    assert all("pip install" in line for line in unavailable[1:])
    variants = next(line for line in lines if line.startswith("VARIANTS")).split()[1].split(",")
    assert {"baseline", "fp16", "bf16", "compiled", "cuda_graphs", "int8", "onnx", "openvino"} <= set(variants)


# ---------------------------------------------------------------------------------------
# tools/gpu_check: its pure logic, and the dry run
# ---------------------------------------------------------------------------------------


def write_junit(path: Path, cases: dict[str, tuple[str, str]]) -> None:
    body = []
    for name, (outcome, message) in cases.items():
        inner = "" if outcome == "passed" else f'<{outcome} message="{message}"/>'
        body.append(f'<testcase classname="densenet_opt.bench" name="{name}" time="1">{inner}</testcase>')
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{"".join(body)}</testsuite></testsuites>')


def test_config_results_join_the_rows_and_pytests_verdicts(tmp_path: Path) -> None:
    from densenet_opt.report import RESULTS_FILE

    rows = [
        Row(batch_size=1, optimization_technique="baseline", device="cuda", latency_ms_per_batch=2.5,
            throughput_samples_per_sec=400.0, vram_usage_mb=900.0, status=OK,
            engine_info="backend=torch;dtype=float32", agreement_top_1=100.0),
        Row(batch_size=4096, optimization_technique="baseline", device="cuda", status=OUT_OF_MEMORY),
    ]
    write_rows(tmp_path / RESULTS_FILE, rows)
    write_junit(tmp_path / "junit.xml", {
        "test_inference[baseline-bs1]": ("passed", ""),
        "test_inference[baseline-bs4096]": ("skipped", "baseline at batch 4096: out of memory"),
        "test_inference[bf16-bs1]": ("skipped", "bf16: NVIDIA T4 has no native bf16"),
        "test_inference[fp16-bs1]": ("failure", "fp16 at batch 1: NaN logits"),
    })
    results = gpu_check.config_results("x", tmp_path, ["baseline", "bf16", "fp16", "pruned"], [1, 4096], 0, ["boom"])
    by = {(r.variant, r.batch): r for r in results}
    assert (by["baseline", 1].status, by["baseline", 1].ms, by["baseline", 1].vram_mib) == (OK, 2.5, 900.0)
    assert "dtype=float32" in by["baseline", 1].detail and "agreement=100.0%" in by["baseline", 1].detail
    assert by["baseline", 4096].status == OUT_OF_MEMORY
    assert by["bf16", 1].status == gpu_check.SKIPPED and "no native bf16" in by["bf16", 1].detail
    assert by["fp16", 1].status == gpu_check.FAILED and "NaN" in by["fp16", 1].detail
    assert by["pruned", 1].status == gpu_check.FAILED and "sweep exit 0" in by["pruned", 1].detail
    killed = gpu_check.config_results("x", tmp_path, ["pruned"], [1], None, [])
    assert killed[0].status == gpu_check.TIMEOUT
    # A sharded sweep stopped for time: its shard's rows were never merged, and still count.
    shard = tmp_path / "shards" / "gpu0-1"
    shard.mkdir(parents=True)
    write_rows(shard / RESULTS_FILE, [Row(batch_size=1, optimization_technique="pruned", device="cuda",
                                          latency_ms_per_batch=3.0, throughput_samples_per_sec=333.0, status=OK)])
    (from_shard,) = gpu_check.config_results("x", tmp_path, ["pruned"], [1], None, [])
    assert (from_shard.status, from_shard.ms) == (OK, 3.0)


def test_out_of_memory_verdict(tmp_path: Path) -> None:
    R, big = gpu_check.Result, gpu_check.OOM_BATCH
    fine = gpu_check.judge_out_of_memory([R("oom", "baseline", big, status=OUT_OF_MEMORY), R("oom", "baseline", 1, ms=2.0)])
    assert [r.status for r in fine] == [OUT_OF_MEMORY, OK] and "expected" in fine[0].detail
    fitted = gpu_check.judge_out_of_memory([R("oom", "baseline", big, ms=9.0), R("oom", "baseline", 1, ms=2.0)])
    assert fitted[0].status == gpu_check.FAILED and "expected status out_of_memory, got ok" in fitted[0].detail
    stopped = gpu_check.judge_out_of_memory([R("oom", "baseline", big, status=OUT_OF_MEMORY),
                                             R("oom", "baseline", 1, status=gpu_check.SKIPPED, detail="why")])
    assert stopped[1].status == gpu_check.FAILED  # the sweep did not go on


def test_plugin_args_name_the_plugins_no_entry_point_loads(monkeypatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert gpu_check.plugin_args() == ["-p", "pytest_benchmark.plugin", "-p", "densenet_opt.plugin"]
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [])  # a source tree: not installed
    assert gpu_check.plugin_args() == ["-p", "densenet_opt.plugin"]


def make_context(tmp_path: Path, device: str, onnxruntime_state: str):
    log = gpu_check.Log(tmp_path / "log")
    ctx = gpu_check.Context(out=tmp_path, device=device, dry_run=device == "cpu", cache_dir=tmp_path, num_samples=4,
                            rounds=2, warmup_rounds=1, log=log, budget=gpu_check.Budget(60))
    ctx.environment = {"imports": {"onnxruntime": onnxruntime_state}}
    return ctx


def test_the_sweep_command_is_what_the_cli_parses(tmp_path: Path) -> None:
    from densenet_opt import cli

    ctx = make_context(tmp_path, "cpu", "ok 1.30.0, providers CPUExecutionProvider")
    raw = gpu_check.sweep_raw_options(ctx, ["baseline", "pruned_structured"], [1, 32], tmp_path / "out")
    command = gpu_check.sweep_command("sweep-gpus", raw, ["--gpus", "GPU-1234"], ["-p", "densenet_opt.plugin"])
    assert command[:4] == [sys.executable, "-m", "densenet_opt", "sweep-gpus"]
    args = cli.build_parser().parse_args(command[3:])
    assert (args.command, args.gpus, args.pytest_args) == ("sweep-gpus", "GPU-1234", ["-p", "densenet_opt.plugin"])
    assert (args.variants, args.batch_sizes, args.weights) == ("baseline,pruned_structured", "1,32", "synthetic")
    assert "pruned_structured.distill=off" in args.variant_options and args.output_dir == str(tmp_path / "out")
    from densenet_opt.errors import UserError

    with pytest.raises(UserError, match="--batch-sizes"):  # validated by the suite before anything runs
        gpu_check.sweep_command("sweep", {**raw, "batch_sizes": "0"}, [], [])
    ctx.log.close()


def test_the_onnxruntime_check_says_why_a_cpu_build_is_not_checked(tmp_path: Path) -> None:
    check = next(c for c in gpu_check.CHECKS if c.name == "onnxruntime")
    cpu_build = make_context(tmp_path, "cuda", "ok 1.30.0, providers AzureExecutionProvider,CPUExecutionProvider")
    reason = gpu_check.plan_action(check, cpu_build)
    assert reason.startswith("not checked: onnxruntime 1.30.0 offers only AzureExecutionProvider, CPUExecutionProvider")
    assert "onnxruntime-gpu" in reason
    gpu_build = make_context(tmp_path, "cuda", "ok 1.30.0, providers TensorrtExecutionProvider,CUDAExecutionProvider")
    assert gpu_check.plan_action(check, gpu_build) is None
    missing = make_context(tmp_path, "cuda", "does not import: ModuleNotFoundError: No module named 'onnxruntime'")
    assert "No module named 'onnxruntime'" in gpu_check.plan_action(check, missing)
    assert gpu_check.plan_action(check, make_context(tmp_path, "cpu", "ok 1.30.0, providers CPUExecutionProvider")) == gpu_check.NO_CUDA
    for ctx in (cpu_build, gpu_build, missing):
        ctx.log.close()


def test_the_budget_skips_what_cannot_start_and_a_stop_at_its_end_is_no_failure(tmp_path: Path, monkeypatch) -> None:
    R, Check = gpu_check.Result, gpu_check.Check
    ran = []

    def stopped(ctx, timeout_s):
        ran.append(("stopped", timeout_s))
        return [R("stopped", "compiled", 1, status=gpu_check.TIMEOUT)]

    def capped(ctx, timeout_s):
        ran.append(("capped", timeout_s))
        return [R("capped", "fp16", 1, status=gpu_check.TIMEOUT)]

    checks = (
        Check("environment", "stub", "nothing", lambda ctx, t: [R("environment", "machine")], "the same", min_s=0),
        Check("capped", "its own limit", "nothing", capped, "the same", min_s=1, cap_s=5),
        Check("stopped", "until the budget ends", "nothing", stopped, "the same", min_s=1),
        Check("too_big", "needs more than is left", "nothing", lambda ctx, t: ran.append("too_big"), "the same", min_s=10_000),
        Check("cuda_only", "needs CUDA", "CUDA", lambda ctx, t: ran.append("cuda_only"), None, min_s=0),
    )
    monkeypatch.setattr(gpu_check, "CHECKS", checks)
    monkeypatch.setattr(gpu_check, "start_import_probes", lambda: {})
    monkeypatch.setattr(gpu_check, "detect_environment", lambda ctx, probes: {
        "python": "3", "torch": "t", "torch_cuda": "none", "gpu": "", "cpu_count": 2, "imports": {}})
    code = gpu_check.main([str(tmp_path), "--dry-run", "--budget-s", "100"])
    assert [name for name, _ in ran] == ["capped", "stopped"]  # too_big and cuda_only never started
    assert ran[0][1] == 5 and 80 < ran[1][1] <= 100 - gpu_check.CLOSING_RESERVE_S
    document = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {r["check"]: (r["status"], r["detail"]) for r in document["results"]}
    assert status["capped"][0] == gpu_check.TIMEOUT  # past its own limit: a failure
    assert status["stopped"][0] == gpu_check.STOPPED_BUDGET and "--checks stopped" in status["stopped"][1]
    assert status["too_big"][0] == gpu_check.SKIPPED and status["too_big"][1].startswith("budget: ")
    assert status["cuda_only"] == (gpu_check.SKIPPED, gpu_check.NO_CUDA)
    assert code == 1 and document["exit_code"] == 1
    assert {s["check"] for s in document["skipped"]} == {"too_big", "cuda_only"}


def test_gpu_check_bad_arguments_exit_2(tmp_path: Path) -> None:
    for budget in ("0", "nan", "inf"):
        done = subprocess.run([sys.executable, str(GPU_CHECK), str(tmp_path), "--budget-s", budget], capture_output=True, text=True)
        assert done.returncode == 2 and "--budget-s must be a positive number of seconds" in done.stderr, budget
    # 2 for a typo, not 1 (which means a check failed): CI must tell the two apart.
    done = subprocess.run([sys.executable, str(GPU_CHECK), str(tmp_path), "--checks", "memroy"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown check(s) memroy (did you mean 'memory'?): choose from environment" in done.stderr


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    """What CI runs of gpu_check: the plan and its logic on the CPU, through the suite's own
    sweep with the plugins named explicitly (no entry points, as on the device machine)."""
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    command = [sys.executable, str(GPU_CHECK), str(out), "--dry-run",
               "--checks", "environment,weights,memory,torch_engines,out_of_memory,onnxruntime,compiled",
               "--budget-s", "240"]  # generous: a loaded 2-core machine is slow, and no assert is timed
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    plan = done.stdout[done.stdout.index("plan:"):]
    assert "torch_engines: baseline,fp16,bf16,cuda_graphs,pruned,pruned_structured at batch 1,32" in plan
    assert "dry run: baseline at batch 1 on the CPU through the same sweep" in plan
    for cuda_only in ("out_of_memory", "onnxruntime", "compiled"):
        line = next(line for line in plan.splitlines() if f"{cuda_only}: " in line)
        assert line.endswith("-> skip: needs CUDA: torch.cuda.is_available() is False"), line
    assert "profiler" not in plan  # not asked for

    for name in ("gpu_check.csv", "gpu_check.json", "gpu_check.log", "benchmark_results.csv", "benchmark.json"):
        assert (out / name).is_file(), name
    document = json.loads((out / "gpu_check.json").read_text())
    assert document["device"] == "cpu" and document["dry_run"] is True and document["exit_code"] == 0
    assert Path(document["environment"]["suite_path"]) == REPO / "densenet_opt"  # the source tree, not an install
    results = {(r["check"], r["variant"], r["batch"]): r for r in document["results"]}
    baseline = results["torch_engines", "baseline", 1]
    assert baseline["status"] == "ok" and baseline["ms"] > 0 and baseline["samples_per_s"] > 0
    assert results["torch_engines", "fp16", 32]["detail"] == "needs CUDA: torch.cuda.is_available() is False"
    assert results["memory", "rss 256 MiB", None]["status"] in ("ok", "skipped")
    assert {s["check"] for s in document["skipped"]} == {"out_of_memory", "onnxruntime", "compiled"}
    with (out / "gpu_check.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(gpu_check.COLUMNS)
    assert any(row["variant"] == "baseline" and row["batch"] == "1" and row["status"] == "ok" for row in table)
    with (out / "benchmark_results.csv").open() as handle:
        suite_rows = list(csv.DictReader(handle))
    assert [(r["optimization_technique"], r["batch_size"], r["status"]) for r in suite_rows] == [("baseline", "1", "ok")]
    log = (out / "gpu_check.log").read_text()
    assert "torch_engines| " in log and "-p densenet_opt.plugin" in log  # the sweep's own output, the plugin named
