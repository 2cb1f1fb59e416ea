"""Our SPZ files (versions 2, 3 and 4) read by Niantic's reference library.

`@adobe/spz` (npm, pinned in tools/spz-loader/) is nianticlabs/spz, the C++ library, compiled
to WebAssembly; `tools/spz-loader/read_spz.mjs` prints what it decodes. With coordinate
system UNSPECIFIED it returns the file's own axes (PLY space for `engine.io.save`: Blender
(x, y, z) -> (-x, -z, -y), engine/io/axes.py), scales as logs, rotations x y z w, alphas as
logits and colours as SH DC coefficients. `.ci/run` installs it; these tests skip without
node or the package.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from engine.gaussians import Gaussians
from engine.io import save
from engine.io.axes import PLY_SPACE
from engine.rotations import quaternion_to_matrix
from engine.transforms import rotate_sh

from .conftest import random_gaussians as shared_random_gaussians

ROOT = Path(__file__).resolve().parents[1]
READER = ROOT / "tools" / "spz-loader" / "read_spz.mjs"
PACKAGE = ROOT / "tools" / "spz-loader" / "node_modules" / "@adobe" / "spz"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not PACKAGE.is_dir(),
    reason="needs node and `npm ci --prefix tools/spz-loader` (.ci/run does both)",
)

# Tolerances from the SPZ bit depths (see tests/test_io_spz.py for the derivations).
POS_TOL = 2.0**-13 + 1e-6  # 24-bit fixed point, 12 fractional bits
LOG_SCALE_TOL = 1 / 32 + 1e-5  # (log s + 10) * 16 in a byte
ALPHA_TOL = 1 / 510 + 1e-6
DC_TOL = 0.5 / (0.15 * 255) + 1e-5
SH_TOL = {1: 4.5 / 128 + 1e-5, 2: 8.5 / 128 + 1e-5, 3: 8.5 / 128 + 1e-5}
# Relative covariance error: scales within exp(±1/32) move variances by up to
# expm1(2/32); a rotation error of θ moves R S² Rᵀ by at most 2·sin(θ) relative. θ is
# 0.0050 rad for v3's smallest-three 10-bit encoding and 0.234 rad worst case for v2's
# 8-bit xyz (derived in tests/test_io_spz.py).
COV_TOL = {3: math.expm1(2 * LOG_SCALE_TOL) + 2 * math.sin(0.0050),
           2: math.expm1(2 * LOG_SCALE_TOL) + 2 * math.sin(0.234)}  # fmt: skip


def random_gaussians(n: int = 300, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    # |coefficient| <= 0.35 keeps every rotated band (norm <= 0.35·sqrt(7) < 0.99) inside
    # SPZ's byte range, so clamping does not mask the comparison.
    sh = (torch.rand(n, 16, 3, generator=gen) * 2 - 1) * 0.35
    return shared_random_gaussians(n, gen=gen, sh=sh, log_scale_range=(-7.0, -1.0),
                                   opacity_std=2.0)  # fmt: skip


def decode(path: Path) -> dict:
    proc = subprocess.run(
        ["node", str(READER), str(path)], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(proc.stdout)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_reference_decoder_reads_our_spz(tmp_path: Path, version: int) -> None:
    g = random_gaussians()
    path = tmp_path / "ours.spz"
    save(g, path, version=version)
    d = decode(path)
    n = len(g)
    assert d["numPoints"] == n and d["shDegree"] == 3 and d["antialiased"] is False

    m = torch.from_numpy(PLY_SPACE).double()  # our Z-up world -> the file's PLY space
    pos = torch.tensor(d["positions"], dtype=torch.float64).reshape(n, 3)
    assert (pos - g.means.double() @ m.T).abs().max() <= POS_TOL

    alphas = torch.sigmoid(torch.tensor(d["alphas"], dtype=torch.float64))
    assert (alphas - g.opacities.double()).abs().max() <= ALPHA_TOL

    colors = torch.tensor(d["colors"], dtype=torch.float64).reshape(n, 3)
    assert (colors - g.sh[:, 0].double()).abs().max() <= DC_TOL

    # Shape and orientation: the decoded covariance must be M Σ Mᵀ.
    scales = torch.tensor(d["scales"], dtype=torch.float64).reshape(n, 3).exp()
    xyzw = torch.tensor(d["rotations"], dtype=torch.float64).reshape(n, 4)
    rot = quaternion_to_matrix(xyzw[:, [3, 0, 1, 2]])
    cov = rot @ torch.diag_embed(scales**2) @ rot.transpose(1, 2)
    expected = m @ g.covariances.double() @ m.T
    rel = (cov - expected).norm(dim=(1, 2)) / expected.norm(dim=(1, 2))
    assert rel.max() <= COV_TOL[min(version, 3)]  # v4: v3's blocks, zstd streams
    assert (scales.log() - g.log_scales.double()).abs().max() <= LOG_SCALE_TOL

    # SH rest, coefficient-major with colour innermost, in the file's axes.
    rest = torch.tensor(d["sh"], dtype=torch.float64).reshape(n, 15, 3)
    want = rotate_sh(g.sh.double(), m)[:, 1:]
    for degree, (lo, hi) in {1: (0, 3), 2: (3, 8), 3: (8, 15)}.items():
        assert (rest[:, lo:hi] - want[:, lo:hi]).abs().max() <= SH_TOL[degree]
