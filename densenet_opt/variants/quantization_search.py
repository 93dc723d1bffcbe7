"""Accuracy-aware int8 for ``int8`` (torchao PT2E): which modules to keep in float, measured.

The method, with the tools torchao ships for it:

1. Rank the modules by the error each adds, with torchao's numeric debugger
   (``torchao.quantization.pt2e``: ``prepare_for_propagation_comparison`` logs every
   node's output of a graph, ``extract_results_from_loggers`` and ``compare_results`` pair
   the float graph's nodes with the all-int8 graph's by their source node and give the
   SQNR, dB, of each int8 output against the float one), on SENSITIVITY_IMAGES calibration
   images. The SQNR of a deep node is mostly error inherited from everything before it,
   so a convolution or linear node is charged with what it *adds*: the relative noise
   power at its output minus that at its input, 10^(-SQNR_out/10) - 10^(-SQNR_in/10) (an
   input without error, the image, has none). A module (``Conv2d``, ``Linear``, named as
   in ``named_modules``, from the node's ``nn_module_stack``) takes its worst node.
2. For k on a ladder (0, 1, 2, 4, ...), the k highest-ranked modules get no
   quantization config (``X86InductorQuantizer.set_module_name_qconfig(name, None)``:
   prepare_pt2e annotates nothing inside them, so they run in float and the quantized
   tensors around them are dequantized), then the variant's own flow: prepare_pt2e,
   calibration on the same calibration images, convert_pt2e, an AOTInductor package at
   the search's batch size (the very package the variant loads when that point is chosen
   and the sweep's batch size is the search's, cached by the same key; another batch size
   compiles its own). Each point's accuracy by the search's rule (variants/search_rule.py:
   MLPerf's top-1 as % of the fp32 reference's where labels exist, else top-1 agreement
   with it) is measured with its package, i.e. with the oneDNN int8 kernels the variant
   runs, on held-out images of the calibration pool (neither calibration nor evaluated
   images), and its throughput is timed at that batch, the points round-robin.
3. The choice and the table: ``densenet_opt.pareto``.

Every point costs an AOTInductor compile (minutes on 2 cores); the search result is
cached by everything it depends on, so a sweep pays for it once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from densenet_opt import pareto
from densenet_opt.accuracy import SearchRule

# Calibration images the numeric debugger runs (every node output of both graphs is
# logged: about 250 MB an image for DenseNet-121).
SENSITIVITY_IMAGES = 4
# The ops whose owning module can be kept in float (convolutions, the classifier).
RANKED_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
UNIT = "modules"


def _noise(sqnr_db: float) -> float:
    """Relative noise power (noise / signal) of an SQNR in dB; 0 for an exact tensor."""
    return 0.0 if sqnr_db == float("inf") else float(10.0 ** (-sqnr_db / 10.0))


def rank_modules(
    float_graph: torch.fx.GraphModule,
    quantize: Callable[[torch.fx.GraphModule], torch.fx.GraphModule],
    images: torch.Tensor,
) -> list[str]:
    """Names of the modules owning a conv2d or linear node of ``float_graph`` (an exported
    graph module), ordered by the error each adds once ``quantize(float_graph)`` (which may
    change ``float_graph``, as prepare_pt2e does) has made it int8, worst first; modules
    whose error could not be measured are left out. ``images``: float32 [N,3,H,W], N small
    (every node's output of both graphs is kept). Method: module docstring."""
    from torchao.quantization.pt2e import (
        compare_results, extract_results_from_loggers, prepare_for_propagation_comparison,
    )

    ranked_nodes = []  # (node name, its input's node name, owning module), read before quantize changes the graph
    for node in float_graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and node.target in RANKED_OPS and stack:
            source = node.args[0]
            ranked_nodes.append((node.name, getattr(source, "name", None), list(stack.values())[-1][0]))
    reference = prepare_for_propagation_comparison(float_graph)  # a logging copy
    actual = prepare_for_propagation_comparison(quantize(float_graph))
    with torch.no_grad():
        reference(images)
        actual(images)
    comparison = compare_results(extract_results_from_loggers(reference), extract_results_from_loggers(actual))
    sqnr = {summary.ref_node_name: float(summary.results[0].sqnr) for summary in comparison.values()}
    added: dict[str, float] = {}
    for name, source, module in ranked_nodes:
        if name not in sqnr:
            continue
        noise_in = _noise(sqnr[source]) if source in sqnr else 0.0
        added[module] = max(added.get(module, -np.inf), _noise(sqnr[name]) - noise_in)
    return sorted(added, key=lambda module: -added[module])


def batched_logits(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> np.ndarray:
    """float32 logits [N,C] of ``run`` (which takes exactly ``batch_size`` images) over
    ``images`` [N,3,H,W]: the last partial batch is padded by repeating its last image and
    the padded rows dropped."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = torch.cat([chunk, chunk[-1:].expand(batch_size - real, *chunk.shape[1:])])
        out.append(run(chunk.contiguous())[:real].float().numpy())
    return np.concatenate(out)


def search(
    *,
    ranked: Sequence[str],
    build_point: Callable[[tuple[str, ...]], Callable[[torch.Tensor], torch.Tensor]],
    rule: SearchRule,
    heldout: torch.Tensor,
    max_float_modules: int,
    batch_size: int,
    rounds: int,
    progress: Callable[[str], None],
) -> pareto.Search:
    """Measure the Pareto points (module docstring). ``ranked``: module names, most harmful
    first (rank_modules). ``build_point(excluded)``: the variant's engine with ``excluded``
    kept in float, taking batches of exactly ``batch_size`` float32 images.
    ``rule``: what each point's accuracy is scored by on ``heldout`` (float32
    [N,3,224,224]), and its target. ``rounds``: timed calls per point."""
    batch = heldout[:batch_size]
    if len(batch) < batch_size:
        batch = torch.cat([batch, batch[-1:].expand(batch_size - len(batch), *batch.shape[1:])])
    points = pareto.measure_ladder(
        ranked, max_float_modules, build=build_point,
        score=lambda engine: rule.score(batched_logits(engine, heldout, batch_size)), rule=rule.name,
        run_batch=lambda engine: engine(batch), batch_size=batch_size, rounds=rounds, heldout_images=len(heldout),
        progress=progress, name="int8", unit="module",
    )
    return pareto.Search(points, rule.target, len(heldout), batch_size, UNIT, rule.name)
