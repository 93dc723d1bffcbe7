"""The suite's configs against what a user gets from the peers' own defaults, side by side.

A user who does not use this suite converts DenseNet-121 with OpenVINO (and quantizes it
with NNCF), or opens it in ONNX Runtime, or calls torch.compile, each with its defaults.
This module builds those **peers** beside the suite's variants (through the registry, as a
sweep builds them), from the same weights and ONNX export, times them in one process
round by round (each round calls every engine once on the same batch, in a fresh random
order, so that a change of the machine's speed lands on all and no engine always follows the
same one: measure.timing.interleaved), scores each by MLPerf's
accuracy rule on the same images (accuracy.top1_of_fp32) and gives each suite engine's
speed over the fastest peer that meets the rule, with a bootstrap interval.

The peers (PEERS), each with nothing set that its documentation does not set by default:

- ``openvino``: ``ov.convert_model`` of the ONNX export, reshaped to the batch,
  ``core.compile_model(model, "CPU")`` without properties (the CPU plugin's defaults: the
  LATENCY hint; bf16 inference precision where the CPU has bf16), one synchronous request.
- ``openvino-throughput``: the same compiled with ``PERFORMANCE_HINT=THROUGHPUT``, as
  OpenVINO's benchmark_app does by default: the plugin's OPTIMAL_NUMBER_OF_INFER_REQUESTS
  requests, the batch split among them, all in flight (an AsyncInferQueue).
- ``nncf-int8`` / ``nncf-int8-throughput``: ``nncf.quantize`` with its defaults on the
  calibration images (the IR the suite's ``openvino_int8`` builds with
  ``accuracy_control=off``), compiled as the two above.
- ``onnxruntime``: ``InferenceSession`` of the export with default SessionOptions on the
  CPUExecutionProvider.
- ``torch-compile``: ``torch.compile(model)`` in fp32 under ``torch.inference_mode``.
- ``torch-compile-bf16``: ``torch.compile`` of the model in channels_last under
  ``torch.autocast("cpu", torch.bfloat16)``: PyTorch's CPU inference recipe for bf16.

Accuracy is measured once per engine, with its engine at the first batch size given.

Where the time goes, the measured reason a suite engine is slower or faster than a peer, is
profiled at each batch size (measure_layer_profile): OpenVINO's per-layer counters, by layer
type, of the fastest suite engine and the fastest peer that run on OpenVINO and meet the rule
(profile_choice), each compiled again from its model file with the properties it was timed
with (Contender's ``compiled_from``), in one stream.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from densenet_opt import verdict
from densenet_opt.accuracy import MLPERF_TOP1_OF_FP32, Fidelity, fidelity, predict
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.measure.layer_profile import PROFILE_CALLS, layer_profiles
from densenet_opt.measure.limits import ComputeLimit
from densenet_opt.measure.timing import interleaved
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.variants import BuildContext, get_variant, parse_variant_options
from densenet_opt.variants.openvino import CompiledFrom, compiled_from_of, core, import_openvino, part_size, split_batch

SUITE, PEER = "suite", "peer"
# The suite's engines a default run sets against the peers: its fastest CPU deployments.
DEFAULT_VARIANTS = ("openvino_int8", "openvino_bf16")
PEERS_FILE = "peers.csv"
PROFILE_FILE = "layer_profile.csv"  # beside peers.csv: the layer profiles (profile_csv_text)
CONFIDENCE = 0.95


@dataclass
class Contender:
    """One engine of the comparison: ``call`` takes a float32 [N,3,224,224] batch and returns
    float32 [N,1000] logits (N = the batch size it was built for); ``group`` SUITE or PEER;
    ``precision`` (int8, bf16 or fp32: what its compute limit is read for); ``note``: how
    it was built; ``compiled_from``: for an engine that runs on OpenVINO, its model file and
    the properties it was compiled with (what its layer profile compiles), else None."""

    name: str
    group: str
    call: Callable[[torch.Tensor], torch.Tensor]
    precision: str
    note: str
    close: Callable[[], None] = lambda: None
    compiled_from: CompiledFrom | None = None

    @property
    def key(self) -> str:
        """Unique among contenders (a peer may share a suite variant's name: ``openvino``)."""
        return f"{self.group}:{self.name}"


# --- the peers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _OpenVinoCall:
    """A peer's call that runs on OpenVINO, and what it was compiled from (compiled_from_of reads it)."""

    call: Callable[[torch.Tensor], torch.Tensor]
    compiled_from: CompiledFrom

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.call(batch)


def _openvino_peer(model_file: str, batch_size: int, throughput: bool) -> _OpenVinoCall:
    ov = import_openvino()
    source = CompiledFrom(model_file, {"PERFORMANCE_HINT": "THROUGHPUT"} if throughput else {})
    compiled = source.compile([batch_size, *IMAGE_SHAPE])
    if not throughput:
        request = compiled.create_infer_request()
        return _OpenVinoCall(lambda batch: torch.from_numpy(np.array(request.infer({0: batch.numpy()})[0], dtype=np.float32,
                                                                     copy=True)), source)
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    size = part_size(batch_size, requests)
    if size != batch_size:
        compiled = source.compile([size, *IMAGE_SHAPE])
    queue = ov.AsyncInferQueue(compiled, -(-batch_size // size))
    outputs: dict[int, np.ndarray] = {}
    queue.set_callback(lambda request, index: outputs.__setitem__(index, np.array(request.get_output_tensor(0).data, copy=True)))

    def call(batch: torch.Tensor) -> torch.Tensor:
        for index, part in enumerate(split_batch(batch.numpy(), size)):
            queue.start_async({0: part}, index)
        queue.wait_all()
        return torch.from_numpy(np.concatenate([outputs[i] for i in sorted(outputs)])[: len(batch)])

    return _OpenVinoCall(call, source)


def _onnxruntime_peer(model_file: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from densenet_opt.variants.onnx.providers import import_onnxruntime

    session = import_onnxruntime().InferenceSession(model_file, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: torch.from_numpy(session.run(None, {name: batch.numpy()})[0])


def _torch_compile_peer(model: torch.nn.Module, bf16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    compiled = torch.compile(model)

    def call(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return compiled(batch.contiguous(memory_format=torch.channels_last) if bf16 else batch).float()

    return call


PLUGIN = "plugin default"  # a peer's precision where OpenVINO's CPU plugin picks it


def _plugin_precision() -> str:
    """What OpenVINO's CPU plugin runs float layers in by default here: bf16 where the CPU
    has it (AVX-512 BF16 or AMX), else fp32 (its INFERENCE_PRECISION_HINT)."""
    hint = str(core().get_property("CPU", "INFERENCE_PRECISION_HINT")).lower()
    return "bf16" if "bf16" in hint or "bfloat16" in hint else "fp32"


@dataclass(frozen=True)
class Peer:
    """How to build one peer at a batch size from the ``sources`` (Sources); ``precision``
    int8, bf16, fp32 or PLUGIN (what its float layers run in)."""

    name: str
    precision: str
    note: str
    build: Callable[[Sources, int], Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class Sources:
    """What the peers are built from: the fp32 ONNX export's path, the fp32 torch model
    (a fresh copy per call) and the NNCF default int8 IR's path (built on first use)."""

    onnx_file: Callable[[], str]
    reference_model: Callable[[], torch.nn.Module]
    nncf_int8_file: Callable[[], str]


PEERS: Mapping[str, Peer] = {peer.name: peer for peer in (
    Peer("openvino", PLUGIN, "OpenVINO compile_model defaults (LATENCY hint, bf16 where the CPU has it), one request",
         lambda s, b: _openvino_peer(s.onnx_file(), b, throughput=False)),
    Peer("openvino-throughput", PLUGIN, "OpenVINO THROUGHPUT hint (benchmark_app's default), the batch split over its "
         "optimal requests, async", lambda s, b: _openvino_peer(s.onnx_file(), b, throughput=True)),
    Peer("nncf-int8", "int8", "nncf.quantize defaults, OpenVINO compile_model defaults, one request",
         lambda s, b: _openvino_peer(s.nncf_int8_file(), b, throughput=False)),
    Peer("nncf-int8-throughput", "int8", "nncf.quantize defaults, OpenVINO THROUGHPUT hint, async requests",
         lambda s, b: _openvino_peer(s.nncf_int8_file(), b, throughput=True)),
    Peer("onnxruntime", "fp32", "ONNX Runtime InferenceSession defaults, CPUExecutionProvider",
         lambda s, b: _onnxruntime_peer(s.onnx_file())),
    Peer("torch-compile", "fp32", "torch.compile(model) defaults, fp32",
         lambda s, b: _torch_compile_peer(s.reference_model(), bf16=False)),
    Peer("torch-compile-bf16", "bf16", "torch.compile, bf16 autocast, channels_last (PyTorch's CPU bf16 recipe)",
         lambda s, b: _torch_compile_peer(s.reference_model(), bf16=True)),
)}
DEFAULT_PEERS = tuple(PEERS)


def sources_of(context: Callable[[int], BuildContext]) -> Sources:
    """Sources from the suite's build contexts (``context(batch_size)``): the cached ONNX
    export and the cached NNCF default IR are the ones the suite's variants use."""
    from densenet_opt.variants.onnx.builders import fp32_model

    @functools.cache  # one build resolves the cached IR's path for every peer and batch size
    def nncf_int8_file() -> str:
        ctx = dataclasses.replace(context(1), options=parse_variant_options({"openvino_int8.accuracy_control": "off"}))
        engine = get_variant("openvino_int8").build_engine(ctx)
        engine.close()
        return engine.info["model_file"]

    return Sources(onnx_file=lambda: str(fp32_model(context(1)).path),
                   reference_model=lambda: context(1).reference_model(), nncf_int8_file=nncf_int8_file)


def check_peers(names: Sequence[str]) -> None:
    """UserError naming the first of ``names`` that is not a key of PEERS, and the known ones."""
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise UserError(f"unknown peer {unknown[0]!r}: choose from {', '.join(PEERS)}")


def build_contenders(variants: Sequence[str], peers: Sequence[str], batch_size: int,
                     context: Callable[[int], BuildContext], sources: Sources,
                     progress: Callable[[str], None] = print) -> tuple[list[Contender], list[str]]:
    """The suite's ``variants`` (built as a sweep builds them) and the ``peers`` (keys of
    PEERS) at ``batch_size``, and one sentence per engine that could not be built here (an
    unavailable variant or runtime: the comparison goes on without it). UserError for an
    unknown peer name."""
    check_peers(peers)
    built, skipped = [], []
    for variant in variants:
        progress(f"batch {batch_size}: building the suite's {variant}")
        try:
            engine = get_variant(variant).build_engine(context(batch_size))
        except VariantUnavailable as error:
            skipped.append(f"{variant}: {error}")
            continue
        precision = engine.info.get("precision", "fp32")
        note = ", ".join(f"{k}={engine.info[k]}" for k in ("precision", "performance_hint", "num_streams", "streams_chosen")
                         if k in engine.info)
        precision = "int8" if precision.startswith("int8") else precision if precision == "bf16" else "fp32"
        built.append(Contender(variant, SUITE, engine, precision, note, engine.close, compiled_from_of(engine)))
    for name in peers:
        peer = PEERS[name]
        progress(f"batch {batch_size}: building the peer {name} ({peer.note})")
        try:
            call = peer.build(sources, batch_size)
        except (VariantUnavailable, ImportError) as error:
            skipped.append(f"{name}: {error}")
            continue
        precision = _plugin_precision() if peer.precision == PLUGIN else peer.precision
        built.append(Contender(name, PEER, call, precision, peer.note, compiled_from=compiled_from_of(call)))
    return built, skipped


def time_round_robin(contenders: Sequence[Contender], batch: torch.Tensor, rounds: int, warmup: int = 2,
                     progress: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Seconds per call of each contender (by Contender.key) over ``rounds`` rounds; each round calls every
    contender once on ``batch`` (float32 [N,3,224,224]), in a fresh random order
    (measure.timing.interleaved: no engine always follows the same one). ``warmup`` untimed
    calls each first. Raises ValueError for rounds < 1."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    for contender in contenders:
        for _ in range(warmup):
            contender.call(batch)
    seconds: dict[str, list[float]] = {c.key: [] for c in contenders}
    started = time.perf_counter()
    for index, order in enumerate(interleaved(len(contenders), rounds)):
        for contender in (contenders[position] for position in order):
            tick = time.perf_counter()
            contender.call(batch)
            seconds[contender.key].append(time.perf_counter() - tick)
        if (index + 1) % 5 == 0 or index + 1 == rounds:
            left = (time.perf_counter() - started) / (index + 1) * (rounds - index - 1)
            progress(f"  round {index + 1}/{rounds}, about {left:.0f} s left")
    return seconds


@dataclass
class Result:
    """One engine at one batch size: ``seconds`` per timed call, its Fidelity (None: not
    measured), ``limit`` (None where this CPU has no such instruction set), and for a suite
    engine its speed over the fastest peer that meets the rule (``over_best_peer``, with
    ``low``-``high``, of the per-round ratios; None without such a peer)."""

    contender: Contender
    batch_size: int
    seconds: list[float]
    accuracy: Fidelity | None
    limit: ComputeLimit | None
    over_best_peer: tuple[str, float, float, float] | None = None  # (peer, ratio, low, high)
    meets: bool = field(init=False)

    def __post_init__(self) -> None:
        figure = self.accuracy.top1_of_fp32 if self.accuracy else None
        self.meets = figure is not None and figure.meets(MLPERF_TOP1_OF_FP32)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.seconds)) * 1e3

    @property
    def images_per_s(self) -> float:
        return self.batch_size * 1e3 / self.median_ms


def judge(results: Sequence[Result]) -> None:
    """Set ``over_best_peer`` of every suite result: its per-round speed ratio (peer seconds /
    suite seconds in the same round) over the peer meeting the rule with the lowest median,
    as the 20%-trimmed geometric mean with its CONFIDENCE percentile-bootstrap interval
    (verdict.judge's estimator)."""
    peers = [r for r in results if r.contender.group == PEER and r.meets]
    if not peers:
        return
    best = min(peers, key=lambda r: r.median_ms)
    for result in results:
        if result.contender.group == SUITE:
            ratios = [p / s for p, s in zip(best.seconds, result.seconds)]
            judged = verdict.judge(result.contender.name, result.batch_size, ratios, 1.0, 0.5, confidence=CONFIDENCE)
            result.over_best_peer = (best.contender.name, judged.ratio, judged.low, judged.high)


def measure_fidelity(contender: Contender, images, reference: torch.Tensor, labels: torch.Tensor | None, kind: str,
                     batch_size: int) -> Fidelity:
    """``contender``'s Fidelity over ``images`` (a tensor or an ImageStream) against the
    fp32 ``reference`` logits float32 [N,1000] and ``labels`` int64 [N] (None: agreement)."""
    return fidelity(predict(contender.call, images, batch_size), reference, labels, kind)


COLUMNS = ("batch_size", "engine", "group", "precision", "median_ms", "images_per_s", "top1_of_fp32_pct",
           "top1_of_fp32_low", "top1_of_fp32_high", "meets_mlperf_rule", "agreement_top_1", "limit_images_per_s",
           "fraction_of_limit", "best_peer", "over_best_peer", "over_best_peer_low", "over_best_peer_high", "rounds", "note")


def rows(results: Sequence[Result]) -> list[dict[str, object]]:
    """One dict per result with COLUMNS (empty where not measured): what peers.csv holds."""
    out = []
    for r in results:
        figure = r.accuracy.top1_of_fp32 if r.accuracy else None
        out.append({
            "batch_size": r.batch_size, "engine": r.contender.name, "group": r.contender.group,
            "precision": r.contender.precision, "median_ms": round(r.median_ms, 3), "images_per_s": round(r.images_per_s, 2),
            "top1_of_fp32_pct": "" if figure is None else round(figure.pct, 2),
            "top1_of_fp32_low": "" if figure is None else round(figure.low, 2),
            "top1_of_fp32_high": "" if figure is None else round(figure.high, 2),
            "meets_mlperf_rule": r.meets, "agreement_top_1": "" if r.accuracy is None else round(r.accuracy.agreement_top_1, 2),
            "limit_images_per_s": "" if r.limit is None else round(r.limit.images_per_s, 1),
            "fraction_of_limit": "" if r.limit is None else round(r.limit.fraction(r.images_per_s), 4),
            "best_peer": "" if r.over_best_peer is None else r.over_best_peer[0],
            **{key: "" if r.over_best_peer is None else round(value, 3)
               for key, value in zip(("over_best_peer", "over_best_peer_low", "over_best_peer_high"), (r.over_best_peer or (0, 0, 0, 0))[1:])},
            "rounds": len(r.seconds), "note": r.contender.note,
        })
    return out


def _csv_text(columns: Sequence[str], lines: Sequence[Mapping[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(lines)
    return buffer.getvalue()


def csv_text(results: Sequence[Result]) -> str:
    """peers.csv: COLUMNS, one line per result."""
    return _csv_text(COLUMNS, rows(results))


# --- the layer profile: where the time goes ---------------------------------------------


@dataclass
class LayerProfile:
    """The layer profile at one batch size: ``profiled``, each profiled contender with its
    ms per call by executed layer type (measure/layer_profile.py: the mean of ``calls``
    calls, one stream); ``left_out``, a clause per group (suite, peer) with no engine
    profiled, saying why."""

    batch_size: int
    calls: int
    profiled: list[tuple[Contender, dict[str, float]]]
    left_out: list[str]


def _within_rule(result: Result) -> bool:
    """Meets MLPerf's rule, or was not scored by it (the rule is not known)."""
    return result.meets or result.accuracy is None or result.accuracy.top1_of_fp32 is None


def profile_choice(results: Sequence[Result]) -> tuple[list[Result], list[str]]:
    """Of one batch size's results: the fastest (lowest median) suite engine, then the fastest
    peer, that run on OpenVINO (Contender.compiled_from) and meet MLPerf's rule where it was
    measured; and for a group with none, a clause saying why."""
    chosen, left_out = [], []
    for group, label in ((SUITE, "suite engine"), (PEER, "peer")):
        members = [r for r in results if r.contender.group == group]
        on_openvino = [r for r in members if r.contender.compiled_from is not None]
        eligible = [r for r in on_openvino if _within_rule(r)]
        if eligible:
            chosen.append(min(eligible, key=lambda r: r.median_ms))
        elif not on_openvino:
            names = ", ".join(r.contender.name for r in members) or "none timed"
            left_out.append(f"no {label} runs on OpenVINO ({names}), whose per-layer counters the profile reads")
        else:
            left_out.append(f"no {label} on OpenVINO meets MLPerf's accuracy rule "
                            f"({', '.join(r.contender.name for r in on_openvino)})")
    return chosen, left_out


def measure_layer_profile(results: Sequence[Result], batch: torch.Tensor, calls: int = PROFILE_CALLS) -> LayerProfile:
    """The LayerProfile of the engines profile_choice picks of one batch size's ``results``,
    run on ``batch`` (float32 [N,3,224,224], N that batch size) by measure.layer_profile's
    layer_profiles: each compiled again from its ``compiled_from``. ValueError for calls < 1;
    VariantUnavailable without OpenVINO."""
    chosen, left_out = profile_choice(results)
    ms = layer_profiles({r.contender.key: r.contender.compiled_from for r in chosen}, batch.numpy(), calls) if chosen else {}
    return LayerProfile(len(batch), calls, [(r.contender, ms[r.contender.key]) for r in chosen], left_out)


PROFILE_COLUMNS = ("batch_size", "engine", "group", "layer_type", "ms_per_call", "share_pct", "calls")


def profile_rows(profiles: Sequence[LayerProfile]) -> list[dict[str, object]]:
    """One dict per (batch size, engine, layer type) with PROFILE_COLUMNS: ms per call and
    its share of the engine's summed counters (%), each engine's types by ms, largest first."""
    out = []
    for profile in profiles:
        for contender, ms in profile.profiled:
            total = sum(ms.values())
            for kind, value in sorted(ms.items(), key=lambda item: -item[1]):
                out.append({"batch_size": profile.batch_size, "engine": contender.name, "group": contender.group,
                            "layer_type": kind, "ms_per_call": round(value, 4),
                            "share_pct": round(100.0 * value / total, 2) if total > 0 else 0.0, "calls": profile.calls})
    return out


def profile_csv_text(profiles: Sequence[LayerProfile]) -> str:
    """layer_profile.csv: PROFILE_COLUMNS, one line per profile_rows row (only the header
    when nothing was profiled)."""
    return _csv_text(PROFILE_COLUMNS, profile_rows(profiles))
