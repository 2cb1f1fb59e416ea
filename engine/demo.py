"""`gd demo`: the README's main job on the bundled sample prop.

Reconstructs `examples/sample_props/objects/000000` from its 4 input views with the
shipped `object-small` weights, then renders the coarse and the densified (fine) Gaussians
into the 4 held-out target views and scores each on its own (DESIGN §2: the fine score is
never a best-of). Writes to `--out` (default `out/demo/`):

    prop.ply          the final Gaussians (coarse ones kept + fine ones), INRIA PLY
    comparison.png    one row per held-out view: ground truth | coarse | fine, labelled
                      with each render's PSNR

Without the shipped weights it stops with a message saying how to get them; it never
falls back to an untrained model on its own.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .cli_args import add_command
from .devices import DEVICE_CHOICES, resolve_device

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample_props" / "objects" / "000000"
DEFAULT_MODEL = "object-small"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "demo",
        "reconstruct the bundled sample prop and score coarse vs fine on held-out views",
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="object-small (shipped, default) or a .safetensors file")  # fmt: skip
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    # For tests: an untrained model (the numbers are then meaningless; said so in the output).
    p.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


@dataclass
class DemoResult:
    """What the demo measured.

    Attributes:
        psnr: {"coarse"|"fine"|"white": {"full"|"object": (T,) per-view PSNR in dB}}.
        renders: {"gt"|"coarse"|"fine": (T, H, W, 3) images in [0, 1]} of the target views.
        stats: the reconstruction's `stats` (counts, per-stage seconds).
    """

    psnr: dict[str, dict[str, Tensor]]
    renders: dict[str, Tensor]
    stats: dict[str, Any]
    gaussians: Any
    render_seconds: float


def _shown(path: Path) -> Path:
    """`path` relative to the repository when inside it (shorter messages)."""
    try:
        return path.relative_to(ROOT)
    except ValueError:
        return path


def run_demo(model: Any, sample: Path = SAMPLE) -> DemoResult:
    """Reconstruct `sample` from its input views and score coarse and fine on its targets.

    Args:
        model: an object model (`reconstruct`, `device`).
        sample: a props-layout object folder with transforms_input.json and
            transforms_target.json.
    """
    from .evaluate import object_mask
    from .metrics import psnr
    from .render import render
    from .views import load_nerf_scene

    inputs = load_nerf_scene(sample / "transforms_input.json")
    targets = load_nerf_scene(sample / "transforms_target.json")
    rec = model.reconstruct(inputs.rgba(), inputs.cameras)

    device = model.device
    cams = targets.cameras.to(device=device, dtype=torch.float32)
    gt = targets.images.to(device)
    # Object pixels depend on the ground truth only, as in `gd evaluate`.
    mask = object_mask(targets.alphas.to(device))
    white = torch.ones(3, device=device)
    t0 = time.perf_counter()
    with torch.no_grad():
        renders = {
            "coarse": render(rec.coarse.to(device), cams, background=white).colors.clamp(0, 1),
            "fine": render(rec.gaussians.to(device), cams, background=white).colors.clamp(0, 1),
        }
    render_seconds = time.perf_counter() - t0
    renders["white"] = torch.ones_like(gt)
    scores = {
        name: {"full": psnr(img, gt).cpu(), "object": psnr(img, gt, mask).cpu()}
        for name, img in renders.items()
    }
    del renders["white"]
    renders = {"gt": gt.cpu(), **{k: v.cpu() for k, v in renders.items()}}
    return DemoResult(scores, renders, rec.stats, rec.gaussians, render_seconds)


def comparison_image(result: DemoResult) -> Image.Image:
    """One row per target view, columns ground truth | coarse | fine, each labelled (the
    renders' labels carry their full-image PSNR)."""
    from .plots import image_strip

    rows = []
    for j in range(len(result.renders["gt"])):
        labels = [f"ground truth, view {j}"] + [
            f"{name} {float(result.psnr[name]['full'][j]):.2f} dB" for name in ("coarse", "fine")
        ]
        images = [result.renders[name][j] for name in ("gt", "coarse", "fine")]
        rows.append(np.asarray(image_strip(images, labels)))
    return Image.fromarray(np.concatenate(rows, axis=0))


def run(args: argparse.Namespace) -> int:
    from .atomic import atomic_open
    from .io import save
    from .reconstruct_cli import format_stats
    from .resolve import resolve_model

    device = resolve_device(args.device)
    model = resolve_model(args.model, device, pretrained=not args.random_init, hint=(
        "they ship with the repository (update your checkout), or train your own with "
        "`gd train` and run `gd demo --model runs/NAME/checkpoint/model.safetensors`"))  # fmt: skip
    result = run_demo(model)

    args.out.mkdir(parents=True, exist_ok=True)
    save(result.gaussians, args.out / "prop.ply")
    with atomic_open(args.out / "comparison.png") as f:
        comparison_image(result).save(f, format="PNG")

    weights = getattr(model, "weights_path", None)
    sha = getattr(model, "weights_sha256", None)
    what = f"{weights} (sha256 {sha[:12]})" if weights and sha else str(weights or "")
    print(f"model {model.name}: {what or 'RANDOM INIT (untrained, numbers meaningless)'}")
    print(f"sample {_shown(SAMPLE)}: 4 input views -> Gaussians on {device}")
    for line in format_stats(result.stats):
        print("  " + line)
    t = len(result.renders["gt"])
    print(f"PSNR on the {t} held-out views (mean; each render scored on its own, not best-of):")
    for name, label in (("coarse", "coarse"), ("fine", "fine (densified)"), ("white", "white")):
        full = float(result.psnr[name]["full"].mean())
        obj = float(torch.nanmean(result.psnr[name]["object"]))
        note = "   <- an all-white image, for scale" if name == "white" else ""
        print(f"  {label:<17} {full:6.2f} dB full image   {obj:6.2f} dB object pixels{note}")
    gain = result.psnr["fine"]["full"].mean() - result.psnr["coarse"]["full"].mean()
    print(f"  densification gain {float(gain):+.2f} dB (full image)")
    print(f"wrote {args.out / 'prop.ply'} ({len(result.gaussians):,} Gaussians) and "
          f"{args.out / 'comparison.png'}")  # fmt: skip
    return 0
