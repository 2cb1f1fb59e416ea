"""CPU tile rasteriser: numba kernels with a hand-written backward pass.

The algorithm is the one of 3DGS: Gaussians are sorted by depth once, binned
into square tiles (each tile's list inherits the global depth order), and every
pixel composites its tile's list front to back, stopping as soon as its
transmittance would fall below 1e-4. Tiles are spread over the threads in an
interleaved way so the busy centre of the image does not land on one thread.

Within a tile the Gaussians are the outer loop and each updates only the rows of its own
box, the one it was binned with, keeping the per-pixel state in a tile-sized scratch
array; rows whose pixels are all saturated are skipped. Outside its box a Gaussian's
alpha is below 1/255, so a pixel-major walk would skip it there. Each row is one
branch-free loop over the tile's columns (pixels outside the box or below 1/255 get weight
0) that LLVM compiles to 8-wide float32 vector code, which is why: exp(-sigma) is a
polynomial in float32 (libm's exp is a call, which no loop vectoriser passes); constants
come in the input's float type (a float64 literal would promote the loop to 4 lanes);
every field lives in one scratch array indexed with unsigned integers (numba wraps
negative signed indices, and that select hides from LLVM that the fields never overlap);
stores are arithmetic, not selects of the old value (LLVM makes those masked stores, slow
on AMD cores). Measured against the scalar kernel that cut each row to its ellipse's exact
span and skipped saturated pixels one by one: the forward kernel 1.6-2.7x faster at
30k-100k Gaussians (256², two threads).

The forward pass records every row in which a Gaussian blended (its tile-list index k, the
row, and exp(-sigma) of each pixel of the row, 0 where it did not blend) in order of k.
The backward pass walks that record backwards, which is every pixel's list back to front
(recovering the transmittance by division, as 3DGS does): it touches only the rows that
blended, not every pixel of every box up to a pixel's last contributor. (A backward that
recomputes every alpha instead, vectorised the same way, was 1.5-3x slower than reading
the records: it walks three loops per row where reading the records took one, as it did
then.) Each recorded row is again branch-free vector loops over the tile's columns (two:
the colour and opacity terms, then the 2D mean and conic ones, so that neither spills its
sums to the stack): a pixel that did not blend has exp(-sigma) = 0, so alpha = 0 and its
terms vanish by themselves. The loops write each pixel's gradient terms, and when a
Gaussian's run of rows ends they are summed into its thread part's own row for that
Gaussian, so there are no write races; the parts' rows are summed at the end. (Measured
against the scalar backward that skipped unblended pixels one by one: the backward kernel
1.6x faster in a 30k four-view refinement step, 256², two threads.)
(A buffer indexed by pair, summed per Gaussian afterwards, cost ~8x the memory at 100k
Gaussians and a scattered read of every pair: 30 ms of a 150 ms forward+backward.) The
parts are capped so their rows stay within `_GRAD_BUFFER_BYTES`.

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
from numba.core import types
from numba.extending import overload
from torch import Tensor

# Shared with the portable torch rasteriser, which must import without numba; numba
# freezes these module globals into the kernels as constants.
from .constants import ALPHA_MAX, ALPHA_MIN, BOX_MARGIN, T_MIN
from .numba_cache import configure

# Compiled code is cached where numba_cache chooses (off where nothing is writable).
CACHE = configure().enabled


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
def _pixel_span(centre, extent, lo, hi):  # pragma: no cover
    """Pixels in [lo, hi] whose centres lie within `extent` (+ margin) of `centre`:
    the same rule as `_bin_tiles`, so a tile's pairs cover exactly its box pixels."""
    e = extent + BOX_MARGIN
    return max(lo, int(math.ceil(centre - e - 0.5))), min(hi, int(math.floor(centre + e - 0.5)))


