"""Real spherical harmonics up to degree 3, with the constants and sign conventions of 3DGS."""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
      -1.0925484305920792, 0.5462742152960396)  # fmt: skip
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435)  # fmt: skip


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """SH basis functions evaluated at unit directions.

    Args:
        dirs: (..., 3) unit vectors.
        degree: 0..3.
    Returns:
        (..., (degree + 1)²) basis values, DC first, in the 3DGS coefficient order.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            C2[0] * xy,
            C2[1] * yz,
            C2[2] * (2.0 * zz - xx - yy),
            C2[3] * xz,
            C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            C3[0] * y * (3.0 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4.0 * zz - xx - yy),
            C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            C3[4] * x * (4.0 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh_colors(sh: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """View-dependent colour, `max(SH · basis + 0.5, 0)` as in 3DGS.

    Args:
        sh: (N, K, 3) coefficients with K >= (degree + 1)².
        dirs: (..., N, 3) unit viewing directions (from the camera centre to the Gaussian).
        degree: SH degree to evaluate.
    Returns:
        (..., N, 3) colours.
    """
    k = (degree + 1) ** 2
    basis = sh_basis(dirs, degree)  # (..., N, k)
    return (torch.einsum("...nk,nkc->...nc", basis, sh[:, :k]) + 0.5).clamp_min(0.0)
