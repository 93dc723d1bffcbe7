"""The sweep's clock and its time budget: configs done out of the total, the time so far,
an estimate of the time left, and what to skip so that a run ends within --time-budget.

Estimates come from what this run has measured (each config's wall time, from the build
of its engine to the end of its tests), else from the last run with the same cache
directory and the same images, rounds and weights (``DEVICE-config_times.json`` there, per
variant and batch size), else, for a cache that has none, from a stored run of the main
job in this machine kind's baseline directory (the same file name), since a cold cache has
to build everything that run built. History times are scaled by this run's
pace (SweepClock.pace). A config
whose estimate does not fit in the time left is skipped with its reason; a search that
would not fit (SEARCHES: the accuracy-aware int8 searches, OpenVINO's accuracy control,
the pruned model's distillation) is not run and the variant is built with the option
that skips it, unless an earlier run of this cache directory already built the variant
with its search (then its result is cached and costs little). A config started is never
cut short: the budget decides what starts, so a run can overrun it by at most its last
config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from densenet_opt import atomic, baselines
from densenet_opt.variants import CHAIN_SEPARATOR, get_variant

CONFIG_TIMES_FILE = "config_times.json"


@dataclass(frozen=True)
class Search:
    """An expensive step a variant runs by default, and the option value that skips it.

    ``estimate_s``: its planning figure, seconds on a quiet 2-core VM
    (docs/usage.md#how-long-the-main-job-takes), used only to decide whether it fits in the time left."""

    variant: str
    option: str
    skip_value: str
    estimate_s: float
    what: str

    @property
    def key(self) -> str:
        return f"{self.variant}.{self.option}"


SEARCHES: tuple[Search, ...] = (
    # The measured figures on 2-core VMs (docs/usage.md#how-long-the-main-job-takes): a calibration and an AOTInductor compile
    # per point, 26 minutes for six points; the ONNX search, about 8 minutes; NNCF ranking
    # 187 operations, about 25 minutes, then 1-2 minutes per reverted one; the recovery,
    # capped by pruned_structured.distill_time_limit (900 s).
    Search("int8", "float_modules", "0", 26 * 60, "the accuracy-aware int8 search (an AOTInductor compile per point)"),
    Search("onnx_int8", "float_nodes", "0", 8 * 60, "the accuracy-aware int8 search"),
    Search("openvino_int8", "accuracy_control", "off", 30 * 60, "NNCF's accuracy control"),
    Search("pruned_structured", "distill", "off", 15 * 60, "the distillation that recovers accuracy"),
)


def searches_of(variant: str, given: Mapping[str, str]) -> list[Search]:
    """The searches ``variant`` (a chain: each part) runs with the options ``given``
    (--variant-options): those whose option the user did not set, under the part's own
    name or its shared prefix (``onnx.float_nodes`` sets onnx_int8's too)."""
    searches = []
    for part in variant.split(CHAIN_SEPARATOR):
        prefix = get_variant(part).shared_prefix
        for search in SEARCHES:
            if search.variant == part and search.key not in given and f"{prefix}.{search.option}" not in given:
                searches.append(search)
    return searches


def search_key(variant: str, search: Search) -> str:
    """How the history names a search run for ``variant`` (a chain's is its own artifact)."""
    return f"{variant}|{search.key}"


def _median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def _minutes(seconds: float) -> str:
    seconds = float(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"


class SweepClock:
    """Time so far, time left and the time budget of one sweep over ``configs``
    ((variant, batch size) in the order they run).

    ``time_budget_s``: None for no bound. ``history``: seconds per config key from an
    earlier run (load_history). ``clock``: a monotonic clock in seconds (tests pass one)."""

    def __init__(self, configs: Sequence[tuple[str, int]], time_budget_s: float | None,
                 history: Mapping[str, float] | None = None, searched: Sequence[str] = (), clock=time.monotonic) -> None:
        self.configs = list(configs)
        self.time_budget_s = time_budget_s
        self.history = dict(history or {})
        self.searched = set(searched)  # search_key()s an earlier run or this one completed
        self.search_configs: set[tuple[str, int]] = set()  # configs that ran a search (not history)
        self.clock = clock
        self.started = clock()
        self.measured: dict[tuple[str, int], float] = {}
        self.skipped: list[tuple[str, int]] = []
        self.started_variants: set[str] = set()
        self._searches: list[str] = []
        self._current: tuple[tuple[str, int], float] | None = None

    @staticmethod
    def key(variant: str, batch_size: int) -> str:
        return f"{variant}@{batch_size}"

    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def time_left_s(self) -> float | None:
        """Seconds of the budget left (negative when overrun); None without a budget."""
        return None if self.time_budget_s is None else self.time_budget_s - self.elapsed_s()

    def estimate_s(self, variant: str, batch_size: int) -> float | None:
        """The expected wall time of one config: its own time in this run (a repeat), else
        its time in the history scaled by this run's pace; else, from this run: for a
        variant not started yet, the median of the variants' first configs (a first config
        also pays for the variant's accuracy pass and its build; one that ran a search is
        left out); for a later config (after its variant's first in the run's order), the
        mean of the variant's later configs, else the median of the other variants' later
        configs, else its variant's first config's time (for a variant not started: the
        first configs' median). Before this run has measured anything, a config the
        history lacks takes the mean of its variant's other batch sizes in the history,
        else the history's median (so a run with any history estimates from its first
        line). None before anything is known."""
        config = (variant, batch_size)
        if config in self.measured:
            return self.measured[config]
        if self.key(*config) in self.history:
            return self.history[self.key(*config)] * self.pace()
        by_variant: dict[str, list[float]] = {}
        for (name, _), seconds in self.measured.items():
            by_variant.setdefault(name, []).append(seconds)
        if not by_variant:
            return self._history_fallback(variant)
        searched_firsts = {name for name, _ in self.search_configs}
        firsts = [times[0] for name, times in by_variant.items() if name not in searched_firsts]
        laters = [s for times in by_variant.values() for s in times[1:]]
        own = by_variant.get(variant)
        if own is None:
            first = next((c for c in self.remaining() if c[0] == variant), config)
            return _median(firsts) if first == config else (_median(laters) or _median(firsts))
        if own[1:]:
            return sum(own[1:]) / len(own[1:])
        return _median(laters) or own[0]

    def _history_fallback(self, variant: str) -> float | None:
        """A config the history lacks, before this run measured anything: the mean of
        ``variant``'s batch sizes in the history, else the median of all its times."""
        own = [s for key, s in self.history.items() if key.rpartition("@")[0] == variant]
        if own:
            return sum(own) / len(own)
        return _median(list(self.history.values()))

    def pace(self) -> float:
        """How this run compares with the history it estimates from: the median of (time
        this run took / time in the history) over the configs both have, 1.0 before any.
        A history measured on a busier or slower machine then stops misleading the budget
        after the first config."""
        ratios = [seconds / self.history[self.key(*config)] for config, seconds in self.measured.items()
                  if self.history.get(self.key(*config), 0) > 0]
        return _median(ratios) or 1.0

    def remaining(self) -> list[tuple[str, int]]:
        """Configs neither measured nor skipped, the one running included."""
        return [c for c in self.configs if c not in self.measured and c not in self.skipped]

    def time_left_estimate_s(self) -> float | None:
        """Seconds the remaining configs are expected to take (estimate_s each, minus what
        the running one has spent); None while any of them has no estimate."""
        total = 0.0
        for config in self.remaining():
            estimate = self.estimate_s(*config)
            if estimate is None:
                return None
            if self._current is not None and self._current[0] == config:
                estimate = max(0.0, estimate - (self.clock() - self._current[1]))
            total += estimate
        return total

    def status(self) -> str:
        """"[3/40, 4m12s so far, about 31m00s left, budget 50m00s]": the count includes the
        config about to start."""
        done = len(self.measured) + len(self.skipped)
        left = self.time_left_estimate_s()
        parts = [f"{min(done + 1, len(self.configs))}/{len(self.configs)}", f"{_minutes(self.elapsed_s())} so far",
                 "time left unknown until a config finishes" if left is None else f"about {_minutes(left)} left"]
        if self.time_budget_s is not None:
            parts.append(f"budget {_minutes(self.time_budget_s)}")
        return "[" + ", ".join(parts) + "]"

    def skip_reason(self, variant: str, batch_size: int) -> str | None:
        """Why a config must not start under the budget, or None when it may: the budget
        is spent, or its estimate exceeds the time left."""
        left = self.time_left_s()
        if left is None:
            return None
        if left <= 0:
            return f"the time budget of {_minutes(self.time_budget_s)} is spent ({_minutes(self.elapsed_s())} so far)"
        estimate = self.estimate_s(variant, batch_size)
        if estimate is not None and estimate > left:
            return (f"it would take about {_minutes(estimate)} and {_minutes(left)} of the "
                    f"{_minutes(self.time_budget_s)} time budget is left")
        return None

    def searches_to_skip(self, variant: str, batch_size: int, given: Mapping[str, str]) -> list[tuple[Search, str]]:
        """The searches of ``variant`` not to run under the budget, each with its reason:
        those not already built by an earlier run (cached) whose estimate, added to what
        the remaining configs are expected to take, exceeds the time left: every config
        is measured before any search is paid for. Decided at the variant's first config
        only: its later configs are built the same way (a search's result serves them all)."""
        left = self.time_left_s()
        if left is None or variant in self.started_variants:
            return []
        # What the run still has to do without searches: every remaining config (this one
        # included), or this one alone while some have no estimate yet.
        rest = self.time_left_estimate_s()
        rest = rest if rest is not None else (self.estimate_s(variant, batch_size) or 0.0)
        skips = []
        for search in self.searches_to_run(variant, given):
            if search.estimate_s + rest > left:
                skips.append((search, f"{search.what} takes about {_minutes(search.estimate_s)} on 2 cores, and the "
                                      f"configs left need about {_minutes(rest)} of the {_minutes(left)} left in the time "
                                      f"budget: built with {search.key}={search.skip_value}"))
        return skips

    def searches_to_run(self, variant: str, given: Mapping[str, str]) -> list[Search]:
        """The searches building ``variant`` would run now: those of searches_of that no
        earlier config (of this run or of the history's) has completed, and only at the
        variant's first config (its later ones reuse the result)."""
        if variant in self.started_variants:
            return []
        return [s for s in searches_of(variant, given) if search_key(variant, s) not in self.searched]

    def start(self, variant: str, batch_size: int, searches: Sequence[Search] = ()) -> None:
        """A config starts; ``searches``: those its build runs (searches_to_run, less the
        ones skipped for time)."""
        self.started_variants.add(variant)
        self._current = ((variant, batch_size), self.clock())
        self._searches = [search_key(variant, s) for s in searches]

    def finish(self, built: bool = True, shared_s: float = 0.0) -> float | None:
        """The running config ends: its wall time less ``shared_s`` (what it computed for
        every config: the weights, the reference logits) is recorded (seconds, returned)
        and, when its engine was ``built``, the searches its build ran count as completed."""
        if self._current is None:
            return None
        config, started = self._current
        self._current = None
        self.measured[config] = max(0.0, self.clock() - started - shared_s)
        if self._searches and built:  # its build ran searches: completed now, and not a time to estimate from
            self.searched.update(self._searches)
            self.search_configs.add(config)
        self._searches = []
        return self.measured[config]

    def skip(self, variant: str, batch_size: int) -> None:
        """A config not started (the time budget) or not measurable here."""
        self._current = None
        self._searches = []
        self.skipped.append((variant, batch_size))


def history_path(cache_dir: Path, device: str) -> Path:
    return Path(cache_dir) / f"{device}-{CONFIG_TIMES_FILE}"


def history_profile(options) -> str:
    """What makes config times comparable between runs (``options``: SweepOptions): the
    images evaluated, the rounds and the weights; the history keeps one entry each."""
    return (f"samples={options.num_samples};calibration={options.calibration_samples};rounds={options.rounds}"
            f"+{options.warmup_rounds};weights={options.weights};data={options.imagenet_val or 'synthetic'}")


def load_history(cache_dir: Path, device: str, profile: str) -> tuple[dict[str, float], list[str]]:
    """The config times and the searched variants an earlier run of ``profile`` stored in
    ``cache_dir``; empty when there are none or the file is unreadable (only estimates)."""
    try:
        return _entry(json.loads(history_path(cache_dir, device).read_text()), profile)
    except (OSError, ValueError):
        return {}, []


def _entry(document: object, profile: str) -> tuple[dict[str, float], list[str]]:
    """``profile``'s times and searches in a history document; empty where it has none
    or they are malformed."""
    try:
        entry = document[profile]  # type: ignore[index]
        times = {str(k): float(v) for k, v in entry["seconds"].items() if float(v) >= 0}
        return times, [str(v) for v in entry.get("searched", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}, []


def estimates(options) -> tuple[dict[str, float], list[str]]:
    """The config times and searched variants to start ``options``' sweep with (a
    SweepOptions): the cache dir's history, else the one stored with this machine kind's
    baseline, with the variants searched left empty (a cold cache has searched nothing)."""
    profile = history_profile(options)
    times, searched = load_history(options.cache_dir, options.device, profile)
    if times:
        return times, searched
    # Only this kind's: another kind's times, unscaled before a config finishes, could skip
    # the first configs for a machine twice as fast.
    stored, _ = load_history(baselines.this_kind_dir(options.baseline_dir, options.device), options.device, profile)
    return stored, []


def save_history(cache_dir: Path, device: str, profile: str, clock: SweepClock) -> None:
    """Merge this run's config times and completed searches into ``cache_dir``'s history
    of ``profile``; a write that fails is ignored (the history only improves estimates).
    A config whose build ran a search is left out: later runs find the search cached."""
    path = history_path(cache_dir, device)
    try:
        document = json.loads(path.read_text())
        if not isinstance(document, dict):
            document = {}
    except (OSError, ValueError):
        document = {}
    times, before = _entry(document, profile)
    times.update({SweepClock.key(*config): round(seconds, 1) for config, seconds in clock.measured.items()
                  if config not in clock.search_configs})
    document[profile] = {"seconds": times, "searched": sorted({*before, *clock.searched})}
    try:
        atomic.write_text(path, json.dumps(document, indent=1, sort_keys=True) + "\n", option="--cache-dir")
    except Exception:  # noqa: BLE001 - an estimate is not worth failing a sweep for
        pass


def store_history(options, directory: Path) -> bool:
    """Copy this run's profile (history_profile of ``options``, a SweepOptions) from the
    cache dir's history into ``directory`` (a baseline's kind_dir), whose history a cold
    cache starts its estimates from (estimates); the searches are left out (a cold cache
    has run none). Returns False when the cache has none. Raises UserError when the file
    cannot be written."""
    profile = history_profile(options)
    times, _ = load_history(options.cache_dir, options.device, profile)
    if not times:
        return False
    path = history_path(directory, options.device)
    try:
        document = json.loads(path.read_text())
        document = document if isinstance(document, dict) else {}
    except (OSError, ValueError):
        document = {}
    stored, _ = _entry(document, profile)
    document[profile] = {"seconds": {**stored, **times}, "searched": []}  # a partial run updates, never drops, stored configs
    atomic.write_text(path, json.dumps(document, indent=1, sort_keys=True) + "\n", option="--baseline-dir")
    return True
