"""Projection of 3D Gaussians to screen-space 2D Gaussians (EWA splatting, as in 3DGS/gsplat).

Everything here is plain differentiable PyTorch; the rasterisers only see the
2D quantities produced here, so every backend shares the same maths and
autograd carries gradients back to the 3D parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .sh import eval_sh_colors

# 3DGS skips contributions with alpha < 1/255; the rasterisers use the same number.
ALPHA_THRESHOLD = 1.0 / 255.0
# Low-pass filter added to the 2D covariance so every splat covers at least ~a pixel.
EPS_2D = 0.3


@dataclass
class Projection:
    """Per-camera screen-space Gaussians.

    Attributes:
        means2d: (C, N, 2) projected centres in pixels (pixel (u, v) has centre (u+.5, v+.5)).
        conics: (C, N, 3) inverse 2D covariance (a, b, c): sigma = .5(a dx² + c dy²) + b dx dy.
        depths: (C, N) camera-space z.
        opacities: (C, N) opacities (0 for culled Gaussians).
        extents: (C, N, 2) half-widths in pixels of the axis-aligned box outside which
            alpha < 1/255 (0 for culled Gaussians).
        colors: (C, N, 3) view-dependent colours from SH.
        visible: (C, N) bool, in front of the camera and overlapping the image.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    extents: Tensor
    colors: Tensor
    visible: Tensor

    @property
    def radii(self) -> Tensor:
        """(C, N) int32 pixel radius of the bounding box (0 when culled), like gsplat's radii."""
        return torch.ceil(self.extents.detach().amax(dim=-1)).to(torch.int32)


def project(
    gaussians: Gaussians,
    cameras: Cameras,
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = EPS_2D,
) -> Projection:
    """Project Gaussians into every camera.

    Args:
        gaussians: N Gaussians.
        cameras: C cameras of one image size.
        sh_degree: SH degree to evaluate (defaults to the Gaussians' own degree).
        near, far: depth range; Gaussians outside are culled.
        eps2d: low-pass filter added to the 2D covariance diagonal.
    """
    dtype, device = gaussians.dtype, gaussians.device
    cams = cameras.to(device=device, dtype=dtype)
    degree = gaussians.degree_for(sh_degree)
    rot = cams.world_to_camera[:, :3, :3]  # (C, 3, 3)
    trans = cams.world_to_camera[:, :3, 3]  # (C, 3)
    p_cam = torch.einsum("cij,nj->cni", rot, gaussians.means) + trans[:, None, :]  # (C, N, 3)
    x, y, z = p_cam.unbind(-1)
    in_depth = (z > near) & (z < far)
    # Culled Gaussians still flow through the maths below; a safe depth keeps their
    # (masked) values finite so zero upstream gradients never meet an inf or NaN.
    z = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy = cams.fx[:, None], cams.fy[:, None]
    cx, cy = cams.cx[:, None], cams.cy[:, None]
    w, h = cams.width, cams.height
    # As in 3DGS/gsplat: the Jacobian is evaluated at a position clamped to 1.3x the
    # frustum, which keeps splats of Gaussians far outside the view from exploding.
    tan_x, tan_y = 0.5 * w / fx, 0.5 * h / fy
    tx = z * torch.minimum(
        torch.maximum(x / z, -(cx / fx + 0.3 * tan_x)), (w - cx) / fx + 0.3 * tan_x
    )
    ty = z * torch.minimum(
        torch.maximum(y / z, -(cy / fy + 0.3 * tan_y)), (h - cy) / fy + 0.3 * tan_y
    )
    # 2D covariance J W Σ Wᵀ Jᵀ with Σ = L Lᵀ, L = R_g·diag(s): T = J W L is (2, 3) per
    # camera and Gaussian, and the covariance is T Tᵀ. The Jacobian's zeros are spelled out
    # and everything is broadcast element-wise: batched 3x3 matmuls over C·N tiny matrices
    # (and their backward) were most of the projection's time on the CPU.
    r0, r1, r2 = (rot[:, None, i, :] for i in range(3))  # (C, 1, 3) rows of W
    inv_z = 1.0 / z
    jw0 = (fx * inv_z)[..., None] * r0 - (fx * tx * inv_z * inv_z)[..., None] * r2  # (C, N, 3)
    jw1 = (fy * inv_z)[..., None] * r1 - (fy * ty * inv_z * inv_z)[..., None] * r2
    ell = gaussians.covariance_factors  # (N, 3, 3) L
    t0 = (jw0[..., :, None] * ell).sum(-2)  # (C, N, 3) row 0 of J W L
    t1 = (jw1[..., :, None] * ell).sum(-2)
    a = (t0 * t0).sum(-1) + eps2d
    b = (t0 * t1).sum(-1)
    c = (t1 * t1).sum(-1) + eps2d
    det = a * c - b * b
    ok_det = det > 0
    det = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    opac = gaussians.opacities[None].expand_as(z)
    # alpha = o·exp(-sigma) >= 1/255 exactly inside sigma <= log(255·o); the ellipse's
    # axis-aligned box is then sqrt(2·log(255·o)·Σ_xx) wide, so cutting there is lossless.
    thresh = torch.log(opac.detach() / ALPHA_THRESHOLD)
    ok_opacity = thresh > 0
    k = 2.0 * thresh.clamp_min(0.0)
    extents = torch.stack([torch.sqrt(k * a.detach()), torch.sqrt(k * c.detach())], dim=-1)
    m = means2d.detach()
    on_screen = (
        (m[..., 0] + extents[..., 0] > 0)
        & (m[..., 0] - extents[..., 0] < w)
        & (m[..., 1] + extents[..., 1] > 0)
        & (m[..., 1] - extents[..., 1] < h)
    )
    visible = in_depth & ok_det & ok_opacity & on_screen
    extents = torch.where(visible[..., None], extents, torch.zeros_like(extents))

    centers = cams.centers  # (C, 3)
    dirs = gaussians.means[None] - centers[:, None, :]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    colors = eval_sh_colors(gaussians.sh, dirs, degree)

    return Projection(
        means2d=means2d,
        conics=conics,
        depths=p_cam[..., 2],
        opacities=torch.where(visible, opac, torch.zeros_like(opac)),
        extents=extents,
        colors=colors,
        visible=visible,
    )


def tile_grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
    """Number of tiles (tiles_x, tiles_y) covering the image."""
    return math.ceil(width / tile_size), math.ceil(height / tile_size)
