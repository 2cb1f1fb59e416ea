"""`gd export`: read a splat file, clean it up, write it in the format OUT's suffix names."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..cli_args import add_command
from ..gaussians import MAX_SH_DEGREE
from . import format_for, load, save, supported_suffixes
from .axes import AXES, file_frame, suffix_of
from .cleanup import cap_sh_degree, crop_to_box, drop_transparent

HELP = f"""\
Read IN, clean it up, write OUT in the format its suffix names
({", ".join(supported_suffixes())}). Clean-up order: --min-opacity, --crop, --sh-degree.

Axes (--axes standard, the default). The engine's world is Blender's, Z up. Each
format is written in the frame its readers assume, so the file opens upright in
viewers (SuperSplat / splat-transform, Babylon.js, Spark, Unity, Unreal) and in
Blender add-ons, and a .ply and a .glb of one prop face the same way:
  .ply .compressed.ply .splat .spz .sog
                    "PLY space" of 3DGS training output, -Y up:
                    Blender (x, y, z) -> (-x, -z, -y)
  .glb .gltf        glTF's Y-up (KHR_gaussian_splatting): (x, y, z) -> (x, z, -y)
Orientations and SH turn with the positions. IN is read the same way, so a
standard file from any tool comes in upright and --crop works in the Z-up world.

--axes raw keeps the file's coordinates as they are, in and out: for files whose
frame is shared with a camera set (a 3DGS .ply trained from a transforms.json,
rendered with `gd render`, which reads raw by default) and for files written by
this project before this convention (raw Z-up). --in-axes overrides how IN is
read, e.g. `--in-axes raw` turns an old raw Z-up export into a standard file.

.spz is written as version 4 (zstd streams), the default of Niantic's library and
splat-transform; --spz-version 3 writes the older gzip form for readers that predate it.
.sog is PlayCanvas SOG (lossless WebP images in a ZIP; `meta.json` for loose files).
.splat holds SH degree 0 only; glTF and SPZ version 4 cannot hold zero Gaussians.
Bad input exits with status 2 and a one-line message, leaving OUT untouched.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "export", "convert / clean up a splat file for game pipelines",
                    HELP, raw=True)  # fmt: skip
    p.add_argument("input", type=Path, metavar="IN", help="splat file to read")
    p.add_argument(
        "output", type=Path, metavar="OUT", help="file to write; its suffix picks the format"
    )
    p.add_argument("--sh-degree", metavar="D", default=None,
                   help=f"keep SH bands 0..D, D in 0..{MAX_SH_DEGREE} (default: all)")  # fmt: skip
    p.add_argument("--axes", choices=AXES, default="standard",
                   help="standard: each format's own frame (default); raw: none")  # fmt: skip
    p.add_argument("--in-axes", choices=AXES, default=None,
                   help="how IN is read (default: as --axes)")  # fmt: skip
    p.add_argument("--spz-version", type=int, choices=(2, 3, 4), default=None,
                   help="SPZ version for a .spz OUT (default: 4)")  # fmt: skip
    p.add_argument("--min-opacity", metavar="X", default=None,
                   help="drop Gaussians with opacity below X, in [0, 1)")  # fmt: skip
    p.add_argument("--crop", metavar="BOX", default=None,
                   help="keep Gaussians whose centres are inside xmin,ymin,zmin,xmax,ymax,zmax "
                   "(the world IN is read into; write --crop=-1,... for negatives)")  # fmt: skip
    p.set_defaults(func=run)


def _parse_number(
    text: str | None,
    flag: str,
    convert: Callable[[str], float],
    ok: Callable[[float], bool],
    expected: str,
) -> Any:
    """None for an absent flag, else `convert(text)` where that parses and passes `ok`;
    otherwise ValueError "FLAG must be EXPECTED, got TEXT"."""
    if text is None:
        return None
    try:
        value = convert(text)
    except ValueError:
        value = math.nan  # fails every range check
    if not ok(value):
        raise ValueError(f"{flag} must be {expected}, got {text!r}")
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
    sh_degree = _parse_number(args.sh_degree, "--sh-degree", int,
                              lambda d: 0 <= d <= MAX_SH_DEGREE,
                              f"an integer in 0..{MAX_SH_DEGREE}")  # fmt: skip
    min_opacity = _parse_number(args.min_opacity, "--min-opacity", float,
                                lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")  # fmt: skip
    crop = _parse_crop(args.crop)
    format_for(args.input)
    format_for(args.output)
    suffix = suffix_of(args.output)
    in_axes = args.in_axes or args.axes
    options = {}
    if args.spz_version is not None:
        if suffix != ".spz":
            raise ValueError(f"--spz-version applies to a .spz OUT, not {suffix or 'this file'}")
        options["version"] = args.spz_version
    if not args.input.is_file():
        raise FileNotFoundError(f"{args.input}: no such file")
    if args.output.exists() and not args.output.is_file():
        raise ValueError(f"{args.output}: exists and is not a file")
    if not args.output.parent.is_dir():
        raise ValueError(f"{args.output.parent}: no such folder")

    try:
        g = load(args.input, axes=in_axes)
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

    try:
        save(g, args.output, axes=args.axes, **options)
    except OSError as e:
        raise ValueError(f"{args.output}: {e.strerror or e}") from None
    except ValueError as e:
        if len(g) == 0:
            raise ValueError(f"clean-up kept 0 of {counts[0]} Gaussians; {e}") from None
        raise

    # Bounds in the world --crop works in; the axes line says how the file holds them.
    means = g.means.detach().to("cpu", torch.float64)
    frame = "raw" if args.axes == "raw" else file_frame(suffix)
    _print_summary(args, counts, len(g), g.sh_degree, means, frame, suffix)
    return 0


def _print_summary(
    args: argparse.Namespace,
    counts: list[int],
    n: int,
    sh_degree: int,
    means: torch.Tensor,
    frame: str,
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
    axes = {
        "raw": "raw (file coordinates = world coordinates)",
        "ply": "PLY space, -Y up: world (x, y, z) -> (-x, -z, -y)",
        "gltf": "glTF Y-up: world (x, y, z) -> (x, z, -y)",
    }[frame]
    if n:
        print(f"bounds (world): min {_vec(means.amin(dim=0))}  max {_vec(means.amax(dim=0))}")
    else:
        print("bounds (world): empty")
    print(f"axes: {axes}")