# exp(-sigma) for float32 as a polynomial, so that the pixel loops vectorise: libm's exp is
# a call, which stops LLVM's loop vectoriser, and numba has no vector exp without Intel's
# SVML. exp(-sigma) = exp(-sigma / 16)^16: a degree-5 polynomial fitted (relative error,
# Lawson-weighted least squares) to exp(-x) on [0, SIGMA_CAP / 16], then four squarings:
# 15 vector operations where a range reduction to [-ln2/2, ln2/2] and the 2^-n it needs
# took ~45 (the forward's pixel loop, ~145 instructions per 8 pixels, is bound by its
# instruction count: a 30k-Gaussian four-view refinement step went 148 -> 140 ms, medians
# side by side). Relative error <= 3.2e-6 on [0, SIGMA_CAP] (~1 ulp before); renders
# change by ~1e-8 on average. float64 renders (the gradchecks) keep libm's exp.
# sigma is capped here before the exp (the fit's range), and o·exp(-10) < 1/255 for every
# opacity, so a capped pixel never blends.
SIGMA_CAP = 10.0
_EXP16_Q = (0.9999999403953552, -0.9999957084655762, 0.4999241232872009,
            -0.1661636233329773, 0.04012516885995865, -0.0060755666345357895)  # fmt: skip


def _exp_neg(sigma):  # pragma: no cover - compiled code uses the overload below
    return math.exp(-sigma)


@overload(_exp_neg, inline="always")
def _exp_neg_overload(sigma):  # pragma: no cover
    if not (isinstance(sigma, types.Float) and sigma.bitwidth == 32):
        return lambda sigma: math.exp(-sigma)
    f = np.float32
    q0, q1, q2, q3, q4, q5 = (f(c) for c in _EXP16_Q)
    sixteenth = f(1.0 / 16.0)

    def exp_neg_f32(sigma):
        x = sigma * sixteenth
        y = ((((q5 * x + q4) * x + q3) * x + q2) * x + q1) * x + q0
        y = y * y
        y = y * y
        y = y * y
        return y * y

    return exp_neg_f32


def _constants(dtype: np.dtype | type) -> np.ndarray:
    """The compositing constants in the kernels' float type: a float64 literal would promote
    every float32 expression it meets to float64 (4 vector lanes instead of 8)."""
    return np.array([0.5, 1.0, 0.0, ALPHA_MAX, ALPHA_MIN, T_MIN, SIGMA_CAP], dtype)


@njit(cache=CACHE, nogil=True, inline="always")
def _alpha(x, mx, ca, cdy, bdy, op, zero, cap, a_max):  # pragma: no cover
    """At pixel centre x of a row: (sigma >= 0, exp(-sigma), o·exp(-sigma), alpha), with
    ca = a/2, cdy = c·dy²/2, bdy = b·dy. sigma is clamped into [0, SIGMA_CAP] for the exp
    only; the caller rejects sigma < 0 as the other backends do."""
    dx = mx - x
    sigma = ca * dx * dx + cdy + bdy * dx
    # Selects, not min()/max(): with fastmath flags those stop the loop vectoriser.
    lo = sigma if sigma > zero else zero
    gauss = _exp_neg(lo if lo < cap else cap)
    raw = op * gauss
    return sigma >= zero, gauss, raw, (raw if raw < a_max else a_max)


@njit(cache=CACHE, nogil=True, inline="always")
def _u(i):  # pragma: no cover
    """An index as uint64. numba wraps negative signed indices around, and that select
    hides from LLVM that two fields of one scratch array never overlap: with unsigned
    indices the pixel loops vectorise."""
    return np.uint64(i)


# Channels composited inside the per-pixel loop (a colour and a depth); more go through a
# second loop over the stored weights.
_FUSED = 4


# The largest tile edge the kernels draw with, and the stride of their scratch arrays'
# fields (MAX_TILE² pixels). A compile-time stride makes the distance between two fields a
# constant larger than any row, so LLVM needs no runtime overlap check between them: with a
# run-time stride the backward's ~25 fields need more checks than LLVM allows, and its row
# loop stays scalar; the forward's pay them on every row. (Compiling the kernels a second
# time for larger tiles would double their first compile, for tiles that are slower.)
MAX_TILE = 16
_STRIDE = MAX_TILE * MAX_TILE


