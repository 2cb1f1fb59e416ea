"""The silhouette prior of the object model (engine/models/silhouette.py)."""

from __future__ import annotations

import torch

from engine.cameras import Cameras
from engine.images import straight_rgba
from engine.models.silhouette import (
    alphas_from_views,
    dilate_alphas,
    hull_occupancy,
    silhouette_gate,
)


def _camera_on_z(size: int = 16) -> Cameras:
    """One camera at z = -3 looking down +z at the origin, `size` x `size` pixels."""
    w2c = torch.eye(4)
    w2c[2, 3] = 3.0
    return Cameras(w2c[None], float(size), float(size), size / 2, size / 2, size, size)


def test_straight_rgba_inverts_compositing():
    gen = torch.Generator().manual_seed(0)
    straight = torch.rand(2, 8, 8, 3, generator=gen)
    alpha = torch.rand(2, 8, 8, generator=gen)
    on_white = straight * alpha[..., None] + (1 - alpha[..., None])
    rgba = straight_rgba(on_white, alpha)
    rgb, a = alphas_from_views(rgba)
    torch.testing.assert_close(rgb, on_white)
    torch.testing.assert_close(a, alpha)
    grey = (0.2, 0.4, 0.6)
    on_grey = straight * alpha[..., None] + torch.tensor(grey) * (1 - alpha[..., None])
    torch.testing.assert_close(straight_rgba(on_grey, alpha, grey), rgba, atol=1e-5, rtol=0)
    # RGB views carry no silhouette: alpha one everywhere.
    rgb_only, ones = alphas_from_views(on_white)
    assert rgb_only is on_white and bool((ones == 1).all())


def test_gate_keeps_points_inside_the_silhouette_and_suppresses_the_rest():
    cams = _camera_on_z()
    alphas = torch.zeros(1, 16, 16)
    alphas[0, 6:10, 6:10] = 1.0  # a small square around the image centre
    inside = torch.tensor([[0.0, 0.0, 0.0]])
    outside = torch.tensor([[1.0, 1.0, 0.0]])  # projects to pixel (13.3, 13.3): background
    behind = torch.tensor([[0.0, 0.0, -5.0]])  # behind the camera: not framed, not carved
    gate = silhouette_gate(torch.cat([inside, outside, behind]), alphas, cams)
    assert gate[0] == 1.0 and gate[2] == 1.0
    assert gate[1] == 1e-3  # the floor: still a gradient back inside
    occupancy = hull_occupancy(torch.cat([inside, outside]), alphas, cams)
    assert occupancy.shape == (2, 2)


def test_dilation_grows_the_silhouette_by_its_radius():
    alphas = torch.zeros(1, 9, 9)
    alphas[0, 4, 4] = 1.0
    grown = dilate_alphas(alphas, 2)
    assert int(grown.sum()) == 25 and grown[0, 2:7, 2:7].min() == 1.0
    assert dilate_alphas(alphas, 0) is alphas


def test_gate_passes_gradients_to_the_means():
    cams = _camera_on_z()
    alphas = dilate_alphas(torch.zeros(1, 16, 16).index_fill_(1, torch.tensor([8]), 1.0), 1)
    means = torch.tensor([[0.05, 0.1, 0.0]], requires_grad=True)
    silhouette_gate(means, alphas, cams).sum().backward()
    assert means.grad is not None and bool(torch.isfinite(means.grad).all())


def test_a_silhouette_model_renders_nothing_where_an_input_view_shows_background():
    """A `silhouette` object model given RGBA keeps no Gaussian whose centre projects
    onto background in any input view; given RGB (or alpha one everywhere) the prior is a
    no-op."""
    from dataclasses import replace

    from engine.images import resize_views
    from engine.models import load_model
    from engine.views import load_nerf_scene

    torch.manual_seed(0)
    model = load_model("object-tiny", device="cpu", pretrained=False)
    cfg = model.cfg.with_(backbone=replace(model.cfg.backbone, silhouette=True))
    from engine.models.gd_object import GDObjectModel

    torch.manual_seed(0)
    model = GDObjectModel(cfg).eval()
    vs = load_nerf_scene("examples/sample_props/objects/000000/transforms_input.json")
    images, cams = resize_views(vs.images[..., :3].contiguous(), vs.cameras, 64)
    ones = torch.cat([images, torch.ones_like(images[..., :1])], -1)
    a = model.reconstruct(images, cams, densify=False)
    b = model.reconstruct(ones, cams, densify=False)
    assert torch.equal(a.coarse.means, b.coarse.means)
    assert torch.equal(a.coarse.opacity_logits, b.coarse.opacity_logits)

    # Silhouettes: a disc in the middle of every view.
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = (((yy - 31.5) ** 2 + (xx - 31.5) ** 2) < 12.0**2).float()
    rgba = torch.cat([images, disc.expand(len(cams), 64, 64)[..., None]], -1)
    rec = model.reconstruct(rgba, cams, densify=True)
    assert 0 < len(rec.coarse) < len(b.coarse)
    # The gate reads the silhouettes dilated by gate_dilation backbone pixels (64 px here).
    grown = dilate_alphas(disc.expand(len(cams), 64, 64), cfg.backbone.gate_dilation + 1)
    for g in (rec.coarse, rec.gaussians):
        occupancy = hull_occupancy(g.means, grown, cams)[:, 0]
        assert bool((occupancy > 0).all())
