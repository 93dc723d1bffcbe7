#!/usr/bin/env python3
"""Write the documentation's generated tables and results pages from the stored files.

    python tools/performance_tables.py            # rewrite every generated block and page
    python tools/performance_tables.py --check    # exit 1 when one is out of date or missing

Never typed by hand (the blocks between their markers, densenet_opt/render/markdown.py):

- docs/results/KIND.md, one page per folder of benchmarks_baseline/ (render.markdown.kind_page):
  what the stored files say of the machine (the CPU from the stored pytest-benchmark run, the
  dates and CPU pressure), the comparison with the peers' defaults with its layer profiles
  (KIND/peers/peers.md, which `python tools/peers.py --store` writes), the stored sweeps
  (KIND/DEVICE-sweep/benchmark_results.csv, which `nox -s bench -- --save-baseline` stores),
  the gate's false alarms (KIND/false-alarm/false_alarm.md) and the kind's hand-written,
  dated measurement notes (KIND/notes.md); a page of no folder is removed (--check: stale);
- docs/performance.md and docs/README.md: the list of those pages;
- docs/performance.md: the comparison with the peers of the kind that stored one last;
- README.md: the sweep table of the kind measured most recently;
- docs/usage.md: the sweep's options, from densenet_opt/config.py's OPTIONS (what
  `densenet-opt sweep --help` and the pytest plugin offer);
- docs/variants.md: every variant's options, from their declarations (what
  `--variant-options` and `densenet-opt list` take).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from densenet_opt.baselines import RUN_GLOB
from densenet_opt.render.markdown import (
    FALSE_ALARM_MARKDOWN, KIND_NOTES, KINDS_BEGIN, KINDS_END, OPTIONS_BEGIN, OPTIONS_END, PEERS_BEGIN, PEERS_END,
    PEERS_MARKDOWN, README_TABLE_BEGIN, README_TABLE_END, RESULTS_PAGES, VARIANT_OPTIONS_BEGIN, VARIANT_OPTIONS_END, VARIANTS_BEGIN, VARIANTS_END,
    cpu_summary, kind_index, kind_page, measured_span, newest_peer_kind, newest_sweep_kind, note_titles, options_table,
    peers_fact, stored_date, stored_peer_tables, stored_sweep_tables, stored_sweeps, sweep_fact, variant_options_table, variants_table,
)
from densenet_opt.report import read_rows

ROOT = Path(__file__).resolve().parent.parent


def with_block(text: str, begin: str, end: str, block: str, name: str = "README.md") -> str:
    """``text`` with the block between ``begin`` and ``end`` replaced by ``block``;
    ValueError naming ``name`` when the markers are missing."""
    head, found_begin, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not found_begin or not found_end:
        raise ValueError(f"{name} lacks the lines {begin!r} and {end!r}")
    return f"{head}{begin}\n\n{block}\n\n{end}{tail}"


def kinds(baseline_dir: Path) -> list[str]:
    """The machine kinds: the folders of ``baseline_dir``, in name order ([] where it does not exist)."""
    if not Path(baseline_dir).is_dir():
        return []
    return sorted(p.name for p in Path(baseline_dir).iterdir() if p.is_dir() and not p.name.startswith("."))


def read_if_stored(path: Path) -> str | None:
    """``path``'s text; None where it does not exist."""
    return path.read_text(encoding="utf-8") if path.is_file() else None


def stored_cpu(directory: Path) -> str | None:
    """The CPU line of a kind's newest stored pytest-benchmark run (render.markdown.cpu_summary
    of its machine info), naming the run; None where no run is stored. Raises ValueError
    naming a run file that is not JSON."""
    runs = sorted(Path(directory).glob(f"*/{RUN_GLOB}"), key=lambda p: (p.name, str(p)))
    if not runs:
        return None
    try:
        cpu = json.loads(runs[-1].read_text(encoding="utf-8")).get("machine_info", {}).get("cpu") or {}
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{runs[-1]} is not a pytest-benchmark run ({error})") from None
    return f"the CPU (`{runs[-1].relative_to(directory)}`): {cpu_summary(cpu)}"


