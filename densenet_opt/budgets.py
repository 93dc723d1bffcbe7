"""Accuracy, size and memory budgets per variant, read from one TOML file.

Every limit is optional; a variant in the sweep must have a table (an empty one
states that it has no limits). Memory limits are per device and batch size: a table
``{1 = 300, 32 = 2000}`` applies the entry of the smallest listed batch size at or
above the measured one, since memory grows with the batch.

"Within budget" has one meaning everywhere (the pytest assertions, summary.md and
``recommend``): fidelity AND model size AND memory for the row's device and batch size.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from densenet_opt.accuracy import ACCURACY, AGREEMENT, SYNTHETIC_ACCURACY, Fidelity, Top1OfFp32
from densenet_opt.errors import UserError
from densenet_opt.report import BASELINE, Row
from densenet_opt.variants import CHAIN_SEPARATOR, get_variant, registry

# The default budgets ship with the package (package data, so an installed copy has them);
# a machine kind's overrides are KIND/budgets.toml beside the file (with_kind_overrides).
BUDGETS_FILE = Path(str(resources.files("densenet_opt") / "default_budgets" / "budgets.toml"))

FIDELITY_KEYS = ("agreement_top_1_min", "top1_of_fp32_min", "relative_error_max", "accuracy_drop_max", "top5_drop_max")
MEMORY_KEYS = ("ram_mb_max_cpu", "ram_mb_max_cuda", "vram_mb_max")
KNOWN_KEYS = (*FIDELITY_KEYS, "model_size_mb_max", *MEMORY_KEYS)
# Keys an earlier version read, by their name now (one idea, one name: the results column's).
RENAMED_KEYS = {"agreement_top1_min": "agreement_top_1_min"}


@dataclass(frozen=True)
class Budget:
    """One variant's limits (``limits``: key -> number, or batch size -> number for memory
    keys) as read from ``source``. Each ``*_violations`` method returns one sentence per
    exceeded limit, naming the variant, the metric, the measured value, the limit, its key
    and the file; [] when everything checked is within."""

    variant: str
    limits: Mapping[str, object]
    source: Path

    def row_violations(self, row: Row, baseline_row: Row | None) -> list[str]:
        """Every limit a results row exceeds: fidelity (accuracy drops against
        ``baseline_row``'s fidelity; without one, only agreement and logit error), model
        size, and memory for the row's device and batch size. A value the row lacks is not
        checked (see check_row for whether everything could be)."""
        violations = []
        measured = fidelity_of(row)
        if measured is not None:
            baseline = fidelity_of(baseline_row) if baseline_row is not None else None
            violations += self.fidelity_violations(measured, baseline or measured)
        if row.model_size_mb is not None:
            violations += self.size_violations(row.model_size_mb)
        if row.ram_usage_mb is not None and row.vram_usage_mb is not None:
            violations += self.memory_violations(row.device, row.batch_size, row.ram_usage_mb, row.vram_usage_mb)
        return violations

    def fidelity_violations(self, measured: Fidelity, baseline: Fidelity) -> list[str]:
        """Agreement and logit error; with labels (kind ACCURACY) also the top-1/top-5 drop
        against ``baseline``, in percentage points."""
        checks = [
            ("agreement_top_1_min", "top-1 agreement with fp32 (%)", measured.agreement_top_1, "min"),
            # MLPerf's rule as a budget (accuracy.MLPERF_TOP1_OF_FP32 = 99): the measured figure.
            ("top1_of_fp32_min", "top-1 as % of fp32's", measured.top1_of_fp32 and measured.top1_of_fp32.pct, "min"),
            ("relative_error_max", "logit relative error", measured.relative_error, "max"),
        ]
        # Drops against labels are held to a budget only with real data; synthetic-label
        # drops are reported (README, "Synthetic weights"), the budget being agreement.
        if measured.kind == ACCURACY:
            checks += [
                ("accuracy_drop_max", "top-1 drop vs baseline (points)", baseline.top1 - measured.top1, "max"),
                ("top5_drop_max", "top-5 drop vs baseline (points)", baseline.top5 - measured.top5, "max"),
            ]
        return [v for key, label, value, kind in checks if (v := self._check(key, label, value, kind))]

    def size_violations(self, model_size_mb: float) -> list[str]:
        """The deployed artifact's size (MiB) against model_size_mb_max."""
        violation = self._check("model_size_mb_max", "model size (MB)", model_size_mb, "max")
        return [violation] if violation else []

    def memory_violations(self, device: str, batch_size: int, ram_mb: float, vram_mb: float) -> list[str]:
        """Peak RAM (MiB) against ram_mb_max_DEVICE and, on cuda, peak VRAM against
        vram_mb_max, each the entry for ``batch_size`` (limit_for_batch)."""
        checks = [(f"ram_mb_max_{device}", "RAM (MB)", ram_mb)]
        if device == "cuda":
            checks.append(("vram_mb_max", "VRAM (MB)", vram_mb))
        violations = []
        for key, label, value in checks:
            limit = limit_for_batch(self.limits.get(key), batch_size)
            if limit is not None and value > limit:
                violations.append(self._message(f"{label} at batch {batch_size}", value, f"<= {limit}", key))
        return violations

    def _check(self, key: str, label: str, value: float | None, kind: str) -> str | None:
        limit = self.limits.get(key)
        if limit is None or value is None:  # None: a figure that is undefined for this input
            return None
        if (kind == "min" and value < limit) or (kind == "max" and value > limit):
            return self._message(label, value, f"{'>=' if kind == 'min' else '<='} {limit}", key)
        return None

    def _message(self, label: str, value: float, bound: str, key: str) -> str:
        return f"{self.variant}: {label} measured {value:.4g}, budget {bound} ({key} in {self.source})"


def limit_for_batch(limit: object, batch_size: int) -> float | None:
    """The limit that applies at ``batch_size``: a number as it is, a table's entry for the
    smallest listed batch size at or above it (else the largest listed); None for none."""
    if limit is None or isinstance(limit, int | float):
        return limit
    sizes = sorted(int(size) for size in limit)  # type: ignore[union-attr]
    at_or_above = [size for size in sizes if size >= batch_size]
    return limit[str(at_or_above[0] if at_or_above else sizes[-1])]  # type: ignore[index]


def load_budgets(path: Path = BUDGETS_FILE, known_variants: tuple[str, ...] | None = None,
                 kind: str | None = None) -> dict[str, Budget]:
    """Parse and check the whole file, so a typo is reported before any measurement.
    ``known_variants`` defaults to the registry's, and a table may also name a chain
    (``["pruned_structured+onnx_int8"]``, quoted in TOML). With a machine ``kind``
    (measure.env.machine_kind), the kind's overrides (``KIND/budgets.toml`` beside
    ``path``, where it exists) replace the keys they name, table by table: a limit that
    depends on the kernels a kind runs can be tight on each kind. Raises UserError naming
    the file (and the table and key) for a missing file, invalid TOML, an unknown variant
    or key, or a value that is not a number (or, for memory keys, a table of batch size =
    number)."""
    return with_kind_overrides(_load_file(path, known_variants), kind, path, known_variants)


def with_kind_overrides(budgets: Mapping[str, Budget], kind: str | None, path: Path | None = None,
                        known_variants: tuple[str, ...] | None = None) -> dict[str, Budget]:
    """``budgets`` (loaded from ``path``; None: the file they name) with machine kind
    ``kind``'s overrides applied, where ``KIND/budgets.toml`` exists beside that file."""
    merged = dict(budgets)
    if not kind or (path is None and not merged):
        return merged
    path = path or next(iter(merged.values())).source
    overrides = path.parent / kind / path.name
    if overrides.is_file():
        for variant, budget in _load_file(overrides, known_variants).items():
            base = merged.get(variant)
            merged[variant] = Budget(variant, {**(base.limits if base else {}), **budget.limits}, overrides)
    return merged


def _load_file(path: Path, known_variants: tuple[str, ...] | None) -> dict[str, Budget]:
    if known_variants is None:
        known_variants = tuple(registry())
    if not path.is_file():
        raise UserError(f"budgets file {path} does not exist: restore it from git or create it with a table per variant")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"budgets file {path} is not valid TOML ({error}): fix that line") from None
    budgets = {}
    for variant, limits in raw.items():
        if variant not in known_variants and not _is_chain(path, variant):
            raise UserError(f"budgets file {path} has a table [{variant}] for an unknown variant{_did_you_mean(variant, known_variants)}")
        if not isinstance(limits, dict):
            raise UserError(f"budgets file {path}: {variant} must be a table ([{variant}]), not a value")
        for key, value in limits.items():
            _check_entry(path, variant, key, value)
        budgets[variant] = Budget(variant, limits, path)
    return budgets


