"""Differentiable Gaussian rasterisation with interchangeable backends.

    out = render(gaussians, cameras, background=torch.ones(3))
    out.colors (C, H, W, 3); out.alphas (C, H, W); out.depths (C, H, W)
    out.radii (C, N); out.means2d (C, N, 2), whose .grad is filled by backward()

Backends: "gsplat" (CUDA kernels, optional), "numba" (CPU kernels with a
hand-written backward), "torch" (portable, any device). "auto" picks gsplat on
CUDA when it is installed, numba on the CPU, torch otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .gsplat_backend import gsplat_available, render_gsplat
from .projection import EPS_2D, Projection, project

BACKENDS = ("auto", "gsplat", "numba", "torch")


class RenderError(ValueError):
    """Raised for inputs the renderer cannot draw (empty cameras, bad background, ...)."""


@dataclass
class RenderOutput:
    """What one `render` call returns.

    Attributes:
        colors: (C, H, W, 3) RGB composited over the background.
        alphas: (C, H, W) accumulated opacity.
        depths: (C, H, W) expected camera-space depth (sum of w·z / alpha), 0 where alpha = 0.
        radii: (C, N) int32 pixel radius of each Gaussian's footprint, 0 if culled.
        means2d: (C, N, 2) projected centres; requires grad whenever grad mode is on, and
            `means2d.grad` holds dL/d(mean2d) after `backward()` (the gradient mask uses it).
            With `absgrad=True` (numba, gsplat) `means2d.absgrad` holds the AbsGS variant.
        backend: the backend that drew the image.
    """

    colors: Tensor
    alphas: Tensor
    depths: Tensor
    radii: Tensor
    means2d: Tensor
    backend: str

    @property
    def visible(self) -> Tensor:
        """(C, N) bool: the Gaussian touches the image."""
        return self.radii > 0


@functools.cache
def numba_available() -> bool:
    """True if numba imports. Imported, not just looked up: a numba that is installed but
    cannot load (built for another NumPy, as happens inside Blender's Python) must send
    "auto" to the torch backend instead of failing every render. Asked only when a CPU
    render picks its backend, so the CLI's start-up never pays for the import."""
    try:
        import numba  # noqa: F401
    except Exception:  # ImportError, or whatever a broken install raises while loading
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend `render` will use for `backend` on `device`."""
    if backend not in BACKENDS:
        raise RenderError(f"unknown render backend {backend!r}; choose from {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda" and gsplat_available():
            return "gsplat"
        if device.type == "cpu" and numba_available():
            return "numba"
        return "torch"
    if backend == "gsplat" and not gsplat_available():
        raise RenderError("backend 'gsplat' needs a CUDA device and `pip install gsplat`")
    if backend == "numba":
        if device.type != "cpu":
            raise RenderError(f"backend 'numba' runs on the CPU, the Gaussians are on {device}")
        if not numba_available():
            raise RenderError("backend 'numba' needs `pip install numba`")
    return backend


def _background_tensor(background: Tensor | Sequence[float] | float | None, like: Tensor) -> Tensor:
    if background is None:
        background = 1.0
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.ndim == 0:
        bg = bg.expand(3)
    if bg.shape != (3,) or not torch.isfinite(bg).all():
        raise RenderError(f"background must be 3 finite numbers, got {background!r}")
    return bg


def _rasterize(proj: Projection, width: int, height: int, backend: str, tile_size: int,
               with_depth: bool = True):  # fmt: skip
    features = proj.colors
    if with_depth:
        features = torch.cat([proj.colors, proj.depths[..., None]], dim=-1)  # depth as a channel
    args = (proj.means2d, proj.conics, features, proj.opacities, proj.extents, proj.depths)
    if backend == "numba":
        from .rasterize_numba import rasterize_numba

        return rasterize_numba(*args, width, height, tile_size)
    from .rasterize_torch import rasterize_torch

    return rasterize_torch(*args, width, height, tile_size)


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Tensor | Sequence[float] | float | None = None,
    sh_degree: int | None = None,
    backend: str = "auto",
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = EPS_2D,
    tile_size: int = 16,
    absgrad: bool = False,
    depth: bool = True,
) -> RenderOutput:
    """Render Gaussians into every camera, differentiably.

    Args:
        gaussians: N Gaussians (any device; cameras are moved to it).
        cameras: C cameras sharing one image size.
        background: RGB behind the splats; white by default (the object convention).
        sh_degree: SH degree to evaluate (default: the Gaussians' own).
        backend: "auto", "gsplat", "numba" or "torch".
        near, far: camera-space depth range kept.
        eps2d: screen-space low-pass added to each 2D covariance (3DGS uses 0.3).
        tile_size: tile edge in pixels for the portable backends.
        absgrad: also accumulate the AbsGS absolute 2D-mean gradient (numba, gsplat).
        depth: composite the expected depth (False: `depths` is all zeros, and the CPU
            backends composite 3 channels instead of 4, ~15 % less work; refinement does).
    """
    if len(cameras) == 0:
        raise RenderError("render needs at least one camera")
    device = gaussians.device
    chosen = resolve_backend(backend, device)
    bg = _background_tensor(background, gaussians.means)
    degree = gaussians.degree_for(sh_degree)
    if absgrad and chosen == "torch":
        raise RenderError("absgrad=True needs the 'numba' (CPU) or 'gsplat' (CUDA) backend")

    if chosen == "gsplat":
        g = gaussians
        if torch.is_grad_enabled() and not g.means.requires_grad:
            # Let callers read dL/d(means2d) even for Gaussians that are not optimised.
            g = Gaussians.unchecked(
                g.means.detach().requires_grad_(True), g.log_scales, g.quats,
                g.opacity_logits, g.sh,
            )  # fmt: skip
        colors, alphas, depths, radii, means2d = render_gsplat(
            g, cameras, bg, degree, near, far, eps2d, absgrad
        )
        return RenderOutput(colors, alphas, depths, radii, means2d, chosen)

    if chosen == "numba":
        from .project_numba import project_numba

        proj = project_numba(gaussians, cameras, sh_degree=degree, near=near, far=far, eps2d=eps2d)
    else:
        proj = project(gaussians, cameras, sh_degree=degree, near=near, far=far, eps2d=eps2d)
    means2d = proj.means2d
    if torch.is_grad_enabled():
        if means2d.requires_grad:
            means2d.retain_grad()
        else:
            means2d = means2d.detach().requires_grad_(True)
        proj.means2d = means2d
    acc, alphas = _rasterize(proj, cameras.width, cameras.height, chosen, tile_size, depth)
    colors = acc[..., :3] + (1.0 - alphas)[..., None] * bg
    safe = alphas > 1e-6
    if depth:
        depths = torch.where(safe, acc[..., 3] / alphas.clamp_min(1e-6), torch.zeros_like(alphas))
    else:
        depths = torch.zeros_like(alphas)
    return RenderOutput(colors, alphas, depths, proj.radii, means2d, chosen)


__all__ = ["BACKENDS", "RenderError", "RenderOutput", "render", "resolve_backend"]
