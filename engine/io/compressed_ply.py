"""PlayCanvas compressed PLY (`.compressed.ply`) reader and writer (DESIGN.md §6).

The layout is that of `@playcanvas/splat-transform` (`write-compressed-ply.ts`,
`decompress-ply.ts`), binary_little_endian 1.0, three elements in this order:

    element chunk ceil(N / 256)      float32 min_x min_y min_z max_x max_y max_z
                                     min_scale_x .. min_scale_z max_scale_x .. max_scale_z
                                     min_r min_g min_b max_r max_g max_b   (older files omit
                                     these six: colours are then absolute in [0, 1])
    element vertex N                 uint32 packed_position packed_rotation packed_scale
                                     packed_color
    element sh N                     uchar f_rest_0 .. f_rest_{3(K-1)-1}  (only for SH degree
                                     >= 1; channel-major as in INRIA PLY)

Splat i belongs to chunk i // 256 and is quantised within that chunk's bounds, with
unorm(v, b) = round(clamp(v, 0, 1) · (2^b - 1)) and t = (x - min) / (max - min):

    packed_position  bits 21-31 x (11 bits), 11-20 y (10 bits), 0-10 z (11 bits)
    packed_scale     the same 11-10-11 split of the log-scales (chunk bounds clamped to ±20)
    packed_color     bits 24-31 r, 16-23 g, 8-15 b: colour 0.5 + C0 · dc within the chunk's
                     colour bounds; bits 0-7 alpha = unorm(sigmoid(opacity), 8), absolute
    packed_rotation  bits 30-31 index (in rot_0..rot_3 = w x y z order) of the largest
                     |component|, made positive; then the other three in increasing index
                     order, 10 bits each from high to low: unorm(c · sqrt(1/2) + 0.5, 10)
    sh               byte = clamp(trunc((x / 8 + 0.5) · 256), 0, 255); decoded as -4 for 0,
                     +4 for 255, else ((byte + 0.5) / 256 - 0.5) · 8

Axes are raw world coordinates (no change), as in INRIA PLY. The writer sorts the splats
along a Morton (Z-order) curve first, like splat-transform, so that each chunk's bounds are
tight; `morton_order` gives that permutation and `sort=False` keeps the input order.
Values beyond a format's reach are clamped: log-scales outside ±20 and SH outside ±4.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_atomic
from ..gaussians import SH_C0, Gaussians, GaussiansError
from .limits import check_gaussian_count
from .ply import MAX_HEADER_BYTES, PlyHeader, PlyProblem, parse_header

__all__ = [
    "CHUNK_SIZE",
    "CompressedPlyFormatError",
    "is_compressed_ply",
    "morton_order",
    "read_compressed_ply",
    "write_compressed_ply",
]

CHUNK_SIZE = 256
POSITION_BOUNDS = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z"]
SCALE_BOUNDS = [f"{e}_scale_{a}" for e in ("min", "max") for a in "xyz"]
COLOR_BOUNDS = ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
CHUNK_PROPERTIES = POSITION_BOUNDS + SCALE_BOUNDS + COLOR_BOUNDS
VERTEX_PROPERTIES = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
SCALE_CLAMP = 20.0
SQRT1_2 = math.sqrt(0.5)
_SH_REST_COUNTS = {9: 1, 24: 2, 45: 3}
_F32 = np.dtype("<f4")
_U32 = np.dtype("<u4")
_U8 = np.dtype("u1")
# Largest component index -> the other three, in increasing order.
_OTHERS = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])


class CompressedPlyFormatError(ValueError):
    """A file is not a compressed PLY this module can read; the message names the file."""


# ============================================================================ writing


def morton_order(means: np.ndarray | torch.Tensor) -> np.ndarray:
    """Stable permutation sorting (N, 3) positions along a 21-bit-per-axis Morton curve."""
    p = np.asarray(means.detach().cpu() if isinstance(means, torch.Tensor) else means)
    p = p.astype(np.float64).reshape(-1, 3)
    if len(p) == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    cells = np.clip(np.floor((p - lo) / span * (2**21 - 1)), 0, 2**21 - 1).astype(np.uint64)
    code = np.zeros(len(p), dtype=np.uint64)
    for bit in range(21):
        for axis in range(3):
            b = (cells[:, axis] >> np.uint64(bit)) & np.uint64(1)
            code |= b << np.uint64(3 * bit + (2 - axis))
    return np.argsort(code, kind="stable")


def write_compressed_ply(
    path: str | os.PathLike[str], gaussians: Gaussians, *, sort: bool = True
) -> None:
    """Write `gaussians` as a PlayCanvas compressed PLY, atomically.

    sort: reorder the splats along a Morton curve first (`morton_order`), as splat-transform
        does; the file then holds them in that order. False keeps the input order.
    """
    path = Path(path)
    gaussians.validate()
    g = gaussians.detach().to("cpu", torch.float64)
    n, degree = len(g), g.sh_degree
    means = g.means.numpy()
    order = morton_order(means) if sort else np.arange(n)
    means = means[order]
    log_scales = np.clip(g.log_scales.numpy()[order], -SCALE_CLAMP, SCALE_CLAMP)
    quats = g.quats.numpy()[order]
    colors = 0.5 + SH_C0 * g.sh[:, 0, :].numpy()[order]
    alpha = torch.sigmoid(g.opacity_logits).numpy()[order]
    rest = g.sh[:, 1:, :].numpy()[order]  # (N, K-1, 3)

    chunks = (n + CHUNK_SIZE - 1) // CHUNK_SIZE
    pos_lo, pos_hi, pos_t = _chunk_normalise(means, chunks)
    scale_lo, scale_hi, scale_t = _chunk_normalise(log_scales, chunks)
    col_lo, col_hi, col_t = _chunk_normalise(colors, chunks)
    chunk_rows = np.concatenate([pos_lo, pos_hi, scale_lo, scale_hi, col_lo, col_hi], axis=1)

    vertex = np.empty((n, 4), dtype=_U32)
    vertex[:, 0] = _pack_11_10_11(pos_t)
    vertex[:, 1] = _pack_rotations(quats)
    vertex[:, 2] = _pack_11_10_11(scale_t)
    vertex[:, 3] = (
        (_unorm(col_t[:, 0], 8) << np.uint32(24))
        | (_unorm(col_t[:, 1], 8) << np.uint32(16))
        | (_unorm(col_t[:, 2], 8) << np.uint32(8))
        | _unorm(alpha, 8)
    )
    lines = [
        "ply",
        "format binary_little_endian 1.0",
        f"element chunk {chunks}",
        *(f"property float {p}" for p in CHUNK_PROPERTIES),
        f"element vertex {n}",
        *(f"property uint {p}" for p in VERTEX_PROPERTIES),
    ]
    parts: list[bytes | np.ndarray] = [chunk_rows.astype(_F32), vertex]
    if degree > 0:
        lines.append(f"element sh {n}")
        lines += [f"property uchar f_rest_{i}" for i in range(3 * (rest.shape[1]))]
        channel_major = rest.transpose(0, 2, 1).reshape(n, 3 * rest.shape[1])
        parts.append(np.clip(np.trunc((channel_major / 8.0 + 0.5) * 256.0), 0, 255).astype(_U8))
    lines.append("end_header")
    header = ("\n".join(lines) + "\n").encode("ascii")
    write_atomic(path, [header, *(np.ascontiguousarray(p) for p in parts)])


def _chunk_normalise(values: np.ndarray, chunks: int) -> tuple[np.ndarray, ...]:
    """Per-chunk float32 bounds (chunks, 3) x2 that contain the values, and t in [0, 1]."""
    n = len(values)
    padded = np.empty((chunks * CHUNK_SIZE, 3))
    padded[:n] = values
    padded[n:] = values[-1] if n else 0.0  # repeat the last splat, as splat-transform does
    blocks = padded.reshape(chunks, CHUNK_SIZE, 3)
    lo = _f32_down(blocks.min(axis=1))
    hi = _f32_up(blocks.max(axis=1))
    idx = np.arange(n) // CHUNK_SIZE
    lo_i, hi_i = lo[idx].astype(np.float64), hi[idx].astype(np.float64)
    span = hi_i - lo_i
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(span > 0, (values - lo_i) / np.where(span > 0, span, 1.0), 0.0)
    return lo, hi, np.clip(t, 0.0, 1.0)


def _f32_down(x: np.ndarray) -> np.ndarray:
    f = x.astype(_F32)
    return np.where(f.astype(np.float64) > x, np.nextafter(f, np.float32(-np.inf)), f)


def _f32_up(x: np.ndarray) -> np.ndarray:
    f = x.astype(_F32)
    return np.where(f.astype(np.float64) < x, np.nextafter(f, np.float32(np.inf)), f)


def _unorm(t: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(t * top + 0.5), 0, top).astype(np.uint32)


def _pack_11_10_11(t: np.ndarray) -> np.ndarray:
    return (
        (_unorm(t[:, 0], 11) << np.uint32(21))
        | (_unorm(t[:, 1], 10) << np.uint32(11))
        | _unorm(t[:, 2], 11)
    )


def _pack_rotations(quats_wxyz: np.ndarray) -> np.ndarray:
    q = quats_wxyz / np.linalg.norm(quats_wxyz, axis=1, keepdims=True)
    rows = np.arange(len(q))
    largest = np.argmax(np.abs(q), axis=1)  # first maximum, like the reference's strict '>'
    q = np.where(q[rows, largest][:, None] < 0, -q, q)
    packed = largest.astype(np.uint32)
    for j in range(3):
        c = q[rows, _OTHERS[largest, j]]
        packed = (packed << np.uint32(10)) | _unorm(c * SQRT1_2 + 0.5, 10)
    return packed


# ============================================================================ reading


def is_compressed_ply(path: str | os.PathLike[str]) -> bool:
    """Whether `path` starts with a PLY header of the compressed layout (a `chunk` element
    or `packed_*` vertex properties). False for unreadable headers; raises `OSError`."""
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    try:
        header = parse_header(head)
    except PlyProblem:
        return False
    return _looks_compressed(header)


def _looks_compressed(header: PlyHeader) -> bool:
    return any(e.name == "chunk" for e in header.elements) or any(
        e.name == "vertex" and any(n.startswith("packed_") for n, _ in e.properties)
        for e in header.elements
    )


def read_compressed_ply(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> Gaussians:
    """Read a PlayCanvas compressed PLY (with or without per-chunk colour bounds).

    Raises `CompressedPlyFormatError` for anything malformed and `OSError` if unreadable.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = parse_header(f.read(MAX_HEADER_BYTES))
            layout = _check_layout(header, size)
            f.seek(header.data_start)
            raw = f.read(layout["bytes"])
        if len(raw) < layout["bytes"]:
            raise PlyProblem("the file ended while reading (it changed during the read?)")
        return _decode(raw, layout, device)
    except PlyProblem as e:
        raise CompressedPlyFormatError(f"{path}: {e}") from None


