"""Brute-force reference renderer: float64, every Gaussian against every pixel.

Written independently of the tile rasterisers (its own projection, no tiles, no
bounding boxes, no early-out beyond the 3DGS rules themselves) so tests can
check them against it. It follows 3DGS literally, one Gaussian at a time in
depth order, vectorised over pixels: skip alpha < 1/255, clamp alpha at 0.99,
stop a pixel before the Gaussian that would take its transmittance below 1e-4.
Slow (O(N·H·W)); meant for tests and for the benchmark's ratio.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .sh import sh_basis


def _rotation_from_quaternion(q: Tensor) -> Tensor:
    """(N, 4) wxyz -> (N, 3, 3), via the outer-product form R = (w²-v·v)I + 2vvᵀ + 2w[v]×."""
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    w, v = q[:, 0], q[:, 1:]
    eye = torch.eye(3, dtype=q.dtype, device=q.device).expand(q.shape[0], 3, 3)
    cross = torch.zeros(q.shape[0], 3, 3, dtype=q.dtype, device=q.device)
    cross[:, 0, 1], cross[:, 0, 2] = -v[:, 2], v[:, 1]
    cross[:, 1, 0], cross[:, 1, 2] = v[:, 2], -v[:, 0]
    cross[:, 2, 0], cross[:, 2, 1] = -v[:, 1], v[:, 0]
    return (
        (w * w - (v * v).sum(-1))[:, None, None] * eye
        + 2 * v[:, :, None] * v[:, None, :]
        + 2 * w[:, None, None] * cross
    )


def render_reference(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Tensor | None = None,
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """Render in float64 the slow, obvious way.

    Returns:
        colors (C, H, W, 3) over the background (white by default) and alphas (C, H, W),
        both float64 and differentiable with respect to the Gaussians.
    """
    g = gaussians.to(dtype=torch.float64)
    cams = cameras.to(device=g.device, dtype=torch.float64)
    bg = (
        torch.ones(3, dtype=torch.float64, device=g.device)
        if background is None
        else (torch.as_tensor(background, dtype=torch.float64, device=g.device))
    )
    degree = g.degree_for(sh_degree)
    w, h = cams.width, cams.height
    rot = _rotation_from_quaternion(g.quats)
    scale2 = torch.exp(2 * g.log_scales)
    sigma3 = rot @ torch.diag_embed(scale2) @ rot.transpose(1, 2)
    opacity = torch.sigmoid(g.opacity_logits)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=g.device) + 0.5,
        torch.arange(w, dtype=torch.float64, device=g.device) + 0.5,
        indexing="ij",
    )
    px, py = xs.flatten(), ys.flatten()
    colors_out, alphas_out = [], []
    for c in range(len(cams)):
        view = cams.world_to_camera[c]
        fx, fy, cx, cy = cams.fx[c], cams.fy[c], cams.cx[c], cams.cy[c]
        pc = g.means @ view[:3, :3].T + view[:3, 3]
        center = -view[:3, :3].T @ view[:3, 3]
        dirs = g.means - center
        dirs = dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True)
        k = (degree + 1) ** 2
        rgb = torch.clamp((sh_basis(dirs, degree)[:, :, None] * g.sh[:, :k]).sum(1) + 0.5, min=0)
        trans = torch.ones_like(px)
        acc = torch.zeros(px.shape[0], 3, dtype=torch.float64, device=g.device)
        done = torch.zeros_like(px, dtype=torch.bool)
        for i in torch.argsort(pc[:, 2], stable=True).tolist():
            x, y, z = pc[i]
            if not (near < float(z.detach()) < far):
                continue
            # gsplat's frustum clamp for the Jacobian: 0.3·tan(fov/2) = 0.15·W/fx past the edge.
            tx = z * torch.clamp(x / z, -(cx / fx + 0.15 * w / fx), (w - cx) / fx + 0.15 * w / fx)
            ty = z * torch.clamp(y / z, -(cy / fy + 0.15 * h / fy), (h - cy) / fy + 0.15 * h / fy)
            jac = torch.stack(
                [
                    torch.stack([fx / z, torch.zeros_like(z), -fx * tx / z**2]),
                    torch.stack([torch.zeros_like(z), fy / z, -fy * ty / z**2]),
                ]
            )
            cov = jac @ view[:3, :3] @ sigma3[i] @ view[:3, :3].T @ jac.T
            cov = cov + eps2d * torch.eye(2, dtype=torch.float64, device=g.device)
            inv = torch.linalg.inv(cov)
            dx = fx * x / z + cx - px
            dy = fy * y / z + cy - py
            power = 0.5 * (inv[0, 0] * dx * dx + inv[1, 1] * dy * dy) + inv[0, 1] * dx * dy
            alpha = torch.clamp(opacity[i] * torch.exp(-power), max=0.99)
            use = (alpha >= 1.0 / 255.0) & (power >= 0) & ~done
            stop = use & (trans * (1 - alpha) < 1e-4)
            done = done | stop
            a = torch.where(use & ~stop, alpha, torch.zeros_like(alpha))
            acc = acc + (a * trans)[:, None] * rgb[i]
            trans = trans * (1 - a)
        colors_out.append((acc + trans[:, None] * bg).reshape(h, w, 3))
        alphas_out.append((1 - trans).reshape(h, w))
    return torch.stack(colors_out), torch.stack(alphas_out)
