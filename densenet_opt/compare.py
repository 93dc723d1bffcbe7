"""A/B on one machine: two versions of the suite timed round by round, no stored baseline.

``densenet-opt compare`` builds every (variant, batch size) in two worker processes, one
per **side**: the *head* (by default the working tree this process runs from) and the
*base* (a git revision, another source tree, or the same tree under another Python
environment, e.g. one that differs in one dependency). Each side's worker imports
``densenet_opt`` from its own tree (PYTHONPATH) and builds its engines with that tree's
code (``Workbench.build_engine``) into its own cache directory, so that no artifact built by
one side is reused by the other. The coordinator then times the two engines of a config
**interleaved**: round i runs base then head, round i+1 head then base (ABBA order, so
neither side always runs first), each round one call on the same input batch timed in its
worker with perf_counter. Drift of the machine's speed, a CPU hog starting or stopping,
lands on both halves of a pair: the per-round ratio base seconds / head seconds is the
head's speed relative to the base, and verdict.judge gives its interval and verdict
against 1 (below 1 - threshold, wholly: the head REGRESSED). This is what asv's
``continuous`` does one version after the other; interleaving pairs the rounds.

Writes OUTPUT_DIR/compare.csv (verdict.VERDICT_COLUMNS) and prints one verdict line per
config. Raises UserError for a revision git cannot export, a worker that fails to start
or to build an engine (its last output lines quoted), and bad options.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from densenet_opt import atomic
from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError
from densenet_opt.report import OUTPUT_OPTION
from densenet_opt.verdict import Verdict, judge, verdicts_csv

COMPARE_FILE = "compare.csv"
PROTOCOL = "@@densenet-opt-compare "
# The worker: runs in each side's interpreter with that side's tree first on the path, so
# it may only use what both versions have (options_from_mapping, build_engine and
# input_batch: a Workbench's, or in a version older than workbench.py a Sweep's). One JSON
# request per line on stdin, one PROTOCOL line per answer.
WORKER = r'''
import json, sys, time, traceback
import densenet_opt
from densenet_opt.config import options_from_mapping
try:
    from densenet_opt.workbench import Workbench
except ImportError:  # a version from before the split: the Sweep built engines
    from densenet_opt.sweep import Sweep as Workbench

def answer(**values):
    print("@@densenet-opt-compare " + json.dumps(values), flush=True)

options = options_from_mapping(json.loads(sys.argv[1]))
workbench = Workbench(options, progress=lambda message: print(message, file=sys.stderr, flush=True))
answer(ready=True, package=densenet_opt.__file__)
engines, batches = {}, {}
for line in sys.stdin:
    request = json.loads(line)
    try:
        if request["do"] == "build":
            key = (request["variant"], request["batch_size"])
            engines[key] = workbench.build_engine(*key)
            batches[key] = workbench.input_batch(request["batch_size"])
            answer(built=True)
        elif request["do"] == "round":
            key = (request["variant"], request["batch_size"])
            started = time.perf_counter()
            engines[key](batches[key])
            answer(seconds=time.perf_counter() - started)
        elif request["do"] == "release":
            key = (request["variant"], request["batch_size"])
            engine = engines.pop(key, None)
            if engine is not None and hasattr(engine, "close"):
                engine.close()
            answer(released=True)
        elif request["do"] == "stop":
            break
    except Exception as error:
        traceback.print_exc()
        answer(error=f"{type(error).__name__}: {error}")
'''


@dataclass(frozen=True)
class Side:
    """One version: ``tree`` (a directory holding the ``densenet_opt`` package) run by
    ``python``; ``label`` names it in the output ("head", "base")."""

    label: str
    tree: Path
    python: str = sys.executable


def export_revision(repository: Path, revision: str, into: Path) -> Path:
    """``git archive`` of ``revision`` of ``repository`` unpacked into ``into``; returns it.
    Raises UserError when git cannot export it (unknown revision, not a repository)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repository), "archive", "--format=tar", revision],
                             capture_output=True)
    if archive.returncode != 0:
        raise UserError(f"git cannot export revision {revision!r} of {repository}: "
                        f"{archive.stderr.decode(errors='replace').strip() or 'unknown error'}; name a commit, branch or tag")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def resolve_side(label: str, spec: str | None, python: str | None, repository: Path, scratch: Path) -> Side:
    """A side from the command line: ``spec`` None for the working tree (``repository``), a
    directory holding ``densenet_opt/``, or a git revision of ``repository`` (exported to
    ``scratch``). ``python``: the interpreter (default: this one)."""
    if spec is None:
        tree = repository
    elif Path(spec).is_dir():
        tree = Path(spec).resolve()
    else:
        tree = export_revision(repository, spec, scratch / label)
    if not (tree / "densenet_opt" / "__init__.py").is_file():
        raise UserError(f"the {label} side {tree} holds no densenet_opt package: name a source tree or a revision of this repository")
    return Side(label, tree, python or sys.executable)


