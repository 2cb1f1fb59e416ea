"""antimatter15 .splat reader/writer: layout, quantisation-bounded round trips, hostile files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from engine.gaussians import SH_C0, Gaussians
from engine.io import SplatFormatError, load, read_splat, save, write_splat
from engine.io.splat import SPLAT_DTYPE

from ._rotation_helpers import rotation_angle
from .conftest import FUZZ, read_fuzzed, written_bytes
from .conftest import random_gaussians as shared_random_gaussians

# Tolerances from the bit depths (the writer rounds to nearest):
#   colour: byte = round(rgb * 255) -> |Δrgb| <= 1/510, so |Δdc| <= 1/(510 C0) = 0.00695.
DC_TOL = 1 / (510 * SH_C0)
#   opacity: byte = round(o * 255) -> |Δo| <= 1/510.
ALPHA_TOL = 1 / 510
#   rotation: byte = round(clamp(128 q + 128)), |Δq_i| <= 0.5/128, except a component
#   above 127.5/128 (at most one) clamped to 127/128, |Δ| <= 1/128; so |q - q'| <=
#   sqrt(1 + 3/4)/128 and the rotation angle <= 2 asin(|q - q'|) = 0.0207 rad.
ROT_TOL = 2 * math.asin(math.sqrt(1.75) / 128)
#   positions exact (float32); log-scales: float32 exp then log, relative rounding ~1e-7.
FLOAT_EPS = 1e-5


def random_gaussians(n: int, sh_degree: int = 0, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    sh = torch.randn(n, k, 3, generator=gen)
    sh[:, 0] = (torch.rand(n, 3, generator=gen) - 0.5) / SH_C0  # rgb in [0, 1]: no clamping
    return shared_random_gaussians(n, gen=gen, sh=sh, means_std=5.0,
                                   log_scale_normal=(-4.0, 1.0), opacity_std=3.0)  # fmt: skip


@pytest.mark.parametrize("sh_degree", [0, 2])
def test_round_trip_within_quantisation(tmp_path: Path, sh_degree: int) -> None:
    g = random_gaussians(1000, sh_degree)
    save(g, tmp_path / "a.splat")
    assert (tmp_path / "a.splat").stat().st_size == 32 * 1000
    h = load(tmp_path / "a.splat")
    assert len(h) == 1000 and h.sh_degree == 0  # higher degrees are dropped
    assert torch.equal(h.means, g.means)
    assert (h.log_scales - g.log_scales).abs().max() <= FLOAT_EPS
    dop = (torch.sigmoid(h.opacity_logits) - torch.sigmoid(g.opacity_logits)).abs()
    assert dop.max() <= ALPHA_TOL + FLOAT_EPS
    assert (h.sh[:, 0] - g.sh[:, 0]).abs().max() <= DC_TOL + FLOAT_EPS
    assert rotation_angle(h.quats, g.quats).max() <= ROT_TOL + 1e-4


def test_layout_matches_antimatter15(tmp_path: Path) -> None:
    g = Gaussians(
        means=torch.tensor([[1.0, -2.0, 3.5]]),
        log_scales=torch.log(torch.tensor([[0.5, 1.0, 2.0]])),
        quats=torch.tensor([[2.0, 0.0, 0.0, 0.0]]),
        opacity_logits=torch.tensor([0.0]),
        sh=torch.tensor([[[0.5 / SH_C0, 0.0, -0.5 / SH_C0]]]),
    )
    write_splat(tmp_path / "a.splat", g)
    rec = np.frombuffer((tmp_path / "a.splat").read_bytes(), SPLAT_DTYPE)[0]
    assert rec["position"].tolist() == [1.0, -2.0, 3.5]
    assert np.allclose(rec["scale"], [0.5, 1.0, 2.0])
    assert rec["rgba"].tolist() == [255, 128, 0, 128]
    assert rec["rotation"].tolist() == [255, 128, 128, 128]


def test_clamping_of_out_of_range_colour(tmp_path: Path) -> None:
    g = random_gaussians(2)
    g.sh[:, 0] = torch.tensor([[100.0, -100.0, 0.0], [5.0, -5.0, 0.1]])
    save(g, tmp_path / "a.splat")
    rgb = load(tmp_path / "a.splat").sh[:, 0] * SH_C0 + 0.5
    assert torch.allclose(rgb[:, :2], torch.tensor([[1.0, 0.0], [1.0, 0.0]]), atol=1e-6)


def test_empty(tmp_path: Path) -> None:
    save(Gaussians.empty(), tmp_path / "a.splat")
    assert len(load(tmp_path / "a.splat")) == 0


def _record(**fields) -> bytes:
    rec = np.zeros(1, SPLAT_DTYPE)
    rec["scale"] = 1.0
    rec["rotation"] = [255, 128, 128, 128]
    for name, value in fields.items():
        rec[name] = value
    return rec.tobytes()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (bytes(31), "not a multiple of 32"),
        (_record() + bytes(5), "not a multiple of 32"),
        (_record(position=[0, float("nan"), 0]), "position of splat 0 is NaN"),
        (_record() + _record(scale=[1, float("inf"), 1]), "scale of splat 1"),
        (_record(scale=[1, 0, 1]), "scale of splat 0"),
        (_record(scale=[1, -1, 1]), "scale of splat 0"),
        (_record(rotation=[128, 128, 128, 128]), "zero quaternion"),
    ],
)
def test_hostile_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.splat"
    path.write_bytes(content)
    with pytest.raises(SplatFormatError, match=match) as info:
        read_splat(path)
    assert str(path) in str(info.value)


def test_writer_rejects_float32_overflow(tmp_path: Path) -> None:
    g = random_gaussians(2)
    g.log_scales[0, 0] = 100.0  # exp(100) > float32 max
    with pytest.raises(ValueError, match="overflow"):
        write_splat(tmp_path / "a.splat", g)
    assert list(tmp_path.iterdir()) == []


def _read_only_documented_errors(content: bytes) -> None:
    g = read_fuzzed(content, read_splat, SplatFormatError, "f.splat")
    if g is not None:
        assert len(g) == len(content) // 32


@FUZZ
@given(st.binary(max_size=320))
def test_fuzz_random_bytes(content: bytes) -> None:
    _read_only_documented_errors(content)


@FUZZ
@given(st.data())
def test_fuzz_truncations_and_flips(data: st.DataObject) -> None:
    g = random_gaussians(4, seed=1)
    content = bytearray(written_bytes(write_splat, "a.splat", g))
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(content) - 1))
        content[i] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(content)))
    _read_only_documented_errors(bytes(content[:cut]))
