"""Posed views from disk: images with their cameras, read in one place.

Everything that reads views (`gd reconstruct`, the add-on's Import Photos, the datasets,
evaluation, the demo) comes here:

- `nerf_files`, `colmap_files`: where the views of a NeRF `transforms.json` or a COLMAP
  model are on disk (`ViewFiles`: cameras, image files, mask files), nothing decoded;
- `check_views`, `check_nerf_views`: image headers against their cameras, no pixels;
- `load_views`, `load_nerf_scene`, `load_colmap_scene`: decoded views (`ViewSet`), reduced
  to a size, cut out by their masks and composited on a background.

The file formats are parsed in `engine.camera_formats`, images are decoded (with the pixel
limit) in `engine.images`, masks made in `engine.masks`; this module joins them.
(`engine.data.camera_poses` is another thing: the poses the data generator renders from.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .camera_formats import colmap_to_cameras, read_colmap, read_nerf_transforms
from .cameras import Cameras
from .images import WHITE, composite, image_size, read_rgba, straight_rgba

__all__ = [
    "COLMAP_IMAGE_DIRS",
    "ViewFiles",
    "ViewSet",
    "check_nerf_views",
    "check_views",
    "colmap_files",
    "load_colmap_scene",
    "load_nerf_scene",
    "load_views",
    "nerf_files",
    "reduced_size",
    "transforms_file",
]

# Where `colmap_files` looks for a COLMAP model's photos when not told, in this order.
COLMAP_IMAGE_DIRS = ("images", "input", ".")


@dataclass
class ViewSet:
    """Posed views of one object or scene.

    Attributes:
        images: (V, H, W, 3) float RGB in [0, 1], composited on the background.
        alphas: (V, H, W) float coverage in [0, 1] (all ones for images without alpha).
        cameras: V cameras of W x H pixels.
        paths: the V image files.
        masks: where the alphas came from when a mask mode chose them
            (`engine.masks.Masks`: source, coverage, cross-view consistency), else None.
        background: the colour `images` are composited on.
    """

    images: Tensor
    alphas: Tensor
    cameras: Cameras
    paths: list[Path]
    masks: Any = None
    background: tuple[float, float, float] = WHITE

    def rgba(self) -> Tensor:
        """(V, H, W, 4) straight RGBA: what a model that reads silhouettes wants (the
        object model composites it on white itself); all-opaque views stay all-opaque."""
        return straight_rgba(self.images, self.alphas, self.background)


@dataclass
class ViewFiles:
    """Posed views on disk, not yet decoded.

    Attributes:
        cameras: V cameras.
        image_paths: the V image files.
        mask_paths: per view its foreground mask file, or None.
        source: the transforms.json or COLMAP folder they were read from.
        extra: a transforms.json's top-level keys beyond the cameras' (a scene's "near"
            and "far", the data generator's bookkeeping); empty for COLMAP.
    """

    cameras: Cameras
    image_paths: list[Path]
    mask_paths: list[Path | None]
    source: Path
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- files
def transforms_file(path: str | os.PathLike) -> Path:
    """`path` itself, or the `transforms.json` in it when it is a folder."""
    path = Path(path)
    return path / "transforms.json" if path.is_dir() else path


def nerf_files(path: str | os.PathLike) -> ViewFiles:
    """Cameras, images and mask files (a frame's `mask_path`) of a `transforms.json` or of a
    folder holding one (`engine.camera_formats.read_nerf_transforms`).

    Raises:
        FileNotFoundError: the file or one of its images is missing.
        ValueError: malformed JSON or cameras (CameraError is a ValueError).
    """
    path = transforms_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: transforms file not found")
    frames = read_nerf_transforms(path)
    return ViewFiles(frames.cameras, frames.image_paths, frames.mask_paths, path, frames.extra)


def colmap_files(folder: str | os.PathLike, images: str | os.PathLike | None = None) -> ViewFiles:
    """Cameras, photos and mask files of a COLMAP model (binary or text) in `folder`,
    `folder/sparse/0` or `folder/sparse`, photos sorted by name.

    images: the photos' folder, relative to `folder` or absolute; None looks for the one
        of `COLMAP_IMAGE_DIRS` that holds every photo.
    Mask files are looked up in a `masks/` folder beside the photos' folder (in `folder`
    when the photos are in `folder` itself): `masks/<name>`, `masks/<name>.png` as COLMAP
    writes them, or the photo's stem with an image suffix (`engine.masks`).

    Raises:
        FileNotFoundError: `images` is None and no folder holds every photo.
        ValueError: a malformed model (CameraError is a ValueError).
    """
    from .masks import find_mask_file

    folder = Path(folder)
    cameras, names = colmap_to_cameras(read_colmap(folder))
    if images is not None:
        image_dir = Path(images) if Path(images).is_absolute() else folder / images
    else:
        for sub in COLMAP_IMAGE_DIRS:
            image_dir = folder / sub
            if all((image_dir / name).is_file() for name in names):
                break
        else:
            raise FileNotFoundError(
                f"{folder}: the photos of the COLMAP model (e.g. {names[0]}) are not in "
                f"{', '.join(str(folder / d) for d in COLMAP_IMAGE_DIRS)}"
            )
    paths = [image_dir / name for name in names]
    mask_dir = folder / "masks" if image_dir == folder else image_dir.parent / "masks"
    masks = [find_mask_file(p, mask_dir) for p in paths]
    return ViewFiles(cameras, paths, masks, folder)


# ---------------------------------------------------------------------------- checks
def check_views(
    paths: Sequence[str | os.PathLike], cameras: Cameras, resize: bool = False
) -> list[Path]:
    """Check view images from their headers alone (cheap: no pixels are decoded).

    Each must exist, be a readable image within `MAX_IMAGE_PIXELS` and, unless `resize`,
    be exactly the cameras' size. Returns the paths as `Path`s.

    Raises:
        FileNotFoundError: an image is missing (naming it).
        ImageTooLargeError: an image has too many pixels (naming it).
        ValueError: unreadable, or its size differs from the cameras' (naming it and both).
    """
    paths = [Path(p) for p in paths]
    if len(paths) != len(cameras):
        raise ValueError(f"{len(paths)} images for {len(cameras)} cameras")
    expected = (cameras.width, cameras.height)
    for path in paths:
        found = image_size(path)
        if not resize and found != expected:
            raise ValueError(
                f"{path}: image is {found[0]}x{found[1]} pixels but its camera expects "
                f"{expected[0]}x{expected[1]} (mismatched image sizes)"
            )
    return paths


def check_nerf_views(path: str | os.PathLike) -> ViewFiles:
    """Check a transforms.json, its cameras and its images' headers (existence, size,
    `engine.images.MAX_IMAGE_PIXELS`) without decoding any pixels, so that bad input
    fails in a moment (before a model loads). Returns its `ViewFiles`.

    Raises:
        FileNotFoundError: the file or one of its images is missing.
        ValueError: malformed JSON, cameras or images (CameraError is a ValueError).
    """
    files = nerf_files(path)
    check_views(files.image_paths, files.cameras)
    return files


# ---------------------------------------------------------------------------- pixels
def reduced_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is `max_side` (unchanged if smaller)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_views(
    paths: Sequence[str | os.PathLike],
    cameras: Cameras,
    background: Sequence[float] = WHITE,
    resize: bool = False,
    max_side: int | None = None,
    masks: str = "none",
    mask_paths: Sequence[str | os.PathLike | None] | None = None,
) -> ViewSet:
    """Images for `cameras`, checked against the cameras' size.

    Args:
        resize: resample images of another size to the cameras' size instead of failing
            (for datasets whose cameras are given at another resolution).
        max_side: decode views larger than this (longer side) reduced to it, and return
            the cameras scaled to match (`Cameras.scaled`): what a model that resamples its
            inputs to `max_side` needs, without decoding the full images.
        masks: which pixels are the prop (`engine.masks.resolve_masks`): "none" (the
            images' alpha as it is, if any), "alpha" (a usable alpha channel required),
            "files" (`mask_paths`), or "auto" (alpha if usable, else files, else estimated
            from the views); the views are composited on `background` through them.
        mask_paths: V mask files (None where a view has none), for "files" and "auto".
    Returns:
        A `ViewSet` of images (V, H, W, 3), alphas (V, H, W) and cameras of W x H, where
        W x H is the cameras' size, reduced to `max_side`.
    Raises:
        FileNotFoundError: an image is missing (naming it).
        ImageTooLargeError: an image has more than `MAX_IMAGE_PIXELS` pixels.
        ValueError: an image's size differs from the cameras' (naming it and both sizes),
            or it cannot be decoded.
        engine.masks.MaskError: (a ValueError) the masks are missing or implausible.
    """
    paths = check_views(paths, cameras, resize)
    bg = tuple(float(c) for c in background)
    target = reduced_size(cameras.width, cameras.height, max_side)
    if target != (cameras.width, cameras.height):
        cameras = cameras.scaled(*target)
    # Images already at `target` decode as they are; others are decoded reduced to it.
    frames = [read_rgba(path, target) for path in paths]
    rgba = np.stack(frames)
    if masks != "none":
        from .masks import composite_masked, resolve_masks

        tensor = torch.from_numpy(rgba)
        found = resolve_masks(tensor, cameras, masks, mask_paths)
        images = composite_masked(tensor, found, background)
        return ViewSet(images, found.alphas.contiguous(), cameras, paths, found, bg)
    images = torch.from_numpy(composite(rgba, background))
    alphas = torch.from_numpy(np.ascontiguousarray(rgba[..., 3]))
    return ViewSet(images, alphas, cameras, paths, None, bg)


def load_nerf_scene(
    path: str | os.PathLike,
    background: Sequence[float] = WHITE,
    resize: bool = False,
    max_side: int | None = None,
    masks: str = "auto",
) -> ViewSet:
    """Views of a `transforms.json` (or a folder holding `transforms.json`).

    max_side: decode views whose longer side exceeds it reduced to it, cameras scaled to
        match (`load_views`); e.g. a model's input size.
    masks: "auto" (default: the images' alpha when every view has a usable one, else the
        frames' `mask_path` files, else masks estimated from the views), "alpha", "files"
        or "none" (`engine.masks`); views are composited on `background` through them.
        Implausible masks raise `engine.masks.MaskError` (a ValueError).
    Raises ValueError/FileNotFoundError naming the file for malformed JSON, missing images,
    images above `images.MAX_IMAGE_PIXELS` and images whose size differs from the cameras'.
    """
    files = nerf_files(path)
    return load_views(
        files.image_paths, files.cameras, background, resize, max_side, masks, files.mask_paths
    )


def load_colmap_scene(
    folder: str | os.PathLike,
    images: str | os.PathLike = "images",
    background: Sequence[float] = WHITE,
    masks: str = "auto",
) -> ViewSet:
    """Views of a COLMAP reconstruction: the model in `folder` (or folder/sparse/0) and
    images under `folder / images` (relative) or `images` (absolute), sorted by name.

    masks: as `load_nerf_scene`; mask files as `colmap_files` finds them (a `masks/`
        folder beside the images folder)."""
    files = colmap_files(folder, images)
    return load_views(
        files.image_paths, files.cameras, background, masks=masks, mask_paths=files.mask_paths
    )
