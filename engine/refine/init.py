"""Starting points that need no model: random Gaussians in a box (the baseline that a
feed-forward start is measured against, and the tests' fixtures)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..gaussians import Gaussians, rgb_to_sh_dc


def random_gaussians(n: int, center: Tensor | tuple[float, float, float] = (0.0, 0.0, 0.0),
                     half_size: float = 0.5, scale: float | None = None, opacity: float = 0.1,
                     sh_degree: int = 0, seed: int = 0) -> Gaussians:  # fmt: skip
    """N isotropic Gaussians uniform in the cube `center ± half_size`, random colours.

    Args:
        n: count (>= 1). center: (3,). half_size: the cube's half edge (> 0).
        scale: std-dev of each Gaussian (default: half the mean spacing of n points in the
            cube, so they roughly tile it). opacity: in (0, 1), low so refinement can
            shape them (3DGS starts at 0.1). sh_degree: 0..3 (higher terms zero).
    """
    if n < 1 or not half_size > 0 or not 0 < opacity < 1:
        raise ValueError(f"random_gaussians needs n >= 1, half_size > 0, 0 < opacity < 1; "
                         f"got {n}, {half_size}, {opacity}")  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    centre = torch.as_tensor(center, dtype=torch.float32).reshape(3)
    means = centre + (torch.rand(n, 3, generator=g) * 2 - 1) * half_size
    s = scale if scale is not None else 0.5 * (2 * half_size) / n ** (1 / 3)
    k = (sh_degree + 1) ** 2
    sh = torch.zeros(n, k, 3)
    sh[:, 0] = rgb_to_sh_dc(torch.rand(n, 3, generator=g))
    return Gaussians.isotropic(means, float(torch.tensor(s).log()),
                               float(torch.logit(torch.tensor(opacity))), sh)  # fmt: skip
