"""Niantic SPZ reader and writer, versions 2 and 3 (DESIGN.md §6).

An SPZ file is one gzip stream holding a 16-byte little-endian header

    uint32 magic (0x5053474e, "NGSP")   uint32 version   uint32 numPoints
    uint8 shDegree   uint8 fractionalBits   uint8 flags (bit 0: antialiased)   uint8 reserved

followed by attribute blocks, each covering all N points in turn:

    positions  N × 3 × 3 bytes  24-bit signed fixed point, value = int / 2^fractionalBits
    alphas     N bytes          round(sigmoid(opacity_logit) · 255)
    colors     N × 3 bytes      round(dc · 0.15 · 255 + 127.5)   (SH DC coefficient, not RGB)
    scales     N × 3 bytes      round((log_scale + 10) · 16)
    rotations  v2: N × 3 bytes  x y z of the unit quaternion with w >= 0, round(c · 127.5 + 127.5)
               v3: N × 4 bytes  "smallest three": uint32 LE, bits 30-31 the index (in x y z w
                                order) of the largest |component|, made positive; then per other
                                component in increasing index order, 10 bits from high to low:
                                a sign bit and a 9-bit magnitude round(511 · |c| / sqrt(1/2))
    sh         N × (K-1) × 3    degree >= 1 coefficients, coefficient-major, colour channel
                                innermost; byte = round(x · 128) + 128 rounded to a bucket
                                of 2^(8 - bits) (5 bits for degree 1, 4 for degrees 2-3);
                                decoded x = (byte - 128) / 128

Constants (0.15 colour scale, sqrt(1/2), bucket rounding, 511 magnitudes) are those of the
reference implementation, nianticlabs/spz `src/cc/load-spz.cc` and `splat-utils.h`. Values
outside a byte's range are clamped, as there (colour DC outside ±3.33, log-scale outside
[-10, 5.94], SH outside [-1, 0.99]); positions that do not fit 24 bits raise instead.

Axes: SPZ stores RUB coordinates (x right, y up, z back: OpenGL / three.js / glTF).
`coordinate_system="rub"` (the default) maps our Z-up world (Blender: x right, y forward,
z up) to RUB the way Blender's glTF exporter does, (x, y, z) -> (x, z, -y), a proper
rotation (-90° about x); quaternions and the SH coefficients of degrees 1-3 are rotated with
it, so the Gaussians render identically. `coordinate_system="identity"` stores the raw
coordinates. The reader applies the inverse.

SPZ version 4 (zstd, "NGSP" multi-stream container) and the never-released version 1
(float16 positions) are not supported; the reader says so.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..atomic import write_atomic
from ..gaussians import MAX_SH_DEGREE, Gaussians, GaussiansError
from ..transforms import rotate_quaternions, rotate_sh
from .limits import check_gaussian_count

__all__ = ["SpzData", "SpzFormatError", "read_spz", "write_spz", "COORDINATE_SYSTEMS"]

SPZ_MAGIC = 0x5053474E
SUPPORTED_VERSIONS = (2, 3)
COLOR_SCALE = 0.15
SQRT1_2 = math.sqrt(0.5)
FLAG_ANTIALIASED = 0x1
_HEADER = struct.Struct("<IIIBBBB")
# Deflate cannot expand data by more than 1032:1, so a header whose payload needs more than
# this many bytes per compressed byte is lying; checked before anything is decompressed.
_MAX_DEFLATE_RATIO = 1032
# Quantised splat attributes are close to noise: deflate shrinks real files 1.2-3x. A header
# implying more attribute bytes than this many per compressed byte describes a decompression
# bomb (e.g. 20M zero points in 389 KB) and is refused before anything is allocated; below
# _RATIO_FREE_BYTES of attributes (~3M points at degree 0) any ratio is harmless and allowed.
_MAX_PLAUSIBLE_RATIO = 64
_RATIO_FREE_BYTES = 64 << 20
# Decompressed bytes after the attribute blocks (extensions) that are skipped; more is refused.
_MAX_TRAILING = 1 << 20
_READ_PIECE = 1 << 20  # compressed bytes read, and decompressed bytes produced, per step
_DECODE_SLICE = 1 << 18  # points decoded per step (float64 temporaries of ~100 MB at most)
_MAX_FRACTIONAL_BITS = 23
# Largest component index -> the other three, in increasing order (x y z w = 0 1 2 3).
_OTHERS = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])

# name -> 3x3 matrix taking our world coordinates to the stored ones.
COORDINATE_SYSTEMS: dict[str, np.ndarray] = {
    "rub": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    "identity": np.eye(3),
}


class SpzFormatError(ValueError):
    """A file is not an SPZ this module can read; the message names the file and the problem."""


class _Problem(Exception):
    """Internal: what is wrong with a file; `read_spz` adds the path."""


@dataclass
class SpzData:
    """What `read_spz` returns: the Gaussians and the header fields worth keeping."""

    gaussians: Gaussians
    version: int
    antialiased: bool
    fractional_bits: int


def _axes(coordinate_system: str) -> np.ndarray:
    try:
        return COORDINATE_SYSTEMS[coordinate_system]
    except KeyError:
        raise ValueError(
            f"coordinate_system must be one of {', '.join(COORDINATE_SYSTEMS)}, "
            f"got {coordinate_system!r}"
        ) from None


def _rotate_sh(rest: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, K-1, 3) degree >= 1 SH coefficients re-expressed in the frame `matrix` maps to."""
    if rest.shape[1] == 0 or np.array_equal(matrix, np.eye(3)):
        return rest
    full = np.concatenate([np.zeros((len(rest), 1, 3)), rest], axis=1)  # DC: unchanged
    return rotate_sh(torch.from_numpy(full), matrix).numpy()[:, 1:]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# ============================================================================ writing


