"""Loaders for the object datasets LaRa and GD train and evaluate on.

**Gobjaverse (LaRa's HDF5)**: one `.h5` file, one group per object, holding
    image_<i>   (H, W, 4) uint8 RGBA render
    c2w_<i>     (4, 4) camera-to-world, OpenCV axes (LaRa inverts it as is to get w2c)
    fov_<i>     (2,) horizontal and vertical field of view, radians
    groups/groups_4_<k>   view ids of the k-th of four azimuth groups
and optionally a top-level `splits` group with a `test` list of object names. LaRa's
evaluation takes input view k = groups_4_k[0] and target k = groups_4_k[-1]; intrinsics
are fx = W / (2 tan(fovx / 2)), cx = W / 2 (our pixel-centre convention already).

**GSO (LaRa's folder layout)**: one folder per object with `transforms.json` whose frames
have `transform_matrix` (Blender/OpenGL camera-to-world) and `intrinsic_matrix` (3x3, in
pixels of the stored 512^2 renders), images `r_<idx:03d>.png` (RGBA) beside it. LaRa picks
input views by k-means over camera positions; we take farthest-point samples, which is
deterministic and spreads the views the same way.

h5py is needed only for Gobjaverse (`pip install h5py`, in the `data` extra).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.cameras import Cameras
from engine.views import ViewSet, load_views

from ..images import WHITE, composite, image_size
from .datasets import training_sample
from .layout import read_json

_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def _cameras(c2w_cv: np.ndarray, fx, fy, cx, cy, width: int, height: int) -> Cameras:
    w2c = np.linalg.inv(np.asarray(c2w_cv, dtype=np.float64))
    return Cameras(torch.from_numpy(w2c).float(), fx, fy, cx, cy, width, height)


class GobjaverseDataset(Dataset):
    """Objects of a LaRa-style Gobjaverse `.h5` file (see module docstring).

    Items are dicts like `PropsDataset`'s: input_images (4, H, W, 3), input_alphas,
    input_cameras, target_images (4, H, W, 3), target_alphas, target_cameras, name.
    """

    def __init__(
        self, path: str | os.PathLike, split: str = "test", background: Sequence[float] = WHITE
    ) -> None:
        import h5py  # optional dependency, only this loader needs it

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: Gobjaverse h5 file not found")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise ValueError(f"{self.path}: cannot open as HDF5 ({err})") from None
        names = sorted(k for k in self._file if k != "splits")
        if "splits" in self._file and split in self._file["splits"]:
            listed = [
                n.decode() if isinstance(n, bytes) else str(n)
                for n in self._file["splits"][split][:]
            ]
            names = [n for n in listed if n in self._file]
        elif split in ("train", "test"):
            # LaRa's fallback: every tenth object is a test object.
            test = set(names[::10])
            names = [n for n in names if (n in test) == (split == "test")]
        elif split != "all":
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        self.names = names
        self.background = np.asarray(background, np.float32)

    def __len__(self) -> int:
        return len(self.names)

    def _views(self, group: Any, ids: list[int], name: str) -> ViewSet:
        rgba, c2ws, intr, size = [], [], [], None
        for i in ids:
            where = f"{self.path}:{name}/image_{i}"
            for key in (f"image_{i}", f"c2w_{i}", f"fov_{i}"):
                if key not in group:
                    raise ValueError(f"{self.path}: object {name} has no {key!r}")
            image = np.asarray(group[f"image_{i}"])
            if image.ndim != 3 or image.shape[-1] not in (3, 4):
                raise ValueError(f"{where}: expected (H, W, 3|4) image, got {image.shape}")
            if size is not None and image.shape[:2] != size:
                raise ValueError(
                    f"{where}: image is {image.shape[1]}x{image.shape[0]}, earlier views are "
                    f"{size[1]}x{size[0]} (mismatched sizes)"
                )
            size = image.shape[:2]
            image = image.astype(np.float32) / 255.0
            if image.shape[-1] == 3:
                image = np.concatenate([image, np.ones_like(image[..., :1])], -1)
            rgba.append(image)
            c2ws.append(np.asarray(group[f"c2w_{i}"], dtype=np.float64))
            fovx, fovy = (float(v) for v in np.asarray(group[f"fov_{i}"]).reshape(-1)[:2])
            intr.append((size[1] / (2 * math.tan(fovx / 2)), size[0] / (2 * math.tan(fovy / 2))))
        h, w = size
        k = torch.tensor(intr, dtype=torch.float32)
        cams = _cameras(np.stack(c2ws), k[:, 0], k[:, 1], w / 2, h / 2, w, h)
        stack = np.stack(rgba)
        images = torch.from_numpy(composite(stack, self.background))
        return ViewSet(images, torch.from_numpy(np.ascontiguousarray(stack[..., 3])), cams, [])

    def __getitem__(self, position: int) -> dict[str, Any]:
        name = self.names[position]
        group = self._file[name]
        if "groups" not in group:
            raise ValueError(f"{self.path}: object {name} has no 'groups' (LaRa view groups)")
        groups = [np.asarray(group["groups"][f"groups_4_{k}"]).astype(int) for k in range(4)]
        inputs = self._views(group, [int(g[0]) for g in groups], name)
        targets = self._views(group, [int(g[-1]) for g in groups], name)
        return training_sample(inputs, targets, name=name)


def farthest_views(positions: np.ndarray, count: int) -> list[int]:
    """`count` indices of well-spread camera positions (N, 3): start at view 0, then
    repeatedly the view farthest from those chosen."""
    chosen = [0]
    dist = np.linalg.norm(positions - positions[0], axis=1)
    while len(chosen) < min(count, len(positions)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(positions - positions[nxt], axis=1))
    return chosen


def read_gso_scene(folder: str | os.PathLike) -> tuple[Cameras, list[Path]]:
    """Cameras and image paths of one GSO object folder in LaRa's layout."""
    folder = Path(folder)
    path = folder / "transforms.json"
    data = read_json(path)
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path}: needs a non-empty 'frames' list")
    c2ws, intr, paths = [], [], []
    for idx, frame in enumerate(frames):
        try:
            c2w = np.asarray(frame["transform_matrix"], dtype=np.float64).reshape(4, 4)
            k = np.asarray(frame["intrinsic_matrix"], dtype=np.float64).reshape(3, 3)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: frame {idx} needs 4x4 'transform_matrix' and 3x3 "
                             f"'intrinsic_matrix' ({err})") from None  # fmt: skip
        c2ws.append(c2w @ _GL_TO_CV)
        intr.append((k[0, 0], k[1, 1], k[0, 2], k[1, 2]))
        paths.append(folder / f"r_{idx:03d}.png")
    width, height = image_size(paths[0])  # header only, with the views' pixel limit
    # LaRa stores intrinsics for 512^2 renders and rescales them to the image size.
    k = torch.tensor(intr, dtype=torch.float32)
    sx, sy = width / 512.0, height / 512.0
    if "w" in data and "h" in data:
        sx, sy = width / float(data["w"]), height / float(data["h"])
    cams = _cameras(
        np.stack(c2ws), k[:, 0] * sx, k[:, 1] * sy, k[:, 2] * sx, k[:, 3] * sy, width, height
    )
    return cams, paths


class GSODataset(Dataset):
    """Google Scanned Objects in LaRa's folder layout: `n_input` farthest-point input
    views and `n_target` further views (the next farthest) per object."""

    def __init__(
        self,
        root: str | os.PathLike,
        n_input: int = 4,
        n_target: int = 4,
        background: Sequence[float] = WHITE,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: GSO folder not found")
        self.names = sorted(
            p.name for p in self.root.iterdir() if (p / "transforms.json").is_file()
        )
        self.n_input, self.n_target = n_input, n_target
        self.background = tuple(background)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, position: int) -> dict[str, Any]:
        name = self.names[position]
        cams, paths = read_gso_scene(self.root / name)
        order = farthest_views(cams.centers.numpy(), self.n_input + self.n_target)
        ins, tgts = order[: self.n_input], order[self.n_input :]
        inputs = load_views([paths[i] for i in ins], cams[ins], self.background)
        targets = load_views([paths[i] for i in tgts], cams[tgts], self.background)
        return training_sample(inputs, targets, name=name)
