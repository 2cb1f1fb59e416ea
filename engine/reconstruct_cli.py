"""`gd reconstruct`: Gaussians of a prop from a few posed views in a NeRF transforms.json.

    gd reconstruct views/transforms.json -o prop.ply
    gd reconstruct views/transforms.json -o prop.spz --no-densify --device cpu
    gd reconstruct views/transforms.json -o prop.glb --model my.safetensors --budget 2000
    gd reconstruct views/transforms.json -o prop.ply --refine 30     # + 30 s of refinement
    gd reconstruct room/transforms_context.json -o room.ply --model scene-small

With a scene model (`--model scene-small`) the views are 2 to 4 context views of a room or
set, kept as they are (background and all, RGBA on black, no masks, no normalisation), and
the scene's depth range comes from the transforms' "near" and "far" or `--near/--far`.

The object model (`engine.models`) predicts coarse Gaussians from the views, then
generative densification adds detail where the coarse render disagrees with the inputs.
A transforms.json may hold any number of views: the model reads at most its `max_views`
of them, spread around the prop (farthest-point sampling on the camera centres), and
`--refine SECONDS` / `--refine-steps N` then optimise the result against all of them
(`engine.refine`). The output format follows `-o`'s suffix (`engine.io.save`). Every
input is read and checked and the whole reconstruction runs before anything is written;
the file itself is written atomically, so on any error nothing appears on disk (exit
status 2 for bad input).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .cli_args import add_command, parse_background, positive_float, positive_int
from .devices import DEVICE_CHOICES, resolve_device
from .images import WHITE

HELP = """\
Reconstruct a prop as 3D Gaussians from posed views: a NeRF-style transforms.json
(OpenGL camera-to-world `transform_matrix`, `camera_angle_x` or `fl_x/fl_y/cx/cy`) whose
frames' `file_path` may leave out the image extension (.png, .jpg, .jpeg and .webp are
tried). RGBA images are composited on --background (white, what the object model was
trained on). Photos without alpha are cut out first (--masks): with the frames' mask_path
files, or masks estimated from the views (where the cameras' axes meet, a colour
segmentation refined across views); implausible masks stop with an error. Views must be
square; they are resampled to the model's input size.

The prop's position and size are estimated from where the cameras look, or taken from
--bbox. OUT's suffix picks the format (.ply, .compressed.ply, .spz, .splat, .glb, .gltf).
Any number of views: the model reads at most its max_views of them (spread around the
prop); --refine SECONDS or --refine-steps N then optimise the Gaussians against all of
them (views above 512 px are resampled to 512), holding some out and printing their PSNR
when there are at least 8.

--model scene-small reconstructs a scene (a room, a corner, a set) from 2 to 4 context
views instead: the background is kept, nothing is cut out or normalised, and the depth
range comes from the file's "near"/"far" or --near/--far.
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "reconstruct",
                    "reconstruct a prop as Gaussians from posed views (transforms.json)", HELP,
                    raw=True)  # fmt: skip
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
    p.add_argument("--budget", type=positive_int, default=None, metavar="K",
                   help="densification candidates K (default: the model's)")  # fmt: skip
    p.add_argument("--bbox", type=parse_bbox, default=None, metavar="BOX",
                   help="the prop's world bounds xmin,ymin,zmin,xmax,ymax,zmax "
                        "(default: estimated from the cameras)")  # fmt: skip
    p.add_argument("--masks", default="auto", choices=("auto", "alpha", "files", "none"),
                   help="which pixels are the prop: the images' alpha, the frames' mask_path "
                        "files, none (use the images as they are), or auto (default: alpha "
                        "if the images have it, else files, else estimated from the views; "
                        "implausible masks stop with an error)")  # fmt: skip
    p.add_argument("--background", type=parse_background, default=WHITE,
                   help="composite RGBA inputs on 'white' (default), 'black' or r,g,b")  # fmt: skip
    refine = p.add_mutually_exclusive_group()
    refine.add_argument("--refine", type=positive_float, default=None, metavar="SECONDS",
                        help="then refine the Gaussians against all views this long")  # fmt: skip
    refine.add_argument("--refine-steps", type=positive_int, default=None, metavar="N",
                        help="then refine the Gaussians for N optimisation steps")  # fmt: skip
    p.add_argument("--near", type=positive_float, default=None,
                   help="scene models: nearest depth of the scene in the cameras' units "
                        "(default: the transforms' 'near')")  # fmt: skip
    p.add_argument("--far", type=positive_float, default=None,
                   help="scene models: farthest depth of the scene (default: the "
                        "transforms' 'far')")  # fmt: skip
    p.add_argument("--random-init", action="store_true",
                   help="for testing only: an untrained, randomly initialised model")  # fmt: skip
    p.set_defaults(func=run)


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


