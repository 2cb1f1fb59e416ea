"""Quaternion and rotation-matrix helpers shared by the renderer and the exporters.

Quaternions are stored w, x, y, z (scalar first), as in the INRIA 3DGS PLY.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalize_quaternions(quats: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit quaternions.

    Args:
        quats: (..., 4) wxyz, any non-zero norm.
    Returns:
        (..., 4) wxyz with unit norm.
    """
    return quats / quats.norm(dim=-1, keepdim=True).clamp_min(eps)


def quaternion_to_matrix(quats: Tensor) -> Tensor:
    """Rotation matrices from quaternions (normalised here, so any non-zero norm is fine).

    Args:
        quats: (..., 4) wxyz.
    Returns:
        (..., 3, 3) rotation matrices.
    """
    w, x, y, z = normalize_quaternions(quats).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def matrix_to_quaternion(matrices: Tensor) -> Tensor:
    """Quaternions (wxyz, w >= 0) from rotation matrices.

    Uses the numerically stable branch per element (largest diagonal term).

    Args:
        matrices: (..., 3, 3) proper rotations.
    Returns:
        (..., 4) unit quaternions, wxyz with w >= 0.
    """
    m = matrices
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    candidates = torch.stack(
        [
            torch.stack(
                [
                    1 + trace,
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + m00 - m11 - m22,
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 - m00 + m11 - m22,
                    m[..., 1, 2] + m[..., 2, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 - m00 - m11 + m22,
                ],
                -1,
            ),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4)
    diag = torch.stack([trace, m00, m11, m22], dim=-1)
    best = diag.argmax(dim=-1, keepdim=True)
    q = torch.gather(candidates, -2, best[..., None].expand(best.shape + (4,))).squeeze(-2)
    q = normalize_quaternions(q)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b (rotation b first, then a).

    Args:
        a, b: (..., 4) wxyz, broadcastable.
    Returns:
        (..., 4) wxyz.
    """
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )
