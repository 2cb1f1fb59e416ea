"""Candidate selection by view-space positional gradient (DESIGN.md §2, step 2).

Render the coarse Gaussians into the *input* views, take the MSE against the
input images (no ground truth needed), back-propagate to every Gaussian's
projected 2D mean and average the gradient norm over the views where the
Gaussian is visible:

    m_i = 1/|V_i| · Σ_{v ∈ V_i} || ∂ MSE(I_v, Î_v) / ∂ p(x_i, v) ||₂

Gaussians with the largest m_i are where the coarse model cannot explain the
inputs; the top K become densification candidates. The AbsGS variant sums the
absolute values of the per-pixel gradient contributions before the norm, so
opposite pulls from different pixels do not cancel (the official object model
uses it).

Everything runs on detached copies: no gradient reaches the model that made the
Gaussians, and nothing is accumulated into anyone's `.grad`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..gaussians import Gaussians
from ..images import resize_views
from .config import DensifyConfig

if TYPE_CHECKING:  # annotations only; the renderer is imported where it is used
    from ..cameras import Cameras

VARIANTS = ("abs", "plain")

NUMBA_TILE = 8
"""Tile edge (pixels) for renders of the coarse set on the numba rasteriser.

Every pixel of a tile visits every Gaussian binned to that tile. At the object model's
128² the coarse Gaussians are a few pixels wide and often faint, so no pixel stops early.
8-px tiles visit far fewer pixel–Gaussian pairs than the renderer's default of 16. The
pixels come out the same: the extents are exact (outside them alpha < 1/255, which the
rasteriser skips), so each pixel blends the same Gaussians in the same depth order. Only
the summation order of the per-pixel gradient contributions changes. Measured with one
thread, CPU time for forward and backward over 4 views: a coarse set of 5.4k at 128²
went 0.31 -> 0.18 s; 10k random Gaussians at 128² went 0.49 -> 0.34 s; 100k at 256² went
2.69 -> 2.47 s. See bench/results/reconstruct.md."""


def coarse_tile_size(backend: str, device: torch.device | str) -> int:
    """Tile size for rendering a coarse set: `NUMBA_TILE` on numba, else the default."""
    from ..render import resolve_backend

    return NUMBA_TILE if resolve_backend(backend, torch.device(device)) == "numba" else 16


@dataclass
class GradientScores:
    """Per-Gaussian view-space gradient statistics.

    Attributes:
        plain: (N,) mean over visible views of ||dL/dp||.
        absolute: (N,) the same with the AbsGS absolute gradient, or None when
            the backend cannot compute it.
        visible_views: (N,) int64 number of views the Gaussian is visible in.
        loss: the summed per-view MSE of the coarse render (a float), at the
            resolution the scores were computed at.
        colors, alphas, depths: the coarse render itself, detached ((C, h, w, 3),
            (C, h, w), (C, h, w)) at the size the scores were computed at (the views'
            own, or smaller with `mask_size`), reused for the candidates' view features,
            which sample it at that size (`view_features.sample_views`).
    """

    plain: Tensor
    absolute: Tensor | None
    visible_views: Tensor
    loss: float
    colors: Tensor
    alphas: Tensor
    depths: Tensor

    def get(self, variant: str) -> Tensor:
        if variant == "plain":
            return self.plain
        if variant == "abs":
            if self.absolute is None:
                raise ValueError("absolute gradients were not computed (absgrad=False or backend)")
            return self.absolute
        raise ValueError(f"unknown gradient variant {variant!r}; expected one of {VARIANTS}")


def _mean_over_visible(grad: Tensor, visible: Tensor) -> Tensor:
    """grad: (C, N, 2), visible: (C, N) -> (N,) mean of the per-view norms over visible views."""
    norms = grad.norm(dim=-1) * visible
    return norms.sum(0) / visible.sum(0).clamp_min(1)


def mask_cameras(cameras: Cameras, mask_size: int) -> Cameras:
    """The cameras scaled so their longer side is `mask_size` pixels (0, or not smaller
    than the views: unchanged): where the coarse set is rendered for the gradient mask and
    the view features."""
    if mask_size < 0:
        raise ValueError(f"mask_size must be >= 0, got {mask_size}")
    longer = max(cameras.height, cameras.width)
    if not 0 < mask_size < longer:
        return cameras
    scale = mask_size / longer
    width, height = max(1, round(cameras.width * scale)), max(1, round(cameras.height * scale))
    return cameras.scaled(width, height)


def mask_views(images: Tensor, cameras: Cameras, mask_size: int) -> tuple[Tensor, Cameras]:
    """`images` (C, H, W, 3) area-resampled to `mask_cameras(cameras, mask_size)`."""
    small = mask_cameras(cameras, mask_size)
    return resize_views(images, cameras, small.width, small.height)


def view_space_gradients(
    gaussians: Gaussians,
    images: Tensor,
    cameras: Cameras,
    background: Tensor | Sequence[float] | float | None = None,
    absgrad: bool = True,
    backend: str = "auto",
    mask_size: int = 0,
) -> GradientScores:
    """Render `gaussians` into the input views and score each by its 2D positional gradient.

    Args:
        gaussians: N coarse Gaussians (detached internally).
        images: (C, H, W, 3) input images in [0, 1], on the background.
        cameras: the C input cameras.
        background: render background (white by default, the object convention).
        absgrad: also compute the AbsGS variant; falls back to plain only
            (absolute = None) where the backend cannot.
        backend: renderer backend (see `engine.render`).
        mask_size: score on a render whose longer side is this many pixels (see
            `DensifyConfig.mask_size`; 0 or larger than the views: their own size); the
            returned render stays at that size.
    """
    from ..render import render, resolve_backend

    if images.shape != (len(cameras), cameras.height, cameras.width, 3):
        raise ValueError(
            f"images must have shape ({len(cameras)}, {cameras.height}, {cameras.width}, 3), "
            f"got {tuple(images.shape)}"
        )
    images, cameras = mask_views(images, cameras, mask_size)
    g = gaussians.detach()
    if absgrad and resolve_backend(backend, g.device) == "torch":
        absgrad = False
    tile = coarse_tile_size(backend, g.device)
    with torch.enable_grad():
        out = render(
            g, cameras, background=background, backend=backend, absgrad=absgrad, tile_size=tile
        )
        target = images.to(device=out.colors.device, dtype=out.colors.dtype)
        per_view = (out.colors - target).square().mean(dim=(1, 2, 3))
        loss = per_view.sum()
        # Only the projected means are asked for: nothing else accumulates a gradient.
        loss.backward(inputs=[out.means2d])
    visible = out.radii > 0
    plain = _mean_over_visible(out.means2d.grad, visible)
    abs_grad = getattr(out.means2d, "absgrad", None) if absgrad else None
    absolute = None if abs_grad is None else _mean_over_visible(abs_grad, visible)
    colors, alphas, depths = out.colors.detach(), out.alphas.detach(), out.depths.detach()
    return GradientScores(
        plain, absolute, visible.sum(0), float(loss.detach()), colors, alphas, depths
    )


def select_top_k(scores: Tensor, k: int, eligible: Tensor | None = None) -> Tensor:
    """Boolean mask of the (at most) k highest scores among the eligible entries.

    Args:
        scores: (N,). k: budget (all eligible when there are fewer).
        eligible: optional (N,) bool; ineligible entries are never selected.
    """
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    s = scores.detach().clone()
    if eligible is not None:
        s[~eligible] = -torch.inf
    k = min(k, int(torch.isfinite(s).sum()))
    mask = torch.zeros_like(s, dtype=torch.bool)
    if k:
        mask[torch.topk(s, k).indices] = True
    return mask


def candidate_budget(cfg: DensifyConfig, num_views: int) -> int:
    """K for one reconstruction: per view for the scene model, total for objects."""
    return cfg.candidates * (num_views if cfg.candidates_per_view else 1)


@dataclass
class Selection:
    """Which Gaussians get densified, and why.

    Attributes:
        selected: (N,) bool.
        scores: the gradient statistics, or None for an explicit selection.
    """

    selected: Tensor
    scores: GradientScores | None


def gradient_mask(
    gaussians: Gaussians,
    images: Tensor | None = None,
    cameras: Cameras | None = None,
    k: int | None = None,
    select: Tensor | None = None,
    variant: str = "abs",
    min_opacity: float = 0.005,
    background: Tensor | Sequence[float] | float | None = None,
    backend: str = "auto",
    mask_size: int = 0,
    within: Tensor | None = None,
) -> Selection:
    """Pick densification candidates: the one entry point for candidate selection.

    Three ways, by argument:
    - `select`: an explicit selection, used as is (nothing is rendered);
    - `within` (the artist's region): all of it when it holds at most `k` Gaussians
      (nothing is rendered), else its top-k by gradient (visible ones, any opacity);
    - neither: the top-k by gradient among the visible Gaussians above `min_opacity`.

    Args:
        gaussians: N coarse Gaussians.
        images, cameras: the input views; needed unless `select` is given.
        k: budget for top-k selection.
        select: explicit (N,) bool selection; used as is.
        variant: "abs" (AbsGS, falls back to "plain" where unsupported) or "plain".
        min_opacity: without `within`, Gaussians at or below this opacity are never
            candidates (they barely render; the official code uses 0.005).
        background: render background.
        backend: renderer backend.
        mask_size: score on a render whose longer side is this many pixels (0: full size).
        within: (N,) bool, the Gaussians that may be candidates.
    """
    n = len(gaussians)
    if select is not None:
        return Selection(_bool_mask(select, n, gaussians.device, "select").clone(), None)
    if images is None or cameras is None or k is None:
        raise ValueError("top-k selection needs images, cameras and k (or pass select=)")
    if variant not in VARIANTS:
        raise ValueError(f"unknown gradient variant {variant!r}; expected one of {VARIANTS}")
    if within is not None:
        within = _bool_mask(within, n, gaussians.device, "within")
        if int(within.sum()) <= k:
            return Selection(within.clone(), None)
    scores = view_space_gradients(
        gaussians, images, cameras, background, absgrad=variant == "abs", backend=backend,
        mask_size=mask_size,
    )  # fmt: skip
    score = scores.absolute if variant == "abs" and scores.absolute is not None else scores.plain
    eligible = scores.visible_views > 0
    if within is not None:
        eligible = eligible & within
    else:
        eligible = eligible & (gaussians.opacities.detach() > min_opacity)
    return Selection(select_top_k(score, k, eligible), scores)


def _bool_mask(mask: Tensor, n: int, device: torch.device, name: str) -> Tensor:
    mask = torch.as_tensor(mask, device=device)
    if mask.dtype != torch.bool or tuple(mask.shape) != (n,):
        raise ValueError(f"{name} must be a bool mask of shape ({n},)")
    return mask