def format_refine(result: Any, num_views: int) -> list[str]:
    """Human-readable lines of a `RefineResult`."""
    c = result.counts
    held = len(result.holdout)
    stopped = " (cancelled)" if result.cancelled else ""
    lines = [
        f"refined {result.steps} steps in {result.seconds:.2f} s on {num_views - held} views"
        f"{stopped}: Gaussians {c['start']:,} -> {c['final']:,} (pruned {c['pruned']:,}, "
        f"cloned {c['cloned']:,}, split {c['split']:,})"
    ]
    if result.holdout_psnr is not None:
        lines.append(
            f"held-out PSNR ({held} views): {result.holdout_psnr_start:.2f} -> "
            f"{result.holdout_psnr:.2f} dB"
        )
    return lines


def _progress_bar(label: str):
    """A one-line progress bar on stderr when it is a terminal (nothing otherwise)."""
    if not sys.stderr.isatty():
        return None

    def show(fraction: float, message: str) -> None:
        filled = int(round(30 * min(max(fraction, 0.0), 1.0)))
        bar = "#" * filled + "." * (30 - filled)
        end = "\n" if fraction >= 1.0 else ""
        print(f"\r{label} [{bar}] {fraction:4.0%} {message[:60]:<60}", end=end, file=sys.stderr,
              flush=True)  # fmt: skip

    return show


def _save(gaussians: Any, output: Path) -> float:
    """Write the result (only now touching the disk: parent folders this call creates are
    removed again on failure); returns the seconds it took."""
    from .io import save

    created = [p for p in [output.parent, *output.parent.parents] if not p.exists()]
    t0 = time.perf_counter()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        save(gaussians, output)
    except BaseException as err:
        for folder in created:  # deepest first; only folders this call made, if empty
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            raise ValueError(f"{output}: {err.strerror or err}") from None
        raise
    return time.perf_counter() - t0


def _run_scene(
    args: argparse.Namespace,
    model: Any,
    source: Path,
    device: Any,
    read_s: float,
    load_s: float,
    refining: bool,
) -> int:
    """`gd reconstruct` with a scene model: the views as they are (background kept, RGBA on
    black, no masks, no normalisation), the depth range from the flags or the file."""
    from .models.gd_scene import BLACK
    from .views import load_views, nerf_files

    if args.bbox is not None:
        raise ValueError("--bbox is for object models; a scene model takes --near and --far")
    files = nerf_files(source)
    extra = files.extra
    near = args.near if args.near is not None else extra.get("near")
    far = args.far if args.far is not None else extra.get("far")
    if near is None or far is None:
        raise ValueError(
            f"{source} gives no depth range ('near' and 'far'): pass --near and --far, the "
            "nearest and farthest depth of the scene in the cameras' units"
        )
    t0 = time.perf_counter()
    max_side = model.image_size
    if refining:
        from .refine import RefineConfig

        max_side = max(max_side, RefineConfig().max_side)
    views = load_views(files.image_paths, files.cameras, BLACK, max_side=max_side)
    read_s += time.perf_counter() - t0
    v = len(views.cameras)
    if v > model.max_views and not refining:
        raise ValueError(
            f"{source} has {v} views; {model.name} reads 2 to {model.max_views} context views "
            "(pass a transforms.json with the cameras to reconstruct from)"
        )
    use = torch.arange(min(v, model.max_views))
    rec = model.reconstruct(views.images[use], views.cameras[use], near=near, far=far,
                            densify=args.densify, budget=args.budget)  # fmt: skip
    gaussians = rec.gaussians
    refined = None
    if refining:
        from .refine import refine

        refined = refine(
            gaussians, views.images, views.cameras, seconds=args.refine,
            steps=args.refine_steps, background=BLACK, progress=_progress_bar("refine"),
        )  # fmt: skip
        gaussians = refined.gaussians
    save_s = _save(gaussians, args.output)
    notes = [f"depth range {float(near):g} to {float(far):g}; the model read {len(use)} views"]
    _report(args, views, source, model, device, (read_s, load_s, save_s), notes, rec, refined)
    return 0


