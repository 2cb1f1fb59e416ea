"""Axes of splat files (DESIGN.md §4 "Files' axes"): the one place where the engine's world
meets each format's frame.

The engine and Blender work in a right-handed, Z-up world. Splat files carry the frame
their readers assume, so `engine.io.save` / `engine.io.load` turn the Gaussians at the
file boundary (the writers and readers themselves store and return the file's values):

    frame   formats                                    Blender (x, y, z) ->
    "ply"   .ply .compressed.ply .splat .spz .sog      (-x, -z, -y)   -Y up, +Z front
            meta.json (SOG)
    "gltf"  .glb .gltf                                 ( x,  z, -y)   +Y up, +Z front

"PLY space" is the frame of 3DGS / COLMAP training output (camera y down, so -Y is up).
splat-transform and SuperSplat turn it 180° about Z into PlayCanvas's Y-up frame,
Babylon.js flips Y, KIRI's "rotate to Blender axes" maps file -Y to Blender +Z. glTF
(`KHR_gaussian_splatting`) is Y-up with +Z the front, as Blender's glTF exporter writes.
PLY space is that glTF frame turned 180° about its Z axis (splat-transform's
`Transform.PLY`), so a `.ply` and a `.glb` of one object face the same way in one viewer.

Both matrices are proper rotations (det +1), so orientations (R' = M R) and SH
coefficients (degrees 1-3) turn with the positions and the splats render identically
from cameras turned the same way; scales and opacities do not change.

`axes="raw"` skips the turn: the file's coordinates are the world's. That is right for a
file whose frame is shared with a camera set (a 3DGS `.ply` trained from a
`transforms.json` and rendered from those cameras with `gd render`) and for files
written raw by this project before the convention existed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..gaussians import Gaussians
from ..rotations import matrix_to_quaternion, quaternion_multiply
from ..transforms import rotate_sh

__all__ = [
    "AXES",
    "FRAME_MATRICES",
    "GLTF_Y_UP",
    "PLY_SPACE",
    "check_axes",
    "file_frame",
    "file_to_world",
    "suffix_of",
    "turn",
    "world_to_file",
]

AXES = ("standard", "raw")
# 3x3 matrices taking engine (Blender) world coordinates to the file's: p_file = M p_world.
PLY_SPACE = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
GLTF_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
FRAME_MATRICES: dict[str, np.ndarray] = {"ply": PLY_SPACE, "gltf": GLTF_Y_UP}

# Suffix (lower case, as engine.io names formats) -> frame.
_FRAME_OF_SUFFIX = {
    ".ply": "ply",
    ".compressed.ply": "ply",
    ".splat": "ply",
    ".spz": "ply",
    ".sog": "ply",
    "meta.json": "ply",
    ".glb": "gltf",
    ".gltf": "gltf",
}


def check_axes(axes: str) -> str:
    """`axes` if it is one of `AXES`, else ValueError naming them."""
    if axes not in AXES:
        raise ValueError(f"axes must be one of {', '.join(AXES)}, got {axes!r}")
    return axes


def file_frame(suffix: str) -> str:
    """The frame ("ply" or "gltf") of files with `suffix` (".ply", ".glb", "meta.json", ...)."""
    try:
        return _FRAME_OF_SUFFIX[suffix.lower()]
    except KeyError:
        raise ValueError(f"no axis convention for suffix {suffix!r}") from None


def _matrix(suffix_or_frame: str, axes: str) -> np.ndarray | None:
    if check_axes(axes) == "raw":
        return None
    frame = suffix_or_frame if suffix_or_frame in FRAME_MATRICES else file_frame(suffix_or_frame)
    return FRAME_MATRICES[frame]


def turn(gaussians: Gaussians, matrix: np.ndarray, *, inverse: bool = False) -> Gaussians:
    """Gaussians turned by the proper rotation `matrix` (3, 3), or by its inverse: means
    M·μ, orientations M·R, SH degrees 1-3 re-expressed (DC, scales, opacities unchanged).

    Unlike `engine.transforms.rotate_gaussians` the quaternions are not normalised: q' =
    q_M ⊗ q keeps each one's norm, and the inverse uses the conjugate of the same q_M, so
    a turn and its inverse give back the quaternion's sign too (both matrices here are
    180° turns, whose quaternion and its inverse's would otherwise differ in sign). Same
    dtype and device as the input.
    """
    g = gaussians
    m = torch.as_tensor(matrix, dtype=torch.float64, device=g.means.device)
    q_m = matrix_to_quaternion(m)
    if inverse:
        m = m.T
        q_m = q_m * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64, device=m.device)
    means = (g.means.to(torch.float64) @ m.T).to(g.means.dtype)
    quats = quaternion_multiply(q_m.expand(len(g), 4), g.quats.to(torch.float64))
    return Gaussians(
        means=means,
        log_scales=g.log_scales.clone(),
        quats=quats.to(g.quats.dtype),
        opacity_logits=g.opacity_logits.clone(),
        sh=rotate_sh(g.sh, m) if g.sh_degree > 0 else g.sh.clone(),
    )


def world_to_file(gaussians: Gaussians, suffix: str, axes: str = "standard") -> Gaussians:
    """Gaussians in the engine's world re-expressed in the frame of `suffix`'s files.

    suffix: a format suffix (".ply", ".glb", ...) or a frame name ("ply", "gltf").
    Returns `gaussians` itself for `axes="raw"`, else `turn(gaussians, M)`.
    """
    m = _matrix(suffix, axes)
    return gaussians if m is None else turn(gaussians, m)


def file_to_world(gaussians: Gaussians, suffix: str, axes: str = "standard") -> Gaussians:
    """Inverse of `world_to_file`: Gaussians as a file of `suffix` holds them, in our world."""
    m = _matrix(suffix, axes)
    return gaussians if m is None else turn(gaussians, m, inverse=True)


def suffix_of(path: str | Path) -> str:
    """The format suffix of `path` as `engine.io` names formats (".compressed.ply", ".ply",
    "meta.json", ...), lower case; "" when it has none."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".compressed.ply"):
        return ".compressed.ply"
    if name.endswith("meta.json") and not name.endswith("lod-meta.json"):
        return "meta.json"  # SOG's unbundled form, named as splat-transform names it
    return path.suffix.lower()
