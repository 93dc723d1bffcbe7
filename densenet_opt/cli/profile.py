"""``profile``: the command line over profiling.py."""

from __future__ import annotations

import argparse

from densenet_opt.config import add_sweep_options, options_from_mapping, parse_positive_int
from densenet_opt.errors import UserError
from densenet_opt.profiling import DEFAULT_ROUNDS, PROFILES_DIR, TENSORBOARD_DIR, profile_configs
from densenet_opt.sweep import preflight


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``profile`` subcommand: the sweep's options plus the profiler's."""
    parser = commands.add_parser(
        "profile",
        help="record PyTorch profiler traces (and CUDA memory snapshots) of chosen configs",
        description=f"Builds each (variant, batch size) engine as the sweep does and records {DEFAULT_ROUNDS} calls with "
        f"torch.profiler into OUTPUT_DIR/{PROFILES_DIR}/: NAME.trace.json (open in ui.perfetto.dev), "
        f"{TENSORBOARD_DIR}/ (tensorboard --logdir), NAME.ops.txt, and with --memory-snapshot NAME.memory.pickle "
        "(pytorch.org/memory_viz). Nothing is benchmarked.",
    )
    add_sweep_options(parser.add_argument)
    parser.add_argument("--profile-rounds", default=str(DEFAULT_ROUNDS), help="engine calls recorded per config (default: %(default)s)")
    parser.add_argument("--memory-snapshot", action="store_true", help="also record a CUDA memory snapshot of each config (CUDA only)")
    parser.set_defaults(handler=run_profile)


def run_profile(args: argparse.Namespace) -> int:
    """Profile the configs the options name; returns 0, raises UserError for bad input."""
    rounds = parse_positive_int("--profile-rounds", args.profile_rounds)
    options = options_from_mapping(vars(args))
    if args.memory_snapshot and options.device != "cuda":
        raise UserError("--memory-snapshot records CUDA allocations: use it with --device cuda on a machine with a GPU")
    preflight(options)
    written = profile_configs(options, rounds, args.memory_snapshot)
    if not written:
        raise UserError(f"no config could be profiled on {options.device}: every variant asked for is unavailable here")
    for files in written:
        print(f"{files.chrome_trace}  (ui.perfetto.dev)")
        if files.memory_snapshot:
            print(f"{files.memory_snapshot}  (pytorch.org/memory_viz)")
    print(f"tensorboard --logdir {options.output_dir / PROFILES_DIR / TENSORBOARD_DIR}")
    return 0
