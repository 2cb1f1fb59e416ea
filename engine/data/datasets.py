"""PyTorch datasets of posed views.

- `PropsDataset`: the generated props layout (see `layout.py`), one item per object.
- LaRa's Gobjaverse and GSO layouts live in `lara.py`.
- Single scenes (a NeRF `transforms.json`, a COLMAP model) are read by `engine.views`
  (`load_nerf_scene`, `load_colmap_scene`), which also reads the views of every dataset.

Items hold images (V, H, W, 3) composited on a background colour (white by default for
objects, DESIGN §4), alphas (V, H, W) and `engine.cameras.Cameras` (`training_sample`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from engine.views import ViewSet, load_views, nerf_files

from ..images import WHITE
from .layout import finished_in_split, object_dir, read_manifest, transforms_path

__all__ = ["PropsDataset", "collate_views", "training_sample"]


def training_sample(inputs: ViewSet, targets: ViewSet, **identity: Any) -> dict[str, Any]:
    """The dict every object dataset yields: input and target views plus identifying keys.

    Keys: `input_images` (V, H, W, 3), `input_alphas` (V, H, W), `input_cameras`, and the same
    for `target_*`, after the `identity` keys (e.g. name or index).
    """
    return {
        **identity,
        "input_images": inputs.images,
        "input_alphas": inputs.alphas,
        "input_cameras": inputs.cameras,
        "target_images": targets.images,
        "target_alphas": targets.alphas,
        "target_cameras": targets.cameras,
    }


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
        self.indices = finished_in_split(manifest, split, lambda i: object_dir(self.root, i))
        self.background = tuple(float(c) for c in background)
        self.n_target = n_target
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self.indices)

    def views(self, position: int, split: str) -> ViewSet:
        """The "input" or "target" views of the object at `position` in this dataset."""
        folder = object_dir(self.root, self.indices[position])
        files = nerf_files(transforms_path(folder, split))
        paths, cameras = files.image_paths, files.cameras
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
