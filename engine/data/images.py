"""Reading view images for the loaders: RGBA to float, compositing, clear errors.

Every error names the file it is about, since datasets hold thousands of images.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
        masks: where the alphas came from when a mask mode chose them
            (`engine.data.masks.Masks`: source, coverage, cross-view consistency), else None.
    """

    images: Tensor
    alphas: Tensor
    cameras: Cameras
    paths: list[Path]
    masks: Any = None


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
        masks: which pixels are the prop (`engine.data.masks.resolve_masks`): "none" (the
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
        engine.data.masks.MaskError: (a ValueError) the masks are missing or implausible.
    """
    paths = check_views(paths, cameras, resize)
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
        return ViewSet(images, found.alphas.contiguous(), cameras, paths, found)
    images = torch.from_numpy(composite(rgba, background))
    return ViewSet(images, torch.from_numpy(np.ascontiguousarray(rgba[..., 3])), cameras, paths)
