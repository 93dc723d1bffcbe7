"""The compute limit of this CPU for DenseNet-121: images per second its matrix units could
reach at their peak, per precision, so that a measured throughput can be read as a fraction
of what the hardware offers.

limit (images/s) = physical cores x clock (Hz) x multiply-accumulates per cycle per core /
multiply-accumulates per image. The clock is the nominal one /proc/cpuinfo reports (``cpu
MHz``; a VM shows the host's base clock; turbo is not counted). The MACs per cycle per core
are the instruction set's peak on a core with two 512-bit FMA ports (Intel Xeon Scalable:
Intel 64 and IA-32 Architectures Optimization Reference Manual, ch. "Intel AMX" and
"Intel AVX-512"):

- AMX (TMUL, one per core): 1024 int8 MACs (TDPBSSD, 2048 ops) and 512 bf16 MACs
  (TDPBF16PS, 1024 ops) per cycle;
- AVX-512 VNNI: VPDPBUSD does 64 int8 MACs, two ports: 128; AVX-512 BF16: VDPBF16PS does 32
  bf16 MACs, two ports: 64; AVX-512 FMA: 16 fp32, two ports: 32;
- AVX2: FMA 8 fp32 a port, two ports: 16; AVX-VNNI (256-bit): 64 int8; int8 without VNNI
  (VPMADDUBSW + VPMADDWD): 32.

AMD Zen 4 runs AVX-512 on 256-bit units (two per core), half of these AVX-512 figures: the
limit is given for the vendor's layout. It is a ceiling, not a target: DenseNet-121's
concatenations, batch norms and pooling are memory-bound work the matrix units never see.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

# MACs per cycle per core, by precision, for (flag that enables it, Intel's figure).
_PEAKS: Mapping[str, tuple[tuple[str, int], ...]] = {
    "int8": (("amx_int8", 1024), ("avx512_vnni", 128), ("avx_vnni", 64), ("avx2", 32)),
    "bf16": (("amx_bf16", 512), ("avx512_bf16", 64)),
    "fp32": (("avx512f", 32), ("avx2", 16)),
}
# Instruction sets that AMD's Zen 4 runs on 256-bit halves (half of Intel's per-cycle figure).
_DOUBLE_PUMPED = frozenset({"avx512_vnni", "avx512_bf16", "avx512f"})


@dataclass(frozen=True)
class ComputeLimit:
    """``images_per_s`` at the peak of ``instructions`` (the flag that sets it) for one
    precision, from ``cores`` x ``ghz`` x ``macs_per_cycle`` / ``gmacs_per_image``."""

    precision: str
    instructions: str
    cores: int
    ghz: float
    macs_per_cycle: int
    gmacs_per_image: float

    @property
    def images_per_s(self) -> float:
        return self.cores * self.ghz * self.macs_per_cycle / self.gmacs_per_image

    def fraction(self, images_per_s: float) -> float:
        """A measured throughput (images/s) as a fraction of the limit."""
        return images_per_s / self.images_per_s


def compute_limit(precision: str, gmacs_per_image: float, *, flags: Collection[str], cores: int, ghz: float,
                  vendor: str = "intel") -> ComputeLimit | None:
    """The limit for ``precision`` (int8, bf16 or fp32) of a CPU with /proc/cpuinfo
    ``flags``, ``cores`` physical cores at ``ghz`` (nominal GHz), for a model of
    ``gmacs_per_image`` GMACs per image (DenseNet-121: about 2.87, flops.count_flops / 2);
    None where no instruction set of that precision is present (bf16 without AVX-512 BF16
    or AMX). Raises ValueError for another precision or a non-positive figure."""
    if precision not in _PEAKS:
        raise ValueError(f"precision must be one of {', '.join(_PEAKS)}, not {precision!r}")
    if min(cores, ghz, gmacs_per_image) <= 0:
        raise ValueError(f"cores, ghz and gmacs_per_image must be positive: {cores}, {ghz}, {gmacs_per_image}")
    for flag, macs in _PEAKS[precision]:
        if flag in flags:
            if vendor == "amd" and flag in _DOUBLE_PUMPED:
                macs //= 2
            return ComputeLimit(precision, flag, cores, ghz, macs, gmacs_per_image)
    return None


def local_compute_limit(precision: str, gmacs_per_image: float) -> ComputeLimit | None:
    """compute_limit for this machine: flags, vendor and clock from /proc/cpuinfo, the
    physical cores this process may use (measure.env). None where /proc/cpuinfo says
    nothing (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "flags" not in fields or "cpu MHz" not in fields:
        return None
    vendor = "amd" if fields.get("vendor_id") == "AuthenticAMD" else "intel"
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = max(1, min(psutil.cpu_count(logical=False) or allowed, allowed))
    return compute_limit(precision, gmacs_per_image, flags=set(fields["flags"].split()), cores=cores,
                         ghz=float(fields["cpu MHz"]) / 1e3, vendor=vendor)
