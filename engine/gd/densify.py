"""The generative densification module: UP, SPLIT and HEAD over L levels (DESIGN.md §2).

Per level l (grid size g_l = g_1 / 2^(l-1)):

    serialize -> transformer blocks (patch attention) -> UP (R_l children)
      -> SPLIT (top c_l by a learned mask continue, the rest are leaves; none at the last level)
      -> HEAD (Gaussian parameters for the leaves; every point at the last level)

The module is backbone-agnostic: it takes positions and features of the
candidate Gaussians (and, for the residual head, their parameters) and returns
fine Gaussians with, for each, its level (1..L) and the index of the candidate
it descends from.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gaussians import Gaussians, rgb_to_sh_dc
from . import attention
from .attention import Block, DropPath, PatchLayout, fourier_features, patch_layout, rowwise
from .config import DensifyConfig
from .serialization import serialize


@dataclass
class FineGaussians:
    """Fine Gaussians from one forward pass of `GenerativeDensifier`.

    Attributes:
        gaussians: M fine Gaussians, level by level, children of a point in
            order of the point, points in candidate order.
        level: (M,) int64 in 1..L, the level that emitted each Gaussian.
        parent: (M,) int64 index of the candidate each Gaussian descends from.
        batch: (M,) int64 batch index (zeros when the input had none).
        keep_probs: per level with a SPLIT, (N_l,) mask probabilities p of the
            points after UP, for losses or statistics.
    """

    gaussians: Gaussians
    level: Tensor
    parent: Tensor
    batch: Tensor
    keep_probs: list[Tensor]


def grid_size_from_scales(log_scales: Tensor) -> float:
    """A level-1 grid size for Gaussians of unknown units: the median of their largest std-dev.

    Children move at most `offset_scale` grid cells, so this lets a candidate's
    children spread over about the candidate's own footprint.

    Args:
        log_scales: (N, 3).
    """
    if log_scales.numel() == 0:
        return 1.0
    return float(torch.exp(log_scales.detach().amax(dim=-1)).median())


def split_top_k(prob: Tensor, ratio: float, batch: Tensor) -> Tensor:
    """Mask of the ceil(ratio · n_b) most probable points of every batch element b.

    Ties are broken by index so the result does not depend on the sort backend.

    Args:
        prob: (N,) scores. ratio: in (0, 1]. batch: (N,) int64 batch index.
    Returns:
        (N,) bool, True for points that continue.
    """
    n = prob.numel()
    if ratio >= 1.0 or n == 0:
        return torch.ones(n, dtype=torch.bool, device=prob.device)
    counts = torch.bincount(batch)
    # Same rounding as config.continue_count (ceil robust to float noise).
    keep = torch.ceil(torch.round(counts.double() * ratio, decimals=6)).long()
    order = torch.sort(prob.detach(), descending=True, stable=True).indices
    order = order[torch.sort(batch[order], stable=True).indices]
    start = torch.cumsum(counts, 0) - counts
    sorted_batch = batch[order]
    rank = torch.arange(n, device=prob.device) - start[sorted_batch]
    mask = torch.zeros(n, dtype=torch.bool, device=prob.device)
    mask[order] = rank < keep[sorted_batch]
    return mask


class Upsample(nn.Module):
    """UP: every point spawns R children.

    Δx = s · tanh(MLP(f)) with s = offset_scale · grid size (children stay
    within the point's cell neighbourhood); Δf = MLP([γ(Δx / s), f]); child
    feature Linear(f) + Δf, child position x + Δx.

    γ takes Δx in units of s so the module works at any world scale; its
    frequencies π·2^(k-8), k = 0..14, span the same range of phases as the
    official code's 2^k applied to world-unit offsets of the object model.
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int,
                 num_frequencies: int = 15, offset_scale: float = 0.5,
                 drop_path: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.factor, self.offset_scale = factor, offset_scale
        self.in_norm = nn.LayerNorm(in_channels)
        self.delta_x = nn.Sequential(
            nn.Linear(in_channels, in_channels), nn.GELU(), nn.Linear(in_channels, 3 * factor)
        )
        self.register_buffer(
            "frequencies",
            math.pi * 2.0 ** (torch.arange(num_frequencies, dtype=torch.float32) - 8),
            persistent=False,
        )
        pe_dim = 6 * num_frequencies
        self.delta_f = nn.Sequential(
            nn.LayerNorm(pe_dim + in_channels, elementwise_affine=False),
            nn.Linear(pe_dim + in_channels, in_channels),
            nn.GELU(),
            nn.Linear(in_channels, out_channels),
        )
        self.skip = nn.Linear(in_channels, out_channels)
        self.drop_path = DropPath(drop_path)
        self.out_norm = nn.LayerNorm(out_channels)

    def forward(
        self, points: Tensor, feats: Tensor, grid_size: float, keep: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """points: (N, 3), feats: (N, C) -> child points (N·R, 3), child feats (N·R, C').

        keep: optional (N, R) drop-path mask of the children (`DropPath.sample` of
        N·R rows), so that evaluation in row chunks draws the same mask as one
        piece; drawn here when None.
        """
        r = self.factor
        if keep is None:
            keep = self.drop_path.sample(points.shape[0] * r, points.device)
        feats = self.in_norm(feats)
        s = self.offset_scale * grid_size
        unit = torch.tanh(self.delta_x(feats)).reshape(-1, 3)  # (N·R, 3) in [-1, 1]
        hidden = self.delta_f_input(fourier_features(unit, self.frequencies), feats)
        delta_f = self.delta_f[3](self.delta_f[2](hidden))
        child_x = points.repeat_interleave(r, dim=0) + s * unit
        child_f = self.skip(feats).repeat_interleave(r, dim=0) + self.drop_path.apply(delta_f, keep)
        return child_x, self.out_norm(child_f)

    def delta_f_input(self, pe: Tensor, feats: Tensor) -> Tensor:
        """`Linear(LayerNorm([pe, parent feats]))` of `delta_f`, without the concatenation.

        pe: (N·R, 6F) Fourier features of the children; feats: (N, C) of the parents.
        The parent's share of the sums and of the matmul is computed once per parent
        instead of once per child, and no (N·R, 6F + C) tensor is built (nor kept for
        the backward): LayerNorm(z) = (z - μ)·rstd, so W·LN(z) = (W z - μ·W 1)·rstd.
        """
        r = self.factor
        norm, lin = self.delta_f[0], self.delta_f[1]
        d = pe.shape[-1] + feats.shape[-1]
        w_pe, w_f = lin.weight[:, : pe.shape[-1]], lin.weight[:, pe.shape[-1] :]
        mean = (pe.sum(-1) + feats.sum(-1).repeat_interleave(r)) / d
        square = pe.square().sum(-1) + feats.square().sum(-1).repeat_interleave(r)
        var = (square / d - mean.square()).clamp_min(0.0)
        rstd = torch.rsqrt(var + norm.eps)
        proj = F.linear(pe, w_pe) + F.linear(feats, w_f).repeat_interleave(r, dim=0)
        return torch.addcmul(lin.bias, proj - mean[:, None] * lin.weight.sum(1), rstd[:, None])


class SplitMask(nn.Module):
    """SPLIT: p = σ(MLP(f)); the top fraction by p continues, the rest become leaves.

    Selection is not differentiable, so features pass through a straight-through
    estimator f' = (f - f·p).detach() + f·p: f' equals f in value, while the
    gradient of anything computed from f' reaches p (and the mask MLP).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, 1))

    def forward(self, feats: Tensor, ratio: float, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """feats: (N, C) -> (STE feats (N, C), continue mask (N,) bool, p (N,))."""
        prob = torch.sigmoid(self.net(feats)).squeeze(-1)
        keep = split_top_k(prob, ratio, batch)
        gated = feats * prob[:, None]
        return (feats - gated).detach() + gated, keep, prob


GATE_BIAS = -3.0
"""Initial logit of the colour gate: children start with 5% of the sampled colour, close
to a head without the gate (so a trained head without one continues smoothly)."""


class GaussianHead(nn.Module):
    """HEAD: features (plus optional per-child samples) -> raw Gaussian parameters.

    With `color_gate`, also a per-point gate logit (a separate linear layer, so the
    weights of a head without a gate load unchanged and the gate starts at `GATE_BIAS`).
    """

    def __init__(
        self, channels: int, sh_degree: int, extra: int = 0, color_gate: bool = False
    ) -> None:
        super().__init__()
        self.num_sh = (sh_degree + 1) ** 2
        self.net = nn.Sequential(
            nn.Linear(channels + extra, channels),
            nn.GELU(),
            nn.Linear(channels, 3 * self.num_sh + 8),
        )
        self.gate = None
        if color_gate:
            self.gate = nn.Linear(channels + extra, 1)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, GATE_BIAS)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """feats: (N, C) -> sh (N, K, 3), opacity (N,), log-scale (N, 3), quat (N, 4) offsets."""
        raw = self.net(feats)
        k = 3 * self.num_sh
        sh = raw[:, :k].reshape(-1, self.num_sh, 3)
        return sh, raw[:, k], raw[:, k + 1 : k + 4], raw[:, k + 4 : k + 8]

    def gate_weight(self, feats: Tensor) -> Tensor:
        """feats: (N, C) -> (N, 1) colour gate in (0, 1)."""
        return torch.sigmoid(self.gate(feats))


class Level(nn.Module):
    """Blocks, UP, optional SPLIT and HEAD of one level."""

    def __init__(
        self,
        cfg: DensifyConfig,
        index: int,
        drop_paths: list[float],
        out_channels: int,
    ) -> None:
        super().__init__()
        c = cfg.channels[index]
        self.index = index
        self.blocks = nn.ModuleList(
            Block(c, cfg.heads[index], cfg.patch_size, cfg.mlp_ratio, dp) for dp in drop_paths
        )
        self.up = Upsample(
            c,
            out_channels,
            cfg.upsample[index],
            cfg.num_frequencies,
            cfg.offset_scale,
            drop_paths[-1] if drop_paths else 0.0,
        )
        last = index == cfg.levels - 1
        self.ratio = 1.0 if last else cfg.continue_ratio[index]
        self.split = SplitMask(out_channels) if self.ratio < 1.0 else None
        # A level whose mask is off (ratio 1.0, not last) emits nothing: no head, so
        # that no parameter goes without a gradient.
        emits = last or self.split is not None
        self.head = (
            GaussianHead(out_channels, cfg.sh_degree, cfg.child_samples, cfg.color_gate)
            if emits
            else None
        )


@dataclass
class _PassContext:
    """What every UP and HEAD call of one `GenerativeDensifier.forward` shares."""

    grid_size: float
    parents: Gaussians | None
    child_sampler: Callable[[Tensor], Tensor] | None


class GenerativeDensifier(nn.Module):
    """Candidates (positions + features) -> fine Gaussians, in one forward pass.

    Args:
        cfg: hyper-parameters.
        in_channels: width of the candidate features given to `forward`.
    """

    def __init__(self, cfg: DensifyConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(in_channels, cfg.channels[0])
        total = sum(cfg.depths)
        # Official schedule: linear in [0, drop_path], largest at the first block.
        schedule = torch.linspace(0.0, cfg.drop_path, max(total, 1)).tolist()[::-1]
        self.levels = nn.ModuleList()
        start = 0
        for i in range(cfg.levels):
            dps = schedule[start : start + cfg.depths[i]]
            start += cfg.depths[i]
            out_c = cfg.channels[i + 1] if i + 1 < cfg.levels else cfg.channels[i]
            self.levels.append(Level(cfg, i, dps, out_c))
        self.register_buffer("identity_quat", torch.tensor([1.0, 0.0, 0.0, 0.0]), persistent=False)

    def _orders(self) -> list[str]:
        orders = list(self.cfg.orders)
        if self.training and self.cfg.shuffle_orders:
            orders = [orders[i] for i in torch.randperm(len(orders)).tolist()]
        return orders

    def forward(
        self,
        means: Tensor,
        feats: Tensor,
        parents: Gaussians | None = None,
        batch: Tensor | None = None,
        grid_size: float | None = None,
        child_sampler: Callable[[Tensor], Tensor] | None = None,
    ) -> FineGaussians:
        """Densify candidates.

        Args:
            means: (N, 3) candidate positions.
            feats: (N, in_channels) candidate features.
            parents: the N candidate Gaussians; required when `cfg.residual`.
            batch: optional (N,) int64 batch index (contiguous or not).
            grid_size: level-1 grid size; default `cfg.grid_size`, else derived
                from `parents`' scales.
            child_sampler: maps leaf positions (M, 3) to (M, cfg.child_samples)
                features for the HEAD (e.g. `view_features.ChildSampler`);
                required when `cfg.child_samples > 0`.
        """
        cfg = self.cfg
        n, device = means.shape[0], means.device
        grid_size, batch = self._check_inputs(means, feats, parents, batch, grid_size,
                                              child_sampler)  # fmt: skip
        ctx = _PassContext(grid_size, parents, child_sampler)
        x, f = means, self.in_proj(feats)
        root = torch.arange(n, device=device)
        # Per emitting level: (Gaussian fields, candidate index, batch index, level index).
        outs: list[tuple[tuple[Tensor, ...], Tensor, Tensor, int]] = []
        keep_probs: list[Tensor] = []
        for li, level in enumerate(self.levels):
            f = self._attend(level, x, f, grid_size / 2**li, batch)
            r = cfg.upsample[li]
            drop = level.up.drop_path.sample(x.shape[0] * r, device)
            drop = None if drop is None else drop.view(-1, r)
            if li == cfg.levels - 1:
                # Every point of the last level is a leaf: UP and HEAD run together, a
                # chunk of parents at a time, so the (N·R, C) child features (650 MB at
                # 100k candidates, and as much again for their gradient) never exist
                # whole; only the Gaussians do.
                size = max(1, attention.ROWWISE_CHUNK // r)
                up_emit = functools.partial(self._up_and_emit, ctx, li)
                fields = rowwise(up_emit, x, f, drop, root, size=size)
                root, batch = root.repeat_interleave(r), batch.repeat_interleave(r)
                outs.append((fields, root, batch, li))
                break
            x, f = rowwise(functools.partial(self._up, ctx, li), x, f, drop)
            root, batch = root.repeat_interleave(r), batch.repeat_interleave(r)
            if level.split is not None:
                f, keep, prob = level.split(f, level.ratio, batch)
                keep_probs.append(prob)
                leaf = ~keep
                xl, fl, rl = x[leaf], f[leaf], root[leaf]
                fields = rowwise(functools.partial(self._emit, ctx, li), xl, fl, rl)
                outs.append((fields, rl, batch[leaf], li))
                x, f, root, batch = x[keep], f[keep], root[keep], batch[keep]
            # else: a continue ratio of 1.0 disables the mask; all points continue

        gaussians = Gaussians.unchecked(
            *(torch.cat([fields[i] for fields, *_ in outs]) for i in range(len(_FIELDS)))
        )
        return FineGaussians(
            gaussians=gaussians,
            level=torch.cat([torch.full_like(rl, li + 1) for _, rl, _, li in outs]),
            parent=torch.cat([rl for _, rl, _, _ in outs]),
            batch=torch.cat([bl for _, _, bl, _ in outs]),
            keep_probs=keep_probs,
        )

    def _check_inputs(
        self,
        means: Tensor,
        feats: Tensor,
        parents: Gaussians | None,
        batch: Tensor | None,
        grid_size: float | None,
        child_sampler: Callable[[Tensor], Tensor] | None,
    ) -> tuple[float, Tensor]:
        """`forward`'s arguments checked: (the level-1 grid size, batch (N,) int64 on the
        means' device); ValueError for inputs that do not fit the config."""
        cfg = self.cfg
        n = means.shape[0]
        if feats.shape[0] != n:
            raise ValueError(f"{n} means but {feats.shape[0]} feature rows")
        if cfg.residual and parents is None:
            raise ValueError("the residual head needs the parent Gaussians")
        if (cfg.child_samples > 0) != (child_sampler is not None):
            raise ValueError("pass a child_sampler exactly when cfg.child_samples > 0")
        if grid_size is None:
            grid_size = cfg.grid_size
        if grid_size is None:
            if parents is None:
                raise ValueError("no grid size: set cfg.grid_size, pass grid_size or parents")
            grid_size = grid_size_from_scales(parents.log_scales)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.int64, device=means.device)
        return grid_size, batch.to(device=means.device, dtype=torch.int64)

    def _attend(self, level: Level, x: Tensor, f: Tensor, grid: float, batch: Tensor) -> Tensor:
        """The level's attention blocks over `x` (N, 3) serialized at `grid`: feats (N, C).

        Block b uses curve order b mod (number of orders); each order's patch layout is
        built once per level.
        """
        if not (len(level.blocks) and x.shape[0]):
            return f
        orders = self._orders()
        layouts: dict[str, PatchLayout] = {}
        for bi, block in enumerate(level.blocks):
            order = orders[bi % len(orders)]
            if order not in layouts:
                ser = serialize(x, grid, order, batch)
                layouts[order] = patch_layout(ser, self.cfg.patch_size, batch)
            f = block(f, x, grid, layouts[order])
        return f

    def _up(
        self, ctx: _PassContext, li: int, points: Tensor, feats: Tensor, child_keep: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """UP of level li for a chunk of points: child positions and features."""
        return self.levels[li].up(points, feats, ctx.grid_size / 2**li, child_keep)

    def _emit(
        self, ctx: _PassContext, li: int, points: Tensor, feats: Tensor, roots: Tensor
    ) -> tuple[Tensor, ...]:
        """HEAD of level li: positions (M, 3), feats (M, C), candidates (M,) -> the Gaussian
        fields (`_FIELDS`), with the child samples appended to the features first."""
        if ctx.child_sampler is not None:
            feats = torch.cat([feats, ctx.child_sampler(points.detach())], dim=1)
        head = self.levels[li].head
        g = self._gaussians(head, points, feats, roots, li, ctx.grid_size, ctx.parents)
        return tuple(getattr(g, name) for name in _FIELDS)

    def _up_and_emit(
        self,
        ctx: _PassContext,
        li: int,
        points: Tensor,
        feats: Tensor,
        child_keep: Tensor | None,
        roots: Tensor,
    ) -> tuple[Tensor, ...]:
        """UP then HEAD of level li (the last: every child is a leaf) for a chunk of parents."""
        child_x, child_f = self._up(ctx, li, points, feats, child_keep)
        return self._emit(ctx, li, child_x, child_f, roots.repeat_interleave(self.cfg.upsample[li]))

    def _gaussians(
        self,
        head: GaussianHead,
        x: Tensor,
        f: Tensor,
        root: Tensor,
        level: int,
        grid_size: float,
        parents: Gaussians | None,
    ) -> Gaussians:
        """HEAD outputs -> Gaussians, on the priors or residual on the parent candidate.

        With a colour gate, `f`'s last `cfg.child_samples` columns are the child samples
        (`ChildSampler`: mean input RGB first).
        """
        sh, opacity, log_scales, quats = head(f)
        if self.cfg.residual:
            p = parents.with_sh_degree(self.cfg.sh_degree)
            # Children are smaller than their parent: halve the scale per level, like the grid.
            sh = p.sh[root] + sh
            opacity = p.opacity_logits[root] + opacity
            log_scales = p.log_scales[root] - math.log(2.0) * (level + 1) + log_scales
            quats = p.rotations[root] + quats
        else:
            opacity = opacity + self.cfg.opacity_bias
            log_scales = log_scales + math.log(grid_size / self.cfg.scale_divisor)
            # Identity rotation at zero output keeps quaternions away from zero norm.
            quats = quats + self.identity_quat
        if head.gate is not None:
            # The DC coefficient that renders the views' mean colour at the child.
            seen = rgb_to_sh_dc(f[:, f.shape[1] - self.cfg.child_samples :][:, :3])
            dc = torch.lerp(sh[:, 0], seen, head.gate_weight(f))
            sh = torch.cat([dc[:, None], sh[:, 1:]], dim=1)
        return Gaussians.unchecked(x, log_scales, quats, opacity, sh)


_FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")