@njit(cache=CACHE, parallel=True, nogil=True, fastmath={"reassoc", "nsz"})
def _forward_kernel(
    means2d, conics, colors, opacities, extents, offsets, ids, tile, tiles_x, width, height,
    n_parts, k, out_acc, out_alpha, out_t, rec_k, rec_row, rec_gauss, tile_rec, overflow,
):  # fmt: skip  # pragma: no cover
    # Everything inside the parallel loop: numba passes what is computed outside it to the
    # loop body as arguments, and the offsets must stay compile-time constants.
    for part in prange(n_parts):
        n_tiles = offsets.size - 1
        n_ch = colors.shape[1]
        cap = rec_k.shape[1]
        half, one, zero, a_max, a_min, t_min, s_cap = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
        S = _u(_STRIDE)
        # Fields of one scratch array a thread: one array, so that LLVM sees that they do not
        # alias and vectorises the pixel loops. Per pixel: transmittance, saturated (0/1), the
        # current Gaussian's blend weight and exp(-sigma) where it blends (else 0), the
        # accumulated fused channels, the pixel centre's x; per row its centre's y; then the
        # accumulated channels beyond _FUSED.
        o_t, o_done, o_w, o_g = _u(0), S, _u(2) * S, _u(3) * S
        o_acc, o_a1, o_a2, o_a3 = _u(4) * S, _u(5) * S, _u(6) * S, _u(7) * S
        o_x, o_y = _u(8) * S, _u(9) * S
        o_more = _u(10) * S
        st = np.empty(o_more + _u(max(0, n_ch - _FUSED)) * S, colors.dtype)
        row_live = np.empty(tile, np.int64)
        n_rec = 0
        for t in range(part, n_tiles, n_parts):
            ty, tx = t // tiles_x, t % tiles_x
            x0, y0 = tx * tile, ty * tile
            x1, y1 = min(width, x0 + tile) - 1, min(height, y0 + tile) - 1
            w_tile = x1 - x0 + 1
            for ly in range(tile):
                st[o_y + _u(ly)] = y0 + ly
                st[o_y + _u(ly)] += half
                for lx in range(tile):
                    st[o_x + _u(ly * tile + lx)] = x0 + lx
                    st[o_x + _u(ly * tile + lx)] += half
            st[o_t:o_done] = one
            st[o_done:o_x] = zero
            st[o_more:] = zero
            row_live[:] = w_tile
            live = w_tile * (y1 - y0 + 1)
            tile_rec[t, 0] = n_rec
            for kk in range(offsets[t], offsets[t + 1]):
                if live == 0:
                    break  # every pixel of the tile is saturated
                g = ids[kk]
                # The box it was binned with; outside it alpha < 1/255.
                px0, px1 = _pixel_span(means2d[g, 0], extents[g, 0], x0, x1)
                py0, py1 = _pixel_span(means2d[g, 1], extents[g, 1], y0, y1)
                if px0 > px1:
                    continue
                mx, my, op = means2d[g, 0], means2d[g, 1], opacities[g]
                ca, cb, cc = conics[g, 0] * half, conics[g, 1], conics[g, 2] * half
                c0 = colors[g, 0]
                c1 = colors[g, 1] if n_ch > 1 else zero
                c2 = colors[g, 2] if n_ch > 2 else zero
                c3 = colors[g, 3] if n_ch > 3 else zero
                x_lo, x_hi = st[o_x + _u(px0 - x0)], st[o_x + _u(px1 - x0)]  # row 0's
                # sigma <= thr is where alpha >= 1/255, padded so that float32 rounding in the
                # row loop never blends a pixel this bound rules out.
                thr = math.log(np.float64(op) / ALPHA_MIN) + 0.01
                a2 = 2.0 * np.float64(ca)
                for py in range(py0, py1 + 1):
                    ly = py - y0
                    if row_live[ly] == 0:
                        continue  # every pixel of the row is saturated
                    dy = my - st[o_y + _u(ly)]
                    cdy, bdy = cc * dy * dy, cb * dy
                    # The row's ellipse span (sigma <= thr, a quadratic in dx = mx - x): a row
                    # whose span misses the box's columns in this tile (an ellipse's corner
                    # of its box) cannot blend; skipping it is cheaper than its vector loop.
                    if a2 > 0.0:
                        lin, disc = np.float64(bdy), 0.0
                        disc = lin * lin - 2.0 * a2 * (np.float64(cdy) - thr)
                        if disc < 0.0:
                            continue
                        root = math.sqrt(disc)
                        if mx - (root - lin) / a2 > x_hi or mx + (root + lin) / a2 < x_lo:
                            continue
                    row = _u(ly * tile)
                    # The whole tile row in one branch-free loop (8-wide vector code): pixels
                    # outside the box or below 1/255 get weight 0. Stores are unconditional
                    # arithmetic, not selects of the old value, which LLVM would turn into
                    # masked stores (slow on AMD cores). It also counts the row's saturated
                    # pixels and sums exp(-sigma) where it blended (>= exp(-SIGMA_CAP) > 0).
                    n_done = blended = zero
                    for lx in range(tile):
                        i = row + _u(lx)
                        x = st[o_x + i]
                        ok, gauss, raw, alpha = _alpha(x, mx, ca, cdy, bdy, op, zero, s_cap, a_max)
                        t0 = st[o_t + i]
                        t1 = t0 * (one - alpha)
                        d0 = st[o_done + i]
                        valid = ok & (alpha >= a_min) & (d0 == zero) & (x >= x_lo) & (x <= x_hi)
                        blend = valid & (t1 >= t_min)
                        b = one if blend else zero
                        w = alpha * t0 * b
                        st[o_w + i] = w
                        st[o_g + i] = gauss * b
                        st[o_t + i] = t0 * (one - alpha * b)
                        d1 = d0 + (one - d0) * (one if valid & (t1 < t_min) else zero)
                        st[o_done + i] = d1
                        n_done += d1
                        blended += gauss * b
                        st[o_acc + i] += w * c0
                        st[o_a1 + i] += w * c1
                        st[o_a2 + i] += w * c2
                        st[o_a3 + i] += w * c3
                    for ch in range(_FUSED, n_ch):
                        c = colors[g, ch]
                        o_c = o_more + _u(ch - _FUSED) * S + row
                        for lx in range(tile):
                            st[o_c + _u(lx)] += st[o_w + row + _u(lx)] * c
                    saturated = row_live[ly] - (w_tile - int(n_done))
                    row_live[ly] -= saturated
                    live -= saturated
                    if cap == 0 or blended == zero:
                        continue  # no backward pass follows, or nothing to record
                    # The row's blended pixels, for the backward pass: walked backwards, the
                    # records are every pixel's list back to front.
                    if n_rec < cap:
                        rec_k[part, n_rec] = kk
                        rec_row[part, n_rec] = ly
                        base = _u(n_rec * tile)
                        for lx in range(tile):
                            rec_gauss[part, base + _u(lx)] = st[o_g + row + _u(lx)]
                    n_rec += 1
            tile_rec[t, 1] = n_rec
            for py in range(y0, y1 + 1):
                for px in range(x0, x1 + 1):
                    i = _u((py - y0) * tile + px - x0)
                    for ch in range(n_ch):
                        o_c = o_acc + _u(ch) * S if ch < _FUSED else o_more + _u(ch - _FUSED) * S
                        out_acc[py, px, ch] = st[o_c + i]
                    out_alpha[py, px] = one - st[o_t + i]
                    out_t[py, px] = st[o_t + i]
        overflow[part] = n_rec