def write_spz(
    path: str | os.PathLike[str],
    gaussians: Gaussians,
    *,
    version: int = 3,
    coordinate_system: str = "rub",
    fractional_bits: int = 12,
    antialiased: bool = False,
    sh1_bits: int = 5,
    sh_rest_bits: int = 4,
) -> None:
    """Write `gaussians` as a gzip SPZ file of `version` 2 or 3, atomically.

    coordinate_system: "rub" (default) converts our Z-up world to SPZ's RUB axes, rotating
        positions, quaternions and SH; "identity" writes raw coordinates. See the module doc.
    fractional_bits: fixed-point precision of positions (resolution 2^-bits, range
        ±2^(23-bits)); positions out of range raise `ValueError`.
    sh1_bits / sh_rest_bits: SH quantisation (1..8 bits) for degree 1 / degrees 2-3.
    Colour DC, log-scales and SH outside their byte ranges are clamped.
    """
    path = Path(path)
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"SPZ version must be one of {SUPPORTED_VERSIONS}, got {version!r}")
    m = _axes(coordinate_system)
    if not 0 <= fractional_bits <= _MAX_FRACTIONAL_BITS:
        raise ValueError(f"fractional_bits must be in 0..{_MAX_FRACTIONAL_BITS}")
    for name, bits in (("sh1_bits", sh1_bits), ("sh_rest_bits", sh_rest_bits)):
        if not 1 <= bits <= 8:
            raise ValueError(f"{name} must be in 1..8, got {bits!r}")
    gaussians.validate()
    g = gaussians.detach().to("cpu", torch.float64)
    n, degree = len(g), g.sh_degree
    if n > np.iinfo(np.int32).max:
        raise ValueError(f"too many Gaussians for SPZ: {n}")
    header = _HEADER.pack(
        SPZ_MAGIC, version, n, degree, fractional_bits, FLAG_ANTIALIASED if antialiased else 0, 0
    )
    blocks = [
        _pack_positions(g.means.numpy() @ m.T, fractional_bits),
        _to_uint8(torch.sigmoid(g.opacity_logits).numpy() * 255.0),
        _to_uint8(g.sh[:, 0, :].numpy() * (COLOR_SCALE * 255.0) + 127.5),
        _to_uint8((g.log_scales.numpy() + 10.0) * 16.0),
        _pack_rotations(g.quats.numpy(), m, version),
        _pack_sh(_rotate_sh(g.sh[:, 1:, :].numpy(), m), sh1_bits, sh_rest_bits),
    ]
    payload = header + b"".join(np.ascontiguousarray(b).tobytes() for b in blocks)
    write_atomic(path, [_gzip(payload)])


