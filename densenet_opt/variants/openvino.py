"""OpenVINO on the CPU: ``openvino`` (fp32), ``openvino_bf16`` and ``openvino_int8`` (NNCF).

What an engineer deploying on an x86 server CPU reaches for first. Each variant reads the
cached, verified ONNX export that the ONNX Runtime variants use (``ov.convert_model`` of
``onnx/export.py``'s model): the same graph for both runtimes, and no second trace of the
torch module (about 30 s on 2 cores). Settings, written down because OpenVINO's defaults
change the answer:

- ``INFERENCE_PRECISION_HINT``: ``f32`` for ``openvino``, so that it really is fp32 (OpenVINO's
  CPU plugin runs in bf16 by default on a CPU with native bf16); ``bf16`` for
  ``openvino_bf16``, which is unavailable where the CPU plugin does not list BF16 among its
  OPTIMIZATION_CAPABILITIES (AVX-512 BF16 or AMX); ``openvino_int8`` runs the layers NNCF
  leaves in float in bf16 where the CPU has native bf16, as OpenVINO does by default, else in
  f32 (``openvino_int8.float_precision``).
- The execution mode is chosen by measurement (``openvino.streams=auto``, the default):
  when an engine is built, one stream (``PERFORMANCE_HINT = LATENCY``, one inference
  request at a time on all the threads) and 2, 4, ... up to one stream per core (below; the
  threads shared among the streams, so this also chooses the threads per request) are
  compiled and timed in interleaved rounds at the engine's batch size, and the fastest is kept, cached per model,
  precision, batch size, threads, OpenVINO version and machine kind (choose_streams); at
  batch 1 there is nothing to split and one stream is used. Either way the call boundary is
  every other engine's (batch in, logits out, synchronous); ``INFERENCE_NUM_THREADS`` = the
  physical cores (``openvino.threads=N``). ``openvino.streams=N`` fixes the mode: 1 as
  above; N > 1 is OpenVINO's throughput mode behind the same boundary: ``PERFORMANCE_HINT = THROUGHPUT``, ``NUM_STREAMS = N``, the model
  compiled for ceil(batch / N) images and each batch split into that many parts, one
  inference request per part, all in flight at once (what ``benchmark_app`` does with
  several requests); the threads are shared among the streams, so on few cores it trades
  the synchronisation of many threads on one small layer for parallel independent work.
- ``openvino_int8``: NNCF post-training quantization with its default preset (symmetric int8
  weights and activations) on the same calibration images as every other int8 variant, never
  evaluated ones. With ``accuracy_control=on`` (the default) it is the all-int8 model when it
  already meets ``accuracy_rule`` (variants/search_rule.py:
  MLPerf's rule, top-1 at least ``accuracy_target`` % of the fp32 model's, where the labels
  measure top-1; else top-1 agreement with fp32) on ``search_images`` held-out images of the
  calibration pool (after the calibration images, never evaluated ones); otherwise
  ``nncf.quantize_with_accuracy_control``: NNCF ranks the quantized operations by what each
  costs and reverts the worst to float, one at a time, until the rule is met (MLPerf's rule
  is NNCF's ``DropType.RELATIVE`` with ``max_drop`` 1 - target / 100 on top-1 against the
  labels; agreement is ``DropType.ABSOLUTE`` on our agreement metric: NNCF takes any
  validation function), or ``max_reverted`` operations are reverted. Our own checks compile
  with inference precision f32. With ``accuracy_control=off`` it is plain ``nncf.quantize``.
  NNCF runs in a spawned process (quantize_in_fresh_process says why). The quantized IR is
  cached on disk keyed by the export's sha256, the images and their labels, the settings,
  and the OpenVINO and NNCF versions; engine_info gives the rule's figure measured on the
  held-out images and the number of FakeQuantize operations left.

OpenVINO and NNCF are in the ``cpu`` extra; without them the variants are skipped with the
install command. On a CUDA sweep they are skipped (CPU device only).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import pickle
import queue
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from densenet_opt import atomic
from densenet_opt.accuracy import TOP1_OF_FP32_RULE, rule_metric, rule_text, score_text, top1_agreement
from densenet_opt.cache import CACHE_OPTION, file_problem, file_sha256, key_digest, tensor_digest
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.values import whole_number
from densenet_opt.variants import BuildContext, Engine, Variant, VariantOption
from densenet_opt.variants.search_rule import heldout_labels, rule_name, rule_options, search_rule

OPENVINO, OPENVINO_BF16, OPENVINO_INT8 = "openvino", "openvino_bf16", "openvino_int8"
INSTALL_HINT = "pip install -e .[cpu] (or pip install openvino nncf)"
MANIFEST = "manifest.json"
CONTROL_FILE = "accuracy_control.json"  # beside the IR: what accuracy control measured
IR_FILES = ("model.xml", "model.bin")
# Images per nncf.Dataset item: NNCF feeds them one item at a time.
CALIBRATION_BATCH = 1


def import_openvino():
    """The openvino module, or VariantUnavailable with the install command."""
    try:
        import openvino
    except ImportError:
        raise VariantUnavailable(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def import_nncf():
    """The nncf module, or VariantUnavailable with the install command."""
    try:
        import nncf
    except ImportError:
        raise VariantUnavailable(f"NNCF is not installed (openvino_int8 quantizes with it): {INSTALL_HINT}") from None
    return nncf


def core():
    """The process's one ``openvino.Core``, shared by every read and compile here.

    OpenVINO's own advice is one Core per application, and more than one in a process has
    crashed it elsewhere (segmentation faults on the second Core or after many model loads:
    openvino issue #35338, ultralytics PR #25864). VariantUnavailable without OpenVINO
    (checked on every call, so that a test hiding the package sees the skip)."""
    return _shared_core(import_openvino())


@functools.cache
def _shared_core(ov):
    return ov.Core()


def _threads(text: str) -> int | None:
    """auto -> None (the physical cores), else a whole number >= 1; ValueError otherwise."""
    if text.strip().lower() == "auto":
        return None
    try:
        return whole_number(text, minimum=1)
    except ValueError as error:
        raise ValueError(f"{error} (or auto)") from None


THREADS_OPTION = VariantOption("threads", _threads, None,
                               "INFERENCE_NUM_THREADS of the CPU plugin, a whole number >= 1 (auto: physical cores)")
AUTO = "auto"


def _streams(text: str) -> int | str:
    """auto -> AUTO (chosen by measurement), else a whole number >= 1; ValueError otherwise."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return whole_number(text, minimum=1)
    except ValueError as error:
        raise ValueError(f"{error} (or auto)") from None


STREAMS_OPTION = VariantOption(
    "streams", _streams, AUTO,
    "NUM_STREAMS of the CPU plugin: 1 is one inference request on all the threads (PERFORMANCE_HINT=LATENCY); "
    "N > 1 splits each batch into N equal parts run at once, one request per stream, the threads shared among "
    "them (OpenVINO's throughput mode); auto: the fastest of 1, 2, 4, ... and one stream per core, measured when the engine "
    "is built for its batch size and cached per machine kind (choose_streams)",
)
# Timed calls per candidate when auto measures the execution mode (round-robin, after one
# untimed call each): enough to separate modes that differ by 10% on a quiet machine.
MODE_ROUNDS = 7
MODES_FILE = "execution_modes.json"  # in the cache dir's openvino folder: the choices measured
ON, OFF = "on", "off"
INT8_OPTIONS = (
    THREADS_OPTION,
    STREAMS_OPTION,
    VariantOption.choice(
        "accuracy_control", (ON, OFF), ON,
        "all-int8 when it meets accuracy_rule, else nncf.quantize_with_accuracy_control: revert the quantized "
        "operations that cost most accuracy to float until accuracy_rule is met (on), or plain nncf.quantize (off)",
    ),
    VariantOption.choice(
        "float_precision", (AUTO, "f32", "bf16"), AUTO,
        "INFERENCE_PRECISION_HINT of the layers NNCF leaves in float (concatenations, pooling, the classifier, any "
        "operation accuracy control reverted): bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX); auto is "
        "bf16 where the CPU has it, else f32, as OpenVINO's own default (on the AMX Xeon all-int8 with bf16 float "
        "layers ran batch 1 in 11.3 ms against 14.6 with f32, the same top-1: docs/results/"
        "intel-xeon_x86v4-avxvnni-vnni-bf16-fp16-amxbf16-amxint8_2c.md)",
    ),
    *rule_options("accuracy_control"),
    VariantOption("search_images", lambda text: whole_number(text, minimum=1), 256,
                  "held-out calibration-pool images accuracy_control measures accuracy_rule on"),
    VariantOption("max_reverted", lambda text: whole_number(text, minimum=1), 16,
                  "most quantized operations accuracy_control reverts to float (NNCF's max_num_iterations)"),
    VariantOption("ranking_images", lambda text: whole_number(text, minimum=1), 32,
                  "held-out images NNCF ranks the quantized operations on (its ranking_subset_size: the images "
                  "int8 gets most wrong; at most search_images); ranking compiles and runs the model once per "
                  "operation, the slow step"),
)


@dataclass(frozen=True)
class CompiledFrom:
    """What an OpenVINO model was compiled from: its ``model_file`` (IR .xml or ONNX) and the
    CPU plugin ``properties`` it was compiled with, so that the same model can be compiled
    again beside it (a plain OpenVINO script, a profile with PERF_COUNT)."""

    model_file: str
    properties: Mapping[str, str]

    def compile(self, input_shape: Sequence[int], extra: Mapping[str, str] | None = None):
        """The model file reshaped to the static ``input_shape`` ([N,3,224,224] for DenseNet)
        and compiled for the CPU with ``properties`` and then ``extra`` (which win): an
        openvino.CompiledModel. VariantUnavailable without OpenVINO."""
        model = core().read_model(self.model_file)
        model.reshape(list(input_shape))
        return core().compile_model(model, "CPU", dict(self.properties) | dict(extra or {}))


def compiled_from_of(call: object) -> CompiledFrom | None:
    """What an engine or a peer's call that runs on OpenVINO was compiled from (its
    ``compiled_from``); None for one that does not run on OpenVINO."""
    found = getattr(call, "compiled_from", None)
    return found if isinstance(found, CompiledFrom) else None


class OpenVinoEngine:
    """A compiled OpenVINO model behind the engine contract: float32 [N,3,224,224] host
    batch in, float32 [N,1000] host logits out, synchronous.

    ``compiled`` takes parts of ``part_size`` images (its static input shape): with one
    part, one inference request per call; with ``ceil(N / part_size)`` > 1 parts, one
    request per part, all started before any is waited for, so that the plugin's streams
    run them at once (the last part, when N is not a multiple of ``part_size``, is padded
    with zeros and its padding dropped from the logits). ``compiled_from``: its model file
    and properties (CompiledFrom; None where not given)."""

    def __init__(self, compiled, *, part_size: int, model_size_bytes: int, info: dict[str, str],
                 compiled_from: CompiledFrom | None = None) -> None:
        self._compiled = compiled
        self._part_size = part_size
        self._requests: list = []
        self.model_size_bytes = model_size_bytes
        self.info = info
        self.compiled_from = compiled_from

    def _request(self, index: int):
        while len(self._requests) <= index:
            self._requests.append(self._compiled.create_infer_request())
        return self._requests[index]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        size = self._part_size
        if len(array) == size:
            outputs = self._request(0).infer({0: array})
            return torch.from_numpy(np.array(next(iter(outputs.values())), dtype=np.float32, copy=True))
        parts = split_batch(array, size)
        requests = [self._request(index) for index in range(len(parts))]
        for request, part in zip(requests, parts):
            request.start_async({0: part})
        logits = []
        for request in requests:
            request.wait()
            logits.append(np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True))
        return torch.from_numpy(np.concatenate(logits)[: len(array)])

    def close(self) -> None:
        self._requests = []
        self._compiled = None


