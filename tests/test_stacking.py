"""Stacked techniques (``<transform>+<deployment>``, densenet_opt/variants/__init__.py):
naming, options, budgets, and a chain built end to end on a small DenseNet."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from densenet_opt.flops import count_flops
from densenet_opt.budgets import load_budgets
from densenet_opt.config import parse_variants
from densenet_opt.errors import UserError
from densenet_opt.variants import STACKED, BuildContext, get_variant, parse_variant_options, registry, transforms
from densenet_opt.variants.pruning import PRUNED_STRUCTURED

CHAIN = "pruned_structured+onnx"
IMAGES = (2, 3, 224, 224)


def test_a_chain_is_a_variant_of_its_own_reading_its_parts_options() -> None:
    variant = get_variant("pruned_structured+onnx_int8")
    assert variant.name == "pruned_structured+onnx_int8"
    assert [part.name for part in variant.parts] == ["pruned_structured", "onnx_int8"]
    assert variant.name not in registry()  # made on demand, any pair
    assert get_variant("pruned+compiled").parts[1].name == "compiled"
    assert get_variant(" pruned + compiled ").name == "pruned+compiled"  # one canonical name
    # The openvino part runs on the CPU only, so the chain does too.
    assert get_variant("pruned_structured+openvino_int8").devices == ("cpu",)
    options = parse_variant_options(
        {"pruned_structured.amount": "0.5", "onnx_int8.float_nodes": "0", "onnx.provider": "cpu"}, [variant.name],
    )
    assert options.value(variant.parts[0], "amount") == 0.5
    assert options.value(variant.parts[1], "float_nodes") == 0
    with pytest.raises(UserError, match="unknown variant 'int8' in --variant-options"):
        parse_variant_options({"int8.x": "1"}, [variant.name])


@pytest.mark.parametrize(("name", "message"), [
    ("baseline+onnx", "baseline is not a model transform and cannot head a chain; the transforms are pruned, pruned_structured"),
    ("pruned+pruned_structured", "the second part deploys the transformed model and two transforms do not stack; choose one of onnx,"),
    ("pruned+baseline", "pruned alone is that; choose one of onnx, onnx_fp16"),
    ("pruned_structured+onnx+int8", "a chain is <transform>\\+<variant>, two names"),
    ("pruned_structured+", "a chain is <transform>\\+<variant>, two names"),
    ("pruned_structured+onx", "unknown part 'onx'; did you mean 'onnx'\\?; write pruned\\+<variant> or pruned_structured\\+<variant>, where <variant> is one of onnx, "),
    ("pruned+nosuch", "unknown part 'nosuch'; write pruned"),
])
def test_a_malformed_chain_is_one_sentence(name: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        get_variant(name)


def test_all_is_the_registry_then_the_stacked_chains() -> None:
    assert parse_variants("all") == (*registry(), *STACKED)
    assert transforms() == ["pruned", "pruned_structured"]
    assert parse_variants("baseline, pruned_structured+int8") == ("baseline", "pruned_structured+int8")
    with pytest.raises(UserError, match="not a model transform"):
        parse_variants("onnx+int8")


def test_budgets_take_chain_tables_and_refuse_malformed_ones(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('[baseline]\n["pruned_structured+onnx_int8"]\nagreement_top_1_min = 50\n')
    assert load_budgets(path)["pruned_structured+onnx_int8"].limits == {"agreement_top_1_min": 50}
    path.write_text('["onnx+onnx_int8"]\n')
    with pytest.raises(UserError, match=r"table \['onnx\+onnx_int8'\]: variant 'onnx\+onnx_int8': onnx is not a model transform"):
        load_budgets(path)


def context(model: nn.Module, images: torch.Tensor, tmp_path: Path) -> BuildContext:
    return BuildContext(
        device=torch.device("cpu"),
        batch_size=len(images),
        reference_model=lambda: copy.deepcopy(model),
        calibration_images=lambda count: images[torch.arange(count) % len(images)],
        calibration_samples=len(images),
        weights_key="tiny",
        cache_dir=tmp_path / "cache",
        options=parse_variant_options({"pruned_structured.distill": "off", "pruned_structured.amount": "0.5"}),
        progress=lambda message: None,
        report_dir=tmp_path / "report",
    )


@pytest.mark.slow
def test_a_chain_deploys_the_transformed_model_under_its_own_cache_key(tiny_densenet: nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the chain's deployment here is ONNX Runtime: pip install -e .[cpu]")
    images = torch.randn(IMAGES, generator=torch.Generator().manual_seed(1))
    ctx = context(tiny_densenet, images, tmp_path)
    pruned = get_variant(PRUNED_STRUCTURED).build_engine(ctx)
    plain = get_variant("onnx").build_engine(ctx)
    chained = get_variant(CHAIN).build_engine(ctx)
    try:
        expected = pruned(images)
        # The chain runs the pruned model (not the reference) in ONNX Runtime...
        torch.testing.assert_close(chained(images), expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(plain(images), expected, rtol=1e-3, atol=1e-3)
        # ... says so in its engine_info ...
        info = chained.info
        assert info["chain"] == CHAIN
        assert info["pruned_structured.amount"] == "0.5"
        assert info["pruned_structured.bottleneck_channels"] == pruned.info["bottleneck_channels"]
        assert info["provider"] == plain.info["provider"] == "CPUExecutionProvider"
        # ... reports the pruned model's work per image (derived columns follow it) ...
        assert info["gflops_per_image"] == pruned.info["gflops_per_image"] != f"{count_flops(tiny_densenet) / 1e9:.3f}"
        # ... and its export is its own, cached apart from the plain model's.
        assert info["export_cached"] == "false"
        assert len(list((tmp_path / "cache").rglob("*.onnx"))) == 2
        assert chained.model_size_bytes < plain.model_size_bytes
    finally:
        for engine in (pruned, plain, chained):
            engine.close()
