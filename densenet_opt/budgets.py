"""Accuracy, size and memory budgets per variant, read from one TOML file.

Every limit is optional; a variant in the sweep must have a table (an empty one
states that it has no limits). Memory limits are per device and batch size: a table
``{1 = 300, 32 = 2000}`` applies the entry of the smallest listed batch size at or
above the measured one, since memory grows with the batch.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from densenet_opt.accuracy import ACCURACY, Fidelity
from densenet_opt.errors import UserError

BUDGETS_FILE = Path(__file__).resolve().parent.parent / "benchmarks_baseline" / "budgets.toml"

FIDELITY_KEYS = ("agreement_top1_min", "relative_error_max", "accuracy_drop_max", "top5_drop_max")
MEMORY_KEYS = ("ram_mb_max_cpu", "ram_mb_max_cuda", "vram_mb_max")
KNOWN_KEYS = (*FIDELITY_KEYS, "model_size_mb_max", *MEMORY_KEYS)


@dataclass(frozen=True)
class Budget:
    variant: str
    limits: Mapping[str, object]
    source: Path

    def fidelity_violations(self, measured: Fidelity, baseline: Fidelity) -> list[str]:
        checks = [
            ("agreement_top1_min", "top-1 agreement with fp32 (%)", measured.agreement_top1, "min"),
            ("relative_error_max", "logit relative error", measured.relative_error, "max"),
        ]
        if measured.kind == ACCURACY:  # drops against labels mean something only with real data
            checks += [
                ("accuracy_drop_max", "top-1 drop vs baseline (points)", baseline.top1 - measured.top1, "max"),
                ("top5_drop_max", "top-5 drop vs baseline (points)", baseline.top5 - measured.top5, "max"),
            ]
        return [v for key, label, value, kind in checks if (v := self._check(key, label, value, kind))]

    def size_violations(self, model_size_mb: float) -> list[str]:
        violation = self._check("model_size_mb_max", "model size (MB)", model_size_mb, "max")
        return [violation] if violation else []

    def memory_violations(self, device: str, batch_size: int, ram_mb: float, vram_mb: float) -> list[str]:
        checks = [(f"ram_mb_max_{device}", "RAM (MB)", ram_mb)]
        if device == "cuda":
            checks.append(("vram_mb_max", "VRAM (MB)", vram_mb))
        violations = []
        for key, label, value in checks:
            limit = limit_for_batch(self.limits.get(key), batch_size)
            if limit is not None and value > limit:
                violations.append(self._message(f"{label} at batch {batch_size}", value, f"<= {limit}", key))
        return violations

    def _check(self, key: str, label: str, value: float, kind: str) -> str | None:
        limit = self.limits.get(key)
        if limit is None:
            return None
        if (kind == "min" and value < limit) or (kind == "max" and value > limit):
            return self._message(label, value, f"{'>=' if kind == 'min' else '<='} {limit}", key)
        return None

    def _message(self, label: str, value: float, bound: str, key: str) -> str:
        return f"{self.variant}: {label} measured {value:.4g}, budget {bound} ({key} in {self.source})"


def limit_for_batch(limit: object, batch_size: int) -> float | None:
    if limit is None or isinstance(limit, int | float):
        return limit
    sizes = sorted(int(size) for size in limit)  # type: ignore[union-attr]
    at_or_above = [size for size in sizes if size >= batch_size]
    return limit[str(at_or_above[0] if at_or_above else sizes[-1])]  # type: ignore[index]


def load_budgets(path: Path = BUDGETS_FILE, known_variants: tuple[str, ...] | None = None) -> dict[str, Budget]:
    """Parse and check the whole file, so a typo is reported before any measurement."""
    if known_variants is None:
        from densenet_opt.variants import registry

        known_variants = tuple(registry())
    if not path.is_file():
        raise UserError(f"budgets file {path} does not exist: restore it from git or create it with a table per variant")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"budgets file {path} is not valid TOML ({error}): fix that line") from None
    budgets = {}
    for variant, limits in raw.items():
        if variant not in known_variants:
            raise UserError(f"budgets file {path} has a table [{variant}] for an unknown variant{_did_you_mean(variant, known_variants)}")
        if not isinstance(limits, dict):
            raise UserError(f"budgets file {path}: {variant} must be a table ([{variant}]), not a value")
        for key, value in limits.items():
            _check_entry(path, variant, key, value)
        budgets[variant] = Budget(variant, limits, path)
    return budgets


def _check_entry(path: Path, variant: str, key: str, value: object) -> None:
    where = f"budgets file {path}, [{variant}] {key}"
    if key not in KNOWN_KEYS:
        raise UserError(f"{where}: unknown key{_did_you_mean(key, KNOWN_KEYS)}; known keys: {', '.join(KNOWN_KEYS)}")
    if isinstance(value, bool) or not isinstance(value, int | float | dict):
        raise UserError(f"{where} must be a number{' or a table of batch size = number' if key in MEMORY_KEYS else ''}")
    if isinstance(value, dict):
        if key not in MEMORY_KEYS:
            raise UserError(f"{where} must be a number, not a table")
        for size, limit in value.items():
            if not size.isdigit() or int(size) < 1 or isinstance(limit, bool) or not isinstance(limit, int | float):
                raise UserError(f"{where}: entry {size} = {limit!r} must be a positive batch size = a number")


def _did_you_mean(name: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" {name!r} (did you mean {close[0]!r}?)" if close else f" {name!r}"


def budget_for(budgets: Mapping[str, Budget], variant: str) -> Budget:
    if variant not in budgets:
        path = next(iter(budgets.values())).source if budgets else BUDGETS_FILE
        raise UserError(f"variant {variant} has no budget: add a [{variant}] table to {path} (an empty table means no limits)")
    return budgets[variant]
