"""Splat files <-> Gaussian point-cloud objects (functions; the operators wrap them).

    obj = import_splat("scene.spz", context)          # any suffix engine.io.load reads
    export_object(obj, "out.glb")                     # any suffix engine.io.save writes

Axes: files are read and written in each format's standard frame (`engine.io.axes`):
PLY space (-Y up) for .ply, .compressed.ply, .splat, .spz, .sog, Y-up for glTF, so
files from 3DGS training, SuperSplat or splat-transform import upright and exports open
upright in viewers. `axes="raw"` keeps the file's coordinates as Blender's (files that
share their frame with a camera set, and this add-on's exports from before the
convention).

Import reads the whole file first (every format error surfaces before Blender is
touched), then builds one object; if anything fails nothing is left in bpy.data.
A plain `.ply` written by `export_object(..., levels=True)` carries the `gd_level` and
`gd_parent` attributes as extra int properties, and import restores them from any PLY
that has them (other readers ignore unknown properties).

Export bakes the object's world transform into the Gaussians
(`pointcloud.object_to_gaussians(obj, apply_transform=True)`), so the file shows what
the viewport shows, then calls `engine.io.save`, whose writers all check everything
first and write to a temp file beside the target that is renamed over it only when
complete (`engine.atomic`): a failed export leaves no file and keeps
an existing one unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bpy

from . import display, pointcloud

__all__ = ["export_object", "import_splat", "supported_suffixes", "LEVEL_PROPERTIES"]

# Extra PLY vertex properties holding the densification bookkeeping.
LEVEL_PROPERTIES = ("gd_level", "gd_parent")


def supported_suffixes() -> list[str]:
    """File suffixes the engine reads and writes, e.g. ['.compressed.ply', '.glb', ...]."""
    from engine.io import supported_suffixes as suffixes

    return suffixes()


def _absolute(path: str | os.PathLike[str]) -> Path:
    """Blender's '//' paths (relative to the .blend file, as file browsers give) resolved."""
    return Path(bpy.path.abspath(os.fspath(path)))


def _default_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(supported_suffixes(), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return path.stem


def _check_suffix(path: Path) -> None:
    """ValueError naming the supported suffixes (engine.io's own check, before any I/O)."""
    suffixes = supported_suffixes()
    if not any(path.name.lower().endswith(s) for s in suffixes):
        found = "".join(path.suffixes[-1:]) or "(none)"
        raise ValueError(
            f"{path}: unsupported splat file suffix {found!r}; supported: {', '.join(suffixes)}"
        )


def _read(path: Path, axes: str) -> tuple[Any, Any, Any]:
    """(Gaussians in Blender's world, level or None, parent or None) from `path`."""
    import numpy as np
    import torch

    from engine.io import load, read_ply
    from engine.io.axes import check_axes, file_to_world
    from engine.io.compressed_ply import is_compressed_ply

    check_axes(axes)

    suffixes = "".join(path.suffixes[-2:]).lower()
    plain_ply = path.suffix.lower() == ".ply" and suffixes != ".compressed.ply"
    if plain_ply and not is_compressed_ply(path):
        data = read_ply(path)
        g, n = file_to_world(data.gaussians, ".ply", axes), len(data.gaussians)
        level = parent = None
        extra = data.extra
        if all(k in extra for k in LEVEL_PROPERTIES):
            lv, pa = (np.asarray(extra[k]) for k in LEVEL_PROPERTIES)
            # Only trust well-formed bookkeeping; anything else is ignored, not fatal.
            if (
                lv.dtype.kind in "iu"
                and pa.dtype.kind in "iu"
                and (n == 0 or (lv.min() >= 0 and pa.min() >= 0 and pa.max() < 2**31))
            ):
                level = torch.from_numpy(lv.astype(np.int64))
                parent = torch.from_numpy(pa.astype(np.int64))
        return g, level, parent
    return load(path, axes=axes), None, None


def import_splat(
    path: str | os.PathLike[str],
    context_or_collection: Any,
    name: str | None = None,
    display_mode: str | None = "AUTO",
    axes: str = "standard",
) -> bpy.types.Object:
    """Read a splat file into one new Gaussian point-cloud object.

    Args:
        path: a file with a suffix `engine.io` reads (.ply, .compressed.ply, .spz,
            .splat, .sog or a SOG meta.json, .glb, .gltf).
        context_or_collection: where to link the object (see
            `pointcloud.gaussians_to_object`).
        name: object name (default: the file name without its splat suffix).
        display_mode: "AUTO" | "ELLIPSOIDS" | "POINTS" for `display.ensure_display`, or
            None for bare points.
        axes: "standard" (the format's frame, turned to Blender's Z up) or "raw".
    Raises:
        FileNotFoundError: no such file. ValueError: unsupported suffix or a malformed
        file (the engine's format errors are ValueErrors naming the file and problem).
        OSError: the file cannot be read. Nothing is created in bpy.data on failure.
    """
    path = _absolute(path)
    _check_suffix(path)
    if not path.is_file():
        if path.exists():
            raise ValueError(f"{path}: not a regular file")
        raise FileNotFoundError(f"{path}: no such splat file")
    if display_mode is not None and str(display_mode).upper() not in display.MODES:
        raise ValueError(f"display_mode must be one of {display.MODES} or None")
    gaussians, level, parent = _read(path, axes)
    obj = pointcloud.gaussians_to_object(
        context_or_collection, gaussians, name or _default_name(path), level=level, parent=parent
    )
    try:
        if display_mode is not None:
            display.ensure_display(obj, display_mode)
    except BaseException:
        data = obj.data
        bpy.data.objects.remove(obj)
        pointcloud.remove_data(data)  # PointCloud, or the 4.2-4.4 fallback Mesh
        raise
    return obj


def export_object(obj: bpy.types.Object, path: str | os.PathLike[str], **options: Any) -> None:
    """Write `obj`'s Gaussians (world transform baked in) to `path`, by suffix.

    options: passed to `engine.io.save`: `axes` ("standard" or "raw"), the writer's own
    (e.g. `version` for SPZ, `sort` for compressed PLY), plus `levels=True` (plain .ply
    only) to store `gd_level`/`gd_parent` as extra int32 vertex properties.
    Raises ValueError (not a Gaussian object, unsupported suffix, bad option values),
    TypeError (an option the writer does not take), OSError (cannot write). Writing is
    atomic: on any failure no file appears and an existing file is left as it was.
    """
    from engine.io import save

    path = _absolute(path)
    _check_suffix(path)
    levels = bool(options.pop("levels", False))
    suffixes = "".join(path.suffixes[-2:]).lower()
    plain_ply = path.suffix.lower() == ".ply" and suffixes != ".compressed.ply"
    if levels and not plain_ply:
        raise ValueError("levels=True needs a plain .ply file (other formats have no room)")
    if not pointcloud.is_gaussian_object(obj):
        raise ValueError(f"{getattr(obj, 'name', obj)!r} is not a Gaussian splat object")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder to export into")
    gaussians, level, parent = pointcloud.object_to_gaussians(obj, apply_transform=True)
    if levels:
        options["extra"] = {
            "gd_level": level.numpy().astype("int32"),
            "gd_parent": parent.numpy().astype("int32"),
        }
    save(gaussians, path, **options)
