"""`python -m densenet_opt` / `densenet-opt`: argparse subcommands over the library.

The only package that uses argparse. Every subcommand parses its options once
(config.options_from_mapping) and calls the library: runner.run_sweep for the sweep, the
report modules for summaries and recommendations, compare and history; the fleet commands
(cli/fleet.py: shard, cluster), profile (cli/profile.py) and loadgen (cli/loadgen.py) have
modules of their own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from densenet_opt import baselines, compare, history, render, runner
from densenet_opt.cli import fleet as fleet_commands
from densenet_opt.cli import loadgen
from densenet_opt.cli import profile as profile_command
from densenet_opt.accuracy import MLPERF_TOP1_OF_FP32
from densenet_opt.recommend import recommend_from_results, recommend_qps
from densenet_opt.render import markdown, plots
from densenet_opt.report import RESULTS_FILE
from densenet_opt.config import add_sweep_options, option_dests, options_from_mapping, parse_batch_sizes
from densenet_opt.measure.env import machine_kind
from densenet_opt.errors import UserError
from densenet_opt.values import percent, positive_number
from densenet_opt.sweep import preflight
from densenet_opt.variants import CHAIN_SEPARATOR, STACKED, describe_options, registry, transforms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="densenet-opt",
        description="Benchmark DenseNet-121 inference variants (latency, throughput, accuracy, memory).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser(
        "sweep",
        help="measure every (variant, batch size) and write benchmark_results.csv",
        description="Runs the benchmark with pytest-benchmark (the same sweep as `pytest --benchmark-only`) and "
        "writes OUTPUT_DIR/benchmark_results.csv (a row per config, as it is measured), OUTPUT_DIR/benchmark.json, "
        "the plots and summary.md. Arguments after -- go to pytest.",
    )
    add_sweep_options(sweep.add_argument)
    sweep.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    commands.add_parser("list", help="list the registered variants and their --variant-options")
    add_tool_commands(commands)
    return parser


def add_tool_commands(commands: argparse._SubParsersAction) -> None:
    """Reports, profiling and several GPUs."""
    add_report_commands(commands)
    profile_command.add_command(commands)
    loadgen.add_command(commands)
    add_compare_command(commands)
    add_history_command(commands)
    fleet_commands.add_sweep_gpus_command(commands)  # after "sweep": it takes the sweep's arguments
    fleet_commands.add_sweep_cluster_command(commands)  # after "sweep" too; Ray is imported only when it runs


def add_report_commands(commands: argparse._SubParsersAction) -> None:
    """``recommend`` and ``summary``: reports from a results CSV (densenet_opt.recommend, densenet_opt.render)."""
    recommend_parser = commands.add_parser(
        "recommend",
        help="the variant and batch size with the highest throughput within memory and latency limits",
        description="Reads a results file and prints the (variant, batch size) with the highest throughput whose "
        "memory (RAM for CPU rows, VRAM for CUDA rows) and latency per batch are within the limits, and that is "
        "within its budget (accuracy, model size, memory: densenet_opt/default_budgets/budgets.toml).",
    )
    recommend_parser.add_argument("--results", type=Path, default=Path("results") / RESULTS_FILE,
                                  help=f"a {RESULTS_FILE}, or the sweep's output directory (default: %(default)s)")
    recommend_parser.add_argument("--max-memory-mb", help="largest peak memory per process: RAM on CPU, VRAM on CUDA (MiB)")
    recommend_parser.add_argument("--max-latency-ms", help="largest mean latency per batch (ms); with --loadgen-results, the p99 latency bound (ms)")
    recommend_parser.add_argument("--loadgen-results", type=Path,
                                  help="instead: the highest Server QPS whose p99 stays under --max-latency-ms, from a "
                                  "loadgen_results.csv or `densenet-opt loadgen`'s output directory")
    recommend_parser.add_argument("--device", choices=("cpu", "cuda"), help="only rows measured on this device")
    recommend_parser.add_argument("--machine", help="only rows measured by this machine (the machine column: a sweep-cluster label or host name)")
    recommend_parser.add_argument("--budgets", type=Path, help="budgets file (default: the package's densenet_opt/default_budgets/budgets.toml)")
    recommend_parser.add_argument("--ignore-budgets", action="store_true", help="consider configs outside their budget too")
    recommend_parser.add_argument(
        "--min-top1-of-fp32", default=f"{MLPERF_TOP1_OF_FP32:g}",
        help="accuracy rule: only configs whose top-1 is at least this % of the fp32 model's on the same images "
        "(MLPerf's rule; without labels, top-1 agreement with fp32), or none (default: %(default)s)")
    recommend_parser.set_defaults(handler=run_recommend)

    summary_parser = commands.add_parser(
        "summary",
        help="write the plots and summary.md for a results directory",
        description=f"Writes {plots.LATENCY_PLOT}, {plots.ACCURACY_PLOT}, {plots.MEMORY_PLOT} ({plots.FLOPS_PLOT} when "
        f"FLOPs were recorded) and {markdown.SUMMARY_FILE} beside the results file. A sweep does this at its end.",
    )
    summary_parser.add_argument("--output-dir", type=Path, default=Path("results"),
                                help="the sweep's output directory (default: %(default)s)")
    summary_parser.add_argument("--budgets", type=Path, help="budgets file (default: the package's densenet_opt/default_budgets/budgets.toml)")
    summary_parser.set_defaults(handler=run_summary)


# Sweep options that only the sweep's own timing, storage or data loader read: not offered by compare.
_NOT_FOR_COMPARE = frozenset({
    "--speedup-pairing", "--time-budget", "--resume", "--save-baseline", "--compare-baseline", "--require-baseline",
    "--baseline-dir", "--max-regression", "--max-cpu-pressure", "--machine-label", "--cache-dir", "--data-workers",
    "--torch-threads",
})
_COMPARE_DEFAULTS = {"--variants": "baseline,pruned,onnx,openvino", "--batch-sizes": "1", "--rounds": "20",
                     "--output-dir": "results-compare"}


def add_compare_command(commands: argparse._SubParsersAction) -> None:
    """``compare``: A/B of two versions on this machine, interleaved (densenet_opt/compare.py)."""
    parser = commands.add_parser(
        "compare",
        help="A/B: time two versions (revisions, trees or environments) round by round on this machine and judge each config",
        description="Builds each (variant, batch size) with two versions of the suite, each in its own worker process "
        "and artifact cache: --base (a git revision of this repository, or a source tree) and --head (default: this "
        "working tree); --base-python/--head-python run a side under another environment. The two engines of a config "
        "are timed interleaved, round by round (ABBA), so drift and other processes land on both; each config's speed "
        "ratio (base seconds / head seconds per round, its median) gets a 99% bootstrap interval and a verdict: "
        "REGRESSED when the whole interval lies below 1 - --max-speedup-drop. Writes OUTPUT_DIR/compare.csv; exit 1 "
        "when a config regressed. No stored baseline is needed: the answer for CI runners of changing kinds.",
    )

    def add(name: str, **kwargs) -> None:
        if name in _NOT_FOR_COMPARE:
            return
        if name in _COMPARE_DEFAULTS:
            kwargs["default"] = _COMPARE_DEFAULTS[name]
            kwargs["help"] = kwargs["help"].split(" (default:")[0] + f" (default: {kwargs['default']})"
        parser.add_argument(name, **kwargs)

    add_sweep_options(add)
    parser.add_argument("--base", required=True, help="the version compared with: a git revision (main, HEAD~1, a tag) or a source tree")
    parser.add_argument("--head", help="the version judged: a git revision or a source tree (default: this working tree)")
    parser.add_argument("--base-python", help="the interpreter of the base side, e.g. another venv's (default: this one)")
    parser.add_argument("--head-python", help="the interpreter of the head side (default: this one)")
    parser.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    """The ``compare`` subcommand: one verdict line per config; exit 1 when one regressed."""
    raw = {dest: value for dest, value in vars(args).items() if dest in option_dests()}
    options = options_from_mapping(raw)
    repository = Path(__file__).resolve().parent.parent.parent  # densenet_opt/cli/__init__.py -> the checkout
    with tempfile.TemporaryDirectory(prefix="densenet-opt-compare-") as scratch:
        base = compare.resolve_side("base", args.base, args.base_python, repository, Path(scratch))
        head = compare.resolve_side("head", args.head, args.head_python, repository, Path(scratch))
        raw["output_dir"] = str(options.output_dir.resolve())
        raw["weights"] = compare.shared_weights(options, Path(scratch))
        verdicts = compare.compare_sides(options, raw, base, head, max_drop=options.max_speedup_drop, scratch=Path(scratch))
    print(options.output_dir / compare.COMPARE_FILE)
    return 1 if any(v.regressed for v in verdicts) else 0


def add_history_command(commands: argparse._SubParsersAction) -> None:
    """``history``: a config's speed over a machine kind's stored runs (densenet_opt/history.py)."""
    parser = commands.add_parser(
        "history",
        help="each config's speedup and latency over the stored baselines of a machine kind, change points marked",
        description="Reads every pytest-benchmark run stored for a machine kind (each --save-baseline adds one) and "
        "prints, per config, its paired speedup over the baseline variant and median latency run by run, marking "
        "change points of the speedup (binary segmentation with Welch's t-test, as Apache Otava; needs 6 or more runs).",
    )
    parser.add_argument("--baseline-dir", type=Path, default=Path("benchmarks_baseline"), help="(default: %(default)s)")
    parser.add_argument("--kind", help="the machine kind (default: this machine's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default: %(default)s)")
    parser.add_argument("--variants", help="only these variants, comma-separated")
    parser.add_argument("--batch-sizes", help="only these batch sizes, comma-separated")
    parser.set_defaults(handler=run_history)


def run_history(args: argparse.Namespace) -> int:
    """The ``history`` subcommand; UserError for a kind with no stored run or a --baseline-dir that does not exist."""
    kind = args.kind or machine_kind(args.device)
    directory = baselines.kind_dir(args.baseline_dir, kind)
    found = history.stored_history(directory, args.device)
    if not found:
        if not args.baseline_dir.is_dir():
            raise UserError(f"{args.baseline_dir} does not exist: run from the repository root (the default --baseline-dir "
                            "is benchmarks_baseline/ in the current directory) or pass --baseline-dir")
        stored = ", ".join(baselines.stored_kinds(args.baseline_dir, args.device)) or "none"
        raise UserError(f"no stored {args.device} run of machine kind {kind} in {args.baseline_dir} (kinds stored: {stored}): "
                        "pass --kind, or store one with densenet-opt sweep --save-baseline")
    variants = set(args.variants.split(",")) if args.variants else None
    sizes = {int(size) for size in parse_batch_sizes(args.batch_sizes)} if args.batch_sizes else None
    configs = [key for key in found if (variants is None or key[0] in variants) and (sizes is None or key[1] in sizes)]
    print(f"{kind}, {args.device}: {len({p.run for points in found.values() for p in points})} stored run(s) in {directory}")
    print("\n".join(history.history_lines(found, configs)))
    return 0


def positive_limit(option: str, text: str | None) -> float | None:
    """``text`` given to ``option`` as a positive finite number, None when not given; UserError otherwise."""
    if text is None:
        return None
    try:
        return positive_number(text)
    except ValueError as error:
        raise UserError(f"{option} {error}") from None


def rule_minimum(text: str) -> float | None:
    """--min-top1-of-fp32: a percentage in (0, 100], or None for "none"; UserError otherwise."""
    if text.strip().lower() == "none":
        return None
    try:
        return percent(text)
    except ValueError as error:
        raise UserError(f"--min-top1-of-fp32 {error} (or none)") from None


def run_recommend(args: argparse.Namespace) -> int:
    """The ``recommend`` subcommand: prints the recommendation; UserError for bad input."""
    if args.loadgen_results is not None:
        ignored = [flag for flag, given in (("--max-memory-mb", args.max_memory_mb), ("--budgets", args.budgets),
                   ("--ignore-budgets", args.ignore_budgets), ("--machine", args.machine)) if given]
        if ignored:
            raise UserError(f"{', '.join(ignored)} apply to a sweep's results, not to --loadgen-results "
                            "(which takes --max-latency-ms as the p99 bound and --device): drop them")
        lines = recommend_qps(args.loadgen_results, max_p99_ms=positive_limit("--max-latency-ms", args.max_latency_ms),
                              device=args.device)
        print("\n".join(lines))
        return 0
    lines = recommend_from_results(
        args.results, max_memory_mb=positive_limit("--max-memory-mb", args.max_memory_mb),
        max_latency_ms=positive_limit("--max-latency-ms", args.max_latency_ms), device=args.device,
        budgets_path=args.budgets, ignore_budgets=args.ignore_budgets, machine=args.machine,
        min_top1_of_fp32=rule_minimum(args.min_top1_of_fp32),
    )
    print("\n".join(lines))
    return 0


def run_summary(args: argparse.Namespace) -> int:
    """The ``summary`` subcommand: prints the files written; UserError for bad input."""
    for path in render.summarize(args.output_dir, args.budgets):
        print(path)
    return 0


def list_variants() -> None:
    """Print each registered variant, its devices and its options, then how to chain them."""
    for variant in registry().values():
        print(f"{variant.name:20} {variant.description} [{', '.join(variant.devices)}]")
        for line in describe_options(variant):
            print(f"{'':22}--variant-options {line}")
    print(
        f"\nchains: <transform>{CHAIN_SEPARATOR}<variant> deploys a transform's model with another variant "
        f"(transforms: {', '.join(transforms())}); each part takes its own options; "
        f"--variants all adds {', '.join(STACKED)}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (2 with one sentence for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            list_variants()
            return 0
        if hasattr(args, "handler"):
            return args.handler(args)
        options = options_from_mapping(vars(args))
        preflight(options)
        return runner.run_sweep(options, args.pytest_args)
    except UserError as error:
        print(f"densenet-opt: error: {error}", file=sys.stderr)
        return 1 if isinstance(error, baselines.BaselineMissing) else 2


if __name__ == "__main__":
    sys.exit(main())