def _is_chain(path: Path, name: str) -> bool:
    """Whether ``name`` is a valid chain; UserError naming the file for a malformed one."""
    if CHAIN_SEPARATOR not in name:
        return False
    try:
        get_variant(name)
    except UserError as error:
        raise UserError(f"budgets file {path}, table [{name!r}]: {error}") from None
    return True


def _check_entry(path: Path, variant: str, key: str, value: object) -> None:
    where = f"budgets file {path}, [{variant}] {key}"
    if key in RENAMED_KEYS:
        raise UserError(f"{where}: this key is now {RENAMED_KEYS[key]} (the results column agreement_top_1's name): "
                        "rename it in the file")
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
    """``variant``'s budget; UserError naming the file to add its table to when it has none."""
    if variant not in budgets:
        path = next(iter(budgets.values())).source if budgets else BUDGETS_FILE
        table = f'["{variant}"]' if CHAIN_SEPARATOR in variant else f"[{variant}]"  # TOML quotes a key with "+"
        raise UserError(f"variant {variant} has no budget: add a {table} table to {path} (an empty table means no limits)")
    return budgets[variant]


def fidelity_of(row: Row) -> Fidelity | None:
    """The Fidelity a sweep measured, rebuilt from a row's columns; None when the row lacks
    any of them (a fault row, a file of an older version) or its accuracy_kind is unknown."""
    values = (row.accuracy_top_1, row.accuracy_top_5, row.agreement_top_1)
    if row.accuracy_kind not in (ACCURACY, AGREEMENT, SYNTHETIC_ACCURACY) or any(value is None for value in values):
        return None
    return Fidelity(row.accuracy_kind, *values, row.logit_relative_error,  # None: undefined (accuracy.relative_error)
                    top1_of_fp32_of(row))


