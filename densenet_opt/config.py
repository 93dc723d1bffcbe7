"""Sweep options: one table of names shared by the CLI and pytest, one validator."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from pytest_benchmark.utils import parse_compare_fail

from densenet_opt.cache import default_cache_dir  # re-exported: the CLI's and tools' default
from densenet_opt.errors import UserError
from densenet_opt.values import fraction, percent, positive_number, whole_number
from densenet_opt.variants import STACKED, get_variant, parse_variant_options, registry

DEFAULT_BATCH_SIZES = (1, 4, 8, 16, 32)
# The default of --max-cpu-pressure (%): a config timed with more of its wall time stalled
# on the CPU counts as contended (measure/contention.py), and a baseline holding one is not
# stored. Measured on the 2-core Intel Xeon VM (docs/baselines.md#contention): the suite's own
# engines read 2-15% on a quiet machine (ONNX Runtime's spinning threads beside torch's),
# one busy loop beside them 36-70%.
DEFAULT_MAX_CPU_PRESSURE = 30.0


@dataclass(frozen=True)
class Option:
    name: str
    default: str | None
    help: str
    is_flag: bool = False

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("--device", "auto", "auto (CUDA when available, else CPU), cpu or cuda"),
    Option("--batch-sizes", ",".join(map(str, DEFAULT_BATCH_SIZES)), "comma-separated batch sizes"),
    Option("--variants", "all", "comma-separated variant names (see `densenet-opt list`) or chains <transform>+<variant> such as pruned_structured+onnx_int8, or all (the registered variants, then the chains " + ", ".join(STACKED) + ")"),
    Option("--weights", "auto", "auto (torchvision's if cached locally, else synthetic), torchvision, synthetic, or PATH to a state_dict/checkpoint"),
    Option("--imagenet-val", None, "ImageNet validation folder (ImageFolder layout, or the flat ILSVRC2012 folder with a ground-truth file); default: synthetic images"),
    Option("--ground-truth", None, "ground-truth file for a flat val folder (LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt); found automatically when beside the images"),
    Option("--num-samples", "1024", "images evaluated for accuracy/agreement"),
    Option("--calibration-samples", "128", "images for quantization calibration, taken after the evaluated ones (never the same images)"),
    Option("--data-workers", "auto", "processes decoding evaluation images while accuracy is measured (0: in the main process; auto: min(4, CPU count))"),
    Option("--output-dir", "results", "where benchmark_results.csv and the benchmark JSON are written"),
    Option("--rounds", "10", "timed rounds per (variant, batch size)"),
    Option("--warmup-rounds", "2", "untimed rounds before the timed ones"),
    Option("--speedup-pairing", "on", "on: time the baseline engine of the same batch size right before each round of a variant (A B A B), and take speedup_vs_baseline from those pairs, so that the machine's speed drifting during the sweep does not enter it (costs one baseline call per round); off: divide by the baseline's own config"),
    Option("--torch-threads", "auto", "intra-op threads of torch's engines while a config is timed: auto, the cores other processes leave free just before (at most torch's default), so that eager PyTorch does not wait on a core another process holds (docs/baselines.md, \"Contention\"); or a whole number"),
    Option("--variant-options", "", "variant settings as comma-separated KEY=VALUE, e.g. pruned.amount=0.3"),
    Option("--cache-dir", None, "where synthetic weights and built artifacts are cached (default: $DENSENET_OPT_CACHE or ~/.cache/densenet_opt)"),
    Option("--time-budget", "none", "minutes the sweep may take: a config or a search that would not fit in the time left is skipped, with its reason in the results and summary.md (estimates from this run's configs and the cache dir's last run); none: no bound"),
    Option("--resume", None, "skip configs that already have a completed row in OUTPUT_DIR's CSV for this device", is_flag=True),
    Option("--allow-unsafe-weights", None, "allow a weights file that needs full unpickling (it can run code: only for files you trust)", is_flag=True),
    # The stored-baseline gate (docs/baselines.md#stored-baselines-and-the-regression-gate).
    Option("--save-baseline", None, "store this run as this machine kind's baseline for the device, in BASELINE_DIR/KIND/: pytest-benchmark's run and speedups-DEVICE.json", is_flag=True),
    Option("--compare-baseline", None, "exit 1 when a mean latency regressed against this machine kind's stored run, a speedup over the baseline variant dropped against its stored speedups, or nothing could be compared; a kind with no stored baseline is named and not compared for speed", is_flag=True),
    Option("--require-baseline", None, "--compare-baseline, and exit 1 before measuring when this machine kind has no stored baseline (without it: say so and go on)", is_flag=True),
    Option("--baseline-dir", "benchmarks_baseline", "where baselines are stored, one directory per machine kind (the repository's benchmarks_baseline/ when run from its root)"),
    Option("--max-regression", "none", "largest allowed absolute latency regression against the stored run, as pytest-benchmark's --benchmark-compare-fail expression (e.g. mean:25%), for a dedicated quiet machine: judged only when no config was timed under contention (--max-cpu-pressure); none: latencies are compared and shown, not judged (on a shared machine they measure the machine)"),
    Option("--max-speedup-drop", "0.10", "the threshold of the speedup rule: a config regresses when the 99% bootstrap interval of its speed ratio (this run's speedup over the baseline variant / the stored one) lies wholly below 1 - this (densenet_opt/verdict.py; 0.10 as asv's default factor 1.1)"),
    Option("--max-cpu-pressure", f"{DEFAULT_MAX_CPU_PRESSURE:g}", "CPU pressure (% of wall time some task waited for a CPU, Linux PSI) above which a config counts as timed under contention: flagged in the tables, and --save-baseline refuses to store such a run (100: store anyway)"),
    # Several machines in one results file (densenet_opt/cluster.py, docs/fleet.md).
    Option("--machine-label", None, "the machine column of every row this sweep writes, e.g. a10-server (letters, digits, . _ -); default: this host's name"),
)


@dataclass(frozen=True)
class SweepOptions:
    device: str
    batch_sizes: tuple[int, ...]
    variants: tuple[str, ...]
    weights: str
    imagenet_val: Path | None
    ground_truth: Path | None
    num_samples: int
    calibration_samples: int
    output_dir: Path
    rounds: int
    warmup_rounds: int
    variant_options: Mapping[str, str]
    cache_dir: Path
    allow_unsafe_weights: bool = False
    resume: bool = False
    data_workers: int | None = None  # None: data.default_num_workers()
    save_baseline: bool = False
    compare_baseline: bool = False
    require_baseline: bool = False
    baseline_dir: Path = Path("benchmarks_baseline")
    max_regression: str | None = None  # None: latencies shown, not judged
    max_speedup_drop: float = 0.10
    max_cpu_pressure: float = DEFAULT_MAX_CPU_PRESSURE
    paired_speedup: bool = True
    torch_threads: int | None = None  # --torch-threads; None: auto (measure.contention.free_cores)
    machine_label: str | None = None  # None: the host name (measure.env.machine_name)
    time_budget_s: float | None = None  # --time-budget in seconds; None: no bound

    @property
    def gated(self) -> bool:
        """Whether the sweep stores or compares a baseline."""
        return self.save_baseline or self.compare_baseline

    def to_dict(self) -> dict[str, object]:
        """JSON-safe values (paths as text, tuples as lists): how a child process (the
        memory probe, a shard) receives the options, as data, never as re-parsed flags."""
        values = dataclasses.asdict(self)
        for name, value in values.items():
            if isinstance(value, Path):
                values[name] = str(value)
            elif isinstance(value, tuple):
                values[name] = list(value)
            elif isinstance(value, Mapping):
                values[name] = dict(value)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> SweepOptions:
        """The inverse of to_dict; values were validated when first parsed."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        typed = dict(values)
        for name in ("imagenet_val", "ground_truth", "output_dir", "cache_dir", "baseline_dir"):
            if typed.get(name) is not None:
                typed[name] = Path(str(typed[name]))
        typed["batch_sizes"] = tuple(int(size) for size in typed["batch_sizes"])
        typed["variants"] = tuple(typed["variants"])
        unknown = set(typed) - set(fields)
        if unknown:
            raise ValueError(f"not sweep options: {sorted(unknown)}")
        return cls(**typed)