def cpu_supports_bf16(core) -> bool:
    """Whether OpenVINO's CPU plugin lists BF16 among its optimization capabilities."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


INT8_BF16 = "int8-bf16"  # openvino_int8 with float_precision=bf16: the layers NNCF left in float run in bf16


def compile_config(precision: str, threads: int, streams: int = 1) -> dict[str, str]:
    """The CPU plugin properties for ``precision`` (fp32, bf16, int8 or INT8_BF16) and ``streams``
    (module docstring): LATENCY with one stream, THROUGHPUT with more."""
    return {
        "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        "NUM_STREAMS": str(streams),
        "INFERENCE_NUM_THREADS": str(threads),
        "INFERENCE_PRECISION_HINT": "bf16" if precision in ("bf16", INT8_BF16) else "f32",
    }


def part_size(batch_size: int, streams: int) -> int:
    """Images per inference request when a batch of ``batch_size`` is split over
    ``streams`` streams: ceil(batch_size / streams), so that no more parts than streams
    run (1 image per request at batch 1, whatever ``streams``)."""
    return -(-batch_size // streams)


def split_batch(array: np.ndarray, size: int) -> list[np.ndarray]:
    """``array`` (float32 [N,3,224,224]) in parts of ``size`` images, the last one padded
    with zeros to ``size`` when N is not a multiple of it."""
    parts = [array[start : start + size] for start in range(0, len(array), size)]
    if len(parts[-1]) < size:
        parts[-1] = np.concatenate([parts[-1], np.zeros((size - len(parts[-1]), *array.shape[1:]), np.float32)])
    return parts


def _source_model(ctx: BuildContext):
    """The fp32 ONNX export (cached; shared with the ONNX Runtime variants) and its OpenVINO model."""
    from densenet_opt.variants.onnx.builders import fp32_model  # needs onnx only, not onnxruntime

    ov = import_openvino()
    source = fp32_model(ctx)
    started = time.perf_counter()
    model = ov.convert_model(str(source.path))
    return source, model, time.perf_counter() - started


def _compile(ctx: BuildContext, model, precision: str, size_bytes: int, info: dict[str, str]) -> OpenVinoEngine:
    """Compile ``model`` (an ov.Model) for the CPU at ``ctx.batch_size`` with compile_config
    (parts of part_size images when ``streams`` > 1);
    ``info`` must name the ``model_file`` it came from: the engine's ``compiled_from`` pairs it
    with the properties (tools/openvino_side_by_side.py and tools/peers.py compile it again)."""
    from densenet_opt.variants.onnx.providers import default_threads

    ov = import_openvino()
    threads = ctx.option("threads") or default_threads()
    streams, mode_note = ctx.option("streams"), "given"
    if streams == AUTO:
        streams, mode_note = choose_streams(ctx, model, precision, threads, info["model_file"])
    config = compile_config(precision, threads, streams)
    part = part_size(ctx.batch_size, streams)
    model.reshape([part, *IMAGE_SHAPE])  # a static shape, as the other CPU packages
    started = time.perf_counter()
    compiled = core().compile_model(model, "CPU", config)
    info = {**info, "streams_chosen": mode_note}
    engine = OpenVinoEngine(
        compiled, part_size=part, model_size_bytes=size_bytes, compiled_from=CompiledFrom(info["model_file"], config),
        info={
            "runtime": f"openvino-{ov.__version__.split('-')[0]}",
            "precision": precision,
            **info,
            **{key.lower(): value for key, value in config.items()},
            "requests_per_call": str(-(-ctx.batch_size // part)),
            "streams_compiled": str(compiled.get_property("NUM_STREAMS")),  # what the plugin made of NUM_STREAMS
            "compile_s": f"{time.perf_counter() - started:.2f}",
        },
    )
    started = time.perf_counter()
    engine(torch.zeros(ctx.batch_size, *IMAGE_SHAPE))
    engine.info["first_run_s"] = f"{time.perf_counter() - started:.2f}"
    return engine


def stream_candidates(batch_size: int, cores: int) -> tuple[int, ...]:
    """The stream counts auto chooses among: 1 (LATENCY: one request on all ``cores``
    threads) and, when the batch can be split, 2, 4, 8, ... streams and one stream per core,
    at most the batch size (THROUGHPUT: the threads shared among the streams, so each count
    is also a number of threads per request: cores / streams). At batch 1 there is nothing
    to split: (1,)."""
    most = min(cores, batch_size)
    counts = [1]
    while counts[-1] * 2 < most:
        counts.append(counts[-1] * 2)
    if most > 1:
        counts.append(most)
    return tuple(counts)


def choose_streams(ctx: BuildContext, model, precision: str, threads: int, model_file: str) -> tuple[int, str]:
    """The stream count (stream_candidates) that runs ``model`` fastest at ``ctx.batch_size``
    here, and how it was chosen, for engine_info: measured now (every candidate compiled,
    called MODE_ROUNDS times in interleaved rounds on zeros (measure.timing.interleaved), the lowest median wins) or read from
    MODES_FILE, where each choice is kept under the model file's bytes, precision, batch
    size, threads, OpenVINO version and machine kind. Why measure: one stream or several
    is a choice the machine decides (issue 30: OpenVINO's two-stream default was 1.3x
    slower than one stream on a quiet 2-core Xeon, and faster on a busy one). A choice
    measured while other processes loaded the CPUs is used but not kept."""
    from densenet_opt.measure.contention import Contention, PressureMark
    from densenet_opt.measure.env import machine_kind
    from densenet_opt.measure.timing import interleaved

    candidates = stream_candidates(ctx.batch_size, threads)
    if len(candidates) == 1:
        return candidates[0], "only candidate at this batch size"
    ov = import_openvino()
    key = key_digest({"model": file_sha256(Path(model_file)), "precision": precision, "batch": ctx.batch_size,
                      "threads": threads, "openvino": ov.__version__, "kind": machine_kind("cpu"),
                      "candidates": candidates, "version": 1})
    path = Path(ctx.cache_dir) / "openvino" / MODES_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict) and known[key].get("streams") in candidates:
        return int(known[key]["streams"]), f"{known[key]['streams']} (measured earlier: {known[key]['note']})"
    calls = {}
    for streams in candidates:
        part = part_size(ctx.batch_size, streams)
        candidate = model.clone()
        candidate.reshape([part, *IMAGE_SHAPE])
        engine = OpenVinoEngine(core().compile_model(candidate, "CPU", compile_config(precision, threads, streams)),
                                part_size=part, model_size_bytes=0, info={})
        calls[streams] = engine
    batch = torch.zeros(ctx.batch_size, *IMAGE_SHAPE)
    seconds: dict[int, list[float]] = {streams: [] for streams in candidates}
    for engine in calls.values():
        engine(batch)
    start = PressureMark.now()
    candidates_built = list(calls.items())
    for order in interleaved(len(candidates_built), MODE_ROUNDS):
        for streams, engine in (candidates_built[index] for index in order):
            tick = time.perf_counter()
            engine(batch)
            seconds[streams].append(time.perf_counter() - tick)
    contended = Contention.since(start).contended()
    for engine in calls.values():
        engine.close()
    medians = {streams: float(np.median(values)) * 1e3 for streams, values in seconds.items()}
    best = min(medians, key=medians.get)
    note = ", ".join(f"{streams} stream{'s' if streams > 1 else ''} {ms:.1f} ms" for streams, ms in medians.items())
    ctx.progress(f"{ctx.variant.name if ctx.variant else 'openvino'} batch {ctx.batch_size}: {note}: "
                 f"{best} stream{'s' if best > 1 else ''}" + (" (measured under contention: not cached)" if contended else ""))
    if not contended:
        known[key] = {"streams": best, "note": note}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(path, json.dumps(known, indent=1) + "\n", option=CACHE_OPTION)
        except UserError as error:  # a full or read-only cache: the choice is measured again next time
            ctx.progress(f"not cached: {error}")
    return best, f"{best} (measured: {note}{'; contended' if contended else ''})"


def build_fp32(ctx: BuildContext) -> Engine:
    """OpenVINO fp32 (inference precision pinned to f32) of the cached ONNX export.
    VariantUnavailable without OpenVINO."""
    source, model, convert_s = _source_model(ctx)
    return _compile(ctx, model, "fp32", source.size_bytes,
                    {"model_file": str(source.path), "source": "onnx export", "convert_s": f"{convert_s:.2f}"})


def build_bf16(ctx: BuildContext) -> Engine:
    """OpenVINO with bf16 inference precision. VariantUnavailable where the CPU plugin has
    no BF16 capability (no AVX-512 BF16 or AMX) or without OpenVINO."""
    if not cpu_supports_bf16(core()):
        raise VariantUnavailable(
            "openvino_bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX): OpenVINO's CPU plugin lists "
            f"only {', '.join(core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))} here"
        )
    source, model, convert_s = _source_model(ctx)
    return _compile(ctx, model, "bf16", source.size_bytes,
                    {"model_file": str(source.path), "source": "onnx export", "convert_s": f"{convert_s:.2f}"})


@dataclass(frozen=True)
class AccuracyControl:
    """openvino_int8's accuracy-control settings (its options); None in the build means off."""

    rule: str  # accuracy.SEARCH_RULES (auto resolved: search_rule.rule_name)
    target: float  # % of the rule
    images: int  # held-out calibration-pool images validated on
    max_reverted: int  # NNCF's max_num_iterations
    ranking_images: int  # NNCF's ranking_subset_size


