"""The documentation's tables are generated: the performance tables from the stored per-kind
sweeps (docs/performance.md, and README.md's one kind), the options table from config.OPTIONS
(docs/usage.md)."""

from __future__ import annotations

import importlib.util
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
        performance_tables.with_tables("# no tables here\n", "x")
