"""The photo-consistency volume of the object model (engine/models/photo_volume.py)."""

from __future__ import annotations

from dataclasses import replace

import torch

from engine.cameras import Cameras
from engine.models.gd_object import GDObjectModel
from engine.models.photo_volume import PhotoVolume, photo_statistics


def _cameras(count: int = 3, size: int = 16) -> Cameras:
    """`count` cameras on the x-z circle at distance 3, looking at the origin."""
    w2c = []
    for k in range(count):
        angle = 2 * torch.pi * k / count
        c, s = float(torch.cos(torch.tensor(angle))), float(torch.sin(torch.tensor(angle)))
        # Camera at (3s, 0, -3c) looking at the origin: its +z axis is (-s, 0, c).
        rot = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        centre = torch.tensor([3 * s, 0.0, -3 * c])
        m = torch.eye(4)
        m[:3, :3] = rot
        m[:3, 3] = -rot @ centre
        w2c.append(m)
    return Cameras(torch.stack(w2c), float(size), float(size), size / 2, size / 2, size, size)


def test_statistics_average_the_views_that_see_a_point_inside_their_silhouettes():
    cams = _cameras(3)
    v, s, c = 3, 16, 2
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    images = colours[:, :, None, None].expand(v, 3, s, s).contiguous()
    feats = torch.arange(v * c, dtype=torch.float32).reshape(v, c, 1, 1).expand(v, c, 4, 4)
    alphas = torch.ones(v, s, s)
    alphas[2] = 0.0  # the third view sees background everywhere
    origin = torch.zeros(1, 3)
    far_away = torch.tensor([[50.0, 50.0, 50.0]])  # framed by no view
    stats = photo_statistics(torch.cat([origin, far_away]), images, feats, alphas, cams)
    assert stats.shape == (2, 2 * (3 + c) + 1)
    mean, var, seen = stats[0, : 3 + c], stats[0, 3 + c : -1], stats[0, -1]
    # Views 0 and 1 count, view 2 (background) does not.
    torch.testing.assert_close(mean[:3], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(mean[3:], (feats[0, :, 0, 0] + feats[1, :, 0, 0]) / 2)
    torch.testing.assert_close(var[:3], torch.tensor([0.25, 0.25, 0.0]))
    torch.testing.assert_close(seen, torch.tensor(2 / 3))
    assert bool((stats[1] == 0).all())


def test_photo_volume_starts_at_zero_and_learns():
    cams = _cameras(3)
    layer = PhotoVolume(image_channels=4, out_channels=8)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=gen)
    feats = torch.rand(3, 4, 4, 4, generator=gen)
    points = torch.rand(10, 3, generator=gen) - 0.5
    out = layer(points, images, feats, torch.ones(3, 16, 16), cams)
    assert out.shape == (10, 8) and bool((out == 0).all())
    out.square().add(out).sum().backward()
    assert layer.mlp[-1].weight.grad.abs().sum() > 0


def test_a_model_with_the_photo_volume_starts_from_the_same_output():
    """Weights trained without the photo volume load into a model with it (the new layer
    keeps its zero initialisation) and give the same Gaussians; the layer then trains."""
    from engine.images import resize_views
    from engine.models import load_model
    from engine.views import load_nerf_scene

    torch.manual_seed(0)
    base = load_model("object-tiny", device="cpu", pretrained=False)
    backbone = replace(base.cfg.backbone, silhouette=True)
    base = GDObjectModel(base.cfg.with_(backbone=backbone)).eval()
    cfg = base.cfg.with_(backbone=replace(backbone, photo_volume=True))
    model = GDObjectModel(cfg).eval()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(k.startswith("backbone.photo.") for k in missing)

    vs = load_nerf_scene("examples/sample_props/objects/000000/transforms_input.json")
    images, cams = resize_views(vs.rgba(), vs.cameras, 64)
    a = base.reconstruct(images, cams, densify=False)
    b = model.reconstruct(images, cams, densify=False)
    assert torch.equal(a.coarse.means, b.coarse.means)
    assert torch.equal(a.coarse.sh, b.coarse.sh)
    assert torch.equal(a.coarse.opacity_logits, b.coarse.opacity_logits)

    # Gradients reach the new layer through the decoded Gaussians.
    model.train()
    small, small_cams = resize_views(images, cams, model.image_size)
    norm = model.normalization(small_cams, None)
    mcams = norm.cameras_to_model(small_cams)
    out = model.backbone(small[None, ..., :3], [mcams], alphas=small[None, ..., 3])
    g = out.gaussians[0]
    (g.sh.square().sum() + g.opacity_logits.sum()).backward()
    assert model.backbone.photo.mlp[-1].weight.grad.abs().sum() > 0
