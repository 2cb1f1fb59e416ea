"""Clean-up before export (engine/io/cleanup.py): opacity, crop, SH cap, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from engine.gaussians import Gaussians
from engine.io import save
from engine.io.cleanup import cap_sh_degree, clean, crop_to_box, drop_transparent

from .conftest import random_gaussians


def gaussians(n: int = 50, degree: int = 3, seed: int = 0) -> Gaussians:
    return random_gaussians(n, degree, seed, means_range=(-2.0, 2.0),
                            log_scale_range=(-3.0, -2.0), opacity_std=3.0)  # fmt: skip


def same(a: Gaussians, b: Gaussians) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_drop_transparent_keeps_opacity_at_or_above_threshold():
    g = gaussians()
    before = g.clone()
    out, kept = drop_transparent(g, 0.3)
    opacity = torch.sigmoid(g.opacity_logits.double())
    assert torch.equal(kept, (opacity >= 0.3).nonzero().flatten())
    assert 0 < len(out) < len(g)
    assert bool((torch.sigmoid(out.opacity_logits.double()) >= 0.3).all())
    assert same(out, g[kept])
    assert same(g, before)  # input untouched


def test_drop_transparent_zero_keeps_all_and_exact_threshold_is_kept():
    g = gaussians()
    out, kept = drop_transparent(g, 0.0)
    assert same(out, g) and torch.equal(kept, torch.arange(len(g)))
    g.opacity_logits = torch.zeros(len(g), dtype=torch.float32)  # opacity exactly 0.5
    assert len(drop_transparent(g, 0.5)[0]) == len(g)
    assert len(drop_transparent(g, math.nextafter(0.5, 1))[0]) == 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.1", None, True])
def test_drop_transparent_rejects_bad_threshold(bad):
    with pytest.raises(ValueError, match="min_opacity"):
        drop_transparent(gaussians(), bad)


def test_crop_keeps_means_inside_box_inclusive():
    g = gaussians(200)
    g.means[0] = torch.tensor([1.0, 1.0, 1.0])  # on the corner: kept
    lo, hi = [-1.0, -0.5, 0.0], [1.0, 1.0, 1.0]
    out, kept = crop_to_box(g, lo, hi)
    inside = ((g.means >= torch.tensor(lo)) & (g.means <= torch.tensor(hi))).all(1)
    assert torch.equal(kept, inside.nonzero().flatten())
    assert int(kept[0]) == 0
    assert same(out, g[kept])
    out2, _ = crop_to_box(g, torch.tensor(lo), torch.tensor(hi, dtype=torch.float64))
    assert same(out, out2)


def test_crop_flat_box_and_empty_result():
    g = gaussians()
    out, kept = crop_to_box(g, [10, 10, 10], [11, 11, 11])
    assert len(out) == 0 and kept.numel() == 0 and out.sh_degree == g.sh_degree
    g.means[:, 2] = 0.25
    assert len(crop_to_box(g, [-5, -5, 0.25], [5, 5, 0.25])[0]) == len(g)


@pytest.mark.parametrize(
    ("lo", "hi", "match"),
    [
        ([1, 0, 0], [0, 1, 1], "crop_min must be <= crop_max"),
        ([0, 0], [1, 1, 1], "crop_min must be 3 finite numbers"),
        ([0, 0, 0], [1, float("inf"), 1], "crop_max must be 3 finite numbers"),
        ([0, 0, 0], ["a", 1, 1], "crop_max must be 3 finite numbers"),
    ],
)
def test_crop_rejects_bad_box(lo, hi, match):
    with pytest.raises(ValueError, match=match):
        crop_to_box(gaussians(), lo, hi)


def test_cap_sh_degree_truncates_and_never_pads():
    g = gaussians(degree=3)
    for d in range(4):
        out = cap_sh_degree(g, d)
        assert out.sh_degree == d
        assert torch.equal(out.sh, g.sh[:, : (d + 1) ** 2])
    low = gaussians(degree=1)
    assert cap_sh_degree(low, 3).sh_degree == 1
    out = cap_sh_degree(g, 0)
    out.sh += 1  # a new tensor, not a view of the input
    assert torch.equal(g.sh[:, :1], gaussians(degree=3).sh[:, :1])


@pytest.mark.parametrize("bad", [-1, 4, 1.0, "2", True])
def test_cap_sh_degree_rejects_bad_degree(bad):
    with pytest.raises(ValueError, match="max_sh_degree"):
        cap_sh_degree(gaussians(), bad)


def test_clean_chains_filters_and_maps_indices_to_input():
    g = gaussians(300)
    out, kept = clean(
        g, min_opacity=0.2, max_sh_degree=1, crop_min=[-1, -1, -1], crop_max=[1, 1, 1]
    )
    opacity = torch.sigmoid(g.opacity_logits.double())
    inside = ((g.means >= -1) & (g.means <= 1)).all(1)
    assert torch.equal(kept, ((opacity >= 0.2) & inside).nonzero().flatten())
    assert out.sh_degree == 1
    assert torch.equal(out.means, g.means[kept])
    assert torch.equal(out.sh, g.sh[kept][:, :4])


def test_clean_without_options_returns_a_copy():
    g = gaussians()
    out, kept = clean(g)
    assert out is not g and same(out, g) and torch.equal(kept, torch.arange(len(g)))
    out.means += 1
    assert not torch.equal(out.means, g.means)


def test_clean_checks_every_argument_first():
    with pytest.raises(ValueError, match="both crop_min and crop_max"):
        clean(gaussians(), crop_min=[0, 0, 0])
    with pytest.raises(ValueError, match="max_sh_degree"):
        clean(gaussians(), min_opacity=0.5, max_sh_degree=7)
    with pytest.raises(ValueError, match="crop_min must be <="):
        clean(gaussians(), crop_min=[1, 1, 1], crop_max=[0, 0, 0])


def test_empty_result_cannot_be_written_as_gltf(tmp_path):
    out, _ = clean(gaussians(), crop_min=[9, 9, 9], crop_max=[9, 9, 9])
    assert len(out) == 0
    with pytest.raises(ValueError, match="zero Gaussians"):
        save(out, tmp_path / "x.glb")
    assert list(tmp_path.iterdir()) == []
    save(out, tmp_path / "x.ply")  # .ply holds zero Gaussians