def kind_contents(baseline_dir: Path, kind: str) -> tuple[list[str], list[str]]:
    """(the facts kind_page lists, what the index says the page holds) of ``kind``, from its
    stored run, sweeps, comparison with the peers, false-alarm table and notes."""
    directory = Path(baseline_dir) / kind
    cpu = stored_cpu(directory)
    facts, held = [cpu] if cpu else [], []
    peers = read_if_stored(directory / "peers" / PEERS_MARKDOWN)
    if peers is not None:
        facts.append(peers_fact(peers))
        held.append(f"the peers ({stored_date(peers)})")
    for results in stored_sweeps(baseline_dir):
        if results.parent.parent.name == kind:
            device, rows = results.parent.name.removesuffix("-sweep"), read_rows(results)
            facts.append(sweep_fact(device, rows))
            held.append(f"the {device} sweep ({measured_span([r for r in rows if r.device == device and r.measured])})")
    false_alarm = read_if_stored(directory / "false-alarm" / FALSE_ALARM_MARKDOWN)
    if false_alarm is not None:
        facts.append(f"the gate's false alarms: {stored_date(false_alarm)}")
        held.append(f"the gate's false alarms ({stored_date(false_alarm)})")
    notes = read_if_stored(directory / KIND_NOTES)
    if notes:
        held.append("notes: " + ", ".join(note_titles(notes)))
    return facts, held


def kind_pages(root: Path, baseline_dir: Path, facts_of: Mapping[str, Sequence[str]]) -> dict[Path, str]:
    """{docs/results/KIND.md: its text} for every kind of ``facts_of`` (kind -> the facts
    kind_contents read from its folder of ``baseline_dir``)."""
    pages = {}
    for kind, facts in facts_of.items():
        directory = Path(baseline_dir) / kind
        pages[root / "docs" / RESULTS_PAGES / f"{kind}.md"] = kind_page(
            kind, Path(baseline_dir).name, facts, stored_peer_tables(baseline_dir, kinds=[kind]),
            stored_sweep_tables(baseline_dir, kinds=[kind]),
            read_if_stored(directory / "false-alarm" / FALSE_ALARM_MARKDOWN), read_if_stored(directory / KIND_NOTES))
    return pages


def generated(root: Path, baseline_dir: Path) -> dict[Path, str]:
    """{file: its text with every generated block up to date}, the results pages included."""
    kind = newest_sweep_kind(baseline_dir)
    peer_kind = newest_peer_kind(baseline_dir)
    contents = {name: kind_contents(baseline_dir, name) for name in kinds(baseline_dir)}
    index = kind_index({name: held for name, (_, held) in contents.items()})
    blocks = {
        root / "docs" / "performance.md": [(KINDS_BEGIN, KINDS_END, index),
                                           (PEERS_BEGIN, PEERS_END,
                                            stored_peer_tables(baseline_dir, kinds=[peer_kind] if peer_kind else []))],
        root / "docs" / "README.md": [(KINDS_BEGIN, KINDS_END, index)],
        root / "README.md": [(README_TABLE_BEGIN, README_TABLE_END,
                              stored_sweep_tables(baseline_dir, kinds=[kind] if kind else []))],
        root / "docs" / "usage.md": [(OPTIONS_BEGIN, OPTIONS_END, options_table())],
        root / "docs" / "variants.md": [(VARIANTS_BEGIN, VARIANTS_END, variants_table()),
                                        (VARIANT_OPTIONS_BEGIN, VARIANT_OPTIONS_END, variant_options_table())],
    }
    texts = {}
    for path, replacements in blocks.items():
        text = path.read_text(encoding="utf-8")
        for begin, end, block in replacements:
            text = with_block(text, begin, end, block, str(path.relative_to(root)))
        texts[path] = text
    return texts | kind_pages(root, baseline_dir, {name: facts for name, (facts, _) in contents.items()})


def orphan_pages(root: Path, pages: dict[Path, str]) -> list[Path]:
    """The results pages in docs/results/ that no kind folder generates any more."""
    return sorted(set((root / "docs" / RESULTS_PAGES).glob("*.md")) - set(pages))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated block or page differs from its source, or is missing")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    parser.add_argument("--baseline-dir", type=Path, default=ROOT / "benchmarks_baseline")
    args = parser.parse_args(argv)
    texts = generated(args.root, args.baseline_dir)
    stale = [path for path, text in texts.items() if read_if_stored(path) != text]
    orphans = orphan_pages(args.root, texts)
    if args.check:
        for path in stale:
            print(f"{path}: {'missing' if not path.exists() else 'differs from its source'} (the stored files of "
                  f"{args.baseline_dir}, config.OPTIONS): run tools/performance_tables.py")
        for path in orphans:
            print(f"{path}: a results page of no folder in {args.baseline_dir}: run tools/performance_tables.py")
        return 1 if stale or orphans else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts[path], encoding="utf-8")
        print(f"wrote the generated tables of {path}")
    for path in orphans:
        path.unlink()
        print(f"removed {path}: no folder in {args.baseline_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
