"""`python -m densenet_opt` / `densenet-opt`: the sweep, the variant list, the probe."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from densenet_opt.config import OPTIONS, SweepOptions, options_from_mapping
from densenet_opt.errors import UserError
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
    sweep.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    commands.add_parser("list", help="list the registered variants")
    return parser


def run_sweep(options: SweepOptions, pytest_args: list[str]) -> int:
    import pytest

    if not BENCHMARK_TESTS.exists():
        raise UserError(f"{BENCHMARK_TESTS} is missing: run the sweep from a checkout of densenet-opt (pip install -e .)")
    options.output_dir.mkdir(parents=True, exist_ok=True)
    args = [
        str(BENCHMARK_TESTS),
        f"--rootdir={REPO_ROOT}",
        "--benchmark-only",
        f"--benchmark-json={options.output_dir / BENCHMARK_JSON}",
        "-p", "no:cacheprovider",
        *options.to_args(),
        *pytest_args,
    ]
    code = pytest.main(args)
    results = options.output_dir / "benchmark_results.csv"
    print(f"\nresults: {results}{'' if results.exists() else ' (no row was measured)'}")
    return int(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            from densenet_opt.variants import registry

            for variant in registry().values():
                print(f"{variant.name:20} {variant.description} [{', '.join(variant.devices)}]")
            return 0
        options = options_from_mapping(vars(args))
        preflight(options)
        return run_sweep(options, args.pytest_args)
    except UserError as error:
        print(f"densenet-opt: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
