#!/usr/bin/env python3
"""The suite's configs against the peers' own defaults (OpenVINO, NNCF, ONNX Runtime, torch.compile), side by side.

Builds the suite's variants and each peer (densenet_opt/peers.py says exactly how) at each
batch size, times them in one process round-robin, scores each by MLPerf's accuracy rule
(top-1 at least 99% of the fp32 model's, on --num-samples evaluation images, with a 95%
paired-bootstrap interval) and prints each suite engine's speed over the fastest peer that
meets the rule, with a 95% bootstrap interval, and each engine's fraction of this CPU's
compute limit (densenet_opt/measure/limits.py). At each batch size it then profiles the
fastest suite engine and the fastest peer that run on OpenVINO and meet the rule: OpenVINO's
per-layer counters (PERF_COUNT=YES) by layer type, each model compiled again as it was timed
but in one stream, one infer request, the mean of 5 calls round-robin
(densenet_opt/measure/layer_profile.py; --no-layer-profile skips it). Writes
OUTPUT_DIR/peers.csv and OUTPUT_DIR/layer_profile.csv (pandas) and OUTPUT_DIR/peers.md (the
tables of the kind's results page, docs/results/KIND.md, naming the machine kind, the CPU
pressure and the date, each batch size's layer profile under its table; docs/performance.md
shows the one dated latest).

    python tools/peers.py                                  # batch 32 and 1, every peer
    python tools/peers.py --batch-sizes 1 --rounds 40 --peers openvino,nncf-int8
    python tools/peers.py --variants openvino_int8,pruned_structured+openvino_int8 \\
        --variant-options openvino_int8.streams=2

Uses the sweep's defaults for the weights, cache dir and calibration images (synthetic
weights and images where no others are given: their top-1 is against the synthetic
pseudo-classes). Needs the cpu extra (OpenVINO, NNCF, ONNX Runtime). On a quiet machine
only: the figures are ratios measured in one process, but a busy machine changes which
execution mode wins (docs/results/intel-xeon_x86v4-avxvnni-vnni-bf16-fp16-amxbf16-amxint8_2c.md).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from densenet_opt import atomic, peers
from densenet_opt.accuracy import ACCURACY
from densenet_opt.config import DEFAULT_MAX_CPU_PRESSURE, options_from_mapping, parse_batch_sizes
from densenet_opt.errors import UserError
from densenet_opt.measure.contention import PressureMark, Contention
from densenet_opt.measure.env import machine_kind
from densenet_opt.measure.limits import local_compute_limit
from densenet_opt.render.markdown import PEERS_MARKDOWN, peers_tables
from densenet_opt.values import whole_number
from densenet_opt.workbench import Workbench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(peers.DEFAULT_VARIANTS),
                        help="the suite's variants or chains to set against the peers (default: %(default)s)")
    parser.add_argument("--peers", default=",".join(peers.DEFAULT_PEERS), help=f"of {', '.join(peers.PEERS)} (default: all)")
    parser.add_argument("--batch-sizes", default="32,1", help="accuracy is measured at the largest (default: %(default)s)")
    parser.add_argument("--rounds", default="20", help="timed round-robin rounds per batch size (default: %(default)s)")
    parser.add_argument("--num-samples", default="2000", help="evaluation images the accuracy rule is measured on (default: %(default)s)")
    parser.add_argument("--calibration-samples", default="128", help="calibration images of every int8 engine (default: %(default)s)")
    parser.add_argument("--variant-options", default="", help="as the sweep's, e.g. openvino_int8.streams=2")
    parser.add_argument("--no-layer-profile", action="store_true",
                        help="skip the OpenVINO layer-type profile (layer_profile.csv then holds only its header)")
    parser.add_argument("--output-dir", type=Path, default=Path("results") / "peers",
                        help="where peers.csv, layer_profile.csv and peers.md go (default: %(default)s)")
    parser.add_argument("--store", action="store_true",
                        help="also store them as this machine kind's comparison, benchmarks_baseline/KIND/peers/ (shown in "
                        "docs/performance.md by tools/performance_tables.py); refused when the rounds were timed under CPU "
                        f"pressure above {DEFAULT_MAX_CPU_PRESSURE:g}%%")
    args = parser.parse_args(argv)
    try:
        rounds = whole_number(args.rounds, minimum=1)
    except ValueError as error:
        parser.error(f"--rounds {error}")
    sizes = sorted(parse_batch_sizes(args.batch_sizes), reverse=True)  # accuracy at the largest: fewer calls
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    chosen_peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    peers.check_peers(chosen_peers)  # before minutes of reference logits
    workbench = Workbench(options_from_mapping({
        "device": "cpu", "num_samples": args.num_samples, "calibration_samples": args.calibration_samples,
        "variants": ",".join(variants), "batch_sizes": ",".join(map(str, sizes)), "variant_options": args.variant_options,
    }), progress=lambda message: print(message, file=sys.stderr, flush=True))
    sources = peers.sources_of(workbench.build_context)
    reference, kind = workbench.reference_logits, workbench.accuracy_kind
    labels = workbench.eval_set.labels if kind else None
    gmacs = workbench.reference_gflops_per_image / 2
    accuracy: dict[str, object] = {}
    results: list[peers.Result] = []
    profiles: dict[int, peers.LayerProfile] = {}
    pressures: list[str] = []
    contended = False
    for size in sizes:
        contenders, skipped = peers.build_contenders(variants, chosen_peers, size, workbench.build_context, sources, workbench.progress)
        for line in skipped:
            print(f"left out: {line}", file=sys.stderr)
        for contender in contenders:
            if contender.key not in accuracy:
                workbench.progress(f"{contender.name}: accuracy over {len(workbench.eval_set)} images at batch {size}")
                accuracy[contender.key] = peers.measure_fidelity(contender, workbench.eval_set, reference, labels,
                                                                  kind or ACCURACY, size)
        workbench.progress(f"batch {size}: {len(contenders)} engines, {rounds} rounds round-robin")
        start = PressureMark.now()
        seconds = peers.time_round_robin(contenders, workbench.input_batch(size), rounds, progress=workbench.progress)
        pressure = Contention.since(start).cpu_pressure_pct
        contended |= pressure is not None and pressure > DEFAULT_MAX_CPU_PRESSURE
        pressures.append(f"batch {size}: {'not readable' if pressure is None else f'{pressure:.0f}%'}")
        batch_results = [peers.Result(c, size, seconds[c.key], accuracy[c.key], local_compute_limit(c.precision, gmacs))
                         for c in contenders]
        peers.judge(batch_results)
        results += batch_results
        for contender in contenders:
            contender.close()
        if not args.no_layer_profile:
            workbench.progress(f"batch {size}: layer profile (OpenVINO PERF_COUNT, one stream, {peers.PROFILE_CALLS} calls)")
            profiles[size] = peers.measure_layer_profile(batch_results, workbench.input_batch(size))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    command = " ".join(["python tools/peers.py", *(argv if argv is not None else sys.argv[1:])])
    heading = (f"### Peers on `{machine_kind('cpu')}`\n\n{when}; CPU pressure while timed: {', '.join(pressures)}; "
               f"{rounds} rounds; accuracy on {len(workbench.eval_set)} images; measured by `{command}`.")
    text = peers_tables(results, heading, profiles)
    files = {peers.PEERS_FILE: peers.csv_text(results), peers.PROFILE_FILE: peers.profile_csv_text(list(profiles.values())),
             PEERS_MARKDOWN: text + "\n"}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        atomic.write_text(args.output_dir / name, content, option="--output-dir")
    print(text)
    print(f"wrote {', '.join(str(args.output_dir / name) for name in files)}", file=sys.stderr)
    if args.store:
        if contended:
            raise UserError(f"not stored: the rounds ran under CPU pressure above {DEFAULT_MAX_CPU_PRESSURE:g}% "
                            f"({', '.join(pressures)}); rerun on a quiet machine (the results are in {args.output_dir})")
        stored = Path("benchmarks_baseline") / machine_kind("cpu") / "peers"
        stored.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            atomic.write_text(stored / name, content, option="--store")
        print(f"stored in {stored}: run tools/performance_tables.py to show it in docs/results/{stored.parent.name}.md",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted (Ctrl-C): nothing was written")
