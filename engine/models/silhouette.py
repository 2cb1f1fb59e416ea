"""What the input silhouettes say about space: the object model's geometric prior.

A prop framed by every input view lies inside each view's silhouette cone, so a point
that projects onto background in any view is empty (the visual hull, `engine.baselines.
visual_hull`). The object model uses that two ways:

- `hull_occupancy`: per point, the smallest (softened) alpha over the views that frame
  it, and the mean: features of the feature volume, so the network starts from the
  carved shape instead of having to learn projective geometry;
- `silhouette_gate`: the same minimum as an opacity factor on decoded Gaussians, so
  nothing renders where an input view shows background (the "fog" of a model that is
  unsure where the surface is).

Alphas come from RGBA inputs (renders with a transparent film, photos with masks). Views
without alpha have alpha 1 everywhere, which makes both a no-op: no silhouette, no prior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians


def dilate_alphas(alphas: Tensor, radius: int) -> Tensor:
    """(V, H, W) -> (V, H, W): max-filtered by a (2·radius + 1)² square.

    Gaussians have extent and masks have soft, sometimes wrong edges: a point a few pixels
    outside a silhouette may still render inside it, so the gate reads a dilated mask.
    """
    if radius <= 0:
        return alphas
    return F.max_pool2d(alphas[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]


def projection_grid(
    points: Tensor, cameras: Cameras, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Where points land in every view, in `grid_sample`'s coordinates.

    Args:
        points: (N, 3) positions in the cameras' frame. width, height: the images' size.
    Returns:
        grid (V, N, 2) in [-1, 1] inside the frame (align_corners=False), and framed (V, N)
        bool: in front of the camera and inside its image.
    """
    pix, depth = cameras.project(points)  # (V, N, 2), (V, N)
    grid = torch.stack([pix[..., 0] / width * 2 - 1, pix[..., 1] / height * 2 - 1], -1)
    return grid, (grid.abs() <= 1).all(-1) & (depth > 0)


def sample_alphas(points: Tensor, alphas: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Alpha under every point's projection in every view.

    Args:
        points: (N, 3) positions in the cameras' frame.
        alphas: (V, H, W) coverage in [0, 1] of V views of `cameras`' size.
    Returns:
        alpha (V, N), bilinear (differentiable in `points`), and framed (V, N) bool: the
        point is in front of the camera and projects inside its image.
    """
    h, w = alphas.shape[-2:]
    grid, framed = projection_grid(points, cameras, w, h)
    grid = grid.to(alphas.dtype)
    # Outside the frame reads as background (zeros padding), but `framed` lets callers
    # ignore such views: a prop is only carved by the views that frame it.
    sampled = F.grid_sample(alphas[:, None], grid[:, :, None], align_corners=False)
    return sampled[:, 0, :, 0], framed


def hull_occupancy(points: Tensor, alphas: Tensor, cameras: Cameras) -> Tensor:
    """(N, 2) [min, mean] over the framing views of the alpha under each point.

    The minimum is the soft visual hull (1 inside every silhouette, 0 where any view sees
    background); the mean says how many views agree. Points no view frames get [1, 1]:
    nothing says they are empty.
    """
    return hull_from_samples(*sample_alphas(points, alphas, cameras))


def hull_from_samples(alpha: Tensor, framed: Tensor) -> Tensor:
    """`hull_occupancy` from `sample_alphas`' (V, N) alpha and framed -> (N, 2), for callers
    that also use the samples themselves."""
    ones = torch.ones_like(alpha)
    low = torch.where(framed, alpha, ones).amin(0)
    count = framed.sum(0).clamp_min(1)
    mean = torch.where(framed, alpha, torch.zeros_like(alpha)).sum(0) / count
    mean = torch.where(framed.any(0), mean, torch.ones_like(mean))
    return torch.stack([low, mean], -1)


def silhouette_gate(means: Tensor, alphas: Tensor, cameras: Cameras, floor: float = 1e-3) -> Tensor:
    """(N,) opacity factor in [floor, 1]: the soft hull at each Gaussian centre.

    Args:
        means: (N, 3) Gaussian centres. alphas: (V, H, W), already dilated by the caller
            (`dilate_alphas`). floor: the smallest factor, so a Gaussian pushed outside
            still gets a gradient back in.
    """
    return hull_occupancy(means, alphas, cameras)[:, 0].clamp(floor, 1.0)


def gate_opacities(gaussians: Gaussians, factor: Tensor) -> Gaussians:
    """The Gaussians with their opacities multiplied by `factor` (N,) in (0, 1]."""
    p = torch.sigmoid(gaussians.opacity_logits) * factor
    eps = torch.finfo(p.dtype).eps
    return Gaussians.unchecked(
        gaussians.means, gaussians.log_scales, gaussians.quats,
        torch.logit(p.clamp(eps, 1 - eps)), gaussians.sh,
    )  # fmt: skip


def alphas_from_views(images: Tensor) -> tuple[Tensor, Tensor]:
    """Split (V, H, W, 3|4) views into RGB on white and alpha.

    RGBA is composited on white; RGB views get alpha 1 everywhere (no silhouette known:
    the silhouette prior does nothing for them).
    Returns: rgb (V, H, W, 3), alpha (V, H, W).
    """
    if images.shape[-1] == 4:
        alpha = images[..., 3]
        rgb = images[..., :3] * alpha[..., None] + (1 - alpha[..., None])
        return rgb, alpha
    return images, torch.ones_like(images[..., 0])