def accuracy_control(ctx: BuildContext) -> tuple[AccuracyControl | None, np.ndarray | None]:
    """The settings of ``ctx``'s options (None for ``accuracy_control=off``) and the labels
    of the held-out images (int64 [search_images], or None where labels do not measure
    top-1). UserError for accuracy_rule=top1_of_fp32 without labels."""
    if ctx.option("accuracy_control") == OFF:
        return None, None
    images = ctx.option("search_images")
    labels = heldout_labels(ctx, ctx.calibration_samples, images)
    control = AccuracyControl(rule_name(ctx, labels), ctx.option("accuracy_target"), images, ctx.option("max_reverted"),
                              ctx.option("ranking_images"))
    return control, labels


def int8_key(source_sha256: str, images: torch.Tensor, control: AccuracyControl | None = None,
             heldout: torch.Tensor | None = None, labels: np.ndarray | None = None) -> dict[str, object]:
    """What the NNCF int8 IR depends on."""
    ov, nncf = import_openvino(), import_nncf()
    key: dict[str, object] = {
        "artifact": "densenet121-openvino-int8", "source_sha256": source_sha256,
        "calibration": f"{len(images)}-{tensor_digest(images)}", "openvino": ov.__version__,
        "nncf": nncf.__version__, "preset": "default", "version": 1,
    }
    if control is not None and heldout is not None:
        key |= {"accuracy_control": dataclasses.asdict(control), "heldout": f"{len(heldout)}-{tensor_digest(heldout)}",
                "labels": None if labels is None else tensor_digest(torch.from_numpy(labels)), "version": 3}
    return key


