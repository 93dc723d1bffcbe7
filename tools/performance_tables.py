#!/usr/bin/env python3
"""Write the documentation's generated tables from the stored sweeps and the option table.

    python tools/performance_tables.py            # rewrite every generated block
    python tools/performance_tables.py --check    # exit 1 when one is out of date

Five blocks, each between its markers (densenet_opt/render/markdown.py), never typed by hand:

- docs/performance.md: render.markdown.stored_sweep_tables(benchmarks_baseline/), one table
  per machine kind and device, from BASELINE_DIR/KIND/DEVICE-sweep/benchmark_results.csv,
  which `nox -s bench -- --save-baseline` stores;
- docs/performance.md: the comparison with the peers' defaults of each kind, with its
  layer profiles where measured, BASELINE_DIR/KIND/peers/peers.md, which
  `python tools/peers.py --store` writes;
- README.md: the same table for one kind, the one measured most recently;
- docs/usage.md: the sweep's options, from densenet_opt/config.py's OPTIONS (what
  `densenet-opt sweep --help` and the pytest plugin offer);
- docs/variants.md: every variant's options, from their declarations (what
  `--variant-options` and `densenet-opt list` take).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from densenet_opt.render.markdown import (
    OPTIONS_BEGIN, OPTIONS_END, PEERS_BEGIN, PEERS_END, README_TABLE_BEGIN, README_TABLE_END, TABLES_BEGIN, TABLES_END,
    VARIANT_OPTIONS_BEGIN, VARIANT_OPTIONS_END, newest_sweep_kind, options_table, stored_peer_tables, stored_sweep_tables,
    variant_options_table,
)

ROOT = Path(__file__).resolve().parent.parent


def with_block(text: str, begin: str, end: str, block: str, name: str = "README.md") -> str:
    """``text`` with the block between ``begin`` and ``end`` replaced by ``block``;
    ValueError naming ``name`` when the markers are missing."""
    head, found_begin, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not found_begin or not found_end:
        raise ValueError(f"{name} lacks the lines {begin!r} and {end!r}")
    return f"{head}{begin}\n\n{block}\n\n{end}{tail}"


def with_tables(readme: str, tables: str) -> str:
    """with_block for the performance tables' markers."""
    return with_block(readme, TABLES_BEGIN, TABLES_END, tables)


def generated(root: Path, baseline_dir: Path) -> dict[Path, str]:
    """{file: its text with every generated block up to date}."""
    kind = newest_sweep_kind(baseline_dir)
    blocks = {
        root / "docs" / "performance.md": [(TABLES_BEGIN, TABLES_END, stored_sweep_tables(baseline_dir)),
                                           (PEERS_BEGIN, PEERS_END, stored_peer_tables(baseline_dir))],
        root / "README.md": [(README_TABLE_BEGIN, README_TABLE_END,
                              stored_sweep_tables(baseline_dir, kinds=[kind] if kind else []))],
        root / "docs" / "usage.md": [(OPTIONS_BEGIN, OPTIONS_END, options_table())],
        root / "docs" / "variants.md": [(VARIANT_OPTIONS_BEGIN, VARIANT_OPTIONS_END, variant_options_table())],
    }
    texts = {}
    for path, replacements in blocks.items():
        text = path.read_text(encoding="utf-8")
        for begin, end, block in replacements:
            text = with_block(text, begin, end, block, str(path.relative_to(root)))
        texts[path] = text
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated block differs from its source")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    parser.add_argument("--baseline-dir", type=Path, default=ROOT / "benchmarks_baseline")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated(args.root, args.baseline_dir).items():
        if path.read_text(encoding="utf-8") == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote the generated tables of {path}")
    for path in stale:
        print(f"{path}: a generated table differs from its source (the stored sweeps, config.OPTIONS): "
              "run tools/performance_tables.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
