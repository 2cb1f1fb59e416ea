"""Gaussian parameters as Adam-optimised tensors, and row surgery that keeps Adam's state
in step with them (what gsplat's `strategy/ops.py` does for its strategies).

The SH coefficients are two tensors, `sh0` (N, 1, 3) and `shN` (N, K-1, 3), so that the
base colour and the view-dependent terms get their own learning rates (3DGS, gsplat).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..gaussians import Gaussians
from .config import RefineConfig

NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")


class GaussianParams:
    """N trainable Gaussians, their Adam optimiser and a `trainable` row mask.

    Attributes:
        tensors: name -> (N, ...) leaf tensor with requires_grad (see `NAMES`; `shN` is
            absent at SH degree 0).
        optimizer: one Adam with a parameter group per tensor (group "name" = its key).
        trainable: (N,) bool; rows outside it never change (their gradients are zeroed
            before every step, so Adam's moments for them stay exactly 0 and so do their
            updates).
    """

    def __init__(self, gaussians: Gaussians, lrs: dict[str, float], trainable: Tensor) -> None:
        g = gaussians.detach()
        values = {
            "means": g.means, "log_scales": g.log_scales, "quats": g.quats,
            "opacity_logits": g.opacity_logits, "sh0": g.sh[:, :1], "sh1": g.sh[:, 1:],
        }  # fmt: skip
        values["shN"] = values.pop("sh1")
        if values["shN"].shape[1] == 0:
            del values["shN"]
        self.tensors = {k: v.clone().contiguous().requires_grad_(True) for k, v in values.items()}
        groups = [{"params": [t], "lr": lrs[k], "name": k} for k, t in self.tensors.items()]
        # eps: gsplat's (tiny gradients of far-away Gaussians still move them). The fused
        # kernel updates all six tensors in one pass (several times faster than the loop of
        # per-tensor ops on the CPU); older or unusual builds fall back to the plain one.
        try:
            self.optimizer = torch.optim.Adam(groups, eps=1e-15, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optimizer = torch.optim.Adam(groups, eps=1e-15)
        self.trainable = trainable.clone()

    def __len__(self) -> int:
        return self.tensors["means"].shape[0]

    def gaussians(self) -> Gaussians:
        """The current Gaussians (differentiable views of the tensors)."""
        t = self.tensors
        sh = t["sh0"] if "shN" not in t else torch.cat([t["sh0"], t["shN"]], dim=1)
        return Gaussians.unchecked(t["means"], t["log_scales"], t["quats"], t["opacity_logits"], sh)

    def snapshot(self) -> Gaussians:
        """A detached copy of the current Gaussians."""
        return self.gaussians().detach().clone()

    def step(self) -> None:
        """One Adam step; frozen rows' gradients are zeroed first."""
        frozen = ~self.trainable
        if bool(frozen.any()):
            for t in self.tensors.values():
                if t.grad is not None:
                    t.grad[frozen] = 0.0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, name: str, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if group["name"] == name:
                group["lr"] = lr

    def remap(self, keep: Tensor, new: dict[str, Tensor] | None = None,
              new_trainable: Tensor | None = None) -> None:  # fmt: skip
        """Rebuild every tensor as `cat([old[keep], new])`, Adam state alike.

        Args:
            keep: (M,) int64 rows of the current tensors, in the new order; an index may
                repeat (a clone carries its parent's Adam moments, as in gsplat).
            new: name -> (A, ...) appended rows (every name in `tensors`); their Adam
                moments start at zero (as gsplat does for split children).
            new_trainable: (A,) bool for the appended rows (default all True).
        """
        keep = keep.to(self.tensors["means"].device)
        added = 0 if new is None else int(new["means"].shape[0])
        for group in self.optimizer.param_groups:
            name = group["name"]
            old = group["params"][0]
            rows = [old.detach()[keep]]
            if added:
                rows.append(new[name].detach().to(old))
            param = torch.cat(rows).contiguous().requires_grad_(True)
            state = self.optimizer.state.pop(old, None)
            if state:
                for key, value in list(state.items()):
                    if isinstance(value, Tensor) and value.shape == old.shape:
                        zeros = value.new_zeros((added, *value.shape[1:]))
                        state[key] = torch.cat([value[keep], zeros]).contiguous()
                self.optimizer.state[param] = state
            group["params"] = [param]
            self.tensors[name] = param
        extra = torch.ones(added, dtype=torch.bool, device=keep.device)
        if new_trainable is not None:
            extra = new_trainable.to(device=keep.device, dtype=torch.bool)
        self.trainable = torch.cat([self.trainable[keep], extra])


def split_sh(g: Gaussians, degree_like: GaussianParams) -> dict[str, Tensor]:
    """Rows of `g` as the named tensors of `degree_like` (SH raised or cut to match)."""
    k = 1 + (degree_like.tensors["shN"].shape[1] if "shN" in degree_like.tensors else 0)
    degree = int(round(k**0.5)) - 1
    g = g.with_sh_degree(degree)
    out = {"means": g.means, "log_scales": g.log_scales, "quats": g.quats,
           "opacity_logits": g.opacity_logits, "sh0": g.sh[:, :1]}  # fmt: skip
    if "shN" in degree_like.tensors:
        out["shN"] = g.sh[:, 1:]
    return out


def learning_rates(cfg: RefineConfig, scene_scale: float) -> dict[str, float]:
    """Initial Adam rate per tensor name."""
    return {
        "means": cfg.means_lr * scene_scale, "log_scales": cfg.scales_lr,
        "quats": cfg.quats_lr, "opacity_logits": cfg.opacities_lr,
        "sh0": cfg.sh0_lr, "shN": cfg.shN_lr,
    }  # fmt: skip
