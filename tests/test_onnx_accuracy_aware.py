"""Accuracy-aware int8 (densenet_opt/variants/onnx/accuracy_aware.py): the ladder, the
choice of point, the Pareto table, and one real search on the sweep's DenseNet-121 export
(16 calibration images, 16 held-out images, k = 0, 1, 2), sharing the sweep's cache."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import pytest
import torch

from densenet_opt.accuracy import TOP1_OF_FP32_RULE
from densenet_opt.errors import UserError
from densenet_opt.workbench import Workbench
from densenet_opt.variants import BuildContext, get_variant, parse_variant_options
from densenet_opt.variants.onnx import builders as ort_variants
from densenet_opt.variants.onnx.builders import ONNX_INT8

pytest.importorskip("onnxruntime", reason="onnxruntime is an extra: pip install -e .[cpu]")
from densenet_opt.pareto import ParetoPoint, Search, columns, ladder  # noqa: E402
from densenet_opt.variants.onnx.graph_ops import optimized_op_counts  # noqa: E402
from densenet_opt.variants.onnx.quantize import CPU, RECIPES, int8_artifact  # noqa: E402

CALIBRATION = 16
SEARCH_OPTIONS = {"onnx_int8.search_images": "16", "onnx_int8.max_float_nodes": "2", "onnx.provider": "cpu"}


def point(k: int, agreement: float, speed: float = 10.0) -> ParetoPoint:
    return ParetoPoint(k, tuple(f"node{i}" for i in range(k)), agreement, speed, speed / 10.0)


def test_ladder_doubles_up_to_the_bound() -> None:
    assert ladder(64, 240) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert ladder(5, 240) == [0, 1, 2, 4, 5]
    assert ladder(64, 3) == [0, 1, 2, 3]  # no more nodes than the model has
    assert ladder(8, 0) == [0]


def test_chosen_is_the_fewest_float_nodes_meeting_the_target() -> None:
    search = Search((point(0, 95.0), point(1, 99.2, 9.0), point(2, 99.6, 8.0)), 99.0, 256, 32)
    assert search.chosen.kept_float == 1
    table = list(csv.DictReader(io.StringIO(search.table_csv())))
    assert tuple(table[0]) == columns("nodes") == (
        "float_nodes", "agreement_top_1", "throughput_samples_per_sec", "throughput_vs_all_int8", "meets_target", "chosen",
        "excluded_nodes")
    mlperf = Search(search.points, 99.0, 256, 32, "nodes", TOP1_OF_FP32_RULE)
    assert next(csv.reader(io.StringIO(mlperf.table_csv())))[1] == "top1_of_fp32_pct"
    assert Search.from_json(mlperf.to_json()) == mlperf
    assert [row["chosen"] for row in table] == ["false", "true", "false"]
    assert [row["meets_target"] for row in table] == ["false", "true", "true"]
    assert table[2]["excluded_nodes"] == "node0;node1"
    assert Search.from_json(search.to_json()) == search


def test_chosen_is_all_int8_when_no_point_meets_the_target() -> None:
    search = Search((point(0, 93.0), point(1, 96.0), point(2, 96.0), point(4, 95.5)), 99.0, 256, 32)
    assert search.chosen.kept_float == 0  # the fastest: buying agreement that still misses is the user's call
    assert not search.chosen.meets(search.target)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("onnx_int8.float_nodes", "-1", "auto or a whole number >= 0"),
        ("onnx_int8.float_nodes", "some", "auto or a whole number >= 0, got 'some'"),
        ("onnx_int8.accuracy_target", "150", "percentage in (0, 100]"),
        ("onnx_int8.search_images", "0", "must be at least 1, got 0"),
        ("onnx_int8.calibration", "kl", "percentile"),
    ],
)
def test_bad_option_values_are_one_sentence(key: str, value: str, says: str) -> None:
    with pytest.raises(UserError, match=key) as error:
        parse_variant_options({key: value})
    assert says in str(error.value) and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def ctx(workbench: Workbench) -> BuildContext:
    context = workbench.build_context(4)
    return dataclasses.replace(
        context, device=torch.device("cpu"), calibration_samples=CALIBRATION, progress=lambda message: None,
        options=parse_variant_options(SEARCH_OPTIONS),
    )


def test_search_measures_each_point_and_the_build_takes_the_chosen_one(ctx: BuildContext, tmp_path: Path) -> None:
    engine = get_variant(ONNX_INT8).build_engine(dataclasses.replace(ctx, report_dir=tmp_path))
    try:
        table = list(csv.DictReader((tmp_path / "onnx_int8_pareto.csv").open()))
        assert [int(row["float_nodes"]) for row in table] == [0, 1, 2]
        # The session's synthetic weights on synthetic images: labels measure top-1, so MLPerf's rule.
        assert engine.info["search_rule"] == "top-1 >= 99% of the fp32 model's (MLPerf's rule)"
        for row in table:
            assert float(row["top1_of_fp32_pct"]) > 0.0
            assert float(row["throughput_samples_per_sec"]) > 0
            assert len([name for name in row["excluded_nodes"].split(";") if name]) == int(row["float_nodes"])
        assert float(table[0]["throughput_vs_all_int8"]) == 1.0
        chosen = [row for row in table if row["chosen"] == "true"]
        assert len(chosen) == 1
        assert engine.info["float_nodes"] == chosen[0]["float_nodes"]
        assert engine.info["search_top1_of_fp32_pct"] == chosen[0]["top1_of_fp32_pct"]
        # The build again: the search comes from the cache, and the table is written again.
        first_table = (tmp_path / "onnx_int8_pareto.csv").read_text()
        (tmp_path / "onnx_int8_pareto.csv").unlink()
        again = get_variant(ONNX_INT8).build_engine(dataclasses.replace(ctx, report_dir=tmp_path))
        again.close()
        assert again.info["float_nodes_search"] == "cached"
        assert (tmp_path / "onnx_int8_pareto.csv").read_text() == first_table
    finally:
        engine.close()


def test_a_node_kept_in_float_really_runs_in_float(ctx: BuildContext) -> None:
    source = ort_variants.fp32_model(ctx)
    images = ctx.calibration_images(CALIBRATION)
    from densenet_opt.variants.onnx.accuracy_aware import ranked_nodes

    ranked = ranked_nodes(source, recipe=RECIPES[CPU], calibration=images, cache_dir=ctx.cache_dir, progress=print)
    assert len(ranked) > 100 and len(set(ranked)) == len(ranked)
    convs = [name for name in ranked if "Conv" in name][:2]
    all_int8 = int8_artifact(source, recipe=RECIPES[CPU], images=images, cache_dir=ctx.cache_dir, progress=print)
    two_float = int8_artifact(source, recipe=RECIPES[CPU], images=images, cache_dir=ctx.cache_dir, progress=print,
                              exclude=convs)
    before = optimized_op_counts(all_int8.path, precision="int8")
    after = optimized_op_counts(two_float.path, precision="int8")
    float_convs = lambda counts: counts["Conv"] + counts["FusedConv"]  # noqa: E731
    assert float_convs(before) == 0
    assert float_convs(after) == 2
    assert after["QLinearConv"] == before["QLinearConv"] - 2