def _items(images: torch.Tensor) -> list[np.ndarray]:
    return [images[i : i + CALIBRATION_BATCH].numpy() for i in range(0, len(images), CALIBRATION_BATCH)]


def matches_validation(classes: np.ndarray) -> Callable[[object, object], tuple[float, list[float]]]:
    """The validation function NNCF's accuracy control takes: ``(compiled model, items)`` ->
    (the fraction in [0, 1] of items whose top-1 class is ``classes``', one 0/1 value per
    item). Items are ``(index, image batch)`` pairs, so that any subset NNCF picks is scored
    against the right classes; ``classes``: int64 [N], the labels (MLPerf's rule: NNCF's
    relative drop of this fraction) or the fp32 argmax classes (agreement)."""

    def validate(compiled, items) -> tuple[float, list[float]]:
        request = compiled.create_infer_request()
        values = []
        for index, batch in items:
            logits = np.asarray(next(iter(request.infer({0: batch}).values())))
            values.append(top1_agreement(logits, classes[index : index + 1]) / 100.0)
        return (sum(values) / len(values) if values else 0.0), values

    return validate


class HeldoutScore:
    """The search rule's figure (%: accuracy.SearchRule) of OpenVINO models on ``images``
    (float32 [N,3,224,224]), against the fp32 ``source`` (an ov.Model) run here; every model
    compiled with inference precision f32, one image per request as NNCF validates.
    ``items``/``validate`` are what NNCF's accuracy control is given, ``rule`` the
    SearchRule. UserError when the rule has no scale (search_rule)."""

    def __init__(self, source, images: torch.Tensor, control: AccuracyControl, labels: np.ndarray | None) -> None:
        self.items = list(enumerate(_items(images)))
        request = self._compiled(source).create_infer_request()
        reference = [int(np.asarray(next(iter(request.infer({0: item}).values()))).argmax()) for _, item in self.items]
        self.rule = search_rule(control.rule, control.target, np.array(reference, dtype=np.int64), labels, OPENVINO_INT8)
        self.validate = matches_validation(self.rule.classes)

    @staticmethod
    def _compiled(model):
        return core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, model) -> float:
        return self.rule.score_of_matches(self.validate(self._compiled(model), self.items)[0])


