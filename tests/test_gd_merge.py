"""Merging fine Gaussians into the coarse set (engine/gd/merge.py)."""

from __future__ import annotations

import pytest
import torch

from engine.gaussians import Gaussians, GaussiansError
from engine.gd.config import SMALL
from engine.gd.densify import GenerativeDensifier
from engine.gd.merge import merge

from .conftest import random_gaussians


def _coarse(n: int, degree: int = 1, seed: int = 0) -> Gaussians:
    return random_gaussians(n, degree, seed, means_range=(-0.5, 0.5),
                            log_scale_normal=(-4.0, 1.0))  # fmt: skip


def test_explicit_selection_leaves_the_rest_bit_identical() -> None:
    torch.manual_seed(0)
    cfg = SMALL.with_(channels=(8, 8), heads=(2, 2), patch_size=16, sh_degree=1)
    model = GenerativeDensifier(cfg, in_channels=5).train()
    coarse = _coarse(80)
    selected = torch.zeros(80, dtype=torch.bool)
    selected[torch.randperm(80)[:25]] = True
    feats = torch.randn(80, 5)
    out = model(coarse.means[selected], feats[selected])
    merged = merge(coarse, selected, out.gaussians, out.level, out.parent)

    untouched = merged.level == 0
    assert int(untouched.sum()) == 55
    assert torch.equal(merged.parent[untouched], (~selected).nonzero().flatten())  # order kept
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        kept = getattr(merged.gaussians, name)[untouched]
        assert torch.equal(kept, getattr(coarse, name)[~selected])
    assert len(merged.gaussians) == 55 + len(out.gaussians)
    # Fine Gaussians point at the coarse Gaussian they replace.
    assert selected[merged.parent[~untouched]].all()
    assert torch.equal(merged.level[~untouched], out.level)
    merged.gaussians.validate()

    # Gradients reach the densifier through the merged set.
    merged.gaussians.means.sum().backward()
    assert model.levels[0].up.delta_x[0].weight.grad.abs().sum() > 0


def test_sh_degrees_are_raised_to_the_larger_one() -> None:
    coarse = _coarse(10, degree=2)
    fine = _coarse(6, degree=0, seed=1)
    selected = torch.tensor([True, False] * 5)
    merged = merge(coarse, selected, fine, torch.ones(6, dtype=torch.long), torch.arange(6) % 5)
    assert merged.gaussians.sh_degree == 2
    assert torch.equal(merged.gaussians.sh[:5], coarse.sh[~selected])
    assert torch.equal(merged.gaussians.sh[5:, :1], fine.sh)
    assert (merged.gaussians.sh[5:, 1:] == 0).all()
    assert torch.equal(merged.parent[5:], torch.tensor([0, 2, 4, 6, 8, 0]))


def test_bad_inputs_raise() -> None:
    coarse, fine = _coarse(4), _coarse(2)
    lv = torch.ones(2, dtype=torch.long)
    with pytest.raises(GaussiansError):
        merge(coarse, torch.ones(3, dtype=torch.bool), fine, lv, torch.zeros(2, dtype=torch.long))
    with pytest.raises(GaussiansError):
        merge(coarse, torch.tensor([True, False, False, False]), fine, lv, torch.tensor([0, 1]))
