"""Offline assets the generator draws from: the bpy wheel's HDRIs and fonts, and
scikit-image's bundled photos. Located without importing bpy (finding a module's file
does not run it), so spec sampling and label drawing work in any process."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

# scikit-image photos that ship inside its wheel (others download on first use, which this
# offline machine cannot do). Grey ones are tinted when used.
PHOTOS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "chelsea", "coffee", "coins", "colorwheel",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon",
    "page", "retina", "rocket", "text", "clock", "cell", "checkerboard",
)  # fmt: skip

# Latin fonts in the bpy wheel (Blender 5.0 ships woff2, which PIL's FreeType reads).
FONTS: tuple[str, ...] = ("Inter.woff2", "DejaVuSansMono.woff2", "Noto Sans CJK Regular.woff2")


def bpy_wheel_path(pattern: str) -> Path:
    """The last (newest version's) match of the glob `pattern` inside the installed bpy
    wheel's package folder, found without importing bpy. FileNotFoundError names what is
    missing: the wheel, or a match under it."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bpy wheel is not installed (pip install bpy==5.0.1)")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} under {root}")
    return found[-1]


@functools.lru_cache(maxsize=1)
def blender_datafiles() -> Path:
    """`.../bpy/<version>/datafiles` of the installed bpy wheel, found without importing it."""
    return bpy_wheel_path("*/datafiles")


def hdri_names() -> list[str]:
    """Names (file stems) of the studio-light world HDRIs in the bpy wheel, sorted."""
    folder = blender_datafiles() / "studiolights" / "world"
    return sorted(p.stem for p in folder.glob("*.exr"))


def hdri_path(name: str) -> Path:
    return blender_datafiles() / "studiolights" / "world" / f"{name}.exr"


def font_path(name: str) -> Path:
    path = blender_datafiles() / "fonts" / name
    if not path.is_file():
        raise FileNotFoundError(f"font {path} not found")
    return path


@functools.lru_cache(maxsize=32)
def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo from scikit-image's bundled data (grey ones replicated)."""
    import skimage.data  # optional `data` extra; only the generator needs it

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {PHOTOS}")
    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))
