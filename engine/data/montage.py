"""Contact sheet of a generated dataset: one row of views per random object (PIL only)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_open
from .layout import OBJECTS_DIR, is_finished


def finished_objects(root: str | os.PathLike) -> list[Path]:
    """Folders of the finished objects under `root`, sorted by index."""
    folder = Path(root) / OBJECTS_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no objects folder (is {root} a props dataset?)")
    return sorted(p for p in folder.iterdir() if p.is_dir() and is_finished(p))


def make_montage(
    root: str | os.PathLike,
    out: str | os.PathLike,
    count: int = 16,
    views: int = 4,
    tile: int = 128,
    seed: int = 0,
    background: tuple[int, int, int] = (235, 235, 235),
) -> Path:
    """Write a PNG grid: `count` random finished objects (rows, in pairs of columns blocks)
    x their first `views` input views, each composited on `background` at `tile` pixels.
    Returns the written path."""
    out = Path(out)
    # The format from the suffix, as Image.save(path) would pick it (the temporary file's
    # name says nothing); checked before any work.
    image_format = Image.registered_extensions().get(out.suffix.lower())
    if image_format is None:
        raise ValueError(f"{out}: not an image file suffix Pillow knows (e.g. .png, .jpg)")
    objects = finished_objects(root)
    if not objects:
        raise ValueError(f"{root}: no finished objects to show")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(objects), min(count, len(objects)), replace=False))
    # Two object blocks side by side keep the sheet roughly square for 4 views.
    blocks = 2 if views <= 4 else 1
    rows = (len(chosen) + blocks - 1) // blocks
    sheet = Image.new(
        "RGB", (blocks * views * tile + (blocks - 1) * 8, rows * tile), (255, 255, 255)
    )
    for n, i in enumerate(chosen):
        row, block = divmod(n, blocks)
        images = sorted((objects[i] / "input").glob("*.png"))[:views]
        for k, path in enumerate(images):
            with Image.open(path) as image:
                rgba = image.convert("RGBA").resize((tile, tile), Image.LANCZOS)
            canvas = Image.new("RGBA", (tile, tile), (*background, 255))
            canvas.alpha_composite(rgba)
            sheet.paste(canvas.convert("RGB"), (block * (views * tile + 8) + k * tile, row * tile))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as f:
        sheet.save(f, format=image_format, optimize=True)
    return out
