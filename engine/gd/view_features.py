"""Per-Gaussian features from the input views (DESIGN.md §2, step 3).

Each candidate's centre is projected into every input view, where we sample
bilinearly the input RGB, the coarse render's RGB, its alpha and the absolute
difference between the coarse render's depth and the candidate's own depth
(8 channels per view). Views where the centre is behind the camera or outside
the image are masked. A cross-attention whose query is the Gaussian (its
backbone feature, or its own parameters when it has none, e.g. a splat file)
and whose keys/values are the per-view samples fuses the views into one
feature; the output is that feature concatenated with the query inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gaussians import Gaussians
from .config import ViewFeatureConfig

if TYPE_CHECKING:  # only for annotations: this module must import without the camera code
    from ..cameras import Cameras

PARAM_FEATURES = 12
"""Width of `gaussian_parameter_features`: RGB 3, opacity 1, log-scales 3, quaternion 4, mean
log-scale 1."""


def gaussian_parameter_features(gaussians: Gaussians, log_scale_offset: float = 0.0) -> Tensor:
    """Features of Gaussians from their own parameters, for inputs without a backbone feature.

    Args:
        gaussians: N Gaussians.
        log_scale_offset: subtracted from the log-scales (e.g. log of the grid
            size) so the features do not depend on the scene's units.
    Returns:
        (N, 12): base RGB, opacity, log-scales, unit quaternion (sign fixed to w >= 0),
        and the mean log-scale.
    """
    g = gaussians.detach()
    q = g.rotations
    q = torch.where(q[:, :1] < 0, -q, q)
    ls = g.log_scales - log_scale_offset
    return torch.cat(
        [g.base_colors, g.opacities[:, None], ls, q, ls.mean(dim=1, keepdim=True)], dim=1
    )


@dataclass
class ViewSamples:
    """What every candidate sees in every input view.

    Attributes:
        samples: (N, V, 8) input RGB, coarse RGB, coarse alpha, and
            log1p(|coarse depth - own depth| / depth_scale).
        valid: (N, V) bool: in front of the camera and inside the image.
    """

    samples: Tensor
    valid: Tensor


def sample_views(
    points: Tensor,
    images: Tensor,
    cameras: Cameras,
    coarse_colors: Tensor,
    coarse_alphas: Tensor,
    coarse_depths: Tensor,
    depth_scale: float = 1.0,
) -> ViewSamples:
    """Bilinear samples of the input and coarse-render images at projected centres.

    Pixel (u, v) covers [u, u+1) x [v, v+1) (DESIGN.md §4), so continuous pixel
    coordinates map to `grid_sample`'s [-1, 1] with align_corners=False as x / W · 2 - 1;
    the same normalised coordinates address an image of any size over the same field of
    view, so the coarse render may be smaller than the input images (the gradient mask's
    render, `DensifyConfig.mask_size`) and is sampled at its own resolution. Its depth is
    sampled premultiplied by alpha and divided back, so points on a silhouette get the
    surface's depth rather than a blend with the background's 0.

    Args:
        points: (N, 3) world positions.
        images: (V, H, W, 3) input images.
        cameras: V cameras (of the input images' size).
        coarse_colors: (V, h, w, 3), coarse_alphas: (V, h, w), coarse_depths:
            (V, h, w) from rendering the coarse Gaussians into the same cameras, at the
            images' size or scaled to (h, w).
        depth_scale: the depth difference is divided by it (scene units) before log1p.
    """
    v, h, w = len(cameras), cameras.height, cameras.width
    if tuple(images.shape) != (v, h, w, 3):
        raise ValueError(f"images must have shape {(v, h, w, 3)}, got {tuple(images.shape)}")
    render = _render_stack(coarse_colors, coarse_alphas, coarse_depths, v)
    sampled, depth, inside = _project_and_sample(points, (images, render), cameras)
    surface = _unpremultiply(sampled[..., 7], sampled[..., 6])
    # log1p tames the large differences against background pixels (coarse depth 0).
    depth_diff = torch.log1p((surface - depth).abs() / depth_scale)
    samples = torch.cat([sampled[..., :7], depth_diff[..., None]], dim=-1)
    samples = torch.where(inside[..., None], samples, torch.zeros_like(samples))
    return ViewSamples(samples, inside)


def _render_stack(colors: Tensor | None, alphas: Tensor, depths: Tensor, views: int) -> Tensor:
    """(V, h, w, 3 + 2) [colors, alpha, alpha · depth] of a coarse render (no colours: 2)."""
    shape = tuple(alphas.shape)
    if len(shape) != 3 or shape[0] != views:
        raise ValueError(f"coarse render must be ({views}, h, w), got alphas {shape}")
    if tuple(depths.shape) != shape:
        raise ValueError(f"coarse depths must have shape {shape}, got {tuple(depths.shape)}")
    parts = [alphas[..., None], (alphas * depths)[..., None]]
    if colors is not None:
        if tuple(colors.shape) != (*shape, 3):
            got = tuple(colors.shape)
            raise ValueError(f"coarse colors must have shape {(*shape, 3)}, got {got}")
        parts.insert(0, colors)
    return torch.cat(parts, dim=-1)


def _unpremultiply(alpha_depth: Tensor, alpha: Tensor) -> Tensor:
    """Depth from bilinear samples of alpha · depth and alpha (0 where nothing is drawn)."""
    return torch.where(alpha > 1e-6, alpha_depth / alpha.clamp_min(1e-6), torch.zeros_like(alpha))


def _project_and_sample(
    points: Tensor, stacks: tuple[Tensor, ...], cameras: Cameras
) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear samples of per-view images at projected points.

    Args:
        points: (N, 3). stacks: per-view images (V, h_i, w_i, S_i), each of any size over
            the cameras' field of view. cameras: V cameras.
    Returns:
        samples (N, V, sum S_i) in stack order, camera depth (N, V), inside (N, V) bool
        (in front, in the image).
    """
    h, w = cameras.height, cameras.width
    dtype = points.dtype
    pixels, depth = cameras.project(points.detach())  # (V, N, 2), (V, N)
    pixels, depth = pixels.to(dtype), depth.to(dtype)
    grid = torch.stack([pixels[..., 0] / w, pixels[..., 1] / h], dim=-1) * 2 - 1
    # Points behind the camera have meaningless pixels: park them outside the image.
    front = depth > 1e-6
    grid = torch.where(front[..., None], grid, torch.full_like(grid, -2.0))
    sampled = [
        F.grid_sample(
            stack.to(device=points.device, dtype=dtype).permute(0, 3, 1, 2),  # (V, S, h, w)
            grid[:, :, None, :],  # (V, N, 1, 2)
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )[..., 0]  # (V, S, N)
        for stack in stacks
    ]
    inside = (
        front
        & (pixels[..., 0] >= 0) & (pixels[..., 0] < w)
        & (pixels[..., 1] >= 0) & (pixels[..., 1] < h)
    )  # fmt: skip
    return torch.cat(sampled, dim=1).permute(2, 0, 1), depth.T, inside.T


class ChildSampler:
    """What the input views show at arbitrary points (the densifier's children).

    Per point, over the V views: the weighted mean (3) and standard deviation
    (3) of the input RGB, the weighted mean coarse alpha (1) and the total
    weight / V (1). A view's weight is 1 if the point projects inside it, times
    exp(-|coarse depth - point depth| / tolerance): a soft occlusion test
    against the coarse render, so views where something else is in front count
    little.

    Args:
        images: (V, H, W, 3) input images. cameras: V cameras.
        coarse_alphas, coarse_depths: (V, h, w) coarse render, at the images' size or
            smaller (see `sample_views`).
        tolerance: depth tolerance in world units (e.g. 4 grid cells).
    """

    def __init__(
        self,
        images: Tensor,
        cameras: Cameras,
        coarse_alphas: Tensor,
        coarse_depths: Tensor,
        tolerance: float,
    ) -> None:
        self.cameras, self.tolerance = cameras, tolerance
        self.images = images
        self.render = _render_stack(None, coarse_alphas, coarse_depths, len(cameras))

    def __call__(self, points: Tensor) -> Tensor:
        """points: (M, 3) -> (M, `config.CHILD_SAMPLES`)."""
        s, depth, inside = _project_and_sample(points, (self.images, self.render), self.cameras)
        surface = _unpremultiply(s[..., 4], s[..., 3])
        wgt = inside * torch.exp(-(surface - depth).abs() / self.tolerance)  # (M, V)
        total = wgt.sum(1, keepdim=True)
        norm = wgt / total.clamp_min(1e-6)
        mean = (norm[..., None] * s[..., :3]).sum(1)
        var = (norm[..., None] * (s[..., :3] - mean[:, None]).square()).sum(1)
        alpha = (norm * s[..., 3]).sum(1, keepdim=True)
        std = (var.clamp_min(0) + 1e-8).sqrt()  # the epsilon keeps d(sqrt) finite at 0
        return torch.cat([mean, std, alpha, total / len(self.cameras)], 1)


class ViewFeatureEncoder(nn.Module):
    """Cross-attention over views: per-Gaussian query, per-view samples as keys and values.

    Output per Gaussian: [attention feature (cfg.dim), parameter features (12),
    backbone feature (backbone_dim, if any)], i.e. `out_channels` wide. A learned
    "no view" token is always attendable, so Gaussians seen by no view still get
    a defined feature.

    Args:
        cfg: view feature settings.
        backbone_dim: width of the optional backbone feature (0 for none).
    """

    def __init__(self, cfg: ViewFeatureConfig, backbone_dim: int = 0) -> None:
        super().__init__()
        self.cfg, self.backbone_dim = cfg, backbone_dim
        d = cfg.dim
        self.query = nn.Sequential(
            nn.LayerNorm(PARAM_FEATURES + backbone_dim), nn.Linear(PARAM_FEATURES + backbone_dim, d)
        )
        self.key_value = nn.Sequential(
            nn.Linear(cfg.samples_per_view, d), nn.GELU(), nn.Linear(d, 2 * d)
        )
        self.null_kv = nn.Parameter(torch.zeros(2 * d))
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    @property
    def out_channels(self) -> int:
        return self.cfg.dim + PARAM_FEATURES + self.backbone_dim

    def forward(
        self, views: ViewSamples, param_feats: Tensor, backbone_feats: Tensor | None = None
    ) -> Tensor:
        """views: (N, V, 8) samples, param_feats: (N, 12), backbone_feats: (N, B) -> (N, out)."""
        n, v, _ = views.samples.shape
        d, h = self.cfg.dim, self.cfg.heads
        if (backbone_feats is None) != (self.backbone_dim == 0):
            raise ValueError(f"this encoder expects backbone features of width {self.backbone_dim}")
        extra = [] if backbone_feats is None else [backbone_feats]
        q_in = torch.cat([param_feats, *extra], dim=1)
        q = self.query(q_in)  # (N, D)
        kv = self.key_value(views.samples)  # (N, V, 2D)
        kv = torch.cat([self.null_kv.expand(n, 1, 2 * d), kv], dim=1)  # (N, V+1, 2D)
        k, val = kv.split(d, dim=-1)
        split = lambda t: t.reshape(n, t.shape[1], h, d // h).transpose(1, 2)  # noqa: E731
        mask = torch.cat([views.valid.new_ones(n, 1), views.valid], dim=1)  # (N, V+1)
        att = F.scaled_dot_product_attention(
            split(q[:, None]), split(k), split(val), attn_mask=mask[:, None, None, :]
        )  # (N, H, 1, D/H)
        feat = q + self.proj(att.transpose(1, 2).reshape(n, d))
        feat = feat + self.mlp(self.norm(feat))
        return torch.cat([feat, param_feats, *extra], dim=1)


def candidate_features(
    encoder: ViewFeatureEncoder,
    candidates: Gaussians,
    images: Tensor,
    cameras: Cameras,
    coarse_colors: Tensor,
    coarse_alphas: Tensor,
    coarse_depths: Tensor,
    backbone_feats: Tensor | None = None,
    grid_size: float = 1.0,
) -> Tensor:
    """Per-candidate features for the densifier: sample the views, then encode.

    Args:
        candidates: N Gaussians to densify.
        images, cameras, coarse_*: see `sample_views`.
        backbone_feats: optional (N, B).
        grid_size: world-unit scale of the candidates (the level-1 grid size);
            depth differences and log-scales are expressed relative to it.
    Returns:
        (N, encoder.out_channels).
    """
    views = sample_views(
        candidates.means, images, cameras, coarse_colors, coarse_alphas, coarse_depths,
        depth_scale=grid_size,
    )  # fmt: skip
    params = gaussian_parameter_features(candidates, math.log(grid_size))
    return encoder(views, params, backbone_feats)
