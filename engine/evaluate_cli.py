"""`gd evaluate MODEL DATA --out DIR [--views N]`: score a model's coarse and fine
reconstructions on held-out target views and write a report: an object model on a props
dataset beside a visual-hull baseline (engine/evaluate.py), a scene model on a scenes
dataset beside plane-sweep stereo (engine/evaluate_scene.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_args import add_command, nonnegative_int, positive_int
from .devices import DEVICE_CHOICES, resolve_device


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "evaluate", "score coarse and fine reconstructions on a dataset's target views",
        "Reconstruct every object of a split from its input views, render the "
        "coarse and the densified Gaussians into the target views and score each on its own "
        "(PSNR, object-pixel PSNR, SSIM, LPIPS when installed), beside a non-learned "
        "visual-hull splat of the same input views. Writes report.md, metrics.json, image "
        "strips and histograms to --out.",
    )  # fmt: skip
    p.add_argument("model", help="model name (e.g. object-small), a .safetensors weights file "
                   "or a folder holding one")  # fmt: skip
    p.add_argument("data", type=Path, help="props dataset folder (with manifest.json)")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--split", default="test", help="train, val, test or all (default test)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="evaluate the first N objects only")  # fmt: skip
    p.add_argument("--views", type=positive_int, default=None, metavar="N",
                   help="input views the model reads, 1 to its max_views (default: the "
                        "dataset's input ring). Fewer than the ring: an evenly spaced subset; "
                        "more: the ring plus the LAST target views, which are then not "
                        "scored")  # fmt: skip
    p.add_argument("--targets", type=positive_int, default=None, metavar="T",
                   help="score only the first T target views left (default: all), e.g. "
                        "--views 4 --targets 4 scores the views --views 8 scores")  # fmt: skip
    p.add_argument("--budget", type=positive_int, default=None, metavar="K",
                   help="densification candidates per object (default: the model's own, "
                        "e.g. object-small's 1000); a props dataset only")  # fmt: skip
    p.add_argument("--no-visual-hull", "--no-baseline", action="store_true",
                   help="skip the non-learned baseline (visual hull for props, plane-sweep "
                        "stereo for scenes)")  # fmt: skip
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--weights", type=Path, default=None,
                   help="weights file for a model name (default: the shipped weights)")  # fmt: skip
    p.add_argument("--random-init", action="store_true",
                   help="untrained random weights (plumbing checks; reported as such)")  # fmt: skip
    p.add_argument("--images", type=nonnegative_int, default=4, metavar="N",
                   help="GT | coarse | fine strips of the first N objects "
                        "(default 4; 0: none)")  # fmt: skip
    p.add_argument("--image-views", type=positive_int, default=2, metavar="V",
                   help="target views per object in the strips (default 2)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .data.layout import manifest_kind, read_manifest
    from .evaluate import evaluate, open_dataset
    from .resolve import resolve_model

    if args.data.is_dir() and manifest_kind(read_manifest(args.data)) == "scenes":
        return run_scenes(args)
    # Every check (data, split, model) happens before the output folder is created.
    dataset = open_dataset(args.data, args.split)
    device = resolve_device(args.device)
    model = resolve_model(args.model, device, weights=args.weights,
                          pretrained=not args.random_init)  # fmt: skip

    def progress(done: int, total: int, result) -> None:
        hull = result.mean("hull", "psnr")
        print(
            f"[{done}/{total}] object {result.index:06d}: PSNR coarse "
            f"{result.mean('coarse', 'psnr'):.2f} fine {result.mean('fine', 'psnr'):.2f} dB"
            + ("" if hull is None else f" (visual hull {hull:.2f})"),
            file=sys.stderr,
        )

    data = evaluate(
        model, dataset, args.out, split=args.split, limit=args.limit,
        image_objects=args.images, image_views=args.image_views, device=device,
        views=args.views, targets=args.targets, visual_hull=not args.no_visual_hull,
        budget=args.budget,
        meta={"command": "gd " + " ".join(sys.argv[1:]) if sys.argv[1:] else "gd evaluate"},
        progress=progress,
    )  # fmt: skip
    s = data["summary"]
    hull = s.get("visual_hull")
    hull_text = (
        f"; visual hull {hull['psnr']:.2f} dB (object pixels {hull['psnr_object']:.2f})"
        if hull
        else ""
    )
    print(
        f"{s['objects']} objects: PSNR coarse {s['coarse']['psnr']:.2f} -> fine "
        f"{s['fine']['psnr']:.2f} dB (object pixels {s['coarse']['psnr_object']:.2f} -> "
        f"{s['fine']['psnr_object']:.2f}){hull_text}; report in {args.out / 'report.md'}"
    )
    return 0


def run_scenes(args: argparse.Namespace) -> int:
    """`gd evaluate` on a scenes dataset: the scene model against plane-sweep stereo."""
    from .data.scenes import ScenesDataset
    from .evaluate_scene import evaluate_scenes
    from .models import GDSceneModel
    from .resolve import resolve_model

    if args.budget is not None:
        raise ValueError("--budget is for object models on a props dataset; the scene "
                         "model's candidates come from its config")  # fmt: skip
    dataset = ScenesDataset(args.data, args.split)
    if len(dataset) == 0:
        raise ValueError(f"{args.data}: split {args.split!r} has no finished scenes")
    device = resolve_device(args.device)
    model = resolve_model(args.model, device, weights=args.weights,
                          pretrained=not args.random_init)  # fmt: skip
    if not isinstance(model, GDSceneModel):
        raise ValueError(f"{args.data} is a scenes dataset; {model.name} is not a scene model "
                         "(use e.g. scene-small)")  # fmt: skip

    def progress(done: int, total: int, result) -> None:
        print(
            f"[{done}/{total}] scene {result.index:06d}: PSNR baseline "
            f"{result.psnr('baseline') or float('nan'):.2f} coarse {result.psnr('coarse'):.2f} "
            f"fine {result.psnr('fine'):.2f} dB",
            file=sys.stderr,
        )

    data = evaluate_scenes(
        model, dataset, args.out, limit=args.limit, image_scenes=args.images,
        baseline=not args.no_visual_hull,
        meta={"command": "gd " + " ".join(sys.argv[1:]) if sys.argv[1:] else "gd evaluate",
              "data": str(args.data), "split": args.split},
        progress=progress,
    )  # fmt: skip
    s = data["summary"]
    print(
        f"{s['scenes']} scenes: PSNR coarse {s['coarse']['psnr']:.2f} -> fine "
        f"{s['fine']['psnr']:.2f} dB (fine - coarse {s['fine_minus_coarse']:+.2f}; "
        f"baseline {s.get('baseline', {}).get('psnr', float('nan')):.2f}); report in "
        f"{args.out / 'report.md'}"
    )
    return 0
