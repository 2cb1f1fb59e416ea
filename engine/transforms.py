"""Rigid transforms of Gaussians: positions, orientations and SH coefficients together.

    g2 = rotate_gaussians(g, R, t)   # means R·μ + t, orientations R·q, SH re-expressed

Rendering `g2` from cameras whose world-to-camera matrices are `w2c @ inv([R t; 0 1])`
gives the same images as rendering `g` from `w2c` (tests/test_transforms.py).

SH coefficients c describe the colour seen along direction d as c · Y(d) (3DGS basis,
`engine.sh`). After the world is rotated by R the same colour must be seen along
R·d, so the new coefficients c' satisfy c' · Y(R d) = c · Y(d) for every d. Each band
l = 1..3 maps onto itself by a (2l+1)×(2l+1) matrix, found here by an exact least-squares
fit on well spread directions (the system is consistent, so the fit is exact to rounding);
the DC band is unchanged. This works for any orthogonal 3×3 matrix, reflections included.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from .gaussians import Gaussians
from .rotations import matrix_to_quaternion, normalize_quaternions, quaternion_multiply
from .sh import sh_basis

__all__ = ["rotate_gaussians", "rotate_quaternions", "rotate_sh", "sh_rotation_blocks"]


def _check_rotation(rotation: Tensor, proper: bool) -> None:
    if rotation.shape != (3, 3):
        raise ValueError(f"rotation must be a 3x3 matrix, got shape {tuple(rotation.shape)}")
    r = rotation.to(torch.float64)
    err = float((r @ r.T - torch.eye(3, dtype=torch.float64)).abs().max())
    if not math.isfinite(err) or err > 1e-5:
        raise ValueError(f"rotation is not orthogonal (|R Rᵀ - I| = {err:.3g})")
    if proper and float(torch.linalg.det(r)) < 0:
        raise ValueError("rotation has determinant -1 (a reflection); quaternions cannot hold it")


@functools.lru_cache(maxsize=32)
def _blocks_cached(matrix: tuple[float, ...], degree: int) -> tuple[np.ndarray, ...]:
    m = np.array(matrix, dtype=np.float64).reshape(3, 3)
    # Fibonacci sphere: well spread directions, plenty for a 7-coefficient band fit.
    i = np.arange(96) + 0.5
    z = 1 - 2 * i / 96
    r = np.sqrt(1 - z * z)
    phi = math.pi * (1 + 5**0.5) * i
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    # c' · Y(d') = c · Y(Mᵀ d') for all d' (d' = M d): fit c'_band = T c_band per band.
    new = sh_basis(torch.from_numpy(dirs), degree).numpy()
    old = sh_basis(torch.from_numpy(dirs @ m), degree).numpy()  # rows are Mᵀ d'
    blocks = []
    for band in range(1, degree + 1):
        s = slice(band * band, (band + 1) ** 2)
        t, *_ = np.linalg.lstsq(new[:, s], old[:, s], rcond=None)  # new @ t == old
        blocks.append(t)
    return tuple(blocks)


def sh_rotation_blocks(rotation: Tensor | np.ndarray, degree: int) -> list[Tensor]:
    """Per band l = 1..degree, the (2l+1, 2l+1) float64 matrix T_l with c'_l = T_l c_l.

    rotation: (3, 3) orthogonal matrix taking old world coordinates to new ones.
    """
    r = torch.as_tensor(rotation).detach().to("cpu", torch.float64)
    _check_rotation(r, proper=False)
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    return [torch.from_numpy(t) for t in _blocks_cached(tuple(r.reshape(-1).tolist()), degree)]


def rotate_sh(sh: Tensor, rotation: Tensor | np.ndarray) -> Tensor:
    """SH coefficients (..., K, C) re-expressed after rotating the world by `rotation`.

    K = (degree + 1)², DC first (3DGS order); the DC coefficient is returned unchanged.
    The result has `sh`'s dtype and device.
    """
    k = sh.shape[-2]
    degree = math.isqrt(k) - 1
    if (degree + 1) ** 2 != k:
        raise ValueError(f"SH coefficient count {k} is not a square")
    blocks = sh_rotation_blocks(rotation, degree)
    out = sh.clone()
    for band, t in enumerate(blocks, start=1):
        s = slice(band * band, (band + 1) ** 2)
        out[..., s, :] = torch.einsum("ij,...jc->...ic", t.to(sh.device, sh.dtype), sh[..., s, :])
    return out


def rotate_quaternions(quats: Tensor, rotation: Tensor | np.ndarray) -> Tensor:
    """Orientations (..., 4) wxyz turned with the world: R_g -> R · R_g (q -> q_R ⊗ q).

    Not the change of basis R · R_g · Rᵀ: the Gaussian's own axes (and so its scales) keep
    their meaning, and its covariance becomes R Σ Rᵀ. Output is unit length, input dtype.
    """
    r = torch.as_tensor(rotation).detach().to(quats.device, torch.float64)
    _check_rotation(r, proper=True)
    q = quaternion_multiply(matrix_to_quaternion(r), normalize_quaternions(quats.to(torch.float64)))
    return q.to(quats.dtype)


def rotate_gaussians(
    gaussians: Gaussians,
    rotation: Tensor | np.ndarray,
    translation: Tensor | np.ndarray | None = None,
) -> Gaussians:
    """Gaussians moved by x -> R x + t: means, orientations and SH (scales, opacities kept).

    rotation: (3, 3) proper rotation; translation: (3,) or None for none.
    The result has the input's dtype and device; quaternions come out unit length.
    """
    g = gaussians
    r = torch.as_tensor(rotation).detach().to(g.means.device, torch.float64)
    _check_rotation(r, proper=True)
    t = torch.zeros(3, dtype=torch.float64, device=r.device)
    if translation is not None:
        t = torch.as_tensor(translation).to(r.device, torch.float64).reshape(3)
    means = (g.means.to(torch.float64) @ r.T + t).to(g.means.dtype)
    return Gaussians(
        means=means,
        log_scales=g.log_scales.clone(),
        quats=rotate_quaternions(g.quats, r),
        opacity_logits=g.opacity_logits.clone(),
        sh=rotate_sh(g.sh, r),
    )
