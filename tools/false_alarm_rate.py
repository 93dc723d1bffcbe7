#!/usr/bin/env python3
"""The regression gate's false-alarm rate and power on this machine, measured.

Stores a baseline of a small sweep (quiet machine), then runs the gate (`densenet-opt sweep
--compare-baseline`, a fresh process each time, as CI would) K times on the unchanged
build while a CPU hog (a busy-loop process) starts and stops at random during each run,
and K times for each injected slowdown of one variant (tests/fault_plugin.py's
`slowdown:X`: every call of that variant's engine takes X times as long), hog included.
Prints false alarms out of K (any failed gate on the unchanged build) and detections out
of K (the slowed variant named as a speedup regression), and writes every run's verdicts
to OUTPUT_DIR/false_alarm_runs.csv (pandas) and the table to OUTPUT_DIR/false_alarm.md.

    python tools/false_alarm_rate.py                          # K=10, slowdowns 15% and 30% of onnx
    python tools/false_alarm_rate.py --runs 5 --slowdowns 0.3 --slowed-variant pruned
    python tools/false_alarm_rate.py --no-hog                 # the same on a quiet machine
    python tools/false_alarm_rate.py -- --rounds 20           # extra options for every sweep

The hog: in each run, alternating off and on periods of 2-15 s each (uniform), starting
in a random state, from a seeded generator (--seed); the fraction of each run it was on,
and the run's CPU pressure (PSI "some", % of wall time) are recorded.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from densenet_opt.measure.contention import Contention, PressureMark  # noqa: E402
from densenet_opt.measure.env import machine_kind  # noqa: E402
from densenet_opt.render.markdown import markdown_table  # noqa: E402
from densenet_opt.verdict import REGRESSED, VERDICTS_FILE, read_verdicts  # noqa: E402

SWEEP = ["--variants", "baseline,onnx,pruned", "--batch-sizes", "1", "--num-samples", "32", "--weights", "synthetic"]
RUN_COLUMNS = ("condition", "run", "exit_code", "gate_failed", "slowed_variant_regressed", "hog_on_fraction",
               "cpu_pressure_pct", "seconds", "verdicts")


class Hog:
    """A busy-loop process switched on and off at random (periods of 2-15 s) until stopped."""

    def __init__(self, rng: random.Random, enabled: bool = True) -> None:
        self.rng, self.enabled = rng, enabled
        self.process: subprocess.Popen | None = None
        self.on_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Hog:
        self.started = time.monotonic()
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()
        self.total = time.monotonic() - self.started

    def _run(self) -> None:
        on = self.rng.random() < 0.5
        while not self._stop.is_set():
            period = self.rng.uniform(2, 15)
            if on:
                began = time.monotonic()
                self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                self._stop.wait(period)
                self.process.kill()
                self.process.wait()
                self.on_seconds += time.monotonic() - began
            else:
                self._stop.wait(period)
            on = not on

    @property
    def on_fraction(self) -> float:
        return self.on_seconds / self.total if self.total else 0.0


def sweep(output: Path, baseline_dir: Path, extra: list[str], *args: str) -> subprocess.CompletedProcess:
    """One `densenet-opt sweep` in a fresh process, tests/ on the path for fault_plugin."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY / "tests"), str(REPOSITORY),
                                                                     os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "densenet_opt", "sweep", *SWEEP, *extra, "--output-dir", str(output),
               "--baseline-dir", str(baseline_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPOSITORY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--runs", type=int, default=10, help="K: gate runs per condition (default: %(default)s)")
    parser.add_argument("--slowdowns", default="0.15,0.30", help="injected slowdowns, fractions (default: %(default)s)")
    parser.add_argument("--slowed-variant", default="onnx", help="the variant slowed (default: %(default)s)")
    parser.add_argument("--no-hog", action="store_true", help="no CPU hog: the rates on a quiet machine")
    parser.add_argument("--slowdowns-only", action="store_true", help="only the slowed conditions (detections), not the unchanged one")
    parser.add_argument("--seed", type=int, default=1, help="the hog's random schedule (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=Path("results-false-alarm"), help="(default: %(default)s)")
    parser.add_argument("sweep_args", nargs="*", help="extra sweep options, after --")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        slowdowns = [float(x) for x in args.slowdowns.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--slowdowns takes fractions such as 0.15,0.30, not {args.slowdowns!r}")
    out: Path = args.output_dir
    baseline_dir = out / "baseline"
    out.mkdir(parents=True, exist_ok=True)
    kind = machine_kind("cpu")
    print(f"machine kind {kind}; storing the baseline of {' '.join(SWEEP + args.sweep_args)} (quiet machine)", flush=True)
    stored = sweep(out / "store", baseline_dir, args.sweep_args, "--save-baseline")
    if stored.returncode != 0:
        print(stored.stdout[-3000:] + stored.stderr[-2000:])
        print(f"false_alarm_rate: storing the baseline failed (exit {stored.returncode}): see above; "
              "rerun on a quieter machine", file=sys.stderr)
        return 2
    conditions = ([] if args.slowdowns_only else [("unchanged", None)]) + [(f"{args.slowed_variant} {s:.0%} slower", s) for s in slowdowns]
    rng = random.Random(args.seed)
    rows: list[dict[str, object]] = []
    total, started = len(conditions) * args.runs, time.monotonic()
    for name, slowdown in conditions:
        for run in range(1, args.runs + 1):
            done = len(rows)
            left = (time.monotonic() - started) / done * (total - done) if done else None
            print(f"[{done + 1}/{total}, {(time.monotonic() - started) / 60:.1f} min so far"
                  + (f", about {left / 60:.0f} min left" if left is not None else "") + f"] {name}, run {run}", flush=True)
            output = out / "runs" / f"{name.replace(' ', '_').replace('%', 'pct')}-{run}"
            faults = ["--", "-p", "fault_plugin", "--inject-fault", f"{args.slowed_variant}@*=slowdown:{1 + slowdown}"] if slowdown else []
            mark, began = PressureMark.now(), time.monotonic()
            with Hog(rng, enabled=not args.no_hog) as hog:
                result = sweep(output, baseline_dir, args.sweep_args, "--compare-baseline", *faults)
            verdicts = read_verdicts(output / VERDICTS_FILE)
            pressure = Contention.since(mark).cpu_pressure_pct
            slowed = any(v["variant"] == args.slowed_variant and v["verdict"] == REGRESSED for v in verdicts)
            rows.append({
                "condition": name, "run": run, "exit_code": result.returncode, "gate_failed": result.returncode == 1,
                "slowed_variant_regressed": slowed, "hog_on_fraction": round(hog.on_fraction, 2),
                "cpu_pressure_pct": None if pressure is None else round(pressure, 1),
                "seconds": round(time.monotonic() - began, 1),
                "verdicts": "; ".join(f"{v['variant']}@{v['batch_size']} {v['speed_ratio']} [{v['ci_low']}, {v['ci_high']}] "
                                      f"{v['verdict']}" for v in verdicts),
            })
            print(f"  exit {result.returncode}; {rows[-1]['verdicts'] or 'no verdicts'}; hog on "
                  f"{hog.on_fraction:.0%}, CPU pressure {rows[-1]['cpu_pressure_pct']}%", flush=True)
            if result.returncode not in (0, 1):
                print(result.stdout[-2000:] + result.stderr[-2000:])
            with (out / "false_alarm_runs.csv").open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, RUN_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    table = []
    for name, slowdown in conditions:
        mine = [r for r in rows if r["condition"] == name]
        counted = sum(bool(r["gate_failed"]) for r in mine) if slowdown is None else sum(bool(r["slowed_variant_regressed"]) for r in mine)
        table.append({"condition": name, "what is counted": "false alarms (gate failed)" if slowdown is None else
                      f"detections ({args.slowed_variant} regressed)", "of K": f"{counted} of {len(mine)}",
                      "errors (exit 2)": str(sum(r["exit_code"] not in (0, 1) for r in mine))})
    date = datetime.date.today().isoformat()
    text = (f"Measured {date} on `{kind}`, {'with a random CPU hog' if not args.no_hog else 'no hog'}; sweep "
            f"`{' '.join(SWEEP + args.sweep_args)}`; gate rule: densenet_opt/verdict.py.\n\n"
            + markdown_table(table, ["condition", "what is counted", "of K", "errors (exit 2)"]))
    (out / "false_alarm.md").write_text(text + "\n", encoding="utf-8")
    print("\n" + text)
    print(f"\nruns: {out / 'false_alarm_runs.csv'}; table: {out / 'false_alarm.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
