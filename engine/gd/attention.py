"""Serialized patch attention (Point Transformer V3 style) in plain PyTorch.

Points are sorted along a space-filling curve (`serialization.py`) and cut into
patches of P consecutive points; each point attends only to its own patch, so
the cost is O(N·P) rather than O(N²). Each batch element is padded on its own
to a multiple of P, so patches never mix batch elements, and padded slots are
masked out as keys: real points never attend to padding, and their outputs do
not depend on what the padding holds.

PTv3's positional encoding is a sparse 3D convolution (spconv, CUDA only).
Here each block encodes every point's position relative to the centroid of its
patch, in units of the grid size, with Fourier features and a small MLP; the
result is added to the features before attention (a relative, conditional
positional encoding that runs anywhere PyTorch does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .serialization import Serialization

ROWWISE_CHUNK = 8192
"""Rows per chunk for per-point stages (blocks, UP, HEAD)."""

CHECKPOINT = True
"""With autograd on, every row-chunked stage (blocks, UP, HEAD) runs under
`torch.utils.checkpoint`, at any number of points: the backward recomputes a
chunk's activations instead of keeping them. The policy must not depend on N:
switched on only above 128k rows, it made training cost jump there (10k -> 100k
candidates took 15x the CPU time, the recomputation starting between the two).
Measured on the small preset, 1 thread (bench/results/densify.md): checkpointing
costs 20-30% more CPU time per forward+backward (10k candidates: 0.42 s vs 0.34 s)
and keeps 3.7-6.6x less memory (70 MiB vs 262 MiB; at 100k 402 MiB vs 2.6 GiB); both
settings are linear in N. Set it to False where memory is plentiful (small K)."""


def row_chunks(rows: tuple[Tensor | None, ...], size: int) -> list[tuple[Tensor | None, ...]]:
    """Split every tensor of `rows` (None passes through) into pieces of `size` rows.

    `torch.split` records one autograd node per tensor, whose backward concatenates
    the pieces' gradients: linear in the rows, unlike one slice node per piece.
    """
    n = next(r for r in rows if r is not None).shape[0]
    count = max(1, -(-n // size))
    split = [[None] * count if r is None else torch.split(r, size) for r in rows]
    return list(zip(*split, strict=True))


def cat_outputs(outs: list) -> Tensor | tuple[Tensor, ...]:
    """Concatenate the per-piece outputs of `row_chunks` (tensors or tuples of tensors)."""
    if isinstance(outs[0], Tensor):
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    if len(outs) == 1:
        return outs[0]
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


def rowwise(
    fn: Callable[..., Tensor | tuple[Tensor, ...]], *rows: Tensor | None, size: int | None = None
):
    """`fn(*rows)` evaluated in chunks of `size` rows (None rows pass through).

    size defaults to `ROWWISE_CHUNK`; a stage whose outputs have R rows per input
    row passes `ROWWISE_CHUNK // R`, so its temporaries stay chunk-sized.

    For stages that act on every point independently, chunking changes nothing
    but the size of the temporaries: at 100k candidates the last level's would
    be hundreds of MB each, and glibc serves blocks over 32 MB with fresh mmaps
    whose page faults then cost as much as the arithmetic. Chunk-sized blocks
    come from (and go back to) the heap, so only what autograd keeps (with
    `CHECKPOINT`, every chunk's inputs and outputs) and the concatenated outputs
    grow with N: memory and time are linear in the number of points, and the
    arithmetic per row is the same at every N.
    """
    size = max(1, ROWWISE_CHUNK if size is None else size)
    n = next(r for r in rows if r is not None).shape[0]
    if n <= size:
        # One piece; still through run_chunks, so that small inputs are checkpointed
        # like large ones and every row costs the same at any N.
        return run_chunks(fn, [rows])
    return run_chunks(fn, row_chunks(rows, size))


def run_chunks(fn: Callable, pieces: list[tuple[Tensor | None, ...]]):
    """`fn` on every piece, outputs concatenated; each piece checkpointed in training.

    With autograd on and `CHECKPOINT` set, every piece runs under
    `torch.utils.checkpoint` (non-reentrant): autograd keeps only the piece's
    inputs and output, and the backward recomputes the piece's activations, one
    piece at a time. That bounds the memory kept per row (at 100k candidates the
    activations would otherwise be ~3 GB, whose page faults cost more system time
    than the recomputation costs), and it applies at every N so that the cost per
    row does not change with N. `fn` must draw no random numbers (callers draw
    drop-path masks up front), so the recomputation repeats it exactly.

    Args:
        fn: maps one piece (tensors of the same row count, or None) to a tensor or a
            tuple of tensors with that row count.
        pieces: from `row_chunks` (or one tuple of whole tensors).
    """
    if CHECKPOINT and torch.is_grad_enabled():
        return cat_outputs([checkpoint(fn, *piece, use_reentrant=False) for piece in pieces])
    return cat_outputs([fn(*piece) for piece in pieces])


@dataclass(frozen=True)
class PatchLayout:
    """Where every point sits in the padded (num_patches, P) patch grid.

    Attributes:
        gather: (M,) int64, M = num_patches · P; point index for every slot
            (padding slots repeat a real point of the same patch, so gathered
            values stay finite; they are masked out of attention anyway).
        valid: (M,) bool; False for padding slots.
        slot: (N,) int64; slot of every point, so `padded[slot]` unpads.
        patch_size: P.
    """

    gather: Tensor
    valid: Tensor
    slot: Tensor
    patch_size: int

    @property
    def num_patches(self) -> int:
        return self.gather.numel() // self.patch_size

    @property
    def has_padding(self) -> bool:
        return self.gather.numel() != self.slot.numel()


def patch_layout(
    serialization: Serialization, patch_size: int, batch: Tensor | None = None
) -> PatchLayout:
    """Cut a serialized point set into patches of `patch_size` consecutive points.

    Args:
        serialization: the curve order (its `perm` sorts points by batch, then curve).
        patch_size: P > 0.
        batch: optional (N,) int batch index of every point (unsorted order).
    """
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    perm = serialization.perm
    n = perm.numel()
    device = perm.device
    if batch is None:
        counts = torch.tensor([n], device=device, dtype=torch.int64)
        sorted_batch = torch.zeros(n, device=device, dtype=torch.int64)
    else:
        sorted_batch = batch.to(torch.int64)[perm]
        counts = torch.bincount(sorted_batch)
    padded = (counts + patch_size - 1) // patch_size * patch_size
    start = torch.cumsum(counts, 0) - counts
    padded_start = torch.cumsum(padded, 0) - padded
    rank = torch.arange(n, device=device) - start[sorted_batch]
    sorted_slot = padded_start[sorted_batch] + rank
    m = int(padded.sum())
    valid = torch.zeros(m, dtype=torch.bool, device=device)
    valid[sorted_slot] = True
    gather = torch.zeros(m, dtype=torch.int64, device=device)
    gather[sorted_slot] = perm
    # Padding slots copy the patch's first point (every patch holds >= 1 real point).
    first = gather.view(-1, patch_size)[:, :1].expand(-1, patch_size).reshape(-1)
    gather = torch.where(valid, gather, first)
    slot = torch.empty_like(perm)
    slot[perm] = sorted_slot
    return PatchLayout(gather=gather, valid=valid, slot=slot, patch_size=patch_size)


def fourier_features(x: Tensor, frequencies: Tensor) -> Tensor:
    """[sin(ω x), cos(ω x)] for every frequency ω and coordinate.

    Args:
        x: (..., D). frequencies: (F,).
    Returns:
        (..., 2·F·D).
    """
    fx = (x[..., None, :] * frequencies[:, None]).flatten(-2)
    return torch.cat([torch.sin(fx), torch.cos(fx)], dim=-1)


class DropPath(nn.Module):
    """Stochastic depth per point: drops a residual branch for a random subset of rows.

    Surviving rows are scaled by 1/(1-p) so the expectation is unchanged; identity in eval.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def sample(self, rows: int, device: torch.device | str) -> Tensor | None:
        """(rows,) bool keep mask for `apply`, drawn as `forward` draws it; None when identity."""
        if not self.training or self.p == 0.0:
            return None
        return torch.rand(rows, device=device) >= self.p

    def apply(self, x: Tensor, keep: Tensor | None) -> Tensor:
        """x with the rows where `keep` is False dropped (keep: from `sample`, or None)."""
        if keep is None:
            return x
        return x * keep.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) / (1.0 - self.p)

    def forward(self, x: Tensor) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], x.device))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchPositionEncoding(nn.Module):
    """Position of every point relative to its patch centroid, in grid cells, through an MLP.

    `u = (x - centroid) / (grid_size · extent)`, extent = P^(1/3) cells being
    about the half-width of a patch of P points on a surface-filling grid, so
    typical |u| <= 1; Fourier features of u (frequencies π·2^k) and u itself
    go through Linear-GELU-Linear to C channels. u is clamped to [-4, 4]: in
    sparse sets a patch can span far more cells, and the exact distance of a
    far point matters little (PTv3's relative encoding clamps likewise).
    """

    def __init__(self, channels: int, patch_size: int, num_frequencies: int = 4) -> None:
        super().__init__()
        self.extent = float(patch_size) ** (1.0 / 3.0)
        self.register_buffer(
            "frequencies", math.pi * 2.0 ** torch.arange(num_frequencies), persistent=False
        )
        in_dim = 3 + 6 * num_frequencies
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, channels), nn.GELU(), nn.Linear(channels, channels)
        )

    def forward(self, points: Tensor, grid_size: float, layout: PatchLayout) -> Tensor:
        """points: (N, 3) -> (N, C)."""
        padded = points.detach()[layout.gather]
        return self.padded(padded, layout.valid, grid_size, layout.patch_size)[layout.slot]

    def padded(self, points: Tensor, valid: Tensor, grid_size: float, patch_size: int) -> Tensor:
        """Encoding of whole patches in slot order: points (m·P, 3), valid (m·P,) -> (m·P, C)."""
        p = patch_size
        x = points.view(-1, p, 3)
        w = valid.view(-1, p, 1).to(x.dtype)
        centroid = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
        u = ((x - centroid) / (grid_size * self.extent)).clamp(-4.0, 4.0).reshape(-1, 3)
        return self.mlp(torch.cat([u, fourier_features(u, self.frequencies)], dim=-1))


