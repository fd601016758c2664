"""Checks of the constructor arguments of the weighting and aggregation
methods. Each returns the value in its canonical type or raises a
`ValueError` that names the method, the argument and the value given."""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_number(
    value: Any,
    name: str,
    owner: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in `[low, high]` (ends open when asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a number; got {value!r}.")
    number = float(value)
    bad = not math.isfinite(number)
    if low is not None:
        bad = bad or number < low or (low_open and number == low)
    if high is not None:
        bad = bad or number > high or (high_open and number == high)
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        bounds = f"{left}{'-inf' if low is None else low}, "
        bounds += f"{'inf' if high is None else high}{right}"
        raise ValueError(
            f"{owner}: {name} must be a finite number in {bounds}; got {value!r}."
        )
    return number


def check_lower_bound(
    value: Any, name: str, owner: str, low: float, low_open: bool
) -> float:
    """A finite real number `> low` (`low_open`) or `>= low`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a number; got {value!r}.")
    number = float(value)
    if not math.isfinite(number) or number < low or (low_open and number == low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(
            f"{owner}: {name} must be a finite number {bound}; got {value!r}."
        )
    return number


def check_positive(value: Any, name: str, owner: str) -> float:
    """A finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a finite number > 0; got {value!r}.")
    number = float(value)
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"{owner}: {name} must be a finite number > 0; got {value!r}.")
    return number


def check_number_list(
    value: Any, name: str, owner: str, positive: bool
) -> list[float] | None:
    """None, or a non-empty list of finite numbers (> 0 when `positive`)."""
    if value is None:
        return None
    try:
        numbers_ = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner}: {name} must be a list of numbers; got {value!r}."
        ) from None
    bad = [v for v in numbers_ if not math.isfinite(v) or (positive and v <= 0.0)]
    if bad or not numbers_:
        kind = "finite numbers > 0" if positive else "finite numbers"
        raise ValueError(f"{owner}: {name} must be a list of {kind}; got {value!r}.")
    return numbers_


def check_temperature(temperature: float, owner: str) -> float:
    """A softmax temperature: a finite number > 0."""
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner}: temperature must be a number > 0; got {temperature!r}."
        ) from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{owner}: temperature must be > 0; got {temperature!r}.")
    return value


def check_int(value: Any, name: str, owner: str, low: int = 1) -> int:
    """An int `>= low`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner}: {name} must be an int >= {low}; got {value!r}.")
    if int(value) < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}; got {value!r}.")
    return int(value)


def check_iterations(value: Any, name: str, owner: str, minimum: int = 1) -> int:
    """An iteration count: a Python int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{owner}: {name} must be an integer >= {minimum}; got {value!r}."
        )
    return value


def check_seed(seed: Any, owner: str) -> int | None:
    """An int seed or None."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{owner}: seed must be an int or None; got {seed!r}.")
    return int(seed)
