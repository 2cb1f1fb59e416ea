"""Scenes datasets (`gd data make --kind scenes`): context and target views with depth.

One item is one scene (README.md in this folder has the layout):

    context_images (V, H, W, 3)  RGB in [0, 1]     context_cameras  V `Cameras`
    context_depths (V, H, W)     planar depth, m   target_*         the same for T targets
    near, far      ()            the scene's depth range (one pair for all its views)

Cameras and files are read by `engine.views.nerf_files`, pixels by
`engine.views.load_views`, depth PNGs by `images.read_depth_png`; this module
only joins them. Depth is planar (along the camera's viewing axis, not along the ray), in
metres, 0 where no surface was hit (the sky through an opening).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from engine.views import ViewFiles, load_views, nerf_files

from .layout import (
    DEPTH_SCALE,
    SCENE_VIEW_SPLITS,
    finished_in_split,
    manifest_kind,
    read_manifest,
    scene_dir,
    transforms_path,
)

__all__ = ["ScenesDataset", "load_scene", "read_scene_depths"]

# Scenes are opaque RGB renders; `load_views` wants a background for images with alpha.
_BLACK = (0.0, 0.0, 0.0)


def _number(value: Any, what: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: {what} must be a finite number, got {value!r}")
    return float(value)


def scene_range(files: ViewFiles, path: Path) -> tuple[float, float]:
    """(near, far) of a scene's transforms file (`files.extra`), checked: 0 < near < far.

    Raises:
        ValueError: missing or malformed, naming `path`.
    """
    if "near" not in files.extra or "far" not in files.extra:
        raise ValueError(f"{path}: no 'near' / 'far' (not a scenes dataset transforms file?)")
    near = _number(files.extra["near"], "'near'", path)
    far = _number(files.extra["far"], "'far'", path)
    if not 0 < near < far:
        raise ValueError(f"{path}: needs 0 < near < far, got near {near}, far {far}")
    return near, far


def read_scene_depths(files: ViewFiles, path: Path) -> Tensor:
    """Planar depth of every frame of a scene's transforms file, in metres.

    The depth PNG of frame `k` is `depth_folder / <its image's name>` beside the transforms
    file, holding round(depth / depth_scale) as uint16.

    Args:
        files: the transforms file's views (`engine.views.nerf_files(path)`).
        path: that file (names it in errors; depth folders are relative to it).
    Returns:
        (V, H, W) float32 depth in metres, 0 where no surface was hit.
    Raises:
        FileNotFoundError: a depth PNG is missing (naming it).
        ValueError: no or a malformed depth description, a depth kind other than
            "planar", or a depth PNG whose size differs from its camera's.
    """
    from ..images import read_depth_png

    extra = files.extra
    if "depth_folder" not in extra:
        raise ValueError(f"{path}: no 'depth_folder' (not a scenes dataset transforms file?)")
    if extra.get("depth_kind", "planar") != "planar":
        raise ValueError(f"{path}: depth_kind {extra['depth_kind']!r}, expected 'planar'")
    scale = _number(extra.get("depth_scale", DEPTH_SCALE), "'depth_scale'", path)
    if scale <= 0:
        raise ValueError(f"{path}: 'depth_scale' must be positive, got {scale}")
    folder = path.parent / str(extra["depth_folder"])
    size = (files.cameras.height, files.cameras.width)
    depths = []
    for image in files.image_paths:
        depth_path = folder / image.name
        if not depth_path.is_file():
            raise FileNotFoundError(f"{depth_path}: depth image not found")
        depth = read_depth_png(depth_path, scale)
        if depth.shape != size:
            raise ValueError(
                f"{depth_path}: depth is {depth.shape[1]}x{depth.shape[0]} pixels but its "
                f"camera expects {size[1]}x{size[0]}"
            )
        depths.append(np.nan_to_num(depth, nan=0.0))
    return torch.from_numpy(np.stack(depths))


def load_scene(
    folder: str | os.PathLike, n_target: int | None = None, max_side: int | None = None
) -> dict[str, Any]:
    """One scene folder of a scenes dataset (`OUT/scenes/000017`).

    Args:
        folder: the scene's folder (with transforms_context.json, transforms_target.json).
        n_target: keep only the first n target views (None: all).
        max_side: views larger than this (longer side) come reduced to it, cameras scaled
            to match (`engine.views.load_views`); depth maps are reduced by nearest
            sampling, never averaged, so an edge pixel keeps one surface's depth.
    Returns:
        A dict: context_images (V, H, W, 3) in [0, 1], context_depths (V, H, W) in metres
        (0: no surface), context_cameras (V `Cameras`), target_images (T, H, W, 3),
        target_depths (T, H, W), target_cameras (T `Cameras`), near and far (0-d float32
        tensors, the transforms' depth range; the two files must agree).
    Raises:
        FileNotFoundError, ValueError: missing or malformed files (naming them).
    """
    folder = Path(folder)
    out: dict[str, Any] = {}
    ranges = {}
    for split in SCENE_VIEW_SPLITS:
        path = transforms_path(folder, split)
        files = nerf_files(path)
        ranges[split] = scene_range(files, path)
        depths = read_scene_depths(files, path)
        paths, cameras = files.image_paths, files.cameras
        if split == "target" and n_target is not None:
            paths, cameras, depths = paths[:n_target], cameras[:n_target], depths[:n_target]
        views = load_views(paths, cameras, _BLACK, max_side=max_side)
        size = (views.cameras.height, views.cameras.width)
        if tuple(depths.shape[-2:]) != size:
            # "nearest-exact" picks the pixel nearest each new pixel's centre.
            depths = F.interpolate(depths[:, None], size=size, mode="nearest-exact")[:, 0]
        out[f"{split}_images"] = views.images
        out[f"{split}_depths"] = depths
        out[f"{split}_cameras"] = views.cameras
    if ranges["context"] != ranges["target"]:
        raise ValueError(
            f"{folder}: the context and target transforms disagree on near/far "
            f"({ranges['context']} vs {ranges['target']})"
        )
    near, far = ranges["context"]
    out["near"] = torch.tensor(near, dtype=torch.float32)
    out["far"] = torch.tensor(far, dtype=torch.float32)
    return out


class ScenesDataset(Dataset):
    """Finished scenes of a scenes dataset (`gd data make --kind scenes`), one split.

    Each item is `load_scene`'s dict plus `index` (int, the scene's number); batch them
    with `engine.data.datasets.collate_views` (tensors stacked to (B, ...), cameras kept
    as lists, near and far become (B,)).

    Args:
        root: dataset folder (with manifest.json of kind "scenes").
        split: "train", "val", "test" or "all".
        n_target: keep only the first n target views (None: all).
        max_side: reduce larger views (and their depth) to this longer side (`load_scene`).
    Raises:
        ValueError: not a scenes dataset, or an unknown split.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        n_target: int | None = None,
        max_side: int | None = None,
    ) -> None:
        self.root = Path(root)
        manifest = read_manifest(self.root)
        kind = manifest_kind(manifest)
        if kind != "scenes":
            raise ValueError(f"{self.root}: a {kind} dataset, not a scenes dataset")
        self.indices = finished_in_split(manifest, split, lambda i: scene_dir(self.root, i))
        self.n_target = n_target
        self.max_side = max_side
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = self.indices[position]
        return {
            "index": index,
            **load_scene(scene_dir(self.root, index), self.n_target, self.max_side),
        }
