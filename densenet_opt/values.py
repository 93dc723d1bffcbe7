"""Text to typed values: the small parsers that options share.

Each parser raises ValueError with a phrase that says what is wanted ("must be at least
1, got 0"); the caller, which knows the option's name, turns it into a UserError. This
module imports nothing of ours, so that any module (the option table, the variants) can
use it without an import cycle.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence


def whole_number(text: str, *, minimum: int = 1) -> int:
    """``text`` as an int >= ``minimum``; ValueError otherwise."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"must be a whole number, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value


def auto_or_count(text: str) -> int | None:
    """``text`` as None for "auto" (any case), else an int >= 0; ValueError otherwise
    (the phrase says "must be auto or a whole number >= 0")."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"must be auto or a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise ValueError(f"must be auto or a whole number >= 0, got {value}")
    return value


def finite_number(text: str) -> float:
    """``text`` as a finite float; ValueError otherwise (NaN and inf included)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    return value


def positive_number(text: str, *, wanted: str = "a positive number") -> float:
    """``text`` as a finite float > 0; ValueError otherwise (NaN and inf included), whose
    phrase is "must be ``wanted``, got TEXT": ``wanted`` may name the unit ("a positive
    number of seconds")."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be {wanted}, got {text!r}")
    return value


def fraction(text: str) -> float:
    """``text`` as a float in [0, 1); ValueError otherwise (NaN, inf and "30%" included)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:  # NaN fails this too
        raise ValueError("must be a number in [0, 1)")
    return value


def percent(text: str) -> float:
    """``text`` as a percentage in (0, 100], with or without a trailing "%"; ValueError
    otherwise (NaN included)."""
    try:
        value = float(str(text).strip().removesuffix("%"))
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 100.0:  # NaN fails this too
        raise ValueError(f"must be a percentage in (0, 100], got {text!r}")
    return value


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """A parser that accepts one of ``choices`` (lower-case words), in any case."""
    allowed = tuple(choices)

    def parse(text: str) -> str:
        value = str(text).strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """`` did you mean 'x'?`` naming the closest of ``choices`` (difflib), or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" did you mean {close[0]!r}?" if close else ""
