"""Splat file formats (DESIGN.md §6): `save` / `load` pick the format from the file suffix."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..gaussians import Gaussians
from .axes import AXES, check_axes, file_to_world, suffix_of, world_to_file
from .compressed_ply import (
    CompressedPlyFormatError,
    is_compressed_ply,
    read_compressed_ply,
    write_compressed_ply,
)
from .gltf import GltfFormatError, read_gltf, write_gltf
from .ply import PlyData, PlyFormatError, read_ply, write_ply
from .sog import SogData, SogFormatError, read_sog, write_sog
from .splat import SplatFormatError, read_splat, write_splat
from .spz import SpzData, SpzFormatError, read_spz, write_spz

__all__ = [
    "AXES",
    "CompressedPlyFormatError",
    "GltfFormatError",
    "PlyData",
    "PlyFormatError",
    "SogData",
    "SogFormatError",
    "SplatFormatError",
    "SpzData",
    "SpzFormatError",
    "format_for",
    "load",
    "read_compressed_ply",
    "read_gltf",
    "read_ply",
    "read_sog",
    "read_splat",
    "read_spz",
    "save",
    "supported_suffixes",
    "write_compressed_ply",
    "write_gltf",
    "write_ply",
    "write_sog",
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


def _save_spz(g: Gaussians, path: Path, **options: Any) -> None:
    write_spz(path, g, **options)


def _load_sog(path: Path, device: torch.device | str) -> Gaussians:
    return read_sog(path, device=device).gaussians


# suffix (lower case) -> (writer(gaussians, path, **options), reader(path, device)). The
# writers and readers store and return the file's own values; the axis change between our
# Z-up world and each format's frame happens once, in `save` / `load` (engine/io/axes.py).
_FORMATS: dict[str, tuple[Callable[..., None], Callable[[Path, torch.device | str], Gaussians]]] = {
    ".ply": (lambda g, path, **options: write_ply(path, g, **options), _load_ply),
    # PlayCanvas compressed PLY: chunked quantisation, Morton-sorted by default.
    ".compressed.ply": (
        lambda g, path, **options: write_compressed_ply(path, g, **options),
        read_compressed_ply,
    ),
    ".spz": (_save_spz, _load_spz),
    # antimatter15 .splat: SH degree 0 only (higher degrees are dropped).
    ".splat": (lambda g, path, **options: write_splat(path, g, **options), read_splat),
    # PlayCanvas SOG: a .sog ZIP bundle, or meta.json with WebP images beside it.
    ".sog": (lambda g, path, **options: write_sog(path, g, **options), _load_sog),
    "meta.json": (lambda g, path, **options: write_sog(path, g, **options), _load_sog),
    # glTF KHR_gaussian_splatting; .gltf with a sidecar .bin (embed=True: base64 inside).
    ".glb": (lambda g, path, **options: write_gltf(path, g, **options), read_gltf),
    ".gltf": (lambda g, path, **options: write_gltf(path, g, **options), read_gltf),
}


def supported_suffixes() -> list[str]:
    return sorted(_FORMATS)


def format_for(path: Path) -> tuple[Callable[..., None], Callable[..., Gaussians]]:
    """(writer, reader) of the format `path`'s suffix names; the CLIs call it to refuse an
    unknown suffix before any work. Raises ValueError naming the supported suffixes."""
    suffix = suffix_of(path)
    if suffix not in _FORMATS:
        raise ValueError(
            f"{path}: unsupported splat file suffix {suffix or '(none)'!r}; "
            f"supported: {', '.join(supported_suffixes())}"
        )
    return _FORMATS[suffix]


def save(
    gaussians: Gaussians,
    path: str | os.PathLike[str],
    *,
    axes: str = "standard",
    **options: Any,
) -> None:
    """Write `gaussians` (our Z-up world) to `path` in the format its suffix names.

    axes: "standard" (default) writes each format in the frame its readers assume
        (engine/io/axes.py): PLY space, Blender (x, y, z) -> (-x, -z, -y), for .ply,
        .compressed.ply, .splat, .spz and SOG; Y-up (x, z, -y) for .glb / .gltf.
        Orientations and SH turn with the positions. "raw" writes world coordinates as
        they are (for files that share their frame with a camera set).
    options: go to the writer:
        .ply: INRIA PLY, float32 (`write_ply`: `extra` vertex properties).
        .compressed.ply: PlayCanvas compressed PLY, Morton-sorted unless `sort=False`.
        .spz: Niantic SPZ, version 4 (zstd) unless `version=3` (`write_spz`:
            `version`, `fractional_bits`, ...).
        .splat: antimatter15 .splat, SH degree 0 only.
        .sog / *meta.json: PlayCanvas SOG, bundled / loose WebP images (`write_sog`:
            `sort`, `iterations`).
        .glb / .gltf: glTF `KHR_gaussian_splatting`; .gltf writes `<name>.bin` beside
            it unless `embed=True` (`write_gltf`).
    Every writer checks everything first and writes atomically.
    """
    path = Path(path)
    writer, _ = format_for(path)
    writer(world_to_file(gaussians, suffix_of(path), axes), path, **options)


def load(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", *, axes: str = "standard"
) -> Gaussians:
    """Read Gaussians from `path` in the format its suffix names, into our Z-up world.

    axes: "standard" (default) undoes the format's frame (see `save`), so standard files
        (3DGS training output, splat-transform's, SuperSplat's) come out upright, Z up;
        "raw" returns the file's coordinates unchanged.
    A `.ply` whose header has the compressed layout is read as a compressed PLY.
    """
    path = Path(path)
    check_axes(axes)
    _, reader = format_for(path)
    return file_to_world(reader(path, device), suffix_of(path), axes)
