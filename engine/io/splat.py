"""antimatter15 `.splat` reader and writer (DESIGN.md §6).

No header; 32 bytes a splat, little-endian:

    float32 x y z                     position (raw world coordinates: no axis change)
    float32 sx sy sz                  linear scales, exp(log_scale)
    uint8   r g b                     round(clamp(0.5 + C0 · dc, 0, 1) · 255)
    uint8   a                         round(sigmoid(opacity) · 255)
    uint8   qw qx qy qz               unit quaternion, round(clamp(q · 128 + 128, 0, 255))

Only SH degree 0 fits: the writer DROPS higher SH degrees, and colours outside [0, 1]
are clamped. The writer rounds where antimatter15's `convert.py` truncates (same decoder,
half the error) and keeps the input order (viewers sort by depth themselves).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_atomic
from ..gaussians import SH_C0, Gaussians, GaussiansError
from .limits import check_gaussian_count

__all__ = ["SplatFormatError", "read_splat", "write_splat", "SPLAT_DTYPE"]

SPLAT_DTYPE = np.dtype(
    [("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)]
)
assert SPLAT_DTYPE.itemsize == 32


class SplatFormatError(ValueError):
    """A file is not a .splat this module can read; the message names the file and the problem."""


def write_splat(path: str | os.PathLike[str], gaussians: Gaussians) -> None:
    """Write `gaussians` as an antimatter15 .splat file, atomically (SH degree >= 1 dropped)."""
    path = Path(path)
    gaussians.validate()
    g = gaussians.detach().to("cpu", torch.float64)
    records = np.zeros(len(g), dtype=SPLAT_DTYPE)
    with np.errstate(over="ignore"):
        records["position"] = g.means.numpy()
        records["scale"] = np.exp(g.log_scales.numpy())
    for name in ("position", "scale"):
        if not np.isfinite(records[name]).all():
            raise ValueError(f"{name}s overflow float32; cannot write them to .splat")
    rgb = np.clip(0.5 + SH_C0 * g.sh[:, 0, :].numpy(), 0.0, 1.0)
    records["rgba"][:, :3] = np.round(rgb * 255.0)
    records["rgba"][:, 3] = np.round(torch.sigmoid(g.opacity_logits).numpy() * 255.0)
    q = g.quats.numpy()
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    records["rotation"] = np.clip(np.round(q * 128.0 + 128.0), 0, 255)
    write_atomic(path, [records])


def read_splat(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Gaussians:
    """Read an antimatter15 .splat file as SH-degree-0 Gaussians.

    Raises `SplatFormatError` for a size that is not a multiple of 32, NaN/Inf or
    non-positive scales, NaN/Inf positions or zero quaternions; `OSError` if unreadable.
    """
    path = Path(path)
    with open(path, "rb") as f:
        # The count is the file's size / 32: checked before the data is read.
        size = os.fstat(f.fileno()).st_size
        check_gaussian_count(
            size // SPLAT_DTYPE.itemsize, lambda m: SplatFormatError(f"{path}: {m}")
        )
        raw = f.read()
    if len(raw) % SPLAT_DTYPE.itemsize:
        raise SplatFormatError(
            f"{path}: size {len(raw)} bytes is not a multiple of {SPLAT_DTYPE.itemsize} "
            "(not a .splat file, or truncated)"
        )
    records = np.frombuffer(raw, dtype=SPLAT_DTYPE)
    position = records["position"].astype(np.float64)
    scale = records["scale"].astype(np.float64)
    _check(path, "position", ~np.isfinite(position).all(axis=1), "NaN/Inf")
    _check(path, "scale", ~(np.isfinite(scale) & (scale > 0)).all(axis=1), "NaN/Inf or <= 0")
    quats = (records["rotation"].astype(np.float64) - 128.0) / 128.0
    _check(path, "rotation", ~quats.any(axis=1), "a zero quaternion")
    rgba = records["rgba"].astype(np.float64) / 255.0
    # Alpha 0 / 255 would be infinite logits: decode to a quarter step inside (0, 1).
    alpha = np.clip(rgba[:, 3], 0.25 / 255.0, 1.0 - 0.25 / 255.0)
    n = len(records)
    arrays = {
        "means": position,
        "log_scales": np.log(scale),
        "quats": quats / np.linalg.norm(quats, axis=1, keepdims=True) if n else quats,
        "opacity_logits": np.log(alpha / (1.0 - alpha)),
        "sh": ((rgba[:, :3] - 0.5) / SH_C0).reshape(n, 1, 3),
    }
    tensors = {a: torch.from_numpy(v.astype(np.float32)).to(device) for a, v in arrays.items()}
    try:
        return Gaussians(**tensors)
    except GaussiansError as e:  # e.g. a scale whose log underflows float32 is still finite
        raise SplatFormatError(f"{path}: {e}") from None


def _check(path: Path, what: str, bad: np.ndarray, problem: str) -> None:
    if bad.any():
        raise SplatFormatError(
            f"{path}: {what} of splat {int(np.argmax(bad))} is {problem} "
            f"({int(bad.sum())} bad splats in all)"
        )
