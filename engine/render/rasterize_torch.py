"""Portable tile rasteriser in plain PyTorch (CPU, MPS, CUDA without gsplat).

Same binning as the CPU kernel (depth order, 16×16 tiles), then each group of
tiles is composited as a dense (tiles, pixels, Gaussians-in-tile) block:
alphas, a cumulative product for transmittance, and the 3DGS stopping rule
applied as a prefix mask. Tiles are grouped by list length so padding stays
small, and every group runs under activation checkpointing, so memory is
bounded by one group whatever the number of Gaussians; autograd supplies the
backward pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .constants import ALPHA_MAX, ALPHA_MIN, BOX_MARGIN, T_MIN

# Upper bound on tile-pixel-Gaussian triples evaluated at once (~4M: the autograd
# graph of one group then stays within a few hundred MB).
DEFAULT_MAX_ELEMENTS = 1 << 22
# Gaussians per tile composited per step; tiles that are done drop out between steps.
K_CHUNK = 64


def bin_tiles(
    means2d: Tensor, extents: Tensor, depths: Tensor, width: int, height: int, tile: int
) -> tuple[Tensor, Tensor]:
    """Tile lists in depth order.

    Args:
        means2d: (N, 2), extents: (N, 2) (0 = culled), depths: (N,).
    Returns:
        tile_ids: (P,) tile of each pair, ascending; gauss_ids: (P,) Gaussian of each pair,
        front to back within a tile.
    """
    device = means2d.device
    tiles_x = math.ceil(width / tile)
    visible = torch.nonzero(extents[:, 0] > 0).flatten()
    order = visible[torch.argsort(depths[visible], stable=True)]
    m, e = means2d[order].detach(), extents[order].detach() + BOX_MARGIN
    px0 = torch.ceil(m[:, 0] - e[:, 0] - 0.5).clamp_min(0)
    px1 = torch.floor(m[:, 0] + e[:, 0] - 0.5).clamp_max(width - 1)
    py0 = torch.ceil(m[:, 1] - e[:, 1] - 0.5).clamp_min(0)
    py1 = torch.floor(m[:, 1] + e[:, 1] - 0.5).clamp_max(height - 1)
    keep = (px0 <= px1) & (py0 <= py1)
    order = order[keep]
    tx0, tx1 = (px0[keep] // tile).long(), (px1[keep] // tile).long()
    ty0, ty1 = (py0[keep] // tile).long(), (py1[keep] // tile).long()
    nx = tx1 - tx0 + 1
    counts = nx * (ty1 - ty0 + 1)
    total = int(counts.sum())
    gauss_ids = torch.repeat_interleave(order, counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    local = torch.arange(total, device=device) - first
    nx_rep = torch.repeat_interleave(nx, counts)
    tx = torch.repeat_interleave(tx0, counts) + local % nx_rep
    ty = torch.repeat_interleave(ty0, counts) + local // nx_rep
    tile_ids = ty * tiles_x + tx
    tile_ids, perm = torch.sort(tile_ids, stable=True)
    return tile_ids, gauss_ids[perm]


def _composite(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    ids: Tensor,
    valid: Tensor,
    pix: Tensor,
    k_chunk: int = K_CHUNK,
) -> tuple[Tensor, Tensor]:
    """Composite one group of tiles, front to back in slices of `k_chunk` Gaussians.

    Tiles whose pixels have all stopped drop out of later slices, which is the
    batched form of 3DGS's per-pixel early termination.

    Args:
        means2d (N, 2), conics (N, 3), colors (N, D), opacities (N,): one camera.
        ids: (T, K) Gaussian per tile slot (front to back), valid: (T, K) slot used.
        pix: (T, P, 2) pixel centres of each tile.
    Returns:
        acc (T, P, D), alpha (T, P).
    """
    n_tiles, n_pix = pix.shape[:2]
    trans = pix.new_ones(n_tiles, n_pix)
    acc = pix.new_zeros(n_tiles, n_pix, colors.shape[1])
    done = torch.zeros(n_tiles, n_pix, dtype=torch.bool, device=pix.device)
    active = torch.arange(n_tiles, device=pix.device)
    lengths = valid.sum(dim=1)  # slots are filled front first, so this ends each list
    for k0 in range(0, ids.shape[1], k_chunk):
        sl = ids[active, k0 : k0 + k_chunk]  # (A, k)
        px = pix[active]
        t_act = trans[active]
        d_act = done[active]
        m = means2d[sl]
        con = conics[sl]
        dx = m[:, None, :, 0] - px[:, :, None, 0]  # (A, P, k)
        dy = m[:, None, :, 1] - px[:, :, None, 1]
        sigma = 0.5 * (con[:, None, :, 0] * dx * dx + con[:, None, :, 2] * dy * dy) + (
            con[:, None, :, 1] * dx * dy
        )
        alpha = (opacities[sl][:, None, :] * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
        used = valid[active, None, k0 : k0 + k_chunk] & (sigma >= 0) & (alpha >= ALPHA_MIN)
        alpha = torch.where(used & ~d_act[..., None], alpha, torch.zeros_like(alpha))
        # 3DGS stops a pixel before the Gaussian that would take transmittance below
        # T_MIN; transmittance only falls, so what is kept is a prefix of each list.
        with torch.no_grad():
            keep = t_act.detach()[..., None] * torch.cumprod(1.0 - alpha, dim=-1) >= T_MIN
            d_act = d_act | ~keep[..., -1]
        alpha = alpha * keep
        local_trans = torch.cumprod(1.0 - alpha, dim=-1)
        front = torch.cat([torch.ones_like(local_trans[..., :1]), local_trans[..., :-1]], dim=-1)
        weights = alpha * front * t_act[..., None]
        acc = acc.index_add(0, active, torch.einsum("tpk,tkd->tpd", weights, colors[sl]))
        trans = trans.index_copy(0, active, t_act * local_trans[..., -1])
        done = done.index_copy(0, active, d_act)
        still = ~d_act.all(dim=1) & (lengths[active] > k0 + k_chunk)
        if not bool(still.any()):
            break
        active = active[still]
    return acc, 1.0 - trans


def rasterize_torch(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    extents: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Alpha-composite screen-space Gaussians front to back (any PyTorch device).

    Args and returns as `rasterize_numba`: inputs (C, N, ·), outputs acc (C, H, W, D)
    without background and alpha (C, H, W).
    """
    num_cams, _, n_ch = colors.shape
    device, dtype = colors.device, colors.dtype
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles, n_pix = tiles_x * tiles_y, tile_size * tile_size
    local = torch.arange(tile_size, device=device, dtype=dtype) + 0.5
    ly, lx = torch.meshgrid(local, local, indexing="ij")
    local_xy = torch.stack([lx.flatten(), ly.flatten()], dim=-1)  # (P, 2)
    tile_index = torch.arange(n_tiles, device=device)
    tile_origin = torch.stack(
        [(tile_index % tiles_x) * tile_size, (tile_index // tiles_x) * tile_size], dim=-1
    ).to(dtype)  # (n_tiles, 2)

    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, colors, opacities)
    )
    accs, alphas = [], []
    for c in range(num_cams):
        tile_ids, gauss_ids = bin_tiles(means2d[c], extents[c], depths[c], width, height, tile_size)
        counts = torch.bincount(tile_ids, minlength=n_tiles)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(tile_ids.numel(), device=device) - starts[tile_ids]
        busy = torch.nonzero(counts > 0).flatten()
        busy = busy[torch.argsort(counts[busy], descending=True)]
        busy_counts = counts[busy].tolist()
        out_tiles, out_acc, out_alpha = [], [], []
        i = 0
        while i < len(busy_counts):
            k_max = busy_counts[i]
            # Without autograd only one slice of the group is alive at a time; with it,
            # the recomputed group keeps every slice's graph until its backward.
            k_alive = k_max if grad else min(k_max, K_CHUNK)
            n_group = max(1, min(len(busy_counts) - i, max_elements // (n_pix * k_alive)))
            group = busy[i : i + n_group]
            # Dense (tile, slot) table of this group's Gaussians, front to back.
            row_of_tile = torch.full((n_tiles,), -1, dtype=torch.long, device=device)
            row_of_tile[group] = torch.arange(n_group, device=device)
            rows = row_of_tile[tile_ids]
            sel = rows >= 0
            ids = torch.zeros((n_group, k_max), dtype=torch.long, device=device)
            valid = torch.zeros((n_group, k_max), dtype=torch.bool, device=device)
            ids[rows[sel], slot[sel]] = gauss_ids[sel]
            valid[rows[sel], slot[sel]] = True
            pix = tile_origin[group][:, None, :] + local_xy[None]
            args = (means2d[c], conics[c], colors[c], opacities[c], ids, valid, pix)
            if grad:
                acc, alpha = checkpoint(_composite, *args, use_reentrant=False)
            else:
                acc, alpha = _composite(*args)
            out_tiles.append(group)
            out_acc.append(acc)
            out_alpha.append(alpha)
            i += n_group
        acc_tiles = torch.zeros((n_tiles, n_pix, n_ch), device=device, dtype=dtype)
        alpha_tiles = torch.zeros((n_tiles, n_pix), device=device, dtype=dtype)
        if out_tiles:
            index = torch.cat(out_tiles)
            acc_tiles = acc_tiles.index_copy(0, index, torch.cat(out_acc))
            alpha_tiles = alpha_tiles.index_copy(0, index, torch.cat(out_alpha))
        accs.append(_untile(acc_tiles, tiles_x, tiles_y, tile_size, width, height))
        alphas.append(
            _untile(alpha_tiles[..., None], tiles_x, tiles_y, tile_size, width, height)[..., 0]
        )
    return torch.stack(accs), torch.stack(alphas)


def _untile(x: Tensor, tiles_x: int, tiles_y: int, tile: int, width: int, height: int) -> Tensor:
    """(tiles, tile², D) -> (H, W, D)."""
    d = x.shape[-1]
    img = x.reshape(tiles_y, tiles_x, tile, tile, d).permute(0, 2, 1, 3, 4)
    return img.reshape(tiles_y * tile, tiles_x * tile, d)[:height, :width]
