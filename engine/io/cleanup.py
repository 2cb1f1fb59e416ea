"""Clean-up before export: pure functions on `Gaussians` (the input is never modified).

Each filter returns the kept Gaussians and the kept indices into its input (int64, sorted),
so callers can carry per-Gaussian extras along. `clean` chains them in the order
opacity -> crop -> SH cap and returns indices into the original set.

A result may hold zero Gaussians; writing it is the writer's business (.ply, .spz, .splat
and .compressed.ply hold zero Gaussians, glTF cannot and its writer says so).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from ..gaussians import MAX_SH_DEGREE, Gaussians

__all__ = ["cap_sh_degree", "clean", "crop_to_box", "drop_transparent"]


def _take(gaussians: Gaussians, keep: Tensor) -> tuple[Gaussians, Tensor]:
    kept = keep.nonzero().flatten()
    return gaussians[kept], kept


def drop_transparent(gaussians: Gaussians, min_opacity: float) -> tuple[Gaussians, Tensor]:
    """Keep the Gaussians whose opacity sigmoid(logit) is >= `min_opacity`, in [0, 1).

    0 keeps every Gaussian (opacities are in (0, 1)).
    """
    if (
        isinstance(min_opacity, bool)
        or not isinstance(min_opacity, numbers.Real)
        or not 0.0 <= float(min_opacity) < 1.0
    ):
        raise ValueError(f"min_opacity must be a number in [0, 1), got {min_opacity!r}")
    opacity = torch.sigmoid(gaussians.opacity_logits.detach().to(torch.float64))
    return _take(gaussians, opacity >= float(min_opacity))


def _box_corner(name: str, value: Sequence[float] | Tensor) -> Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}") from None
    if tuple(t.shape) != (3,) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    return t


def crop_to_box(
    gaussians: Gaussians, crop_min: Sequence[float] | Tensor, crop_max: Sequence[float] | Tensor
) -> tuple[Gaussians, Tensor]:
    """Keep the Gaussians whose means lie inside the box [crop_min, crop_max] (inclusive).

    crop_min, crop_max: (3,) corners in the Gaussians' own (engine Z-up world) coordinates;
    crop_min <= crop_max on every axis (a flat box is allowed).
    """
    lo, hi = _box_corner("crop_min", crop_min), _box_corner("crop_max", crop_max)
    if bool((lo > hi).any()):
        raise ValueError(
            f"crop_min must be <= crop_max on every axis, got {lo.tolist()} > {hi.tolist()}"
        )
    means = gaussians.means.detach().to(torch.float64)
    lo, hi = lo.to(means.device), hi.to(means.device)
    return _take(gaussians, ((means >= lo) & (means <= hi)).all(dim=1))


def cap_sh_degree(gaussians: Gaussians, max_sh_degree: int) -> Gaussians:
    """Drop SH bands above `max_sh_degree` (0..3); a lower degree is kept as it is."""
    if (
        isinstance(max_sh_degree, bool)
        or not isinstance(max_sh_degree, numbers.Integral)
        or not 0 <= max_sh_degree <= MAX_SH_DEGREE
    ):
        raise ValueError(
            f"max_sh_degree must be an integer in 0..{MAX_SH_DEGREE}, got {max_sh_degree!r}"
        )
    degree = min(int(max_sh_degree), gaussians.sh_degree)
    return gaussians.with_sh_degree(degree).clone()


def clean(
    gaussians: Gaussians,
    *,
    min_opacity: float | None = None,
    max_sh_degree: int | None = None,
    crop_min: Sequence[float] | Tensor | None = None,
    crop_max: Sequence[float] | Tensor | None = None,
) -> tuple[Gaussians, Tensor]:
    """Apply the given clean-ups (None skips one); returns (Gaussians, kept indices).

    crop_min and crop_max come together. Every argument is checked before any work.
    """
    if (crop_min is None) != (crop_max is None):
        raise ValueError("give both crop_min and crop_max, or neither")
    # Check all arguments up front on an empty set (cheap), so no half-done work is wasted.
    probe = Gaussians.empty(device=gaussians.device, dtype=gaussians.dtype)
    if min_opacity is not None:
        drop_transparent(probe, min_opacity)
    if crop_min is not None:
        crop_to_box(probe, crop_min, crop_max)
    if max_sh_degree is not None:
        cap_sh_degree(probe, max_sh_degree)

    g = gaussians
    kept = torch.arange(len(g), device=g.device)
    if min_opacity is not None:
        g, idx = drop_transparent(g, min_opacity)
        kept = kept[idx]
    if crop_min is not None:
        g, idx = crop_to_box(g, crop_min, crop_max)
        kept = kept[idx]
    if max_sh_degree is not None:
        g = cap_sh_degree(g, max_sh_degree)
    if g is gaussians:
        g = gaussians.clone()
    return g, kept
