"""The machine kind: the key stored baselines live under (measure/env.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densenet_opt.measure.env import KIND_VARIABLE, cgroup_cpu_quota, cpu_kind, cuda_kind, machine_kind

# Flag sets recorded from /proc/cpuinfo on the three kinds this project's machines have been.
# Intel Xeon with AMX-BF16/INT8 and AVX512-FP16 (recorded 2026-12-07, 2 vCPUs, no SMT).
INTEL_AMX_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall "
    "nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 "
    "fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm "
    "abm 3dnowprefetch cpuid_fault fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed "
    "adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni "
    "avx512_bf16 arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq "
    "rdpid cldemote movdiri movdir64b fsrm serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities")
# AMD EPYC Zen 4 (AVX-512 with VNNI and BF16, no AVX512-FP16, no AMX): the flags py-cpuinfo
# recorded in the stored baseline's own pytest-benchmark run (2026-11-28).
ZEN4_DIR = "amd-epyc_x86v4-vnni-bf16_2c"
ZEN4_RUN = Path(__file__).parent.parent / "benchmarks_baseline" / ZEN4_DIR / "Linux-CPython-3.11-64bit" / "0001_cpu.json"
ZEN4_CPU = json.loads(ZEN4_RUN.read_text())["machine_info"]["cpu"]
ZEN4_FLAGS = " ".join(ZEN4_CPU["flags"])
# AMD EPYC Zen 3 (Milan), no AVX-512 at all.
ZEN3_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx "
    "mmxext fxsr_opt pdpe1gb rdtscp lm rep_good nopl cpuid extd_apicid pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 "
    "x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse "
    "3dnowprefetch topoext invpcid_single fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb "
    "sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr arat umip vaes vpclmulqdq rdpid fsrm")


def cpuinfo(vendor: str, model: str, flags: str, cores: list[tuple[int, int]]) -> str:
    """/proc/cpuinfo text: one block per logical CPU, ``cores``: (physical id, core id) each."""
    return "\n\n".join(
        f"processor\t: {n}\nvendor_id\t: {vendor}\nmodel name\t: {model}\nphysical id\t: {package}\n"
        f"core id\t\t: {core}\nflags\t\t: {flags}" for n, (package, core) in enumerate(cores)) + "\n"


@pytest.mark.parametrize(("vendor", "model", "flags", "cores", "kind"), [
    ("GenuineIntel", "Intel(R) Xeon(R) Processor", INTEL_AMX_FLAGS, [(0, 0), (0, 1)],
     "intel-xeon_x86v4-avxvnni-vnni-bf16-fp16-amxbf16-amxint8_2c"),
    ("AuthenticAMD", "AMD EPYC", ZEN4_FLAGS, [(0, 0), (0, 1)], "amd-epyc_x86v4-vnni-bf16_2c"),
    ("AuthenticAMD", "AMD EPYC", ZEN3_FLAGS, [(0, 0), (0, 1)], "amd-epyc_x86v3_2c"),
    # Two threads of one core (SMT), and a model name with its noise words.
    ("AuthenticAMD", "AMD EPYC 7763 64-Core Processor", ZEN3_FLAGS, [(0, 0), (0, 0)], "amd-epyc-7763_x86v3_1c2t"),
    ("GenuineIntel", "Intel(R) Xeon(R) Platinum 8573C CPU @ 2.30GHz", INTEL_AMX_FLAGS, [(0, 0), (0, 1)],
     "intel-xeon-platinum-8573c_x86v4-avxvnni-vnni-bf16-fp16-amxbf16-amxint8_2c"),
])
def test_cpu_kinds_of_recorded_machines(vendor: str, model: str, flags: str, cores: list, kind: str) -> None:
    assert cpu_kind(cpuinfo(vendor, model, flags, cores), {0, 1}) == kind


def test_the_kind_counts_only_the_cpus_the_process_may_use() -> None:
    text = cpuinfo("AuthenticAMD", "AMD EPYC", ZEN4_FLAGS, [(0, 0), (0, 1), (0, 2), (0, 3)])
    assert cpu_kind(text, {0, 1, 2, 3}) == "amd-epyc_x86v4-vnni-bf16_4c"
    assert cpu_kind(text, {2}) == "amd-epyc_x86v4-vnni-bf16_1c"  # taskset -c 2


def test_the_kinds_of_the_three_machines_differ_where_their_kernels_do() -> None:
    kinds = {cpu_kind(cpuinfo(v, "AMD EPYC" if v == "AuthenticAMD" else "Intel(R) Xeon(R) Processor", f, [(0, 0), (0, 1)]), {0, 1})
             for v, f in [("GenuineIntel", INTEL_AMX_FLAGS), ("AuthenticAMD", ZEN4_FLAGS), ("AuthenticAMD", ZEN3_FLAGS)]}
    assert len(kinds) == 3


def test_an_arm_cpu_names_its_part_and_features() -> None:
    text = ("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd aes crc32 atomics asimddp sve i8mm bf16\n"
            "CPU implementer\t: 0x41\nCPU part\t: 0xd4f\n")
    assert cpu_kind(text, {0}, "aarch64") == "aarch64-0x41-0xd4f_dotprod-i8mm-bf16-sve_1c"


@pytest.mark.parametrize(("text", "machine", "kind"), [
    ("", "x86_64", "x86-64_x86v1_2c"),  # no /proc/cpuinfo to read: still a kind, the plainest
    ("processor\t: 0\ncpu\t\t: POWER10 (architected), altivec supported\nclock\t\t: 2750.000000MHz\n\n"
     "processor\t: 1\ncpu\t\t: POWER10 (architected), altivec supported\n", "ppc64le", "power10-architected_base_2c"),
    ("vendor_id       : IBM/S390\n# processors    : 2\nfeatures\t: esan3 zarch stfle msa ldisp eimm dfp\n\n"
     "processor 0: version = FF,  identification = 0133E8,  machine = 8561\n", "s390x", "s390x_base_2c"),
])
def test_other_architectures_and_an_empty_cpuinfo_have_a_kind(text: str, machine: str, kind: str) -> None:
    assert cpu_kind(text, {0, 1}, machine) == kind


def test_a_cgroup_quota_caps_the_threads(tmp_path: Path) -> None:
    text = cpuinfo("AuthenticAMD", "AMD EPYC", ZEN3_FLAGS, [(0, 0), (0, 1), (0, 2), (0, 3)])
    assert cpu_kind(text, {0, 1, 2, 3}, cpu_quota=2) == "amd-epyc_x86v3_2c"  # docker --cpus 1.5
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cpu.max") == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cpu.max") is None and cgroup_cpu_quota(tmp_path / "none") is None


def test_a_named_kind_overrides_the_measured_one(monkeypatch) -> None:
    """sweep-gpus names its kind for the shards (each sees one GPU of the parent's N)."""
    monkeypatch.setenv(KIND_VARIABLE, "cuda_nvidia-h100_sm90_x2")
    assert machine_kind("cuda") == "cuda_nvidia-h100_sm90_x2"
    monkeypatch.setenv(KIND_VARIABLE, "../etc x")
    assert "/" not in machine_kind("cpu") and " " not in machine_kind("cpu")
    monkeypatch.setenv(KIND_VARIABLE, "..")
    assert machine_kind("cpu") not in ("..", ".") and machine_kind("cpu").count("_") == 2  # the measured kind


def test_a_cuda_kind_names_the_gpu_its_compute_capability_and_count() -> None:
    assert cuda_kind("NVIDIA H100 80GB HBM3", (9, 0), 1) == "cuda_nvidia-h100-80gb-hbm3_sm90_x1"
    assert cuda_kind("NVIDIA A10G", (8, 6), 4) == "cuda_nvidia-a10g_sm86_x4"


def test_this_machine_has_a_kind_a_directory_can_be_named_after() -> None:
    kind = machine_kind("cpu")
    assert kind and "/" not in kind and " " not in kind and kind == machine_kind("cpu")


def test_the_stored_zen4_baseline_is_filed_under_the_kind_its_recorded_cpu_has() -> None:
    """The files measured on the Zen 4 before baselines were kept per kind: the CPU its run
    recorded (brand, flags, 2 logical CPUs). py-cpuinfo recorded no topology: 2 MiB of L2 at
    Zen 4's 1 MiB a core says 2 cores, which the cpuinfo below states."""
    assert ZEN4_CPU["count"] == 2 and ZEN4_CPU["l2_cache_size"] == 2 * 1024 * 1024
    text = cpuinfo(ZEN4_CPU["vendor_id_raw"], ZEN4_CPU["brand_raw"], ZEN4_FLAGS, [(0, 0), (0, 1)])
    assert cpu_kind(text, {0, 1}) == ZEN4_DIR