def _gzip(data: bytes) -> bytes:
    # A raw gzip member without file name or time stamp, so equal inputs give equal files.
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _pack_positions(positions: np.ndarray, fractional_bits: int) -> np.ndarray:
    fixed = np.round(positions * float(1 << fractional_bits))
    limit = (1 << 23) - 1
    if (np.abs(fixed) > limit).any():
        worst = float(np.abs(positions).max())
        span = limit / (1 << fractional_bits)
        raise ValueError(
            f"a position coordinate of magnitude {worst:.6g} does not fit SPZ's 24-bit fixed "
            f"point with fractional_bits={fractional_bits} (range ±{span:g}); "
            "pass fewer fractional_bits"
        )
    le = fixed.astype("<i4").reshape(-1, 1).view(np.uint8)  # (3N, 4) little-endian bytes
    return le[:, :3]


def _pack_rotations(quats_wxyz: np.ndarray, m: np.ndarray, version: int) -> np.ndarray:
    q = quats_wxyz / np.linalg.norm(quats_wxyz, axis=1, keepdims=True)
    # Turned with the axes, R' = M R (covariance M Σ Mᵀ, scales unchanged); then xyzw.
    q = rotate_quaternions(torch.from_numpy(q), m).numpy()
    q = np.concatenate([q[:, 1:], q[:, :1]], axis=1)
    if version == 2:
        q = np.where(q[:, 3:] < 0, -q, q)
        return _to_uint8(q[:, :3] * 127.5 + 127.5)
    n = len(q)
    rows = np.arange(n)
    largest = np.argmax(np.abs(q), axis=1)  # first maximum, like the reference's strict '>'
    negate = q[rows, largest] < 0
    comp = largest.astype(np.uint32)
    for j in range(3):
        c = q[rows, _OTHERS[largest, j]]
        sign = ((c < 0) ^ negate).astype(np.uint32)
        mag = np.minimum(np.floor(511.0 * np.abs(c) / SQRT1_2 + 0.5), 511).astype(np.uint32)
        comp = (comp << np.uint32(10)) | (sign << np.uint32(9)) | mag
    return comp.astype("<u4").view(np.uint8).reshape(n, 4)


