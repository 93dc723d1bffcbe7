"""Accuracy-aware int8 for ``int8`` (variants/quantization_search.py, quantization.py): the
ranking with torchao's numeric debugger, modules kept in float, the search's points and
choice with fake engines, and one real search end to end on a small CNN (two AOTInductor
packages), the chosen point's package reused by the variant's build."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from densenet_opt.accuracy import AGREEMENT_RULE, SearchRule
from densenet_opt.errors import UserError
from densenet_opt.variants import BuildContext, get_variant, parse_variant_options

pytest.importorskip("torchao", reason="int8 needs torchao: pip install 'torchao>=0.18'")
from densenet_opt.variants import quantization, quantization_search  # noqa: E402

SIZE = 64


class Net(torch.nn.Module):
    """stem -> loud -> quiet -> head. ``loud``'s first output channel is 1000x the others,
    so the per-tensor uint8 quantization of ``quiet``'s input has a step far above the
    other channels' values; ``quiet`` reads only those other channels (its weights on
    channel 0 are zero), so nearly all of its output is quantization error: the module
    that adds the most error, and the first to keep in float."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, size, 3, stride=4, padding=1)
        self.loud = torch.nn.Conv2d(size, size, 1)
        self.quiet = torch.nn.Conv2d(size, size, 1)
        self.head = torch.nn.Linear(size, 10)
        with torch.no_grad():
            self.loud.weight[0] *= 1000.0
            self.quiet.weight[:, 0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        y = torch.relu(self.loud(y))
        return self.head(self.quiet(y).mean((2, 3)))


def exported(model: torch.nn.Module) -> torch.fx.GraphModule:
    example = torch.randn(2, 3, SIZE, SIZE)
    return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("b", min=1, max=64)},)).module()


def test_the_module_that_adds_the_most_error_ranks_first() -> None:
    images = torch.randn(8, 3, SIZE, SIZE)
    ranked = quantization_search.rank_modules(exported(Net().eval()), lambda g: quantization.quantize(g, images), images[:4])
    assert ranked[0] == "quiet"
    assert sorted(ranked) == ["head", "loud", "quiet", "stem"]  # every conv and linear, by module name


def test_an_excluded_module_runs_in_float_and_the_error_drops() -> None:
    images = torch.randn(8, 3, SIZE, SIZE)
    model = Net().eval()
    with torch.no_grad():
        reference = model(images)
        errors = {}
        for excluded in ((), ("quiet",)):
            converted = quantization.quantize(exported(model), images, excluded)
            convs = [node for node in converted.graph.nodes if node.target == torch.ops.aten.conv2d.default]
            weight_is_int8 = [node.args[1].target == torch.ops.quantized_decomposed.dequantize_per_channel.default
                              for node in convs]
            assert weight_is_int8 == [True, True, not excluded]  # stem, loud, quiet
            errors[excluded] = float((converted(images) - reference).pow(2).mean())
    assert errors[("quiet",)] < errors[()] / 10


def test_batched_logits_pads_the_last_batch_and_drops_the_padding() -> None:
    seen = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        seen.append(len(batch))
        return batch.flatten(1)[:, :2]

    images = torch.arange(10 * 3 * 2 * 2, dtype=torch.float32).reshape(10, 3, 2, 2)
    logits = quantization_search.batched_logits(run, images, 4)
    assert seen == [4, 4, 4] and logits.shape == (10, 2)
    np.testing.assert_array_equal(logits, images.flatten(1)[:, :2].numpy())


