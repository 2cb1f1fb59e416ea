"""`gd data ...`: make a props or scenes dataset with Blender, draw a montage of one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_args import add_field_flag, int_range, nonnegative_int, positive_int
from .camera_poses import INPUT_RIGS
from .layout import KINDS
from .make import MakeConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="training data: generate props with Blender")
    sub = data.add_subparsers(dest="data_command", required=True)

    make = sub.add_parser(
        "make",
        help="render procedural props or interior scenes with Cycles (resumable)",
        description="Render N procedural props (RGBA PNGs + NeRF transforms) or, with "
        "--kind scenes, N interiors (RGB + 16-bit depth PNGs, a context pair and targets "
        "on an RE10K-like camera clip) into OUT. Re-running the same command resumes: "
        "finished items are skipped.",
    )
    make.add_argument("out", type=Path, help="dataset folder (created if missing)")
    # Defaults, help and checks of the settings are MakeConfig's (`add_field_flag`).
    add_field_flag(make, MakeConfig, "kind", choices=KINDS)
    make.add_argument("--objects", type=positive_int, required=True,
                      help="number of objects (or scenes)")  # fmt: skip
    add_field_flag(make, MakeConfig, "resolution", "--res")
    for name in ("seed", "workers", "views_in", "views_target"):
        add_field_flag(make, MakeConfig, name)
    add_field_flag(make, MakeConfig, "input_rig", "--rig", choices=INPUT_RIGS)
    add_field_flag(make, MakeConfig, "samples")
    make.add_argument("--no-denoise", action="store_true", help="skip OpenImageDenoise")
    add_field_flag(make, MakeConfig, "splits")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.set_defaults(func=_make)

    montage = sub.add_parser(
        "montage", help="PNG grid of random objects (or scenes, with depth) of a dataset"
    )
    montage.add_argument("root", type=Path)
    montage.add_argument("out", type=Path)
    montage.add_argument("--count", type=positive_int, default=16)
    montage.add_argument("--seed", type=nonnegative_int, default=0)
    montage.add_argument("--tile", type=int_range(8, 4096), default=128)
    montage.set_defaults(func=_montage)


def _make(args: argparse.Namespace) -> int:
    from .make import make_dataset

    cfg = MakeConfig(
        out=args.out, objects=args.objects, resolution=args.res, seed=args.seed,
        workers=args.workers, views_in=args.views_in, views_target=args.views_target,
        samples=args.samples, denoise=not args.no_denoise, progress=not args.quiet,
        splits=args.splits, input_rig=args.rig, kind=args.kind,
    )  # fmt: skip
    report = make_dataset(cfg)
    print(
        f"{args.out}: rendered {len(report.rendered)}, skipped {report.skipped} finished, "
        f"failed {len(report.failed)} in {report.seconds:.1f} s "
        f"({report.objects_per_minute:.1f} objects/min)"
    )
    for index, why in sorted(report.failed.items()):
        print(f"  object {index}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


def _montage(args: argparse.Namespace) -> int:
    from .montage import make_montage

    path = make_montage(args.root, args.out, count=args.count, seed=args.seed, tile=args.tile)
    print(path)
    return 0
