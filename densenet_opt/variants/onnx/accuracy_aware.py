"""Accuracy-aware int8 for ``onnx_int8``: which nodes to keep in float, measured.

The method, with the tools onnxruntime.quantization ships for it:

1. Calibrate once: ``quantize_static``'s calibration cache (``calibration_cache_path``)
   keeps the tensor ranges, so every point below is a quantization, not a calibration.
2. Rank the nodes by the error each adds: ``qdq_loss_debug`` runs the fp32 model and the
   all-int8 QDQ model on a few calibration images with every intermediate tensor exposed;
   its ``xmodel_err`` is the SQNR (dB) of each int8 activation against the fp32 one. A
   node's *added* error is the SQNR of its worst input minus that of its output: the
   nodes where the signal gets most worse, not the deep nodes where error inherited from
   everything before them is merely visible. (The ``qdq_err`` of one tensor's own
   quantize/dequantize is no guide here: the quantizer folds each ReLU into the uint8
   range, so a ReLU output's "own" error is the ReLU.)
3. For k on a ladder (0, 1, 2, 4, ...), quantize with the k highest-ranked nodes in
   ``nodes_to_exclude`` and measure, with onnxruntime's real int8 kernels: accuracy by the
   search's rule (variants/search_rule.py: MLPerf's top-1 as % of the fp32 model's where
   labels exist, else top-1 agreement with it) on held-out images of the calibration pool
   (neither calibration nor evaluated images), and throughput at one batch, the points
   timed round-robin so that a machine's drift lands on all of them alike.
4. The Pareto table holds every point; ``Search.chosen`` is the fewest float nodes that
   meet the rule's target (fewer float nodes is the faster model; the table shows the
   measured throughput so the user can check), or, when none does, the all-int8 point
   (k = 0), flagged as missing the target: trading throughput for accuracy that still
   misses the target is the user's call (``float_nodes=K`` takes any point of the table).

The search result (the table and the chosen nodes) is cached by everything it depends
on, so a sweep pays for it once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from densenet_opt.cache import key_digest, tensor_digest
from densenet_opt.errors import UserError
from densenet_opt.pareto import Search, measure_ladder
from densenet_opt.variants.onnx.export import Artifact
from densenet_opt.variants.search_rule import search_rule
from densenet_opt.variants.onnx.quantize import (
    ImageBatchReader,
    Recipe,
    batchnorm_to_depthwise_conv,
    int8_artifact,
)

# k = 0, 1, 2, 4, ... up to this many nodes kept in float (DenseNet-121's QDQ model
# quantizes about 240 nodes; 64 keeps a quarter of them).
DEFAULT_MAX_FLOAT_NODES = 64
# Calibration images the sensitivity pass runs (every activation of DenseNet-121 is kept:
# about 120 MB an image).
SENSITIVITY_IMAGES = 4
SEARCH_VERSION = 3  # 2: the shared pareto.Search (kept_float); 3: the accuracy rule


def rank_nodes(fp32_model: onnx.ModelProto, int8_path: Path, images: np.ndarray, workdir: Path) -> list[str]:
    """Names of the nodes of ``fp32_model`` (after the recipe's rewrite, so names match
    quantize_static's) ordered by the error each adds in the int8 model at ``int8_path``,
    worst first; nodes whose error is not measurable (no input or output matched) are left
    out. ``images``: float32 [N,3,224,224], run one at a time. Method: module docstring."""
    from onnxruntime.quantization import qdq_loss_debug as debug

    fp32_path, fp32_exposed, int8_exposed = workdir / "fp32.onnx", workdir / "fp32-exposed.onnx", workdir / "int8-exposed.onnx"
    onnx.save(fp32_model, str(fp32_path))
    debug.modify_model_output_intermediate_tensors(str(fp32_path), str(fp32_exposed))
    debug.modify_model_output_intermediate_tensors(str(int8_path), str(int8_exposed))
    reader = lambda: ImageBatchReader(np.ascontiguousarray(images, dtype=np.float32), batch_size=1)  # noqa: E731
    matching = debug.create_activation_matching(
        debug.collect_activations(str(int8_exposed), reader()), debug.collect_activations(str(fp32_exposed), reader())
    )
    sqnr = {name: float(error["xmodel_err"]) for name, error in debug.compute_activation_error(matching).items()}
    added: list[tuple[float, str]] = []
    for node in fp32_model.graph.node:
        inputs = [sqnr[name] for name in node.input if name in sqnr]
        outputs = [sqnr[name] for name in node.output if name in sqnr]
        if inputs and outputs and node.name:
            added.append((min(inputs) - outputs[0], node.name))
    return [name for _, name in sorted(added, key=lambda item: -item[0])]


def ranked_nodes(
    source: Artifact, *, recipe: Recipe, calibration: torch.Tensor, cache_dir: Path, progress: Callable[[str], None],
) -> list[str]:
    """rank_nodes for ``source`` quantized by ``recipe`` on ``calibration`` (float32
    [N,3,224,224]; the first SENSITIVITY_IMAGES are run): builds (or finds cached) the
    all-int8 model, applies the recipe's rewrite to the fp32 model, ranks in a temporary folder."""
    all_int8 = int8_artifact(source, recipe=recipe, images=calibration, cache_dir=cache_dir, progress=progress)
    model = onnx.load(str(source.path))
    if recipe.batchnorm_as_depthwise_conv:
        batchnorm_to_depthwise_conv(model)
    progress(f"onnx_int8: ranking nodes by the error each adds (qdq_loss_debug on {SENSITIVITY_IMAGES} calibration images)")
    with tempfile.TemporaryDirectory(prefix="densenet-opt-sensitivity-") as workdir:
        return rank_nodes(model, all_int8.path, calibration[:SENSITIVITY_IMAGES].numpy(), Path(workdir))


def search(
    source: Artifact,
    *,
    recipe: Recipe,
    calibration: torch.Tensor,
    heldout: torch.Tensor,
    rule: str,
    target: float,
    labels: np.ndarray | None,
    max_float_nodes: int,
    batch_size: int,
    rounds: int,
    open_session: Callable[[Path], object],
    cache_dir: Path,
    progress: Callable[[str], None],
) -> Search:
    """Measure the Pareto points of ``source`` quantized by ``recipe`` (module docstring).

    ``calibration``/``heldout``: float32 [N,3,224,224], disjoint. ``rule`` (accuracy.SEARCH_RULES),
    ``target`` (%) and ``labels`` (int64 [N] of ``heldout``, or None) make the SearchRule every
    point is scored by, against the fp32 model run here. ``open_session(path)``: an onnxruntime InferenceSession as the variant runs it
    (provider, threads). ``rounds``: timed calls per point at ``batch_size``. Each point's
    int8 model is cached like the variant's (int8_artifact). UserError when ``heldout``
    is empty, or when the fp32 model gets none of it right by the labels (search_rule)."""
    if len(heldout) == 0:
        raise UserError(
            f"the accuracy-aware int8 search found no held-out images after the {len(calibration)} calibration images: "
            "give a data folder with more images, or pass --variant-options onnx_int8.float_nodes=0 (all-int8)"
        )
    fp32 = open_session(source.path)
    name = fp32.get_inputs()[0].name
    heldout_np = np.ascontiguousarray(heldout.numpy(), dtype=np.float32)

    def logits(session) -> np.ndarray:
        return np.concatenate([
            session.run(None, {name: heldout_np[start : start + batch_size]})[0]
            for start in range(0, len(heldout_np), batch_size)
        ])

    rule_of_search = search_rule(rule, target, logits(fp32).argmax(axis=1), labels, "onnx_int8")
    del fp32
    build = lambda exclude: int8_artifact(  # noqa: E731
        source, recipe=recipe, images=calibration, cache_dir=cache_dir, progress=progress, exclude=exclude
    )
    ranked = ranked_nodes(source, recipe=recipe, calibration=calibration, cache_dir=cache_dir, progress=progress)
    batch = heldout_np[:batch_size]
    points = measure_ladder(
        ranked, max_float_nodes, build=lambda exclude: open_session(build(exclude).path),
        score=lambda session: rule_of_search.score(logits(session)), rule=rule,
        run_batch=lambda session: session.run(None, {name: batch}), batch_size=len(batch), rounds=rounds,
        heldout_images=len(heldout), progress=progress, name="onnx_int8", unit="node",
    )
    return Search(points, target, len(heldout), len(batch), "nodes", rule)


def search_cache_path(cache_dir: Path, key: dict) -> Path:
    """Where a search's result is cached, by ``key`` (everything it depends on)."""
    return Path(cache_dir) / "onnx" / "search" / f"int8-float-nodes-{key_digest(key)}.json"


def search_key(source: Artifact, recipe: Recipe, calibration: torch.Tensor, heldout: torch.Tensor, rule: str,
               target: float, labels: np.ndarray | None, max_float_nodes: int, batch_size: int) -> dict:
    """What a search's result depends on (timing settings aside: throughput is reported, not chosen on)."""
    return {
        "version": SEARCH_VERSION, "source_sha256": source.sha256,
        "recipe": asdict(recipe),
        "calibration": f"{len(calibration)}-{tensor_digest(calibration)}",
        "heldout": f"{len(heldout)}-{tensor_digest(heldout)}",
        "rule": rule, "labels": None if labels is None else tensor_digest(torch.from_numpy(labels)),
        "target": target, "max_float_nodes": max_float_nodes, "batch_size": batch_size,
        "sensitivity_images": SENSITIVITY_IMAGES,
    }
