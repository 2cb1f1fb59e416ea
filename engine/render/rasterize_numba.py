"""CPU tile rasteriser: numba kernels with a hand-written backward pass.

The algorithm is the one of 3DGS: Gaussians are sorted by depth once, binned
into 16×16-pixel tiles (each tile's list inherits the global depth order), and
every pixel walks its tile's list front to back, stopping as soon as its
transmittance would fall below 1e-4. Tiles are spread over the threads in an
interleaved way so the busy centre of the image does not land on one thread.

The backward pass walks the same lists back to front (recovering the
transmittance by division, as 3DGS does) and writes each pixel's gradient
contributions into a buffer indexed by the (tile, Gaussian) pair. A pair
belongs to exactly one tile and a tile to exactly one thread, so there are no
write races and no per-thread copies of the gradients; a final serial pass
sums the pairs into per-Gaussian gradients.

Only the screen-space stage lives here; projection and SH are differentiable
PyTorch (see `projection.py`).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
# Binning pads each box by this many pixels so float rounding in the box never
# drops a pixel the kernel's own alpha test would keep; extra pixels cost a test each.
BOX_MARGIN = 1e-3


@njit(cache=True, nogil=True)
def _bin_tiles(means2d, extents, order, tile, tiles_x, tiles_y, width, height):  # pragma: no cover
    """Tile lists in depth order: returns (offsets (T+1,), ids (P,)) for T tiles, P pairs."""
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_tiles + 1, np.int64)
    boxes = np.empty((order.size, 4), np.int64)
    for j in range(order.size):
        g = order[j]
        ex = extents[g, 0] + BOX_MARGIN
        ey = extents[g, 1] + BOX_MARGIN
        # Pixels whose centres (u + 0.5) fall inside [m - e, m + e].
        px0 = max(0, int(math.ceil(means2d[g, 0] - ex - 0.5)))
        px1 = min(width - 1, int(math.floor(means2d[g, 0] + ex - 0.5)))
        py0 = max(0, int(math.ceil(means2d[g, 1] - ey - 0.5)))
        py1 = min(height - 1, int(math.floor(means2d[g, 1] + ey - 0.5)))
        if px0 > px1 or py0 > py1:
            boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3] = 1, 0, 1, 0  # empty range
            continue
        boxes[j, 0] = px0 // tile
        boxes[j, 1] = px1 // tile
        boxes[j, 2] = py0 // tile
        boxes[j, 3] = py1 // tile
        for ty in range(boxes[j, 2], boxes[j, 3] + 1):
            for tx in range(boxes[j, 0], boxes[j, 1] + 1):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    ids = np.empty(offsets[-1], np.int64)
    fill = offsets[:-1].copy()
    for j in range(order.size):
        g = order[j]
        for ty in range(boxes[j, 2], boxes[j, 3] + 1):
            for tx in range(boxes[j, 0], boxes[j, 1] + 1):
                t = ty * tiles_x + tx
                ids[fill[t]] = g
                fill[t] += 1
    return offsets, ids


@njit(cache=True, nogil=True, inline="always")
def _mahalanobis_half(conics, g, dx, dy):  # pragma: no cover
    """sigma = ½ dᵀ Σ⁻¹ d for offset d = (dx, dy) from Gaussian g's centre."""
    return 0.5 * (conics[g, 0] * dx * dx + conics[g, 2] * dy * dy) + conics[g, 1] * dx * dy


@njit(cache=True, parallel=True, nogil=True)
def _forward_kernel(
    means2d,
    conics,
    colors,
    opacities,
    offsets,
    ids,
    tile,
    tiles_x,
    width,
    height,
    n_parts,
    out_acc,
    out_alpha,
    out_t,
    out_last,
):  # pragma: no cover
    n_tiles = offsets.size - 1
    n_ch = colors.shape[1]
    for part in prange(n_parts):
        for t in range(part, n_tiles, n_parts):
            start, end = offsets[t], offsets[t + 1]
            ty, tx = t // tiles_x, t % tiles_x
            for py in range(ty * tile, min(height, ty * tile + tile)):
                for px in range(tx * tile, min(width, tx * tile + tile)):
                    cx = px + 0.5
                    cy = py + 0.5
                    trans = 1.0
                    last = start
                    for k in range(start, end):
                        g = ids[k]
                        dx = means2d[g, 0] - cx
                        dy = means2d[g, 1] - cy
                        sigma = _mahalanobis_half(conics, g, dx, dy)
                        if sigma < 0.0:
                            continue
                        alpha = min(ALPHA_MAX, opacities[g] * math.exp(-sigma))
                        if alpha < ALPHA_MIN:
                            continue
                        next_t = trans * (1.0 - alpha)
                        if next_t < T_MIN:
                            break
                        w = alpha * trans
                        for ch in range(n_ch):
                            out_acc[py, px, ch] += w * colors[g, ch]
                        trans = next_t
                        last = k + 1
                    out_alpha[py, px] = 1.0 - trans
                    out_t[py, px] = trans
                    out_last[py, px] = last


