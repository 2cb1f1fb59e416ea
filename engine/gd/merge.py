"""Merge fine Gaussians back into the coarse set they were generated from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..gaussians import Gaussians, GaussiansError


@dataclass
class MergeResult:
    """The merged set: untouched coarse Gaussians first (original order), then the fine ones.

    Attributes:
        gaussians: (N - S + M) Gaussians.
        level: 0 for untouched coarse Gaussians, the fine level (1..L) otherwise.
        parent: index into the *coarse* set: itself for untouched ones, the
            replaced candidate for fine ones.
    """

    gaussians: Gaussians
    level: Tensor
    parent: Tensor


def merge(
    coarse: Gaussians,
    selected: Tensor,
    fine: Gaussians,
    fine_level: Tensor,
    fine_parent: Tensor,
) -> MergeResult:
    """Replace the selected coarse Gaussians by the fine ones.

    Unselected coarse Gaussians are copied bit for bit and keep their order.
    SH degrees are raised to the larger of the two (zero-padded), as in
    `Gaussians.cat`; existing coefficients are unchanged. Gradients flow to
    `fine` (and to `coarse` through the kept rows).

    Args:
        coarse: N Gaussians.
        selected: (N,) bool, the S candidates that were densified.
        fine: M fine Gaussians.
        fine_level: (M,) levels 1..L.
        fine_parent: (M,) int64 index into the S candidates (in the order of
            `selected.nonzero()`), as returned by the densifier.
    """
    n = len(coarse)
    if selected.dtype != torch.bool or tuple(selected.shape) != (n,):
        raise GaussiansError(f"selected must be a bool mask of shape ({n},)")
    m = len(fine)
    if tuple(fine_level.shape) != (m,) or tuple(fine_parent.shape) != (m,):
        raise GaussiansError(f"fine_level and fine_parent must have shape ({m},)")
    device = coarse.device
    selected = selected.to(device)
    candidates = selected.nonzero().flatten()
    if m and (int(fine_parent.min()) < 0 or int(fine_parent.max()) >= candidates.numel()):
        raise GaussiansError("fine_parent indexes past the selected candidates")
    kept = (~selected).nonzero().flatten()
    degree = max(coarse.sh_degree, fine.sh_degree)
    coarse_kept = coarse[kept].with_sh_degree(degree)
    fine = fine.with_sh_degree(degree)
    gaussians = Gaussians.unchecked(
        *(
            torch.cat([getattr(coarse_kept, name), getattr(fine, name).to(device)])
            for name in ("means", "log_scales", "quats", "opacity_logits", "sh")
        )
    )
    level = torch.cat([torch.zeros_like(kept), fine_level.to(device=device, dtype=torch.int64)])
    parent = torch.cat([kept, candidates[fine_parent.to(device)]])
    return MergeResult(gaussians=gaussians, level=level, parent=parent)