def top1_of_fp32_of(row: Row) -> Top1OfFp32 | None:
    """MLPerf's figure a sweep measured (report.Row's top1_of_fp32_* columns), or None when
    the row lacks it (a fault row, a file of an older version)."""
    values = (row.top1_of_fp32_pct, row.top1_of_fp32_low, row.top1_of_fp32_high)
    if any(value is None for value in values) or not row.num_samples:
        return None
    return Top1OfFp32(*values, images=row.num_samples)


@dataclass(frozen=True)
class BudgetCheck:
    """A row against its budget: ``within`` True, False (``reasons`` are the violations), or
    None when it could not be shown either way (``reasons`` say why: no budgets, no table
    for the variant, no accuracy columns, no baseline row for an accuracy drop)."""

    within: bool | None
    reasons: tuple[str, ...]


def check_row(row: Row, budgets: Mapping[str, Budget] | None, baseline_row: Row | None) -> BudgetCheck:
    """``row`` against its variant's budget in ``budgets`` (None: budgets could not be
    loaded): fidelity, model size and memory (Budget.row_violations). Any violation is
    False; within every limit it could check but unable to check fidelity is None."""
    if budgets is None:
        return BudgetCheck(None, ("budgets not loaded",))
    if row.variant not in budgets:
        return BudgetCheck(None, (f"{row.variant} has no budget table",))
    violations = budgets[row.variant].row_violations(row, baseline_row)
    if violations:
        return BudgetCheck(False, tuple(violations))
    measured = fidelity_of(row)
    if measured is None:
        return BudgetCheck(None, ("the row has no accuracy columns",))
    if measured.kind == ACCURACY and (baseline_row is None or fidelity_of(baseline_row) is None):
        return BudgetCheck(None, (f"no {BASELINE} row on {row.device} to measure the accuracy drop against",))
    return BudgetCheck(True, ())


def within_budget(row: Row, budgets: Mapping[str, Budget] | None, baseline_row: Row | None) -> bool:
    """True only when ``row`` is shown to be within every limit of its budget (check_row)."""
    return check_row(row, budgets, baseline_row).within is True


def _overrides_or_shared(budgets: Mapping[str, Budget], kind: str | None) -> Mapping[str, Budget]:
    """with_kind_overrides, or the shared budgets where the kind's file cannot be read: a
    summary is still worth writing (load_budgets names that file's fault to the tests)."""
    try:
        return with_kind_overrides(budgets, kind)
    except UserError:
        return budgets


def check_budgets(rows: Sequence[Row], budgets: Mapping[str, Budget] | None) -> dict[Row, BudgetCheck]:
    """Each measured row against its budget (check_row), with its machine kind's overrides
    (with_kind_overrides); accuracy drops are measured against the first baseline row with
    accuracy columns on the same device and machine, as the sweep measures them against
    the fp32 model."""
    baselines: dict[tuple[str, str | None], Row] = {}
    for row in rows:
        if row.variant == BASELINE and fidelity_of(row) is not None:
            baselines.setdefault((row.device, row.machine), row)
    # Each row against its machine kind's budgets (with_kind_overrides), loaded once a kind.
    by_kind = {kind: _overrides_or_shared(budgets, kind) for kind in {r.machine_kind for r in rows}} if budgets else {}
    return {row: check_row(row, by_kind.get(row.machine_kind, budgets), baselines.get((row.device, row.machine)))
            for row in rows}


def load_budgets_or_none(path: Path | None) -> tuple[dict[str, Budget] | None, str | None]:
    """The budgets at ``path`` (default BUDGETS_FILE), or None and the UserError's sentence:
    a summary is still worth writing without them."""
    try:
        return load_budgets(path or BUDGETS_FILE), None
    except UserError as error:
        return None, str(error)
