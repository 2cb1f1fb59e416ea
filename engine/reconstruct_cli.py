"""`gd reconstruct`: Gaussians of a prop from a few posed views in a NeRF transforms.json.

    gd reconstruct views/transforms.json -o prop.ply
    gd reconstruct views/transforms.json -o prop.spz --no-densify --device cpu
    gd reconstruct views/transforms.json -o prop.glb --model my.safetensors --budget 2000

The object model (`engine.models`) predicts coarse Gaussians from the views, then
generative densification adds detail where the coarse render disagrees with the inputs.
The output format follows `-o`'s suffix (`engine.io.save`). Every input is read and checked
and the whole reconstruction runs before anything is written; the file itself is written
atomically, so on any error nothing appears on disk (exit status 2 for bad input).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .devices import DEVICE_CHOICES, resolve_device
from .render.cli import parse_background

WHITE = (1.0, 1.0, 1.0)

HELP = """\
Reconstruct a prop as 3D Gaussians from posed views: a NeRF-style transforms.json
(OpenGL camera-to-world `transform_matrix`, `camera_angle_x` or `fl_x/fl_y/cx/cy`) whose
frames' `file_path` may leave out the image extension (.png, .jpg, .jpeg and .webp are
tried). RGBA images are composited on --background (white, what the object model was
trained on). Views must be square; they are resampled to the model's input size.

The prop's position and size are estimated from where the cameras look, or taken from
--bbox. OUT's suffix picks the format (.ply, .compressed.ply, .spz, .splat, .glb, .gltf).
Bad input exits with status 2 and a one-line message, and nothing is written.
"""


def parse_bbox(text: str) -> Tensor:
    """'xmin,ymin,zmin,xmax,ymax,zmax' -> (2, 3) float32 [min corner, max corner]."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6:
        raise argparse.ArgumentTypeError(
            f"bbox must be six numbers xmin,ymin,zmin,xmax,ymax,zmax, got {text!r}"
        )
    box = torch.tensor(values, dtype=torch.float32).reshape(2, 3)
    if not bool(torch.isfinite(box).all()) or bool((box[1] <= box[0]).any()):
        raise argparse.ArgumentTypeError(
            f"bbox max corner must exceed its min corner on every axis, got {text!r}"
        )
    return box


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct a prop as Gaussians from posed views (transforms.json)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("transforms", type=Path, metavar="TRANSFORMS",
                   help="NeRF-style transforms.json (or a folder holding one)")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="splat file to write; its suffix picks the format")  # fmt: skip
    p.add_argument("--no-densify", dest="densify", action="store_false",
                   help="coarse Gaussians only (skip generative densification)")  # fmt: skip
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--model", default="object-small",
                   help="model preset with shipped weights (default object-small) or a "
                        ".safetensors weights file (its .json config beside it)")  # fmt: skip
    p.add_argument("--budget", type=_positive_int, default=None, metavar="K",
                   help="densification candidates K (default: the model's)")  # fmt: skip
    p.add_argument("--bbox", type=parse_bbox, default=None, metavar="BOX",
                   help="the prop's world bounds xmin,ymin,zmin,xmax,ymax,zmax "
                        "(default: estimated from the cameras)")  # fmt: skip
    p.add_argument("--background", type=parse_background, default=WHITE,
                   help="composite RGBA inputs on 'white' (default), 'black' or r,g,b")  # fmt: skip
    p.add_argument("--random-init", action="store_true",
                   help="for testing only: an untrained, randomly initialised model")  # fmt: skip
    p.set_defaults(func=run)


@dataclass
class Views:
    """Input views read from a transforms.json.

    Attributes:
        images: (V, H, W, 3) float RGB in [0, 1] composited on the background.
        cameras: V world-space cameras (`engine.cameras.Cameras`).
        source: the transforms file they came from.
    """

    images: Tensor
    cameras: Any
    source: Path


def _transforms_file(path: str | Path) -> Path:
    path = Path(path)
    return path / "transforms.json" if path.is_dir() else path


def check_views(path: str | Path) -> None:
    """Check a transforms.json, its cameras and its images' headers (existence, size,
    `engine.data.images.MAX_IMAGE_PIXELS`) without decoding any pixels, so that bad input
    fails in a moment, before the model loads.

    Raises:
        FileNotFoundError: the file or one of its images is missing.
        ValueError: malformed JSON, cameras or images (CameraError is a ValueError).
    """
    from .camera_formats import read_nerf_transforms
    from .data.images import check_views as check_images

    path = _transforms_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: transforms file not found")
    frames = read_nerf_transforms(path)
    check_images(frames.image_paths, frames.cameras)


