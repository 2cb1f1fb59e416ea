"""Images: decoding view files and the image tensors made from them.

Decoding (`read_rgba`, `image_size`, `read_depth_png`, `composite`): RGBA to float, the
pixel limit, clear errors; every error names the file it is about, since datasets hold
thousands of images. Posed views (images with their cameras) are read with these in
`engine.views`. Tensors: resampling posed views (`resize_views`), straight RGBA, writing
renders to disk.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


WHITE = (1.0, 1.0, 1.0)


# The most pixels a view image may have: 8192² (67,108,864), e.g. 8000 x 8000 or a 48 MP
# photo. Larger images are refused with `ImageTooLargeError` before their pixels are
# decoded. The limit is below Pillow's own bomb threshold (89,478,485 px, a warning; twice
# that an error), so Pillow never warns about an image this module goes on to read.
MAX_IMAGE_PIXELS = 8192 * 8192


class ImageTooLargeError(ValueError):
    """A view image has more than `MAX_IMAGE_PIXELS` pixels; the message names the file."""


def _too_large(path: Path, size: tuple[int, int] | None, pixels: int = 0) -> ImageTooLargeError:
    if size is not None:
        shape = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels"
    else:  # refused by Pillow itself: its message has the pixel count, not the size
        shape = f"{pixels:,} pixels" if pixels else "beyond Pillow's own limit"
    return ImageTooLargeError(
        f"{path}: image is too large ({shape}; a view may have at most "
        f"{MAX_IMAGE_PIXELS:,}, i.e. 8192x8192); downscale it"
    )


@contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """The image at `path`, opened lazily (header only) and checked against the pixel limit.

    Raises:
        FileNotFoundError: no such file.
        ImageTooLargeError: more than `MAX_IMAGE_PIXELS` pixels.
        ValueError: not an image Pillow can read (naming the file).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    try:
        with warnings.catch_warnings():  # sizes Pillow warns about are refused just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        count = re.search(r"\((\d+) pixels\)", str(err))
        raise _too_large(path, None, int(count.group(1)) if count else 0) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from None
    with image:
        if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
            raise _too_large(path, image.size)
        yield image


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image from its header, without decoding it.

    Raises FileNotFoundError, ImageTooLargeError or ValueError as `read_rgba`.
    """
    with _open_image(Path(path)) as image:
        return image.size


def read_rgba(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 4) float32 RGBA in [0, 1] from an 8/16-bit PNG, JPEG or WebP (alpha 1 if absent).

    The one place view images are decoded. Images above `MAX_IMAGE_PIXELS` are refused from
    their header. With `size`, the image is decoded reduced: JPEGs at 1/2, 1/4 or 1/8 scale
    in the decoder (`Image.draft`), everything else shrunk in its own 8-bit mode by an
    integer box filter (`reducing_gap`) and then area-resampled, so a large view costs its
    8-bit pixels (twice for RGBA, which Pillow premultiplies into a copy to resample) and
    float32 only at `size`: an 8000² RGBA PNG peaks at ~0.5 GB over the interpreter, not 4 GB.

    Args:
        size: optional (width, height) to resample to (area filter; RGBA is resampled
            premultiplied, so compositing afterwards equals compositing first).
    Raises:
        FileNotFoundError: no such file.
        ImageTooLargeError: more pixels than `MAX_IMAGE_PIXELS`.
        ValueError: unreadable or corrupt image (naming the file).
    """
    path = Path(path)
    with _open_image(path) as image:
        try:
            if size is not None and image.size != tuple(size):
                target = (int(size[0]), int(size[1]))
                image.draft(None, target)  # JPEG: DCT scaling, still >= target; others: no-op
                if image.mode not in ("RGB", "RGBA", "L", "LA"):
                    image = image.convert("RGBA")  # palette / 16-bit: resample in RGBA
                image = image.resize(target, Image.BOX, reducing_gap=3.0)
            else:
                image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float32) / 65535.0
                array = np.repeat(array[..., None], 3, -1)
                return np.concatenate([array, np.ones_like(array[..., :1])], -1)
            return np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise ValueError(f"{path}: cannot read image ({err})") from None
        except MemoryError:
            # Within the pixel limit decoding needs at most ~0.5 GB; more is a corrupt length
            # field Pillow trusts (a 79-byte PNG whose IDAT claims 2 GB, found by fuzzing).
            raise ValueError(f"{path}: cannot read image (out of memory decoding it)") from None


def composite(rgba: np.ndarray, background: Sequence[float] = WHITE) -> np.ndarray:
    """(..., 3) straight-alpha RGBA composited over a constant background colour."""
    alpha = rgba[..., 3:4]
    return rgba[..., :3] * alpha + np.asarray(background, np.float32) * (1.0 - alpha)


def read_depth_png(path: str | os.PathLike, scale: float) -> np.ndarray:
    """(H, W) float32 planar depth in metres from a scenes dataset's 16-bit depth PNG
    (metres = value · `scale`, the transforms' `depth_scale`), NaN where it holds 0.

    Decoded under the same pixel limit as view images.

    Raises FileNotFoundError, ImageTooLargeError or ValueError as `read_rgba`.
    """
    with _open_image(Path(path)) as image:
        value = np.asarray(image).astype(np.float32)
    return np.where(value > 0, value * scale, np.nan).astype(np.float32)


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
