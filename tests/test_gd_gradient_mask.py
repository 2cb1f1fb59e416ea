"""Candidate selection by view-space gradient (engine/gd/gradient_mask.py)."""

from __future__ import annotations

import pytest
import torch

from engine.gaussians import Gaussians

from .conftest import visible_gaussians

render_mod = pytest.importorskip("engine.render")
if not hasattr(render_mod, "render"):
    pytest.skip("the renderer is not in this tree yet", allow_module_level=True)
cameras_mod = pytest.importorskip("engine.cameras")

from engine.gd.config import OBJECT, SCENE  # noqa: E402
from engine.gd.gradient_mask import (  # noqa: E402
    candidate_budget,
    gradient_mask,
    select_top_k,
    view_space_gradients,
)

RES = 24


def _scene(n: int = 60, seed: int = 0) -> tuple[Gaussians, object]:
    g = visible_gaussians(n, extent=0.6, scale=0.04, opacity=0.7, seed=seed)
    eyes = torch.tensor([[2.0, 0.0, 0.4], [0.0, 2.0, 0.4], [-2.0, 0.3, 0.4], [0.2, -2.0, 0.6]])
    cams = cameras_mod.Cameras.look_at(eyes, torch.zeros(3), fov_x_deg=35, width=RES, height=RES)
    return g, cams


def _images(g: Gaussians, cams) -> torch.Tensor:
    with torch.no_grad():
        return render_mod.render(g, cams, background=torch.ones(3), backend="auto").colors


def test_perfect_coarse_model_has_zero_gradient() -> None:
    g, cams = _scene()
    scores = view_space_gradients(g, _images(g, cams), cams, backend="auto")
    assert scores.loss == 0.0
    assert torch.equal(scores.plain, torch.zeros(len(g)))
    assert (scores.visible_views > 0).sum() > len(g) // 2


def test_perturbed_gaussians_get_the_largest_gradients() -> None:
    g, cams = _scene(seed=1)
    images = _images(g, cams)
    gen = torch.Generator().manual_seed(2)
    wrong = torch.zeros(len(g), dtype=torch.bool)
    wrong[torch.randperm(len(g), generator=gen)[:8]] = True
    coarse = g.clone()
    # Recolour and shift a few Gaussians: only they disagree with the inputs.
    coarse.sh[wrong] = -coarse.sh[wrong]
    coarse.means[wrong] += 0.03
    sel = gradient_mask(coarse, images, cams, k=8, variant="plain", backend="auto")
    assert int(sel.selected.sum()) == 8
    # Neighbours of the wrong ones also pull; most of the top 8 are the culprits.
    assert int((sel.selected & wrong).sum()) >= 5
    assert sel.scores.plain[wrong].mean() > 3 * sel.scores.plain[~wrong].mean()


def test_abs_variant_bounds_the_plain_one() -> None:
    pytest.importorskip("numba")
    g, cams = _scene(seed=3)
    images = _images(g, cams).flip(1)  # wrong everywhere
    scores = view_space_gradients(g, images, cams, absgrad=True, backend="numba")
    assert scores.absolute is not None
    # |sum of per-pixel gradients| <= sum of |per-pixel gradients|, view by view.
    assert (scores.absolute >= scores.plain - 1e-7).all()
    assert (scores.absolute > scores.plain + 1e-6).any()
    sel = gradient_mask(g, images, cams, k=10, variant="abs", backend="numba")
    assert torch.equal(
        sel.selected,
        select_top_k(scores.absolute, 10, (g.opacities > 0.005) & (scores.visible_views > 0)),
    )


def test_no_gradient_reaches_the_model_that_made_the_gaussians() -> None:
    g, cams = _scene(seed=4)
    images = _images(g, cams).flip(2)
    layer = torch.nn.Linear(3, 3)
    made = Gaussians.unchecked(layer(g.means), g.log_scales, g.quats, g.opacity_logits, g.sh)
    sel = gradient_mask(made, images, cams, k=5, variant="plain", backend="auto")
    assert int(sel.selected.sum()) == 5
    assert layer.weight.grad is None and layer.bias.grad is None


def test_explicit_selection_is_returned_as_given() -> None:
    g, _ = _scene(n=10)
    select = torch.tensor([True, False] * 5)
    sel = gradient_mask(g, select=select)
    assert torch.equal(sel.selected, select) and sel.scores is None
    with pytest.raises(ValueError):
        gradient_mask(g, select=torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError):
        gradient_mask(g)  # neither views nor a selection


def test_a_region_is_kept_whole_within_budget_and_scored_beyond_it() -> None:
    g, cams = _scene(seed=4)
    images = _images(g, cams)
    g.opacity_logits[:5] = -10.0  # below min_opacity: still eligible inside a region
    within = torch.zeros(len(g), dtype=torch.bool)
    within[:20] = True
    small = gradient_mask(g, images, cams, k=20, backend="auto", within=within)
    assert torch.equal(small.selected, within) and small.scores is None
    top = gradient_mask(g, images, cams, k=6, backend="auto", within=within)
    assert int(top.selected.sum()) == 6 and not (top.selected & ~within).any()
    score = top.scores.get("abs") if top.scores.absolute is not None else top.scores.plain
    expected = select_top_k(score, 6, within & (top.scores.visible_views > 0))
    assert torch.equal(top.selected, expected)
    with pytest.raises(ValueError, match="within"):
        gradient_mask(g, images, cams, k=6, within=torch.ones(3, dtype=torch.bool))


