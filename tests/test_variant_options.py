"""--variant-options: every key and value checked against what each variant declares."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from densenet_opt.errors import UserError
from densenet_opt.variants import (
    BuildContext,
    VariantOption,
    VariantOptions,
    describe_options,
    get_variant,
    parse_variant_options,
    registry,
)

VARIANTS_DIR = Path(__file__).resolve().parent.parent / "densenet_opt" / "variants"


def context(options: VariantOptions) -> BuildContext:
    def unexpected(*_args):
        raise AssertionError("reading an option must not build anything")

    return BuildContext(
        device=torch.device("cpu"), batch_size=1, reference_model=unexpected, calibration_images=unexpected,
        calibration_samples=1, weights_key="test", cache_dir=Path("."), options=options,
    )


def option_seen_by_the_build(variant: str, name: str, raw: dict[str, str]) -> object:
    """What ``ctx.option(name)`` gives inside ``variant``'s build."""
    reader = dataclasses.replace(get_variant(variant), build=lambda ctx: ctx.option(name), devices=("cpu",))
    return reader.build_engine(context(parse_variant_options(raw)))


# ---------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------


def test_a_typo_names_the_valid_keys_and_the_closest() -> None:
    with pytest.raises(UserError) as error:
        parse_variant_options({"pruned.amout": "0.05"})
    assert str(error.value) == (
        "unknown variant option 'pruned.amout': did you mean 'pruned.amount'? pruned takes: pruned.amount"
    )


def test_a_typo_under_the_shared_onnx_prefix_lists_its_keys() -> None:
    with pytest.raises(UserError) as error:
        parse_variant_options({"onnx.provder": "cpu"})
    message = str(error.value)
    assert "did you mean 'onnx.provider'?" in message and "onnx.provider, onnx.threads" in message
    assert "onnx_fp16" in message and "onnx_int8" in message  # the shared prefix says whom it sets


def test_an_option_of_a_variant_that_takes_none() -> None:
    with pytest.raises(UserError, match="unknown variant option 'baseline.amount': baseline takes no options"):
        parse_variant_options({"baseline.amount": "0.1"})


@pytest.mark.parametrize("key", ["prunned.amount", "amount", "resnet.depth"])
def test_an_unknown_variant_names_the_variants(key: str) -> None:
    with pytest.raises(UserError) as error:
        parse_variant_options({key: "0.1"})
    message = str(error.value)
    assert f"unknown variant {key.partition('.')[0]!r}" in message and "<variant>.<option>" in message
    assert ", ".join(registry()) in message and "\n" not in message
    if key != "resnet.depth":
        assert "did you mean 'pruned.amount'?" in message


def test_keys_follow_the_variants_given() -> None:
    parse_variant_options({"onnx.provider": "cpu"}, ["onnx_int8"])  # the shared prefix of a variant given
    with pytest.raises(UserError, match="the variants are: onnx_int8$"):
        parse_variant_options({"pruned.amount": "0.1"}, ["onnx_int8"])


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, text, reason",
    [
        ("pruned.amount", "2", "must be a number in [0, 1) (default 0.01)"),
        ("pruned_structured.amount", "30%", "must be a number in [0, 1) (default 0.3)"),
        ("onnx.threads", "two", "must be a whole number, got 'two' (default auto)"),
        ("onnx_int8.threads", "0", "must be at least 1, got 0 (default auto)"),
        ("onnx.provider", "rocm", "must be one of auto, tensorrt, cuda, cpu (default auto)"),
        ("compiled.batch", "sometimes", "must be one of static, dynamic (default static)"),
        ("cuda_graphs.dtype", "int4", "must be one of auto, fp16, bf16 (default auto)"),
    ],
)
def test_a_wrong_value_names_the_key_and_what_is_wanted(key: str, text: str, reason: str) -> None:
    with pytest.raises(UserError) as error:
        parse_variant_options({key: text})
    assert str(error.value) == f"--variant-options {key}={text}: {reason}"


def test_values_are_typed() -> None:
    raw = {"pruned.amount": " 0.25 ", "onnx.threads": "3", "compiled.batch": "DYNAMIC", "onnx.provider": "auto"}
    assert option_seen_by_the_build("pruned", "amount", raw) == 0.25
    assert option_seen_by_the_build("onnx", "threads", raw) == 3
    assert option_seen_by_the_build("compiled", "batch", raw) == "dynamic"
    assert option_seen_by_the_build("onnx", "provider", raw) == "auto"