def _check_layout(header: PlyHeader, file_size: int) -> dict:
    names = [e.name for e in header.elements]
    if names not in (["chunk", "vertex"], ["chunk", "vertex", "sh"]):
        raise PlyProblem(
            f"elements are {names[:5]!r}; a compressed PLY has 'chunk', 'vertex' and "
            "optionally 'sh', in that order"
        )
    chunk, vertex = header.elements[0], header.elements[1]
    props = [n for n, _ in chunk.properties]
    if props not in (CHUNK_PROPERTIES[:12], CHUNK_PROPERTIES):
        raise PlyProblem(f"chunk properties {props[:20]!r} are not the compressed PLY layout")
    if any(t != _F32 for _, t in chunk.properties):
        raise PlyProblem("chunk properties must all be float")
    if [n for n, _ in vertex.properties] != VERTEX_PROPERTIES or any(
        t != _U32 for _, t in vertex.properties
    ):
        raise PlyProblem(f"vertex properties must be uint {' '.join(VERTEX_PROPERTIES)}")
    n = vertex.count
    if chunk.count != (n + CHUNK_SIZE - 1) // CHUNK_SIZE:
        raise PlyProblem(f"{chunk.count} chunks for {n} splats; expected ceil({n} / {CHUNK_SIZE})")
    rest = 0
    if len(header.elements) == 3:
        sh = header.elements[2]
        rest = len(sh.properties)
        if rest not in _SH_REST_COUNTS:
            raise PlyProblem(f"'sh' has {rest} properties; expected 9, 24 or 45")
        if [n_ for n_, _ in sh.properties] != [f"f_rest_{i}" for i in range(rest)] or any(
            t != _U8 for _, t in sh.properties
        ):
            raise PlyProblem("'sh' properties must be uchar f_rest_0, f_rest_1, ... in order")
        if sh.count != n:
            raise PlyProblem(f"'sh' has {sh.count} rows for {n} splats")
    needed = chunk.count * 4 * len(props) + n * 16 + n * rest
    available = file_size - header.data_start
    if needed > available:
        raise PlyProblem(
            f"the header declares {n} splats ({needed} bytes of data) but only {available} "
            "bytes follow the header (truncated file?)"
        )
    check_gaussian_count(n, PlyProblem)
    return {"n": n, "chunks": chunk.count, "chunk_props": len(props), "rest": rest, "bytes": needed}


