"""CPU tile rasteriser: numba kernels with a hand-written backward pass.

The algorithm is the one of 3DGS: Gaussians are sorted by depth once, binned
into square tiles (each tile's list inherits the global depth order), and every
pixel composites its tile's list front to back, stopping as soon as its
transmittance would fall below 1e-4. Tiles are spread over the threads in an
interleaved way so the busy centre of the image does not land on one thread.

Within a tile the Gaussians are the outer loop and each visits only the pixels
of its own box, the one it was binned with, keeping per-pixel transmittance in
a tile-sized buffer. Outside its box a Gaussian's alpha is below 1/255, so a
pixel-major walk would skip it there; visiting only the box gives the same
pixels while visiting far fewer pixel–Gaussian pairs when Gaussians are small
next to the tile (the coarse and fine sets of the object model are a few
pixels wide).

Each row of a Gaussian's box is cut to the exact span of its ellipse where alpha can
reach 1/255 (a quadratic in x, widened by a rounding margin), and rows whose pixels are
all saturated are skipped, so the forward pass tests few pixels that cannot blend.

The forward pass records every blended pair (its tile-list index k, the pixel within the
tile and exp(-sigma)) in order of k. The backward pass walks that record backwards, which
is every pixel's list back to front (recovering the transmittance by division, as 3DGS
does): it touches only pairs that blended, not every pixel of every box up to a pixel's
last contributor. Each (tile, Gaussian) pair's summed gradient is added to its thread
part's own row for that Gaussian, so there are no write races; the parts' rows are summed
at the end. (A buffer indexed by pair, summed per Gaussian afterwards, cost ~8x the memory
at 100k Gaussians and a scattered read of every pair: 30 ms of a 150 ms forward+backward.)
The parts are capped so their rows stay within `_GRAD_BUFFER_BYTES`.

Depth order comes from a radix sort on the depths' bits and the tile lists from a binning
pass split over the threads; both give exactly the lists a stable sort and a serial pass
give.

Only the screen-space stage lives here; projection and SH are `project_numba.py` (the
same maths as the PyTorch `projection.py`).
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

# Shared with the portable torch rasteriser, which must import without numba; numba
# freezes these module globals into the kernels as constants.
from .constants import ALPHA_MAX, ALPHA_MIN, BOX_MARGIN, T_MIN
from .numba_cache import configure

# Compiled code is cached where numba_cache chooses (off where nothing is writable).
CACHE = configure().enabled

# Relative widening of a row's exact ellipse span (float rounding of the root).
SPAN_MARGIN = 1e-5


@njit(cache=CACHE, parallel=True, nogil=True)
def _bin_tiles(
    means2d, extents, order, tile, tiles_x, tiles_y, width, height, n_parts
):  # pragma: no cover
    """Tile lists in depth order: returns (offsets (T+1,), ids (P,)) for T tiles, P pairs.

    The depth order is cut into n_parts consecutive chunks binned in parallel; within each
    tile's list the chunks follow one another, so the list keeps the global depth order."""
    n_tiles = tiles_x * tiles_y
    n = order.size
    chunk = (n + n_parts - 1) // n_parts
    boxes = np.empty((n, 4), np.int64)
    counts = np.zeros((n_parts, n_tiles), np.int64)
    for part in prange(n_parts):
        for j in range(part * chunk, min(n, (part + 1) * chunk)):
            g = order[j]
            ex = extents[g, 0] + BOX_MARGIN
            ey = extents[g, 1] + BOX_MARGIN
            # Pixels whose centres (u + 0.5) fall inside [m - e, m + e].
            px0 = max(0, int(math.ceil(means2d[g, 0] - ex - 0.5)))
            px1 = min(width - 1, int(math.floor(means2d[g, 0] + ex - 0.5)))
            py0 = max(0, int(math.ceil(means2d[g, 1] - ey - 0.5)))
            py1 = min(height - 1, int(math.floor(means2d[g, 1] + ey - 0.5)))
            if px0 > px1 or py0 > py1:
                boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3] = 1, 0, 1, 0  # empty
                continue
            boxes[j, 0] = px0 // tile
            boxes[j, 1] = px1 // tile
            boxes[j, 2] = py0 // tile
            boxes[j, 3] = py1 // tile
            for ty in range(boxes[j, 2], boxes[j, 3] + 1):
                for tx in range(boxes[j, 0], boxes[j, 1] + 1):
                    counts[part, ty * tiles_x + tx] += 1
    offsets = np.empty(n_tiles + 1, np.int64)
    fill = np.empty((n_parts, n_tiles), np.int64)  # where each chunk's run in a tile starts
    total = 0
    for t in range(n_tiles):
        offsets[t] = total
        for part in range(n_parts):
            fill[part, t] = total
            total += counts[part, t]
    offsets[n_tiles] = total
    ids = np.empty(total, np.int64)
    for part in prange(n_parts):
        for j in range(part * chunk, min(n, (part + 1) * chunk)):
            g = order[j]
            for ty in range(boxes[j, 2], boxes[j, 3] + 1):
                for tx in range(boxes[j, 0], boxes[j, 1] + 1):
                    t = ty * tiles_x + tx
                    ids[fill[part, t]] = g
                    fill[part, t] += 1
    return offsets, ids


