"""gsplat's CUDA kernels behind the project's `render` interface (optional dependency)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians


def gsplat_available() -> bool:
    """True when gsplat imports and a CUDA device exists."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def render_gsplat(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Tensor,
    sh_degree: int,
    near: float,
    far: float,
    eps2d: float,
    absgrad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Render with `gsplat.rasterization`.

    Returns colors (C, H, W, 3) with background, alphas (C, H, W), expected depth
    (C, H, W), radii (C, N) int32 and means2d (C, N, 2) (gradient retained).
    Differences from the portable rasterisers (gsplat's own constants): alpha is
    clamped at 0.999 rather than 0.99 and splats are cut at 3σ·(opacity-aware)
    boxes, so images agree to ~1e-3, not bit for bit.
    """
    from gsplat import rasterization

    cams = cameras.to(device=gaussians.device, dtype=gaussians.dtype)
    num_cams = len(cams)
    colors, alphas, meta = rasterization(
        means=gaussians.means,
        quats=gaussians.quats,
        scales=gaussians.scales,
        opacities=gaussians.opacities,
        colors=gaussians.sh[:, : (sh_degree + 1) ** 2],
        viewmats=cams.world_to_camera,
        Ks=cams.intrinsics,
        width=cams.width,
        height=cams.height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        sh_degree=sh_degree,
        backgrounds=background.expand(num_cams, 3),
        render_mode="RGB+ED",
        absgrad=absgrad,
        packed=False,
    )
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"]
    if radii.ndim == 3:  # gsplat >= 1.5 reports per-axis radii
        radii = radii.amax(dim=-1)
    return colors[..., :3], alphas[..., 0], colors[..., 3], radii.to(torch.int32), means2d
