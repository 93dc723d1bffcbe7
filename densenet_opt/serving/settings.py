"""The LoadGen scenarios' options: one dataclass, its defaults (shorter than MLPerf's), one validator.

MLPerf Inference's rules ask for runs of at least 600 s (``min_duration``) and, per
scenario, at least 1024 queries (SingleStream), 270,336 queries (Server, ResNet-50) or
24,576 samples (Offline) (LoadGen's ``mlperf.conf`` and ``test_settings.h``). On a 2-core
CPU that is hours per engine; the defaults here are 10 s and 256 / 400 / 1 queries (MultiStream: MLPerf's 662), so a
scenario takes tens of seconds and a Server search a few minutes. They are options, and
a result measured with them is *not* an MLPerf-compliant result: LoadGen still judges
each run VALID or INVALID against the settings it was given (duration, query count,
early stopping, the latency bound), and every row says which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from densenet_opt.errors import UserError
from densenet_opt.values import finite_number, positive_number, whole_number

SINGLE_STREAM = "SingleStream"
MULTI_STREAM = "MultiStream"
OFFLINE = "Offline"
SERVER = "Server"
SCENARIOS = (SINGLE_STREAM, MULTI_STREAM, OFFLINE, SERVER)
# What the command line accepts for each (any case).
SCENARIO_NAMES = {"singlestream": SINGLE_STREAM, "single_stream": SINGLE_STREAM, "multistream": MULTI_STREAM,
                  "multi_stream": MULTI_STREAM, "offline": OFFLINE, "server": SERVER}
SCENARIO_CHOICES = "singlestream, multistream, offline, server"

# MLPerf Inference's values (LoadGen mlperf.conf, test_settings.h), for docs/serving.md and --help.
MLPERF_MIN_DURATION_MS = 600_000
MLPERF_MIN_QUERY_COUNT = {SINGLE_STREAM: 1024, MULTI_STREAM: 662, SERVER: 270_336, OFFLINE: 1}
# MultiStream's samples per query in MLPerf Inference (ResNet-50, RetinaNet: 8).
MLPERF_SAMPLES_PER_QUERY = 8
# Ours: minutes on a 2-core CPU.
DEFAULT_MIN_DURATION_MS = 10_000
# MultiStream keeps MLPerf's 662: LoadGen's early stopping needs that many queries for its p99
# estimate, and without it every MultiStream run is INVALID.
DEFAULT_MIN_QUERY_COUNT = {SINGLE_STREAM: 256, MULTI_STREAM: 662, SERVER: 400, OFFLINE: 1}
DEFAULT_LATENCY_BOUND_MS = 100.0
DEFAULT_MAX_QUEUE_DELAY_MS = 5.0
# The Server scenario's latency percentile: LoadGen's default server_target_latency_percentile.
SERVER_LATENCY_PERCENTILE = 0.99
# The peak search: LoadGen's FindPeakPerformance doubles the upper boundary (step 2) and
# bisects; we stop when the bracket is within DEFAULT_QPS_RESOLUTION of its lower end.
DEFAULT_SEARCH_STEP = 2.0
DEFAULT_QPS_RESOLUTION = 0.05
DEFAULT_MAX_SEARCH_POINTS = 12


@dataclass(frozen=True)
class LoadGenSettings:
    """What the LoadGen runs do (the engines, images and output come from SweepOptions).

    ``scenarios``: names from SCENARIOS, in run order. ``latency_bound_ms``: the Server
    scenario's p99 bound (LoadGen ``server_target_latency_ns``). ``max_queue_delay_ms``:
    how long the dynamic batcher holds the first query of a batch waiting for others.
    ``min_duration_ms`` / ``min_query_count`` (per scenario): LoadGen's run length.
    ``server_start_qps``: the search's first offered QPS (None: half the engine's measured
    capacity). ``search_step``: factor between boundary probes (> 1). ``qps_resolution``:
    the search stops when (upper - lower) / lower <= this. ``max_search_points``: most
    LoadGen runs per search. ``keep_trace``: also keep LoadGen's mlperf_log_trace.json.
    ``samples_per_query``: MultiStream's samples in each query (LoadGen
    ``multi_stream_samples_per_query``; MLPerf: 8).
    """

    scenarios: tuple[str, ...] = SCENARIOS
    latency_bound_ms: float = DEFAULT_LATENCY_BOUND_MS
    max_queue_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS
    min_duration_ms: int = DEFAULT_MIN_DURATION_MS
    min_query_count: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MIN_QUERY_COUNT))
    server_start_qps: float | None = None
    search_step: float = DEFAULT_SEARCH_STEP
    qps_resolution: float = DEFAULT_QPS_RESOLUTION
    max_search_points: int = DEFAULT_MAX_SEARCH_POINTS
    keep_trace: bool = False
    samples_per_query: int = MLPERF_SAMPLES_PER_QUERY

    def __post_init__(self) -> None:
        check_positive("--latency-bound-ms", self.latency_bound_ms)
        if not math.isfinite(self.max_queue_delay_ms) or self.max_queue_delay_ms < 0:
            raise UserError(f"--max-queue-delay-ms must be zero or a positive number of milliseconds, got {self.max_queue_delay_ms!r}")
        if self.server_start_qps is not None:
            check_positive("--server-start-qps (the target QPS)", self.server_start_qps)
        if not math.isfinite(self.search_step) or self.search_step <= 1:
            raise UserError(f"--search-step must be a number above 1, got {self.search_step!r}")
        check_positive("--qps-resolution", self.qps_resolution)
        if not isinstance(self.samples_per_query, int) or self.samples_per_query < 1:
            raise UserError(f"--samples-per-query must be a whole number >= 1, got {self.samples_per_query!r}")
        if self.min_duration_ms < 0 or self.max_search_points < 2:
            raise UserError("--min-duration-ms must be >= 0 and --max-search-points >= 2")
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown or not self.scenarios:
            raise UserError(f"unknown scenario {sorted(unknown) or '(none)'}: choose from {SCENARIO_CHOICES}")

    def query_count(self, scenario: str) -> int:
        """The minimum query count LoadGen is given for ``scenario``."""
        return int(self.min_query_count.get(scenario, DEFAULT_MIN_QUERY_COUNT[scenario]))


def check_positive(option: str, value: float) -> float:
    """``value`` as a float when it is a positive finite number (values.positive_number);
    UserError naming ``option`` otherwise."""
    try:
        return positive_number(value)  # type: ignore[arg-type]
    except ValueError as error:
        raise UserError(f"{option} {error}") from None


def _number(option: str, text: object) -> float:
    """``text`` as a finite float (values.finite_number); UserError naming ``option`` otherwise."""
    try:
        return finite_number(text)  # type: ignore[arg-type]
    except ValueError as error:
        raise UserError(f"{option} {error}") from None


def _whole(option: str, text: object, minimum: int) -> int:
    """``text`` as a whole number >= ``minimum`` (values.whole_number); UserError naming ``option`` otherwise."""
    try:
        return whole_number(text, minimum=minimum)  # type: ignore[arg-type]
    except ValueError as error:
        raise UserError(f"{option} {error}") from None


def parse_scenarios(text: str) -> tuple[str, ...]:
    """Comma-separated scenario names (any case) or "all", in run order; UserError otherwise."""
    words = [w.strip().lower() for w in str(text).split(",") if w.strip()]
    if not words or words == ["all"]:
        return SCENARIOS
    unknown = [w for w in words if w not in SCENARIO_NAMES]
    if unknown:
        raise UserError(f"unknown --scenario {unknown[0]!r}: choose from {SCENARIO_CHOICES} (comma-separated) or all")
    return tuple(dict.fromkeys(SCENARIO_NAMES[w] for w in words))


def parse_query_counts(text: str | None) -> dict[str, int]:
    """``auto`` -> the defaults; a number -> that count for SingleStream, MultiStream and
    Server (Offline stays one query); UserError otherwise."""
    counts = dict(DEFAULT_MIN_QUERY_COUNT)
    if text is None or str(text).strip().lower() in ("", "auto"):
        return counts
    value = _whole("--min-query-count", text, 1)
    counts[SINGLE_STREAM] = counts[MULTI_STREAM] = counts[SERVER] = value
    return counts


def settings_from_mapping(raw: Mapping[str, object]) -> LoadGenSettings:
    """The LoadGen options as parsed text (argparse's namespace as a dict) -> LoadGenSettings;
    UserError (one sentence) for a bad value."""

    def get(name: str, default: object) -> object:
        value = raw.get(name)
        return default if value is None else value

    start = get("server_start_qps", "auto")
    duration = _whole("--min-duration-ms", get("min_duration_ms", DEFAULT_MIN_DURATION_MS), 0)
    points = _whole("--max-search-points", get("max_search_points", DEFAULT_MAX_SEARCH_POINTS), 2)
    return LoadGenSettings(
        scenarios=parse_scenarios(str(get("scenario", "all"))),
        latency_bound_ms=_number("--latency-bound-ms", get("latency_bound_ms", DEFAULT_LATENCY_BOUND_MS)),
        max_queue_delay_ms=_number("--max-queue-delay-ms", get("max_queue_delay_ms", DEFAULT_MAX_QUEUE_DELAY_MS)),
        min_duration_ms=duration,
        min_query_count=parse_query_counts(raw.get("min_query_count")),  # type: ignore[arg-type]
        server_start_qps=None if str(start).strip().lower() == "auto" else _number("--server-start-qps", start),
        search_step=_number("--search-step", get("search_step", DEFAULT_SEARCH_STEP)),
        qps_resolution=_number("--qps-resolution", get("qps_resolution", DEFAULT_QPS_RESOLUTION)),
        max_search_points=points,
        keep_trace=bool(raw.get("keep_trace")),
        samples_per_query=_whole("--samples-per-query", get("samples_per_query", MLPERF_SAMPLES_PER_QUERY), 1),
    )
