"""Per-Gaussian view features (engine/gd/view_features.py)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.gaussians import Gaussians

cameras_mod = pytest.importorskip("engine.cameras")
if not hasattr(cameras_mod, "Cameras"):
    pytest.skip("engine.cameras is not in this tree yet", allow_module_level=True)

from engine.gd.config import CHILD_SAMPLES, ViewFeatureConfig  # noqa: E402
from engine.gd.view_features import (  # noqa: E402
    PARAM_FEATURES,
    ChildSampler,
    ViewFeatureEncoder,
    ViewSamples,
    candidate_features,
    gaussian_parameter_features,
    sample_views,
)

W, H = 20, 16


def _cameras():
    eyes = torch.tensor([[2.0, 0.0, 0.3], [0.0, 2.5, 0.3], [-2.0, -0.5, 1.0]])
    return cameras_mod.Cameras.look_at(eyes, torch.zeros(3), fov_x_deg=40, width=W, height=H)


def _pixel_centre_images(v: int) -> torch.Tensor:
    """Channel 0/1 hold the x/y coordinate of each pixel's centre: bilinear is exact on it."""
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    img = torch.stack([xs, ys, torch.full_like(xs, 0.25)], dim=-1)
    return img.expand(v, H, W, 3).clone()


def _gaussians(n: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians.from_activated(
        means=(torch.rand(n, 3, generator=gen) - 0.5) * 0.3,
        scales=torch.rand(n, 3, generator=gen) * 0.02 + 0.005,
        quats=torch.randn(n, 4, generator=gen),
        opacities=torch.rand(n, generator=gen) * 0.9 + 0.05,
        colors=torch.rand(n, 3, generator=gen),
    )


def test_samples_land_on_the_projected_pixel() -> None:
    cams = _cameras()
    pts = (torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.2
    imgs = _pixel_centre_images(3)
    depths = torch.full((3, H, W), 2.0)
    out = sample_views(pts, imgs, cams, imgs.flip(-1), torch.full((3, H, W), 0.5), depths)
    pixels, depth = cams.project(pts)
    assert out.valid.all()
    torch.testing.assert_close(out.samples[..., 0:2], pixels.transpose(0, 1), rtol=0, atol=1e-4)
    torch.testing.assert_close(out.samples[..., 2], torch.full((50, 3), 0.25))
    torch.testing.assert_close(out.samples[..., 3], torch.full((50, 3), 0.25))  # coarse RGB
    torch.testing.assert_close(out.samples[..., 6], torch.full((50, 3), 0.5))  # alpha
    torch.testing.assert_close(out.samples[..., 7], torch.log1p((2.0 - depth.T).abs()))


def test_points_outside_or_behind_a_view_are_masked_and_zeroed() -> None:
    cams = _cameras()
    # Far to the side of camera 0's frustum, and behind camera 1 (which sits at y = 2.5).
    pts = torch.tensor([[0.0, 1.8, 0.3], [0.0, 3.5, 0.3]])
    imgs = torch.rand(3, H, W, 3)
    out = sample_views(pts, imgs, cams, imgs, torch.ones(3, H, W), torch.ones(3, H, W))
    assert not out.valid[0, 0] and not out.valid[1, 1]
    assert (out.samples[~out.valid] == 0).all()
    with pytest.raises(ValueError):
        sample_views(pts, imgs[:2], cams, imgs, torch.ones(3, H, W), torch.ones(3, H, W))


def test_parameter_features_are_unit_free_and_sign_fixed() -> None:
    g = _gaussians(20)
    f = gaussian_parameter_features(g, log_scale_offset=math.log(0.01))
    assert f.shape == (20, PARAM_FEATURES)
    torch.testing.assert_close(f[:, 4:7], g.log_scales - math.log(0.01))
    assert (f[:, 7] >= 0).all()  # w >= 0
    flipped = Gaussians.unchecked(g.means, g.log_scales, -g.quats, g.opacity_logits, g.sh)
    torch.testing.assert_close(gaussian_parameter_features(flipped, math.log(0.01)), f)


def _views(n: int, v: int, seed: int = 0) -> ViewSamples:
    gen = torch.Generator().manual_seed(seed)
    valid = torch.rand(n, v, generator=gen) > 0.3
    valid[0] = False  # one Gaussian seen by no view at all
    samples = torch.rand(n, v, 8, generator=gen) * valid[..., None]
    return ViewSamples(samples, valid)


def test_encoder_is_invariant_to_view_order_and_ignores_masked_views() -> None:
    torch.manual_seed(0)
    enc = ViewFeatureEncoder(ViewFeatureConfig(dim=16, heads=4)).eval()
    views = _views(30, 4)
    params = torch.randn(30, PARAM_FEATURES)
    out = enc(views, params)
    assert out.shape == (30, enc.out_channels) and torch.isfinite(out).all()
    perm = torch.tensor([2, 0, 3, 1])
    permuted = ViewSamples(views.samples[:, perm], views.valid[:, perm])
    torch.testing.assert_close(enc(permuted, params), out)
    junk = torch.where(views.valid[..., None], views.samples, torch.randn_like(views.samples))
    torch.testing.assert_close(enc(ViewSamples(junk, views.valid), params), out)


def test_encoder_with_backbone_features_and_gradients() -> None:
    torch.manual_seed(1)
    enc = ViewFeatureEncoder(ViewFeatureConfig(dim=16, heads=2), backbone_dim=5)
    views = _views(12, 3, seed=1)
    backbone = torch.randn(12, 5, requires_grad=True)
    out = enc(views, torch.randn(12, PARAM_FEATURES), backbone)
    assert out.shape == (12, 16 + PARAM_FEATURES + 5)
    assert torch.equal(out[:, -5:], backbone)
    out[:, :16].square().sum().backward()
    assert backbone.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())
    with pytest.raises(ValueError):
        enc(views, torch.randn(12, PARAM_FEATURES))  # backbone expected


def test_candidate_features_from_a_coarse_render() -> None:
    render_mod = pytest.importorskip("engine.render")
    if not hasattr(render_mod, "render"):
        pytest.skip("the renderer is not in this tree yet")
    torch.manual_seed(2)
    g, cams = _gaussians(40), _cameras()
    with torch.no_grad():
        coarse = render_mod.render(g, cams, background=torch.ones(3), backend="auto")
    enc = ViewFeatureEncoder(ViewFeatureConfig(dim=8, heads=2))
    feats = candidate_features(
        enc, g[:10], coarse.colors, cams, coarse.colors, coarse.alphas, coarse.depths,
        grid_size=1 / 64,
    )  # fmt: skip
    assert feats.shape == (10, enc.out_channels) and torch.isfinite(feats).all()


def test_child_sampler_averages_the_views_that_see_the_point() -> None:
    cams = _cameras()
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    images = colours[:, None, None, :].expand(3, H, W, 3).clone()
    # A tight cluster: every point's depth is within ~0.003 of its view's mean depth.
    pts = (torch.rand(10, 3, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.004
    _, depth = cams.project(pts)
    alphas = torch.full((3, H, W), 0.75)
    # Coarse depth matches view 0 and 1 exactly enough; view 2 is "occluded" (depth 0.5).
    depths = torch.stack(
        [
            torch.full((H, W), float(depth[0].mean())),
            torch.full((H, W), float(depth[1].mean())),
            torch.full((H, W), 0.5),
        ]
    )
    feats = ChildSampler(images, cams, alphas, depths, tolerance=1e6)(pts)
    assert feats.shape == (10, CHILD_SAMPLES)
    torch.testing.assert_close(feats[:, :3], colours.mean(0).expand(10, 3))
    torch.testing.assert_close(feats[:, 6], torch.full((10,), 0.75))
    torch.testing.assert_close(feats[:, 7], torch.ones(10), rtol=1e-4, atol=1e-5)
    # A tight tolerance drops the occluded view: only red and green remain.
    tight = ChildSampler(images, cams, alphas, depths, tolerance=0.05)(pts)
    assert (tight[:, 2] < 1e-3).all()
    torch.testing.assert_close(tight[:, 0], tight[:, 1], rtol=0.1, atol=0.02)
    torch.testing.assert_close(tight[:, 0], torch.full((10,), 0.5), rtol=0.1, atol=0.02)


def test_a_smaller_coarse_render_is_sampled_at_its_own_resolution() -> None:
    """The coarse render may be a scaled-down view of the same cameras (the gradient mask's
    64² render beside 256² inputs): its samples are those of that render seen through the
    scaled cameras, while the input images are sampled at full size."""
    cams = _cameras()
    small = cams.scaled(W // 2, H // 2)
    pts = (torch.rand(40, 3, generator=torch.Generator().manual_seed(3)) - 0.5) * 0.2
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(3, H, W, 3, generator=gen)
    colors = torch.rand(3, H // 2, W // 2, 3, generator=gen)
    alphas = torch.rand(3, H // 2, W // 2, generator=gen) * 0.9 + 0.1
    depths = torch.rand(3, H // 2, W // 2, generator=gen) + 1.5
    mixed = sample_views(pts, images, cams, colors, alphas, depths)
    full = sample_views(pts, images, cams, images, alphas.new_ones(3, H, W),
                        depths.new_ones(3, H, W))  # fmt: skip
    own = sample_views(pts, colors, small, colors, alphas, depths)
    torch.testing.assert_close(mixed.samples[..., :3], full.samples[..., :3])
    torch.testing.assert_close(mixed.samples[..., 3:], own.samples[..., 3:])
    assert torch.equal(mixed.valid, own.valid)
    with pytest.raises(ValueError, match="coarse depths"):
        sample_views(pts, images, cams, colors, alphas, depths[:, :-1])


def test_render_depth_is_sampled_premultiplied_by_alpha() -> None:
    """Next to a silhouette the sampled depth is the surface's, not a blend with the
    background's 0: depth is interpolated as alpha · depth over alpha."""
    cams = _cameras()
    alphas = torch.zeros(3, H, W)
    alphas[..., : W // 2] = 1.0  # left half covered at depth 2.5, right half empty
    depths = torch.where(alphas > 0, torch.tensor(2.5), torch.tensor(0.0))
    # A point whose projection falls between the last covered and first empty column.
    c = cams[0]
    z = 2.5
    p_cam = torch.tensor([(W / 2 - float(c.cx[0])) * z / float(c.fx[0]),
                          (H / 2 - float(c.cy[0])) * z / float(c.fy[0]), z])  # fmt: skip
    w2c = c.world_to_camera[0]
    ray = ((p_cam - w2c[:3, 3]) @ w2c[:3, :3])[None]  # R^T (p - t) as a row vector
    torch.testing.assert_close(c.project(ray)[0][0, 0], torch.tensor([W / 2, H / 2]))
    sampler = ChildSampler(torch.zeros(3, H, W, 3), cams, alphas, depths, tolerance=1e-3)
    feats = sampler(ray)
    # Depth matches view 0's surface exactly, so view 0 keeps its full weight.
    assert float(feats[0, 7]) >= 1 / 3 - 1e-4
