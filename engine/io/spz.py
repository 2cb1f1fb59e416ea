"""Niantic SPZ reader and writer, versions 2, 3 and 4 (DESIGN.md §6).

Version 4 (the default of Niantic's library and of splat-transform, and of `write_spz`) is
a plain 32-byte little-endian header, optional extension records, a table of contents and
one zstd stream per attribute block:

    uint32 magic (0x5053474e, "NGSP")   uint32 version (4)   uint32 numPoints (>= 1)
    uint8 shDegree   uint8 fractionalBits   uint8 flags (bit 0: antialiased, bit 1: has
    extensions)   uint8 numStreams (5, or 6 with SH)   uint32 tocByteOffset   12 reserved bytes
    [extensions: bytes 32 .. tocByteOffset, skipped by this reader, never written]
    TOC: numStreams × (uint64 compressedSize, uint64 uncompressedSize)
    the streams, back to back, ending exactly at the end of the file

Versions 2 and 3 are one gzip stream holding a 16-byte header

    uint32 magic   uint32 version   uint32 numPoints
    uint8 shDegree   uint8 fractionalBits   uint8 flags (bit 0: antialiased)   uint8 reserved

followed by the attribute blocks back to back. Each block covers all N points in turn
(one zstd stream each in version 4, empty blocks left out):

    positions  N × 3 × 3 bytes  24-bit signed fixed point, value = int / 2^fractionalBits
    alphas     N bytes          round(sigmoid(opacity_logit) · 255)
    colors     N × 3 bytes      round(dc · 0.15 · 255 + 127.5)   (SH DC coefficient, not RGB)
    scales     N × 3 bytes      round((log_scale + 10) · 16)
    rotations  v2: N × 3 bytes  x y z of the unit quaternion with w >= 0, round(c · 127.5 + 127.5)
               v3, v4: N × 4 B  "smallest three": uint32 LE, bits 30-31 the index (in x y z w
                                order) of the largest |component|, made positive; then per other
                                component in increasing index order, 10 bits from high to low:
                                a sign bit and a 9-bit magnitude round(511 · |c| / sqrt(1/2))
    sh         N × (K-1) × 3    degree >= 1 coefficients, coefficient-major, colour channel
                                innermost; byte = round(x · 128) + 128 rounded to a bucket
                                of 2^(8 - bits) (5 bits for degree 1, 4 for degrees 2-3);
                                decoded x = (byte - 128) / 128

Constants (0.15 colour scale, sqrt(1/2), bucket rounding, 511 magnitudes) are those of the
reference implementation, nianticlabs/spz `src/cc/load-spz.cc` and `splat-utils.h`, as is
zstd level 12 for version 4. Values outside a byte's range are clamped, as there (colour DC
outside ±3.33, log-scale outside [-10, 5.94], SH outside [-1, 0.99]); positions that do not
fit 24 bits raise instead. Version 4 needs the `zstandard` package.

Axes: the writer stores and the reader returns the values as given, the file's own frame.
SPZ's specification names RUB, but Niantic's library and splat-transform convert nothing by
default, so SPZ files in use hold "PLY space"; `engine.io.save` / `load` turn our world
into it and back (engine/io/axes.py).

The never-released version 1 (float16 positions) is not supported; the reader says so.
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
from .limits import check_gaussian_count, gaussian_arrays

__all__ = ["SpzData", "SpzFormatError", "read_spz", "write_spz", "DEFAULT_VERSION"]

SPZ_MAGIC = 0x5053474E
SUPPORTED_VERSIONS = (2, 3, 4)
DEFAULT_VERSION = 4  # what Niantic's library and splat-transform write by default
ZSTD_LEVEL = 12  # Niantic's compressZstd
COLOR_SCALE = 0.15
SQRT1_2 = math.sqrt(0.5)
FLAG_ANTIALIASED = 0x1
_HEADER = struct.Struct("<IIIBBBB")
# Version 4: magic version numPoints shDegree fractionalBits flags numStreams tocByteOffset
_HEADER_V4 = struct.Struct("<IIIBBBBI12x")
_TOC_ENTRY = struct.Struct("<QQ")
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


def _zstd():
    """The zstandard module (version 4 only), or a clear error naming the package."""
    try:
        import zstandard
    except ImportError:
        raise RuntimeError(
            "SPZ version 4 needs the 'zstandard' package (pip install zstandard); "
            "version 3 files need nothing extra"
        ) from None
    return zstandard


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# ============================================================================ writing


def write_spz(
    path: str | os.PathLike[str],
    gaussians: Gaussians,
    *,
    version: int = DEFAULT_VERSION,
    fractional_bits: int = 12,
    antialiased: bool = False,
    sh1_bits: int = 5,
    sh_rest_bits: int = 4,
) -> None:
    """Write `gaussians` (the file's values: see the module doc on axes) as an SPZ file of
    `version` 4 (zstd streams, the default), 3 or 2 (one gzip stream), atomically.

    fractional_bits: fixed-point precision of positions (resolution 2^-bits, range
        ±2^(23-bits)); positions out of range raise `ValueError`.
    sh1_bits / sh_rest_bits: SH quantisation (1..8 bits) for degree 1 / degrees 2-3.
    Colour DC, log-scales and SH outside their byte ranges are clamped. Version 4 cannot
    hold zero Gaussians (Niantic's reader refuses them): ValueError, use version 3.
    """
    path = Path(path)
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"SPZ version must be one of {SUPPORTED_VERSIONS}, got {version!r}")
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
    if version >= 4 and n == 0:
        raise ValueError("SPZ version 4 cannot hold zero Gaussians; write version=3")
    blocks = [
        _pack_positions(g.means.numpy(), fractional_bits),
        _to_uint8(torch.sigmoid(g.opacity_logits).numpy() * 255.0),
        _to_uint8(g.sh[:, 0, :].numpy() * (COLOR_SCALE * 255.0) + 127.5),
        _to_uint8((g.log_scales.numpy() + 10.0) * 16.0),
        _pack_rotations(g.quats.numpy(), version),
        _pack_sh(g.sh[:, 1:, :].numpy(), sh1_bits, sh_rest_bits),
    ]
    streams = [np.ascontiguousarray(b).tobytes() for b in blocks]
    flags = FLAG_ANTIALIASED if antialiased else 0
    if version < 4:
        header = _HEADER.pack(SPZ_MAGIC, version, n, degree, fractional_bits, flags, 0)
        write_atomic(path, [_gzip(header + b"".join(streams))])
        return
    write_atomic(path, _ngsp(streams, n, degree, fractional_bits, flags))


def _ngsp(streams: list[bytes], n: int, degree: int, fractional_bits: int, flags: int) -> list:
    """A version 4 file: header, table of contents, one zstd stream per non-empty block."""
    compressor = _zstd().ZstdCompressor(level=ZSTD_LEVEL)
    streams = [s for s in streams if s]  # the reference leaves empty blocks (no SH) out
    packed = [compressor.compress(s) for s in streams]
    toc = b"".join(_TOC_ENTRY.pack(len(c), len(s)) for c, s in zip(packed, streams, strict=True))
    header = _HEADER_V4.pack(
        SPZ_MAGIC, 4, n, degree, fractional_bits, flags, len(streams), _HEADER_V4.size
    )
    return [header, toc, *packed]


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


def _pack_rotations(quats_wxyz: np.ndarray, version: int) -> np.ndarray:
    q = quats_wxyz / np.linalg.norm(quats_wxyz, axis=1, keepdims=True)
    q = np.concatenate([q[:, 1:], q[:, :1]], axis=1)  # x y z w
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
) -> SpzData:
    """Read an SPZ file of version 2, 3 (gzip) or 4 (zstd streams), in the file's own axes.

    Raises `SpzFormatError` for anything malformed and `OSError` if the file cannot be read.
    Versions 2-3: the gzip stream must be complete and hold exactly the attribute bytes the
    header implies; up to `_MAX_TRAILING` bytes after them (extensions) are ignored, more are
    refused. Version 4: every stream's declared size must be the one the header implies
    and the streams must end exactly at the end of the file; extensions are skipped.

    Memory: the header is checked against the file's size before anything is allocated
    (`engine.io.limits.MAX_GAUSSIANS`; an implausible compression ratio is refused as a
    decompression bomb), then the streams are decompressed piecewise into one buffer of
    exactly the declared size and decoded in slices of points into the float32 result, so a
    read peaks at about the attribute bytes plus the result.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            ngsp = f.read(4) == b"NGSP"
            f.seek(0)
            fields, payload = (_decompress_ngsp if ngsp else _decompress)(f, size)
        return _unpack(fields, payload, device)
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
    if first[:2] != b"\x1f\x8b":
        raise _Problem("not an SPZ file (it is not a gzip stream)")
    inflater = _Inflater(f, first)
    try:
        head = bytearray(_HEADER.size)
        got = inflater.fill(memoryview(head))
        if got < _HEADER.size:
            raise _Problem(f"the data ends after {got} bytes, inside the 16-byte header")
        fields = _check_header(_HEADER.unpack(head))
        if fields[1] >= 4:
            raise _Problem(f"version {fields[1]} inside a gzip stream (version 4 is not gzipped)")
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


def _check_ratio(n: int, need: int, file_size: int, deflate: bool = True) -> None:
    """Refuse a header whose attribute bytes the file cannot (or could only absurdly) hold.
    deflate: the data is one deflate stream (versions 2-3), which cannot expand more than
    1032:1 (zstd, version 4, can: only the plausibility bound applies)."""
    if deflate and need > file_size * _MAX_DEFLATE_RATIO:
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
        raise _Problem(f"unsupported SPZ version {version} (supported: 2, 3, 4)")
    if degree > MAX_SH_DEGREE:
        raise _Problem(f"SH degree {degree} is above the supported maximum {MAX_SH_DEGREE}")
    if fractional_bits > _MAX_FRACTIONAL_BITS:
        raise _Problem(f"fractionalBits {fractional_bits} is above {_MAX_FRACTIONAL_BITS}")
    if n > np.iinfo(np.int32).max:
        raise _Problem(f"point count {n} is above the format's limit of 2^31 - 1")
    return fields


def _decompress_ngsp(f: BinaryIO, file_size: int) -> tuple[tuple[int, ...], bytearray]:
    """Version 4: header fields (as the legacy header's tuple) and exactly the attribute
    bytes; every size is checked against the header and the file before anything is
    decompressed, and each stream is decompressed into its slice, never beyond it."""
    head = f.read(_HEADER_V4.size)
    if len(head) < _HEADER_V4.size:
        raise _Problem(f"the file ends after {len(head)} bytes, inside the 32-byte header")
    magic, version, n, degree, bits, flags, streams, toc_at = _HEADER_V4.unpack(head)
    if version != 4:
        raise _Problem(f"an unzipped NGSP header of version {version} (only 4 is unzipped)")
    fields = _check_header((magic, version, n, degree, bits, flags, 0))
    if n == 0:
        raise _Problem("a version 4 file with zero points (Niantic's reader refuses them)")
    k = (degree + 1) ** 2
    sizes = [s for s in (9 * n, n, 3 * n, 3 * n, 4 * n, 3 * (k - 1) * n) if s]
    if streams != len(sizes):
        raise _Problem(f"{streams} streams where SH degree {degree} needs {len(sizes)}")
    toc_end = toc_at + streams * _TOC_ENTRY.size
    if toc_at < _HEADER_V4.size or toc_end > file_size:
        raise _Problem(f"the table of contents at byte {toc_at} does not fit the file")
    need = sum(sizes)
    _check_ratio(n, need, file_size, deflate=False)
    check_gaussian_count(n, _Problem)
    f.seek(toc_at)
    toc = [_TOC_ENTRY.unpack(f.read(_TOC_ENTRY.size)) for _ in range(streams)]
    if any(u != s for (_, u), s in zip(toc, sizes, strict=True)):
        got = ", ".join(str(u) for _, u in toc)
        raise _Problem(f"stream sizes {got} are not the {', '.join(map(str, sizes))} bytes "
                       f"{n} points need")  # fmt: skip
    packed = sum(c for c, _ in toc)
    if toc_end + packed != file_size:
        raise _Problem(
            f"the streams take {packed} bytes but {file_size - toc_end} follow the table of "
            "contents (a truncated file, or data after the streams)"
        )
    zstd = _zstd()
    payload = bytearray(need)  # the one allocation the header's count drives
    view, at = memoryview(payload), 0
    for i, ((compressed, _), want) in enumerate(zip(toc, sizes, strict=True)):
        reader = zstd.ZstdDecompressor().stream_reader(f.read(compressed), read_across_frames=True)
        got, extra = 0, b""
        try:
            while got < want:  # into this stream's slice: never more than it declares
                step = reader.readinto(view[at + got : at + want])
                if not step:
                    break
                got += step
            extra = reader.read(1)
        except zstd.ZstdError as e:
            raise _Problem(f"stream {i} is not valid zstd ({e})") from None
        if got != want or extra:
            held = f"more than {want}" if extra else str(got)
            raise _Problem(f"stream {i} holds {held} bytes where the header implies {want}")
        at += want
    return fields, payload


def _unpack(fields: tuple[int, ...], payload: bytearray, device) -> SpzData:
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
    out = gaussian_arrays(n, k)
    for lo in range(0, n, _DECODE_SLICE):
        s = slice(lo, min(n, lo + _DECODE_SLICE))
        c = s.stop - s.start
        b = pos_b[s].reshape(c * 3, 3).astype(np.int32)
        fixed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        fixed = fixed - ((fixed & 0x800000) << 1)  # sign-extend 24 bits
        out["means"][s] = fixed.astype(np.float64).reshape(c, 3) / float(1 << fractional_bits)
        # Byte 0 / 255 are opacity 0 / 1, whose logits are infinite: a quarter step inside.
        alpha = np.clip(alpha_b[s].astype(np.float64) / 255.0, 0.25 / 255.0, 1.0 - 0.25 / 255.0)
        out["opacity_logits"][s] = np.log(alpha / (1.0 - alpha))
        out["log_scales"][s] = scale_b[s].astype(np.float64) / 16.0 - 10.0
        out["quats"][s] = _unpack_rotations(rot_b[s], c, version)
        out["sh"][s, 0] = (color_b[s].astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE
        out["sh"][s, 1:] = (sh_b[s].astype(np.float64) - 128.0) / 128.0
    del buf, pos_b, alpha_b, color_b, scale_b, rot_b, sh_b
    payload.clear()  # the caller's reference would keep the attribute bytes alive
    tensors = {a: torch.from_numpy(v).to(device) for a, v in out.items()}
    try:
        gaussians = Gaussians(**tensors)
    except GaussiansError as e:  # not expected: every byte pattern decodes to valid values
        raise _Problem(str(e)) from None
    return SpzData(gaussians, version, bool(flags & FLAG_ANTIALIASED), fractional_bits)


def _unpack_rotations(raw: np.ndarray, n: int, version: int) -> np.ndarray:
    """(N, 4) unit quaternions w x y z from (N, 3) v2 or (N, 4) v3/v4 bytes."""
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
    return np.concatenate([q[:, 3:], q[:, :3]], axis=1)
