"""``sweep-gpus`` and ``sweep-cluster``: the command lines over shard.py and cluster.py."""

from __future__ import annotations

import argparse

from densenet_opt.cluster import DEVICES, MachineSpec, parse_machines, refuse_baselines, sweep_on_cluster
from densenet_opt.config import options_from_mapping, parse_positive_int
from densenet_opt.errors import UserError
from densenet_opt.measure.env import machine_name
from densenet_opt.render import fleet
from densenet_opt.report import BENCHMARK_JSON, RESULTS_FILE
from densenet_opt.runner import run_sweep
from densenet_opt.shard import parse_gpus, sweep_on_gpus
from densenet_opt.sweep import preflight
from densenet_opt.workbench import Workbench


def add_sweep_gpus_command(commands: argparse._SubParsersAction) -> None:
    """The ``sweep-gpus`` subcommand: the sweep's options plus --gpus."""
    parser = commands.add_parser(
        "sweep-gpus",
        parents=[commands.choices["sweep"]],  # every sweep option, the baseline gate, pytest args after --
        conflict_handler="resolve",
        help="the sweep over every visible GPU at once, merged into one results file",
        description="Runs one `sweep` process per GPU (pinned with CUDA_VISIBLE_DEVICES) on a share of the "
        "(variant, batch size) configs, each into OUTPUT_DIR/shards/gpuN-K/, then merges their results into "
        f"OUTPUT_DIR/{RESULTS_FILE} and OUTPUT_DIR/{BENCHMARK_JSON}. With one GPU or on the CPU it is a plain sweep.",
    )
    parser.add_argument("--gpus", default="all",
                        help="all (every GPU CUDA_VISIBLE_DEVICES shows), or a comma-separated list such as 0,1 (default: %(default)s)")
    parser.set_defaults(handler=run_sweep_gpus)


def run_sweep_gpus(args: argparse.Namespace) -> int:
    """The ``sweep-gpus`` subcommand; returns the exit code, raises UserError for bad input."""
    options = options_from_mapping(vars(args))
    preflight(options)
    if options.device != "cuda" and args.gpus.strip() not in ("", "all"):
        raise UserError(f"--gpus {args.gpus} needs the sweep on CUDA, but it runs on {options.device}: drop --gpus or use --device cuda")
    gpus = parse_gpus(args.gpus) if options.device == "cuda" else []
    # One visible GPU is a plain sweep; one GPU named with --gpus still needs its own pinned process.
    if options.device != "cuda" or (len(gpus) <= 1 and args.gpus.strip() in ("", "all")):
        return run_sweep(options, args.pytest_args)
    _ = Workbench(options).weights  # resolve (and cache) the weights once, not in every process at once
    return sweep_on_gpus(options, gpus, args.pytest_args)


def add_sweep_cluster_command(commands: argparse._SubParsersAction) -> None:
    """The ``sweep-cluster`` subcommand: the sweep's options plus --address and --machines."""
    parser = commands.add_parser(
        "sweep-cluster",
        parents=[commands.choices["sweep"]],  # every sweep option, pytest args after --
        conflict_handler="resolve",
        help="the sweep on several machines of a Ray cluster, rows keyed by machine, one cross-device report",
        description="Runs the sweep as Ray tasks, one per (machine, device) shard, placed on the nodes that offer "
        "the custom resource machine:LABEL, and merges every machine's rows into OUTPUT_DIR/"
        f"{RESULTS_FILE} (a machine column), its pytest-benchmark JSON into OUTPUT_DIR/benchmark-LABEL.json, and "
        f"writes OUTPUT_DIR/{fleet.FLEET_FILE} and {fleet.FLEET_PLOT}. Without --address it starts a local Ray "
        "instance offering the --machines resources. Needs Ray: pip install -e .[cluster].",
    )
    parser.add_argument("--address", default=None,
                        help="the Ray cluster: auto (the one `ray start` started here), HOST:6379, or ray://HOST:10001 "
                        "(default: a local Ray instance)")
    parser.add_argument("--machines", default=None,
                        help="comma-separated LABEL[:DEVICE[:ACCELERATOR_TYPE]], e.g. epyc,graviton,a10:cuda:A10G; each "
                        "LABEL's nodes offer the Ray resource machine:LABEL (default: every machine:* resource of the "
                        "cluster; locally, this host, named by --machine-label)")
    parser.add_argument("--num-cpus", default=None, help="logical CPUs of a local Ray instance (default: Ray's, all)")
    parser.set_defaults(handler=run_sweep_cluster)


def run_sweep_cluster(args: argparse.Namespace) -> int:
    """The ``sweep-cluster`` subcommand; returns the exit code, raises UserError for bad input."""
    raw_device = str(args.device or "auto").strip().lower()
    if raw_device not in ("auto", *DEVICES):
        raise UserError(f"unknown --device {args.device!r}: choose auto, cpu or cuda")
    # The device is the machines' own: it is not resolved against the driver's torch.
    options = options_from_mapping({**vars(args), "device": "cpu"})
    refuse_baselines(options)
    specs = parse_machines(args.machines)
    if specs and options.machine_label:
        raise UserError("--machine-label names the one local machine: with --machines, each machine is named there")
    if not specs and not args.address:
        specs = [MachineSpec(machine_name(options.machine_label))]
    num_cpus = None if args.num_cpus is None else parse_positive_int("--num-cpus", args.num_cpus)
    if not args.address:
        preflight(options)  # the paths are this machine's: check them before starting Ray
    else:
        options.output_dir.mkdir(parents=True, exist_ok=True)
    return sweep_on_cluster(
        options, specs, args.pytest_args, address=args.address, device=None if raw_device == "auto" else raw_device,
        node_cache=args.cache_dir is None, num_cpus=num_cpus,
    )