@njit(cache=CACHE, nogil=True)
def _radix_argsort(keys, passes):  # pragma: no cover
    """Stable ascending argsort of unsigned integer keys (N,): `passes` LSD passes of 11
    bits (3 cover 32-bit keys, 6 cover 64-bit ones). O(N), where np.argsort(kind="stable")
    on floats is a merge sort, ~10x slower at 100k."""
    n = keys.size
    idx = np.arange(n)
    tmp = np.empty(n, np.int64)
    key = keys.copy()  # the keys in the current order, moved with idx
    key_tmp = np.empty_like(key)
    counts = np.empty(2049, np.int64)
    for p in range(passes):
        shift = 11 * p
        counts[:] = 0
        for i in range(n):
            counts[((key[i] >> shift) & 2047) + 1] += 1
        for b in range(2048):
            counts[b + 1] += counts[b]
        for i in range(n):
            d = (key[i] >> shift) & 2047
            tmp[counts[d]] = idx[i]
            key_tmp[counts[d]] = key[i]
            counts[d] += 1
        idx, tmp = tmp, idx
        key, key_tmp = key_tmp, key
    return idx


def _depth_order(depths: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """The visible Gaussians (V,) sorted front to back by depth, ties in index order: the
    order np.argsort(kind="stable") gives (but for -0 before +0), by a radix sort on the
    floats' bits."""
    d = np.ascontiguousarray(depths[visible])
    unsigned = np.uint32 if d.dtype == np.float32 else np.uint64
    bits = d.view(unsigned)
    # IEEE floats order as integers once negatives have every bit flipped and positives
    # only the sign bit.
    top = unsigned(1) << unsigned(8 * d.itemsize - 1)
    keys = np.where(bits & top, ~bits, bits | top)
    return visible[_radix_argsort(keys, 3 if d.itemsize == 4 else 6)]


@njit(cache=CACHE, nogil=True, inline="always")
def _mahalanobis_half(conics, g, dx, dy):  # pragma: no cover
    """sigma = ½ dᵀ Σ⁻¹ d for offset d = (dx, dy) from Gaussian g's centre."""
    return 0.5 * (conics[g, 0] * dx * dx + conics[g, 2] * dy * dy) + conics[g, 1] * dx * dy


@njit(cache=CACHE, nogil=True, inline="always")
def _pixel_span(centre, extent, lo, hi):  # pragma: no cover
    """Pixels in [lo, hi] whose centres lie within `extent` (+ margin) of `centre`:
    the same rule as `_bin_tiles`, so a tile's pairs cover exactly its box pixels."""
    e = extent + BOX_MARGIN
    return max(lo, int(math.ceil(centre - e - 0.5))), min(hi, int(math.floor(centre + e - 0.5)))


@njit(cache=CACHE, nogil=True, inline="always")
def _row_span(mx, my, a, b, c, tau, py, lo, hi):  # pragma: no cover
    """Pixels of row `py` in [lo, hi] where sigma <= tau, i.e. alpha = o·exp(-sigma) can
    reach 1/255 (tau = log(255·o)), widened by a margin so float rounding never drops a
    pixel; the kernels still test every pixel, so the span only saves visits."""
    dy = my - (py + 0.5)
    # sigma(dx) = .5 a dx² + b dy dx + .5 c dy²: a quadratic in dx, a > 0.
    disc = (b * dy) ** 2 - a * (c * dy * dy - 2.0 * tau)
    if disc < 0.0:
        return 1, 0
    root = math.sqrt(disc)
    dx_lo, dx_hi = (-b * dy - root) / a, (-b * dy + root) / a
    # dx = mx - (px + .5)  =>  px in [mx - dx_hi - .5, mx - dx_lo - .5]
    m = SPAN_MARGIN * (1.0 + abs(mx) + root / a)
    return (max(lo, int(math.ceil(mx - dx_hi - 0.5 - m))),
            min(hi, int(math.floor(mx - dx_lo - 0.5 + m))))  # fmt: skip


@njit(cache=CACHE, parallel=True, nogil=True)
def _forward_kernel(
    means2d,
    conics,
    colors,
    opacities,
    extents,
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
    rec_k,
    rec_pix,
    rec_gauss,
    tile_rec,
    overflow,
):  # pragma: no cover
    n_tiles = offsets.size - 1
    n_ch = colors.shape[1]
    cap = rec_k.shape[1]
    for part in prange(n_parts):
        # Per-tile pixel state; Gaussians are the outer loop, so each one visits only
        # the pixels of its own ellipse (outside it alpha < 1/255 and the pixel would
        # skip it anyway), not every pixel of the tile.
        trans = np.empty((tile, tile))
        acc = np.empty((tile, tile, n_ch))
        done = np.empty((tile, tile), np.bool_)
        row_live = np.empty(tile, np.int64)
        n_rec = 0
        for t in range(part, n_tiles, n_parts):
            start, end = offsets[t], offsets[t + 1]
            ty, tx = t // tiles_x, t % tiles_x
            x0, y0 = tx * tile, ty * tile
            x1, y1 = min(width, x0 + tile) - 1, min(height, y0 + tile) - 1
            trans[:, :] = 1.0
            acc[:, :, :] = 0.0
            done[:, :] = False
            row_live[:] = x1 - x0 + 1
            live = (x1 - x0 + 1) * (y1 - y0 + 1)
            tile_rec[t, 0] = n_rec
            for k in range(start, end):
                if live == 0:
                    break  # every pixel of the tile is saturated
                g = ids[k]
                mx, my = means2d[g, 0], means2d[g, 1]
                op = opacities[g]
                ca, cb, cc = conics[g, 0], conics[g, 1], conics[g, 2]
                tau = math.log(op * 255.0)
                py0, py1 = _pixel_span(my, extents[g, 1], y0, y1)
                for py in range(py0, py1 + 1):
                    ly = py - y0
                    if row_live[ly] == 0:
                        continue
                    px0, px1 = _row_span(mx, my, ca, cb, cc, tau, py, x0, x1)
                    dy = my - (py + 0.5)
                    for px in range(px0, px1 + 1):
                        lx = px - x0
                        if done[ly, lx]:
                            continue
                        dx = mx - (px + 0.5)
                        sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                        if sigma < 0.0:
                            continue
                        gauss = math.exp(-sigma)
                        alpha = min(ALPHA_MAX, op * gauss)
                        if alpha < ALPHA_MIN:
                            continue
                        tr = trans[ly, lx]
                        next_t = tr * (1.0 - alpha)
                        if next_t < T_MIN:
                            done[ly, lx] = True
                            live -= 1
                            row_live[ly] -= 1
                            continue
                        w = alpha * tr
                        for ch in range(n_ch):
                            acc[ly, lx, ch] += w * colors[g, ch]
                        trans[ly, lx] = next_t
                        # The blended pair, in (k, pixel) order: walked backwards it is
                        # every pixel's list back to front, all the backward pass needs.
                        if n_rec < cap:
                            rec_k[part, n_rec] = k
                            rec_pix[part, n_rec] = (ly << 16) | lx  # no division to undo
                            rec_gauss[part, n_rec] = gauss
                        n_rec += 1
            tile_rec[t, 1] = n_rec
            for py in range(y0, y1 + 1):
                for px in range(x0, x1 + 1):
                    ly, lx = py - y0, px - x0
                    for ch in range(n_ch):
                        out_acc[py, px, ch] = acc[ly, lx, ch]
                    out_alpha[py, px] = 1.0 - trans[ly, lx]
                    out_t[py, px] = trans[ly, lx]
        overflow[part] = n_rec


# Columns of the per-Gaussian gradient rows the backward kernel sums into: 2D mean (x, y),
# its AbsGS absolute value (x, y), conic (a, b, c), opacity, then the colour channels.
_MEAN, _ABS, _CONIC, _OPACITY, _COLOR = 0, 2, 4, 7, 8


@njit(cache=CACHE, parallel=True, nogil=True)
def _backward_kernel(
    means2d,
    conics,
    colors,
    opacities,
    ids,
    tile,
    tiles_x,
    width,
    height,
    n_parts,
    pix_t,
    rec_k,
    rec_pix,
    rec_gauss,
    tile_rec,
    grad_acc,
    grad_alpha,
    part_grads,
    means_only,
):  # pragma: no cover
    n_tiles = tile_rec.shape[0]
    n_ch = colors.shape[1]
    for part in prange(n_parts):
        trans = np.empty((tile, tile))
        rest = np.empty((tile, tile, n_ch))  # colour of everything behind, per pixel
        g_col = np.empty(n_ch)
        for t in range(part, n_tiles, n_parts):
            r0, r1 = tile_rec[t, 0], tile_rec[t, 1]
            if r1 == r0:
                continue
            ty, tx = t // tiles_x, t % tiles_x
            x0, y0 = tx * tile, ty * tile
            x1, y1 = min(width, x0 + tile) - 1, min(height, y0 + tile) - 1
            for py in range(y0, y1 + 1):
                for px in range(x0, x1 + 1):
                    trans[py - y0, px - x0] = pix_t[py, px]
            rest[:, :, :] = 0.0
            # The tile's blended pairs back to front: each pixel meets its Gaussians in
            # reverse depth order; one pair (k) is a run of records, flushed when k changes.
            k_cur = -1
            g = 0
            mx = my = ca = cb = cc = op = 0.0
            gm0 = gm1 = ga0 = ga1 = gc0 = gc1 = gc2 = g_op = 0.0
            for ch in range(n_ch):
                g_col[ch] = 0.0
            for r in range(r1 - 1, r0 - 2, -1):
                k = rec_k[part, r] if r >= r0 else -1
                if k != k_cur:
                    if k_cur >= 0:
                        # Each thread part sums into its own rows: no write races.
                        out = part_grads[part, ids[k_cur]]
                        out[_MEAN] += gm0
                        out[_MEAN + 1] += gm1
                        out[_ABS] += ga0
                        out[_ABS + 1] += ga1
                        if not means_only:
                            out[_CONIC] += gc0
                            out[_CONIC + 1] += gc1
                            out[_CONIC + 2] += gc2
                            out[_OPACITY] += g_op
                            for ch in range(n_ch):
                                out[_COLOR + ch] += g_col[ch]
                    if k < 0:
                        break
                    k_cur = k
                    g = ids[k]
                    mx, my = means2d[g, 0], means2d[g, 1]
                    ca, cb, cc = conics[g, 0], conics[g, 1], conics[g, 2]
                    op = opacities[g]
                    gm0 = gm1 = ga0 = ga1 = gc0 = gc1 = gc2 = g_op = 0.0
                    for ch in range(n_ch):
                        g_col[ch] = 0.0
                pix = rec_pix[part, r]
                ly, lx = pix >> 16, pix & 0xFFFF
                py, px = y0 + ly, x0 + lx
                dx = mx - (px + 0.5)
                dy = my - (py + 0.5)
                gauss = rec_gauss[part, r]
                raw = op * gauss
                alpha = min(ALPHA_MAX, raw)
                tr = trans[ly, lx] / (1.0 - alpha)  # transmittance in front of k
                trans[ly, lx] = tr
                w = alpha * tr
                g_a = 0.0
                for ch in range(n_ch):
                    gc = grad_acc[py, px, ch]
                    g_col[ch] += w * gc
                    rv = rest[ly, lx, ch]
                    g_a += (colors[g, ch] - rv) * tr * gc
                    rest[ly, lx, ch] = alpha * colors[g, ch] + (1.0 - alpha) * rv
                g_a += grad_alpha[py, px] * pix_t[py, px] / (1.0 - alpha)
                if raw > ALPHA_MAX:
                    continue  # clamped: alpha does not depend on o or sigma here
                g_sigma = -raw * g_a
                gmx = g_sigma * (ca * dx + cb * dy)
                gmy = g_sigma * (cc * dy + cb * dx)
                gm0 += gmx
                gm1 += gmy
                ga0 += abs(gmx)
                ga1 += abs(gmy)
                g_op += gauss * g_a
                gc0 += 0.5 * g_sigma * dx * dx
                gc1 += g_sigma * dx * dy
                gc2 += 0.5 * g_sigma * dy * dy


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().cpu().numpy()


@dataclass
class _Bins:
    """One camera's bins and what its forward pass recorded: all the backward pass reads.

    Attributes:
        offsets, ids: (T+1,), (P,) tile t's Gaussians are ids[offsets[t]:offsets[t+1]].
        trans: (H, W) final transmittance per pixel.
        records: per thread part, (parts, cap) each: the blended pairs' index k, pixel
            within its tile and exp(-sigma), in order of k.
        tile_rec: (T, 2) each tile's range in its part's records.
    """

    offsets: np.ndarray
    ids: np.ndarray
    trans: np.ndarray
    records: tuple[np.ndarray, ...]
    tile_rec: np.ndarray


# Blended pairs recorded per pixel, first guess of the forward pass's buffers (grown, and
# the camera re-drawn, when a scene blends more; the next call starts from what was seen).
_RECORDS_PER_PIXEL = [8.0]


class _ScratchPool:
    """Large scratch arrays kept for reuse from one render to the next.

    A fresh array of tens of MB is mapped by the OS page by page on first touch (glibc
    serves allocations above its mmap threshold, at most 32 MB, straight from mmap and
    returns them on free): measured, the first five forward passes of a 10k-Gaussian 256²
    render took 2-4x the steady time, and renders above 32 MB of records paid it every time.
    Sizes are rounded up (at most 1/8 more) so similar renders share arrays; at most
    `limit` bytes are kept, beyond which arrays are simply dropped.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: dict[tuple[int, str], list[np.ndarray]] = {}
        self._kept = 0
        self._lock = threading.Lock()

    @staticmethod
    def _rounded(size: int) -> int:
        step = max(1, 1 << max(0, size.bit_length() - 4))  # 1/8 to 1/16 of the size
        return -(-size // step) * step

    def take(self, size: int, dtype: np.dtype | type) -> np.ndarray:
        """A 1-D array of at least `size` elements (contents undefined)."""
        key = (self._rounded(size), np.dtype(dtype).str)
        with self._lock:
            stack = self._free.get(key)
            if stack:
                array = stack.pop()
                self._kept -= array.nbytes
                return array
        return np.empty(key[0], dtype)

    def give(self, *arrays: np.ndarray) -> None:
        """Return arrays from `take` for reuse."""
        with self._lock:
            for array in arrays:
                if self._kept + array.nbytes <= self.limit:
                    self._free.setdefault((array.size, array.dtype.str), []).append(array)
                    self._kept += array.nbytes

    def give_when_freed(self, owner: object, *arrays: np.ndarray) -> None:
        """Return `arrays` once `owner` is garbage (what still reads them holds `owner`)."""
        weakref.finalize(owner, self.give, *arrays)


_SCRATCH = _ScratchPool(limit=256 * 2**20)


def _forward_camera(m, con, col, op, ext, dep, tile_size, tiles_x, tiles_y, width, height,
                    n_parts, acc, alpha, record) -> _Bins:  # fmt: skip
    """Bin and draw one camera into acc (H, W, D) and alpha (H, W); with `record`, keep
    the blended pairs for the backward pass (without, the records are empty)."""
    order = _depth_order(dep, np.flatnonzero(ext[:, 0] > 0))
    offsets, ids = _bin_tiles(m, ext, order, tile_size, tiles_x, tiles_y, width, height, n_parts)
    n_tiles = tiles_x * tiles_y
    while True:
        if record:
            cap = max(1024, int(_RECORDS_PER_PIXEL[0] * width * height / n_parts))
            cap = min(cap, int(ids.size) * tile_size * tile_size + 1)  # ≤ pairs × pixels
            bases = [_SCRATCH.take(n_parts * cap, t) for t in (np.int32, np.int32, col.dtype)]
        else:  # nothing recorded: the kernel writes no pair when cap is 0
            cap, bases = 0, [np.empty(0, t) for t in (np.int32, np.int32, col.dtype)]
        rec = tuple(x[: n_parts * cap].reshape(n_parts, cap) for x in bases)
        tile_rec = np.zeros((n_tiles, 2), np.int64)
        used = np.zeros(n_parts, np.int64)
        trans = np.ones((height, width), np.float64)
        _forward_kernel(
            m, con, col, op, ext, offsets, ids, tile_size, tiles_x, width, height, n_parts,
            acc, alpha, trans, *rec, tile_rec, used,
        )  # fmt: skip
        most = int(used.max()) if used.size else 0
        bins = _Bins(offsets, ids, trans, rec, tile_rec)
        if not record:
            return bins
        if most <= cap:
            _RECORDS_PER_PIXEL[0] = max(2.0, 1.25 * most * n_parts / (width * height))
            _SCRATCH.give_when_freed(bins, *bases)
            return bins
        _SCRATCH.give(*bases)
        _RECORDS_PER_PIXEL[0] = 1.25 * most * n_parts / (width * height)


# The backward pass gives each thread part its own gradient rows for every Gaussian; parts
# are capped so those rows stay within this many bytes (1M Gaussians, 3 channels, float32:
# 44 MB a part, so up to 11 parts; fewer Gaussians leave every thread its part).
_GRAD_BUFFER_BYTES = 512 * 2**20


def _thread_parts(threads: int, n: int, n_ch: int, dtype: type) -> int:
    """How many parts to split the tiles into: one per thread, within _GRAD_BUFFER_BYTES."""
    per_part = max(1, n * (_COLOR + n_ch) * np.dtype(dtype).itemsize)
    return max(1, min(threads, _GRAD_BUFFER_BYTES // per_part))


class NumbaRasterize(torch.autograd.Function):
    """Differentiable compositing of screen-space Gaussians on the CPU."""

    @staticmethod
    def forward(
        ctx, means2d, conics, colors, opacities, extents, depths, width, height, tile_size, record
    ):
        num_cams, n, n_ch = colors.shape
        dtype = np.float64 if colors.dtype == torch.float64 else np.float32
        tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
        n_parts = _thread_parts(numba.get_num_threads(), n, n_ch, dtype)
        m_np, con_np, col_np, op_np = (
            _numpy(t).astype(dtype, copy=False) for t in (means2d, conics, colors, opacities)
        )
        ext_np, dep_np = _numpy(extents), _numpy(depths)
        acc = np.zeros((num_cams, height, width, n_ch), dtype)
        alpha = np.zeros((num_cams, height, width), dtype)
        geometry = (tile_size, tiles_x, tiles_y, width, height, n_parts)
        arrays = (m_np, con_np, col_np, op_np, ext_np, dep_np)
        bins = [
            _forward_camera(*(x[c] for x in arrays), *geometry, acc[c], alpha[c], record)
            for c in range(num_cams)
        ]
        ctx.bins = bins
        ctx.geometry = (width, height, tile_size, tiles_x, n_parts)
        ctx.arrays = (m_np, con_np, col_np, op_np)
        ctx.means2d = means2d
        return torch.from_numpy(acc).to(colors.device), torch.from_numpy(alpha).to(colors.device)

    @staticmethod
    def backward(ctx, grad_acc, grad_alpha):
        width, height, tile_size, tiles_x, n_parts = ctx.geometry
        m_np, con_np, col_np, op_np = ctx.arrays
        num_cams, n, n_ch = col_np.shape
        dtype = col_np.dtype
        # When only the 2D means need a gradient (the gradient mask renders detached
        # Gaussians), the conic, colour and opacity terms are neither summed nor returned:
        # 4 of the 8 + D gradient columns remain.
        means_only = not any(ctx.needs_input_grad[1:4])
        n_cols = _CONIC if means_only else _COLOR + n_ch
        g_acc = _numpy(grad_acc).astype(dtype, copy=False)
        g_alpha = _numpy(grad_alpha).astype(dtype, copy=False)
        total = np.empty((num_cams, n, n_cols), dtype)
        base = _SCRATCH.take(n_parts * n * n_cols, dtype)
        part_grads = base[: n_parts * n * n_cols].reshape(n_parts, n, n_cols)
        for c, b in enumerate(ctx.bins):
            part_grads[:] = 0.0
            _backward_kernel(
                m_np[c], con_np[c], col_np[c], op_np[c], b.ids, tile_size, tiles_x, width,
                height, n_parts, b.trans, *b.records, b.tile_rec, g_acc[c], g_alpha[c],
                part_grads, means_only,
            )  # fmt: skip
            np.sum(part_grads, axis=0, out=total[c])
        _SCRATCH.give(base)
        outs = [total[..., _MEAN:_ABS], total[..., _ABS:_CONIC]]
        if not means_only:
            outs += [total[..., _CONIC:_OPACITY], total[..., _COLOR:], total[..., _OPACITY:_COLOR]]
        outs = [np.ascontiguousarray(out) for out in outs]
        device = grad_acc.device
        absgrad = torch.from_numpy(outs[1]).to(device)
        holder = ctx.means2d
        holder.absgrad = (
            absgrad if getattr(holder, "absgrad", None) is None else holder.absgrad + absgrad
        )
        grads = [torch.from_numpy(out).to(device) for out in outs]
        if means_only:
            return grads[0], None, None, None, None, None, None, None, None, None
        return (
            grads[0], grads[2], grads[3], grads[4][..., 0], None, None, None, None, None, None
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
    if not 1 <= tile_size <= 1024:  # a recorded pair packs its row and column in 16 bits
        raise ValueError(f"tile_size must be 1 to 1024 pixels, got {tile_size}")
    # Without a backward to come (no grad mode, nothing requiring grad) the forward pass
    # keeps no records of its blended pairs.
    record = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, colors, opacities)
    )
    return NumbaRasterize.apply(
        means2d, conics, colors, opacities, extents, depths, width, height, tile_size, record
    )