@njit(cache=True, parallel=True, nogil=True)
def _backward_kernel(
    means2d,
    conics,
    colors,
    opacities,
    offsets,
    ids,
    tile,
    tiles_x,
    width,
    height,
    n_parts,
    pix_t,
    pix_last,
    grad_acc,
    grad_alpha,
    pair_means2d,
    pair_conics,
    pair_colors,
    pair_opacities,
    pair_abs,
):  # pragma: no cover
    n_tiles = offsets.size - 1
    n_ch = colors.shape[1]
    rest = np.empty((n_parts, n_ch))
    for part in prange(n_parts):
        for t in range(part, n_tiles, n_parts):
            start = offsets[t]
            ty, tx = t // tiles_x, t % tiles_x
            for py in range(ty * tile, min(height, ty * tile + tile)):
                for px in range(tx * tile, min(width, tx * tile + tile)):
                    last = pix_last[py, px]
                    if last == start:
                        continue
                    cx = px + 0.5
                    cy = py + 0.5
                    t_final = pix_t[py, px]
                    trans = t_final
                    g_alpha_out = grad_alpha[py, px]
                    for ch in range(n_ch):
                        rest[part, ch] = 0.0
                    for k in range(last - 1, start - 1, -1):
                        g = ids[k]
                        dx = means2d[g, 0] - cx
                        dy = means2d[g, 1] - cy
                        sigma = _mahalanobis_half(conics, g, dx, dy)
                        if sigma < 0.0:
                            continue
                        gauss = math.exp(-sigma)
                        raw = opacities[g] * gauss
                        alpha = min(ALPHA_MAX, raw)
                        if alpha < ALPHA_MIN:
                            continue
                        trans = trans / (1.0 - alpha)  # transmittance in front of k
                        w = alpha * trans
                        g_a = 0.0
                        for ch in range(n_ch):
                            gc = grad_acc[py, px, ch]
                            pair_colors[k, ch] += w * gc
                            g_a += (colors[g, ch] - rest[part, ch]) * trans * gc
                            rest[part, ch] = alpha * colors[g, ch] + (1.0 - alpha) * rest[part, ch]
                        g_a += g_alpha_out * t_final / (1.0 - alpha)
                        if raw > ALPHA_MAX:
                            continue  # clamped: alpha does not depend on o or sigma here
                        pair_opacities[k] += gauss * g_a
                        g_sigma = -raw * g_a
                        gmx = g_sigma * (conics[g, 0] * dx + conics[g, 1] * dy)
                        gmy = g_sigma * (conics[g, 2] * dy + conics[g, 1] * dx)
                        pair_means2d[k, 0] += gmx
                        pair_means2d[k, 1] += gmy
                        pair_abs[k, 0] += abs(gmx)
                        pair_abs[k, 1] += abs(gmy)
                        pair_conics[k, 0] += 0.5 * g_sigma * dx * dx
                        pair_conics[k, 1] += g_sigma * dx * dy
                        pair_conics[k, 2] += 0.5 * g_sigma * dy * dy


@njit(cache=True, nogil=True)
def _reduce_pairs(ids, pair_values, out):  # pragma: no cover
    """out[ids[k]] += pair_values[k] for every pair k (rows of width out.shape[1])."""
    for k in range(ids.size):
        g = ids[k]
        for j in range(out.shape[1]):
            out[g, j] += pair_values[k, j]


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().cpu().numpy()


class _Bins:
    """Per-camera tile lists and per-pixel state the backward pass needs."""

    def __init__(self, offsets: np.ndarray, ids: np.ndarray, trans: np.ndarray, last: np.ndarray):
        self.offsets, self.ids, self.trans, self.last = offsets, ids, trans, last


