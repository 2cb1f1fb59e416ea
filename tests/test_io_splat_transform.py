"""Cross-checks of our splat writers/readers against an independent implementation:
PlayCanvas `@playcanvas/splat-transform` (npm, version pinned in
tools/splat-transform/package-lock.json; `npm ci --prefix tools/splat-transform`, which
`.ci/run` does). Skipped when node or the package is missing.

What splat-transform 2.7.1 does with axes (read from its dist/index.mjs and checked here):

* Every reader (.ply, .splat, .spz, ...) returns a table tagged `Transform.PLY`, i.e. the
  values as 3DGS PLY stores them; .ply and .splat values are taken raw. Converting between
  those formats applies no axis change; the .csv writer dumps the table's raw values.
* SPZ is treated as RUB on disk (Niantic's spec) and PLY as RDF (3DGS / COLMAP camera
  axes): its SPZ reader/writer (Niantic's WebAssembly library, `from/to: RDF`) flips
  (x, y, z) -> (x, -y, -z) (180° about x), with quaternions and SH flipped to match.
* Our conventions differ: our .ply and .splat hold raw Z-up world coordinates, and our
  SPZ writer maps Z-up world to RUB by (x, y, z) -> (x, z, -y) (glTF's convention).
  Consequently
    our .spz  -> splat-transform -> .ply/.csv holds  A·p, A = F·M = (x, -z, y),
    our .ply  -> splat-transform -> .spz, read by us, gives  Mᵀ·F·p = M·p = (x, z, -y),
  with M our RUB matrix and F = diag(1, -1, -1): a ±90° turn about x either way. An SPZ
  written by either tool and read by the other's SPZ reader keeps its axes (both agree
  on RUB on disk); PLY <-> PLY and .splat -> PLY keep them too.
* The SPZ writer defaults to SPZ version 4 (zstd), which we do not read:
  `--spz-version 3` asks for gzip version 3. There is no .splat writer.
* PlayCanvas compressed PLY is raw axes both ways. Its decoder and ours agree bit for bit
  on the same file; both writers sort along a Morton curve, but not in the same order,
  so their file is matched to ours Gaussian by Gaussian by nearest position.
* .glb is an output only (`--help`: not among SUPPORTED INPUTS), so splat-transform
  cannot check our glTF files; tests/test_io_gltf.py checks them with pygltflib.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.gaussians import SH_C0, Gaussians
from engine.io import load, read_compressed_ply, read_ply, read_spz, save
from engine.io.compressed_ply import CHUNK_SIZE, write_compressed_ply
from engine.io.spz import COORDINATE_SYSTEMS
from engine.rotations import quaternion_to_matrix
from engine.transforms import rotate_quaternions, rotate_sh

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "tools" / "splat-transform" / "node_modules" / ".bin" / "splat-transform"

if shutil.which("node") is None:
    pytest.skip("node is not installed (needed for splat-transform)", allow_module_level=True)
if not BIN.exists():
    pytest.skip(
        "@playcanvas/splat-transform is not installed: run `npm ci --prefix tools/splat-transform`",
        allow_module_level=True,
    )

N, DEGREE = 400, 3
M = torch.from_numpy(COORDINATE_SYSTEMS["rub"])  # our world -> SPZ RUB
F = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # RUB <-> RDF (PLY)
A = F @ M  # our world -> what splat-transform reports for our .spz: (x, -z, y)

# SPZ quantisation bounds (engine/io/spz.py): half a step, plus float32 slack.
POS_TOL = 0.5 / 4096 + 1e-6  # 12 fractional bits
LOG_SCALE_TOL = 0.5 / 16 + 1e-5
ALPHA_TOL = 0.5 / 255 + 1e-6
DC_TOL = 0.5 / (0.15 * 255) + 1e-5
SH1_TOL = (0.5 + 4) / 128 + 1e-5  # rounding to 1/128, then to buckets of 8 (5 bits)
SH_REST_TOL = (0.5 + 8) / 128 + 1e-5  # buckets of 16 (4 bits)

# Compressed PLY bounds (derived in tests/test_io_compressed_ply.py): 11/10/11-bit unorms
# within a chunk's [min, max] -> |err| <= range / (2 (2^bits - 1)) per axis of positions
# and log scales; 8-bit colour within the chunk's colour range; 8-bit opacity; SH rounded
# to buckets of 1/32 (|err| <= 1/64); 10-bit smallest-three rotations (angle <= 0.005 rad).
CPLY_BITS = torch.tensor([11.0, 10.0, 11.0], dtype=torch.float64)
CPLY_ALPHA_TOL = 1 / 510 + 1e-6
CPLY_SH_TOL = 1 / 64 + 1e-5
CPLY_ROT_TOL = 1.05 * 2 * math.asin(math.sqrt(3) * math.sqrt(2) / 1023)
EPS = 1e-5  # float32 decode


def st(*args: str | Path) -> None:
    """Run splat-transform (quiet, overwriting), failing the test with its output on error."""
    cmd = [str(BIN), "-q", "-w", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode:
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        names = f.readline().strip().split(",")
    values = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    return {name: values[:, i] for i, name in enumerate(names)}


def cols(table: dict[str, np.ndarray], *names: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([table[n] for n in names], axis=1))


def sh_from_csv(table: dict[str, np.ndarray], degree: int) -> torch.Tensor:
    """(N, K, 3) from f_dc_* and channel-major f_rest_* columns."""
    rest_per_channel = (degree + 1) ** 2 - 1
    dc = cols(table, "f_dc_0", "f_dc_1", "f_dc_2")[:, None, :]
    rest = cols(table, *(f"f_rest_{i}" for i in range(3 * rest_per_channel)))
    rest = rest.reshape(-1, 3, rest_per_channel).transpose(1, 2)
    return torch.cat([dc, rest], dim=1)


def assert_same_axes(q1: torch.Tensor, q2: torch.Tensor, tol: float) -> None:
    """Same principal axes up to their signs: R1ᵀ R2 is a diagonal of ±1 (within tol).

    Flipping two of a Gaussian's own axes (R -> R·diag(1, -1, -1)) leaves it unchanged, and
    the tools differ there: Niantic's RUB <-> RDF flip conjugates (F R F) where we turn
    (F R), a 180° turn about the Gaussian's x axis. Covariances agree either way.
    """
    r1 = quaternion_to_matrix(q1 / q1.norm(dim=1, keepdim=True))
    r2 = quaternion_to_matrix(q2 / q2.norm(dim=1, keepdim=True))
    d = r1.transpose(1, 2) @ r2
    worst = float((d.abs() - torch.eye(3, dtype=d.dtype)).abs().max())
    assert worst <= tol, worst


def assert_sh_within_spz_bounds(sh: torch.Tensor, expected: torch.Tensor) -> None:
    err = (sh - expected).abs()
    assert float(err[:, 0].max()) <= DC_TOL
    assert float(err[:, 1:4].max()) <= SH1_TOL
    assert float(err[:, 4:].max()) <= SH_REST_TOL


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> tuple[Gaussians, Path]:
    """Random degree-3 Gaussians inside every format's ranges, saved as .ply, .spz, .splat.

    SH rest coefficients stay below 0.35 so that a band (<= 7 of them) has norm < 0.93 and
    stays inside SPZ's [-1, 0.99] in any rotated frame: no clamping, only rounding.
    """
    gen = torch.Generator().manual_seed(6)
    k = (DEGREE + 1) ** 2

    def u(*shape, lo, hi):
        return torch.rand(*shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo

    g = Gaussians(
        means=u(N, 3, lo=-2.0, hi=2.0),
        log_scales=u(N, 3, lo=-6.0, hi=0.5),
        quats=torch.randn(N, 4, generator=gen, dtype=torch.float64),
        opacity_logits=u(N, lo=-4.0, hi=4.0),
        sh=torch.cat([u(N, 1, 3, lo=-1.5, hi=1.5), u(N, k - 1, 3, lo=-0.35, hi=0.35)], dim=1),
    ).to(dtype=torch.float32)
    d = tmp_path_factory.mktemp("ours")
    for suffix in (".ply", ".spz", ".splat"):
        save(g, d / f"ours{suffix}")
    return g.to(dtype=torch.float64), d


# ------------------------------------------------------------- splat-transform reads ours


def test_our_ply_read_by_splat_transform_is_bit_exact(ours, tmp_path):
    g, d = ours
    st(d / "ours.ply", tmp_path / "out.csv")
    t = read_csv(tmp_path / "out.csv")
    assert len(t["x"]) == N
    assert torch.equal(cols(t, "x", "y", "z"), g.means)
    assert torch.equal(cols(t, "scale_0", "scale_1", "scale_2"), g.log_scales)
    assert torch.equal(cols(t, "rot_0", "rot_1", "rot_2", "rot_3"), g.quats)
    assert torch.equal(torch.from_numpy(t["opacity"]), g.opacity_logits)
    assert torch.equal(sh_from_csv(t, DEGREE), g.sh)


def test_our_spz_read_by_splat_transform(ours, tmp_path):
    g, d = ours
    st(d / "ours.spz", tmp_path / "out.csv")
    t = read_csv(tmp_path / "out.csv")
    assert len(t["x"]) == N
    # splat-transform reports PLY (RDF) axes: A·p = (x, -z, y) of our world.
    means = cols(t, "x", "y", "z")
    assert float((means - g.means @ A.T).abs().max()) <= POS_TOL
    assert float((means - g.means).abs().max()) > 0.5  # the axis change is real
    log_scales = cols(t, "scale_0", "scale_1", "scale_2")
    assert float((log_scales - g.log_scales).abs().max()) <= LOG_SCALE_TOL
    alpha = torch.sigmoid(torch.from_numpy(t["opacity"]))
    assert float((alpha - torch.sigmoid(g.opacity_logits)).abs().max()) <= ALPHA_TOL
    quats = cols(t, "rot_0", "rot_1", "rot_2", "rot_3")
    assert_same_axes(quats, rotate_quaternions(g.quats, A), 0.01)
    assert_sh_within_spz_bounds(sh_from_csv(t, DEGREE), rotate_sh(g.sh, A))


def test_our_splat_read_by_splat_transform(ours, tmp_path):
    g, d = ours
    st(d / "ours.splat", tmp_path / "out.csv")
    t = read_csv(tmp_path / "out.csv")
    assert len(t["x"]) == N
    assert sorted(n for n in t if n.startswith("f_rest")) == []  # .splat has SH degree 0
    means = cols(t, "x", "y", "z")
    assert torch.equal(means, g.means)  # raw axes, float32 both ways
    log_scales = cols(t, "scale_0", "scale_1", "scale_2")
    assert float((log_scales - g.log_scales).abs().max()) <= 1e-6
    alpha = torch.sigmoid(torch.from_numpy(t["opacity"]))
    assert float((alpha - torch.sigmoid(g.opacity_logits)).abs().max()) <= ALPHA_TOL
    rgb = 0.5 + SH_C0 * cols(t, "f_dc_0", "f_dc_1", "f_dc_2")
    assert float((rgb - (0.5 + SH_C0 * g.sh[:, 0]).clamp(0, 1)).abs().max()) <= ALPHA_TOL
    # It decodes rotation bytes as b / 127.5 - 1 (antimatter15: (b - 128) / 128).
    assert_same_axes(cols(t, "rot_0", "rot_1", "rot_2", "rot_3"), g.quats, 0.05)


# ------------------------------------------------------------- we read splat-transform's


def test_splat_transform_ply_read_by_us_is_bit_exact(ours, tmp_path):
    g, d = ours
    st(d / "ours.ply", tmp_path / "st.ply")
    back = read_ply(tmp_path / "st.ply").gaussians.to(dtype=torch.float64)
    assert len(back) == N and back.sh_degree == DEGREE
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.equal(getattr(back, name), getattr(g, name)), name


def test_splat_transform_spz_from_our_ply_read_by_us(ours, tmp_path):
    g, d = ours
    st(d / "ours.ply", "--spz-version", "3", tmp_path / "st.spz")
    back = load(tmp_path / "st.spz").to(dtype=torch.float64)
    assert len(back) == N and back.sh_degree == DEGREE
    # Their PLY is RDF, so our Z-up world comes back turned by Mᵀ·F = M: (x, z, -y).
    assert torch.allclose(M.T @ F, M)
    assert float((back.means - g.means @ M.T).abs().max()) <= POS_TOL
    assert float((back.log_scales - g.log_scales).abs().max()) <= LOG_SCALE_TOL
    alpha = torch.sigmoid(back.opacity_logits)
    assert float((alpha - torch.sigmoid(g.opacity_logits)).abs().max()) <= ALPHA_TOL
    assert_same_axes(back.quats, rotate_quaternions(g.quats, M), 0.01)
    # SH are quantised in the file's RUB frame, F·p: compare there, element by element.
    raw = read_spz(tmp_path / "st.spz", coordinate_system="identity").gaussians
    assert_sh_within_spz_bounds(raw.sh.to(torch.float64), rotate_sh(g.sh, F))
    assert torch.allclose(back.sh.to(torch.float64), rotate_sh(raw.sh.double(), M.T), atol=1e-5)


def test_spz_round_trip_through_splat_transform_keeps_axes(ours, tmp_path):
    g, d = ours
    st(d / "ours.spz", "--spz-version", "3", tmp_path / "st.spz")
    first = load(d / "ours.spz").to(dtype=torch.float64)
    back = load(tmp_path / "st.spz").to(dtype=torch.float64)
    assert len(back) == N and back.sh_degree == DEGREE
    assert float((back.means - g.means).abs().max()) <= POS_TOL
    # Re-quantising already quantised values: at most one more step's rounding.
    assert float((back.means - first.means).abs().max()) <= POS_TOL
    assert float((back.log_scales - first.log_scales).abs().max()) <= LOG_SCALE_TOL
    assert float((back.opacity_logits - first.opacity_logits).abs().max()) <= 1e-4
    assert_same_axes(back.quats, g.quats, 0.01)
    raw_first = read_spz(d / "ours.spz", coordinate_system="identity").gaussians.sh
    raw_back = read_spz(tmp_path / "st.spz", coordinate_system="identity").gaussians.sh
    assert_sh_within_spz_bounds(raw_back.double(), raw_first.double())


def test_splat_transform_ply_from_our_splat_read_by_us(ours, tmp_path):
    g, d = ours
    st(d / "ours.splat", tmp_path / "st.ply")
    back = read_ply(tmp_path / "st.ply").gaussians.to(dtype=torch.float64)
    mine = load(d / "ours.splat").to(dtype=torch.float64)
    assert len(back) == N and back.sh_degree == 0
    assert torch.equal(back.means, g.means)
    assert float((back.log_scales - mine.log_scales).abs().max()) <= 1e-6
    assert float((back.sh - mine.sh).abs().max()) <= 1e-5
    alpha_back, alpha_mine = torch.sigmoid(back.opacity_logits), torch.sigmoid(mine.opacity_logits)
    assert float((alpha_back - alpha_mine).abs().max()) <= 1e-5
    assert_same_axes(back.quats, mine.quats, 0.05)


# ------------------------------------------------------------- compressed PLY both ways


def chunk_range(x: torch.Tensor) -> torch.Tensor:
    """Per-splat (N, C) range of `x` over its chunk of CHUNK_SIZE, in file order."""
    out = torch.empty_like(x)
    for start in range(0, len(x), CHUNK_SIZE):
        block = x[start : start + CHUNK_SIZE]
        out[start : start + CHUNK_SIZE] = block.amax(0) - block.amin(0)
    return out


def rotation_angle(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    r1 = quaternion_to_matrix(q1 / q1.norm(dim=1, keepdim=True))
    r2 = quaternion_to_matrix(q2 / q2.norm(dim=1, keepdim=True))
    cos = ((r1.transpose(1, 2) @ r2).diagonal(dim1=1, dim2=2).sum(1) - 1) / 2
    return torch.arccos(cos.clamp(-1, 1))


def assert_within_compressed_bounds(file: Gaussians, g: Gaussians) -> None:
    """`file` (decoded, in file order) against the originals `g` (same order)."""
    assert len(file) == len(g) and file.sh_degree == g.sh_degree
    for name in ("means", "log_scales"):
        x, y = getattr(g, name), getattr(file, name)
        tol = chunk_range(x) / (2 * (2.0**CPLY_BITS - 1)) + EPS
        assert bool(((x - y).abs() <= tol).all()), name
    rgb = 0.5 + SH_C0 * g.sh[:, 0]
    tol = chunk_range(rgb) / 510 / SH_C0 + EPS
    assert bool(((g.sh[:, 0] - file.sh[:, 0]).abs() <= tol).all()), "dc"
    alpha = torch.sigmoid(g.opacity_logits) - torch.sigmoid(file.opacity_logits)
    assert float(alpha.abs().max()) <= CPLY_ALPHA_TOL
    assert float((g.sh[:, 1:] - file.sh[:, 1:]).abs().max()) <= CPLY_SH_TOL
    assert float(rotation_angle(g.quats, file.quats).max()) <= CPLY_ROT_TOL


def table_gaussians(t: dict[str, np.ndarray], degree: int) -> Gaussians:
    return Gaussians(
        means=cols(t, "x", "y", "z"),
        log_scales=cols(t, "scale_0", "scale_1", "scale_2"),
        quats=cols(t, "rot_0", "rot_1", "rot_2", "rot_3"),
        opacity_logits=torch.from_numpy(t["opacity"]),
        sh=sh_from_csv(t, degree),
    )


def assert_same_decode(a: Gaussians, b: Gaussians) -> None:
    """Two decoders of one compressed PLY: equal up to float32 rounding (opacity logits
    compared as opacities, where the decoders may differ in the last bit)."""
    for name in ("means", "log_scales", "quats", "sh"):
        err = float((getattr(a, name) - getattr(b, name)).abs().max())
        assert err <= 1e-6, (name, err)
    assert float((a.opacities - b.opacities).abs().max()) <= 1e-7


def test_our_compressed_ply_read_by_splat_transform(ours, tmp_path):
    g, _ = ours
    path = tmp_path / "ours.compressed.ply"
    write_compressed_ply(path, g.to(dtype=torch.float32), sort=False)  # file order = g order
    st(path, tmp_path / "out.csv")
    theirs = table_gaussians(read_csv(tmp_path / "out.csv"), DEGREE)
    assert len(theirs) == N
    assert_within_compressed_bounds(theirs, g)
    assert_same_decode(theirs, read_compressed_ply(path).to(dtype=torch.float64))


def test_our_sorted_compressed_ply_read_by_splat_transform(ours, tmp_path):
    g, d = ours
    save(g.to(dtype=torch.float32), d / "sorted.compressed.ply")  # Morton-sorted (default)
    st(d / "sorted.compressed.ply", tmp_path / "out.csv")
    theirs = table_gaussians(read_csv(tmp_path / "out.csv"), DEGREE)
    mine = load(d / "sorted.compressed.ply").to(dtype=torch.float64)
    assert len(theirs) == N
    assert_same_decode(theirs, mine)


def test_splat_transform_compressed_ply_from_our_ply_read_by_us(ours, tmp_path):
    g, d = ours
    st(d / "ours.ply", tmp_path / "st.compressed.ply")
    back = load(tmp_path / "st.compressed.ply").to(dtype=torch.float64)
    assert len(back) == N and back.sh_degree == DEGREE
    # Their decoder agrees with ours on their file...
    st(tmp_path / "st.compressed.ply", tmp_path / "st.csv")
    assert_same_decode(table_gaussians(read_csv(tmp_path / "st.csv"), DEGREE), back)
    # ...and the values are ours within the format's bounds, once matched up: each decoded
    # position's nearest original is its own (quantisation error << spacing of the points).
    dist = torch.cdist(back.means, g.means)
    match = dist.argmin(dim=1)
    assert torch.equal(match.sort().values, torch.arange(N))  # a permutation
    spacing = torch.cdist(g.means, g.means).fill_diagonal_(math.inf).min()
    assert float(dist.amin(dim=1).max()) < float(spacing) / 4
    assert_within_compressed_bounds(back, g[match])
