"""Contact sheet of a generated dataset: one row of views per random object, or for a
scenes dataset two rows per scene, its views in path order over their depth (PIL only)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_open
from .layout import ITEM_DIRS, MANIFEST_NAME, OBJECTS_DIR, is_finished, manifest_kind, read_json


def finished_objects(root: str | os.PathLike) -> list[Path]:
    """Folders of the finished objects under `root`, sorted by index."""
    folder = Path(root) / OBJECTS_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no objects folder (is {root} a props dataset?)")
    return sorted(p for p in folder.iterdir() if p.is_dir() and is_finished(p))


def _depth_colours(depth: np.ndarray, far: float) -> np.ndarray:
    """(H, W, 3) uint8: near yellow-white to far dark blue, black where no surface."""
    x = np.clip(np.nan_to_num(depth, nan=far) / far, 0.0, 1.0)[..., None]
    near_c, far_c = np.array([255.0, 236.0, 150.0]), np.array([20.0, 30.0, 90.0])
    rgb = near_c * (1 - x) + far_c * x
    rgb[~np.isfinite(depth)] = 0
    return rgb.astype(np.uint8)


def scene_sheet(folder: str | os.PathLike, tile: int = 128) -> Image.Image:
    """Two rows for one scene folder: its views in path order (targets before, between
    and after the context pair; context views framed in orange), and each view's depth
    beneath (near light, far dark, black: no surface)."""
    from ..images import read_depth_png
    from .layout import DEPTH_SCALE

    folder = Path(folder)
    room = read_json(folder / "room.json")
    clip = room["spec"]["clip"]
    views = [("context", k, s) for k, s in enumerate((0.0, 1.0))]
    views += [("target", k, s) for k, s in enumerate(clip["target_s"])]
    views.sort(key=lambda v: v[2])
    sheet = Image.new("RGB", (len(views) * tile, 2 * tile), (255, 255, 255))
    for column, (split, k, _) in enumerate(views):
        with Image.open(folder / split / f"{k:03d}.png") as image:
            rgb = np.asarray(image.convert("RGB").resize((tile, tile), Image.LANCZOS)).copy()
        if split == "context":
            orange = np.array([255, 140, 0], dtype=np.uint8)
            rgb[:3], rgb[-3:], rgb[:, :3], rgb[:, -3:] = orange, orange, orange, orange
        depth = read_depth_png(folder / f"{split}_depth" / f"{k:03d}.png", DEPTH_SCALE)
        depth_image = Image.fromarray(_depth_colours(depth, float(room["far"])))
        sheet.paste(Image.fromarray(rgb), (column * tile, 0))
        sheet.paste(depth_image.resize((tile, tile), Image.NEAREST), (column * tile, tile))
    return sheet


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
    manifest_path = Path(root) / MANIFEST_NAME
    if manifest_path.is_file() and manifest_kind(read_json(manifest_path)) == "scenes":
        return _scenes_montage(root, out, image_format, count, tile, seed)
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


def _scenes_montage(
    root: str | os.PathLike, out: Path, image_format: str, count: int, tile: int, seed: int
) -> Path:
    """`make_montage` for a scenes dataset: `scene_sheet` of `count` random scenes, stacked."""
    folder = Path(root) / ITEM_DIRS["scenes"]
    scenes = sorted(p for p in folder.iterdir() if p.is_dir() and is_finished(p))
    if not scenes:
        raise ValueError(f"{root}: no finished scenes to show")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(scenes), min(count, len(scenes)), replace=False))
    sheets = [scene_sheet(scenes[i], tile) for i in chosen]
    width = max(s.width for s in sheets)
    sheet = Image.new("RGB", (width, sum(s.height + 8 for s in sheets) - 8), (255, 255, 255))
    y = 0
    for s in sheets:
        sheet.paste(s, (0, y))
        y += s.height + 8
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as f:
        sheet.save(f, format=image_format, optimize=True)
    return out