def shared_weights(options: SweepOptions, scratch: Path, progress: Callable[[str], None] = print) -> str:
    """The weights both sides load, as a file: ``options.weights`` when it names one, else
    the weights it names (auto, torchvision, synthetic: model.resolve_weights, from this
    machine's cache) saved to ``scratch``, so that neither side rebuilds synthetic weights
    into its fresh cache and both time the same bytes. Raises UserError as
    model.resolve_weights does."""
    if Path(options.weights).is_file():
        return str(Path(options.weights).resolve())
    import torch

    from densenet_opt import model

    weights = model.resolve_weights(options.weights, cache_dir=options.cache_dir,
                                    allow_pickle=options.allow_unsafe_weights, progress=progress)
    path = scratch / "weights.pt"
    torch.save(dict(weights.state_dict), path)
    progress(f"both sides load the {weights.source} weights ({weights.key}) from {path}")
    return str(path)


class Worker:
    """A side's worker process (WORKER), talked to one request at a time. ``options``: the
    sweep options as text, {dest: value} as options_from_mapping reads them (each side
    parses them with its own version); ``cache_dir``: the side's own artifact cache."""

    def __init__(self, side: Side, options: Mapping[str, object], cache_dir: Path) -> None:
        self.side = side
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(side.tree), os.environ.get("PYTHONPATH")]))}
        arguments = {**options, "cache_dir": str(cache_dir)}
        self.log = tempfile.TemporaryFile(mode="w+")
        # -P: the working directory is not put first on the path, so the side's tree is.
        self.process = subprocess.Popen([side.python, "-P", "-c", WORKER, json.dumps(arguments)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.package = self._answer("start")["package"]

    def request(self, what: str, **values) -> dict:
        self.process.stdin.write(json.dumps({"do": what, **values}) + "\n")
        self.process.stdin.flush()
        return self._answer(what)

    def _answer(self, what: str) -> dict:
        for line in self.process.stdout:
            if line.startswith(PROTOCOL):
                answer = json.loads(line[len(PROTOCOL):])
                if "error" in answer:
                    raise UserError(f"the {self.side.label} side ({self.side.tree}) failed to {what}: {answer['error']}")
                return answer
        self.process.wait()
        raise UserError(f"the {self.side.label} side's worker ({self.side.python}, {self.side.tree}) ended "
                        f"(exit {self.process.returncode}) before it could {what}: {self.tail()}")

    def tail(self, lines: int = 5) -> str:
        self.log.seek(0)
        text = self.log.read().strip().splitlines()
        return " | ".join(text[-lines:]) or "no output"

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"do": "stop"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        self.log.close()


def interleaved_rounds(base: Worker, head: Worker, variant: str, batch_size: int, rounds: int, warmup_rounds: int) -> list[float]:
    """Per-round ratios base seconds / head seconds of one config, ABBA order (round i even:
    base first), after ``warmup_rounds`` untimed rounds of each; both engines are built
    first and released after."""
    for worker in (base, head):
        worker.request("build", variant=variant, batch_size=batch_size)
    try:
        ratios = []
        for i in range(warmup_rounds + rounds):
            order = (base, head) if i % 2 == 0 else (head, base)
            seconds = {worker.side.label: worker.request("round", variant=variant, batch_size=batch_size)["seconds"]
                       for worker in order}
            if i >= warmup_rounds:
                ratios.append(seconds[base.side.label] / seconds[head.side.label])
        return ratios
    finally:
        for worker in (base, head):
            worker.request("release", variant=variant, batch_size=batch_size)


def compare_sides(options: SweepOptions, raw_options: Mapping[str, object], base: Side, head: Side, *, max_drop: float,
                  scratch: Path, progress: Callable[[str], None] = print) -> list[Verdict]:
    """Every (variant, batch size) of ``options`` timed on ``base`` and ``head``, interleaved
    (interleaved_rounds, ``options.rounds`` and ``options.warmup_rounds``), judged by
    verdict.judge against 1; writes OUTPUT_DIR/compare.csv. ``raw_options``: the sweep
    options as text (what each worker parses with its own version). Raises UserError as
    the module docstring says. Each side's artifact cache is a fresh folder under
    ``scratch``: cache keys name inputs and library versions, not the suite's own code, so a
    shared or kept cache would hand one version's export to the other."""
    workers: list[Worker] = []
    verdicts: list[Verdict] = []
    try:
        for side in (base, head):
            progress(f"{side.label}: starting {side.python} on {side.tree}")
            workers.append(Worker(side, raw_options, scratch / f"cache-{side.label}"))
            progress(f"{side.label}: densenet_opt from {workers[-1].package}")
        configs = [(v, b) for v in options.variants for b in options.batch_sizes]
        for number, (variant, batch_size) in enumerate(configs, 1):
            progress(f"[{number}/{len(configs)}] {variant} at batch {batch_size}: building both engines, then "
                     f"{options.rounds} interleaved rounds")
            ratios = interleaved_rounds(workers[0], workers[1], variant, batch_size, options.rounds, options.warmup_rounds)
            verdicts.append(judge(variant, batch_size, ratios, 1.0, max_drop))
            line = verdicts[-1].line().replace("vs stored", f"{head.label} vs {base.label}")
            progress(("REGRESSION: " if verdicts[-1].regressed else "  ") + line)
    finally:
        for worker in workers:
            worker.close()
        if verdicts:
            options.output_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_text(options.output_dir / COMPARE_FILE, verdicts_csv(verdicts), option=OUTPUT_OPTION)
    return verdicts
