"""--resume: which configs the results file already holds, measured with this run's inputs.

Reads the output directory's results file; this run's inputs (the weights' key, the
calibration images, the variant options, the evaluation data) come from a Workbench, so
no measurement is set up to answer.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from densenet_opt.config import SweepOptions
from densenet_opt.measure.env import machine_kind, machine_name
from densenet_opt.report import OK, RESULTS_FILE, Row, printable_path_text, read_rows
from densenet_opt.workbench import Workbench

# resume_mismatch's answer for a row written before rows recorded their inputs.
OLDER_VERSION = "older version"


def completed_rows(options: SweepOptions) -> list[Row]:
    """Rows of ``options``' device, machine and machine kind (or of no named machine or kind:
    files of older versions) already in the output directory that measured successfully.
    Raises UserError for a results file that cannot be read."""
    rows = read_rows(options.output_dir / RESULTS_FILE)
    device = torch.device(options.device)
    kind = machine_kind(device)
    machine = machine_name(options.machine_label)
    return [r for r in rows if r.device == device.type and r.status == OK and r.machine in (None, machine)
            and r.machine_kind in (None, kind)]


def resume_mismatch(workbench: Workbench, row: Row) -> str | None:
    """Why ``row`` (a completed row of this device, machine and kind) was not measured
    with ``workbench``'s inputs: the option that differs, or None when it was."""
    if row.inputs is None:
        return OLDER_VERSION
    recorded = dict(part.partition("=")[::2] for part in row.inputs.split(";"))
    current = dict(part.partition("=")[::2] for part in workbench.inputs_of(row.variant).split(";"))
    for key, option in (("weights", "--weights"), ("calibration", "--calibration-samples"), ("options", "--variant-options")):
        if recorded.get(key) != current[key]:
            return option
    if row.num_samples != workbench.options.num_samples:
        return "--num-samples"
    if row.data != printable_path_text(workbench.eval_set.source):  # as the row holds it
        return "--imagenet-val"
    return None


def resume_plan(workbench: Workbench, configs: Collection[tuple[str, int]]) -> tuple[set[tuple[str, int]], dict[str, list[tuple[str, int]]]]:
    """--resume over ``configs`` (this run's): those whose completed row was measured with
    ``workbench``'s inputs (skipped), and the others by the option that differs (measured
    again; OLDER_VERSION for rows that recorded no inputs). Raises UserError for a results
    file, weights or data that cannot be read."""
    done: set[tuple[str, int]] = set()
    stale: dict[str, list[tuple[str, int]]] = {}
    for row in completed_rows(workbench.options):
        if (row.variant, row.batch_size) not in configs:
            continue
        differs = resume_mismatch(workbench, row)
        if differs is None:
            done.add((row.variant, row.batch_size))
        else:
            stale.setdefault(differs, []).append((row.variant, row.batch_size))
    return done, stale
