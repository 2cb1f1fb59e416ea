"""PlayCanvas compressed PLY: quantisation-bounded round trips, dispatch, hostile files, fuzzing."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from engine.gaussians import SH_C0, Gaussians
from engine.io import CompressedPlyFormatError, load, read_compressed_ply, save
from engine.io.compressed_ply import CHUNK_SIZE, morton_order, write_compressed_ply
from engine.rotations import quaternion_to_matrix

from .conftest import FUZZ, read_fuzzed, written_bytes
from .conftest import random_gaussians as shared_random_gaussians

# Tolerances from the bit depths (the writer rounds to nearest, bounds contain the chunk):
#   an 11- (10-) bit unorm within a chunk's [min, max] has step range / 2047 (1023), so
#   |err| <= range / 4094 (range / 2046) per position / log-scale axis (x, z: 11 bits, y: 10).
BITS = np.array([11, 10, 11])
#   colour 0.5 + C0·dc: 8 bits within the chunk's colour range -> |err| <= range / 510 in
#   colour, range / (510 C0) in dc.  Opacity: 8 bits absolute -> |err| <= 1/510 in opacity.
ALPHA_TOL = 1 / 510
#   SH: trunc((x/8 + 0.5)·256) decoded at the bucket centre -> |err| <= 8 / 512 = 1/64 for
#   |x| <= 4 - 1/32 (the end buckets decode to exactly ±4).
SH_TOL = 1 / 64
#   rotation, smallest three: 10-bit components of c·sqrt(1/2) + 0.5, step s = sqrt(2)/1023 in
#   c, so |δ| <= (s/2)√3; as in the SPZ tests |q - q'| <= √3 s, angle <= 2 asin(√3 s).
S = math.sqrt(2) / 1023
ROT_TOL = 1.05 * 2 * math.asin(math.sqrt(3) * S)  # 0.0050 rad
EPS = 1e-5  # float32 decode


def random_gaussians(n: int, sh_degree: int = 3, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    sh = torch.rand(n, k, 3, generator=gen) * 7.8 - 3.9
    return shared_random_gaussians(n, gen=gen, sh=sh, means_std=5.0,
                                   log_scale_range=(-12.0, 3.0), opacity_std=3.0)  # fmt: skip


def chunk_range(x: np.ndarray) -> np.ndarray:
    """Per-splat (N, 3) range of `x` over its chunk (in file order)."""
    n = len(x)
    out = np.empty_like(x)
    for start in range(0, n, CHUNK_SIZE):
        block = x[start : start + CHUNK_SIZE]
        out[start : start + CHUNK_SIZE] = block.max(0) - block.min(0)
    return out


def angle(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    r1 = quaternion_to_matrix(q1 / q1.norm(dim=1, keepdim=True)).double()
    r2 = quaternion_to_matrix(q2 / q2.norm(dim=1, keepdim=True)).double()
    cos = ((r1.transpose(1, 2) @ r2).diagonal(dim1=1, dim2=2).sum(1) - 1) / 2
    return torch.arccos(cos.clamp(-1, 1))


def check_close(g: Gaussians, h: Gaussians) -> None:
    assert len(g) == len(h) and g.sh.shape == h.sh.shape
    gd = g.detach().to("cpu", torch.float64)
    hd = h.detach().to("cpu", torch.float64)
    for name, x, y in [("means", gd.means, hd.means), ("log_scales", gd.log_scales, hd.log_scales)]:
        tol = chunk_range(x.numpy()) / (2 * (2.0**BITS - 1)) + EPS
        assert (np.abs(x.numpy() - y.numpy()) <= tol).all(), name
    rgb = (0.5 + SH_C0 * gd.sh[:, 0]).numpy()
    tol = chunk_range(rgb) / 510 / SH_C0 + EPS
    assert (np.abs(gd.sh[:, 0].numpy() - hd.sh[:, 0].numpy()) <= tol).all()
    da = (torch.sigmoid(gd.opacity_logits) - torch.sigmoid(hd.opacity_logits)).abs()
    assert da.max() <= ALPHA_TOL + EPS
    if g.sh.shape[1] > 1:
        assert (gd.sh[:, 1:] - hd.sh[:, 1:]).abs().max() <= SH_TOL + EPS
    assert angle(gd.quats, hd.quats).max() <= ROT_TOL


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000])
def test_round_trip_in_file_order(tmp_path: Path, degree: int, n: int) -> None:
    g = random_gaussians(n, degree, seed=n + degree)
    path = tmp_path / "a.compressed.ply"
    write_compressed_ply(path, g, sort=False)
    check_close(g, read_compressed_ply(path))


def test_sorted_round_trip_and_dispatch(tmp_path: Path) -> None:
    g = random_gaussians(700, 3)
    path = tmp_path / "a.compressed.ply"
    save(g, path, axes="raw")  # Morton-sorted by default (raw: sorted in our world's axes)
    h = load(path, axes="raw")
    order = torch.from_numpy(morton_order(g.means))
    check_close(g[order], h)
    # Sorting makes chunks tight: tighter bounds than the unsorted file.
    assert sorted(order.tolist()) == list(range(700))
    # Content routing: the same bytes named plain .ply load as compressed.
    shutil.copy(path, tmp_path / "b.ply")
    assert torch.equal(load(tmp_path / "b.ply", axes="raw").means, h.means)
    # Case-insensitive double suffix.
    save(g, tmp_path / "c.Compressed.PLY", axes="raw")
    assert (tmp_path / "c.Compressed.PLY").read_bytes() == path.read_bytes()


def test_header_layout(tmp_path: Path) -> None:
    path = tmp_path / "a.compressed.ply"
    write_compressed_ply(path, random_gaussians(300, 1))
    head = path.read_bytes().split(b"end_header\n")[0].decode().splitlines()
    assert head[:3] == ["ply", "format binary_little_endian 1.0", "element chunk 2"]
    assert head[3:21] == [
        f"property float {p}"
        for p in ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z"]
        + [f"{e}_scale_{a}" for e in ("min", "max") for a in "xyz"]
        + ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
    ]
    assert head[21:26] == ["element vertex 300"] + [
        f"property uint packed_{p}" for p in ("position", "rotation", "scale", "color")
    ]
    assert head[26] == "element sh 300" and len(head) == 27 + 9
    size = len(b"\n".join(x.encode() for x in head)) + len(b"\nend_header\n")
    assert path.stat().st_size == size + 2 * 18 * 4 + 300 * 16 + 300 * 9


def test_old_layout_without_colour_bounds(tmp_path: Path) -> None:
    """12 chunk properties: colours are absolute in [0, 1]."""
    lines = ["ply", "format binary_little_endian 1.0", "element chunk 1"]
    lines += [f"property float {p}" for p in ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z"]]
    lines += [f"property float {e}_scale_{a}" for e in ("min", "max") for a in "xyz"]
    lines += ["element vertex 1"] + [
        f"property uint packed_{p}" for p in ("position", "rotation", "scale", "color")
    ]
    header = ("\n".join(lines) + "\nend_header\n").encode()
    chunk = np.array([0, 0, 0, 1, 1, 1, -1, -1, -1, 1, 1, 1], "<f4")
    color = (255 << 24) | (0 << 16) | (128 << 8) | 255
    vertex = np.array([0xFFFFFFFF, 3 << 30 | 511 << 20 | 511 << 10 | 511, 0, color], "<u4")
    path = tmp_path / "old.compressed.ply"
    path.write_bytes(header + chunk.tobytes() + vertex.tobytes())
    h = read_compressed_ply(path)
    assert torch.allclose(h.means, torch.ones(1, 3))
    assert torch.allclose(h.log_scales, -torch.ones(1, 3))
    rgb = h.sh[0, 0] * SH_C0 + 0.5
    assert torch.allclose(rgb, torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-6)


def test_empty(tmp_path: Path) -> None:
    path = tmp_path / "e.compressed.ply"
    save(Gaussians.empty(2), path)
    h = load(path)
    assert len(h) == 0 and h.sh.shape == (0, 9, 3)


def _valid_bytes(n: int) -> bytes:
    return written_bytes(write_compressed_ply, "v.compressed.ply", random_gaussians(n, 1))


VALID = _valid_bytes(300)
HEAD, _, BODY = VALID.partition(b"end_header\n")
SMALL_HEAD, _, SMALL_BODY = _valid_bytes(3).partition(b"end_header\n")  # 147-byte body


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a PLY"),
        (b"plx\n" + VALID[4:], "not a PLY"),
        (VALID[: len(HEAD) + 50], "truncated"),
        (VALID[:-1], "truncated"),
        (HEAD.replace(b"element chunk 2", b"element chunk 3") + b"end_header\n" + BODY, "chunks"),
        (HEAD.replace(b"vertex 300", b"vertex 99999999999999") + b"end_header\n" + BODY, "chunk"),
        (
            HEAD.replace(b"uint packed_scale", b"float packed_scale") + b"end_header\n" + BODY,
            "uint",
        ),
        (HEAD.replace(b"element sh 300", b"element sh 299") + b"end_header\n" + BODY, "'sh'"),
        (HEAD.replace(b"f_rest_8", b"f_rest_9") + b"end_header\n" + BODY, "f_rest"),
        (HEAD.replace(b"min_r", b"min_q") + b"end_header\n" + BODY, "chunk properties"),
        (HEAD + b"end_header\n" + b"\xff\xff\xff\x7f" + BODY[4:], "NaN/Inf"),
    ],
)
def test_hostile_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "h.compressed.ply"
    path.write_bytes(content)
    with pytest.raises(CompressedPlyFormatError, match=match) as info:
        read_compressed_ply(path)
    assert str(path) in str(info.value)


def _read_bytes(content: bytes) -> None:
    read_fuzzed(content, read_compressed_ply, CompressedPlyFormatError, "f.compressed.ply",
                names_the_file=False)  # fmt: skip


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(content: bytes) -> None:
    _read_bytes(content)


@FUZZ
@given(st.binary(min_size=len(SMALL_BODY), max_size=len(SMALL_BODY)))
def test_fuzz_valid_header_random_body(body: bytes) -> None:
    """Every bit pattern under a valid header decodes to valid Gaussians or a format error."""
    _read_bytes(SMALL_HEAD + b"end_header\n" + body)


@FUZZ
@given(st.data())
def test_fuzz_truncations_and_flips(data: st.DataObject) -> None:
    content = bytearray(VALID[: data.draw(st.integers(0, len(VALID)))])
    for _ in range(data.draw(st.integers(0, 5))):
        if content:
            i = data.draw(st.integers(0, len(content) - 1))
            content[i] = data.draw(st.integers(0, 255))
    _read_bytes(bytes(content))
