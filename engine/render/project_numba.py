"""Projection and SH colours on the CPU as numba kernels with a hand-written backward.

The same maths as `projection.project` (EWA splatting with 3DGS's clamped Jacobian, the
0.3-pixel low-pass, the opacity-aware box, `max(SH · basis + 0.5, 0)` colours), but one
pass over the Gaussians instead of ~150 PyTorch ops over (C, N, ...) tensors and their
autograd graph, which were most of a refinement step on the CPU. Where the torch version
replaces a value by a constant (a depth outside [near, far] by 1, a non-positive 2D
determinant by 1) the gradient through that value is zero here as well, so both backends
give the same gradients (tests/test_render.py checks them against each other and by
gradcheck).

Gaussians are the parallel loop and cameras the inner one, so every gradient row belongs
to one thread: no races, no per-thread copies.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .numba_cache import configure
from .projection import ALPHA_THRESHOLD, EPS_2D, Projection
from .sh import C0, C1, C2, C3

# Compiled code is cached where numba_cache chooses (off where nothing is writable).
CACHE = configure().enabled

_C2_0, _C2_1, _C2_2, _C2_3, _C2_4 = C2
_C3_0, _C3_1, _C3_2, _C3_3, _C3_4, _C3_5, _C3_6 = C3
_LOG_ALPHA_THRESHOLD = math.log(ALPHA_THRESHOLD)


@njit(cache=CACHE, nogil=True, inline="always")
def _basis(x, y, z, degree, out):  # pragma: no cover
    """out[:(degree + 1)²] = the SH basis at the unit direction (x, y, z) (sh.sh_basis)."""
    out[0] = C0
    if degree >= 1:
        out[1] = -C1 * y
        out[2] = C1 * z
        out[3] = -C1 * x
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out[4] = _C2_0 * x * y
        out[5] = _C2_1 * y * z
        out[6] = _C2_2 * (2.0 * zz - xx - yy)
        out[7] = _C2_3 * x * z
        out[8] = _C2_4 * (xx - yy)
        if degree >= 3:
            out[9] = _C3_0 * y * (3.0 * xx - yy)
            out[10] = _C3_1 * x * y * z
            out[11] = _C3_2 * y * (4.0 * zz - xx - yy)
            out[12] = _C3_3 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy)
            out[13] = _C3_4 * x * (4.0 * zz - xx - yy)
            out[14] = _C3_5 * z * (xx - yy)
            out[15] = _C3_6 * x * (xx - 3.0 * yy)


@njit(cache=CACHE, nogil=True, inline="always")
def _basis_grad(x, y, z, degree, g, out):  # pragma: no cover
    """out = Σ_k g[k] · ∂basis_k/∂(x, y, z), for the first (degree + 1)² terms."""
    gx = gy = gz = 0.0
    if degree >= 1:
        gy -= C1 * g[1]
        gz += C1 * g[2]
        gx -= C1 * g[3]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        gx += _C2_0 * g[4] * y
        gy += _C2_0 * g[4] * x
        gy += _C2_1 * g[5] * z
        gz += _C2_1 * g[5] * y
        gx -= 2.0 * _C2_2 * g[6] * x
        gy -= 2.0 * _C2_2 * g[6] * y
        gz += 4.0 * _C2_2 * g[6] * z
        gx += _C2_3 * g[7] * z
        gz += _C2_3 * g[7] * x
        gx += 2.0 * _C2_4 * g[8] * x
        gy -= 2.0 * _C2_4 * g[8] * y
        if degree >= 3:
            k = _C3_0 * g[9]
            gx += k * 6.0 * x * y
            gy += k * (3.0 * xx - 3.0 * yy)
            k = _C3_1 * g[10]
            gx += k * y * z
            gy += k * x * z
            gz += k * x * y
            k = _C3_2 * g[11]
            gx -= k * 2.0 * x * y
            gy += k * (4.0 * zz - xx - 3.0 * yy)
            gz += k * 8.0 * y * z
            k = _C3_3 * g[12]
            gx -= k * 6.0 * x * z
            gy -= k * 6.0 * y * z
            gz += k * (6.0 * zz - 3.0 * xx - 3.0 * yy)
            k = _C3_4 * g[13]
            gx += k * (4.0 * zz - 3.0 * xx - yy)
            gy -= k * 2.0 * x * y
            gz += k * 8.0 * x * z
            k = _C3_5 * g[14]
            gx += k * 2.0 * x * z
            gy -= k * 2.0 * y * z
            gz += k * (xx - yy)
            k = _C3_6 * g[15]
            gx += k * (3.0 * xx - 3.0 * yy)
            gy -= k * 6.0 * x * y
    out[0], out[1], out[2] = gx, gy, gz


@njit(cache=CACHE, nogil=True, inline="always")
def _rotation(quats, i, rot):  # pragma: no cover
    """rot = R(q_i / max(|q_i|, 1e-12)) (rotations.quaternion_to_matrix); returns |q_i|."""
    qn = math.sqrt(quats[i, 0] ** 2 + quats[i, 1] ** 2 + quats[i, 2] ** 2 + quats[i, 3] ** 2)
    inv = 1.0 / max(qn, 1e-12)
    w, x, y, z = quats[i, 0] * inv, quats[i, 1] * inv, quats[i, 2] * inv, quats[i, 3] * inv
    rot[0, 0] = 1.0 - 2.0 * (y * y + z * z)
    rot[0, 1] = 2.0 * (x * y - w * z)
    rot[0, 2] = 2.0 * (x * z + w * y)
    rot[1, 0] = 2.0 * (x * y + w * z)
    rot[1, 1] = 1.0 - 2.0 * (x * x + z * z)
    rot[1, 2] = 2.0 * (y * z - w * x)
    rot[2, 0] = 2.0 * (x * z - w * y)
    rot[2, 1] = 2.0 * (y * z + w * x)
    rot[2, 2] = 1.0 - 2.0 * (x * x + y * y)
    return qn


@njit(cache=CACHE, nogil=True, inline="always")
def _view_point(w, mx, my, mz, near, far):  # pragma: no cover
    """Camera-space (x, y, z) of a mean under world-to-camera `w`, whether z lies in
    (near, far), the depth used for division (z, else 1.0) and its inverse; shared by the
    forward and backward kernels (inlined, so no call in their loops)."""
    x = w[0, 0] * mx + w[0, 1] * my + w[0, 2] * mz + w[0, 3]
    y = w[1, 0] * mx + w[1, 1] * my + w[1, 2] * mz + w[1, 3]
    z = w[2, 0] * mx + w[2, 1] * my + w[2, 2] * mz + w[2, 3]
    in_depth = near < z < far
    zs = z if in_depth else 1.0
    return x, y, z, in_depth, zs, 1.0 / zs


@njit(cache=CACHE, nogil=True, inline="always")
def _blurred_det(a, b, c2, eps2d):  # pragma: no cover
    """The 2D covariance [[a, b], [b, c2]] with eps2d added to its diagonal: (a, c2, its
    determinant, whether that is positive, the determinant used for division (else 1.0));
    shared by the forward and backward kernels (inlined)."""
    a += eps2d
    c2 += eps2d
    det = a * c2 - b * b
    ok_det = det > 0.0
    return a, c2, det, ok_det, det if ok_det else 1.0


@njit(cache=CACHE, parallel=True, nogil=True)
def _project_forward(
    means, log_scales, quats, opacity_logits, sh, viewmats, intr, centers, width, height,
    near, far, eps2d, degree,
    out_means2d, out_conics, out_colors, out_opac, out_depths, out_extents,
):  # pragma: no cover  # fmt: skip
    n, n_cams = means.shape[0], viewmats.shape[0]
    k_sh = (degree + 1) ** 2
    for i in prange(n):
        rot = np.empty((3, 3))
        ell = np.empty((3, 3))
        basis = np.empty(16)
        _rotation(quats, i, rot)
        for r in range(3):
            for c in range(3):
                ell[r, c] = rot[r, c] * math.exp(log_scales[i, c])
        opac = 1.0 / (1.0 + math.exp(-opacity_logits[i]))
        thresh = math.log(opac) - _LOG_ALPHA_THRESHOLD
        mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
        for cam in range(n_cams):
            w = viewmats[cam]
            fx, fy, cx, cy = intr[cam, 0], intr[cam, 1], intr[cam, 2], intr[cam, 3]
            x, y, z, in_depth, zs, inv_z = _view_point(w, mx, my, mz, near, far)
            tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
            rx = min(max(x * inv_z, -(cx / fx + 0.3 * tan_x)), (width - cx) / fx + 0.3 * tan_x)
            ry = min(max(y * inv_z, -(cy / fy + 0.3 * tan_y)), (height - cy) / fy + 0.3 * tan_y)
            tx, ty = zs * rx, zs * ry
            a = b = c2 = 0.0
            for j in range(3):
                t0 = t1 = 0.0
                for r in range(3):
                    jw0 = fx * inv_z * w[0, r] - fx * tx * inv_z * inv_z * w[2, r]
                    jw1 = fy * inv_z * w[1, r] - fy * ty * inv_z * inv_z * w[2, r]
                    t0 += jw0 * ell[r, j]
                    t1 += jw1 * ell[r, j]
                a += t0 * t0
                b += t0 * t1
                c2 += t1 * t1
            a, c2, det, ok_det, dets = _blurred_det(a, b, c2, eps2d)
            out_conics[cam, i, 0] = c2 / dets
            out_conics[cam, i, 1] = -b / dets
            out_conics[cam, i, 2] = a / dets
            u = fx * x * inv_z + cx
            v = fy * y * inv_z + cy
            out_means2d[cam, i, 0] = u
            out_means2d[cam, i, 1] = v
            out_depths[cam, i] = z
            k2 = 2.0 * max(thresh, 0.0)
            ex, ey = math.sqrt(k2 * a), math.sqrt(k2 * c2)
            on_screen = (u + ex > 0.0) and (u - ex < width) and (v + ey > 0.0) and (v - ey < height)
            visible = in_depth and ok_det and thresh > 0.0 and on_screen
            out_extents[cam, i, 0] = ex if visible else 0.0
            out_extents[cam, i, 1] = ey if visible else 0.0
            out_opac[cam, i] = opac if visible else 0.0
            dx, dy, dz = mx - centers[cam, 0], my - centers[cam, 1], mz - centers[cam, 2]
            nrm = max(math.sqrt(dx * dx + dy * dy + dz * dz), 1e-12)
            _basis(dx / nrm, dy / nrm, dz / nrm, degree, basis)
            for ch in range(3):
                s = 0.5
                for k in range(k_sh):
                    s += basis[k] * sh[i, k, ch]
                out_colors[cam, i, ch] = max(s, 0.0)


@njit(cache=CACHE, parallel=True, nogil=True)
def _project_backward(
    means, log_scales, quats, opacity_logits, sh, viewmats, intr, centers, width, height,
    near, far, eps2d, degree,
    g_means2d, g_conics, g_colors, g_opac, g_depths,
    out_means, out_log_scales, out_quats, out_logits, out_sh,
):  # pragma: no cover  # fmt: skip
    n, n_cams = means.shape[0], viewmats.shape[0]
    k_sh = (degree + 1) ** 2
    for i in prange(n):
        rot = np.empty((3, 3))
        scale = np.empty(3)
        ell = np.empty((3, 3))
        g_ell = np.zeros((3, 3))
        basis = np.empty(16)
        g_basis = np.empty(16)
        g_dir = np.empty(3)
        jw0 = np.empty(3)
        jw1 = np.empty(3)
        t0 = np.empty(3)
        t1 = np.empty(3)
        # Every output row is written here (the SH row summed over the cameras below), so
        # the caller allocates them uninitialised: no serial memset of N x 16 x 3 floats.
        for k in range(out_sh.shape[1]):
            for ch in range(out_sh.shape[2]):
                out_sh[i, k, ch] = 0.0
        qn = _rotation(quats, i, rot)
        for c in range(3):
            scale[c] = math.exp(log_scales[i, c])
        for r in range(3):
            for c in range(3):
                ell[r, c] = rot[r, c] * scale[c]
        opac = 1.0 / (1.0 + math.exp(-opacity_logits[i]))
        thresh = math.log(opac) - _LOG_ALPHA_THRESHOLD
        mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
        gmx = gmy = gmz = 0.0
        g_o = 0.0
        for cam in range(n_cams):
            w = viewmats[cam]
            fx, fy, cx, cy = intr[cam, 0], intr[cam, 1], intr[cam, 2], intr[cam, 3]
            x, y, z, in_depth, zs, inv_z = _view_point(w, mx, my, mz, near, far)
            tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
            lo_x, hi_x = -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x
            lo_y, hi_y = -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y
            rx0, ry0 = x * inv_z, y * inv_z
            rx, ry = min(max(rx0, lo_x), hi_x), min(max(ry0, lo_y), hi_y)
            tx, ty = zs * rx, zs * ry
            for r in range(3):
                jw0[r] = fx * inv_z * w[0, r] - fx * tx * inv_z * inv_z * w[2, r]
                jw1[r] = fy * inv_z * w[1, r] - fy * ty * inv_z * inv_z * w[2, r]
            a = b = c2 = 0.0
            for j in range(3):
                s0 = s1 = 0.0
                for r in range(3):
                    s0 += jw0[r] * ell[r, j]
                    s1 += jw1[r] * ell[r, j]
                t0[j], t1[j] = s0, s1
                a += s0 * s0
                b += s0 * s1
                c2 += s1 * s1
            a, c2, det, ok_det, dets = _blurred_det(a, b, c2, eps2d)
            k2 = 2.0 * max(thresh, 0.0)
            ex, ey = math.sqrt(k2 * a), math.sqrt(k2 * c2)
            u = fx * x * inv_z + cx
            v = fy * y * inv_z + cy
            on_screen = (u + ex > 0.0) and (u - ex < width) and (v + ey > 0.0) and (v - ey < height)
            visible = in_depth and ok_det and thresh > 0.0 and on_screen

            # opacity (masked by visibility) and the raw depth
            if visible:
                g_o += g_opac[cam, i]
            gz_raw = g_depths[cam, i]

            # colours: max(Σ basis·sh + 0.5, 0); directions from the camera centre
            dx, dy, dz = mx - centers[cam, 0], my - centers[cam, 1], mz - centers[cam, 2]
            nrm_raw = math.sqrt(dx * dx + dy * dy + dz * dz)
            nrm = max(nrm_raw, 1e-12)
            ux, uy, uz = dx / nrm, dy / nrm, dz / nrm
            _basis(ux, uy, uz, degree, basis)
            for k in range(k_sh):
                g_basis[k] = 0.0
            for ch in range(3):
                s = 0.5
                for k in range(k_sh):
                    s += basis[k] * sh[i, k, ch]
                if s >= 0.0:
                    gv = g_colors[cam, i, ch]
                    if gv != 0.0:
                        for k in range(k_sh):
                            out_sh[i, k, ch] += basis[k] * gv
                            g_basis[k] += sh[i, k, ch] * gv
            if degree >= 1:
                _basis_grad(ux, uy, uz, degree, g_basis, g_dir)
                if nrm_raw > 1e-12:
                    dot = ux * g_dir[0] + uy * g_dir[1] + uz * g_dir[2]
                    gmx += (g_dir[0] - ux * dot) / nrm
                    gmy += (g_dir[1] - uy * dot) / nrm
                    gmz += (g_dir[2] - uz * dot) / nrm
                else:
                    gmx += g_dir[0] / nrm
                    gmy += g_dir[1] / nrm
                    gmz += g_dir[2] / nrm

            # conics (c, -b, a) / det
            gc0, gc1, gc2 = g_conics[cam, i, 0], g_conics[cam, i, 1], g_conics[cam, i, 2]
            g_a = gc2 / dets
            g_c = gc0 / dets
            g_b = -gc1 / dets
            if ok_det:
                g_det = -(gc0 * c2 - gc1 * b + gc2 * a) / (det * det)
                g_a += g_det * c2
                g_c += g_det * a
                g_b -= 2.0 * g_det * b
            # a = t0·t0 + eps, b = t0·t1, c = t1·t1 + eps; t0_j = Σ_r jw0_r L_rj
            g_inv_z = 0.0
            g_tx = g_ty = 0.0
            for r in range(3):
                g_jw0 = g_jw1 = 0.0
                for j in range(3):
                    gt0 = 2.0 * g_a * t0[j] + g_b * t1[j]
                    gt1 = 2.0 * g_c * t1[j] + g_b * t0[j]
                    g_ell[r, j] += jw0[r] * gt0 + jw1[r] * gt1
                    g_jw0 += ell[r, j] * gt0
                    g_jw1 += ell[r, j] * gt1
                g_inv_z += g_jw0 * (fx * w[0, r] - 2.0 * fx * tx * inv_z * w[2, r])
                g_inv_z += g_jw1 * (fy * w[1, r] - 2.0 * fy * ty * inv_z * w[2, r])
                g_tx -= g_jw0 * fx * inv_z * inv_z * w[2, r]
                g_ty -= g_jw1 * fy * inv_z * inv_z * w[2, r]
            # means2d = (fx x / zs + cx, fy y / zs + cy)
            gu, gv2 = g_means2d[cam, i, 0], g_means2d[cam, i, 1]
            g_x = gu * fx * inv_z
            g_y = gv2 * fy * inv_z
            g_zs = -(gu * fx * x + gv2 * fy * y) * inv_z * inv_z
            g_zs -= g_inv_z * inv_z * inv_z
            # tx = zs · clamp(x / zs, lo, hi) (the clamp passes the gradient strictly inside)
            g_zs += g_tx * rx + g_ty * ry
            if lo_x < rx0 < hi_x:
                g_x += g_tx
                g_zs -= g_tx * rx0
            if lo_y < ry0 < hi_y:
                g_y += g_ty
                g_zs -= g_ty * ry0
            if in_depth:
                gz_raw += g_zs
            # p_cam = W m + t
            gmx += w[0, 0] * g_x + w[1, 0] * g_y + w[2, 0] * gz_raw
            gmy += w[0, 1] * g_x + w[1, 1] * g_y + w[2, 1] * gz_raw
            gmz += w[0, 2] * g_x + w[1, 2] * g_y + w[2, 2] * gz_raw
        out_means[i, 0] = gmx
        out_means[i, 1] = gmy
        out_means[i, 2] = gmz
        out_logits[i] = g_o * opac * (1.0 - opac)
        # L = R diag(s), s = exp(log_scale)
        g_rot = np.empty((3, 3))
        for c in range(3):
            gs = 0.0
            for r in range(3):
                g_rot[r, c] = g_ell[r, c] * scale[c]
                gs += g_ell[r, c] * rot[r, c]
            out_log_scales[i, c] = gs * scale[c]
        inv = 1.0 / max(qn, 1e-12)
        w_, x_, y_, z_ = quats[i, 0] * inv, quats[i, 1] * inv, quats[i, 2] * inv, quats[i, 3] * inv
        g = g_rot
        gw = 2.0 * (-z_ * g[0, 1] + y_ * g[0, 2] + z_ * g[1, 0] - x_ * g[1, 2]
                    - y_ * g[2, 0] + x_ * g[2, 1])  # fmt: skip
        gx = 2.0 * (y_ * g[0, 1] + z_ * g[0, 2] + y_ * g[1, 0] - 2.0 * x_ * g[1, 1]
                    - w_ * g[1, 2] + z_ * g[2, 0] + w_ * g[2, 1] - 2.0 * x_ * g[2, 2])  # fmt: skip
        gy = 2.0 * (-2.0 * y_ * g[0, 0] + x_ * g[0, 1] + w_ * g[0, 2] + x_ * g[1, 0]
                    + z_ * g[1, 2] - w_ * g[2, 0] + z_ * g[2, 1] - 2.0 * y_ * g[2, 2])  # fmt: skip
        gz = 2.0 * (-2.0 * z_ * g[0, 0] - w_ * g[0, 1] + x_ * g[0, 2] + w_ * g[1, 0]
                    - 2.0 * z_ * g[1, 1] + y_ * g[1, 2] + x_ * g[2, 0] + y_ * g[2, 1])  # fmt: skip
        if qn > 1e-12:
            dot = w_ * gw + x_ * gx + y_ * gy + z_ * gz
            out_quats[i, 0] = (gw - w_ * dot) * inv
            out_quats[i, 1] = (gx - x_ * dot) * inv
            out_quats[i, 2] = (gy - y_ * dot) * inv
            out_quats[i, 3] = (gz - z_ * dot) * inv
        else:
            out_quats[i, 0], out_quats[i, 1] = gw * inv, gx * inv
            out_quats[i, 2], out_quats[i, 3] = gy * inv, gz * inv


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().cpu().numpy()


class _NumbaProject(torch.autograd.Function):
    """(means, log_scales, quats, opacity_logits, sh) -> screen-space Gaussians."""

    @staticmethod
    def forward(ctx, means, log_scales, quats, opacity_logits, sh, viewmats, intr, centers,
                width, height, near, far, eps2d, degree):  # fmt: skip
        dtype = means.dtype
        n, n_cams = means.shape[0], viewmats.shape[0]
        arrays = [_np(t) for t in (means, log_scales, quats, opacity_logits, sh)]
        cams = [_np(t.to(dtype)) for t in (viewmats, intr, centers)]
        np_dtype = arrays[0].dtype
        outs = (
            np.empty((n_cams, n, 2), np_dtype), np.empty((n_cams, n, 3), np_dtype),
            np.empty((n_cams, n, 3), np_dtype), np.empty((n_cams, n), np_dtype),
            np.empty((n_cams, n), np_dtype), np.empty((n_cams, n, 2), np_dtype),
        )  # fmt: skip
        if n:
            _project_forward(*arrays, *cams, width, height, near, far, eps2d, degree, *outs)
        ctx.saved = (arrays, cams, (width, height, near, far, eps2d, degree))
        tensors = [torch.from_numpy(o) for o in outs]
        ctx.mark_non_differentiable(tensors[5])
        return tuple(tensors)

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_colors, g_opac, g_depths, _g_extents):
        arrays, cams, scalars = ctx.saved
        n = arrays[0].shape[0]
        np_dtype = arrays[0].dtype

        def grad(g: Tensor | None, shape: tuple[int, ...]) -> np.ndarray:
            if g is None:
                return np.zeros(shape, np_dtype)
            return _np(g).astype(np_dtype, copy=False)

        n_cams = cams[0].shape[0]
        grads_in = (
            grad(g_means2d, (n_cams, n, 2)), grad(g_conics, (n_cams, n, 3)),
            grad(g_colors, (n_cams, n, 3)), grad(g_opac, (n_cams, n)),
            grad(g_depths, (n_cams, n)),
        )  # fmt: skip
        outs = [np.empty_like(a) for a in arrays]  # the kernel writes every element
        if n:
            _project_backward(*arrays, *cams, *scalars, *grads_in, *outs)
        return (*(torch.from_numpy(o) for o in outs), *([None] * 9))


def project_numba(
    gaussians: Gaussians,
    cameras: Cameras,
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = EPS_2D,
) -> Projection:
    """`projection.project` on the CPU with numba kernels (same arguments and result)."""
    dtype = gaussians.dtype
    cams = cameras.to(device=gaussians.device, dtype=dtype)
    degree = gaussians.degree_for(sh_degree)
    viewmats = cams.world_to_camera.contiguous()
    intr = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], dim=-1)
    means2d, conics, colors, opac, depths, extents = _NumbaProject.apply(
        gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits,
        gaussians.sh, viewmats, intr, cams.centers, int(cams.width), int(cams.height),
        float(near), float(far), float(eps2d), int(degree),
    )  # fmt: skip
    return Projection(
        means2d=means2d, conics=conics, depths=depths, opacities=opac, extents=extents,
        colors=colors, visible=extents[..., 0] > 0,
    )  # fmt: skip
