#!/usr/bin/env python3
"""The suite's OpenVINO engines against a plain OpenVINO script, side by side.

Issue 14 holds ``openvino`` and ``openvino_int8`` to at least 0.95x the throughput of a
plain OpenVINO script doing the same thing outside the suite: the suite's call boundary
(a host torch batch in, host torch logits out) must not cost more than that. This script
builds each engine through the registry (as a sweep does) and, beside it, a plain OpenVINO
compiled model of the very same model file with the same properties, called the way
OpenVINO's own samples call it (a numpy array in, the output array out); the two are timed
round-robin, so a machine's drift lands on both, and it prints the median per engine and
the ratio suite / plain.

    python tools/openvino_side_by_side.py --batch-size 32 --rounds 8
    python tools/openvino_side_by_side.py --variants openvino_int8 --batch-size 1 --rounds 30
    python tools/openvino_side_by_side.py --variants openvino_int8,pruned_structured+openvino_int8
    python tools/openvino_side_by_side.py --variants openvino_int8,pruned_structured+openvino_int8 --streams 1,2

The last column is each suite engine's throughput over the first one's, measured in the
same round-robin (issue 14's stacking target: a chain against ``openvino_int8``).
``--streams 1,2`` builds every variant once per stream count (``openvino.streams``); the
plain script then runs the same parts through an ``AsyncInferQueue``, as OpenVINO's
benchmark_app does. ``--layer-profile`` then prints, per variant, where a call's time goes:
OpenVINO's per-layer counters (``PERF_COUNT=YES``) of its model at one stream, summed by
executed layer type, mean of 5 calls round-robin (ms per call; densenet_opt/measure/layer_profile.py,
as tools/peers.py profiles).

Uses the sweep's options (weights, cache dir, calibration images) with their defaults;
synthetic weights when torchvision's are not cached. Needs the cpu extra (OpenVINO, NNCF).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch

from densenet_opt.config import options_from_mapping
from densenet_opt.errors import UserError
from densenet_opt.measure.layer_profile import PROFILE_CALLS, layer_profiles
from densenet_opt.preprocessing import IMAGE_SHAPE
from densenet_opt.render.markdown import layer_profile_table
from densenet_opt.values import whole_number
from densenet_opt.variants import get_variant, parse_variant_options
from densenet_opt.variants.openvino import (
    OPENVINO, OPENVINO_INT8, CompiledFrom, compiled_from_of, import_openvino, part_size, split_batch,
)
from densenet_opt.workbench import Workbench


def plain_caller(source: CompiledFrom, array, streams: int):
    """A plain OpenVINO call of an engine's model file and properties (``source``, built
    with ``streams`` streams): one synchronous request, or the batch's parts (padded as the
    suite's engine pads them) through an AsyncInferQueue."""
    size = part_size(len(array), streams)
    compiled = source.compile([size, *IMAGE_SHAPE])
    if size == len(array):
        request = compiled.create_infer_request()
        request.infer({0: array})
        return lambda: request.infer({0: array})
    parts = split_batch(array, size)
    queue = import_openvino().AsyncInferQueue(compiled, len(parts))

    def call() -> None:
        for index, part in enumerate(parts):
            queue.start_async({0: part}, index)
        queue.wait_all()

    call()
    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=f"{OPENVINO},{OPENVINO_INT8}",
                        help="comma-separated OpenVINO variants, or chains ending in one (pruned_structured+openvino_int8)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8, help="timed calls per engine, round-robin")
    parser.add_argument("--calibration-samples", default="128")
    parser.add_argument("--variant-options", default="", help="as the sweep's, e.g. openvino_int8.accuracy_control=off")
    parser.add_argument("--streams", default="1", help="comma-separated openvino.streams values, each variant built with each")
    parser.add_argument("--layer-profile", action="store_true",
                        help="also print each variant's ms per call by layer type (OpenVINO PERF_COUNT, one stream)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.rounds < 1:
        parser.error("--batch-size and --rounds must be at least 1")
    try:
        streams_values = [whole_number(text, minimum=1) for text in args.streams.split(",")]
    except ValueError as error:
        parser.error(f"--streams: {error}")
    workbench = Workbench(options_from_mapping({"device": "cpu", "calibration_samples": args.calibration_samples,
                                                "variants": args.variants, "batch_sizes": str(args.batch_size),
                                                "variant_options": args.variant_options}))
    batch = torch.randn(args.batch_size, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    array = batch.numpy()
    callers: dict[str, object] = {}
    model_files: dict[str, CompiledFrom] = {}
    for variant in args.variants.split(","):
        for streams in streams_values:
            ctx = workbench.build_context(args.batch_size)
            ctx = dataclasses.replace(ctx, options=parse_variant_options(dict(ctx.options) | {"openvino.streams": str(streams)}))
            engine = get_variant(variant).build_engine(ctx)
            source = compiled_from_of(engine)
            if source is None:
                raise UserError(f"{variant} is not an OpenVINO engine: pass OpenVINO variants (or chains ending in one)")
            name = variant if len(streams_values) == 1 else f"{variant} streams={streams}"
            model_files.setdefault(variant, source)
            callers[f"{name} (suite)"] = lambda engine=engine: engine(batch)
            callers[f"{name} (plain)"] = plain_caller(source, array, streams)
    seconds: dict[str, list[float]] = {name: [] for name in callers}
    for _ in range(args.rounds):
        for name, call in callers.items():
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    print(f"batch {args.batch_size}, {args.rounds} rounds round-robin, median per engine")
    first = statistics.median(next(iter(seconds.values())))
    print(f"{'engine':48s} {'ms':>9s} {'samples/s':>10s} {'suite/plain':>12s} {'x first':>8s}")
    for name, times in seconds.items():
        median = statistics.median(times)
        ratio = versus_first = ""
        if name.endswith("(suite)"):
            plain = statistics.median(seconds[name.replace("(suite)", "(plain)")])
            ratio, versus_first = f"{plain / median:.3f}", f"{first / median:.3f}"
        print(f"{name:48s} {median * 1e3:9.1f} {args.batch_size / median:10.2f} {ratio:>12s} {versus_first:>8s}")
    if args.layer_profile:
        print(f"\nms per call by layer type (PERF_COUNT, one stream, mean of {PROFILE_CALLS} calls round-robin; "
              "in brackets the share of the variant's counted total)\n")
        print(layer_profile_table(layer_profiles(model_files, array)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        sys.exit(f"error: {error}")