def add_sweep_options(add: Callable[..., object]) -> None:
    """Declare every sweep option with ``add`` (argparse's ``add_argument`` or pytest's
    ``addoption``: the same signature), so the CLI and the pytest plugin offer the same
    names, defaults and help."""
    for option in OPTIONS:
        if option.is_flag:
            add(option.name, action="store_true", help=option.help.replace("%", "%%"))
        else:
            default = f" (default: {option.default})" if option.default else ""
            # Both parsers are argparse, whose help is a %-format string.
            add(option.name, default=option.default, help=(option.help + default).replace("%", "%%"))


def option_dests() -> tuple[str, ...]:
    """The attribute names the parsed options have (argparse ``dest`` / pytest ``getoption``)."""
    return tuple(option.dest for option in OPTIONS)


def parse_positive_int(name: str, text: str, *, minimum: int = 1) -> int:
    """``text`` as an int >= ``minimum``; UserError naming the option otherwise."""
    try:
        return whole_number(text, minimum=minimum)
    except ValueError as error:
        raise UserError(f"{name} {error}") from None


def parse_workers(text: str) -> int | None:
    """--data-workers: "auto" -> None (min(4, CPU count) when used), else an int >= 0."""
    if str(text).strip().lower() == "auto":
        return None
    return parse_positive_int("--data-workers", text, minimum=0)