def test_search_measures_each_point_and_chooses_the_fewest_float_modules_that_meet_the_target() -> None:
    reference = np.arange(10) % 3
    built, said = [], []

    def build_point(excluded: tuple[str, ...]):
        built.append(excluded)
        wrong = max(0, 2 - len(excluded))  # 2 rows wrong all-int8, 1 with one module in float, 0 with two
        served = [0]

        def engine(batch: torch.Tensor) -> torch.Tensor:
            assert len(batch) == 4  # exactly the search's batch, the last one padded
            rows = np.arange(served[0], served[0] + len(batch))
            served[0] += len(batch)
            labels = reference[np.minimum(rows, len(reference) - 1)].copy()
            labels[rows < wrong] = (labels[rows < wrong] + 1) % 3
            return torch.nn.functional.one_hot(torch.as_tensor(labels), 3).float()

        return engine

    result = quantization_search.search(
        ranked=["a", "b", "c"], build_point=build_point, rule=SearchRule.of(AGREEMENT_RULE, 100.0, reference),
        heldout=torch.zeros(10, 3, 2, 2), max_float_modules=4, batch_size=4, rounds=2, progress=said.append,
    )
    assert built == [(), ("a",), ("a", "b"), ("a", "b", "c")]
    assert [point.score for point in result.points] == [80.0, 90.0, 100.0, 100.0]
    assert result.chosen.excluded == ("a", "b") and result.unit == "modules"
    assert all(point.throughput_samples_per_sec > 0 for point in result.points)
    assert len(said) == 4 and "about" in said[0] and "s left" in said[0]
    header = result.table_csv().splitlines()[0]
    assert header.startswith("float_modules,agreement_top_1") and header.endswith("excluded_modules")


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("int8.float_modules", "-2", "auto or a whole number >= 0, got -2"),
        ("int8.float_modules", "most", "auto or a whole number >= 0, got 'most'"),
        ("int8.accuracy_target", "0", "percentage in (0, 100]"),
        ("int8.accuracy_rule", "top5", "must be one of auto, top1_of_fp32, agreement"),
        ("int8.search_images", "0", "must be at least 1, got 0"),
        ("int8.max_float_modules", "0", "must be at least 1, got 0"),
        ("int8.observer", "kl", "must be one of histogram, minmax"),
        ("int8.reduce_range", "yes", "must be one of off, on"),
    ],
)
def test_bad_option_values_are_one_sentence(key: str, value: str, says: str) -> None:
    with pytest.raises(UserError, match=key) as error:
        parse_variant_options({key: value})
    assert says in str(error.value) and "\n" not in str(error.value)


def test_the_recipe_changes_the_observer_and_range_and_keeps_the_default_key() -> None:
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    default = quantization.Recipe()
    assert default.name == "x86-inductor-default" and default.key == {}  # earlier packages and searches stay valid
    config = default.config()
    assert config.input_activation.quant_max == 255
    assert config.input_activation.observer_or_fake_quant_ctr.p.func is HistogramObserver
    recipe = quantization.Recipe(quantization.MINMAX, reduce_range=True)
    assert recipe.name == "x86-inductor-minmax-reduce-range" and recipe.key == {"quantizer": recipe.name}
    config = recipe.config()
    assert config.input_activation.quant_max == config.output_activation.quant_max == 127
    assert config.input_activation.observer_or_fake_quant_ctr.p.func is MinMaxObserver
    assert "u7 (reduce_range)" in recipe.describe() and "minmax" in recipe.describe()
    images = torch.randn(8, 3, SIZE, SIZE)
    model = Net().eval()
    with torch.no_grad():
        converted = quantization.quantize(exported(model), images, (), recipe)
        scales = [node.args for node in converted.graph.nodes
                  if node.target == torch.ops.quantized_decomposed.quantize_per_tensor.default]
        assert scales and all(args[4] == 127 for args in scales)  # activations quantized to [0, 127]
        assert converted(images).shape == (8, 10)


class Classifier(torch.nn.Module):
    """Net on the suite's input: [N,3,224,224] channels_last in, [N,10] logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()
        self.pool = torch.nn.AvgPool2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.pool(x))


def small_context(tmp_path: Path, options: dict[str, str], batch_size: int) -> BuildContext:
    generator = torch.Generator().manual_seed(1)
    pool = torch.randn(64, 3, 224, 224, generator=generator)
    return BuildContext(
        device=torch.device("cpu"), batch_size=batch_size, reference_model=lambda: Classifier().eval(),
        calibration_images=lambda count: pool[:count].clone(), calibration_samples=8, weights_key="small-cnn",
        cache_dir=tmp_path / "cache", options=parse_variant_options(options), progress=print,
        report_dir=tmp_path / "out",
    )


@pytest.mark.slow
def test_a_real_search_on_a_small_cnn_writes_the_table_and_the_variant_loads_the_chosen_package(tmp_path: Path) -> None:
    """Two points (all-int8, the worst module in float), each an AOTInductor package at
    the search's batch (8 held-out images); the build at batch 8 loads the chosen point's
    package from the cache instead of compiling again."""
    options = {"int8.search_images": "8", "int8.max_float_modules": "1", "int8.accuracy_target": "100"}
    engine = get_variant("int8").build_engine(small_context(tmp_path, options, batch_size=8))
    rows = list(csv.DictReader((tmp_path / "out" / "int8_pareto.csv").open()))
    assert [row["float_modules"] for row in rows] == ["0", "1"]
    assert rows[1]["excluded_modules"] == "net.quiet"
    assert [row["chosen"] for row in rows].count("true") == 1
    chosen = next(row for row in rows if row["chosen"] == "true")
    assert engine.info["float_modules"] == chosen["float_modules"]
    assert engine.info["float_modules_search"] == "measured"
    assert engine.info["package_cache"] == "hit"  # the search built it
    assert engine(torch.randn(8, 3, 224, 224)).shape == (8, 10)
    again = get_variant("int8").build_engine(small_context(tmp_path, options, batch_size=8))
    assert again.info["float_modules_search"] == "cached"
