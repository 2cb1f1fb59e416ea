"""Blender perspective-camera settings <-> `Cameras`.

Pure maths, no bpy: Blender cameras come in as plain numbers (`from_blender`) so the
engine runs outside Blender.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..cameras import CameraError, Cameras, as_float64, as_size, check_rigid, rigid_inverse
from ._common import flip_yz

__all__ = ["from_blender", "to_blender"]


_SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


def _finite(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CameraError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise CameraError(f"{name} must be finite, got {value!r}")
    return number


def _positive(value: Any, name: str) -> float:
    number = _finite(value, name)
    if number <= 0:
        raise CameraError(f"{name} must be positive, got {value!r}")
    return number


def from_blender(
    matrix_world: Any,
    lens: float,
    sensor_width: float,
    sensor_height: float,
    sensor_fit: str,
    shift_x: float,
    shift_y: float,
    resolution_x: int,
    resolution_y: int,
    pixel_aspect_x: float = 1.0,
    pixel_aspect_y: float = 1.0,
    resolution_percentage: int = 100,
    *,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """Cameras from Blender perspective-camera settings (pure maths, no bpy).

    Args:
        matrix_world: (4, 4) or (C, 4, 4) object matrices as Blender shows them (rows,
            translation in the last column), e.g. `np.array(obj.matrix_world)`. Object scale
            is removed as Blender does for rendering; shear is refused.
        lens, sensor_*, shift_*: `camera.data` values (mm and fractions); shared by the batch.
        resolution_*, pixel_aspect_*: `scene.render` values.
    Returns:
        C cameras of `resolution_* * resolution_percentage // 100` pixels (Blender's rule).
    """
    fit = str(sensor_fit).upper()
    if fit not in _SENSOR_FITS:
        raise CameraError(f"sensor_fit must be one of {_SENSOR_FITS}, got {sensor_fit!r}")
    lens = _positive(lens, "lens")
    sensor = _positive(sensor_height if fit == "VERTICAL" else sensor_width, "sensor size")
    shift_x, shift_y = _finite(shift_x, "shift_x"), _finite(shift_y, "shift_y")
    aspect_x = _positive(pixel_aspect_x, "pixel_aspect_x")
    aspect_y = _positive(pixel_aspect_y, "pixel_aspect_y")
    percentage = as_size(resolution_percentage, "resolution_percentage")
    width = as_size(as_size(resolution_x, "resolution_x") * percentage // 100, "scaled width")
    height = as_size(as_size(resolution_y, "resolution_y") * percentage // 100, "scaled height")

    # Blender's BKE_camera_params_compute_viewplane: `ycor` stretches pixels vertically and
    # the sensor spans `view` pixels along the fitted axis; shifts are fractions of `view`.
    ycor = aspect_y / aspect_x
    horizontal = fit == "HORIZONTAL" or (fit == "AUTO" and aspect_x * width >= aspect_y * height)
    view = width if horizontal else ycor * height
    fx = lens / sensor * view
    fy = fx / ycor
    cx = width / 2 - shift_x * view
    cy = height / 2 + shift_y * view / ycor

    world = as_float64(matrix_world, "matrix_world")
    if world.shape[-2:] != (4, 4) or world.ndim not in (2, 3):
        raise CameraError(f"matrix_world must be (4, 4) or (C, 4, 4), got {tuple(world.shape)}")
    world = world.reshape(-1, 4, 4).clone()
    if not bool(torch.isfinite(world).all()):
        raise CameraError("matrix_world must be finite")
    scale = world[:, :3, :3].norm(dim=-2, keepdim=True)
    if bool((scale < 1e-12).any()):
        raise CameraError("matrix_world has a zero scale axis")
    world[:, :3, :3] /= scale
    check_rigid(world, "matrix_world (after removing scale) of camera")
    w2c = flip_yz() @ rigid_inverse(world)

    count = world.shape[0]
    full = lambda x: torch.full((count,), x, dtype=torch.float64)  # noqa: E731
    return Cameras(w2c, full(fx), full(fy), full(cx), full(cy), width, height).to(dtype=dtype)


def to_blender(cameras: Cameras, sensor_width: float = 36.0) -> list[dict[str, Any]]:
    """Blender settings reproducing each camera, inverse of `from_blender`.

    Uses sensor_fit "AUTO" (Blender's default) and pixel aspects >= 1 as Blender requires.
    Each dict has the keyword arguments of `from_blender` (matrix_world as nested lists),
    so `from_blender(**d)` gives the camera back.
    """
    cameras.validate()
    sensor_width = _positive(sensor_width, "sensor_width")
    cams = cameras.to(device="cpu", dtype=torch.float64)
    worlds = cams.camera_to_world @ flip_yz()
    width, height = cams.width, cams.height
    out = []
    for i in range(len(cams)):
        fx, fy = float(cams.fx[i]), float(cams.fy[i])
        ratio = fy / fx  # = pixel_aspect_x / pixel_aspect_y
        aspect_x, aspect_y = (ratio, 1.0) if ratio >= 1.0 else (1.0, 1.0 / ratio)
        ycor = aspect_y / aspect_x
        view = width if aspect_x * width >= aspect_y * height else ycor * height
        out.append(
            {
                "matrix_world": worlds[i].tolist(),
                "lens": fx * sensor_width / view,
                "sensor_width": sensor_width,
                "sensor_height": sensor_width * 24.0 / 36.0,  # unused with AUTO fit
                "sensor_fit": "AUTO",
                "shift_x": (width / 2 - float(cams.cx[i])) / view,
                "shift_y": (float(cams.cy[i]) - height / 2) * ycor / view,
                "resolution_x": width,
                "resolution_y": height,
                "pixel_aspect_x": aspect_x,
                "pixel_aspect_y": aspect_y,
                "resolution_percentage": 100,
            }
        )
    return out