def parse_auto_count(name: str, text: str) -> int | None:
    """"auto" -> None, else an int >= 1; UserError naming the option otherwise."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        return whole_number(text)
    except ValueError as error:
        raise UserError(f"{name} must be auto or a whole number >= 1 ({error})") from None


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    parts = [part for part in str(text).split(",") if part.strip()]
    if not parts:
        raise UserError("--batch-sizes is empty: give comma-separated positive integers, e.g. 1,4,32")
    sizes = tuple(parse_positive_int("each of --batch-sizes", part) for part in parts)
    return tuple(dict.fromkeys(sizes))


def parse_variants(text: str) -> tuple[str, ...]:
    """Comma-separated variant names or chains (or "all": the registered variants, then the
    chains in variants.STACKED), in order, without repeats."""
    entries = [part.strip() for part in str(text).split(",") if part.strip()]
    if str(text).strip() == "" or entries == ["all"]:
        return (*registry(), *STACKED)
    if not entries:
        raise UserError(f"--variants {text!r} names no variant: give names (see `densenet-opt list`) or all")
    names = [name for entry in entries for name in ((*registry(), *STACKED) if entry == "all" else (entry,))]
    # A chain's canonical name (no spaces around its parts) names its rows and folders.
    return tuple(dict.fromkeys(get_variant(name).name for name in names))


def parse_key_values(text: str) -> dict[str, str]:
    pairs = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--variant-options expects KEY=VALUE pairs separated by commas, got {part!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def resolve_device(text: str) -> str:
    choice = str(text).strip().lower()
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda was asked for but this torch sees no CUDA device "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): use --device cpu or auto"
            )
        return "cuda"
    if choice == "cpu":
        return "cpu"
    raise UserError(f"unknown --device {text!r}: choose auto, cpu or cuda")


def existing_path(name: str, text: str | None) -> Path | None:
    if text in (None, ""):
        return None
    path = Path(str(text)).expanduser()
    if not path.exists():
        raise UserError(f"{name} {path} does not exist: pass an existing path")
    return path


def options_from_mapping(raw: Mapping[str, object]) -> SweepOptions:
    """Validate raw option values (strings, from argparse or pytest) into SweepOptions."""

    def get(name: str) -> object:
        option = next(o for o in OPTIONS if o.dest == name)
        value = raw.get(name)
        return option.default if value is None else value

    return SweepOptions(
        device=resolve_device(str(get("device"))),
        batch_sizes=parse_batch_sizes(str(get("batch_sizes"))),
        variants=parse_variants(str(get("variants"))),
        weights=str(get("weights")),
        imagenet_val=existing_path("--imagenet-val", get("imagenet_val")),
        ground_truth=existing_path("--ground-truth", get("ground_truth")),
        num_samples=parse_positive_int("--num-samples", str(get("num_samples"))),
        calibration_samples=parse_positive_int("--calibration-samples", str(get("calibration_samples"))),
        output_dir=Path(str(get("output_dir"))),
        rounds=parse_positive_int("--rounds", str(get("rounds"))),
        warmup_rounds=parse_positive_int("--warmup-rounds", str(get("warmup_rounds")), minimum=0),
        # Checked against every variant's declared options now, before any model is built;
        # kept as text so that child processes get it as plain JSON.
        variant_options=parse_variant_options(parse_key_values(str(get("variant_options")))),
        cache_dir=Path(str(get("cache_dir"))) if get("cache_dir") else default_cache_dir(),
        allow_unsafe_weights=bool(raw.get("allow_unsafe_weights")),
        resume=bool(raw.get("resume")),
        data_workers=parse_workers(str(get("data_workers"))),
        save_baseline=bool(raw.get("save_baseline")),
        compare_baseline=bool(raw.get("compare_baseline") or raw.get("require_baseline")),  # requiring one compares with it
        require_baseline=bool(raw.get("require_baseline")),
        # Absolute: pytest-benchmark resolves a relative storage against the working directory.
        baseline_dir=Path(str(get("baseline_dir"))).expanduser().resolve(),
        max_regression=parse_compare_expression(str(get("max_regression"))),
        max_speedup_drop=parse_fraction("--max-speedup-drop", str(get("max_speedup_drop"))),
        max_cpu_pressure=parse_percent("--max-cpu-pressure", str(get("max_cpu_pressure"))),
        paired_speedup=parse_on_off("--speedup-pairing", str(get("speedup_pairing"))),
        torch_threads=parse_auto_count("--torch-threads", str(get("torch_threads"))),
        machine_label=parse_machine_label("--machine-label", get("machine_label")),
        time_budget_s=parse_time_budget(str(get("time_budget"))),
    )


def parse_on_off(name: str, text: str) -> bool:
    """"on" -> True, "off" -> False (any case); UserError otherwise."""
    choice = text.strip().lower()
    if choice not in ("on", "off"):
        raise UserError(f"{name} must be on or off, got {text!r}")
    return choice == "on"


def parse_compare_expression(text: str) -> str | None:
    """A pytest-benchmark --benchmark-compare-fail expression (e.g. mean:25%, min:0.001),
    checked with pytest-benchmark's own parser, or None for "none"; UserError when it does
    not parse."""
    if text.strip().lower() in ("none", ""):
        return None
    try:
        parse_compare_fail(text)
    except Exception as error:  # argparse.ArgumentTypeError
        raise UserError(f"--max-regression {text!r} is not valid ({error}): e.g. mean:25% or min:0.005") from None
    return text


def parse_fraction(name: str, text: str) -> float:
    """A number in [0, 1); UserError naming the option otherwise."""
    try:
        return fraction(text)
    except ValueError as error:
        raise UserError(f"{name} {error}, got {text!r}") from None


def parse_time_budget(text: str) -> float | None:
    """--time-budget: "none" -> None, else positive minutes -> seconds; UserError otherwise."""
    if text.strip().lower() in ("none", ""):
        return None
    try:
        return positive_number(text) * 60
    except ValueError:
        raise UserError(f"--time-budget must be a positive number of minutes or none, got {text!r}") from None


def parse_percent(name: str, text: str) -> float:
    """A percentage in (0, 100]; UserError naming the option otherwise."""
    try:
        return percent(text)
    except ValueError as error:
        raise UserError(f"{name} {error}") from None


MACHINE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def parse_machine_label(name: str, text: object) -> str | None:
    """A machine label (the ``machine`` column): 1-63 letters, digits, ``.``, ``_`` or
    ``-``, starting with a letter or digit (valid as a host name part, a Ray resource name
    and a file name). None when not given; UserError naming the option otherwise."""
    if text is None or str(text).strip() == "":
        return None
    label = str(text).strip()
    if not MACHINE_LABEL.fullmatch(label):
        raise UserError(f"{name} {label!r} is not a machine label: use 1-63 letters, digits, '.', '_' or '-', such as a10-server")
    return label
