"""Photo-consistency at the Gaussian volume's resolution: the object model's finer look.

The feature volume (`object_backbone.py`) samples the views at its own 16³ voxel centres,
about 11 pixels apart at 128², and everything finer is up-sampled from there: colours come
out grey where the views disagree at that scale, and edges soft. The Gaussian volume is
twice as fine. Here every one of its voxel centres projects into every view and reads the
RGB and the encoder features under it; their mean and variance over the views (weighted by
the silhouette alpha there, so a view that sees background under the point adds nothing)
say what multi-view stereo says: low variance means a surface is there, and the mean is its
colour. A zero-initialised MLP turns them into an addition to the Gaussian volume, so a
model trained without it starts from exactly its old output.

Occlusion is not modelled: a view that sees another part of the prop in front of a point
raises that point's variance, which the network can read as "not the visible surface".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras
from .silhouette import projection_grid


def photo_statistics(
    points: Tensor, images: Tensor, feats: Tensor, alphas: Tensor, cameras: Cameras
) -> Tensor:
    """Per point, what the views agree on under its projection.

    Args:
        points: (N, 3) positions in the cameras' frame.
        images: (V, 3, H, W) RGB in [0, 1], the size of `cameras`.
        feats: (V, C, h, w) image features of the same views (any size: sampled in
            normalised image coordinates).
        alphas: (V, H, W) coverage in [0, 1] (ones: no silhouettes known).
        cameras: V cameras.
    Returns:
        (N, 2·(3 + C) + 1): the weighted mean of RGB and features, their weighted variance,
        and the fraction of views that frame the point inside their silhouettes. Each view
        weighs by the alpha under the point (zero where it does not frame it); a point no
        view sees gets zeros.
    """
    h, w = images.shape[-2:]
    grid, framed = projection_grid(points, cameras, w, h)  # (V, N, 2), (V, N)
    grid = grid.to(images.dtype)[:, :, None]  # (V, N, 1, 2)
    rgb = F.grid_sample(images, grid, align_corners=False)[..., 0]  # (V, 3, N)
    feat = F.grid_sample(feats, grid.to(feats.dtype), align_corners=False)[..., 0]
    alpha = F.grid_sample(alphas[:, None].to(images.dtype), grid, align_corners=False)[..., 0]
    weight = alpha * framed[:, None]  # (V, 1, N)
    x = torch.cat([rgb, feat.to(rgb.dtype)], 1)  # (V, 3 + C, N)
    total = weight.sum(0)  # (1, N)
    norm = total.clamp_min(1e-6)
    mean = (weight * x).sum(0) / norm
    var = (weight * (x - mean).square()).sum(0) / norm
    seen = total / len(images)
    return torch.cat([mean, var, seen], 0).T


class PhotoVolume(nn.Module):
    """`photo_statistics` at given points -> an addition to the Gaussian volume's channels,
    zero at initialisation."""

    def __init__(self, image_channels: int, out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * (3 + image_channels) + 1, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_channels),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(
        self, points: Tensor, images: Tensor, feats: Tensor, alphas: Tensor, cameras: Cameras
    ) -> Tensor:
        """(N, out_channels); arguments as `photo_statistics`."""
        stats = photo_statistics(points, images, feats, alphas, cameras)
        return self.mlp(stats.to(self.mlp[0].weight.dtype))