def _pack_sh(rest: np.ndarray, sh1_bits: int, sh_rest_bits: int) -> np.ndarray:
    """(N, K-1, 3) -> (N, K-1, 3) uint8, bucketed as in the reference's quantizeSH."""
    if rest.shape[1] == 0:
        return np.empty((len(rest), 0, 3), np.uint8)
    bucket = np.full(rest.shape[1], 1 << (8 - sh_rest_bits), dtype=np.float64)
    bucket[:3] = 1 << (8 - sh1_bits)
    bucket = bucket[None, :, None]
    q = np.round(rest * 128.0) + 128.0
    q = np.floor((q + np.floor(bucket / 2)) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


# ============================================================================ reading


def read_spz(
    path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    *,
    coordinate_system: str = "rub",
) -> SpzData:
    """Read a gzip SPZ file (versions 2 and 3).

    coordinate_system: how the file's axes map to our world, as for `write_spz`.
    Raises `SpzFormatError` for anything malformed and `OSError` if the file cannot be read.
    The gzip stream must be complete and hold exactly the attribute bytes the header implies;
    up to `_MAX_TRAILING` bytes after them (extensions) are ignored, more are refused.

    Memory: the header is checked against the file's size before anything is allocated
    (`engine.io.limits.MAX_GAUSSIANS`; an implausible compression ratio is refused as a
    decompression bomb), then the stream is inflated piecewise into one buffer of exactly
    the declared size and decoded in slices of points into the float32 result, so a read
    peaks at about the attribute bytes plus the result.
    """
    path = Path(path)
    m = _axes(coordinate_system)
    try:
        with open(path, "rb") as f:
            fields, payload = _decompress(f, os.fstat(f.fileno()).st_size)
        return _unpack(fields, payload, m, device)
    except _Problem as e:
        raise SpzFormatError(f"{path}: {e}") from None


def _payload_size(n: int, degree: int, version: int) -> int:
    rotation = 4 if version >= 3 else 3
    return n * (9 + 1 + 3 + 3 + rotation + 3 * ((degree + 1) ** 2 - 1))


class _Inflater:
    """A gzip stream read from a file in pieces, inflated into caller-given buffers."""

    def __init__(self, f: BinaryIO, first: bytes) -> None:
        self.f = f
        self.pending = first  # compressed bytes read but not yet given to zlib
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def fill(self, out: memoryview) -> int:
        """Inflate into `out` until it is full, the stream ends or the file does; the count."""
        filled = 0
        while filled < len(out) and not self.d.eof:
            if not self.pending:
                self.pending = self.f.read(_READ_PIECE)
                if not self.pending:
                    break  # the file ended inside the stream
            want = min(len(out) - filled, _READ_PIECE)
            piece = self.d.decompress(self.pending, want)
            self.pending = self.d.unconsumed_tail
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
        return filled


def _decompress(f: BinaryIO, file_size: int) -> tuple[tuple[int, ...], bytearray]:
    """Header fields and exactly the attribute bytes, checked against the file's size first."""
    first = f.read(_READ_PIECE)
    if first[:4] == b"NGSP":
        raise _Problem("SPZ version 4 (zstd streams) is not supported; re-save it as version 3")
    if first[:2] != b"\x1f\x8b":
        raise _Problem("not an SPZ file (it is not a gzip stream)")
    inflater = _Inflater(f, first)
    try:
        head = bytearray(_HEADER.size)
        got = inflater.fill(memoryview(head))
        if got < _HEADER.size:
            raise _Problem(f"the data ends after {got} bytes, inside the 16-byte header")
        fields = _check_header(_HEADER.unpack(head))
        need = _payload_size(fields[2], fields[3], fields[1])
        _check_ratio(fields[2], need, file_size)
        check_gaussian_count(fields[2], _Problem)
        payload = bytearray(need)  # the one allocation the header's count drives
        got = inflater.fill(memoryview(payload))
        if got < need:
            raise _Problem(
                f"the header declares {fields[2]} points ({need} bytes of attributes) but the "
                f"data ends after {got} bytes (truncated file?)"
            )
        # Whatever follows is read (to reach the gzip trailer and its CRC) but bounded.
        trailing = inflater.fill(memoryview(bytearray(_MAX_TRAILING + 1)))
    except zlib.error as e:
        raise _Problem(f"corrupt gzip stream ({e})") from None
    if trailing > _MAX_TRAILING:
        raise _Problem(
            f"the gzip stream holds more than {_MAX_TRAILING} bytes beyond the {need} bytes of "
            f"attributes its header declares ({fields[2]} points)"
        )
    if not inflater.d.eof:
        raise _Problem("the gzip stream is truncated")
    return fields, payload


def _check_ratio(n: int, need: int, file_size: int) -> None:
    """Refuse a header whose attribute bytes the file cannot (or could only absurdly) hold."""
    if need > file_size * _MAX_DEFLATE_RATIO:
        raise _Problem(
            f"the header declares {n} points ({need} bytes) but a {file_size}-byte gzip file "
            "cannot hold that much"
        )
    if need > max(_RATIO_FREE_BYTES, file_size * _MAX_PLAUSIBLE_RATIO):
        raise _Problem(
            f"the header declares {n:,} points ({need:,} bytes of attributes) in a "
            f"{file_size:,}-byte file, a compression ratio of {need / file_size:.0f}:1; "
            f"splat data compresses less than {_MAX_PLAUSIBLE_RATIO}:1, so this is refused "
            "as a decompression bomb"
        )


def _check_header(fields: tuple[int, ...]) -> tuple[int, ...]:
    magic, version, n, degree, fractional_bits, _flags, _reserved = fields
    if magic != SPZ_MAGIC:
        raise _Problem(f"not an SPZ file (magic {magic:#010x}, expected {SPZ_MAGIC:#010x})")
    if version == 1:
        raise _Problem("SPZ version 1 (float16 positions, never released) is not supported")
    if version not in SUPPORTED_VERSIONS:
        raise _Problem(f"unsupported SPZ version {version} (supported: 2, 3)")
    if degree > MAX_SH_DEGREE:
        raise _Problem(f"SH degree {degree} is above the supported maximum {MAX_SH_DEGREE}")
    if fractional_bits > _MAX_FRACTIONAL_BITS:
        raise _Problem(f"fractionalBits {fractional_bits} is above {_MAX_FRACTIONAL_BITS}")
    if n > np.iinfo(np.int32).max:
        raise _Problem(f"point count {n} is above the format's limit of 2^31 - 1")
    return fields


def _unpack(fields: tuple[int, ...], payload: bytearray, m: np.ndarray, device) -> SpzData:
    """Decode the attribute blocks, `_DECODE_SLICE` points at a time, into float32 arrays:
    means (N, 3), log_scales (N, 3), quats (N, 4), opacity_logits (N,), sh (N, K, 3)."""
    _, version, n, degree, fractional_bits, flags, _ = fields
    k = (degree + 1) ** 2
    rot = 4 if version >= 3 else 3
    buf = np.frombuffer(payload, dtype=np.uint8)
    sizes = [9 * n, n, 3 * n, 3 * n, rot * n, 3 * (k - 1) * n]
    pos_b, alpha_b, color_b, scale_b, rot_b, sh_b = np.split(buf, np.cumsum(sizes)[:-1])
    pos_b, color_b, scale_b = pos_b.reshape(n, 9), color_b.reshape(n, 3), scale_b.reshape(n, 3)
    rot_b, sh_b = rot_b.reshape(n, rot), sh_b.reshape(n, k - 1, 3)
    out = {
        "means": np.empty((n, 3), np.float32),
        "log_scales": np.empty((n, 3), np.float32),
        "quats": np.empty((n, 4), np.float32),
        "opacity_logits": np.empty(n, np.float32),
        "sh": np.empty((n, k, 3), np.float32),
    }
    for lo in range(0, n, _DECODE_SLICE):
        s = slice(lo, min(n, lo + _DECODE_SLICE))
        c = s.stop - s.start
        b = pos_b[s].reshape(c * 3, 3).astype(np.int32)
        fixed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        fixed = fixed - ((fixed & 0x800000) << 1)  # sign-extend 24 bits
        positions = fixed.astype(np.float64).reshape(c, 3) / float(1 << fractional_bits)
        out["means"][s] = positions @ m
        # Byte 0 / 255 are opacity 0 / 1, whose logits are infinite: a quarter step inside.
        alpha = np.clip(alpha_b[s].astype(np.float64) / 255.0, 0.25 / 255.0, 1.0 - 0.25 / 255.0)
        out["opacity_logits"][s] = np.log(alpha / (1.0 - alpha))
        out["log_scales"][s] = scale_b[s].astype(np.float64) / 16.0 - 10.0
        out["quats"][s] = _unpack_rotations(rot_b[s], c, version, m)
        out["sh"][s, 0] = (color_b[s].astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE
        rest = (sh_b[s].astype(np.float64) - 128.0) / 128.0
        out["sh"][s, 1:] = _rotate_sh(rest, m.T)
    del buf, pos_b, alpha_b, color_b, scale_b, rot_b, sh_b
    payload.clear()  # the caller's reference would keep the attribute bytes alive
    tensors = {a: torch.from_numpy(v).to(device) for a, v in out.items()}
    try:
        gaussians = Gaussians(**tensors)
    except GaussiansError as e:  # not expected: every byte pattern decodes to valid values
        raise _Problem(str(e)) from None
    return SpzData(gaussians, version, bool(flags & FLAG_ANTIALIASED), fractional_bits)


def _unpack_rotations(raw: np.ndarray, n: int, version: int, m: np.ndarray) -> np.ndarray:
    """(N, 4) unit quaternions w x y z in our frame, from (N, 3) v2 or (N, 4) v3 bytes."""
    if version == 2:
        xyz = raw.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(axis=1, keepdims=True)))
        q = np.concatenate([xyz, w], axis=1)
    else:
        comp = raw.reshape(n, 4).copy().view("<u4").reshape(n).astype(np.int64)
        largest = comp >> 30
        fields = [(comp >> (10 * (2 - j))) & 0x3FF for j in range(3)]
        small = [SQRT1_2 * (f & 0x1FF) / 511.0 * np.where(f & 0x200, -1.0, 1.0) for f in fields]
        w = np.sqrt(np.maximum(0.0, 1.0 - sum(v * v for v in small)))
        # Component i is the largest one, or else stored value j = i - (i > largest) (the
        # others in increasing order): elementwise selects instead of scattered indexing.
        zero = np.zeros(n)
        q = np.empty((n, 4))
        for i in range(4):
            below, here = (small[i - 1] if i > 0 else zero), (small[i] if i < 3 else zero)
            q[:, i] = np.where(largest == i, w, np.where(largest < i, below, here))
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # never zero: see the module tests
    wxyz = np.concatenate([q[:, 3:], q[:, :3]], axis=1)
    if np.array_equal(m, np.eye(3)):  # the file's own axes (what engine.io.load reads)
        return wxyz
    return rotate_quaternions(torch.from_numpy(wxyz), m.T).numpy()  # our axes: R = Mᵀ R'
