#!/usr/bin/env python3
"""Write the README's performance tables from the stored per-kind sweeps.

    python tools/performance_tables.py            # rewrite README.md's generated block
    python tools/performance_tables.py --check    # exit 1 when README.md is out of date

The block between render.markdown.TABLES_BEGIN and TABLES_END is replaced by
render.markdown.stored_sweep_tables(benchmarks_baseline/): one table per machine kind and
device, from BASELINE_DIR/KIND/DEVICE-sweep/benchmark_results.csv, which
`nox -s bench -- --save-baseline` stores. The tables are never typed by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from densenet_opt.render.markdown import TABLES_BEGIN, TABLES_END, stored_sweep_tables

ROOT = Path(__file__).resolve().parent.parent


def with_tables(readme: str, tables: str) -> str:
    """``readme`` with its generated block replaced by ``tables``; ValueError when the
    markers are missing."""
    head, begin, rest = readme.partition(TABLES_BEGIN)
    _, end, tail = rest.partition(TABLES_END)
    if not begin or not end:
        raise ValueError(f"README.md lacks the lines {TABLES_BEGIN!r} and {TABLES_END!r}")
    return f"{head}{TABLES_BEGIN}\n\n{tables}\n\n{TABLES_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's tables differ from the stored sweeps")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--baseline-dir", type=Path, default=ROOT / "benchmarks_baseline")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    updated = with_tables(current, stored_sweep_tables(args.baseline_dir))
    if args.check:
        if updated != current:
            print(f"{args.readme}: the performance tables differ from {args.baseline_dir}: run tools/performance_tables.py")
            return 1
        return 0
    args.readme.write_text(updated)
    print(f"wrote the performance tables of {args.baseline_dir} into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