def fake_quantize_ops(model) -> int:
    """FakeQuantize operations in an OpenVINO model: what NNCF inserted and did not revert."""
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def nncf_drop(control: AccuracyControl) -> tuple[float, str]:
    """NNCF's ``max_drop`` and ``drop_type`` name for ``control``'s rule: MLPerf's (top-1 at
    least target % of fp32's) is a RELATIVE drop of 1 - target / 100 of the fraction of
    labels matched; agreement is an ABSOLUTE drop of (100 - target) / 100 from fp32's own."""
    if control.rule == TOP1_OF_FP32_RULE:
        return 1.0 - control.target / 100.0, "RELATIVE"
    return (100.0 - control.target) / 100.0, "ABSOLUTE"


def quantize_controlled(source, calibration: torch.Tensor, heldout: torch.Tensor, labels: np.ndarray | None,
                        control: AccuracyControl, progress: Callable[[str], None]) -> tuple[object, dict[str, object]]:
    """The int8 model ``control`` chooses for the OpenVINO fp32 ``source`` (module docstring),
    and what was measured: the all-int8 model (``nncf.quantize``) when it meets the rule;
    else ``nncf.quantize_with_accuracy_control``'s when that one does; else the all-int8 model
    again (the fastest; reverting operations that still miss the target is the user's call),
    as onnx_int8 decides. ``calibration``/``heldout``: float32 [N,3,224,224], disjoint;
    ``labels``: int64 [len(heldout)] or None (what the rule needs: search_rule.py). The
    measured figures are keyed ``all_int8_<metric>``/``controlled_<metric>`` (rule_metric)."""
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    score = HeldoutScore(source, heldout, control, labels)
    metric = rule_metric(control.rule)
    all_int8 = nncf.quantize(source, nncf.Dataset(_items(calibration)), subset_size=len(calibration))
    measured: dict[str, object] = {"rule": control.rule, f"all_int8_{metric}": score(all_int8),
                                   f"controlled_{metric}": None, "all_int8_fake_quantize_ops": fake_quantize_ops(all_int8)}
    progress(f"{OPENVINO_INT8}: all-int8 {score_text(control.rule, measured[f'all_int8_{metric}'])} on {len(heldout)} "
             f"held-out images (rule: {score.rule.text()})")
    if score.rule.meets(measured[f"all_int8_{metric}"]):
        return all_int8, measured | {"chosen": "all-int8 (meets the rule)"}
    progress(f"{OPENVINO_INT8}: nncf.quantize_with_accuracy_control: ranking the quantized operations on "
             f"{min(control.ranking_images, len(heldout))} images, then reverting at most {control.max_reverted} "
             "(minutes on a few cores; cached after)")
    max_drop, drop_type = nncf_drop(control)
    controlled = nncf.quantize_with_accuracy_control(
        source, nncf.Dataset(_items(calibration)), nncf.Dataset(score.items, lambda item: item[1]),
        score.validate, max_drop=max_drop, drop_type=getattr(nncf.DropType, drop_type),
        subset_size=len(calibration),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=control.max_reverted, ranking_subset_size=control.ranking_images),
    )
    measured[f"controlled_{metric}"] = score(controlled)
    measured["controlled_fake_quantize_ops"] = fake_quantize_ops(controlled)
    if score.rule.meets(measured[f"controlled_{metric}"]):
        return controlled, measured | {"chosen": "accuracy control (meets the rule)"}
    return all_int8, measured | {"chosen": "all-int8 (no model met the rule)"}


