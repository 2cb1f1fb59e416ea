"""argparse `type=` checkers shared by the `gd` sub-commands, and `add_command`, which makes
each sub-command's parser.

A bad number is refused while the command line is parsed, before anything is read or
written: argparse prints the usage and one error line naming the flag, and exits with
status 2. Pure standard library, so building the parser stays cheap.

    p.add_argument("--objects", type=positive_int)
    p.add_argument("--res", type=int_range(8, 8192))
    p.add_argument("--feature-dropout", type=float_range(0.0, 1.0, high_open=True))
    p.add_argument("--background", type=parse_background)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any


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


def count_range(text: str) -> tuple[int, int]:
    """argparse type: "LOW-HIGH" or "N" (= N-N) -> (low, high), 1 <= low <= high."""
    parts = text.split("-")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
    except ValueError:
        low, high = 0, -1
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(
            f"expected a count or a range LOW-HIGH with 1 <= LOW <= HIGH, got {text!r}"
        )
    return low, high


# ---------------------------------------------------------------------------- sub-commands
def add_command(subparsers: argparse._SubParsersAction, name: str, help: str,
                description: str | None = None, *,
                raw: bool = False) -> argparse.ArgumentParser:  # fmt: skip
    """The parser of the `gd` sub-command `name`: `help` is its line in `gd --help`,
    `description` the text its own `--help` shows (`raw`: as written, line breaks kept,
    for the modules' long HELP texts; else re-wrapped to the terminal)."""
    formatter = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    return subparsers.add_parser(name, help=help, description=description,
                                 formatter_class=formatter)  # fmt: skip


# ---------------------------------------------------------------------------- config fields
def option(default: Any, help: str, parse: Callable[[str], Any] | None = None,
           flag: bool | None = None) -> Any:  # fmt: skip
    """A config dataclass field documented where it is declared, for `add_config_flags`.

    Args:
        default: the field's default.
        help: what the field means (shown by `--help`).
        parse: the `type=` checker of its flag (bool fields need none).
        flag: whether it gets a flag; default: bool fields and fields with `parse`.
    """
    if flag is None:
        flag = parse is not None or isinstance(default, bool)
    return dataclasses.field(default=default, metadata={"help": help, "parse": parse,
                                                        "flag": flag})  # fmt: skip


def config_flags(cls: type) -> list[str]:
    """Names of the fields of dataclass `cls` that `add_config_flags` makes flags for."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("flag")]


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """A flag for every `option(...)` field of dataclass `cls` that has one, its help the
    field's, each with default None (None: keep the config's value). A field `some_name`
    becomes `--some-name VALUE`; a bool field the flag that flips its default
    (`--some-name` when False, `--no-some-name` when True). Returns the field names."""
    names = config_flags(cls)
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        dashed, help = f.name.replace("_", "-"), f.metadata["help"]
        if isinstance(f.default, bool):
            flag = f"--no-{dashed}" if f.default else f"--{dashed}"
            action = "store_false" if f.default else "store_true"
            help = f"turn off: {help}" if f.default else help
            parser.add_argument(flag, dest=f.name, action=action, default=None, help=help)
        else:
            shown = f" (default: {f.default})" if f.default != "" else ""
            parser.add_argument(f"--{dashed}", dest=f.name, type=f.metadata["parse"],
                                default=None, help=help + shown)  # fmt: skip
    return names


def add_field_flag(parser: argparse.ArgumentParser, cls: type, name: str, *flags: str,
                   **kwargs: Any) -> argparse.Action:  # fmt: skip
    """`parser.add_argument(*flags, **kwargs)` for the `option(...)` field `name` of dataclass
    `cls`: its default, help and `type=` checker are the field's, so a setting documented
    where it is declared is not written out again beside its flag. `flags` default to
    `--some-name` for a field `some_name`; `kwargs` add to (or override) what the field gives.
    """
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    given = {"default": f.default, "help": f.metadata["help"], "type": f.metadata["parse"]}
    return parser.add_argument(*(flags or ("--" + name.replace("_", "-"),)), **(given | kwargs))


NAMED_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def parse_background(text: str) -> tuple[float, float, float]:
    """'white', 'black' or 'r,g,b' with components in [0, 1]."""
    if text in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[text]
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(
            f"background must be 'white', 'black' or 'r,g,b' in [0, 1], got {text!r}"
        )
    return values  # type: ignore[return-value]
