"""A props dataset decoded once at training resolution, for fast training steps.

Decoding 12 PNGs a step costs more than a small model's forward on two cores, so
training reads a cache: `rgba.npy` (N, V_in + V_tgt, S, S, 4) uint8, memory-mapped, and
`cameras.npz` (world_to_camera, fx, fy, cx, cy per view; no pickles). The cache lives
inside the dataset folder (`cache/<split>_<size>/`, git-ignored with the dataset) and is
rebuilt when the set of finished objects changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import atomic_open, atomic_path
from ..cameras import Cameras
from ..images import read_rgba
from ..views import nerf_files
from .datasets import PropsDataset
from .layout import object_dir, transforms_path, write_json_atomic


def cache_dir(root: str | os.PathLike, split: str, size: int) -> Path:
    return Path(root) / "cache" / f"{split}_{size}"


def build_cache(root: str | os.PathLike, split: str, size: int, progress: bool = True) -> Path:
    """Decode a split of a props dataset at `size`² into `cache_dir(...)` (idempotent)."""
    dataset = PropsDataset(root, split)
    out = cache_dir(root, split, size)
    index_file = out / "index.json"
    if index_file.is_file():
        info = json.loads(index_file.read_text())
        if info.get("indices") == dataset.indices and info.get("size") == size:
            return out
    if not dataset.indices:
        raise ValueError(f"{root}: split {split!r} has no finished objects")
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset.indices)
    first = object_dir(root, dataset.indices[0])
    counts = [len(nerf_files(transforms_path(first, s)).cameras) for s in ("input", "target")]
    views = sum(counts)
    w2c = np.zeros((n, views, 4, 4))
    intr = np.zeros((n, views, 4))
    iterator: Any = range(n)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"caching {split} at {size}px", unit="object")
    with atomic_path(out / "rgba.npy") as tmp:
        rgba = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(n, views, size, size, 4)
        )
        for i in iterator:
            folder = object_dir(root, dataset.indices[i])
            j = 0
            for split_name, count in zip(("input", "target"), counts, strict=True):
                files = nerf_files(transforms_path(folder, split_name))
                if len(files.cameras) != count:
                    raise ValueError(
                        f"{folder}: {len(files.cameras)} {split_name} views, expected {count}"
                    )
                cams = files.cameras.scaled(size, size)
                for k, path in enumerate(files.image_paths):
                    rgba[i, j] = np.round(read_rgba(path, (size, size)) * 255).astype(np.uint8)
                    w2c[i, j] = cams.world_to_camera[k].numpy()
                    intr[i, j] = [
                        float(cams.fx[k]),
                        float(cams.fy[k]),
                        float(cams.cx[k]),
                        float(cams.cy[k]),
                    ]
                    j += 1
        rgba.flush()
        del rgba  # unmapped before the rename: Windows cannot rename a mapped file
    with atomic_open(out / "cameras.npz") as f:
        np.savez(f, world_to_camera=w2c, intrinsics=intr)
    write_json_atomic(
        index_file,
        {
            "indices": dataset.indices,
            "size": size,
            "input_views": counts[0],
            "target_views": counts[1],
        },
    )
    return out


class CachedProps(Dataset):
    """Items like `PropsDataset`'s, from a cache: inputs (V, S, S, 3) on white, alphas,
    Cameras; targets likewise (all of them; training picks a subset)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        info = json.loads((folder / "index.json").read_text())
        self.indices: list[int] = info["indices"]
        self.size: int = info["size"]
        self.input_views: int = info["input_views"]
        self.rgba = np.load(folder / "rgba.npy", mmap_mode="r")
        with np.load(folder / "cameras.npz", allow_pickle=False) as cams:
            self.w2c = torch.from_numpy(cams["world_to_camera"]).to(torch.float32)
            self.intr = torch.from_numpy(cams["intrinsics"]).to(torch.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def cameras(self, i: int, views: slice) -> Cameras:
        k = self.intr[i, views]
        return Cameras.trusted(
            self.w2c[i, views], k[:, 0], k[:, 1], k[:, 2], k[:, 3], self.size, self.size
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        rgba = torch.from_numpy(np.asarray(self.rgba[i], dtype=np.float32) / 255.0)
        alpha = rgba[..., 3]
        rgb = rgba[..., :3] * alpha[..., None] + (1 - alpha[..., None])  # on white
        v = self.input_views
        return {
            "index": self.indices[i],
            "input_images": rgb[:v],
            "input_alphas": alpha[:v],
            "input_cameras": self.cameras(i, slice(0, v)),
            "target_images": rgb[v:],
            "target_alphas": alpha[v:],
            "target_cameras": self.cameras(i, slice(v, None)),
        }