class SerializedAttention(nn.Module):
    """Multi-head self-attention within patches, via `F.scaled_dot_product_attention`."""

    def __init__(self, channels: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by heads {num_heads}")
        self.channels, self.num_heads = channels, num_heads
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, feats: Tensor, layout: PatchLayout) -> Tensor:
        """feats: (N, C) -> (N, C), each point attending to the real points of its patch."""
        c, h, p = self.channels, self.num_heads, layout.patch_size
        # Project before gathering so padding slots cost no matmul.
        qkv = self.qkv(feats)[layout.gather].view(-1, p, 3, h, c // h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (num_patches, H, P, C/H)
        mask = layout.valid.view(-1, 1, 1, p) if layout.has_padding else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(-1, c)[layout.slot]
        return self.proj(out)

    def padded(self, feats: Tensor, valid: Tensor | None, patch_size: int) -> Tensor:
        """Attention of whole patches in slot order: feats (m·P, C) -> (m·P, C).

        valid: (m·P,) bool key mask, or None when no slot is padding.
        """
        c, h, p = self.channels, self.num_heads, patch_size
        qkv = self.qkv(feats).view(-1, p, 3, h, c // h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = None if valid is None else valid.view(-1, 1, 1, p)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(-1, c))


class Block(nn.Module):
    """Pre-norm transformer block: positional encoding, patch attention, MLP, drop-path."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.pos = PatchPositionEncoding(channels, patch_size)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = SerializedAttention(channels, num_heads)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels)
        )
        self.drop_path = DropPath(drop_path)

    def forward(
        self, feats: Tensor, points: Tensor, grid_size: float, layout: PatchLayout
    ) -> Tensor:
        """feats: (N, C), points: (N, 3) -> (N, C).

        The block runs on the padded patch grid (slot order), a chunk of whole
        patches at a time, so that no temporary, in the forward or in the
        backward, is larger than a chunk: see `rowwise`. Padding slots repeat a
        real point; their rows are computed and dropped, and as attention keys
        they are masked out. Drop-path masks are drawn per point up front, in
        the order the one-piece block drew them.
        """
        n, p = feats.shape[0], layout.patch_size
        keep_attn = self.drop_path.sample(n, feats.device)
        keep_mlp = self.drop_path.sample(n, feats.device)
        gather = layout.gather
        rows = (
            feats[gather],
            points.detach()[gather],
            layout.valid,
            None if keep_attn is None else keep_attn[gather],
            None if keep_mlp is None else keep_mlp[gather],
        )
        has_padding = layout.has_padding
        size = max(1, ROWWISE_CHUNK // p) * p

        def run(f, x, valid, k_attn, k_mlp):
            f = f + self.pos.padded(x, valid, grid_size, p)
            a = self.attn.padded(self.norm1(f), valid if has_padding else None, p)
            f = f + self.drop_path.apply(a, k_attn)
            return f + self.drop_path.apply(self.mlp(self.norm2(f)), k_mlp)

        return run_chunks(run, row_chunks(rows, size))[layout.slot]
