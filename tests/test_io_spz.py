"""Niantic SPZ reader/writer (versions 2, 3 and 4): quantisation-bounded round trips, layout,
axes at the save/load boundary, hostile files (sizes bounded before allocation), fuzzing."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from engine.gaussians import Gaussians
from engine.io import SpzFormatError, load, read_spz, save, write_spz
from engine.io.axes import PLY_SPACE
from engine.render.sh import eval_sh_colors

from ._rotation_helpers import rotation_angle
from .conftest import FUZZ, read_fuzzed, written_bytes
from .conftest import random_gaussians as shared_random_gaussians

# Tolerances, each derived from the encoding's bit depth (write rounds to nearest):
#   positions: 24-bit fixed point with f fractional bits, step 2^-f -> |err| <= 2^-(f+1).
POS_TOL = 2.0**-13
#   log-scales: byte = round((s + 10) * 16), step 1/16 -> |err| <= 1/32.
SCALE_TOL = 1 / 32
#   opacity: byte = round(o * 255) -> |err| <= 1/510 (in opacity, not logit).
ALPHA_TOL = 1 / 510
#   colour DC: byte = round(dc * 0.15 * 255 + 127.5) -> |err| <= 0.5 / (0.15 * 255) = 0.01307.
DC_TOL = 0.5 / (0.15 * 255)
#   SH rest: q = round(128 x) + 128 (err <= 0.5), then rounded to a bucket of b = 2^(8 - bits)
#   (err <= b/2): |err| <= (b/2 + 0.5) / 128; b = 8 (degree 1, 5 bits) -> 4.5/128 = 0.0352,
#   b = 16 (degrees 2-3, 4 bits) -> 8.5/128 = 0.0664. A RUB write rotates each band by an
#   orthogonal matrix, so the bound holds for the band's L2 norm times sqrt(2l + 1).
SH_TOL = {1: 4.5 / 128, 2: 8.5 / 128, 3: 8.5 / 128}
#   rotations, v3 "smallest three": three components with step s = sqrt(1/2)/511, error
#   <= s/2 each, so |δ| <= (s/2)√3; the largest L = sqrt(1 - Σ) >= 1/2 moves by
#   |ΔL| <= |δ|·|v|/L <= √3|δ| (|v|/L <= √3 for L >= 1/2), so |q - q'| <= 2|δ| = √3 s and
#   the rotation angle is <= 2 asin(|q - q'|) (5% margin for second-order terms).
S3 = math.sqrt(0.5) / 511
ROT_TOL_V3 = 1.05 * 2 * math.asin(math.sqrt(3) * S3)  # 0.0050 rad = 0.29°
#   v2, x y z with step 1/127.5: |δ| <= √3/255; w = sqrt(1 - |v|²) moves by at most
#   sqrt(|ΔΣ|) with |ΔΣ| <= 2|δ| + |δ|² (|v| <= 1), worst when w ≈ 0.
_D2 = math.sqrt(3) / 255
ROT_TOL_V2 = 2 * math.asin(math.sqrt(_D2**2 + 2 * _D2 + _D2**2))  # 0.234 rad
FLOAT_EPS = 1e-5  # float32 decode of the above


def random_gaussians(n: int, sh_degree: int = 3, seed: int = 0) -> Gaussians:
    """Values inside every byte range (so no clamping), SH small enough to stay so rotated."""
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    sh = torch.rand(n, k, 3, generator=gen) * 0.6 - 0.3  # band L2 <= 0.3·√7 < 0.99
    sh[:, 0] = torch.rand(n, 3, generator=gen) * 6 - 3  # DC range is ±3.33
    return shared_random_gaussians(n, gen=gen, sh=sh, means_std=5.0,
                                   log_scale_range=(-9.9, 5.1), opacity_std=3.0)  # fmt: skip


def check_close(g: Gaussians, h: Gaussians, version: int, rotated: bool) -> None:
    assert h.means.shape == g.means.shape and h.sh.shape == g.sh.shape
    assert (h.means - g.means).abs().max() <= POS_TOL + FLOAT_EPS
    assert (h.log_scales - g.log_scales).abs().max() <= SCALE_TOL + FLOAT_EPS
    dop = (torch.sigmoid(h.opacity_logits) - torch.sigmoid(g.opacity_logits)).abs()
    assert dop.max() <= ALPHA_TOL + FLOAT_EPS
    assert (h.sh[:, 0] - g.sh[:, 0]).abs().max() <= DC_TOL + FLOAT_EPS
    for band in range(1, g.sh_degree + 1):
        s = slice(band * band, (band + 1) ** 2)
        err = h.sh[:, s] - g.sh[:, s]
        if rotated:
            bound = SH_TOL[band] * math.sqrt(2 * band + 1)
            assert err.norm(dim=1).max() <= bound + FLOAT_EPS, band
        else:
            assert err.abs().max() <= SH_TOL[band] + FLOAT_EPS, band
    tol = ROT_TOL_V3 if version == 3 else ROT_TOL_V2
    assert rotation_angle(h.quats, g.quats).max() <= tol + 1e-4


@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_round_trip_within_quantisation(tmp_path: Path, version: int, sh_degree: int) -> None:
    g = random_gaussians(500, sh_degree, seed=version * 10 + sh_degree)
    path = tmp_path / "a.spz"
    write_spz(path, g, version=version, antialiased=True)
    data = read_spz(path)
    assert (data.version, data.antialiased, data.fractional_bits) == (version, True, 12)
    assert len(data.gaussians) == 500 and data.gaussians.sh_degree == sh_degree
    check_close(g, data.gaussians, min(version, 3), rotated=False)
    assert path.read_bytes()[:4] == (b"NGSP" if version == 4 else b"\x1f\x8b\x08\x00")


def test_version_4_is_the_default_and_holds_version_3s_blocks(tmp_path: Path) -> None:
    """Same quantised blocks as version 3, each in its own zstd stream behind a 32-byte
    header and a table of contents (nianticlabs/spz load-spz.cc NgspFileHeader)."""
    zstd = pytest.importorskip("zstandard")
    g = random_gaussians(300, sh_degree=2)
    write_spz(tmp_path / "v4.spz", g, fractional_bits=11)
    write_spz(tmp_path / "v3.spz", g, version=3, fractional_bits=11)
    v4 = (tmp_path / "v4.spz").read_bytes()
    head = struct.unpack("<IIIBBBBI12x", v4[:32])
    assert head == (0x5053474E, 4, 300, 2, 11, 0, 6, 32)
    toc = [struct.unpack("<QQ", v4[32 + 16 * i : 48 + 16 * i]) for i in range(6)]
    sizes = [300 * b for b in (9, 1, 3, 3, 4, 3 * 8)]
    assert [u for _, u in toc] == sizes
    assert 32 + 16 * 6 + sum(c for c, _ in toc) == len(v4)
    at, blocks = 32 + 16 * 6, []
    for c, u in toc:
        blocks.append(zstd.ZstdDecompressor().decompress(v4[at : at + c], max_output_size=u))
        at += c
    assert b"".join(blocks) == gzip.decompress((tmp_path / "v3.spz").read_bytes())[16:]
    # No SH: five streams, the empty one left out as the reference does.
    write_spz(tmp_path / "d0.spz", random_gaussians(10, sh_degree=0))
    assert (tmp_path / "d0.spz").read_bytes()[15] == 5
    assert read_spz(tmp_path / "d0.spz").gaussians.sh_degree == 0


def test_dispatch_and_requantising_is_exact(tmp_path: Path) -> None:
    g = random_gaussians(100)
    save(g, tmp_path / "a.spz")
    h = load(tmp_path / "a.spz")
    save(h, tmp_path / "b.spz")
    # Decoded values sit on the grid, so a second write gives the same bytes (in the file's
    # own axes: values turned into our world and back may move by float rounding).
    raw = load(tmp_path / "a.spz", axes="raw")
    write_spz(tmp_path / "c.spz", raw)
    write_spz(tmp_path / "d.spz", read_spz(tmp_path / "c.spz").gaussians)
    assert (tmp_path / "c.spz").read_bytes() == (tmp_path / "d.spz").read_bytes()
    check_close(g, load(tmp_path / "b.spz"), 3, rotated=True)


def test_header_and_layout(tmp_path: Path) -> None:
    g = random_gaussians(7, sh_degree=2)
    write_spz(tmp_path / "a.spz", g, version=2, fractional_bits=10)
    raw = gzip.decompress((tmp_path / "a.spz").read_bytes())
    assert struct.unpack("<IIIBBBB", raw[:16]) == (0x5053474E, 2, 7, 2, 10, 0, 0)
    assert len(raw) == 16 + 7 * (9 + 1 + 3 + 3 + 3 + 3 * 8)


def test_save_writes_ply_space_and_renders_the_same(tmp_path: Path) -> None:
    """engine.io.save stores PLY space, Blender (x, y, z) -> (-x, -z, -y); colours seen along
    mapped directions are unchanged (engine/io/axes.py)."""
    g = random_gaussians(50, sh_degree=3)
    g.means[:] = torch.tensor([1.0, 2.0, 3.0])
    save(g, tmp_path / "a.spz")
    stored = read_spz(tmp_path / "a.spz").gaussians  # the file's own values
    assert torch.allclose(stored.means[0], torch.tensor([-1.0, -3.0, -2.0]))
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=1)
    m = torch.from_numpy(PLY_SPACE)
    seen = eval_sh_colors(g.sh.double(), dirs, 3)
    seen_stored = eval_sh_colors(stored.sh.double(), dirs @ m.T, 3)
    # Colour error = Σ_l Δ_l · Y_l(d) <= Σ_l |Δ_l| |Y_l(d)| (Cauchy-Schwarz per band), with
    # |Δ_l| <= SH_TOL[l] sqrt(2l+1) and |Y_l(d)|² = (2l+1)/(4π) (addition theorem).
    bound = DC_TOL * 0.28209479177387814
    bound += sum(SH_TOL[l] * (2 * l + 1) for l in (1, 2, 3)) / math.sqrt(4 * math.pi)
    assert (seen - seen_stored).abs().max() <= bound + FLOAT_EPS
    # Rotations turn with the axes, R' = M R, so covariances become M Σ Mᵀ (scales unchanged;
    # the change of basis M R Mᵀ would swap the meaning of the y and z scales).
    from engine.rotations import quaternion_to_matrix

    r = quaternion_to_matrix(torch.nn.functional.normalize(g.quats, dim=1)).double()
    r_stored = quaternion_to_matrix(stored.quats).double()
    assert (m @ r - r_stored).abs().max() < 0.01
    cov = g.covariances.double()
    assert (m @ cov @ m.T - stored.covariances.double()).abs().max() <= 0.05 * cov.abs().max()


def test_writer_rejects_bad_options_and_positions(tmp_path: Path) -> None:
    g = random_gaussians(3)
    for kwargs in (
        {"version": 5},
        {"version": 1},
        {"fractional_bits": 24},
        {"sh1_bits": 0},
    ):
        with pytest.raises(ValueError):
            write_spz(tmp_path / "a.spz", g, **kwargs)
    g.means[0, 0] = 3000.0  # beyond ±2048 at 12 fractional bits
    with pytest.raises(ValueError, match="24-bit"):
        write_spz(tmp_path / "a.spz", g)
    write_spz(tmp_path / "a.spz", g, fractional_bits=8)
    assert list(tmp_path.iterdir()) == [tmp_path / "a.spz"]


def test_empty(tmp_path: Path) -> None:
    write_spz(tmp_path / "a.spz", Gaussians.empty(sh_degree=1), version=3)
    h = read_spz(tmp_path / "a.spz").gaussians
    assert len(h) == 0 and h.sh_degree == 1
    # Version 4 cannot hold zero points: Niantic's reader refuses such files.
    with pytest.raises(ValueError, match="zero Gaussians"):
        write_spz(tmp_path / "b.spz", Gaussians.empty(sh_degree=1))
    assert not (tmp_path / "b.spz").exists()


# ---------------------------------------------------------------------------- hostile files


def spz_bytes(header: tuple[int, ...], payload: bytes = b"") -> bytes:
    return gzip.compress(struct.pack("<IIIBBBB", *header) + payload)


def ngsp_bytes(
    n: int,
    degree: int = 0,
    streams: list[bytes] | None = None,
    *,
    version: int = 4,
    toc_at: int = 32,
    sizes: list[int] | None = None,
    tail: bytes = b"",
) -> bytes:
    """A version 4 file from raw streams (zstd-compressed here) and declared sizes."""
    zstd = pytest.importorskip("zstandard")
    k = (degree + 1) ** 2
    blocks = [b for b in (9 * n, n, 3 * n, 3 * n, 4 * n, 3 * (k - 1) * n) if b]
    streams = [bytes(b) for b in blocks] if streams is None else streams
    packed = [zstd.ZstdCompressor().compress(s) for s in streams]
    sizes = [len(s) for s in streams] if sizes is None else sizes
    head = struct.pack("<IIIBBBBI12x", 0x5053474E, version, n, degree, 12, 0, len(packed), toc_at)
    head += bytes(max(0, toc_at - 32))
    toc = b"".join(struct.pack("<QQ", len(c), u) for c, u in zip(packed, sizes, strict=True))
    return head + toc + b"".join(packed) + tail


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a gzip stream"),
        (b"ply\n", "not a gzip stream"),
        (b"NGSP" + bytes(28), "unzipped NGSP header of version 0"),
        (b"NGSP\x04\x00\x00\x00", "inside the 32-byte header"),
        (spz_bytes((0x12345678, 2, 1, 0, 12, 0, 0)), "magic"),
        (spz_bytes((0x5053474E, 1, 1, 0, 12, 0, 0)), "version 1"),
        (spz_bytes((0x5053474E, 5, 1, 0, 12, 0, 0)), "unsupported SPZ version 5"),
        (spz_bytes((0x5053474E, 4, 1, 0, 12, 0, 0), bytes(20)), "not gzipped"),
        (spz_bytes((0x5053474E, 3, 1, 4, 12, 0, 0)), "SH degree 4"),
        (spz_bytes((0x5053474E, 3, 1, 0, 30, 0, 0)), "fractionalBits"),
        (spz_bytes((0x5053474E, 3, 2, 0, 12, 0, 0), bytes(20)), "truncated"),
        (spz_bytes((0x5053474E, 3, 2**31 - 1, 3, 12, 0, 0)), "cannot hold"),
        (gzip.compress(b"NGSP\x02\x00"), "header"),
        (b"\x1f\x8b" + bytes(30), "corrupt gzip"),
    ],
)
def test_hostile_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.spz"
    path.write_bytes(content)
    with pytest.raises(SpzFormatError, match=match) as info:
        read_spz(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ngsp_bytes(0), "zero points"),
        (lambda: ngsp_bytes(3, degree=4), "SH degree 4"),
        (lambda: ngsp_bytes(3, streams=[bytes(27)] * 4), "4 streams where"),
        (lambda: ngsp_bytes(3, sizes=[27, 3, 9, 9, 13]), "stream sizes"),
        (lambda: ngsp_bytes(3, tail=b"junk"), "data after the streams"),
        (lambda: ngsp_bytes(3)[:-3], "truncated"),
        (lambda: ngsp_bytes(3, toc_at=20), "table of contents"),
        (lambda: ngsp_bytes(3)[:40], "table of contents"),
        # A stream that decompresses to more (or less) than its declared size.
        (lambda: ngsp_bytes(3, streams=[bytes(28), bytes(3), bytes(9), bytes(9), bytes(12)],
                            sizes=[27, 3, 9, 9, 12]), "more than 27"),
        (lambda: ngsp_bytes(3, streams=[bytes(26), bytes(3), bytes(9), bytes(9), bytes(12)],
                            sizes=[27, 3, 9, 9, 12]), "holds 26 bytes"),
        (lambda: ngsp_bytes(3)[:128] + b"\xff" * (len(ngsp_bytes(3)) - 128), "zstd"),
        # 40M points declared by a small file: refused before anything is allocated.
        (lambda: ngsp_bytes(3)[:8] + struct.pack("<I", 40_000_000) + ngsp_bytes(3)[12:],
         "decompression bomb"),
    ],
)  # fmt: skip
def test_hostile_version_4_files(tmp_path: Path, make, match: str) -> None:
    path = tmp_path / "bad.spz"
    path.write_bytes(make())
    with pytest.raises(SpzFormatError, match=match) as info:
        read_spz(path)
    assert str(path) in str(info.value)


def test_version_4_zstd_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    """8M zero points (about 170 MB of attributes) in 10 KB of zstd: a ratio no splat data
    reaches, refused from the header and table of contents alone."""
    zstd = pytest.importorskip("zstandard")
    n = 8_000_000
    sizes = [9 * n, n, 3 * n, 3 * n, 4 * n]
    packed = [zstd.ZstdCompressor(level=19).compress(bytes(s)) for s in sizes]
    head = struct.pack("<IIIBBBBI12x", 0x5053474E, 4, n, 0, 12, 0, 5, 32)
    toc = b"".join(struct.pack("<QQ", len(c), u) for c, u in zip(packed, sizes, strict=True))
    path = tmp_path / "bomb.spz"
    path.write_bytes(head + toc + b"".join(packed))
    assert path.stat().st_size < 100_000
    with pytest.raises(SpzFormatError, match="decompression bomb"):
        read_spz(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    write_spz(tmp_path / "a.spz", random_gaussians(20))
    data = (tmp_path / "a.spz").read_bytes()
    for cut in (len(data) - 1, len(data) - 8, len(data) // 2, 12):
        (tmp_path / "b.spz").write_bytes(data[:cut])
        with pytest.raises(SpzFormatError, match="b.spz"):
            read_spz(tmp_path / "b.spz")


# ---------------------------------------------------------------------------- fuzzing

_SAMPLES: dict[int, bytes] = {}


def _sample(version: int = 3) -> bytes:
    if version not in _SAMPLES:
        g = random_gaussians(8, sh_degree=1)
        _SAMPLES[version] = written_bytes(write_spz, "a.spz", g, version=version)
    return _SAMPLES[version]


def _read_only_documented_errors(content: bytes) -> None:
    read_fuzzed(content, lambda path: read_spz(path).gaussians, SpzFormatError, "f.spz")


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(content: bytes) -> None:
    _read_only_documented_errors(content)


@FUZZ
@given(st.binary(max_size=120), st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 40))
def test_fuzz_valid_gzip_random_payload(payload: bytes, n: int, degree: int, bits: int) -> None:
    version = 2 + n % 2
    header = struct.pack("<IIIBBBB", 0x5053474E, version, n % 50, degree % 5, bits, 0, 0)
    _read_only_documented_errors(gzip.compress(header + payload))


@FUZZ
@given(st.binary(max_size=120), st.integers(0, 2**32 - 1), st.integers(0, 7),
       st.integers(0, 8), st.integers(0, 200))  # fmt: skip
def test_fuzz_version_4_headers(payload: bytes, n: int, degree: int, streams: int, toc: int):
    head = struct.pack("<IIIBBBBI12x", 0x5053474E, 4, n % 40, degree, 12, 0, streams, toc)
    _read_only_documented_errors(head + payload)


@FUZZ
@given(st.data(), st.sampled_from([3, 4]))
def test_fuzz_truncations_and_flips(data: st.DataObject, version: int) -> None:
    content = bytearray(_sample(version))
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(content) - 1))
        content[i] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(content)))
    _read_only_documented_errors(bytes(content[:cut]))


def test_decoded_payload_from_every_byte_pattern_is_valid(tmp_path: Path) -> None:
    """All 2^8 values in every attribute byte decode to valid Gaussians (no NaN, no zero quat)."""
    n = 256
    rng = np.random.default_rng(0)
    for version in (2, 3):
        rot = 4 if version == 3 else 3
        blocks = [np.repeat(np.arange(256, dtype=np.uint8), 9)]
        blocks += [np.arange(256, dtype=np.uint8)]
        blocks += [np.repeat(np.arange(256, dtype=np.uint8), k) for k in (3, 3, rot, 9)]
        payload = b"".join(rng.permutation(b).tobytes() for b in blocks)
        path = tmp_path / "a.spz"
        path.write_bytes(spz_bytes((0x5053474E, version, n, 1, 12, 0, 0), payload))
        read_spz(path).gaussians.validate()
    # The extreme smallest-three patterns: all magnitudes 511, both signs, every index.
    comps = [(i << 30) | (0x1FF << 20) | (0x3FF << 10) | 0x1FF for i in range(4)]
    payload = bytes(9 * 4 + 4 + 12 + 12) + np.array(comps, "<u4").tobytes()
    path.write_bytes(spz_bytes((0x5053474E, 3, 4, 0, 12, 0, 0), payload))
    assert torch.isfinite(read_spz(path).gaussians.quats).all()