def test_select_top_k_respects_eligibility_and_budget() -> None:
    scores = torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0])
    eligible = torch.tensor([False, True, True, True, True])
    assert select_top_k(scores, 2, eligible).tolist() == [False, False, True, True, False]
    assert int(select_top_k(scores, 10, eligible).sum()) == 4
    assert not select_top_k(scores, 0).any()
    assert candidate_budget(OBJECT, 4) == 12_000
    assert candidate_budget(SCENE, 2) == 60_000


def test_small_tiles_change_no_pixel_and_scores_only_by_rounding(monkeypatch) -> None:
    """The coarse renders use `NUMBA_TILE`-px tiles on numba (fewer pixel–Gaussian visits):
    the same pixels and, up to summation order, the same scores as the default 16-px tiles."""
    import engine.gd.gradient_mask as gm

    if render_mod.resolve_backend("auto", torch.device("cpu")) != "numba":
        pytest.skip("the tile size only changes on the numba rasteriser")
    gen = torch.Generator().manual_seed(7)
    n, res = 400, 64
    g = Gaussians.from_activated(
        means=(torch.rand(n, 3, generator=gen) - 0.5) * 0.8,
        scales=torch.rand(n, 3, generator=gen) * 0.06 + 0.005,
        quats=torch.randn(n, 4, generator=gen),
        opacities=torch.rand(n, generator=gen) * 0.98 + 0.01,  # faint to nearly opaque
        colors=torch.rand(n, 3, generator=gen),
    )
    eyes = torch.tensor([[2.0, 0.0, 0.4], [0.0, 2.0, 0.4], [-2.0, 0.3, 0.4]])
    cams = cameras_mod.Cameras.look_at(eyes, torch.zeros(3), fov_x_deg=35, width=res, height=res)
    images = torch.rand(3, res, res, 3, generator=gen)
    assert gm.coarse_tile_size("auto", "cpu") == gm.NUMBA_TILE < 16
    small = view_space_gradients(g, images, cams, absgrad=True)
    monkeypatch.setattr(gm, "NUMBA_TILE", 16)
    default = view_space_gradients(g, images, cams, absgrad=True)
    for name in ("colors", "alphas", "depths"):
        assert torch.equal(getattr(small, name), getattr(default, name)), name
    assert torch.equal(small.visible_views, default.visible_views)
    torch.testing.assert_close(small.plain, default.plain, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(small.absolute, default.absolute, rtol=1e-5, atol=1e-9)
    assert bool((small.plain > 0).any())


def test_downsampled_scores_are_the_scores_of_a_downsampled_render() -> None:
    """mask_size scores a smaller render of area-filtered images and returns that render."""
    import torch.nn.functional as F

    g, cams = _scene(n=80, seed=5)
    cams = cams.scaled(2 * RES, 2 * RES)
    images = _images(g, cams).flip(2)  # wrong almost everywhere
    scores = view_space_gradients(g, images, cams, backend="auto", mask_size=RES)
    small_cams = cams.scaled(RES, RES)
    small = F.interpolate(images.permute(0, 3, 1, 2), size=(RES, RES), mode="area")
    direct = view_space_gradients(g, small.permute(0, 2, 3, 1), small_cams, backend="auto")
    assert torch.allclose(scores.plain, direct.plain, atol=1e-7)
    assert scores.loss == pytest.approx(direct.loss)
    # The render comes back at the size it was scored at: the view features sample it
    # there (view_features.sample_views), so it is never up-sampled.
    for name in ("colors", "alphas", "depths"):
        assert torch.equal(getattr(scores, name), getattr(direct, name)), name


def test_downsampled_mask_mostly_agrees_with_the_full_size_one() -> None:
    g, cams = _scene(n=120, seed=6)
    cams = cams.scaled(4 * RES, 4 * RES)
    images = _images(g, cams)
    gen = torch.Generator().manual_seed(7)
    wrong = torch.zeros(len(g), dtype=torch.bool)
    wrong[torch.randperm(len(g), generator=gen)[:20]] = True
    coarse = g.clone()
    coarse.sh[wrong] = -coarse.sh[wrong]
    full = gradient_mask(coarse, images, cams, k=20, backend="auto")
    half = gradient_mask(coarse, images, cams, k=20, backend="auto", mask_size=2 * RES)
    assert int((full.selected & half.selected).sum()) >= 16
    # Overlapping neighbours pull too, so neither finds every culprit; half size finds
    # about as many as full size.
    assert int((half.selected & wrong).sum()) >= int((full.selected & wrong).sum()) - 2 >= 8


def test_mask_size_at_or_above_the_views_size_changes_nothing() -> None:
    g, cams = _scene(seed=8)
    images = _images(g, cams).flip(1)
    full = view_space_gradients(g, images, cams, backend="auto")
    for size in (RES, 4 * RES):
        same = view_space_gradients(g, images, cams, backend="auto", mask_size=size)
        assert torch.equal(same.plain, full.plain) and torch.equal(same.colors, full.colors)


def test_bad_mask_size_is_refused() -> None:
    from engine.gd.config import SMALL

    g, cams = _scene()
    with pytest.raises(ValueError, match="mask_size"):
        view_space_gradients(g, _images(g, cams), cams, mask_size=-1)
    with pytest.raises(ValueError, match="mask_size"):
        SMALL.with_(mask_size=-1)
