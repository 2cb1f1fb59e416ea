"""Splat file formats (DESIGN.md §6): `save` / `load` pick the format from the file suffix."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..gaussians import Gaussians
from .compressed_ply import (
    CompressedPlyFormatError,
    is_compressed_ply,
    read_compressed_ply,
    write_compressed_ply,
)
from .gltf import GltfFormatError, read_gltf, write_gltf
from .ply import PlyData, PlyFormatError, read_ply, write_ply
from .splat import SplatFormatError, read_splat, write_splat
from .spz import SpzData, SpzFormatError, read_spz, write_spz

__all__ = [
    "CompressedPlyFormatError",
    "GltfFormatError",
    "PlyData",
    "PlyFormatError",
    "SplatFormatError",
    "SpzData",
    "SpzFormatError",
    "load",
    "read_compressed_ply",
    "read_gltf",
    "read_ply",
    "read_splat",
    "read_spz",
    "save",
    "supported_suffixes",
    "write_compressed_ply",
    "write_gltf",
    "write_ply",
    "write_splat",
    "write_spz",
]


def _load_ply(path: Path, device: torch.device | str) -> Gaussians:
    # Routed by content too: a compressed PLY saved as plain `.ply` still loads.
    if is_compressed_ply(path):
        return read_compressed_ply(path, device=device)
    return read_ply(path, device=device).gaussians


def _load_spz(path: Path, device: torch.device | str) -> Gaussians:
    return read_spz(path, device=device).gaussians


# suffix (lower case) -> (writer(gaussians, path, **options), reader(path, device))
_FORMATS: dict[str, tuple[Callable[..., None], Callable[[Path, torch.device | str], Gaussians]]] = {
    ".ply": (lambda g, path, **options: write_ply(path, g, **options), _load_ply),
    # PlayCanvas compressed PLY: raw axes, chunked quantisation, Morton-sorted by default.
    ".compressed.ply": (
        lambda g, path, **options: write_compressed_ply(path, g, **options),
        read_compressed_ply,
    ),
    # SPZ v3, RUB axes (our Z-up world rotated as Blender's glTF exporter does), SH kept.
    ".spz": (lambda g, path, **options: write_spz(path, g, **options), _load_spz),
    # antimatter15 .splat: raw axes, SH degree 0 only (higher degrees are dropped).
    ".splat": (lambda g, path, **options: write_splat(path, g, **options), read_splat),
    # glTF KHR_gaussian_splatting, Y-up (same axis change as SPZ); .gltf embeds base64.
    ".glb": (lambda g, path, **options: write_gltf(path, g, **options), read_gltf),
    ".gltf": (lambda g, path, **options: write_gltf(path, g, **options), read_gltf),
}


def supported_suffixes() -> list[str]:
    return sorted(_FORMATS)


def _format_for(path: Path) -> tuple[Callable[..., None], Callable[..., Gaussians]]:
    suffix = path.suffix.lower()
    double = "".join(path.suffixes[-2:]).lower()  # ".compressed.ply" before ".ply"
    if len(path.suffixes) >= 2 and double in _FORMATS:
        return _FORMATS[double]
    if suffix not in _FORMATS:
        raise ValueError(
            f"{path}: unsupported splat file suffix {suffix or '(none)'!r}; "
            f"supported: {', '.join(supported_suffixes())}"
        )
    return _FORMATS[suffix]


def save(gaussians: Gaussians, path: str | os.PathLike[str], **options: Any) -> None:
    """Write `gaussians` to `path` in the format its suffix names; options go to the writer.

    .ply: INRIA PLY, float32, raw world axes (`write_ply`).
    .compressed.ply: PlayCanvas compressed PLY, raw world axes, sorted along a Morton
        curve unless `sort=False` (`write_compressed_ply`).
    .spz: Niantic SPZ version 3, converted to SPZ's RUB axes from our Z-up world
        ((x, y, z) -> (x, z, -y), rotating quaternions and SH too); options
        `version`, `coordinate_system`, `fractional_bits`, ... (`write_spz`).
    .splat: antimatter15 .splat, raw world axes, SH degree 0 only (`write_splat`).
    """
    path = Path(path)
    writer, _ = _format_for(path)
    writer(gaussians, path, **options)


def load(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Gaussians:
    """Read Gaussians from `path` in the format its suffix names.

    A `.ply` whose header has the compressed layout is read as a compressed PLY.
    """
    path = Path(path)
    _, reader = _format_for(path)
    return reader(path, device)