def _quantize(source_path: str, images: np.ndarray, heldout: np.ndarray | None, labels: np.ndarray | None,
              control: AccuracyControl | None, staging: str, progress: Callable[[str], None]) -> None:
    """NNCF int8 of the ONNX file at ``source_path`` into ``staging`` (IR_FILES, and
    CONTROL_FILE with what accuracy control measured): the body of the fresh process."""
    ov, nncf = import_openvino(), import_nncf()
    model = ov.convert_model(source_path)
    calibration = torch.from_numpy(images)
    if control is None:
        quantized = nncf.quantize(model, nncf.Dataset(_items(calibration)), subset_size=len(calibration))
    else:
        quantized, measured = quantize_controlled(model, calibration, torch.from_numpy(heldout), labels, control,
                                                  progress)
        (Path(staging) / CONTROL_FILE).write_text(json.dumps(measured, indent=2) + "\n")
    ov.save_model(quantized, str(Path(staging) / IR_FILES[0]), compress_to_fp16=False)


def _quantize_child(messages, *args) -> None:
    """multiprocessing target: _quantize(*args) with progress, the end and any error sent
    through ``messages`` as (kind, value) pairs."""
    try:
        _quantize(*args, lambda message: messages.put(("progress", message)))
        messages.put(("done", None))
    except BaseException as error:
        try:
            pickle.dumps(error)
        except Exception:
            error = RuntimeError(f"{type(error).__name__}: {error}")
        messages.put(("error", error))


