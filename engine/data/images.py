"""Reading view images for the loaders: RGBA to float, compositing, clear errors.

Every error names the file it is about, since datasets hold thousands of images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from engine.cameras import Cameras

WHITE = (1.0, 1.0, 1.0)


@dataclass
class ViewSet:
    """Posed views of one object or scene.

    Attributes:
        images: (V, H, W, 3) float RGB in [0, 1], composited on the background.
        alphas: (V, H, W) float coverage in [0, 1] (all ones for images without alpha).
        cameras: V cameras of W x H pixels.
        paths: the V image files.
    """

    images: Tensor
    alphas: Tensor
    cameras: Cameras
    paths: list[Path]


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


def read_rgba(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 4) float32 RGBA in [0, 1] from an 8/16-bit PNG or JPEG (alpha 1 if absent).

    Args:
        size: optional (width, height) to resample to (area-averaging filter).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            image.load()
            if size is not None and image.size != tuple(size):
                image = image.convert("RGBA").resize(tuple(size), Image.BOX)
            if image.mode in ("I;16", "I;16B", "I"):
                array = np.asarray(image, dtype=np.float32) / 65535.0
                array = np.repeat(array[..., None], 3, -1)
                return np.concatenate([array, np.ones_like(array[..., :1])], -1)
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from None
    return rgba


def composite(rgba: np.ndarray, background: Sequence[float] = WHITE) -> np.ndarray:
    """(..., 3) straight-alpha RGBA composited over a constant background colour."""
    alpha = rgba[..., 3:4]
    return rgba[..., :3] * alpha + np.asarray(background, np.float32) * (1.0 - alpha)


def load_views(
    paths: Sequence[str | os.PathLike],
    cameras: Cameras,
    background: Sequence[float] = WHITE,
    resize: bool = False,
) -> ViewSet:
    """Images for `cameras`, checked against the cameras' size.

    Args:
        resize: resample images of another size to the cameras' size instead of failing
            (for datasets whose cameras are given at another resolution).
    Raises:
        FileNotFoundError: an image is missing (naming it).
        ValueError: an image's size differs from the cameras' (naming it and both sizes).
    """
    paths = [Path(p) for p in paths]
    if len(paths) != len(cameras):
        raise ValueError(f"{len(paths)} images for {len(cameras)} cameras")
    expected = (cameras.width, cameras.height)
    frames = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image not found")
        if not resize:
            try:
                with Image.open(path) as image:  # header only: cheap size check
                    found = image.size
            except (OSError, ValueError) as err:
                raise ValueError(f"{path}: cannot read image ({err})") from None
            if found != expected:
                raise ValueError(
                    f"{path}: image is {found[0]}x{found[1]} pixels but its camera expects "
                    f"{expected[0]}x{expected[1]} (mismatched image sizes)"
                )
        frames.append(read_rgba(path, expected if resize else None))
    rgba = np.stack(frames)
    images = torch.from_numpy(composite(rgba, background))
    return ViewSet(images, torch.from_numpy(np.ascontiguousarray(rgba[..., 3])), cameras, paths)
