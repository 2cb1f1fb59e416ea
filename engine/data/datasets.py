"""PyTorch datasets and scene loaders for posed views.

- `PropsDataset`: the generated props layout (see `layout.py`), one item per object.
- `load_nerf_scene`: a NeRF-synthetic / instant-ngp `transforms.json` scene.
- `load_colmap_scene`: a COLMAP sparse model plus its images folder.
- LaRa's Gobjaverse and GSO layouts live in `lara.py`.

All return images (V, H, W, 3) composited on a background colour (white by default for
objects, DESIGN §4), alphas (V, H, W) and `engine.cameras.Cameras`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from engine.camera_formats import colmap_to_cameras, read_colmap, read_nerf_transforms

from .images import WHITE, ViewSet, load_views, training_sample
from .layout import SPLITS, is_finished, object_dir, read_manifest, transforms_path


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
        or "none" (`engine.data.masks`); views are composited on `background` through them.
        Implausible masks raise `engine.data.masks.MaskError` (a ValueError).
    Raises ValueError/FileNotFoundError naming the file for malformed JSON, missing images,
    images above `images.MAX_IMAGE_PIXELS` and images whose size differs from the cameras'.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: transforms file not found")
    frames = read_nerf_transforms(path)
    return load_views(
        frames.image_paths, frames.cameras, background, resize, max_side, masks, frames.mask_paths
    )


def load_colmap_scene(
    folder: str | os.PathLike,
    images: str | os.PathLike = "images",
    background: Sequence[float] = WHITE,
    masks: str = "auto",
) -> ViewSet:
    """Views of a COLMAP reconstruction: the model in `folder` (or folder/sparse/0) and
    images under `folder / images` (relative) or `images` (absolute), sorted by name.

    masks: as `load_nerf_scene`; mask files are looked up in a `masks/` folder beside the
        images folder (`masks/<name>`, `masks/<name>.png` as COLMAP writes them, or the
        image's stem with an image suffix)."""
    from .masks import find_mask_file

    folder = Path(folder)
    model = read_colmap(folder)
    cameras, names = colmap_to_cameras(model)
    image_dir = Path(images) if Path(images).is_absolute() else folder / images
    paths = [image_dir / name for name in names]
    mask_dir = image_dir.parent / "masks"
    mask_paths = [find_mask_file(p, mask_dir) for p in paths]
    return load_views(paths, cameras, background, masks=masks, mask_paths=mask_paths)


class PropsDataset(Dataset):
    """Objects of a generated props dataset (`gd data make`), one split.

    Each item is a dict:
        input_images (V, H, W, 3), input_alphas (V, H, W), input_cameras (V cameras),
        target_images (T, H, W, 3), target_alphas (T, H, W), target_cameras (T cameras),
        index (int, the object's number).

    Args:
        root: dataset folder (with manifest.json).
        split: "train", "val", "test" or "all".
        background: RGB the RGBA renders are composited on.
        n_target: keep only the first n target views (None: all).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        background: Sequence[float] = WHITE,
        n_target: int | None = None,
    ) -> None:
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if split == "all":
            ids = sorted(i for name in SPLITS for i in manifest["splits"].get(name, []))
        elif split in SPLITS:
            ids = list(manifest["splits"].get(split, []))
        else:
            raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
        # The manifest is rewritten at the end of a run; trust the markers on disk.
        self.indices = [i for i in ids if is_finished(object_dir(self.root, i))]
        self.background = tuple(float(c) for c in background)
        self.n_target = n_target
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self.indices)

    def views(self, position: int, split: str) -> ViewSet:
        """The "input" or "target" views of the object at `position` in this dataset."""
        folder = object_dir(self.root, self.indices[position])
        frames = read_nerf_transforms(transforms_path(folder, split))
        paths, cameras = frames.image_paths, frames.cameras
        if split == "target" and self.n_target is not None:
            paths, cameras = paths[: self.n_target], cameras[: self.n_target]
        return load_views(paths, cameras, self.background)

    def __getitem__(self, position: int) -> dict[str, Any]:
        inputs, targets = self.views(position, "input"), self.views(position, "target")
        return training_sample(inputs, targets, index=self.indices[position])


def collate_views(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader collate: stacks tensors to (B, ...) and keeps Cameras (and other
    non-tensors) as lists of length B."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
