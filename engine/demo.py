"""`gd demo`: the README's main job on the bundled sample.

Until the object model and its weights ship, the main job renders the bundled
procedural splat (`examples/demo_splat/demo.ply`) from the held-out cameras of
the first bundled sample prop and writes the images and a contact sheet.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .camera_formats import read_nerf_transforms
from .images import save_png
from .io import load
from .render import render

ROOT = Path(__file__).resolve().parents[1]
DEMO_SPLAT = ROOT / "examples" / "demo_splat" / "demo.ply"
DEMO_CAMERAS = ROOT / "examples" / "sample_props" / "objects" / "000000" / "transforms_target.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the README's main job on the bundled sample")
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    gaussians = load(DEMO_SPLAT)
    frames = read_nerf_transforms(DEMO_CAMERAS)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = render(gaussians, frames.cameras, background=torch.ones(3))
    seconds = time.perf_counter() - start
    for i in range(len(frames.cameras)):
        save_png(out.colors[i], args.out / f"view_{i:02d}.png")
    save_png(torch.cat(list(out.colors), dim=1), args.out / "contact_sheet.png")
    print(
        f"rendered {len(gaussians)} Gaussians into {len(frames.cameras)} views "
        f"({frames.cameras.width}x{frames.cameras.height}) in {seconds:.2f} s "
        f"with the {out.backend} backend; images in {args.out}"
    )
    return 0
