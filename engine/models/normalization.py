"""Any rig, any place: map a prop's world frame into the object model's cube and back.

The object model sees props normalised so that their bounding sphere is about
`CANONICAL_RADIUS` around the origin (DESIGN.md §4). A user's cameras can be anywhere, at
any distance and field of view, so `reconstruct()` either takes the prop's bounding box or
estimates one from the cameras alone:

- centre: the point nearest (least squares) to every camera's optical axis, which is the
  point the views look at;
- radius: how much the views frame there. A camera at distance d with half field of view
  h sees a sphere of radius d·sin(atan(f·tan h)) when the sphere spans a fraction f of the
  frame; props are framed at f ≈ `ASSUMED_FILL` (the training rig draws f in [0.5, 0.9]).

Training uses the same estimator, so the model learns the scale jitter it will meet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import CameraError, Cameras
from ..gaussians import Gaussians

CANONICAL_RADIUS = 0.5
"""Bounding-sphere radius the estimated prop is scaled to in model space."""

ASSUMED_FILL = 0.7
"""Fraction of the narrower frame side a prop's bounding sphere is assumed to span."""


@dataclass(frozen=True)
class Normalization:
    """World = scale · model + center.

    Attributes:
        center: (3,) world position of the model-space origin.
        scale: world units per model unit.
    """

    center: Tensor
    scale: float

    def cameras_to_model(self, cameras: Cameras) -> Cameras:
        """The same cameras in model space: W2C' = [R | (R·c + t) / s].

        Scaling camera-space coordinates by 1/s leaves every projection unchanged.
        """
        w2c = cameras.world_to_camera.clone()
        rot, t = w2c[:, :3, :3], w2c[:, :3, 3]
        c = self.center.to(w2c)
        w2c[:, :3, 3] = (rot @ c + t) / self.scale
        return Cameras.trusted(
            w2c, cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width, cameras.height
        )

    def gaussians_to_world(self, gaussians: Gaussians) -> Gaussians:
        """Model-space Gaussians (N) placed in the world: means scaled and shifted, scales
        multiplied by s; rotations, opacities and colours unchanged."""
        c = self.center.to(gaussians.means)
        return Gaussians.unchecked(
            gaussians.means * self.scale + c,
            gaussians.log_scales + math.log(self.scale),
            gaussians.quats,
            gaussians.opacity_logits,
            gaussians.sh,
        )

    def gaussians_to_model(self, gaussians: Gaussians) -> Gaussians:
        """Inverse of `gaussians_to_world`."""
        c = self.center.to(gaussians.means)
        return Gaussians.unchecked(
            (gaussians.means - c) / self.scale,
            gaussians.log_scales - math.log(self.scale),
            gaussians.quats,
            gaussians.opacity_logits,
            gaussians.sh,
        )


def look_at_point(cameras: Cameras) -> Tensor:
    """(3,) the point nearest, in least squares, to every camera's optical axis.

    Solves sum_i (I - d_i d_iᵀ)(p - o_i) = 0. With one camera, or axes that are all
    parallel, the system is singular and the point is taken on the mean axis at the mean
    distance of the cameras from their centroid (or one unit when they coincide).
    """
    c2w = cameras.camera_to_world.to(torch.float64)
    origins, dirs = c2w[:, :3, 3], c2w[:, :3, 2]  # OpenCV: +z looks forward
    eye = torch.eye(3, dtype=torch.float64)
    proj = eye - dirs[:, :, None] * dirs[:, None, :]  # (C, 3, 3)
    a, b = proj.sum(0), (proj @ origins[..., None]).sum(0)[:, 0]
    if len(cameras) > 1 and torch.linalg.matrix_rank(a, rtol=1e-3) == 3:
        return torch.linalg.solve(a, b).to(torch.float32)
    centroid = origins.mean(0)
    spread = (origins - centroid).norm(dim=-1).mean()
    dist = float(spread) if float(spread) > 1e-6 else 1.0
    mean_dir = dirs.mean(0)
    mean_dir = mean_dir / mean_dir.norm().clamp_min(1e-9)
    return (centroid + dist * mean_dir).to(torch.float32)


def framed_radius(cameras: Cameras, center: Tensor, fill: float = ASSUMED_FILL) -> Tensor:
    """(C,) radius of the sphere at `center` that each camera frames at `fill`."""
    depth = cameras.project(center[None].to(cameras.dtype))[1][:, 0]  # (C,)
    half_w = torch.atan(cameras.width / (2 * cameras.fx))
    half_h = torch.atan(cameras.height / (2 * cameras.fy))
    half = torch.minimum(half_w, half_h)
    return depth * torch.sin(torch.atan(fill * torch.tan(half)))


def estimate_normalization(cameras: Cameras, fill: float = ASSUMED_FILL) -> Normalization:
    """Centre and scale of the prop the cameras look at (see the module docstring).

    Raises:
        CameraError: a camera has the estimated centre behind it or nearly on its image
            plane (the views do not look at one object).
    """
    center = look_at_point(cameras)
    radius = framed_radius(cameras, center, fill)
    if not bool(torch.isfinite(radius).all()) or float(radius.min()) <= 0:
        bad = int(torch.nonzero(~(radius > 0)).flatten()[0]) if (radius <= 0).any() else 0
        raise CameraError(
            f"camera {bad} does not look at the object the other views frame "
            "(the estimated prop centre is behind it); pass a bounding box or fix the cameras"
        )
    # Views in a sound rig agree on the radius; one that frames something 4x larger or
    # smaller than the median is looking elsewhere.
    median = radius.median()
    off = (radius / median > 4.0) | (radius / median < 0.25)
    if bool(off.any()):
        bad = int(torch.nonzero(off).flatten()[0])
        raise CameraError(
            f"camera {bad} frames a region {float(radius[bad] / median):.1f}x the size the "
            "other views frame; the views do not look at one object"
        )
    return Normalization(center, float(median) / CANONICAL_RADIUS)


def normalization_from_bbox(bbox: Tensor) -> Normalization:
    """From a (2, 3) world bounding box (min corner, max corner) of the prop."""
    bbox = torch.as_tensor(bbox, dtype=torch.float32)
    if tuple(bbox.shape) != (2, 3) or not bool(torch.isfinite(bbox).all()):
        raise ValueError(f"bbox must be a finite (2, 3) [min, max] array, got {tuple(bbox.shape)}")
    size = bbox[1] - bbox[0]
    if bool((size <= 0).any()):
        raise ValueError("bbox max corner must exceed its min corner on every axis")
    radius = float(size.norm()) / 2
    return Normalization((bbox[0] + bbox[1]) / 2, radius / CANONICAL_RADIUS)


def check_cameras_see(cameras: Cameras, norm: Normalization) -> None:
    """Every camera must have the prop's centre in front of it and inside its frame.

    Raises:
        CameraError: naming the first camera that does not look at the prop.
    """
    pix, depth = cameras.project(norm.center[None].to(cameras.dtype))
    pix, depth = pix[:, 0], depth[:, 0]
    inside = (
        (depth > 0)
        & (pix[:, 0] >= 0)
        & (pix[:, 0] <= cameras.width)
        & (pix[:, 1] >= 0)
        & (pix[:, 1] <= cameras.height)
    )
    if not bool(inside.all()):
        bad = int(torch.nonzero(~inside).flatten()[0])
        raise CameraError(f"camera {bad} does not look at the object (its centre is out of view)")
