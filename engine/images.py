"""Image tensors: resampling posed views, and writing renders to disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .atomic import atomic_open

if TYPE_CHECKING:
    from .cameras import Cameras


def resize_views(
    images: Tensor, cameras: Cameras, width: int, height: int | None = None
) -> tuple[Tensor, Cameras]:
    """Posed views resampled to width x height (square when `height` is None).

    Args:
        images: (V, H, W, C) matching `cameras` (V cameras of W x H).
    Returns:
        (V, height, width, C) images (area filter when shrinking, bilinear when
        enlarging; the input itself when the size is unchanged) and the cameras scaled
        to match (`Cameras.scaled`).
    """
    height = width if height is None else height
    if (cameras.width, cameras.height) == (width, height):
        return images, cameras
    x = images.permute(0, 3, 1, 2)
    if width <= cameras.width and height <= cameras.height:
        x = F.interpolate(x, size=(height, width), mode="area")
    else:
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous(), cameras.scaled(width, height)


def straight_rgba(
    images: Tensor, alphas: Tensor, background: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> Tensor:
    """Undo compositing: views on `background` (V, H, W, 3) and their alphas (V, H, W) ->
    straight RGBA (V, H, W, 4), so a model given it composites once, on its own background.
    Where alpha is ~0 the colour is unknown and set to the background."""
    a = alphas[..., None].to(images.dtype)
    bg = images.new_tensor(background).expand_as(images)
    # Non-finite pixels stay non-finite where the colour is unknown, so the model's input
    # checks still see them.
    unknown = torch.where(torch.isfinite(images), bg, images)
    straight = torch.where(a > 1e-3, (images - bg * (1 - a)) / a.clamp_min(1e-3), unknown)
    return torch.cat([straight.clamp(0.0, 1.0), a], -1)


def to_uint8(image: Tensor) -> np.ndarray:
    """(H, W, C) float in [0, 1] -> (H, W, C) uint8, rounded."""
    return (image.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_png(image: Tensor, path: str | Path) -> None:
    """Write an (H, W, 3) or (H, W, 4) float image atomically (`engine.atomic`)."""
    array = to_uint8(image)
    with atomic_open(path) as f:
        Image.fromarray(array).save(f, format="PNG")
