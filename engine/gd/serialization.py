"""Point serialization along space-filling curves (Point Transformer V3 style).

Points are quantised to a grid, each cell gets a code along a space-filling
curve (z-order or Hilbert, optionally with x and y swapped), and sorting by the
code gives an order in which consecutive points are spatial neighbours. The
attention in `attention.py` then runs inside patches of consecutive points.

Conventions:
    grid coordinates  (N, 3) int64, each in [0, 2**depth)
    codes             (N,)   int64; within a 3-bit group x is the most
                             significant bit, z the least. Batch-aware codes
                             put the batch index above the 3·depth curve bits.

Everything is vectorised over points; the only Python loops run over bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ORDERS: tuple[str, ...] = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16
"""Bits per axis. 3 · 16 = 48 curve bits leave 15 bits of an int64 for the batch index."""


# ---------------------------------------------------------------------------- quantisation
def grid_coordinates(points: Tensor, grid_size: float, origin: Tensor | None = None) -> Tensor:
    """Integer cell of every point.

    Args:
        points: (N, 3) float positions.
        grid_size: cell edge length (> 0), in the units of `points`.
        origin: (3,) corner of cell (0, 0, 0); defaults to the per-axis minimum
            of `points`, which makes every coordinate non-negative.
    Returns:
        (N, 3) int64 cell indices.
    """
    if grid_size <= 0:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    if origin is None:
        origin = points.detach().amin(dim=0) if len(points) else points.new_zeros(3)
    return torch.floor((points.detach() - origin) / grid_size).to(torch.int64)


def depth_for(grid: Tensor) -> int:
    """Smallest depth (bits per axis, at least 1) that holds every coordinate of `grid`."""
    if grid.numel() == 0:
        return 1
    top = int(grid.max())
    if int(grid.min()) < 0:
        raise ValueError("grid coordinates must be non-negative")
    depth = max(1, top.bit_length())
    if depth > MAX_DEPTH:
        raise ValueError(
            f"grid needs {depth} bits per axis (max {MAX_DEPTH}); use a coarser grid size"
        )
    return depth


# ---------------------------------------------------------------------------- curve codes
def _spread_bits(v: Tensor) -> Tensor:
    """Insert two zero bits between the low 21 bits of `v` (int64): b2 b1 b0 -> b2 0 0 b1 0 0 b0."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def _interleave(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Bit-interleave three int64 tensors, `a` taking the most significant bit of each group."""
    return (_spread_bits(a) << 2) | (_spread_bits(b) << 1) | _spread_bits(c)


def z_order_encode(grid: Tensor, depth: int = MAX_DEPTH) -> Tensor:
    """Morton (z-order) codes.

    Args:
        grid: (N, 3) non-negative integer coordinates below 2**depth.
        depth: bits per axis, 1..16.
    Returns:
        (N,) int64 codes in [0, 8**depth).
    """
    _check_depth(depth)
    g = grid.to(torch.int64)
    return _interleave(g[:, 0], g[:, 1], g[:, 2])