def _decode(raw: bytes, layout: dict, device) -> Gaussians:
    n, chunks, nprops, rest = layout["n"], layout["chunks"], layout["chunk_props"], layout["rest"]
    buf = np.frombuffer(raw, dtype=np.uint8)
    cb = chunks * nprops * 4
    with np.errstate(invalid="ignore"):  # signalling NaNs are reported just below
        bounds = buf[:cb].view(_F32).reshape(chunks, nprops).astype(np.float64)
    if not np.isfinite(bounds).all():
        bad = int(np.argmax(~np.isfinite(bounds).all(axis=1)))
        raise PlyProblem(f"chunk {bad} has NaN/Inf bounds")
    packed = buf[cb : cb + 16 * n].view(_U32).reshape(n, 4).astype(np.int64)
    b = bounds[np.arange(n) // CHUNK_SIZE]  # (n, nprops)

    def lerp(t: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return lo * (1.0 - t) + hi * t

    pos_t = _unpack_11_10_11(packed[:, 0])
    means = lerp(pos_t, b[:, 0:3], b[:, 3:6])
    log_scales = lerp(_unpack_11_10_11(packed[:, 2]), b[:, 6:9], b[:, 9:12])
    color = packed[:, 3]
    col_t = np.stack([(color >> s) & 0xFF for s in (24, 16, 8)], axis=1) / 255.0
    rgb = lerp(col_t, b[:, 12:15], b[:, 15:18]) if nprops == 18 else col_t
    # Alpha 0 / 255 would be infinite logits: decode to a quarter step inside (0, 1).
    alpha = np.clip((color & 0xFF) / 255.0, 0.25 / 255.0, 1.0 - 0.25 / 255.0)
    sh = ((rgb - 0.5) / SH_C0)[:, None, :]
    if rest:
        q = buf[cb + 16 * n : cb + 16 * n + rest * n].reshape(n, rest).astype(np.float64)
        x = np.where(q == 0, -4.0, np.where(q == 255, 4.0, ((q + 0.5) / 256.0 - 0.5) * 8.0))
        sh = np.concatenate([sh, x.reshape(n, 3, rest // 3).transpose(0, 2, 1)], axis=1)
    arrays = {
        "means": means,
        "log_scales": log_scales,
        "quats": _unpack_rotations(packed[:, 1]),
        "opacity_logits": np.log(alpha / (1.0 - alpha)),
        "sh": sh,
    }
    with np.errstate(over="ignore", invalid="ignore"):
        tensors = {a: torch.from_numpy(v.astype(np.float32)).to(device) for a, v in arrays.items()}
    try:
        return Gaussians(**tensors)
    except GaussiansError as e:  # e.g. bounds whose interpolation overflows float32
        raise PlyProblem(str(e)) from None


def _unpack_11_10_11(v: np.ndarray) -> np.ndarray:
    return np.stack(
        [((v >> 21) & 0x7FF) / 2047.0, ((v >> 11) & 0x3FF) / 1023.0, (v & 0x7FF) / 2047.0], axis=1
    )


def _unpack_rotations(v: np.ndarray) -> np.ndarray:
    """(N,) packed -> (N, 4) unit quaternions w x y z (every bit pattern decodes to one)."""
    n = len(v)
    rows = np.arange(n)
    largest = (v >> 30) & 3
    q = np.zeros((n, 4))
    for j in range(3):
        field = (v >> (10 * (2 - j))) & 0x3FF
        q[rows, _OTHERS[largest, j]] = (field / 1023.0 - 0.5) / SQRT1_2
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(axis=1)))
    return q / np.linalg.norm(q, axis=1, keepdims=True)
