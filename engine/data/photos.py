"""Re-render a dataset's input views as opaque photos (the "photo" render mode).

    python -m engine.data.photos datasets/photos_test --split test [--limit N] [--samples 8]

For each finished object of the split, the prop is rebuilt from its `prop.json` spec, set
on a textured ground plane in its HDRI environment and rendered from the cameras of
`transforms_input.json` as JPEGs without alpha: `photos/000.jpg`, ... and
`transforms_photos.json` beside the other transforms files. Objects whose photos exist are
skipped (resumable). Imports bpy (`engine.data.procedural.photo`), so run it in its own
process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .layout import (
    OBJECTS_DIR,
    PROP_NAME,
    is_finished,
    object_dir,
    read_manifest,
    split_of,
    transforms_path,
)

PHOTOS_DIR = "photos"
PHOTOS_TRANSFORMS = "transforms_photos.json"


def photos_transforms(obj_dir: str | Path) -> Path:
    """`transforms_photos.json` of one object (written last: it marks the photos done)."""
    return Path(obj_dir) / PHOTOS_TRANSFORMS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.data.photos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("root", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ground-lights-prop", action="store_true",
                   help="the ground also bounces light onto and shadows the prop (default: it "
                        "only shows, with the prop's shadow on it, so the prop is lit as in "
                        "the alpha renders)")  # fmt: skip
    args = p.parse_args(argv)

    from engine.camera_formats import read_nerf_transforms, write_nerf_transforms

    from .procedural import scene as blender_scene  # imports bpy
    from .procedural.photo import render_photos

    manifest = read_manifest(args.root)
    # The manifest lists splits only at the end of a run; the split of an object is fixed
    # by (seed, index), so objects finished by a run still going count too.
    found = sorted(int(d.name) for d in (args.root / OBJECTS_DIR).iterdir() if d.name.isdigit())
    seed = manifest["seed"]
    ids = [i for i in found if split_of(seed, i) == args.split]
    ids = [i for i in ids if is_finished(object_dir(args.root, i))]
    ids = ids[: args.limit] if args.limit else ids
    settings = blender_scene.RenderSettings(
        manifest["resolution"], args.samples, True, args.threads
    )
    scene = blender_scene.configure(settings)
    for index in ids:
        folder = object_dir(args.root, index)
        if photos_transforms(folder).is_file():
            continue
        start = time.perf_counter()
        prop = json.loads((folder / PROP_NAME).read_text())
        frames = read_nerf_transforms(transforms_path(folder, "input"))
        cams = frames.cameras.to(dtype=torch.float64)
        flip = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera -> Blender/OpenGL camera
        c2w = cams.camera_to_world.numpy() @ flip
        paths = render_photos(
            scene,
            prop["spec"],
            c2w,
            prop["views"]["fov_deg"],
            folder / PHOTOS_DIR,
            index,
            args.ground_lights_prop,
        )
        write_nerf_transforms(photos_transforms(folder), frames.cameras, paths)
        print(f"{index}: {len(paths)} photos in {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
