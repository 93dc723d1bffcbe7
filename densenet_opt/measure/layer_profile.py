"""Where an OpenVINO model's time goes: its per-layer counters, summed by layer type.

OpenVINO's CPU plugin, compiled with ``PERF_COUNT=YES``, keeps one record per executed node
of the compiled graph (after its fusions: a convolution carries the BatchNorm, ReLU and
quantization fused into it) with the wall-clock time the node took in the last call
(``request.profiling_info``, ``real_time``, microsecond resolution). layer_profiles sums
those times by node type over a few calls: the measured answer to "which kind of layer does
this engine spend its call on". The counters' sum is not the call's latency (the time
between nodes and outside the graph is in neither), and each model is profiled with one
stream and one infer request holding the whole batch, whatever mode it is timed in.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from densenet_opt.measure.timing import interleaved
from densenet_opt.variants.openvino import CompiledFrom

# Calls whose counters are averaged per model (after one untimed call).
PROFILE_CALLS = 5
# What a profile compiles with on top of the model's own properties: the counters, and one
# stream (one request on all the threads), so that one request's records are the call's.
PROFILE_PROPERTIES = {"PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}


def layer_profiles(models: Mapping[str, CompiledFrom], batch: np.ndarray,
                   calls: int = PROFILE_CALLS) -> dict[str, dict[str, float]]:
    """Per name in ``models``, the ms per call by executed layer type (OpenVINO's node type,
    "Convolution", "Concat", ...) of that model run on ``batch`` (float32, the model's input
    shape with the batch first: [N,3,224,224] for DenseNet).

    Each model is compiled from its file (CompiledFrom.compile) reshaped to ``batch``'s
    shape, with its properties and then PROFILE_PROPERTIES (PERF_COUNT=YES, one stream), and
    called once untimed; then ``calls`` rounds call every model once, in a fresh random order
    (measure.timing.interleaved: a change of the machine's speed lands on all), each call's
    ``real_time`` of the layers with status EXECUTED summed by node type. The figure is the
    mean over the calls: a profile's values sum to the mean of its counters' totals.
    ValueError for calls < 1; VariantUnavailable without OpenVINO."""
    if calls < 1:
        raise ValueError(f"calls must be at least 1, not {calls}")
    array = np.ascontiguousarray(batch, dtype=np.float32)
    requests = {}
    for name, source in models.items():
        requests[name] = source.compile(array.shape, PROFILE_PROPERTIES).create_infer_request()
        requests[name].infer({0: array})
    totals: dict[str, dict[str, float]] = {name: {} for name in models}
    named = list(requests.items())
    for order in interleaved(len(named), calls):
        for name, request in (named[index] for index in order):
            request.infer({0: array})
            profile = totals[name]
            for layer in request.profiling_info:
                if layer.status == layer.Status.EXECUTED:
                    profile[layer.node_type] = profile.get(layer.node_type, 0.0) + layer.real_time.total_seconds() * 1e3
    return {name: {kind: ms / calls for kind, ms in profile.items()} for name, profile in totals.items()}