def hilbert_encode(grid: Tensor, depth: int = MAX_DEPTH) -> Tensor:
    """Hilbert codes (Skilling's transpose algorithm, "Programming the Hilbert curve", 2004).

    The axis taken as most significant is x, so the codes equal those of the
    `hilbertcurve` package for points given as (x, y, z) with p = depth.

    Args:
        grid: (N, 3) non-negative integer coordinates below 2**depth.
        depth: bits per axis, 1..16.
    Returns:
        (N,) int64 codes in [0, 8**depth); consecutive codes are face-adjacent cells.
    """
    _check_depth(depth)
    x = [grid[:, i].to(torch.int64).clone() for i in range(3)]
    m = 1 << (depth - 1)
    # Inverse undo: walk the bits from the top, turning each sub-cube into the
    # canonical orientation. The updates of x[0] are sequential in i, as in the
    # scalar algorithm, so they are applied one axis at a time.
    q = m
    while q > 1:
        p = q - 1
        for i in range(3):
            bit_set = (x[i] & q) != 0
            if i == 0:
                x[0] = torch.where(bit_set, x[0] ^ p, x[0])
                continue
            t = (x[0] ^ x[i]) & p
            x[0] = torch.where(bit_set, x[0] ^ p, x[0] ^ t)
            x[i] = torch.where(bit_set, x[i], x[i] ^ t)
        q >>= 1
    # Gray encode.
    x[1] = x[1] ^ x[0]
    x[2] = x[2] ^ x[1]
    t = torch.zeros_like(x[0])
    q = m
    while q > 1:
        t = torch.where((x[2] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x = [xi ^ t for xi in x]
    # The "transposed" Hilbert index is the bit-interleave of the three words.
    return _interleave(x[0], x[1], x[2])


def encode(
    grid: Tensor, order: str = "z", depth: int = MAX_DEPTH, batch: Tensor | None = None
) -> Tensor:
    """Serialization code of every cell for one of `ORDERS`.

    "-trans" variants swap x and y before encoding (PTv3's convention), giving a
    curve that runs the other way through the same cells.

    Args:
        grid: (N, 3) non-negative int coordinates below 2**depth.
        order: one of "z", "z-trans", "hilbert", "hilbert-trans".
        depth: bits per axis.
        batch: optional (N,) non-negative int batch index, stored above the
            curve bits so that sorting groups points by batch element first.
    Returns:
        (N,) int64 codes.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")
    if order.endswith("-trans"):
        grid = grid[:, [1, 0, 2]]
    code = z_order_encode(grid, depth) if order.startswith("z") else hilbert_encode(grid, depth)
    if batch is not None:
        batch = batch.to(torch.int64)
        if batch.numel():
            top = int(batch.max())
            if int(batch.min()) < 0 or 3 * depth + top.bit_length() > 63:
                raise ValueError(
                    f"batch indices up to {top} do not fit above {3 * depth} code bits"
                )
        code = (batch << (3 * depth)) | code
    return code


def _check_depth(depth: int) -> None:
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in 1..{MAX_DEPTH}, got {depth}")


# ---------------------------------------------------------------------------- ordering
def inverse_permutation(perm: Tensor) -> Tensor:
    """`inv` with `inv[perm[i]] == i`, so `x[perm][inv] == x`. perm: (N,) int64."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm), device=perm.device, dtype=perm.dtype)
    return inv


def sort_codes(code: Tensor, points: Tensor | None = None) -> Tensor:
    """Permutation that sorts `code` ascending.

    Points sharing a cell share a code; their relative order would otherwise
    follow the input order, which would make the patches (and so the module's
    output) depend on how the caller ordered the points. Passing `points`
    breaks ties by the exact positions (lexicographic x, y, z), so the order
    is a function of the point set alone (exact duplicates aside).

    Args:
        code: (N,) int64.
        points: optional (N, 3) float positions for tie-breaking.
    Returns:
        (N,) int64 permutation.
    """
    if points is None:
        return torch.sort(code, stable=True).indices
    # Least significant key first; every sort is stable so earlier keys survive.
    perm = torch.sort(points[:, 2].detach(), stable=True).indices
    for key in (points[:, 1].detach(), points[:, 0].detach(), code):
        perm = perm[torch.sort(key[perm], stable=True).indices]
    return perm


@dataclass(frozen=True)
class Serialization:
    """One serialization order of a point set.

    Attributes:
        order: curve name.
        code: (N,) int64 codes (batch index in the high bits when batched).
        perm: (N,) int64; `x[perm]` is `x` in curve order.
        inverse: (N,) int64; `y[inverse]` undoes the permutation.
    """

    order: str
    code: Tensor
    perm: Tensor
    inverse: Tensor


def serialize(
    points: Tensor,
    grid_size: float,
    order: str = "z",
    batch: Tensor | None = None,
    depth: int | None = None,
    origin: Tensor | None = None,
) -> Serialization:
    """Quantise `points` (N, 3) to `grid_size` cells and order them along a curve.

    Args:
        points: (N, 3) float positions.
        grid_size: cell edge length.
        order: one of `ORDERS`.
        batch: optional (N,) int batch index; points of one batch element end
            up contiguous, batch elements in ascending order.
        depth: bits per axis; by default the smallest that holds the grid. A
            grid wider than 2**16 cells (a splat file with a far-flung
            background, say) is coarsened to 16 bits for ordering only: points
            sharing a coarsened cell are then ordered by position.
        origin: (3,) grid origin; default the per-axis minimum over all points.
    """
    grid = grid_coordinates(points, grid_size, origin)
    if depth is None:
        bits = max(1, int(grid.max()).bit_length()) if grid.numel() else 1
        if bits > MAX_DEPTH:
            grid = grid >> (bits - MAX_DEPTH)
        depth = min(bits, MAX_DEPTH)
    code = encode(grid, order, depth, batch)
    perm = sort_codes(code, points)
    return Serialization(order=order, code=code, perm=perm, inverse=inverse_permutation(perm))
