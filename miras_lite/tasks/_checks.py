"""Argument checks the tasks share: a seed, a finite number, a path (each raises ValueError naming the argument)."""

from __future__ import annotations

import math
import numbers
import os

SEED_LIMIT = 2**31  # tasks derive seeds as (seed · 1_000_003 + split) · 1_009 + i: this keeps them inside torch's range


def check_seed(value, name="seed", allow_sequence=False, limit=SEED_LIMIT):
    """An integer in [0, limit) (not a bool); with `allow_sequence`, also a non-empty tuple or list of them."""
    if allow_sequence and isinstance(value, (tuple, list)):
        if not value:
            raise ValueError(f"{name}={value!r} must be an integer in [0, {limit}) or a non-empty sequence of them")
        for item in value:
            check_seed(item, name, limit=limit)
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= value < limit:
        raise ValueError(f"{name}={value!r} must be an integer in [0, {limit})"
                         + (" or a sequence of them" if allow_sequence else ""))


def check_number(name, value, low=None, high=None, low_open=False, high_open=False):
    """A finite real number (not a bool) in the interval."""
    finite = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        finite = finite and math.isfinite(value)
    except OverflowError:
        finite = False
    below = low is not None and finite and (value <= low if low_open else value < low)
    above = high is not None and finite and (value >= high if high_open else value > high)
    if not finite or below or above:
        interval = f"{'(' if low_open else '['}{'-∞' if low is None else low}, {'∞' if high is None else high}" \
                   f"{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name}={value!r} must be a finite number in {interval}")


def check_path(name, value, allow_none=True):
    """None (when allowed) or a str / os.PathLike."""
    if value is None and allow_none:
        return
    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value):
        raise ValueError(f"{name}={value!r} must be " + ("None or " if allow_none else "") + "a file path")
