"""Colours from the views (engine/models/view_colours.py) and the backbone that uses them."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from engine.cameras import Cameras
from engine.gaussians import Gaussians, sh_dc_to_rgb
from engine.models.gd_object import GDObjectModel
from engine.models.view_colours import recolour, view_colours


def _front_camera(size: int = 32) -> Cameras:
    """One camera at z = -3 looking down +z at the origin (OpenCV: x right, y down)."""
    w2c = torch.eye(4)
    w2c[2, 3] = 3.0
    return Cameras(w2c[None], float(size), float(size), size / 2, size / 2, size, size)


def _wall(z: float, n: int = 7, half: float = 0.6, opacity: float = 0.99) -> Gaussians:
    """An opaque n x n wall of small Gaussians in the plane z, spanning ±half."""
    t = torch.linspace(-half, half, n)
    y, x = torch.meshgrid(t, t, indexing="ij")
    means = torch.stack([x.ravel(), y.ravel(), torch.full((n * n,), z)], 1)
    logit = math.log(opacity / (1 - opacity))
    return Gaussians.isotropic(means, math.log(half / n), logit, torch.zeros(n * n, 4, 3))


def test_seen_gaussians_take_the_pixels_under_them_and_hidden_ones_keep_theirs():
    cam = _front_camera()
    size = cam.width
    # Left half red, right half blue: what the camera "photographed".
    image = torch.ones(1, size, size, 3)
    image[0, :, : size // 2] = torch.tensor([1.0, 0.0, 0.0])
    image[0, :, size // 2 :] = torch.tensor([0.0, 0.0, 1.0])
    front, back = _wall(0.0), _wall(0.5)
    off_frame = Gaussians.isotropic(torch.tensor([[30.0, 0.0, 0.0]]), -3.0, 4.6,
                                    torch.zeros(1, 4, 3))  # fmt: skip
    g = Gaussians.cat([front, back, off_frame])
    g.sh[:, 1:] = 0.25  # higher bands: the network's, kept

    colours, seen = view_colours(g, image, cam, tolerance=0.1)
    n = len(front)
    # The front wall is seen; the wall behind it is hidden by it; off-frame is unseen.
    assert bool(seen[:n].all())
    assert not bool(seen[n : 2 * n].any())
    assert not bool(seen[-1])
    x = front.means[:, 0]
    left, right = x < -0.2, x > 0.2
    torch.testing.assert_close(colours[:n][left], torch.tensor([1.0, 0.0, 0.0]).expand(
        int(left.sum()), 3), atol=1e-4, rtol=0)  # fmt: skip
    torch.testing.assert_close(colours[:n][right], torch.tensor([0.0, 0.0, 1.0]).expand(
        int(right.sum()), 3), atol=1e-4, rtol=0)  # fmt: skip

    out = recolour(g, colours, seen)
    torch.testing.assert_close(sh_dc_to_rgb(out.sh[:n, 0]), colours[:n])
    assert torch.equal(out.sh[n:, 0], g.sh[n:, 0])  # unseen: the network's colour
    assert torch.equal(out.sh[:, 1:], g.sh[:, 1:])
    for name in ("means", "log_scales", "quats", "opacity_logits"):
        assert torch.equal(getattr(out, name), getattr(g, name))


def test_nothing_visible_leaves_every_colour_to_the_network():
    cam = _front_camera()
    g = _wall(0.0, opacity=1e-4)  # below the rasteriser's 1/255 cut: nothing renders
    colours, seen = view_colours(g, torch.ones(1, cam.height, cam.width, 3), cam, 0.1)
    assert colours.shape == (len(g), 3) and not bool(seen.any())
    assert torch.equal(recolour(g, colours, seen).sh, g.sh)


def test_the_backbone_with_view_colours_loads_old_weights_and_colours_what_the_views_see():
    """No new parameters: weights trained without view colours load as they are; the
    decoded Gaussians keep everything but the DC colour of those the views see, which is
    the colour under them; the other parameters still get gradients."""
    from engine.images import resize_views
    from engine.models import load_model
    from engine.views import load_nerf_scene

    torch.manual_seed(0)
    base = load_model("object-tiny", device="cpu", pretrained=False)
    backbone = replace(base.cfg.backbone, silhouette=True)
    base = GDObjectModel(base.cfg.with_(backbone=backbone)).eval()
    model = GDObjectModel(base.cfg.with_(backbone=replace(backbone, view_colours=True))).eval()
    model.load_state_dict(base.state_dict(), strict=True)

    vs = load_nerf_scene("examples/sample_props/objects/000000/transforms_input.json")
    images, cams = resize_views(vs.rgba(), vs.cameras, 64)
    a = base.reconstruct(images, cams, densify=False).coarse
    b = model.reconstruct(images, cams, densify=False).coarse
    assert torch.equal(a.means, b.means) and torch.equal(a.opacity_logits, b.opacity_logits)
    assert torch.equal(a.sh[:, 1:], b.sh[:, 1:])
    changed = (a.sh[:, 0] != b.sh[:, 0]).any(1)
    assert 0 < int(changed.sum()) <= len(a)
    # The sample chair is coloured (wood, a purple seat): the views' colours are not the
    # untrained network's uniform grey.
    assert float(sh_dc_to_rgb(b.sh[changed, 0]).std(0).max()) > 0.05

    model.train()
    small, small_cams = resize_views(images, cams, model.image_size)
    mcams = model.normalization(small_cams, None).cameras_to_model(small_cams)
    out = model.backbone(small[None, ..., :3], [mcams], alphas=small[None, ..., 3])
    g = out.gaussians[0]
    (g.sh.square().sum() + g.opacity_logits.sum() + g.means.sum()).backward()
    assert model.backbone.decoder.weight.grad.abs().sum() > 0


def test_view_colours_round_trips_through_the_config():
    from engine.models.config import ObjectModelConfig, get_model_config

    cfg = get_model_config("object-small")
    assert cfg.backbone.view_colours
    assert ObjectModelConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["backbone"]["view_colours"], old["backbone"]["view_colour_tolerance"]
    assert not ObjectModelConfig.from_dict(old).backbone.view_colours  # older weights: off
