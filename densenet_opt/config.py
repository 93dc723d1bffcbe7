"""Sweep options: one table of names shared by the CLI and pytest, one validator."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from densenet_opt.errors import UserError

DEFAULT_BATCH_SIZES = (1, 4, 8, 16, 32)


def default_cache_dir() -> Path:
    return Path(os.environ.get("DENSENET_OPT_CACHE", Path.home() / ".cache" / "densenet_opt"))


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
    Option("--variants", "all", "comma-separated variant names (see `densenet-opt list`), or all"),
    Option("--weights", "auto", "auto (torchvision's if cached locally, else synthetic), torchvision, synthetic, or PATH to a state_dict/checkpoint"),
    Option("--imagenet-val", None, "ImageNet validation folder (ImageFolder layout, or the flat ILSVRC2012 folder with a ground-truth file); default: synthetic images"),
    Option("--ground-truth", None, "ground-truth file for a flat val folder (LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt); found automatically when beside the images"),
    Option("--num-samples", "1024", "images evaluated for accuracy/agreement"),
    Option("--calibration-samples", "128", "images for quantization calibration, taken after the evaluated ones (never the same images)"),
    Option("--data-workers", "auto", "processes decoding evaluation images while accuracy is measured (0: in the main process; auto: min(4, CPU count))"),
    Option("--output-dir", "results", "where benchmark_results.csv and the benchmark JSON are written"),
    Option("--rounds", "10", "timed rounds per (variant, batch size)"),
    Option("--warmup-rounds", "2", "untimed rounds before the timed ones"),
    Option("--variant-options", "", "variant settings as comma-separated KEY=VALUE, e.g. pruned.amount=0.3"),
    Option("--cache-dir", None, "where synthetic weights and built artifacts are cached (default: $DENSENET_OPT_CACHE or ~/.cache/densenet_opt)"),
    Option("--resume", None, "skip configs that already have a completed row in OUTPUT_DIR's CSV for this device", is_flag=True),
    Option("--allow-unsafe-weights", None, "allow a weights file that needs full unpickling (it can run code: only for files you trust)", is_flag=True),
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

    def to_args(self) -> list[str]:
        """The command-line arguments that give these options back."""
        values = {
            "device": self.device,
            "batch_sizes": ",".join(map(str, self.batch_sizes)),
            "variants": ",".join(self.variants),
            "weights": self.weights,
            "imagenet_val": self.imagenet_val,
            "ground_truth": self.ground_truth,
            "num_samples": self.num_samples,
            "calibration_samples": self.calibration_samples,
            "output_dir": self.output_dir,
            "rounds": self.rounds,
            "warmup_rounds": self.warmup_rounds,
            "variant_options": ",".join(f"{k}={v}" for k, v in self.variant_options.items()),
            "cache_dir": self.cache_dir,
            "data_workers": "auto" if self.data_workers is None else self.data_workers,
        }
        args = [f"{option.name}={values[option.dest]}" for option in OPTIONS if values.get(option.dest) not in (None, "")]
        flags = {"--allow-unsafe-weights": self.allow_unsafe_weights, "--resume": self.resume}
        return args + [flag for flag, on in flags.items() if on]


def parse_positive_int(name: str, text: str, *, minimum: int = 1) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {text!r}") from None
    if value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}")
    return value


def parse_workers(text: str) -> int | None:
    """--data-workers: "auto" -> None (min(4, CPU count) when used), else an int >= 0."""
    if str(text).strip().lower() == "auto":
        return None
    return parse_positive_int("--data-workers", text, minimum=0)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    parts = [part for part in str(text).split(",") if part.strip()]
    if not parts:
        raise UserError("--batch-sizes is empty: give comma-separated positive integers, e.g. 1,4,32")
    sizes = tuple(parse_positive_int("each of --batch-sizes", part) for part in parts)
    return tuple(dict.fromkeys(sizes))


def parse_variants(text: str) -> tuple[str, ...]:
    from densenet_opt.variants import get_variant, registry

    if str(text).strip() in ("", "all"):
        return tuple(registry())
    names = tuple(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))
    for name in names:
        get_variant(name)
    return names


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
        variant_options=parse_key_values(str(get("variant_options"))),
        cache_dir=Path(str(get("cache_dir"))) if get("cache_dir") else default_cache_dir(),
        allow_unsafe_weights=bool(raw.get("allow_unsafe_weights")),
        resume=bool(raw.get("resume")),
        data_workers=parse_workers(str(get("data_workers"))),
    )
