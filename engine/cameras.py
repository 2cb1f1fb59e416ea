"""Batched pinhole cameras: the `Cameras` container and `CameraError`.

Conventions (DESIGN.md §4):
    world_to_camera  (C, 4, 4)  OpenCV camera axes: x right, y down, z forward; world Z up
    fx, fy, cx, cy   (C,)       pixels, continuous image coordinates: pixel (u, v) covers
                                [u, u+1) x [v, v+1) and its centre is (u + 0.5, v + 0.5),
                                so a centred principal point is (W/2, H/2)
    width, height    int        shared by the whole batch

Only pinhole cameras without lens distortion are represented. Converters from and to
Blender, NeRF `transforms.json` and COLMAP live in `engine.camera_formats`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .devices import TensorBundle

__all__ = ["CameraError", "Cameras"]

# Loose enough for float32 matrices that went through a few products, tight enough to catch
# scale, shear or reflections.
ROTATION_TOL = 1e-4


class CameraError(ValueError):
    """Bad camera input; the message names the file when one is involved."""


# ---------------------------------------------------------------------------- small helpers
def as_size(value: Any, name: str) -> int:
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


def as_float64(value: Any, name: str) -> Tensor:
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


def check_rigid(matrices: Tensor, what: str) -> None:
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


def rigid_inverse(matrices: Tensor) -> Tensor:
    """Inverse of rigid transforms, exact up to rounding. (..., 4, 4) -> (..., 4, 4)."""
    rot_t = matrices[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(matrices)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ matrices[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


# ---------------------------------------------------------------------------- Cameras
@dataclass(eq=False)
class Cameras(TensorBundle):
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

    _lead = "world_to_camera"  # device and dtype (TensorBundle)

    @classmethod
    def trusted(
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
                value = as_float64(value, name)
            value = value.to(device=w2c.device, dtype=w2c.dtype)
            if value.ndim == 0 and w2c.ndim == 3:
                value = value.expand(w2c.shape[0])
            setattr(self, name, value)
        self.width = as_size(self.width, "width")
        self.height = as_size(self.height, "height")

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
        as_size(self.width, "width")
        as_size(self.height, "height")
        intrinsics = torch.stack([self.fx, self.fy, self.cx, self.cy], dim=-1).detach()
        if not (bool(torch.isfinite(w2c).all()) and bool(torch.isfinite(intrinsics).all())):
            raise CameraError("camera values must be finite (found NaN or Inf)")
        if bool((intrinsics[:, :2] <= 0).any()):
            raise CameraError("focal lengths fx, fy must be positive")
        check_rigid(w2c, "world_to_camera of camera")

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
        return Cameras.trusted(
            self.world_to_camera[idx], self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx],
            self.width, self.height,
        )  # fmt: skip

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Cameras:
        if dtype is not None and not dtype.is_floating_point:
            raise CameraError(f"cameras need a floating point dtype, got {dtype}")
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return Cameras.trusted(
            move(self.world_to_camera), move(self.fx), move(self.fy), move(self.cx), move(self.cy),
            self.width, self.height,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Cameras(n={len(self)}, width={self.width}, height={self.height}, "
            f"device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ derived values
    @property
    def camera_to_world(self) -> Tensor:
        """(C, 4, 4) OpenCV camera-to-world."""
        return rigid_inverse(self.world_to_camera)

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
        width, height = as_size(width, "width"), as_size(height, "height")
        sx, sy = width / self.width, height / self.height
        return Cameras.trusted(
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
        return Cameras.trusted(
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
            K = as_float64(K, "K")
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
        width, height = as_size(width, "width"), as_size(height, "height")
        fov = torch.as_tensor(fov_x_deg, dtype=dtype, device=eyes_t.device)
        if not bool(((fov > 0) & (fov < 180)).all()):
            raise CameraError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
        fx = (0.5 * width / torch.tan(torch.deg2rad(fov) / 2)).expand(len(rot))
        half_w = torch.full_like(fx, width / 2)
        half_h = torch.full_like(fx, height / 2)
        return cls(w2c, fx, fx.clone(), half_w, half_h, width, height)


def check_baseline(cameras: Cameras) -> None:
    """Refuse views without a baseline between them: depth comes from the parallax between
    cameras, and copies of one pose (a transforms.json with a frame duplicated) give none,
    so a model would turn a guess into Gaussians.

    Lengths are compared with the cameras' distance from the world origin: positions
    within 1e-5 of it (float32 noise is ~1e-7) count as one, so copies are refused and any
    real baseline, even 0.1% of the distance, passes.

    Raises:
        ValueError: all cameras at one position, or two with the same pose.
    """
    v = len(cameras)
    centres = cameras.centers.to(torch.float64)
    rotations = cameras.world_to_camera[:, :3, :3].to(torch.float64)
    scale = float(centres.norm(dim=1).max())
    spread = float((centres - centres.mean(dim=0)).norm(dim=1).max())
    if spread <= 1e-5 * scale:
        raise ValueError(
            f"all {v} cameras are at the same position: the views have no baseline "
            "to reconstruct depth from (copies of one camera pose?)"
        )
    apart = torch.cdist(centres, centres) > 1e-5 * scale
    turned = (rotations[:, None] - rotations[None]).abs().flatten(2).amax(dim=2) > 1e-4
    same = ~(apart | turned) & ~torch.eye(v, dtype=torch.bool, device=centres.device)
    if bool(same.any()):
        i, j = (int(k) for k in torch.nonzero(same)[0])
        raise ValueError(
            f"views {i} and {j} have the same camera pose (no baseline between them; "
            "a duplicated frame?)"
        )


def view_overlap(
    cameras: Cameras, near: float, far: float, grid: int = 16, depths: int = 8
) -> Tensor:
    """How much of each view another view also sees, between `near` and `far`.

    A grid x grid lattice of pixel centres of view i is lifted to `depths` planar depths
    spaced uniformly in inverse depth from near to far; entry (i, j) is the largest fraction,
    over those depths, of the lifted points that land in front of camera j and inside its
    image. The diagonal is 1.

    Returns:
        (V, V) float64 fractions in [0, 1].
    """
    v = len(cameras)
    cams = cameras.to(dtype=torch.float64)
    steps = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    u = steps[None, :] * cams.width
    w = steps[:, None] * cams.height
    t = torch.linspace(0.0, 1.0, depths, dtype=torch.float64)
    planes = 1.0 / ((1 - t) / near + t / far)  # (D,)
    c2w = cams.camera_to_world
    out = torch.eye(v, dtype=torch.float64)
    for i in range(v):
        x = ((u - cams.cx[i]) / cams.fx[i]).expand(grid, grid)
        y = ((w - cams.cy[i]) / cams.fy[i]).expand(grid, grid)
        rays = torch.stack([x, y, torch.ones_like(x)], -1).reshape(-1, 3)  # (G², 3)
        local = planes[:, None, None] * rays[None]  # (D, G², 3)
        world = local @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        pix, z = cams.project(world.reshape(-1, 3))  # (V, D·G², 2), (V, D·G²)
        inside = (z > 0) & (pix[..., 0] >= 0) & (pix[..., 0] <= cams.width)
        inside &= (pix[..., 1] >= 0) & (pix[..., 1] <= cams.height)
        fraction = inside.reshape(v, depths, -1).to(torch.float64).mean(-1).amax(-1)
        out[i] = torch.maximum(fraction, out[i])
    return out
