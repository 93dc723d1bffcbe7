"""`python -m densenet_opt` / `densenet-opt`: the sweep, the variant list, the probe."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from pytest_benchmark.session import PerformanceRegression
from pytest_benchmark.utils import get_machine_id

from densenet_opt import baselines
from densenet_opt.config import OPTIONS, SweepOptions, options_from_mapping
from densenet_opt.errors import UserError
from densenet_opt.measure.env import device_name
from densenet_opt.report import RESULTS_FILE, read_rows
from densenet_opt.sweep import preflight

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARK_TESTS = REPO_ROOT / "tests" / "test_benchmarks.py"
BENCHMARK_JSON = "benchmark.json"


def add_sweep_options(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        if option.is_flag:
            parser.add_argument(option.name, action="store_true", help=option.help)
        else:
            default = f" (default: {option.default})" if option.default else ""
            parser.add_argument(option.name, default=option.default, help=option.help + default)


def options_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    add_sweep_options(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="densenet-opt",
        description="Benchmark DenseNet-121 inference variants (latency, throughput, accuracy, memory).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser(
        "sweep",
        help="measure every (variant, batch size) and write benchmark_results.csv",
        description="Runs the benchmark tests with pytest-benchmark and writes OUTPUT_DIR/benchmark_results.csv "
        "(a row per config, as it is measured) and OUTPUT_DIR/benchmark.json. Arguments after -- go to pytest.",
    )
    add_sweep_options(sweep)
    gate = sweep.add_argument_group("stored baselines (benchmarks_baseline/)")
    gate.add_argument("--save-baseline", action="store_true",
                      help="store this run as the device's baseline: pytest-benchmark JSON (per machine) and speedups-DEVICE.json")
    gate.add_argument("--compare-baseline", action="store_true",
                      help="fail (exit 1) when latency regressed against this machine's stored run, or a speedup over "
                           "the baseline variant dropped against the stored speedups (checked on any machine)")
    gate.add_argument("--baseline-dir", type=Path, default=baselines.BASELINE_DIR,
                      help="where baselines are stored (default: the repository's benchmarks_baseline/)")
    gate.add_argument("--max-regression", default=baselines.DEFAULT_MAX_REGRESSION,
                      help="pytest-benchmark --benchmark-compare-fail expression (default: %(default)s)")
    gate.add_argument("--max-speedup-drop", type=float, default=baselines.DEFAULT_MAX_SPEEDUP_DROP,
                      help="largest allowed fractional drop of a speedup (default: %(default)s)")
    sweep.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    commands.add_parser("list", help="list the registered variants")
    add_tool_commands(commands)
    return parser


def add_tool_commands(commands: argparse._SubParsersAction) -> None:
    """Reports, profiling and several GPUs: subcommands that live in their own modules."""
    from densenet_opt import profiling, shard, summary

    summary.add_commands(commands)
    profiling.add_command(commands, add_sweep_options)
    shard.add_command(commands)  # after "sweep": it takes the sweep's arguments


def run_sweep(options: SweepOptions, pytest_args: list[str], gate: argparse.Namespace | None = None) -> int:
    import pytest

    if not BENCHMARK_TESTS.exists():
        raise UserError(f"{BENCHMARK_TESTS} is missing: run the sweep from a checkout of densenet-opt (pip install -e .)")
    options.output_dir.mkdir(parents=True, exist_ok=True)
    gate_args, stored_speedups = _baseline_args(options, gate)
    args = [
        str(BENCHMARK_TESTS),
        f"--rootdir={REPO_ROOT}",
        "--benchmark-only",
        f"--benchmark-json={options.output_dir / BENCHMARK_JSON}",
        "-p", "no:cacheprovider",
        *options.to_args(),
        *gate_args,
        *pytest_args,
    ]
    try:
        code = int(pytest.main(args))
    except PerformanceRegression:  # pytest-benchmark has printed which benchmarks regressed
        code = 1
    results = options.output_dir / RESULTS_FILE
    print(f"\nresults: {results}{'' if results.exists() else ' (no row was measured)'}")
    from densenet_opt.summary import summarize_after_sweep

    summarize_after_sweep(options.output_dir)
    rows = read_rows(results)
    if gate is not None and gate.save_baseline and code == 0:
        path = baselines.speedups_file(options.device, gate.baseline_dir)
        baselines.save_speedups(rows, options.device, path)
        print(f"stored speedups over the baseline variant: {path}")
    if stored_speedups is not None:
        problems = baselines.speedup_regressions(rows, options.device, stored_speedups, gate.max_speedup_drop)
        for problem in problems:
            print(f"SPEEDUP REGRESSION: {problem}")
        if problems:
            code = code or 1
    return code


def _baseline_args(options: SweepOptions, gate: argparse.Namespace | None) -> tuple[list[str], dict | None]:
    """pytest-benchmark arguments for saving or comparing, and the stored speedups to check."""
    if gate is None or not (gate.save_baseline or gate.compare_baseline):
        return [], None
    # Absolute: pytest-benchmark resolves a relative storage against the working directory.
    storage = Path(gate.baseline_dir).resolve()
    args = [f"--benchmark-storage=file://{storage}"]
    if gate.save_baseline:
        args.append(f"--benchmark-save={options.device}")
    stored_speedups = None
    if gate.compare_baseline:
        runs = [run for run in baselines.check_benchmark_storage(storage) if run.stem.endswith(f"_{options.device}")]
        # pytest-benchmark's machine id is only OS, Python and word size: the device must match too.
        stored_on = baselines.stored_device_name(runs[-1]) if runs else None
        here = device_name(torch.device(options.device))
        if runs and stored_on in (None, here):
            # --benchmark-compare takes a run, not a path: the start of its name, which
            # pytest-benchmark looks up in this machine's folder of the storage. The number
            # and the device, since runs stored on two machines of one kind can share a number.
            args += [f"--benchmark-compare={runs[-1].stem}", f"--benchmark-compare-fail={gate.max_regression}"]
            print(f"comparing latency with {runs[-1]}")
        elif runs:
            print(f"the stored run {runs[-1]} was measured on {stored_on}, this is {here}: "
                  "absolute times do not compare across machines, comparing speedups only")
        else:
            print(f"no stored {options.device} run for this machine kind ({get_machine_id()}) in {storage}: comparing speedups only")
        speedups_path = baselines.speedups_file(options.device, storage)
        stored_speedups = baselines.load_speedups(speedups_path)
        print(f"comparing speedups over the baseline variant with {speedups_path}")
    return args, stored_speedups


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            from densenet_opt.variants import registry

            for variant in registry().values():
                print(f"{variant.name:20} {variant.description} [{', '.join(variant.devices)}]")
            return 0
        if hasattr(args, "handler"):
            return args.handler(args)
        options = options_from_mapping(vars(args))
        preflight(options)
        return run_sweep(options, args.pytest_args, args)
    except UserError as error:
        print(f"densenet-opt: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
