"""The value parsers options share (densenet_opt/values.py), and the options that use them
instead of parsers of their own: each bad value is one phrase saying what is wanted."""

from __future__ import annotations

import math
import re

import pytest

from densenet_opt.errors import UserError
from densenet_opt.serving import settings
from densenet_opt.values import finite_number, positive_number, whole_number
from densenet_opt.variants import pruning


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "fast", "", "1e400"])
def test_positive_number_refuses_what_is_not_a_positive_finite_number(text: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(f"must be a positive number, got {text!r}") + "$"):
        positive_number(text)


def test_positive_number_names_what_is_wanted() -> None:
    assert positive_number(" 2.5 ") == 2.5 and positive_number(3) == 3.0
    with pytest.raises(ValueError, match=r"^must be a positive number of seconds, got '0'$"):
        positive_number("0", wanted="a positive number of seconds")


def test_finite_number_takes_zero_and_negatives_but_not_nan_or_inf() -> None:
    assert finite_number("-1.5") == -1.5 and finite_number("0") == 0.0
    for text in ("nan", "inf", "x"):
        with pytest.raises(ValueError, match=rf"^must be a finite number, got '{text}'$"):
            finite_number(text)


def test_whole_number_names_its_minimum() -> None:
    assert whole_number("4") == 4
    with pytest.raises(ValueError, match=r"^must be at least 2, got 1$"):
        whole_number("1", minimum=2)
    with pytest.raises(ValueError, match=r"^must be a whole number, got '1.5'$"):
        whole_number("1.5")


@pytest.mark.parametrize(("parse", "text", "message"), [
    (pruning.positive_seconds, "0", "must be a number of seconds greater than 0, got '0'"),
    (pruning.positive_seconds, "inf", "must be a number of seconds greater than 0, got 'inf'"),
    (pruning.learning_rate, "-1e-3", "must be a number greater than 0 (such as 1e-4), got '-1e-3'"),
])
def test_the_pruning_options_use_positive_number(parse, text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse(text)
    assert str(error.value) == message
    assert pruning.positive_seconds("90") == 90.0 and pruning.learning_rate("1e-4") == 1e-4


@pytest.mark.parametrize(("raw", "message"), [
    ({"latency_bound_ms": "nan"}, "--latency-bound-ms must be a finite number, got 'nan'"),
    ({"qps_resolution": "0"}, "--qps-resolution must be a positive number, got 0.0"),
    ({"min_query_count": "0"}, "--min-query-count must be at least 1, got 0"),
    ({"min_query_count": "many"}, "--min-query-count must be a whole number, got 'many'"),
    ({"min_duration_ms": "-1"}, "--min-duration-ms must be at least 0, got -1"),
    ({"max_search_points": "1"}, "--max-search-points must be at least 2, got 1"),
])
def test_the_loadgen_settings_name_the_option_and_what_is_wanted(raw: dict, message: str) -> None:
    with pytest.raises(UserError) as error:
        settings.settings_from_mapping(raw)
    assert str(error.value) == message


def test_check_positive_refuses_a_flag_and_returns_a_float() -> None:
    assert settings.check_positive("--qps-resolution", 2) == 2.0
    for value in (True, 0, -1.0, math.nan, math.inf):
        with pytest.raises(UserError, match=r"^--qps-resolution must be a positive number, got "):
            settings.check_positive("--qps-resolution", value)
