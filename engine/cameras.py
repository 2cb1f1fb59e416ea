"""Batched pinhole cameras and converters from Blender, NeRF `transforms.json` and COLMAP.

Conventions (DESIGN.md §4):
    world_to_camera  (C, 4, 4)  OpenCV camera axes: x right, y down, z forward; world Z up
    fx, fy, cx, cy   (C,)       pixels, continuous image coordinates: pixel (u, v) covers
                                [u, u+1) x [v, v+1) and its centre is (u + 0.5, v + 0.5),
                                so a centred principal point is (W/2, H/2)
    width, height    int        shared by the whole batch

Only pinhole cameras without lens distortion are represented; converters reject distorted
models with a message saying to undistort first. No bpy here: Blender cameras come in as
plain numbers (`from_blender`) so the engine runs outside Blender.
"""

from __future__ import annotations

import json
import math
import operator
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .rotations import matrix_to_quaternion, quaternion_to_matrix

__all__ = [
    "CameraError",
    "Cameras",
    "ColmapModel",
    "NerfFrames",
    "colmap_to_cameras",
    "from_blender",
    "read_colmap",
    "read_nerf_transforms",
    "to_blender",
    "write_colmap",
    "write_nerf_transforms",
]

# Loose enough for float32 matrices that went through a few products, tight enough to catch
# scale, shear or reflections.
ROTATION_TOL = 1e-4

# OpenCV camera axes (y down, z forward) versus OpenGL/Blender ones (y up, z backward).
_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)


class CameraError(ValueError):
    """Bad camera input; the message names the file when one is involved."""


# ---------------------------------------------------------------------------- small helpers
def _flip_yz(dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
    return torch.diag(torch.tensor(_FLIP_YZ, dtype=dtype, device=device))


def _as_size(value: Any, name: str) -> int:
    """A positive integer size; floats and bools are refused so a 799.9 cannot sneak in."""
    if isinstance(value, bool):
        raise CameraError(f"{name} must be an integer, got {value!r}")
    try:
        size = operator.index(value)
    except TypeError:
        raise CameraError(f"{name} must be an integer, got {value!r}") from None
    if size <= 0:
        raise CameraError(f"{name} must be positive, got {size}")
    return size


def _float64(value: Any, name: str) -> Tensor:
    """Any array-like (tensor, numpy, nested lists, mathutils.Matrix) as a CPU float64 tensor."""
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise CameraError(f"{name} is not a numeric array: {err}") from None


def _rotation_error(rotations: Tensor) -> Tensor:
    """Per-matrix max |R Rᵀ - I|. rotations: (..., 3, 3) -> (...)."""
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    gram = rotations @ rotations.transpose(-1, -2)
    return (gram - eye).abs().amax(dim=(-1, -2))


def _check_rigid(matrices: Tensor, what: str) -> None:
    """Raise unless every (…, 4, 4) matrix is a rotation + translation (no scale/shear/mirror)."""
    flat = matrices.detach().reshape(-1, 4, 4)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=flat.dtype, device=flat.device)
    bad_row = (flat[:, 3] - bottom).abs().amax(dim=-1) > ROTATION_TOL
    rot = flat[:, :3, :3]
    bad_rot = (_rotation_error(rot) > ROTATION_TOL) | (torch.linalg.det(rot) <= 0)
    for mask, problem in (
        (bad_row, "last row is not [0, 0, 0, 1]"),
        (bad_rot, "rotation is not orthonormal with determinant +1 (scale, shear or mirror?)"),
    ):
        if bool(mask.any()):
            index = int(mask.nonzero()[0, 0])
            raise CameraError(f"{what} {index}: {problem}")


