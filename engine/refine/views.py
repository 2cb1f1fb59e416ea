"""Which views do what: held-out views, views spread around the prop (farthest-point
sampling on camera centres) and the scene extent the learning rates scale with."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..cameras import Cameras
from .config import RefineConfig
from .errors import RefineError


def farthest_point_views(cameras: Cameras, k: int) -> Tensor:
    """(min(k, C),) int64 indices of cameras spread around the prop: greedy farthest-point
    sampling on the camera centres, starting from the camera farthest from their mean
    (deterministic), returned sorted."""
    if k < 1:
        raise RefineError(f"k must be >= 1, got {k}")
    centres = cameras.centers.to(torch.float64)
    c = len(centres)
    if k >= c:
        return torch.arange(c)
    first = int((centres - centres.mean(dim=0)).norm(dim=1).argmax())
    chosen = [first]
    dist = (centres - centres[first]).norm(dim=1)
    for _ in range(k - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (centres - centres[nxt]).norm(dim=1))
    return torch.tensor(sorted(chosen), dtype=torch.int64)


def holdout_indices(num_views: int, holdout: int | Sequence[int] | None,
                    cfg: RefineConfig) -> Tensor:  # fmt: skip
    """(H,) int64 held-out view indices.

    holdout: None: automatic (with at least `cfg.holdout_min_views` views, every
        `cfg.holdout_every`-th view, evenly spaced, at least one; none with fewer views);
        an int: that many views, evenly spaced (0: none); a sequence: those indices.
    Raises:
        RefineError: indices out of range or repeated, or fewer than one training view left.
    """
    if holdout is None:
        count = 0 if num_views < cfg.holdout_min_views else max(1, num_views // cfg.holdout_every)
        holdout = count
    if isinstance(holdout, bool) or not isinstance(holdout, (int, Sequence, Tensor)):
        raise RefineError(f"holdout must be None, a count or view indices, got {holdout!r}")
    if isinstance(holdout, int):
        if not 0 <= holdout < num_views:
            raise RefineError(f"holdout count must be in 0..{num_views - 1} for {num_views} "
                             f"views, got {holdout}")  # fmt: skip
        # Evenly spaced, offset by half a stride so a ring rig's first view trains.
        idx = ((torch.arange(holdout) + 0.5) * num_views / max(holdout, 1)).long()
        return idx.clamp_max(num_views - 1)
    idx = torch.as_tensor(list(holdout) if not isinstance(holdout, Tensor) else holdout,
                          dtype=torch.int64).flatten()  # fmt: skip
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_views):
        raise RefineError(f"holdout indices must be in 0..{num_views - 1}, got {idx.tolist()}")
    if idx.unique().numel() != idx.numel():
        raise RefineError(f"holdout indices repeat: {idx.tolist()}")
    if idx.numel() >= num_views:
        raise RefineError("holdout leaves no view to optimise on")
    return idx.sort().values


def scene_scale(cameras: Cameras) -> float:
    """gsplat's scene extent: 1.1 × the largest distance of a camera centre from their
    mean (at least 1e-3, so one camera or a tight cluster still gives a usable rate)."""
    centres = cameras.centers.to(torch.float64)
    return max(1.1 * float((centres - centres.mean(dim=0)).norm(dim=1).max()), 1e-3)