def _report(
    args: argparse.Namespace,
    views: Any,
    source: Path,
    model: Any,
    device: Any,
    seconds: tuple[float, float, float],
    notes: list[str],
    rec: Any,
    refined: Any,
) -> None:
    """What was read, with which model, how long each stage took and what was written."""
    read_s, load_s, save_s = seconds
    v, cams = len(views.cameras), views.cameras
    weights = getattr(model, "weights_path", None)
    print(f"read {v} views ({cams.width}x{cams.height}) from {source} in {read_s:.2f} s")
    print(f"model {model.name} ({weights or 'random init'}) on {device}, loaded in {load_s:.2f} s")
    for line in [*notes, *format_stats(rec.stats)]:
        print(line)
    kind = "coarse + fine" if args.densify else "coarse only"
    if refined is not None:
        kind += " + refined"
        for line in format_refine(refined, v):
            print(line)
    gaussians = refined.gaussians if refined is not None else rec.gaussians
    print(f"wrote {args.output}: {len(gaussians):,} Gaussians ({kind}) in {save_s:.2f} s")


def run(args: argparse.Namespace) -> int:
    from .io import format_for

    # Cheap checks first, so a typo fails before the model is loaded.
    format_for(args.output)
    if args.output.exists() and not args.output.is_file():
        raise ValueError(f"{args.output}: exists and is not a file")
    if not args.transforms.exists():
        raise FileNotFoundError(f"{args.transforms}: transforms file not found")

    from .resolve import resolve_model
    from .views import check_nerf_views, load_nerf_scene

    t0 = time.perf_counter()
    source = check_nerf_views(args.transforms).source  # headers only: before the model loads
    read_s = time.perf_counter() - t0
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    hint = "train them with `gd train`, or pass --model PATH.safetensors"
    model = resolve_model(args.model, device, pretrained=not args.random_init, hint=hint)
    load_s = time.perf_counter() - t0
    refining = args.refine is not None or args.refine_steps is not None
    from .models import GDSceneModel

    if isinstance(model, GDSceneModel):
        return _run_scene(args, model, source, device, read_s, load_s, refining)
    if args.near is not None or args.far is not None:
        raise ValueError(f"--near and --far are for scene models; {model.name} is an object model")
    # Decoded reduced to the size the model resamples its views to (refinement: to the size
    # it optimises at), never full-size floats.
    max_side = getattr(model, "view_size", None)
    if refining and max_side is not None:
        from .refine import RefineConfig

        max_side = max(max_side, RefineConfig().max_side)
    t0 = time.perf_counter()
    views = load_nerf_scene(source, args.background, max_side=max_side, masks=args.masks)
    read_s += time.perf_counter() - t0
    if args.background != WHITE:
        print(f"note: {model.name} was trained on white backgrounds; inputs on "
              f"{args.background} may reconstruct worse", file=sys.stderr)  # fmt: skip

    # The model reads at most max_views views, spread around the prop; refinement uses all.
    model_views = torch.arange(len(views.cameras))
    max_views = getattr(model, "max_views", None)
    if max_views is not None and len(views.cameras) > max_views:
        from .refine import farthest_point_views

        model_views = farthest_point_views(views.cameras, max_views)
    # Straight RGBA on white: a model that reads silhouettes gets the alphas (or masks).
    inputs = views.rgba() if views.background == WHITE else views.images
    rec = model.reconstruct(
        inputs[model_views], views.cameras[model_views], bbox=args.bbox,
        densify=args.densify, budget=args.budget,
    )  # fmt: skip
    gaussians = rec.gaussians
    if len(gaussians) == 0:
        raise ValueError(
            "the model produced no Gaussians (the views show nothing it recognises as a prop)"
        )
    refined = None
    if refining:
        from .refine import refine

        refined = refine(
            gaussians, views.images, views.cameras, seconds=args.refine,
            steps=args.refine_steps, background=args.background,
            progress=_progress_bar("refine"),
        )  # fmt: skip
        gaussians = refined.gaussians

    save_s = _save(gaussians, args.output)

    notes = [] if views.masks is None else [views.masks.summary()]
    v = len(views.cameras)
    if len(model_views) < v:
        notes.append(f"the model read {len(model_views)} of the {v} views (its max_views, "
                     "spread around the prop by farthest-point sampling)")  # fmt: skip
    _report(args, views, source, model, device, (read_s, load_s, save_s), notes, rec, refined)
    return 0
