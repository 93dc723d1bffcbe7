"""The op types of the graphs ONNX Runtime's CPU provider really runs (after
ORT_ENABLE_ALL), for the table in docs/variants.md#onnx-runtime-settings: they show that the int8 graph is int8 end to end.
Needs onnxruntime."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import onnx

from densenet_opt.variants import BuildContext
from densenet_opt.variants.onnx.builders import ONNX, ONNX_INT8, fp32_model
from densenet_opt.variants.onnx.providers import (
    PROVIDERS, default_threads, disabled_optimizers, import_onnxruntime, session_options,
)
from densenet_opt.variants.onnx.quantize import CPU, RECIPES, int8_artifact


def optimized_op_counts(model_path: Path, *, precision: str, threads: int | None = None) -> Counter[str]:
    """Op type -> node count of the optimized CPU graph of the model at ``model_path``, as
    ORT writes it through SessionOptions.optimized_model_filepath, with the session
    settings the variants use for ``precision`` (providers.disabled_optimizers)."""
    ort = import_onnxruntime()
    with tempfile.TemporaryDirectory(prefix="densenet-opt-ort-") as folder:
        options = session_options(ort, "cpu", threads or default_threads())
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        # ORT warns that a graph optimized with NCHWc kernels is machine specific: known, and we only count it.
        options.log_severity_level = 3
        ort.InferenceSession(
            str(model_path), options, providers=[PROVIDERS["cpu"]], disabled_optimizers=disabled_optimizers(precision)
        )
        optimized = onnx.load(options.optimized_model_filepath)
    return Counter(node.op_type for node in optimized.graph.node)


def cpu_graph_op_counts(ctx: BuildContext) -> dict[str, Counter[str]]:
    """Op counts of the optimized CPU graphs of ``onnx`` (fp32) and the all-int8
    ``onnx_int8`` (no node kept in float), by variant name; builds (or takes from the
    cache) both models."""
    source = fp32_model(ctx)
    int8 = int8_artifact(source, recipe=RECIPES[CPU], images=ctx.calibration_images(ctx.calibration_samples),
                         cache_dir=ctx.cache_dir, progress=ctx.progress)
    return {ONNX: optimized_op_counts(source.path, precision="fp32"), ONNX_INT8: optimized_op_counts(int8.path, precision="int8")}


def op_count_table(counts: Mapping[str, Counter[str]]) -> str:
    """A markdown table: one row per op type (most frequent first), one column per model."""
    names = list(counts)
    ops = sorted({op for counter in counts.values() for op in counter}, key=lambda op: (-max(c[op] for c in counts.values()), op))
    lines = ["| op type | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {op} | " + " | ".join(str(counts[name][op]) for name in names) + " |" for op in ops]
    return "\n".join(lines)