def quantize_in_fresh_process(source_path: Path, images: torch.Tensor, heldout: torch.Tensor | None,
                              control: AccuracyControl | None, staging: Path, progress: Callable[[str], None],
                              labels: np.ndarray | None = None) -> None:
    """NNCF quantization (plain, or with accuracy ``control`` on ``heldout`` and its ``labels``) of the ONNX file
    at ``source_path`` on ``images`` (float32 [N,3,224,224]), written to ``staging``, in a
    spawned process; its progress is passed to ``progress`` and its error raised here.

    Why a process: ``nncf.quantize_with_accuracy_control`` run in a process that had also
    compiled and run the sweep's OpenVINO engines left that process to die with SIGSEGV at its
    next Python call (reproduced in CI's test process, 2026-11-30; fine without the NNCF
    call): NNCF's state now never lives where engines are timed. UserError when the process
    ends without a result (killed, or out of memory), with what to do."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    child = context.Process(
        target=_quantize_child, name="densenet-opt-nncf", daemon=True,
        args=(messages, str(source_path), images.numpy(), None if heldout is None else heldout.numpy(), labels, control,
              str(staging)),
    )
    child.start()
    try:
        while True:
            try:
                kind, value = messages.get(timeout=0.5)
            except queue.Empty:
                if child.is_alive():
                    continue
                try:  # it may have sent its last message just before it ended
                    kind, value = messages.get(timeout=1.0)
                except queue.Empty:
                    raise UserError(
                        f"{OPENVINO_INT8}: the NNCF quantization process ended without a result (exit code "
                        f"{child.exitcode}); if it ran out of memory, pass fewer --calibration-samples or a smaller "
                        f"{OPENVINO_INT8}.search_images"
                    ) from None
            if kind == "progress":
                progress(value)
            elif kind == "error":
                raise value
            else:
                return
    finally:
        if child.is_alive():
            child.join(timeout=10)
        if child.is_alive():  # interrupted, or an error raised while it still ran
            child.terminate()
            child.join()
        messages.close()


def build_int8(ctx: BuildContext) -> Engine:
    """NNCF post-training int8 of the OpenVINO model, calibrated on ``ctx.calibration_samples``
    images, with accuracy control unless ``accuracy_control=off`` (module docstring), cached
    as IR with what the control measured. UserError for --calibration-samples 0, too few
    images for the held-out set, or a full cache disk; VariantUnavailable without OpenVINO
    or NNCF. NNCF runs in a fresh process (quantize_in_fresh_process)."""
    nncf = import_nncf()  # here too, so that a missing NNCF is a skip before any export
    if ctx.calibration_samples < 1:
        raise UserError(
            f"int8 quantization needs calibration images, got {ctx.calibration_samples}: pass "
            "--calibration-samples N with N >= 1 (128 by default)"
        )
    from densenet_opt.variants.onnx.builders import fp32_model

    control, labels = accuracy_control(ctx)
    source = fp32_model(ctx)
    pool = ctx.calibration_images(ctx.calibration_samples + (control.images if control else 0))
    images, heldout = pool[: ctx.calibration_samples], pool[ctx.calibration_samples :]
    if len(images) < 1:
        raise UserError("int8 quantization found no calibration images: give a data folder with more images")
    if control is not None and len(heldout) < 1:
        raise UserError(
            f"{OPENVINO_INT8}.accuracy_control needs held-out calibration-pool images after the {len(images)} "
            f"calibration images and found none: give a data folder with more images or pass "
            f"{OPENVINO_INT8}.accuracy_control=off"
        )
    key = int8_key(source.sha256, images, control, heldout, labels)
    folder = Path(ctx.cache_dir) / "openvino" / f"densenet121-int8-{key_digest(key)}"

    def quantize(staging: Path) -> None:
        ctx.progress(f"{OPENVINO_INT8}: nncf quantization on {len(images)} calibration images in a fresh process "
                     f"(cached in {folder})")
        quantize_in_fresh_process(source.path, images, heldout if control else None, control, staging, ctx.progress,
                                  labels)

    started = time.perf_counter()
    cached = cached_ir(folder, key, quantize)
    quantize_s = time.perf_counter() - started
    model = core().read_model(str(folder / IR_FILES[0]))
    size = sum((folder / name).stat().st_size for name in IR_FILES)
    info = {
        "model_file": str(folder / IR_FILES[0]),
        "quantizer": f"nncf-{nncf.__version__} default preset", "calibration_images": str(len(images)),
        "int8_cache": "hit" if cached else "miss", "quantize_s": f"{0.0 if cached else quantize_s:.1f}",
        "fake_quantize_ops": str(fake_quantize_ops(model)),
        "accuracy_control": OFF if control is None else ON,
    }
    if control is not None:
        info |= control_info(folder / CONTROL_FILE, control, len(heldout))
        metric = rule_metric(control.rule)
        controlled = info[f"controlled_{metric}"]
        ctx.progress(f"{OPENVINO_INT8}: {info['accuracy_control_chosen']}: {info['fake_quantize_ops']} FakeQuantize "
                     f"operations; {info['accuracy_rule']}: all-int8 {info[f'all_int8_{metric}']}%"
                     + (f", with accuracy control {controlled}%" if controlled != "n/a" else "")
                     + f" on {len(heldout)} held-out images")
    return _compile(ctx, model, int8_precision(ctx.option("float_precision"), cpu_supports_bf16(core())), size, info)


def int8_precision(float_precision: str, cpu_has_bf16: bool) -> str:
    """openvino_int8's precision for compile_config: INT8_BF16 (float layers in bf16) for
    float_precision bf16, or auto on a CPU with native bf16; "int8" (float layers in f32)
    otherwise. VariantUnavailable for bf16 on a CPU without it."""
    if float_precision == "bf16" and not cpu_has_bf16:
        raise VariantUnavailable(f"{OPENVINO_INT8}.float_precision=bf16 needs a CPU with native bf16 (AVX-512 BF16 "
                                 "or AMX): pass float_precision=f32 or auto here")
    return INT8_BF16 if float_precision == "bf16" or (float_precision == AUTO and cpu_has_bf16) else "int8"


def control_info(path: Path, control: AccuracyControl, heldout: int) -> dict[str, str]:
    """engine_info entries of what accuracy control measured (the file it cached beside the IR)."""
    try:
        measured = json.loads(path.read_text())
    except (OSError, ValueError):
        measured = {}

    def figure(name: str) -> str:
        value = measured.get(name)
        return "n/a" if value is None else f"{value:.2f}"

    metric = rule_metric(control.rule)
    return {
        "accuracy_rule": rule_text(control.rule, control.target), "heldout_images": str(heldout),
        f"all_int8_{metric}": figure(f"all_int8_{metric}"),
        f"controlled_{metric}": figure(f"controlled_{metric}"),
        "accuracy_control_chosen": str(measured.get("chosen", "unknown (cache written by an older version)")),
    }


def cached_ir(folder: Path, key: Mapping[str, object], build: Callable[[Path], None]) -> bool:
    """Make ``folder`` hold the IR for ``key`` (built by ``build(staging)`` when missing,
    corrupt or stale, and published atomically); True when it was already there.
    UserError naming the folder when the cache's disk is full or read-only."""
    if _cached_problem(folder, key) is None:
        return True
    try:
        staging = atomic.build_folder(folder.parent, folder.name)
    except OSError as error:
        if (failure := atomic.write_failure(folder, error, CACHE_OPTION)) is None:
            raise
        raise failure from error
    try:
        build(staging)
        files = {name: {"size": (staging / name).stat().st_size, "sha256": file_sha256(staging / name)} for name in IR_FILES}
        (staging / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=2) + "\n")
        staging.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    except Exception as error:
        if (failure := atomic.write_failure(folder, error, CACHE_OPTION)) is None:
            raise
        raise failure from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return False


def _cached_problem(folder: Path, key: Mapping[str, object]) -> str | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return "missing"
    if manifest.get("key") != json.loads(json.dumps(key)):
        return "stale"
    for name in IR_FILES:
        record = manifest.get("files", {}).get(name)
        if record is None or not (folder / name).is_file():
            return f"{name} missing"
        if problem := file_problem(folder / name, int(record["size"]), str(record["sha256"])):
            return problem
    return None


VARIANTS = [
    Variant(OPENVINO, "OpenVINO fp32 (inference precision pinned to f32) of the ONNX export, CPU plugin",
            build_fp32, devices=("cpu",), options=(THREADS_OPTION, STREAMS_OPTION)),
    Variant(OPENVINO_BF16, "OpenVINO with bf16 inference precision (CPUs with AVX-512 BF16 or AMX)",
            build_bf16, devices=("cpu",), options=(THREADS_OPTION, STREAMS_OPTION), shared_prefix=OPENVINO),
    Variant(OPENVINO_INT8, "OpenVINO int8 by NNCF post-training quantization (default preset) with accuracy control, CPU plugin",
            build_int8, devices=("cpu",), options=INT8_OPTIONS, shared_prefix=OPENVINO, calibrates=True),
]