# Columns of the per-Gaussian gradient rows the backward kernel sums into: 2D mean (x, y),
# its AbsGS absolute value (x, y), conic (a, b, c), opacity, then the colour channels.
_MEAN, _ABS, _CONIC, _OPACITY, _COLOR = 0, 2, 4, 7, 8


@njit(cache=CACHE, parallel=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _backward_kernel(
    means2d, conics, colors, opacities, ids, tile, tiles_x, width, height, n_parts, k, pix_t,
    rec_k, rec_row, rec_gauss, tile_rec, grad_acc, grad_alpha, part_grads, means_only,
):  # fmt: skip  # pragma: no cover
    # Everything inside the parallel loop: numba passes what is computed outside it to the
    # loop body as arguments, and the offsets must stay compile-time constants.
    for part in prange(n_parts):
        n_tiles = tile_rec.shape[0]
        n_ch = colors.shape[1]
        half, one, zero, a_max = k[0], k[1], k[2], k[3]
        S = _u(_STRIDE)
        # Per pixel of the tile: transmittance in front of the current Gaussian, the alpha
        # gradient's own term, the output gradient and the colour of everything behind for
        # the fused channels, the alpha gradient of the channels beyond _FUSED, exp(-sigma)
        # of the current row, the pixel centre's x, dL/dsigma of the current row; then the
        # output gradient, colour behind and gradient term of each channel beyond _FUSED.
        # The current Gaussian's gradient terms for the other columns of part_grads are
        # summed over each row as the row loops run (vector reductions) and over its rows
        # in `run`.
        o_t, o_ga = _u(0), S
        o_g0, o_g1, o_g2, o_g3 = _u(2) * S, _u(3) * S, _u(4) * S, _u(5) * S
        o_r0, o_r1, o_r2, o_r3 = _u(6) * S, _u(7) * S, _u(8) * S, _u(9) * S
        o_xga = _u(10) * S
        o_e = o_xga + S
        o_x = o_e + S
        o_gs = o_x + S  # the current row's dL/dsigma per pixel, for the geometry sums
        o_more = o_gs + S  # channel ch >= _FUSED: gradient, colour behind, gradient term
        n_more = max(0, n_ch - _FUSED)
        n_out = _CONIC if means_only else _COLOR + n_ch
        st = np.empty(o_more + _u(3 * n_more) * S, colors.dtype)
        run = np.zeros(_COLOR + _FUSED, colors.dtype)  # the current Gaussian's sums so far
        y_centre = np.empty(tile, colors.dtype)  # stored, so that dy stays in the float type
        for t in range(part, n_tiles, n_parts):
            r0, r1 = tile_rec[t, 0], tile_rec[t, 1]
            if r1 == r0:
                continue
            ty, tx = t // tiles_x, t % tiles_x
            x0, y0 = tx * tile, ty * tile
            x1, y1 = min(width, x0 + tile) - 1, min(height, y0 + tile) - 1
            # Pixels beyond the image's edge keep zero gradients; they never blended.
            st[:] = zero
            for ly in range(tile):
                y_centre[ly] = y0 + ly
                y_centre[ly] += half
                for lx in range(tile):
                    st[o_x + _u(ly * tile + lx)] = x0 + lx
                    st[o_x + _u(ly * tile + lx)] += half
            for py in range(y0, y1 + 1):
                for px in range(x0, x1 + 1):
                    i = _u((py - y0) * tile + px - x0)
                    st[o_t + i] = pix_t[py, px]
                    st[o_ga + i] = grad_alpha[py, px] * pix_t[py, px]
                    for ch in range(n_ch):
                        if ch < _FUSED:
                            st[o_g0 + _u(ch) * S + i] = grad_acc[py, px, ch]
                        else:
                            st[o_more + _u(3 * (ch - _FUSED)) * S + i] = grad_acc[py, px, ch]
            # The tile's blended rows back to front: each pixel meets its Gaussians in
            # reverse depth order; one pair (k) is a run of rows, whose gradient terms are
            # summed when k changes.
            k_cur = -1
            r_end = r1
            g = 0
            mx = my = ca = cb = cc = op = c0 = c1 = c2 = c3 = zero
            for r in range(r1 - 1, r0 - 2, -1):
                kk = rec_k[part, r] if r >= r0 else -1
                if kk != k_cur:
                    if k_cur >= 0:
                        # Each thread part sums into its own rows: no write races.
                        out = part_grads[part, ids[k_cur]]
                        for j in range(min(n_out, _COLOR + _FUSED)):
                            out[j] += run[j]
                        run[:] = zero
                        for j in range(_COLOR + _FUSED, n_out):
                            o_j = o_more + _u(3 * (j - _COLOR - _FUSED) + 2) * S
                            sj = zero
                            for rr in range(r + 1, r_end):
                                row = o_j + _u(rec_row[part, rr] * tile)
                                for lx in range(tile):
                                    sj += st[row + _u(lx)]
                            out[j] += sj
                    if kk < 0:
                        break
                    k_cur = kk
                    r_end = r + 1
                    g = ids[kk]
                    mx, my = means2d[g, 0], means2d[g, 1]
                    ca, cb, cc = conics[g, 0], conics[g, 1], conics[g, 2]
                    op = opacities[g]
                    c0 = colors[g, 0]
                    c1 = colors[g, 1] if n_ch > 1 else zero
                    c2 = colors[g, 2] if n_ch > 2 else zero
                    c3 = colors[g, 3] if n_ch > 3 else zero
                ly = rec_row[part, r]
                dy = my - y_centre[ly]
                cbdy, ccdy = cb * dy, cc * dy
                hdy2 = half * dy * dy
                row = _u(ly * tile)
                base = _u(r * tile)
                for lx in range(tile):
                    st[o_e + row + _u(lx)] = rec_gauss[part, base + _u(lx)]
                # Channels beyond the fused ones first: their share of the alpha gradient is
                # what the main loop adds from o_xga. Where a pixel did not blend, exp(-sigma)
                # was recorded as 0, so alpha = 0 and every term below is 0 or leaves the
                # pixel's state as it is: the loops need no mask.
                for ch in range(_FUSED, n_ch):
                    c = colors[g, ch]
                    o_gc = o_more + _u(3 * (ch - _FUSED)) * S + row
                    o_rc, o_sc = o_gc + S, o_gc + _u(2) * S
                    first = one if ch == _FUSED else zero
                    for lx in range(tile):
                        raw = op * st[o_e + row + _u(lx)]
                        alpha = raw if raw < a_max else a_max
                        tr = st[o_t + row + _u(lx)] / (one - alpha)
                        gc = st[o_gc + _u(lx)]
                        rv = st[o_rc + _u(lx)]
                        st[o_sc + _u(lx)] = alpha * tr * gc
                        xga = st[o_xga + row + _u(lx)] * (one - first)
                        st[o_xga + row + _u(lx)] = xga + (c - rv) * tr * gc
                        st[o_rc + _u(lx)] = alpha * c + (one - alpha) * rv
                # Two passes over the row: the colour and opacity terms, then the 2D mean and
                # conic ones from the stored dL/dsigma. One pass kept 12 vector sums and ~15
                # invariants live, and AVX2's 16 registers spilled about every other
                # instruction to the stack.
                s_op = s_c0 = s_c1 = s_c2 = s_c3 = zero
                for lx in range(tile):
                    i = row + _u(lx)
                    gauss = st[o_e + i]
                    raw = op * gauss
                    alpha = raw if raw < a_max else a_max  # (not min(): see _alpha)
                    inv = one / (one - alpha)
                    tr = st[o_t + i] * inv  # transmittance in front of k
                    st[o_t + i] = tr
                    w = alpha * tr
                    gc0, gc1, gc2, gc3 = st[o_g0 + i], st[o_g1 + i], st[o_g2 + i], st[o_g3 + i]
                    rv0, rv1, rv2, rv3 = st[o_r0 + i], st[o_r1 + i], st[o_r2 + i], st[o_r3 + i]
                    st[o_r0 + i] = alpha * c0 + (one - alpha) * rv0
                    st[o_r1 + i] = alpha * c1 + (one - alpha) * rv1
                    st[o_r2 + i] = alpha * c2 + (one - alpha) * rv2
                    st[o_r3 + i] = alpha * c3 + (one - alpha) * rv3
                    s_c0 += w * gc0
                    s_c1 += w * gc1
                    s_c2 += w * gc2
                    s_c3 += w * gc3
                    g_rest = (c0 - rv0) * gc0 + (c1 - rv1) * gc1 + (c2 - rv2) * gc2
                    g_a = (g_rest + (c3 - rv3) * gc3) * tr + st[o_ga + i] * inv + st[o_xga + i]
                    # Where alpha is clamped it depends on neither opacity nor sigma.
                    g_a = g_a * (one if raw <= a_max else zero)
                    st[o_gs + i] = -raw * g_a
                    s_op += gauss * g_a
                s_m0 = s_m1 = s_b0 = s_b1 = s_q0 = s_q1 = s_q2 = zero
                for lx in range(tile):
                    i = row + _u(lx)
                    g_sigma = st[o_gs + i]
                    dx = mx - st[o_x + i]
                    gmx = g_sigma * (ca * dx + cbdy)
                    gmy = g_sigma * (ccdy + cb * dx)
                    s_m0 += gmx
                    s_m1 += gmy
                    s_b0 += gmx if gmx >= zero else -gmx  # (abs() is a call here)
                    s_b1 += gmy if gmy >= zero else -gmy
                    s_q0 += half * g_sigma * dx * dx
                    s_q1 += g_sigma * dx * dy
                    s_q2 += g_sigma * hdy2
                run[_MEAN] += s_m0
                run[_MEAN + 1] += s_m1
                run[_ABS] += s_b0
                run[_ABS + 1] += s_b1
                run[_CONIC] += s_q0
                run[_CONIC + 1] += s_q1
                run[_CONIC + 2] += s_q2
                run[_OPACITY] += s_op
                run[_COLOR] += s_c0
                run[_COLOR + 1] += s_c1
                run[_COLOR + 2] += s_c2
                run[_COLOR + 3] += s_c3


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().cpu().numpy()


@dataclass
class _Bins:
    """One camera's bins and what its forward pass recorded: all the backward pass reads.

    Attributes:
        offsets, ids: (T+1,), (P,) tile t's Gaussians are ids[offsets[t]:offsets[t+1]].
        trans: (H, W) final transmittance per pixel.
        records: per thread part, the blended rows in order of k: tile-list index k
            (parts, cap), row within the tile (parts, cap), and exp(-sigma) of each pixel
            of the row, 0 where it did not blend (parts, cap * tile).
        tile_rec: (T, 2) each tile's range of rows in its part's records.
    """

    offsets: np.ndarray
    ids: np.ndarray
    trans: np.ndarray
    records: tuple[np.ndarray, ...]
    tile_rec: np.ndarray


# Blended rows recorded per pixel of the image, first guess of the forward pass's buffers
# (grown, and the camera re-drawn, when a scene blends more; the next call starts from
# what was seen).
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


def _forward_camera(m, con, col, op, ext, dep, k, tile_size, tiles_x, tiles_y, width, height,
                    n_parts, acc, alpha, record) -> _Bins:  # fmt: skip
    """Bin and draw one camera into acc (H, W, D) and alpha (H, W); with `record`, keep
    the blended rows for the backward pass (without, the records are empty)."""
    order = _depth_order(dep, np.flatnonzero(ext[:, 0] > 0))
    offsets, ids = _bin_tiles(m, ext, order, tile_size, tiles_x, tiles_y, width, height, n_parts)
    n_tiles = tiles_x * tiles_y
    while True:
        if record:
            cap = max(1024, int(_RECORDS_PER_PIXEL[0] * width * height / n_parts))
            cap = min(cap, int(ids.size) * tile_size + 1)  # ≤ pairs × rows
            sizes = (cap, cap, cap * tile_size)
            types_ = (np.int32, np.int32, col.dtype)
            bases = [_SCRATCH.take(n_parts * n, t) for n, t in zip(sizes, types_, strict=True)]
        else:  # nothing recorded: the kernel writes no row when cap is 0
            cap, sizes = 0, (0, 0, 0)
            bases = [np.empty(0, t) for t in (np.int32, np.int32, col.dtype)]
        rec = tuple(x[: n_parts * n].reshape(n_parts, n) for x, n in zip(bases, sizes, strict=True))
        tile_rec = np.zeros((n_tiles, 2), np.int64)
        used = np.zeros(n_parts, np.int64)
        trans = np.empty((height, width), col.dtype)
        _forward_kernel(
            m, con, col, op, ext, offsets, ids, tile_size, tiles_x, width, height, n_parts, k,
            acc, alpha, trans, *rec, tile_rec, used,
        )  # fmt: skip
        most = int(used.max()) if used.size else 0
        bins = _Bins(offsets, ids, trans, rec, tile_rec)
        if not record:
            return bins
        if most <= cap:
            _RECORDS_PER_PIXEL[0] = max(1.0, 1.25 * most * n_parts / (width * height))
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
        ext_np, dep_np = _numpy(extents).astype(dtype, copy=False), _numpy(depths)
        k = _constants(dtype)
        acc = np.empty((num_cams, height, width, n_ch), dtype)
        alpha = np.empty((num_cams, height, width), dtype)
        geometry = (tile_size, tiles_x, tiles_y, width, height, n_parts)
        arrays = (m_np, con_np, col_np, op_np, ext_np, dep_np)
        bins = [
            _forward_camera(*(x[c] for x in arrays), k, *geometry, acc[c], alpha[c], record)
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
        k = _constants(dtype)
        total = np.empty((num_cams, n, n_cols), dtype)
        base = _SCRATCH.take(n_parts * n * n_cols, dtype)
        part_grads = base[: n_parts * n * n_cols].reshape(n_parts, n, n_cols)
        for c, b in enumerate(ctx.bins):
            part_grads[:] = 0.0
            _backward_kernel(
                m_np[c], con_np[c], col_np[c], op_np[c], b.ids, tile_size, tiles_x, width,
                height, n_parts, k, b.trans, *b.records, b.tile_rec, g_acc[c], g_alpha[c],
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
    if not 1 <= tile_size <= 1024:
        raise ValueError(f"tile_size must be 1 to 1024 pixels, got {tile_size}")
    # Larger tiles are drawn as MAX_TILE ones: the image is the same (each pixel blends the
    # same Gaussians in the same order; only the gradient sums' order changes), and 32-px
    # tiles measured slower than 16.
    tile_size = min(tile_size, MAX_TILE)
    # Without a backward to come (no grad mode, nothing requiring grad) the forward pass
    # keeps no records of its blended pairs.
    record = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, colors, opacities)
    )
    return NumbaRasterize.apply(
        means2d, conics, colors, opacities, extents, depths, width, height, tile_size, record
    )
