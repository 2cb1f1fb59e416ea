"""Densification during refinement: accumulate view-space gradients, prune, then grow by
3DGS clone/split (gsplat's DefaultStrategy, the baseline) or by the learned GD module.

Candidates are picked with `engine.gd.gradient_mask.select_top_k`, the selector the
feed-forward model uses, over gradients accumulated from the training renders themselves
(no extra render), averaged over the views each Gaussian was visible in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..gd.gradient_mask import select_top_k
from ..rotations import quaternion_to_matrix
from .config import RefineConfig
from .params import GaussianParams, split_sh


class GradientStats:
    """Running sums of each Gaussian's view-space positional gradient norm.

    Gradients are normalised like gsplat's (pixel gradient × image half-size × views in
    the batch), so `RefineConfig.grad_threshold` means what gsplat's grow_grad2d means.
    """

    def __init__(self, n: int, device: torch.device) -> None:
        self.total = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)

    def add(self, grad: Tensor, visible: Tensor, width: int, height: int) -> None:
        """grad: (C, N, 2) dL/d(means2d) of one batch; visible: (C, N) bool."""
        c = grad.shape[0]
        scale = grad.new_tensor([width / 2 * c, height / 2 * c])
        norms = (grad * scale).norm(dim=-1) * visible
        self.total += norms.sum(0)
        self.count += visible.sum(0)

    def mean(self) -> Tensor:
        """(N,) mean normalised gradient over the views each Gaussian was seen in."""
        return self.total / self.count.clamp_min(1)


@dataclass
class DensifyStats:
    """What one densification did (counts of Gaussians)."""

    pruned: int = 0
    cloned: int = 0
    split: int = 0
    learned_candidates: int = 0
    learned_added: int = 0


def prune(params: GaussianParams, cfg: RefineConfig, scene_scale: float) -> Tensor:
    """Remove trainable Gaussians that are nearly transparent (opacity < prune_opacity) or
    oversized (largest scale > prune_scale · scene_scale). Returns the (N,) bool mask of
    the rows kept (in their order, the rows of the pruned set)."""
    with torch.no_grad():
        t = params.tensors
        opacity = torch.sigmoid(t["opacity_logits"])
        largest = t["log_scales"].amax(dim=1).exp()
        bad = (opacity < cfg.prune_opacity) | (largest > cfg.prune_scale * scene_scale)
        bad &= params.trainable
    if bool(bad.any()):
        params.remap((~bad).nonzero().flatten())
    return ~bad


def grow_candidates(params: GaussianParams, scores: Tensor, cfg: RefineConfig,
                    threshold: float, room: int) -> Tensor:  # fmt: skip
    """(N,) bool: trainable Gaussians whose mean gradient exceeds `threshold`, at most
    `grow_fraction` of the trainable ones and at most `room`, highest first."""
    eligible = params.trainable & (scores > threshold)
    k = min(room, math.floor(cfg.grow_fraction * int(params.trainable.sum())))
    return select_top_k(scores, max(k, 0), eligible)


def clone_and_split(params: GaussianParams, selected: Tensor, cfg: RefineConfig,
                    scene_scale: float, generator: torch.Generator) -> tuple[int, int]:  # fmt: skip
    """3DGS growth of the `selected` (N,) rows: small ones are cloned (the copy keeps the
    parent's Adam moments), large ones are split into 2 children sampled from the parent's
    Gaussian with scales / split_scale_divisor (fresh moments), replacing the parent.
    Returns (cloned, split)."""
    t = params.tensors
    with torch.no_grad():
        largest = t["log_scales"].amax(dim=1).exp()
        small = largest <= cfg.small_scale * scene_scale
        clone_idx = (selected & small).nonzero().flatten()
        split_idx = (selected & ~small).nonzero().flatten()
        n = len(params)
        keep_mask = torch.ones(n, dtype=torch.bool, device=selected.device)
        keep_mask[split_idx] = False
        keep = torch.cat([keep_mask.nonzero().flatten(), clone_idx])
        new = None
        if split_idx.numel():
            scales = t["log_scales"][split_idx].exp()
            rot = quaternion_to_matrix(t["quats"][split_idx])
            noise = torch.randn((2, split_idx.numel(), 3), generator=generator,
                                device=scales.device, dtype=scales.dtype)  # fmt: skip
            offsets = torch.einsum("nij,bnj->bni", rot, noise * scales)  # (2, S, 3)
            new = {name: t[name][split_idx].repeat(2, *([1] * (t[name].ndim - 1)))
                   for name in t}  # fmt: skip
            new["means"] = (t["means"][split_idx][None] + offsets).reshape(-1, 3)
            new["log_scales"] = (scales / cfg.split_scale_divisor).log().repeat(2, 1)
    params.remap(keep, new)
    return int(clone_idx.numel()), int(split_idx.numel())


def learned_densify(params: GaussianParams, selected: Tensor, model: Any, images: Tensor,
                    cameras: Any, budget: int) -> tuple[int, int]:  # fmt: skip
    """Replace the `selected` (N,) rows by the children the model's GD module makes of them
    (`model.densify(..., select=selected, budget=budget)`); unselected rows keep their
    values and Adam moments, children start with fresh moments. `images`/`cameras` are
    views the model accepts (at most its max_views, square). Returns (candidates densified,
    net Gaussians added)."""
    g = params.snapshot()
    n = len(g)
    rec = model.densify(g.to("cpu"), images.cpu(), cameras.to("cpu"), select=selected.cpu(),
                        budget=max(1, budget))  # fmt: skip
    level, parent = rec.level, rec.parent
    kept = level == 0
    # densify() returns the unselected input rows first, in order, bit for bit, then the fine
    # ones; rebuild from the parameters themselves so the kept rows stay exactly ours.
    keep = parent[kept].to(selected.device)
    fine = rec.gaussians[~kept]
    new = {k: v.to(params.tensors["means"]) for k, v in split_sh(fine, params).items()}
    # With a budget the model may densify only the strongest of the selected rows.
    candidates = n - int(kept.sum())
    params.remap(keep, new)
    return candidates, len(fine) - candidates