class NumbaRasterize(torch.autograd.Function):
    """Differentiable compositing of screen-space Gaussians on the CPU."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, extents, depths, width, height, tile_size):
        num_cams, _, n_ch = colors.shape
        dtype = np.float64 if colors.dtype == torch.float64 else np.float32
        tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
        n_parts = numba.get_num_threads()
        m_np, con_np = _numpy(means2d).astype(dtype), _numpy(conics).astype(dtype)
        col_np, op_np = _numpy(colors).astype(dtype), _numpy(opacities).astype(dtype)
        ext_np, dep_np = _numpy(extents), _numpy(depths)
        acc = np.zeros((num_cams, height, width, n_ch), dtype)
        alpha = np.zeros((num_cams, height, width), dtype)
        bins = []
        for c in range(num_cams):
            visible = np.flatnonzero(ext_np[c, :, 0] > 0)
            order = visible[np.argsort(dep_np[c, visible], kind="stable")]
            offsets, ids = _bin_tiles(
                m_np[c], ext_np[c], order, tile_size, tiles_x, tiles_y, width, height
            )
            trans = np.ones((height, width), np.float64)
            last = np.zeros((height, width), np.int64)
            _forward_kernel(
                m_np[c], con_np[c], col_np[c], op_np[c], offsets, ids, tile_size, tiles_x,
                width, height, n_parts, acc[c], alpha[c], trans, last,
            )  # fmt: skip
            bins.append(_Bins(offsets, ids, trans, last))
        ctx.bins = bins
        ctx.geometry = (width, height, tile_size, tiles_x)
        ctx.arrays = (m_np, con_np, col_np, op_np)
        ctx.means2d = means2d
        return torch.from_numpy(acc).to(colors.device), torch.from_numpy(alpha).to(colors.device)

    @staticmethod
    def backward(ctx, grad_acc, grad_alpha):
        width, height, tile_size, tiles_x = ctx.geometry
        m_np, con_np, col_np, op_np = ctx.arrays
        num_cams, n, n_ch = col_np.shape
        dtype = col_np.dtype
        n_parts = numba.get_num_threads()
        g_acc = _numpy(grad_acc).astype(dtype)
        g_alpha = _numpy(grad_alpha).astype(dtype)
        out_m = np.zeros((num_cams, n, 2), dtype)
        out_con = np.zeros((num_cams, n, 3), dtype)
        out_col = np.zeros((num_cams, n, n_ch), dtype)
        out_op = np.zeros((num_cams, n, 1), dtype)
        out_abs = np.zeros((num_cams, n, 2), dtype)
        for c, b in enumerate(ctx.bins):
            p = b.ids.size
            pairs = [np.zeros((p, w), np.float64) for w in (2, 3, n_ch, 1, 2)]
            _backward_kernel(
                m_np[c], con_np[c], col_np[c], op_np[c], b.offsets, b.ids, tile_size, tiles_x,
                width, height, n_parts, b.trans, b.last, g_acc[c], g_alpha[c],
                pairs[0], pairs[1], pairs[2], pairs[3][:, 0], pairs[4],
            )  # fmt: skip
            for values, out in zip(pairs, (out_m, out_con, out_col, out_op, out_abs), strict=True):
                _reduce_pairs(b.ids, values, out[c])
        device = grad_acc.device
        absgrad = torch.from_numpy(out_abs).to(device)
        holder = ctx.means2d
        holder.absgrad = (
            absgrad if getattr(holder, "absgrad", None) is None else holder.absgrad + absgrad
        )
        return (
            torch.from_numpy(out_m).to(device),
            torch.from_numpy(out_con).to(device),
            torch.from_numpy(out_col).to(device),
            torch.from_numpy(out_op[..., 0]).to(device),
            None, None, None, None, None,
        )  # fmt: skip


def rasterize_numba(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    extents: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Alpha-composite screen-space Gaussians front to back (CPU, numba).

    Args:
        means2d: (C, N, 2) pixel centres. conics: (C, N, 3) inverse covariances (a, b, c).
        colors: (C, N, D) per-Gaussian features to composite. opacities: (C, N).
        extents: (C, N, 2) box half-widths; 0 marks a culled Gaussian.
        depths: (C, N) sort keys (camera z).
    Returns:
        accumulated features (C, H, W, D) with no background, and alpha (C, H, W).
        After backward, `means2d.absgrad` (C, N, 2) holds the AbsGS absolute gradient.
    """
    return NumbaRasterize.apply(
        means2d, conics, colors, opacities, extents, depths, width, height, tile_size
    )
