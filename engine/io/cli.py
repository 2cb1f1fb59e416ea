"""`gd export`: read a splat file, clean it up, write it in the format OUT's suffix names."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ..gaussians import MAX_SH_DEGREE
from ..transforms import rotate_gaussians
from . import _format_for, load, save, supported_suffixes
from .cleanup import cap_sh_degree, crop_to_box, drop_transparent
from .gltf import Y_UP

# Suffixes whose writer has its own axis option, and that option for --y-up / --no-y-up.
_AXIS_OPTIONS = {
    ".spz": lambda y_up: {"coordinate_system": "rub" if y_up else "identity"},
    ".glb": lambda y_up: {"y_up": y_up},
    ".gltf": lambda y_up: {"y_up": y_up},
}
_Y_UP_BY_DEFAULT = {".spz", ".glb", ".gltf"}

HELP = f"""\
Read IN, clean it up, write OUT in the format its suffix names
({", ".join(supported_suffixes())}). Clean-up order: --min-opacity, --crop, --sh-degree.

Axes. The engine's world is Blender's Z-up. --y-up converts it to Y-up,
(x, y, z) -> (x, z, -y), rotating orientations and SH with it; --no-y-up writes it as is.
Without either flag each format keeps its writer's default:
  .glb / .gltf      Y-up (glTF's convention; --no-y-up writes raw Z-up)
  .spz              Y-up, SPZ's RUB axes (--no-y-up: coordinate_system 'identity')
  .ply, .compressed.ply, .splat
                    raw Z-up (no axis option; --y-up rotates the Gaussians first)
.splat holds SH degree 0 only; glTF cannot hold zero Gaussians.

Bad input exits with status 2 and a one-line message, leaving OUT untouched.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="convert / clean up a splat file for game pipelines",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="IN", help="splat file to read")
    p.add_argument(
        "output", type=Path, metavar="OUT", help="file to write; its suffix picks the format"
    )
    p.add_argument("--sh-degree", metavar="D", default=None,
                   help=f"keep SH bands 0..D, D in 0..{MAX_SH_DEGREE} (default: all)")  # fmt: skip
    p.add_argument("--y-up", action=argparse.BooleanOptionalAction, default=None,
                   help="convert Z-up to Y-up (default: per format, see above)")  # fmt: skip
    p.add_argument("--min-opacity", metavar="X", default=None,
                   help="drop Gaussians with opacity below X, in [0, 1)")  # fmt: skip
    p.add_argument("--crop", metavar="BOX", default=None,
                   help="keep Gaussians whose centres are inside xmin,ymin,zmin,xmax,ymax,zmax "
                   "(input's Z-up world; write --crop=-1,... for negative numbers)")  # fmt: skip
    p.set_defaults(func=run)


def _parse_sh_degree(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        degree = int(text)
    except ValueError:
        degree = -1
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"--sh-degree must be an integer in 0..{MAX_SH_DEGREE}, got {text!r}")
    return degree


def _parse_min_opacity(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise ValueError(f"--min-opacity must be a number in [0, 1), got {text!r}")
    return value


def _parse_crop(text: str | None) -> tuple[list[float], list[float]] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"--crop must be 6 finite numbers xmin,ymin,zmin,xmax,ymax,zmax, got {text!r}"
        )
    lo, hi = values[:3], values[3:]
    if any(a > b for a, b in zip(lo, hi, strict=True)):
        raise ValueError(f"--crop: min must be <= max on every axis, got {text!r}")
    return lo, hi


def _suffix(path: Path) -> str:
    double = "".join(path.suffixes[-2:]).lower()
    return double if double == ".compressed.ply" else path.suffix.lower()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _vec(t: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in t) + ")"


def run(args: argparse.Namespace) -> int:
    # Check every flag and both paths' suffixes before reading or writing anything.
    sh_degree = _parse_sh_degree(args.sh_degree)
    min_opacity = _parse_min_opacity(args.min_opacity)
    crop = _parse_crop(args.crop)
    _format_for(args.input)
    _format_for(args.output)
    suffix = _suffix(args.output)
    if not args.input.is_file():
        raise FileNotFoundError(f"{args.input}: no such file")
    if args.output.exists() and not args.output.is_file():
        raise ValueError(f"{args.output}: exists and is not a file")
    if not args.output.parent.is_dir():
        raise ValueError(f"{args.output.parent}: no such folder")

    try:
        g = load(args.input)
    except OSError as e:  # unreadable file: report it as bad input, one line
        raise ValueError(f"{args.input}: {e.strerror or e}") from None
    counts = [len(g)]
    if min_opacity is not None:
        g, _ = drop_transparent(g, min_opacity)
    counts.append(len(g))
    if crop is not None:
        g, _ = crop_to_box(g, *crop)
    counts.append(len(g))
    if sh_degree is not None:
        g = cap_sh_degree(g, sh_degree)

    y_up = args.y_up if args.y_up is not None else suffix in _Y_UP_BY_DEFAULT
    options: dict = {}
    if suffix in _AXIS_OPTIONS:  # the writer converts; --y-up / --no-y-up set its option
        if args.y_up is not None:
            options = _AXIS_OPTIONS[suffix](args.y_up)
    elif args.y_up:  # no axis option: rotate the Gaussians themselves
        g = rotate_gaussians(g, Y_UP)

    try:
        save(g, args.output, **options)
    except OSError as e:
        raise ValueError(f"{args.output}: {e.strerror or e}") from None
    except ValueError as e:
        if len(g) == 0:
            raise ValueError(f"clean-up kept 0 of {counts[0]} Gaussians; {e}") from None
        raise

    means = g.means.detach().to("cpu", torch.float64)
    if y_up and suffix in _AXIS_OPTIONS:
        means = means @ torch.from_numpy(Y_UP).T
    _print_summary(args, counts, len(g), g.sh_degree, means, y_up, suffix)
    return 0


def _print_summary(
    args: argparse.Namespace,
    counts: list[int],
    n: int,
    sh_degree: int,
    means: torch.Tensor,
    y_up: bool,
    suffix: str,
) -> None:
    total, after_opacity, after_crop = counts
    details = []
    if args.min_opacity is not None:
        details.append(f"{total - after_opacity} below opacity {args.min_opacity}")
    if args.crop is not None:
        details.append(f"{after_opacity - after_crop} outside the crop box")
    dropped = f"{total - n} dropped" + (f": {', '.join(details)}" if details else "")
    degree = 0 if suffix == ".splat" else sh_degree
    size = _size(args.output.stat().st_size)
    print(f"wrote {args.output}: {n} of {total} Gaussians ({dropped}), {size}, SH degree {degree}")
    axes = "Y-up" if y_up else "Z-up"
    if n:
        print(f"bounds ({axes}): min {_vec(means.amin(dim=0))}  max {_vec(means.amax(dim=0))}")
    else:
        print(f"bounds ({axes}): empty")
