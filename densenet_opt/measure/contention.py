"""CPU contention while a config is timed: Linux pressure stall information, or the load.

Other processes competing for the cores change every timing, and not by the same factor
for every engine (docs/baselines.md#contention), so each row records how contended the machine
was while its rounds ran, and a baseline measured under heavy contention is not stored.

The figure is Linux's CPU pressure (PSI, ``/proc/pressure/cpu``, kernel 4.20+; see the
kernel's Documentation/accounting/psi.rst): the share of wall time in which at least one
runnable task waited for a CPU (the ``some`` line), computed from its ``total`` counter
(microseconds) read before and after the timed rounds, so it covers exactly them. Where
PSI is absent (other systems, kernels without it) the 1-minute load average divided by
the cores this process may use stands in, read after the timed rounds: a coarser figure,
which also counts this process's own threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from densenet_opt.config import DEFAULT_MAX_CPU_PRESSURE

PSI_FILE = Path("/proc/pressure/cpu")
STAT_FILE = Path("/proc/stat")
# How long free_cores watches the CPUs (this process idle) before a config is timed.
FREE_CORES_SAMPLE_S = 0.3
# Above this load per usable core (no PSI) a config counts as contended: the sweep's own
# threads already load each core once.
CONTENDED_LOAD_PER_CORE = 1.5


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def read_psi_some_total_us(path: Path | None = None) -> int | None:
    """The ``some total=`` counter of ``path`` (default PSI_FILE) in microseconds; None
    where the file is missing, unreadable or without that line (PSI disabled: ``psi=0``)."""
    try:
        text = (path or PSI_FILE).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                name, _, value = field.partition("=")
                if name == "total" and value.isdigit():
                    return int(value)
    return None


def _cpu_times(path: Path | None = None) -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat's ``cpu`` line (busy: all but idle
    and iowait; steal counts as busy: a core the hypervisor gave away is not ours); None
    where unreadable."""
    try:
        fields = (path or STAT_FILE).read_text().splitlines()[0].split()
        values = [float(v) for v in fields[1:9]]
    except (OSError, IndexError, ValueError):
        return None
    if fields[0] != "cpu" or len(values) < 5:
        return None
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def free_cores(sample_s: float = FREE_CORES_SAMPLE_S, path: Path | None = None) -> int | None:
    """The usable cores other processes leave free: usable_cores() minus the cores the
    machine kept busy over ``sample_s`` seconds while this process slept (rounded, at least
    1). None where /proc/stat is unreadable. Call it with this process idle: its own
    threads would count as others'."""
    before = _cpu_times(path)
    time.sleep(sample_s)
    after = _cpu_times(path)
    if before is None or after is None or after[1] <= before[1]:
        return None
    machine_cores = os.cpu_count() or 1
    busy_cores = (after[0] - before[0]) / (after[1] - before[1]) * machine_cores
    return max(1, min(usable_cores(), round(machine_cores - busy_cores)))


@dataclass(frozen=True)
class PressureMark:
    """A point in time to measure contention from: ``perf_counter`` seconds and PSI's
    ``some total`` (µs, None without PSI)."""

    wall_s: float
    psi_some_us: int | None

    @classmethod
    def now(cls, path: Path | None = None) -> PressureMark:
        return cls(time.perf_counter(), read_psi_some_total_us(path))


@dataclass(frozen=True)
class Contention:
    """How contended the CPUs were over an interval.

    ``cpu_pressure_pct``: PSI's "some" CPU pressure over the interval, percent of wall time
    (0-100), None without PSI. ``load_per_core``: the 1-minute load average at the end of
    the interval divided by the usable cores (dimensionless), None where unavailable."""

    cpu_pressure_pct: float | None
    load_per_core: float | None

    @classmethod
    def since(cls, start: PressureMark, path: Path | None = None) -> Contention:
        """From ``start`` to now."""
        try:
            load = os.getloadavg()[0] / usable_cores()
        except OSError:
            load = None
        return cls(cls.between(start, PressureMark.now(path)).cpu_pressure_pct, load)

    @classmethod
    def between(cls, start: PressureMark, end: PressureMark) -> Contention:
        """From ``start`` to ``end``: the CPU pressure only (the load average moves too slowly
        to say anything about an interval of a second; None without PSI)."""
        pressure = None
        elapsed_us = (end.wall_s - start.wall_s) * 1e6
        if start.psi_some_us is not None and end.psi_some_us is not None and elapsed_us > 0:
            pressure = min(100.0, max(0.0, 100.0 * (end.psi_some_us - start.psi_some_us) / elapsed_us))
        return cls(pressure, None)

    def contended(self, limit_pct: float = DEFAULT_MAX_CPU_PRESSURE) -> bool:
        """Whether the interval counts as contended: PSI above ``limit_pct``; without PSI,
        a load above CONTENDED_LOAD_PER_CORE per usable core."""
        return is_contended(self.cpu_pressure_pct, self.load_per_core, limit_pct)


def is_contended(cpu_pressure_pct: float | None, load_per_core: float | None,
                 limit_pct: float = DEFAULT_MAX_CPU_PRESSURE) -> bool:
    """Contention.contended on the two figures as a results row holds them. A limit of
    100% turns the check off, with or without PSI."""
    if limit_pct >= 100:
        return False
    if cpu_pressure_pct is not None:
        return cpu_pressure_pct > limit_pct
    return load_per_core is not None and load_per_core > CONTENDED_LOAD_PER_CORE


def contention_refusal(configs: Iterable[tuple[str, float | None, float | None]], limit_pct: float) -> str | None:
    """Why a baseline must not be stored, or None when it may be: ``configs`` are
    (config name, cpu_pressure_pct, load_per_core) of the run to store. One sentence naming
    how many configs were contended, the worst one, and how to override."""
    contended = [(name, pressure, load) for name, pressure, load in configs if is_contended(pressure, load, limit_pct)]
    if not contended:
        return None
    name, pressure, load = max(contended, key=lambda item: (item[1] or 0.0, item[2] or 0.0))
    worst = f"{pressure:.0f}% CPU pressure" if pressure is not None else f"load {load:.2f} per core"
    return (f"not storing the baseline: {len(contended)} config(s) were timed while other processes competed for "
            f"the CPUs (worst: {name}, {worst}; limit {limit_pct:g}%), so their figures are not this build's alone; "
            f"rerun on a quiet machine, or pass --max-cpu-pressure 100 to store them anyway")
