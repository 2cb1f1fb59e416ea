"""Selection + view features + densification + merge, end to end (engine/gd/pipeline.py)."""

from __future__ import annotations

import pytest
import torch

from .conftest import visible_gaussians

render_mod = pytest.importorskip("engine.render")
if not hasattr(render_mod, "render"):
    pytest.skip("the renderer is not in this tree yet", allow_module_level=True)
cameras_mod = pytest.importorskip("engine.cameras")

from engine.gd.config import SMALL, ViewFeatureConfig, fine_count  # noqa: E402
from engine.gd.pipeline import DensifyPipeline  # noqa: E402

CFG = SMALL.with_(
    channels=(8, 8), heads=(2, 2), patch_size=16, view=ViewFeatureConfig(dim=8, heads=2)
)
RES = 20


def _setup(n: int = 50, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    coarse = visible_gaussians(n, extent=0.5, scale=0.05, opacity=0.6, gen=gen)
    eyes = torch.tensor([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [-2.0, 0.0, 0.5]])
    cams = cameras_mod.Cameras.look_at(eyes, torch.zeros(3), fov_x_deg=35, width=RES, height=RES)
    images = torch.rand(len(cams), RES, RES, 3, generator=gen)
    return coarse, images, cams


def test_top_k_densify_and_merge_with_gradients_to_every_module() -> None:
    torch.manual_seed(0)
    coarse, images, cams = _setup()
    model = DensifyPipeline(CFG).train()
    result = model(coarse, images, cams, budget=12, variant="plain", backend="auto")
    assert int(result.selection.selected.sum()) == 12
    merged = result.merged
    assert len(merged.gaussians) == 50 - 12 + fine_count(12, CFG)
    merged.gaussians.validate()
    out = render_mod.render(merged.gaussians, cams, background=torch.ones(3), backend="auto")
    ((out.colors - images) ** 2).mean().backward()
    for name, module in (("encoder", model.encoder), ("generative", model.generative)):
        grads = [p.grad for p in module.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert model.encoder.key_value[0].weight.grad.abs().sum() > 0


def test_explicit_selection_keeps_the_rest_bit_identical_and_handles_backbone_feats() -> None:
    torch.manual_seed(1)
    coarse, images, cams = _setup(seed=1)
    select = torch.zeros(50, dtype=torch.bool)
    select[10:20] = True
    model = DensifyPipeline(CFG, backbone_dim=4).eval()
    with torch.no_grad():
        result = model(
            coarse, images, cams, select=select, backbone_feats=torch.randn(50, 4), backend="auto"
        )
    untouched = result.merged.level == 0
    assert torch.equal(result.merged.parent[untouched], (~select).nonzero().flatten())
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        got = getattr(result.merged.gaussians, name)[untouched]
        assert torch.equal(got, getattr(coarse, name)[~select])
    assert select[result.merged.parent[~untouched]].all()


def test_empty_selection_returns_the_coarse_set() -> None:
    coarse, images, cams = _setup(n=20, seed=2)
    model = DensifyPipeline(CFG.with_(grid_size=None)).eval()
    with torch.no_grad():
        result = model(
            coarse, images, cams, select=torch.zeros(20, dtype=torch.bool), backend="auto"
        )
    assert len(result.fine.gaussians) == 0
    assert torch.equal(result.merged.gaussians.means, coarse.means)


def test_children_can_read_the_views_at_their_own_positions() -> None:
    torch.manual_seed(3)
    coarse, images, cams = _setup(seed=3)
    cfg = CFG.with_(child_samples=8)
    model = DensifyPipeline(cfg).train()
    result = model(coarse, images, cams, budget=6, backend="auto")
    result.merged.gaussians.sh.sum().backward()
    assert model.generative.levels[1].head.net[0].weight.grad[:, -8:].abs().sum() > 0
    with pytest.raises(ValueError):
        DensifyPipeline(CFG.with_(child_samples=3))


def test_reusing_the_selection_render_gives_identical_output() -> None:
    """`coarse_render=` (the caller's gradient-mask render) replaces the densifier's own
    render of the coarse set without changing a single output value."""
    from engine.gd.gradient_mask import select_top_k, view_space_gradients

    coarse, images, cams = _setup(n=80, seed=3)
    cfg = CFG.with_(child_samples=8)
    torch.manual_seed(3)
    model = DensifyPipeline(cfg, backbone_dim=4).eval()
    feats = torch.randn(80, 4, generator=torch.Generator().manual_seed(4))
    white = (1.0, 1.0, 1.0)
    scores = view_space_gradients(coarse, images, cams, white, absgrad=True)
    select = select_top_k(scores.plain, 20, scores.visible_views > 0)
    with torch.no_grad():
        torch.manual_seed(5)
        plain = model(coarse, images, cams, select=select, backbone_feats=feats,
                      background=white)  # fmt: skip
        torch.manual_seed(5)
        reused = model(coarse, images, cams, select=select, backbone_feats=feats,
                       background=white, coarse_render=scores)  # fmt: skip
    a, b = plain.fine.gaussians, reused.fine.gaussians
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(plain.fine.parent, reused.fine.parent)
    with pytest.raises(ValueError, match="coarse_render"):
        model(coarse, images[:2], cams[:2], select=select, coarse_render=scores)
