"""The documentation's tables are generated: a results page per machine kind from its stored
files (docs/results/KIND.md, listed in docs/performance.md and docs/README.md), README.md's
sweep table of one kind, the options table from config.OPTIONS (docs/usage.md)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from densenet_opt import baselines, report
from densenet_opt.config import OPTIONS
from densenet_opt.render import markdown
from densenet_opt.render.markdown import stored_sweep_tables

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("performance_tables", ROOT / "tools" / "performance_tables.py")
performance_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(performance_tables)


def test_the_generated_tables_are_up_to_date() -> None:
    """Fails when a generated block was typed by hand, or a stored sweep or an option changed
    without `python tools/performance_tables.py`."""
    assert performance_tables.main(["--check"]) == 0


def test_the_options_table_and_config_options_agree() -> None:
    """Every option the CLI and the plugin offer is in docs/usage.md with its default; the
    generated block holds nothing else."""
    usage = (ROOT / "docs" / "usage.md").read_text()
    block = usage.split(markdown.OPTIONS_BEGIN)[1].split(markdown.OPTIONS_END)[0]
    documented = [line.split("|")[1].strip(" `") for line in block.strip().splitlines()[2:]]
    assert documented == [option.name for option in OPTIONS]
    for option in OPTIONS:
        if option.default and not option.is_flag:
            assert f"| `{option.name}` | `{option.default}` |" in block, option.name


def test_the_readme_is_short_and_names_the_kind_of_its_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    block = readme.split(markdown.README_TABLE_BEGIN)[1].split(markdown.README_TABLE_END)[0]
    assert block.count("#### `") == 1 and "benchmarks_baseline/" in block


def row(variant: str, size: int, ms: float, kind: str) -> report.Row:
    return report.Row(optimization_technique=variant, batch_size=size, device="cpu", latency_ms_per_batch=ms,
                      throughput_samples_per_sec=size * 1000 / ms, machine_kind=kind, device_name=f"{kind} (2 cores)",
                      torch="2.14.1", measured_at="2026-12-07T06:00:00", num_samples=1024, rounds=10, weights="synthetic")


def test_one_table_per_stored_kind_named_with_what_was_measured(tmp_path: Path) -> None:
    for kind, int8_ms in [("amd-epyc_x86v3_2c", 50.0), ("intel-xeon_x86v4-amxint8_2c", 10.0)]:
        rows = report.with_speedups([row("baseline", 1, 100.0, kind), row("int8", 1, int8_ms, kind)])
        baselines.save_sweep(rows, "cpu", tmp_path / "benchmarks_baseline" / kind)
    tables = stored_sweep_tables(tmp_path / "benchmarks_baseline")
    amd, intel = tables.split("#### ")[1:]
    assert amd.startswith("`amd-epyc_x86v3_2c` (cpu)") and "| `int8` | 20.0 (2.00x) |" in amd
    assert intel.startswith("`intel-xeon_x86v4-amxint8_2c` (cpu)") and "| `int8` | 100.0 (10.00x) |" in intel
    assert "Measured 2026-12-07 on intel-xeon_x86v4-amxint8_2c (2 cores); torch 2.14.1; 1024 evaluation images" in intel


def test_a_readme_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks the lines"):
        performance_tables.with_block("# no tables here\n", markdown.README_TABLE_BEGIN, markdown.README_TABLE_END, "x")


def repository(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the pages with generated blocks, and a baseline folder of two kinds: one
    with a stored run, sweep and notes, one with notes only. Returns (root, baseline_dir)."""
    root, baseline_dir = tmp_path / "repo", tmp_path / "repo" / "benchmarks_baseline"
    for page in ("README.md", "docs/README.md", "docs/performance.md", "docs/usage.md", "docs/variants.md"):
        (root / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, root / page)
    kind = "amd-epyc_x86v4-vnni-bf16_2c"
    rows = report.with_speedups([row("baseline", 1, 100.0, kind), row("int8", 1, 25.0, kind)])
    baselines.save_sweep([dataclasses.replace(r, cpu_pressure_pct=pct) for r, pct in zip(rows, (0.4, 2.5))], "cpu", baseline_dir / kind)
    run = baseline_dir / kind / "Linux-CPython-3.11-64bit" / "0001_cpu.json"
    run.parent.mkdir()
    run.write_text(json.dumps({"machine_info": {"cpu": {
        "brand_raw": "AMD EPYC", "count": 2, "arch": "X86_64", "hz_advertised_friendly": "2.5961 GHz",
        "flags": ["avx2", "fma", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16"]}}}))
    (baseline_dir / kind / "notes.md").write_text("### A dated note (2026-11-28)\n\n1.23x, measured by `a command`.\n")
    (baseline_dir / "amd-epyc_x86v3_2c").mkdir()
    (baseline_dir / "amd-epyc_x86v3_2c" / "notes.md").write_text("### Without AVX-512 (2026-11-30)\n\n4.56x.\n")
    return root, baseline_dir


def test_check_fails_on_a_missing_stale_or_orphan_results_page_and_passes_after_generation(tmp_path: Path) -> None:
    root, baseline_dir = repository(tmp_path)
    check = ["--check", "--root", str(root), "--baseline-dir", str(baseline_dir)]
    assert performance_tables.main(check) == 1  # no page yet
    assert performance_tables.main(check[1:]) == 0 and performance_tables.main(check) == 0
    page = (root / "docs" / "results" / "amd-epyc_x86v4-vnni-bf16_2c.md").read_text()
    assert page.startswith("# Results on `amd-epyc_x86v4-vnni-bf16_2c`\n")
    assert ("Generated by tools/performance_tables.py from benchmarks_baseline/amd-epyc_x86v4-vnni-bf16_2c; do not edit"
            in page)
    assert "- the CPU (`Linux-CPython-3.11-64bit/0001_cpu.json`): AMD EPYC, 2 logical CPUs at 2.5961 GHz; x86-64 level x86v4;" \
           " of the flags that pick kernels, with avx512_vnni, avx512_bf16, without avx_vnni," in page
    assert "- the stored cpu sweep: measured 2026-12-07, 2 configs; CPU pressure while timed: 0.4-2.5%" in page
    assert "| `int8` | 40.0 (4.00x) |" in page and "No stored comparison yet" in page
    assert page.index("## The stored sweep") < page.index("## Measurement notes") < page.index("### A dated note (2026-11-28)")
    assert page.rstrip().endswith("1.23x, measured by `a command`.")
    only_notes = (root / "docs" / "results" / "amd-epyc_x86v3_2c.md").read_text()
    assert "only notes" in only_notes and "No stored sweep yet" in only_notes and "4.56x." in only_notes
    for index in ("docs/performance.md", "docs/README.md"):
        text = (root / index).read_text()
        assert "- [`amd-epyc_x86v3_2c`](results/amd-epyc_x86v3_2c.md): notes: Without AVX-512 (2026-11-30)" in text
        assert ("- [`amd-epyc_x86v4-vnni-bf16_2c`](results/amd-epyc_x86v4-vnni-bf16_2c.md): the cpu sweep (2026-12-07); "
                "notes: A dated note (2026-11-28)") in text

    (baseline_dir / "amd-epyc_x86v3_2c" / "notes.md").write_text("### Without AVX-512 (2026-11-30)\n\n4.57x.\n")
    assert performance_tables.main(check) == 1  # a note changed: its page is stale
    assert performance_tables.main(check[1:]) == 0 and performance_tables.main(check) == 0
    assert "4.57x." in (root / "docs" / "results" / "amd-epyc_x86v3_2c.md").read_text()

    shutil.rmtree(baseline_dir / "amd-epyc_x86v3_2c")
    assert performance_tables.main(check) == 1  # a page of no folder
    assert performance_tables.main(check[1:]) == 0 and performance_tables.main(check) == 0
    assert not (root / "docs" / "results" / "amd-epyc_x86v3_2c.md").exists()


def test_the_performance_page_shows_the_comparison_with_the_peers_dated_latest(tmp_path: Path) -> None:
    for kind, date in [("kind-a", "2026-12-09"), ("kind-b", "2026-12-01")]:
        (tmp_path / kind / "peers").mkdir(parents=True)
        (tmp_path / kind / "peers" / "peers.md").write_text(
            f"### Peers on `{kind}`\n\n{date}; CPU pressure while timed: batch 1: 2%; 20 rounds\n")
    assert markdown.newest_peer_kind(tmp_path) == "kind-a"
    assert markdown.stored_peer_tables(tmp_path, kinds=["kind-b"]).startswith("### Peers on `kind-b`")
    assert markdown.peers_fact((tmp_path / "kind-b" / "peers" / "peers.md").read_text()) == (
        "the comparison with the peers: 2026-12-01; CPU pressure while timed: batch 1: 2%")
    assert markdown.newest_peer_kind(tmp_path / "none") is None