def read_views(
    path: str | Path, background: Sequence[float] = WHITE, max_side: int | None = None
) -> Views:
    """Views of a transforms.json (or of a folder's transforms.json).

    max_side: decode larger views reduced to this longer side (the model's `view_size`:
        it resamples them to that anyway), cameras scaled to match.
    Raises:
        FileNotFoundError: the file or one of its images is missing.
        ValueError: malformed JSON, cameras or images (CameraError is a ValueError).
    """
    from .data.datasets import load_nerf_scene

    path = _transforms_file(path)
    views = load_nerf_scene(path, background=background, max_side=max_side)
    return Views(views.images, views.cameras, path)


def load_object_model(name: str, device: torch.device, random_init: bool = False) -> Any:
    """The object model for `--model`: a preset name (shipped weights) or a weights file.

    Raises:
        FileNotFoundError: the weights file (or the shipped weights) is missing; the
            message says what to do.
        ValueError: unknown preset, unreadable or mismatched weights.
    """
    from .evaluate import resolve_model
    from .weights import WeightsNotFoundError, shipped_weights

    try:
        return resolve_model(name, device, pretrained=not random_init)
    except WeightsNotFoundError:
        # load_model's message speaks Python (weights=PATH); say it in flags here.
        raise WeightsNotFoundError(
            f"no shipped weights for {name!r} (expected {shipped_weights(name)} and its "
            ".json); train them with `gd train`, or pass --model PATH.safetensors"
        ) from None


def format_stats(stats: dict[str, Any]) -> list[str]:
    """Human-readable lines of a reconstruction's `stats` (counts and per-stage seconds)."""
    counts = stats.get("counts", {})
    seconds = stats.get("seconds", {})
    lines = []
    if counts:
        lines.append("Gaussians: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if seconds:
        lines.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    return lines


def run(args: argparse.Namespace) -> int:
    from .io import _format_for, save

    # Cheap checks first, so a typo fails before the model is loaded.
    _format_for(args.output)
    if args.output.exists() and not args.output.is_file():
        raise ValueError(f"{args.output}: exists and is not a file")
    if not args.transforms.exists():
        raise FileNotFoundError(f"{args.transforms}: transforms file not found")

    t0 = time.perf_counter()
    check_views(args.transforms)  # headers only: bad views fail before the model loads
    read_s = time.perf_counter() - t0
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    model = load_object_model(args.model, device, args.random_init)
    load_s = time.perf_counter() - t0
    # Decoded reduced to the size the model resamples its views to, never full-size floats.
    t0 = time.perf_counter()
    views = read_views(args.transforms, args.background, getattr(model, "view_size", None))
    read_s += time.perf_counter() - t0
    if args.background != WHITE:
        print(f"note: {model.name} was trained on white backgrounds; inputs on "
              f"{args.background} may reconstruct worse", file=sys.stderr)  # fmt: skip

    rec = model.reconstruct(
        views.images, views.cameras, bbox=args.bbox, densify=args.densify, budget=args.budget
    )
    gaussians = rec.gaussians
    if len(gaussians) == 0:
        raise ValueError(
            "the model produced no Gaussians (the views show nothing it recognises as a prop)"
        )

    # Only now touch the disk: the parent folders we create are removed again on failure.
    created = [p for p in [args.output.parent, *args.output.parent.parents] if not p.exists()]
    t0 = time.perf_counter()
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        save(gaussians, args.output)
    except BaseException as err:
        for folder in created:  # deepest first; only folders this call made, if empty
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            raise ValueError(f"{args.output}: {err.strerror or err}") from None
        raise
    save_s = time.perf_counter() - t0

    v, cams = len(views.cameras), views.cameras
    weights = getattr(model, "weights_path", None)
    print(f"read {v} views ({cams.width}x{cams.height}) from {views.source} in {read_s:.2f} s")
    print(f"model {model.name} ({weights or 'random init'}) on {device}, loaded in {load_s:.2f} s")
    for line in format_stats(rec.stats):
        print(line)
    kind = "coarse + fine" if args.densify else "coarse only"
    print(f"wrote {args.output}: {len(gaussians):,} Gaussians ({kind}) in {save_s:.2f} s")
    return 0