def _rigid_inverse(matrices: Tensor) -> Tensor:
    """Inverse of rigid transforms, exact up to rounding. (..., 4, 4) -> (..., 4, 4)."""
    rot_t = matrices[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(matrices)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ matrices[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


@contextmanager
def _in_file(path: Path) -> Iterator[None]:
    """Prefix CameraErrors raised while parsing with the file they came from."""
    try:
        yield
    except CameraError as err:
        raise CameraError(f"{path}: {err}") from None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file so a crash never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- Cameras
@dataclass(eq=False)
class Cameras:
    """C pinhole cameras sharing one image size.

    Attributes:
        world_to_camera: (C, 4, 4) OpenCV extrinsics (x right, y down, z forward).
        fx, fy, cx, cy: (C,) pixel intrinsics, principal point in the pixel-centre-at-0.5
            convention (cx = W/2 for a centred camera).
        width, height: image size in pixels.

    Construction validates everything (see `validate`). A (4, 4) matrix is taken as a
    batch of one and 0-d / float intrinsics are broadcast to (C,); intrinsics are moved
    to the matrix's dtype and device.
    """

    world_to_camera: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        self._coerce()
        self.validate()

    @classmethod
    def _unchecked(
        cls, w2c: Tensor, fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor, width: int, height: int
    ) -> Cameras:
        """Build without validation, for results derived from already valid cameras."""
        obj = cls.__new__(cls)
        obj.world_to_camera, obj.fx, obj.fy, obj.cx, obj.cy = w2c, fx, fy, cx, cy
        obj.width, obj.height = width, height
        return obj

    def _coerce(self) -> None:
        w2c = self.world_to_camera
        if not isinstance(w2c, Tensor):
            try:
                w2c = torch.as_tensor(w2c)  # keeps a numpy array's float64
            except (TypeError, ValueError, RuntimeError) as err:
                raise CameraError(f"world_to_camera is not a numeric array: {err}") from None
        if not w2c.is_floating_point():
            w2c = w2c.to(torch.get_default_dtype())
        if w2c.ndim == 2:
            w2c = w2c[None]
        self.world_to_camera = w2c
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                value = _float64(value, name)
            value = value.to(device=w2c.device, dtype=w2c.dtype)
            if value.ndim == 0 and w2c.ndim == 3:
                value = value.expand(w2c.shape[0])
            setattr(self, name, value)
        self.width = _as_size(self.width, "width")
        self.height = _as_size(self.height, "height")

    def validate(self) -> None:
        """Raise `CameraError` on wrong shapes/dtypes/devices, non-finite values,
        non-positive focal lengths or sizes, or non-rigid world_to_camera matrices."""
        w2c = self.world_to_camera
        if not isinstance(w2c, Tensor) or w2c.ndim != 3 or tuple(w2c.shape[1:]) != (4, 4):
            shape = tuple(w2c.shape) if isinstance(w2c, Tensor) else type(w2c).__name__
            raise CameraError(f"world_to_camera must have shape (C, 4, 4), got {shape}")
        if not w2c.is_floating_point():
            raise CameraError(f"world_to_camera must be floating point, got {w2c.dtype}")
        count = w2c.shape[0]
        for f in fields(self)[1:5]:
            value = getattr(self, f.name)
            if not isinstance(value, Tensor) or tuple(value.shape) != (count,):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise CameraError(f"{f.name} must have shape ({count},), got {shape}")
            if value.dtype != w2c.dtype or value.device != w2c.device:
                raise CameraError(
                    f"{f.name} is {value.dtype} on {value.device}, "
                    f"world_to_camera is {w2c.dtype} on {w2c.device}"
                )
        _as_size(self.width, "width")
        _as_size(self.height, "height")
        intrinsics = torch.stack([self.fx, self.fy, self.cx, self.cy], dim=-1).detach()
        if not (bool(torch.isfinite(w2c).all()) and bool(torch.isfinite(intrinsics).all())):
            raise CameraError("camera values must be finite (found NaN or Inf)")
        if bool((intrinsics[:, :2] <= 0).any()):
            raise CameraError("focal lengths fx, fy must be positive")
        _check_rigid(w2c, "world_to_camera of camera")

    # ------------------------------------------------------------------ container
    def __len__(self) -> int:
        return self.world_to_camera.shape[0]

    def __iter__(self) -> Iterator[Cameras]:
        """Single-camera batches, one per camera."""
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, idx: int | slice | Sequence[int] | Tensor) -> Cameras:
        """Select cameras by int (keeps the batch dim), slice, index tensor/list or bool mask."""
        if isinstance(idx, Tensor) and idx.ndim == 0 and idx.dtype != torch.bool:
            idx = int(idx)
        if not isinstance(idx, (Tensor, slice)):
            try:
                idx = operator.index(idx)
            except TypeError:
                idx = torch.as_tensor(idx)  # a list of ints or bools
        if isinstance(idx, int):
            # A slice, not an int, so the batch dimension survives.
            if not -len(self) <= idx < len(self):
                raise IndexError(f"camera index {idx} out of range for {len(self)} cameras")
            idx = slice(idx % len(self), idx % len(self) + 1)
        elif isinstance(idx, Tensor):
            if idx.dtype == torch.bool and tuple(idx.shape) != (len(self),):
                raise CameraError(
                    f"bool mask must have shape ({len(self)},), got {tuple(idx.shape)}"
                )
            if idx.dtype != torch.bool:
                idx = idx.long()
            idx = idx.to(self.device)
        return Cameras._unchecked(
            self.world_to_camera[idx], self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx],
            self.width, self.height,
        )  # fmt: skip

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Cameras:
        if dtype is not None and not dtype.is_floating_point:
            raise CameraError(f"cameras need a floating point dtype, got {dtype}")
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return Cameras._unchecked(
            move(self.world_to_camera), move(self.fx), move(self.fy), move(self.cx), move(self.cy),
            self.width, self.height,
        )  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.world_to_camera.device

    @property
    def dtype(self) -> torch.dtype:
        return self.world_to_camera.dtype

    def __repr__(self) -> str:
        return (
            f"Cameras(n={len(self)}, width={self.width}, height={self.height}, "
            f"device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ derived values
    @property
    def camera_to_world(self) -> Tensor:
        """(C, 4, 4) OpenCV camera-to-world."""
        return _rigid_inverse(self.world_to_camera)

    @property
    def centers(self) -> Tensor:
        """(C, 3) camera positions in world coordinates."""
        rot = self.world_to_camera[:, :3, :3]
        return -(rot.transpose(-1, -2) @ self.world_to_camera[:, :3, 3:4])[..., 0]

    @property
    def intrinsics(self) -> Tensor:
        """(C, 3, 3) K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]."""
        k = self.fx.new_zeros(len(self), 3, 3)
        k[:, 0, 0], k[:, 1, 1] = self.fx, self.fy
        k[:, 0, 2], k[:, 1, 2] = self.cx, self.cy
        k[:, 2, 2] = 1.0
        return k

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points into every camera.

        Args:
            points: (N, 3) world positions.
        Returns:
            pixels (C, N, 2) continuous (u, v) and depth (C, N) camera z. Points with
            depth <= 0 are behind the camera and their pixels are meaningless: mask them.
        """
        if points.ndim != 2 or points.shape[-1] != 3:
            raise CameraError(f"points must have shape (N, 3), got {tuple(points.shape)}")
        points = points.to(self.dtype)
        rot = self.world_to_camera[:, :3, :3]
        cam = points @ rot.transpose(-1, -2) + self.world_to_camera[:, None, :3, 3]
        depth = cam[..., 2]
        u = self.fx[:, None] * cam[..., 0] / depth + self.cx[:, None]
        v = self.fy[:, None] * cam[..., 1] / depth + self.cy[:, None]
        return torch.stack([u, v], dim=-1), depth

    def scaled(self, width: int, height: int) -> Cameras:
        """The same cameras rendering `width` x `height` images (e.g. a downsampled dataset).

        With pixel edges at integers, resampling is a plain scale of the continuous image
        coordinates, so fx, cx scale by width/W and fy, cy by height/H (no half-pixel shift).
        """
        width, height = _as_size(width, "width"), _as_size(height, "height")
        sx, sy = width / self.width, height / self.height
        return Cameras._unchecked(
            self.world_to_camera, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy,
            width, height,
        )  # fmt: skip

    # ------------------------------------------------------------------ construction
    @staticmethod
    def cat(items: Sequence[Cameras]) -> Cameras:
        """Concatenate batches of the same image size (moved to the first one's device/dtype)."""
        items = list(items)
        if not items:
            raise CameraError("cannot concatenate an empty list of Cameras")
        first = items[0]
        for other in items[1:]:
            if (other.width, other.height) != (first.width, first.height):
                raise CameraError(
                    f"cannot concatenate cameras of {first.width}x{first.height} "
                    f"and {other.width}x{other.height} pixels"
                )
        items = [c.to(first.device, first.dtype) for c in items]
        return Cameras._unchecked(
            *(torch.cat([getattr(c, name) for c in items]) for name in
              ("world_to_camera", "fx", "fy", "cx", "cy")),
            first.width, first.height,
        )  # fmt: skip

    @classmethod
    def from_intrinsics_matrix(
        cls,
        world_to_camera: Tensor,
        K: Tensor,
        width: int,
        height: int,
        opencv_pixel_origin: bool = False,
    ) -> Cameras:
        """Build from OpenCV extrinsics (C, 4, 4) or (4, 4) and K (C, 3, 3) or (3, 3).

        `opencv_pixel_origin=True` for calibrations where the first pixel's centre is at 0
        (cv2.calibrateCamera); their principal point moves by +0.5 into our convention.
        """
        if not isinstance(K, Tensor):
            K = _float64(K, "K")
        if K.shape[-2:] != (3, 3) or K.ndim not in (2, 3):
            raise CameraError(f"K must have shape (3, 3) or (C, 3, 3), got {tuple(K.shape)}")
        k = K.detach().reshape(-1, 3, 3).double()
        fx = k[:, 0, 0]
        if bool(torch.isfinite(k).all()) and bool((fx > 0).all()):
            if bool((k[:, 0, 1].abs() > 1e-6 * fx).any()):
                raise CameraError("K has a non-zero skew term, which pinhole Cameras cannot hold")
            zeros = torch.stack([k[:, 1, 0], k[:, 2, 0], k[:, 2, 1], k[:, 2, 2] - 1.0], -1)
            if bool((zeros.abs() > 1e-9).any()):
                raise CameraError("K must have the form [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
        shift = 0.5 if opencv_pixel_origin else 0.0
        return cls(
            world_to_camera, K[..., 0, 0], K[..., 1, 1], K[..., 0, 2] + shift,
            K[..., 1, 2] + shift, width, height,
        )  # fmt: skip

    @classmethod
    def look_at(
        cls,
        eyes: Tensor,
        targets: Tensor,
        up: Sequence[float] | Tensor = (0.0, 0.0, 1.0),
        fov_x_deg: float | Tensor = 60.0,
        width: int = 256,
        height: int = 256,
    ) -> Cameras:
        """Cameras at `eyes` (C, 3) looking at `targets` (C, 3) (either may be (3,)), with
        `up` pointing up in the image, horizontal field of view `fov_x_deg` and square
        pixels centred on the image.

        A camera looking straight along `up` uses world +Y (+X if `up` is near Y) as its up
        instead, so the top-down views common in orbits still work.
        """
        eyes_t = torch.as_tensor(eyes)
        dtype = eyes_t.dtype if eyes_t.is_floating_point() else torch.get_default_dtype()
        eyes_t = eyes_t.to(dtype)
        targets_t = torch.as_tensor(targets, dtype=dtype, device=eyes_t.device)
        eyes_t, targets_t = torch.broadcast_tensors(eyes_t.reshape(-1, 3), targets_t.reshape(-1, 3))
        up_t = torch.as_tensor(up, dtype=dtype, device=eyes_t.device).reshape(3)
        forward = targets_t - eyes_t
        length = forward.norm(dim=-1, keepdim=True)
        if bool((length <= 1e-12).any()):
            raise CameraError("look_at: an eye coincides with its target")
        forward = forward / length
        right = torch.linalg.cross(forward, up_t.expand_as(forward))
        degenerate = right.norm(dim=-1, keepdim=True) < 1e-6 * up_t.norm()
        if bool(degenerate.any()):
            # World +Y (or +X when `up` is itself close to Y): any axis not along `up` works.
            y_axis, x_axis = torch.eye(3, dtype=dtype, device=eyes_t.device)[[1, 0]]
            near_y = float((y_axis @ up_t).abs()) >= 0.9 * float(up_t.norm())
            fallback = x_axis if near_y else y_axis
            alt = torch.linalg.cross(forward, fallback.expand_as(forward))
            right = torch.where(degenerate, alt, right)
        right = right / right.norm(dim=-1, keepdim=True)
        down = torch.linalg.cross(forward, right)
        rot = torch.stack([right, down, forward], dim=-2)  # rows are the camera axes in world
        w2c = torch.zeros(len(rot), 4, 4, dtype=dtype, device=eyes_t.device)
        w2c[:, :3, :3] = rot
        w2c[:, :3, 3] = -(rot @ eyes_t[..., None])[..., 0]
        w2c[:, 3, 3] = 1.0
        width, height = _as_size(width, "width"), _as_size(height, "height")
        fov = torch.as_tensor(fov_x_deg, dtype=dtype, device=eyes_t.device)
        if not bool(((fov > 0) & (fov < 180)).all()):
            raise CameraError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
        fx = (0.5 * width / torch.tan(torch.deg2rad(fov) / 2)).expand(len(rot))
        half_w = torch.full_like(fx, width / 2)
        half_h = torch.full_like(fx, height / 2)
        return cls(w2c, fx, fx.clone(), half_w, half_h, width, height)


# ---------------------------------------------------------------------------- Blender
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
    percentage = _as_size(resolution_percentage, "resolution_percentage")
    width = _as_size(_as_size(resolution_x, "resolution_x") * percentage // 100, "scaled width")
    height = _as_size(_as_size(resolution_y, "resolution_y") * percentage // 100, "scaled height")

    # Blender's BKE_camera_params_compute_viewplane: `ycor` stretches pixels vertically and
    # the sensor spans `view` pixels along the fitted axis; shifts are fractions of `view`.
    ycor = aspect_y / aspect_x
    horizontal = fit == "HORIZONTAL" or (fit == "AUTO" and aspect_x * width >= aspect_y * height)
    view = width if horizontal else ycor * height
    fx = lens / sensor * view
    fy = fx / ycor
    cx = width / 2 - shift_x * view
    cy = height / 2 + shift_y * view / ycor

    world = _float64(matrix_world, "matrix_world")
    if world.shape[-2:] != (4, 4) or world.ndim not in (2, 3):
        raise CameraError(f"matrix_world must be (4, 4) or (C, 4, 4), got {tuple(world.shape)}")
    world = world.reshape(-1, 4, 4).clone()
    if not bool(torch.isfinite(world).all()):
        raise CameraError("matrix_world must be finite")
    scale = world[:, :3, :3].norm(dim=-2, keepdim=True)
    if bool((scale < 1e-12).any()):
        raise CameraError("matrix_world has a zero scale axis")
    world[:, :3, :3] /= scale
    _check_rigid(world, "matrix_world (after removing scale) of camera")
    w2c = _flip_yz() @ _rigid_inverse(world)

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
    worlds = cams.camera_to_world @ _flip_yz()
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


# ---------------------------------------------------------------------------- NeRF
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr")
_NERF_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_NERF_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
# Keys this module interprets (and writes); everything else at the top level is `extra`.
_NERF_CAMERA_KEYS = frozenset(
    {"frames", "fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
     "camera_model", *_NERF_DISTORTION_KEYS}
)  # fmt: skip


@dataclass
class NerfFrames:
    """A parsed transforms.json: cameras, their images (paths usable from the current
    directory) and the top-level keys that are not camera data (e.g. aabb_scale)."""

    cameras: Cameras
    image_paths: list[Path]
    extra: dict[str, Any] = field(default_factory=dict)


def _json_number(value: Any, what: str) -> float:
    # bool is an int subclass in Python; `true` is never a valid coordinate.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CameraError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise CameraError(f"{what} must be finite, got {value!r}")
    return number


def _json_size(value: Any, what: str) -> int:
    number = _json_number(value, what)
    if number != int(number) or number <= 0:
        raise CameraError(f"{what} must be a positive integer, got {value!r}")
    return int(number)


def _nerf_matrix(value: Any, what: str) -> list[list[float]]:
    """A 4x4 (or 3x4, completed) row-major matrix of finite numbers."""
    if not isinstance(value, list) or len(value) not in (3, 4):
        raise CameraError(f"{what} must be a 4x4 list of lists")
    rows = []
    for row in value:
        if not isinstance(row, list) or len(row) != 4:
            raise CameraError(f"{what} must be a 4x4 list of lists")
        rows.append([_json_number(x, what) for x in row])
    if len(rows) == 3:
        rows.append([0.0, 0.0, 0.0, 1.0])
    return rows


def _nerf_lookup(levels: Sequence[dict], key: str, default: Any = None) -> Any:
    """`key` from the most specific level (frame before top level) that has it."""
    return next((level[key] for level in levels if key in level), default)


def _nerf_focal(
    levels: Sequence[dict], fl_key: str, angle_key: str, size: int, what: str
) -> float | None:
    """Focal length in pixels from the most specific level that has one, else None."""
    for level in levels:
        if fl_key in level:
            return _json_number(level[fl_key], f"{what} '{fl_key}'")
        if angle_key in level:
            angle = _json_number(level[angle_key], f"{what} '{angle_key}'")
            if not 0 < angle < math.pi:
                raise CameraError(f"{what} '{angle_key}' must be in (0, pi) radians, got {angle}")
            return 0.5 * size / math.tan(0.5 * angle)
    return None


def _nerf_check_pinhole(level: dict, what: str) -> None:
    model = level.get("camera_model", "OPENCV")
    if model not in _NERF_PINHOLE_MODELS:
        raise CameraError(f"{what}: camera_model {model!r} is not a pinhole model")
    for key in _NERF_DISTORTION_KEYS:
        if key in level and _json_number(level[key], f"{what} '{key}'") != 0.0:
            raise CameraError(
                f"{what}: non-zero lens distortion '{key}'; undistort the images first"
            )


def _resolve_image(folder: Path, file_path: Any, what: str) -> Path:
    if not isinstance(file_path, str) or not file_path:
        raise CameraError(f"{what} 'file_path' must be a non-empty string")
    path = folder / file_path
    if path.is_file():
        return path
    # NeRF-synthetic style paths ("./train/r_0") leave the extension out.
    for ext in IMAGE_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    raise CameraError(
        f"{what}: image {file_path!r} not found (also tried {', '.join(IMAGE_EXTENSIONS)})"
    )


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:  # lazy: reads the header, not the pixels
            return image.size
    except (OSError, ValueError) as err:
        raise CameraError(
            f"cannot read the size of {path} ({err}); add 'w' and 'h' to the json"
        ) from None


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CameraError(f"cannot read file: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CameraError(f"invalid JSON: {err}") from None


def read_nerf_transforms(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32
) -> NerfFrames:
    """Read a NeRF/instant-ngp/nerfstudio `transforms.json` (OpenGL camera-to-world).

    Intrinsics come from `fl_x`/`fl_y` or `camera_angle_x`/`camera_angle_y` (focal = 0.5 *
    size / tan(0.5 * angle)), `cx`/`cy` (default W/2, H/2, already in the pixel-centre-at-0.5
    convention), `w`/`h` (default: the first image's size); a frame's own keys override the
    top-level ones. Per-frame keys other than these are dropped.
    """
    path = Path(path)
    with _in_file(path):
        data = _load_json(path)
        if not isinstance(data, dict):
            raise CameraError("top level must be a JSON object")
        frames = data.get("frames")
        if not isinstance(frames, list):
            raise CameraError("missing 'frames' list")
        if not frames:
            raise CameraError("no frames")
        _nerf_check_pinhole(data, "top level")
        matrices, images, intrinsics, sizes = [], [], [], []
        default_size = None
        for i, frame in enumerate(frames):
            what = f"frame {i}"
            if not isinstance(frame, dict):
                raise CameraError(f"{what} must be a JSON object")
            if "transform_matrix" not in frame or "file_path" not in frame:
                raise CameraError(f"{what} is missing 'transform_matrix' or 'file_path'")
            _nerf_check_pinhole(frame, what)
            matrices.append(_nerf_matrix(frame["transform_matrix"], f"{what} 'transform_matrix'"))
            images.append(_resolve_image(path.parent, frame["file_path"], what))
            levels = (frame, data)
            size = [_nerf_lookup(levels, "w"), _nerf_lookup(levels, "h")]
            if None in size:
                if default_size is None:
                    default_size = _image_size(images[0])
                size = [s if s is not None else d for s, d in zip(size, default_size, strict=True)]
            w, h = _json_size(size[0], f"{what} 'w'"), _json_size(size[1], f"{what} 'h'")
            if sizes and (w, h) != sizes[0]:
                raise CameraError(
                    f"{what} is {w}x{h} pixels but frame 0 is {sizes[0][0]}x{sizes[0][1]}; "
                    "all frames must share one image size"
                )
            sizes.append((w, h))
            fx = _nerf_focal(levels, "fl_x", "camera_angle_x", w, what)
            if fx is None:
                raise CameraError(f"{what}: missing 'fl_x' or 'camera_angle_x'")
            fy = _nerf_focal(levels, "fl_y", "camera_angle_y", h, what)
            fy = fx if fy is None else fy
            cx = _json_number(_nerf_lookup(levels, "cx", w / 2), f"{what} 'cx'")
            cy = _json_number(_nerf_lookup(levels, "cy", h / 2), f"{what} 'cy'")
            if fx <= 0 or fy <= 0:
                raise CameraError(f"{what}: focal lengths must be positive")
            intrinsics.append((fx, fy, cx, cy))
        c2w_gl = torch.tensor(matrices, dtype=torch.float64)
        _check_rigid(c2w_gl, "transform_matrix of frame")
        w2c = _rigid_inverse(c2w_gl @ _flip_yz())
        k = torch.tensor(intrinsics, dtype=torch.float64)
        cameras = Cameras(w2c, k[:, 0], k[:, 1], k[:, 2], k[:, 3], *sizes[0]).to(dtype=dtype)
    extra = {key: value for key, value in data.items() if key not in _NERF_CAMERA_KEYS}
    return NerfFrames(cameras, images, extra)


def _relative_posix(target: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(os.path.abspath(target), os.path.abspath(start))).as_posix()
    except ValueError:  # different drives on Windows: no relative path exists
        return Path(os.path.abspath(target)).as_posix()


def write_nerf_transforms(
    path: str | os.PathLike,
    cameras: Cameras,
    image_paths: Sequence[str | os.PathLike],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `transforms.json` in the fl_x/fl_y/cx/cy/w/h form plus camera_angle_x/y.

    Shared intrinsics go to the top level, differing ones into each frame. Image paths
    (relative ones are taken from the current directory, like any path) are stored relative
    to the json's folder. `extra` keys are added at the top level and may not clash with
    camera keys. Everything is checked before anything is written.
    """
    path = Path(path)
    with _in_file(path):
        if not isinstance(cameras, Cameras):
            raise CameraError(f"expected Cameras, got {type(cameras).__name__}")
        cameras.validate()
        image_paths = list(image_paths)
        if len(image_paths) != len(cameras):
            raise CameraError(f"{len(image_paths)} image paths for {len(cameras)} cameras")
        if not image_paths:
            raise CameraError("no cameras to write")
        extra = dict(extra or {})
        clash = sorted(set(extra) & _NERF_CAMERA_KEYS)
        if clash:
            raise CameraError(f"extra keys clash with camera keys: {clash}")
        cams = cameras.to(device="cpu", dtype=torch.float64)
        width, height = cams.width, cams.height
        c2w_gl = cams.camera_to_world @ _flip_yz()
        per_camera = [
            {"fl_x": float(fx), "fl_y": float(fy), "cx": float(cx), "cy": float(cy)}
            for fx, fy, cx, cy in zip(cams.fx, cams.fy, cams.cx, cams.cy, strict=True)
        ]
        shared = all(k == per_camera[0] for k in per_camera)
        top: dict[str, Any] = {}
        if shared:
            fx, fy = per_camera[0]["fl_x"], per_camera[0]["fl_y"]
            top["camera_angle_x"] = 2.0 * math.atan(0.5 * width / fx)
            top["camera_angle_y"] = 2.0 * math.atan(0.5 * height / fy)
            top.update(per_camera[0])
        top.update({"w": width, "h": height, **extra})
        top["frames"] = [
            {
                "file_path": _relative_posix(Path(image), path.parent),
                "transform_matrix": c2w_gl[i].tolist(),
                **({} if shared else per_camera[i]),
            }
            for i, image in enumerate(image_paths)
        ]
        try:
            text = json.dumps(top, indent=2, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise CameraError(f"extra is not JSON-serialisable: {err}") from None
    _write_atomic(path, text.encode("utf-8") + b"\n")


# ---------------------------------------------------------------------------- COLMAP
# model id -> (name, number of params), as in COLMAP's src/colmap/sensor/models.h.
_COLMAP_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_COLMAP_NUM_PARAMS = {name: count for name, count in _COLMAP_MODELS.values()}
_COLMAP_MODEL_IDS = {name: model_id for model_id, (name, _) in _COLMAP_MODELS.items()}
# Pinhole models: indices of (fx, fy, cx, cy) in params, then of the distortion terms,
# which must be zero for the camera to be a plain pinhole.
_COLMAP_PINHOLE: dict[str, tuple[tuple[int, int, int, int], tuple[int, ...]]] = {
    "SIMPLE_PINHOLE": ((0, 0, 1, 2), ()),
    "PINHOLE": ((0, 1, 2, 3), ()),
    "SIMPLE_RADIAL": ((0, 0, 1, 2), (3,)),
    "RADIAL": ((0, 0, 1, 2), (3, 4)),
    "OPENCV": ((0, 1, 2, 3), (4, 5, 6, 7)),
    "FULL_OPENCV": ((0, 1, 2, 3), tuple(range(4, 12))),
}
# COLMAP prints its zeros exactly; this only forgives rounding noise in hand-made files.
_ZERO_DISTORTION_TOL = 1e-9


@dataclass
class ColmapModel:
    """A COLMAP sparse model's cameras and images (points are not kept).

    cameras: id -> {"model": str, "width": int, "height": int, "params": list[float]}
    images: id -> {"name": str, "camera_id": int, "qvec": list[float] (w, x, y, z),
            "tvec": list[float]}; qvec/tvec are world-to-camera, OpenCV axes.
    """

    cameras: dict[int, dict[str, Any]]
    images: dict[int, dict[str, Any]]


def _pinhole_params(camera_id: int, camera: dict[str, Any]) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a COLMAP camera; CameraError if it is not an undistorted pinhole."""
    what = f"camera {camera_id}"
    model = camera.get("model")
    if model not in _COLMAP_PINHOLE:
        raise CameraError(
            f"{what}: unsupported camera model {model!r}; undistort the images first "
            "(colmap image_undistorter gives PINHOLE)"
        )
    params = [float(p) for p in camera.get("params", ())]
    if len(params) != _COLMAP_NUM_PARAMS[model]:
        raise CameraError(
            f"{what}: {model} needs {_COLMAP_NUM_PARAMS[model]} params, got {len(params)}"
        )
    if not all(math.isfinite(p) for p in params):
        raise CameraError(f"{what}: params must be finite, got {params}")
    (ifx, ify, icx, icy), distortion = _COLMAP_PINHOLE[model]
    if any(abs(params[j]) > _ZERO_DISTORTION_TOL for j in distortion):
        raise CameraError(
            f"{what}: {model} with non-zero distortion {[params[j] for j in distortion]}; "
            "undistort the images first (colmap image_undistorter)"
        )
    _as_size(camera.get("width"), f"{what} width")
    _as_size(camera.get("height"), f"{what} height")
    fx, fy = params[ifx], params[ify]
    if fx <= 0 or fy <= 0:
        raise CameraError(f"{what}: focal lengths must be positive, got {fx}, {fy}")
    return fx, fy, params[icx], params[icy]


class _BinaryReader:
    """Bounds-checked little-endian reads, so truncated or garbage files fail cleanly."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if size > self.remaining():
            raise CameraError(f"truncated file: needs {size} bytes at offset {self.pos}")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def count(self, min_record_bytes: int, what: str) -> int:
        """A uint64 count, checked against the bytes left before anyone allocates for it."""
        (n,) = self.read("Q")
        if n * min_record_bytes > self.remaining():
            raise CameraError(f"{what} count {n} does not fit in the {self.remaining()} bytes left")
        return n

    def skip(self, size: int) -> None:
        if size > self.remaining():
            raise CameraError(f"truncated file: needs {size} bytes at offset {self.pos}")
        self.pos += size

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise CameraError(f"unterminated string at offset {self.pos}")
        raw, self.pos = self.data[self.pos : end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CameraError(f"image name at offset {self.pos} is not UTF-8") from None

    def finish(self) -> None:
        if self.remaining():
            raise CameraError(f"{self.remaining()} unexpected bytes at the end")


def _check_unique(table: dict, key: int, what: str) -> None:
    if key in table:
        raise CameraError(f"duplicate {what} id {key}")


def _read_cameras_bin(data: bytes) -> dict[int, dict[str, Any]]:
    reader = _BinaryReader(data)
    cameras: dict[int, dict[str, Any]] = {}
    for _ in range(reader.count(24, "camera")):
        camera_id, model_id, width, height = reader.read("IiQQ")
        if model_id not in _COLMAP_MODELS:
            raise CameraError(f"camera {camera_id}: unknown camera model id {model_id}")
        name, num_params = _COLMAP_MODELS[model_id]
        _check_unique(cameras, camera_id, "camera")
        cameras[camera_id] = {
            "model": name, "width": width, "height": height,
            "params": list(reader.read(f"{num_params}d")),
        }  # fmt: skip
    reader.finish()
    return cameras


def _read_images_bin(data: bytes) -> dict[int, dict[str, Any]]:
    reader = _BinaryReader(data)
    images: dict[int, dict[str, Any]] = {}
    # id + qvec + tvec + camera id + empty name + point count
    for _ in range(reader.count(4 + 56 + 4 + 1 + 8, "image")):
        image_id, *pose, camera_id = reader.read("I7dI")
        name = reader.cstring()
        num_points = reader.count(24, f"image {image_id} point")
        reader.skip(24 * num_points)  # x, y, point3D id: not needed for cameras
        _check_unique(images, image_id, "image")
        images[image_id] = {
            "name": name, "camera_id": camera_id, "qvec": pose[:4], "tvec": pose[4:],
        }  # fmt: skip
    reader.finish()
    return images


def _text_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for every line, comments and blanks included."""
    for number, line in enumerate(text.splitlines(), start=1):
        yield number, line.strip()


def _parse_numbers(tokens: Sequence[str], kind: type, line: int) -> list:
    try:
        values = [kind(t) for t in tokens]
    except ValueError:
        raise CameraError(f"line {line}: expected numbers, got {' '.join(tokens)!r}") from None
    if kind is float and not all(math.isfinite(v) for v in values):
        raise CameraError(f"line {line}: non-finite number in {' '.join(tokens)!r}")
    return values


def _read_cameras_txt(text: str) -> dict[int, dict[str, Any]]:
    cameras: dict[int, dict[str, Any]] = {}
    for line, content in _text_lines(text):
        if not content or content.startswith("#"):
            continue
        tokens = content.split()
        if len(tokens) < 4:
            raise CameraError(f"line {line}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        model = tokens[1]
        if model not in _COLMAP_NUM_PARAMS:
            raise CameraError(f"line {line}: unknown camera model {model!r}")
        if len(tokens) != 4 + _COLMAP_NUM_PARAMS[model]:
            raise CameraError(
                f"line {line}: {model} needs {_COLMAP_NUM_PARAMS[model]} params, "
                f"got {len(tokens) - 4}"
            )
        camera_id, width, height = _parse_numbers([tokens[0], *tokens[2:4]], int, line)
        _check_unique(cameras, camera_id, "camera")
        cameras[camera_id] = {
            "model": model, "width": width, "height": height,
            "params": _parse_numbers(tokens[4:], float, line),
        }  # fmt: skip
    return cameras


def _read_images_txt(text: str) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    lines = _text_lines(text)
    for line, content in lines:
        if not content or content.startswith("#"):
            continue
        # NAME is the rest of the line; the next line (points, maybe empty) belongs to this
        # image and is skipped whatever it holds, as COLMAP's own reader does.
        tokens = content.split(maxsplit=9)
        if len(tokens) != 10:
            raise CameraError(
                f"line {line}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"
            )
        image_id, camera_id = _parse_numbers([tokens[0], tokens[8]], int, line)
        pose = _parse_numbers(tokens[1:8], float, line)
        _check_unique(images, image_id, "image")
        images[image_id] = {
            "name": tokens[9], "camera_id": camera_id, "qvec": pose[:4], "tvec": pose[4:],
        }  # fmt: skip
        next(lines, None)
    return images


def _find_colmap_model(folder: Path) -> tuple[Path, str]:
    """The folder holding cameras/images files and their extension (binary preferred, as
    COLMAP does)."""
    for candidate in (folder, folder / "sparse" / "0", folder / "sparse"):
        for ext in (".bin", ".txt"):
            if (candidate / f"cameras{ext}").is_file() and (candidate / f"images{ext}").is_file():
                return candidate, ext
    raise CameraError(
        f"{folder}: no COLMAP model (cameras.bin + images.bin or cameras.txt + images.txt) "
        "in this folder, sparse/0 or sparse"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CameraError(f"cannot read file: {err}") from None


def read_colmap(folder: str | os.PathLike) -> ColmapModel:
    """Read a COLMAP sparse model (binary or text) from `folder`, `folder/sparse/0` or
    `folder/sparse`. points3D is not read, so a missing or damaged one does not matter.

    Every camera must be an undistorted pinhole (see `_COLMAP_PINHOLE`) and every image must
    refer to a camera in the model.
    """
    model_dir, ext = _find_colmap_model(Path(folder))
    cameras_path, images_path = model_dir / f"cameras{ext}", model_dir / f"images{ext}"
    binary = ext == ".bin"
    with _in_file(cameras_path):
        data = _read_bytes(cameras_path)
        cameras = _read_cameras_bin(data) if binary else _read_cameras_txt(_decode(data))
        for camera_id, camera in cameras.items():
            _pinhole_params(camera_id, camera)
    with _in_file(images_path):
        data = _read_bytes(images_path)
        images = _read_images_bin(data) if binary else _read_images_txt(_decode(data))
        for image_id, image in images.items():
            if image["camera_id"] not in cameras:
                raise CameraError(
                    f"image {image_id} ({image['name']}) refers to camera {image['camera_id']}, "
                    f"which is not in {cameras_path.name}"
                )
            if not all(math.isfinite(v) for v in (*image["qvec"], *image["tvec"])):
                raise CameraError(f"image {image_id}: non-finite pose")
            if math.hypot(*image["qvec"]) < 1e-8:
                raise CameraError(f"image {image_id}: zero quaternion")
    return ColmapModel(cameras, images)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CameraError(f"not a UTF-8 text file: {err}") from None


def colmap_to_cameras(
    model: ColmapModel,
    image_names: Sequence[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Cameras, list[str]]:
    """Cameras for the model's images, sorted by name, or in the order of `image_names`.

    COLMAP puts the upper-left pixel's centre at (0.5, 0.5), our convention, so principal
    points are used unchanged.
    """
    by_name: dict[str, dict[str, Any]] = {}
    for image in model.images.values():
        if image["name"] in by_name:
            raise CameraError(f"image name {image['name']!r} appears twice")
        by_name[image["name"]] = image
    names = sorted(by_name) if image_names is None else list(image_names)
    if not names:
        raise CameraError("the COLMAP model has no images")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CameraError(f"images not in the COLMAP model: {missing[:5]}")
    quats, trans, intrinsics, size = [], [], [], None
    for name in names:
        image = by_name[name]
        camera_id = image["camera_id"]
        if camera_id not in model.cameras:
            raise CameraError(f"image {name!r} refers to missing camera {camera_id}")
        camera = model.cameras[camera_id]
        intrinsics.append(_pinhole_params(camera_id, camera))
        image_size = (int(camera["width"]), int(camera["height"]))
        if size is None:
            size = (image_size, name)
        elif image_size != size[0]:
            raise CameraError(
                f"image {name!r} is {image_size[0]}x{image_size[1]} but {size[1]!r} is "
                f"{size[0][0]}x{size[0][1]}; all images must share one size"
            )
        quats.append([float(q) for q in image["qvec"]])
        trans.append([float(t) for t in image["tvec"]])
    count = len(names)
    w2c = torch.zeros(count, 4, 4, dtype=torch.float64)
    w2c[:, :3, :3] = quaternion_to_matrix(torch.tensor(quats, dtype=torch.float64))
    w2c[:, :3, 3] = torch.tensor(trans, dtype=torch.float64)
    w2c[:, 3, 3] = 1.0
    k = torch.tensor(intrinsics, dtype=torch.float64)
    cameras = Cameras(w2c, k[:, 0], k[:, 1], k[:, 2], k[:, 3], *size[0]).to(dtype=dtype)
    return cameras, names


def _check_colmap_names(names: Sequence[str], count: int) -> list[str]:
    names = list(names)
    if len(names) != count:
        raise CameraError(f"{len(names)} names for {count} cameras")
    if not names:
        raise CameraError("no cameras to write")
    for name in names:
        # COLMAP's text reader splits on spaces and its binary one stops at NUL.
        if not isinstance(name, str) or not name or any(c.isspace() or c == "\0" for c in name):
            raise CameraError(f"image name {name!r} must be a non-empty string without whitespace")
    if len(set(names)) != len(names):
        raise CameraError("image names must be unique")
    return names


def _colmap_payloads(cameras: Cameras, names: list[str], binary: bool) -> dict[str, bytes]:
    """File name -> content of a PINHOLE model, one COLMAP camera per image."""
    cams = cameras.to(device="cpu", dtype=torch.float64)
    quats = matrix_to_quaternion(cams.world_to_camera[:, :3, :3]).tolist()
    trans = cams.world_to_camera[:, :3, 3].tolist()
    intrinsics = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], dim=-1).tolist()
    width, height = cams.width, cams.height
    pinhole = _COLMAP_MODEL_IDS["PINHOLE"]
    if binary:
        cam_bytes = [struct.pack("<Q", len(names))]
        img_bytes = [struct.pack("<Q", len(names))]
        for i, name in enumerate(names):
            cam_bytes.append(struct.pack("<IiQQ4d", i + 1, pinhole, width, height, *intrinsics[i]))
            img_bytes.append(struct.pack("<I7dI", i + 1, *quats[i], *trans[i], i + 1))
            img_bytes.append(name.encode("utf-8") + b"\0" + struct.pack("<Q", 0))
        return {
            "cameras.bin": b"".join(cam_bytes),
            "images.bin": b"".join(img_bytes),
            "points3D.bin": struct.pack("<Q", 0),  # COLMAP refuses a model without one
        }
    fmt = lambda values: " ".join(repr(float(v)) for v in values)  # noqa: E731
    cam_lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(names)}",
    ]
    img_lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(names)}, mean observations per image: 0",
    ]
    for i, name in enumerate(names):
        cam_lines.append(f"{i + 1} PINHOLE {width} {height} {fmt(intrinsics[i])}")
        img_lines.append(f"{i + 1} {fmt(quats[i])} {fmt(trans[i])} {i + 1} {name}")
        img_lines.append("")  # no 2D points
    points = "# 3D point list with one line of data per point:\n# Number of points: 0\n"
    return {
        "cameras.txt": ("\n".join(cam_lines) + "\n").encode("utf-8"),
        "images.txt": ("\n".join(img_lines) + "\n").encode("utf-8"),
        "points3D.txt": points.encode("utf-8"),
    }


def write_colmap(
    folder: str | os.PathLike, cameras: Cameras, names: Sequence[str], binary: bool
) -> None:
    """Write `cameras`, `images` and an empty `points3D` (PINHOLE, one camera per image).

    Refuses (before writing anything) bad cameras or names, and a folder that already holds
    a model in the other format, since readers would pick the stale binary one.
    """
    folder = Path(folder)
    with _in_file(folder):
        if not isinstance(cameras, Cameras):
            raise CameraError(f"expected Cameras, got {type(cameras).__name__}")
        cameras.validate()
        names = _check_colmap_names(names, len(cameras))
        other = ".txt" if binary else ".bin"
        stale = [f"{s}{other}" for s in ("cameras", "images") if (folder / f"{s}{other}").exists()]
        if stale:
            raise CameraError(f"already holds {stale}; remove them or write the same format")
        payloads = _colmap_payloads(cameras, names, binary)
    for file_name, data in payloads.items():
        _write_atomic(folder / file_name, data)