def test_defaults_when_not_given() -> None:
    for variant in registry().values():
        for option in variant.options:
            assert option_seen_by_the_build(variant.name, option.name, {}) == option.default
    assert option_seen_by_the_build("pruned", "amount", {}) == 0.01
    assert option_seen_by_the_build("pruned_structured", "amount", {}) == 0.3
    assert option_seen_by_the_build("onnx_int8", "threads", {}) is None  # auto: the build picks the cores


def test_the_variants_own_key_wins_over_the_shared_onnx_prefix() -> None:
    options = parse_variant_options({"onnx.provider": "cpu", "onnx_int8.provider": "tensorrt", "onnx.threads": "3"})
    assert option_seen_by_the_build("onnx_int8", "provider", options) == "tensorrt"
    assert option_seen_by_the_build("onnx_fp16", "provider", options) == "cpu"
    assert option_seen_by_the_build("onnx", "provider", options) == "cpu"
    assert option_seen_by_the_build("onnx_int8", "threads", options) == 3
    int8, fp16 = get_variant("onnx_int8"), get_variant("onnx_fp16")
    assert options.key(int8, "provider") == "onnx_int8.provider" and options.key(fp16, "provider") == "onnx.provider"
    assert options.key(int8, "threads") == "onnx.threads" and VariantOptions().key(int8, "threads") is None


def test_a_shared_key_is_checked_for_each_variant_it_sets() -> None:
    with pytest.raises(UserError, match=r"onnx\.threads=0"):
        parse_variant_options({"onnx.threads": "0"}, ["onnx_fp16"])


def test_the_options_travel_as_their_text() -> None:
    """A child process (memory probe, shard) gets the options as JSON and parses them again."""
    options = parse_variant_options({"pruned.amount": "0.2", "onnx.provider": "cpu"})
    sent = json.loads(json.dumps(dict(options)))
    assert sent == {"pruned.amount": "0.2", "onnx.provider": "cpu"}
    assert dict(parse_variant_options(sent)) == dict(options)
    assert dict(parse_variant_options(options)) == dict(options)  # parsing parsed options is harmless


def test_reading_an_option_needs_the_variant_being_built() -> None:
    with pytest.raises(RuntimeError, match="Variant.build_engine"):
        context(VariantOptions()).option("amount")


def test_a_variant_reads_an_option_it_does_not_declare_as_a_bug() -> None:
    with pytest.raises(KeyError, match="declares no option 'amout'"):
        option_seen_by_the_build("pruned", "amout", {})


def test_a_declared_parser_can_be_a_type() -> None:
    assert VariantOption("count", int, 1, "a count").value("v.count", "7") == 7
    with pytest.raises(UserError, match=r"^--variant-options v\.count=x: invalid literal"):
        VariantOption("count", int, 1, "a count").value("v.count", "x")


# ---------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------


def test_describe_options_lists_every_option_of_every_variant() -> None:
    for variant in registry().values():
        lines = describe_options(variant)
        assert describe_options(variant.name) == lines
        assert len(lines) == len(variant.options)
        for line, option in zip(lines, variant.options):
            assert line.startswith(f"{variant.name}.{option.name}={option.default_text}: {option.help}")
            assert all(choice in line for choice in option.choices)
    assert describe_options("baseline") == []
    assert describe_options("pruned") == [
        "pruned.amount=0.01: fraction of each convolution's weights (smallest |w|) to prune, a number in [0, 1)"
    ]
    assert any("onnx.provider sets it too" in line for line in describe_options("onnx_int8"))


def test_every_variant_declares_its_options_with_help() -> None:
    for variant in registry().values():
        names = [option.name for option in variant.options]
        assert len(names) == len(set(names)), variant.name
        for option in variant.options:
            assert option.help and option.parse(option.default_text) == option.default, (variant.name, option.name)


def test_variants_do_not_import_the_option_table() -> None:
    """config imports the variants (to check --variants): the reverse would be a cycle."""
    for path in VARIANTS_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "densenet_opt.config" and not (
                    node.module == "densenet_opt" and any(alias.name == "config" for alias in node.names)
                ), path
