"""A sweep as a process: pytest with the plugin, from the CLI or as one GPU shard.

``run_sweep`` is what ``densenet-opt sweep`` and each GPU shard run: pytest-benchmark over
the package's own benchmark test (densenet_opt/bench.py, so it works from an installed
copy and from any directory), with the already-parsed options handed to the plugin. The
plugin closes the sweep (gate.py), so ``pytest --benchmark-only`` and ``densenet-opt
sweep`` leave the same files and exit codes.

A shard (``python -m densenet_opt.runner``) reads ``{"options": ..., "pytest_args": [...]}``
as JSON on standard input: the typed options as data, never re-parsed flags.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from densenet_opt import bench
from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError
from densenet_opt.plugin import OptionsHandover


def run_sweep(options: SweepOptions, pytest_args: Sequence[str] = ()) -> int:
    """Run the sweep in this process; returns pytest's exit code (1 also when the gate
    found a regression, 2 for a problem the user can fix, with its sentence printed)."""
    options.output_dir.mkdir(parents=True, exist_ok=True)
    package = Path(bench.__file__).parent
    args = [
        str(Path(bench.__file__)),
        # The package's parent: the benchmark is then densenet_opt/bench.py::test_inference[...]
        # wherever the package is installed, the name stored baselines are compared by.
        f"--rootdir={package.parent}",
        f"--confcutdir={package}",  # no conftest.py from the directories above an installed package
        "-p", "no:cacheprovider",
        # Only the benchmark runs, unless it is disabled or skipped (which --benchmark-only
        # would overrule or refuse): then the gate says it compared nothing.
        *([] if {"--benchmark-skip", "--benchmark-disable"} & set(pytest_args) else ["--benchmark-only"]),
        *pytest_args,
    ]
    return int(pytest.main(args, plugins=[OptionsHandover(options)]))


def main() -> int:
    """A shard's process: the request as JSON on standard input."""
    request = json.loads(sys.stdin.read())
    try:
        return run_sweep(SweepOptions.from_dict(request["options"]), request.get("pytest_args", []))
    except UserError as error:
        print(f"densenet-opt: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
