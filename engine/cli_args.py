"""argparse `type=` checkers shared by the `gd` sub-commands.

A bad number is refused while the command line is parsed, before anything is read or
written: argparse prints the usage and one error line naming the flag, and exits with
status 2. Pure standard library, so building the parser stays cheap.

    p.add_argument("--objects", type=positive_int)
    p.add_argument("--res", type=int_range(8, 8192))
    p.add_argument("--feature-dropout", type=float_range(0.0, 1.0, high_open=True))
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, steps, budgets)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (seeds; counts where 0 means "none" or "automatic")."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, clipping norms)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def int_range(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""

    def check(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in {low}..{high}, got {text!r}")
        return value

    return check


def float_range(low: float, high: float, high_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] (or [low, high) with `high_open`)."""
    shown = f"[{low:g}, {high:g}{')' if high_open else ']'}"

    def check(text: str) -> float:
        value = _float(text)
        if not (low <= value < high if high_open else low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a number in {shown}, got {text!r}")
        return value

    return check


def name_list(choices: Iterable[str]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated, non-empty list of names out of `choices`."""
    allowed = tuple(choices)

    def check(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(","))
        unknown = [n for n in names if n not in allowed]
        if not text.strip() or unknown:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated names out of {', '.join(allowed)}, got {text!r}"
            )
        return names

    return check
