"""`gd render`: draw a splat file from the cameras of a transforms.json, one PNG per camera.

Axes: the splat file is read raw by default (`--axes raw`), its coordinates taken as the
camera file's world. That is what lines a file up with the cameras it shares a frame with:
a 3DGS `.ply` trained from a `transforms.json` holds the trainer's world (the camera
file's) untouched, so rendering it from those cameras must not turn it. Files written for
viewers (`gd reconstruct -o`, `gd export`, engine.io.save: PLY space or glTF Y-up, see
engine/io/axes.py) are turned back into our Z-up world with `--axes standard`, which is
what renders `gd reconstruct`'s output from the transforms.json it was made from.

The camera file needs no images: frames with `transform_matrix` and `w`/`h` (top level or
per frame) are a camera path; images, when there, only name the PNGs and give a size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from ..camera_formats import read_nerf_transforms
from ..cli_args import add_command, int_range, parse_background
from ..devices import DEVICE_CHOICES, resolve_device
from ..gaussians import MAX_SH_DEGREE
from ..images import save_png
from ..io import AXES, load
from . import BACKENDS, render


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "render", "render a splat file from a transforms.json's cameras",
                    __doc__.split("\n\n", 1)[1], raw=True)  # fmt: skip
    p.add_argument("scene", type=Path, help="splat file (.ply, .spz, .glb, ...)")
    p.add_argument("--cameras", type=Path, required=True,
                   help="NeRF-style transforms.json (w/h suffice; images optional)")  # fmt: skip
    p.add_argument("--axes", choices=AXES, default="raw",
                   help="raw (default): the file shares the cameras' frame; standard: "
                   "its format's own frame (gd reconstruct / gd export output)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output folder for the PNGs")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--background", type=parse_background, default=(1.0, 1.0, 1.0),
                   help="'white' (default), 'black' or r,g,b")  # fmt: skip
    p.add_argument("--sh-degree", type=int_range(0, MAX_SH_DEGREE), default=None,
                   help=f"evaluate SH up to this degree (0..{MAX_SH_DEGREE})")  # fmt: skip
    p.set_defaults(func=run)
    register_warmup(subparsers)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    # Read and check every input before creating anything on disk.
    gaussians = load(args.scene, device=device, axes=args.axes)
    frames = read_nerf_transforms(args.cameras, require_images=False)
    cameras = frames.cameras.to(device=device)
    names = [Path(p).stem or f"{i:03d}" for i, p in enumerate(frames.image_paths)]
    if len(set(names)) != len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    args.out.mkdir(parents=True, exist_ok=True)
    background = torch.tensor(args.background)
    with torch.no_grad():
        for i in tqdm(range(len(cameras)), desc="render", unit="view"):
            out = render(gaussians, cameras[i], background=background,
                         sh_degree=args.sh_degree, backend=args.backend)  # fmt: skip
            save_png(out.colors[0], args.out / f"{names[i]}.png")
    print(f"wrote {len(cameras)} images ({cameras.width}x{cameras.height}) of "
          f"{len(gaussians)} Gaussians to {args.out}")  # fmt: skip
    return 0


def register_warmup(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "warmup",
        "compile the CPU render kernels into the numba cache (make venv runs it)",
        "Compile (or load) every numba kernel once, so the first render or reconstruction of a "
        "new install does not wait for the compiler. Prints where the cache lives "
        "(NUMBA_CACHE_DIR overrides it; see engine/render/numba_cache.py).",
    )  # fmt: skip
    p.set_defaults(func=run_warmup)


def run_warmup(args: argparse.Namespace) -> int:
    from . import numba_available

    if not numba_available():
        print("numba is not installed: renders use the portable torch backend, nothing to do")
        return 0
    from .numba_cache import warmup

    status, seconds = warmup()
    where = status.directory if status.enabled else "no cache"
    print(f"numba kernels ready in {seconds:.1f} s; cache: {where} ({status.reason})")
    return 0
