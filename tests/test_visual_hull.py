"""engine.baselines.visual_hull on analytically ray-cast shapes (a sphere, a two-coloured
box) seen from rings of cameras, and its errors."""

from __future__ import annotations

import math

import pytest
import torch

from engine.baselines.visual_hull import (
    VisualHullError,
    VoxelGrid,
    carve,
    surface,
    visual_hull_gaussians,
)
from engine.cameras import Cameras
from engine.gaussians import SH_C0
from engine.models.normalization import estimate_normalization
from engine.render import render

SIZE = 96
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


def ring_cameras(center: torch.Tensor, elevations=(25.0, -25.0), per_ring: int = 6,
                 distance: float = 3.0, size: int = SIZE) -> Cameras:  # fmt: skip
    """Cameras on rings around `center` at the given elevations, looking at it."""
    eyes = []
    for k, elev in enumerate(elevations):
        for i in range(per_ring):
            az = math.radians(360 * i / per_ring + 30 * k)
            el = math.radians(elev)
            offset = [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
            eyes.append(center + distance * torch.tensor(offset, dtype=torch.float64))
    eyes_t = torch.stack(eyes)
    return Cameras.look_at(eyes_t, center.expand_as(eyes_t), fov_x_deg=40.0,
                           width=size, height=size)  # fmt: skip


def pixel_rays(cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """World ray origins (C, 1, 1, 3) and unit directions (C, H, W, 3) through pixel
    centres."""
    h, w = cameras.height, cameras.width
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    u, v = u.double(), v.double()
    x = (u[None] - cameras.cx[:, None, None]) / cameras.fx[:, None, None]
    y = (v[None] - cameras.cy[:, None, None]) / cameras.fy[:, None, None]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    c2w = cameras.camera_to_world
    d = d_cam @ c2w[:, None, :3, :3].transpose(-1, -2)
    return c2w[:, None, None, :3, 3], d / d.norm(dim=-1, keepdim=True)


def raycast_sphere(cameras: Cameras, center, radius) -> torch.Tensor:
    """(C, H, W, 4) RGBA of a grey sphere (binary alpha)."""
    o, d = pixel_rays(cameras)
    oc = o - torch.as_tensor(center, dtype=torch.float64)
    b = (oc * d).sum(-1)
    disc = b**2 - ((oc * oc).sum(-1) - radius**2)
    alpha = (disc > 0).double()
    rgb = torch.full(alpha.shape + (3,), 0.6, dtype=torch.float64)
    return torch.cat([rgb, alpha[..., None]], -1).float()


def raycast_box(cameras: Cameras, center, half) -> torch.Tensor:
    """(C, H, W, 4) RGBA of an axis-aligned box: RED where the first hit has x > centre x,
    BLUE elsewhere (slab test)."""
    o, d = pixel_rays(cameras)
    c = torch.as_tensor(center, dtype=torch.float64)
    h = torch.as_tensor(half, dtype=torch.float64)
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0, t1 = (c - h - o) * inv, (c + h - o) * inv
    t_near = torch.minimum(t0, t1).amax(-1)
    t_far = torch.maximum(t0, t1).amin(-1)
    hit = (t_far > t_near) & (t_far > 0)
    x = (o + t_near[..., None] * d)[..., 0]
    red = torch.tensor(RED, dtype=torch.float64)
    blue = torch.tensor(BLUE, dtype=torch.float64)
    rgb = torch.where((x > c[0])[..., None], red, blue)
    rgb = torch.where(hit[..., None], rgb, torch.ones_like(rgb))
    return torch.cat([rgb, hit.double()[..., None]], -1).float()


def test_sphere_carves_to_the_right_volume_and_place():
    center = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    radius = 0.4
    cams = ring_cameras(center)
    rgba = raycast_sphere(cams, center, radius)
    grid = VoxelGrid(estimate_normalization(cams.to(dtype=torch.float32)), 96)
    occupied = carve(rgba[..., 3], cams.to(dtype=torch.float32), grid)
    volume = float(occupied.sum()) * grid.voxel_size**3
    true_volume = 4 / 3 * math.pi * radius**3
    # A hull from 12 views is a little larger than the sphere, never much smaller.
    assert 0.95 * true_volume < volume < 1.35 * true_volume, (volume, true_volume)
    centroid = grid.centers()[occupied].double().mean(0)
    assert float((centroid - center).norm()) < grid.voxel_size

    g = visual_hull_gaussians(rgba, cams)
    assert g.means.shape[1] == 3 and g.sh.shape[1:] == (1, 3) and len(g) > 1000
    dist = (g.means.double() - center).norm(dim=1)
    # Every Gaussian sits on the (hull of the) sphere's surface, in the world frame.
    assert float(dist.min()) > radius - 3 * grid.voxel_size
    assert float(dist.max()) < radius * 1.25
    assert float(dist.median()) == pytest.approx(radius, abs=2 * grid.voxel_size)
    # Its colour is the sphere's grey, and it renders back into the views' silhouettes.
    rgb = g.sh[:, 0] * SH_C0 + 0.5
    assert float((rgb - 0.6).abs().max()) < 0.02
    with torch.no_grad():
        out = render(g, cams[[0, 7]], background=torch.ones(3))
    agree = ((out.alphas > 0.5) == (rgba[[0, 7], ..., 3] > 0.5)).float().mean()
    assert float(agree) > 0.97


def test_two_coloured_box_colours_land_on_the_right_sides():
    center = torch.tensor([-0.1, 0.2, 0.0], dtype=torch.float64)
    half = (0.3, 0.2, 0.2)
    cams = ring_cameras(center, elevations=(20.0,), per_ring=8)
    rgba = raycast_box(cams, center, half)
    g = visual_hull_gaussians(rgba, cams)
    rgb = g.sh[:, 0] * SH_C0 + 0.5
    x = g.means[:, 0].double() - center[0]
    red_side, blue_side = x > 0.6 * half[0], x < -0.6 * half[0]
    assert int(red_side.sum()) > 100 and int(blue_side.sum()) > 100
    red, blue = torch.tensor(RED), torch.tensor(BLUE)
    # The median colour of each end is that end's colour (views see each end whole).
    assert torch.allclose(rgb[red_side].median(0).values, red, atol=0.05)
    assert torch.allclose(rgb[blue_side].median(0).values, blue, atol=0.05)
    # And almost every Gaussian of an end is nearer its colour than the other one.
    near_red = (rgb[red_side] - red).norm(dim=1) < (rgb[red_side] - blue).norm(dim=1)
    near_blue = (rgb[blue_side] - blue).norm(dim=1) < (rgb[blue_side] - red).norm(dim=1)
    assert float(near_red.float().mean()) > 0.95 and float(near_blue.float().mean()) > 0.95


def test_surface_is_the_shell_of_a_solid():
    occupied = torch.zeros(10, 10, 10, dtype=torch.bool)
    occupied[2:8, 2:8, 2:8] = True  # a 6³ cube
    shell = surface(occupied)
    assert int(shell.sum()) == 6**3 - 4**3 and not bool(shell[3:7, 3:7, 3:7].any())
    full = torch.ones(4, 4, 4, dtype=torch.bool)
    assert bool(surface(full)[0].all()) and not bool(surface(full)[1:3, 1:3, 1:3].any())


def test_bbox_places_the_grid():
    center = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    cams = ring_cameras(center)
    rgba = raycast_sphere(cams, center, 0.3)
    bbox = torch.stack([center - 0.35, center + 0.35]).float()
    g = visual_hull_gaussians(rgba, cams, bbox=bbox, resolution=48)
    assert float((g.means.double().mean(0) - center).norm()) < 0.05


def test_errors_are_clear():
    center = torch.zeros(3, dtype=torch.float64)
    cams = ring_cameras(center, elevations=(20.0,), per_ring=4, size=32)
    rgba = raycast_sphere(cams, center, 0.4)
    with pytest.raises(VisualHullError, match="needs RGBA views"):
        visual_hull_gaussians(rgba[..., :3], cams)
    empty = rgba.clone()
    empty[2, ..., 3] = 0.0
    with pytest.raises(VisualHullError, match="view 2 has an empty silhouette"):
        visual_hull_gaussians(empty, cams)
    with pytest.raises(VisualHullError, match="3 images for 4 cameras"):
        visual_hull_gaussians(rgba[:3], cams)
    with pytest.raises(VisualHullError, match="32x32"):
        visual_hull_gaussians(rgba[:, :16, :16], cams)
    # Silhouettes that do not agree on any point of space: each view sees the object in a
    # corner of its frame that no other view's silhouette reaches.
    disagree = torch.zeros_like(rgba)
    for view, (r, c) in enumerate([(0, 0), (0, 28), (28, 0), (28, 28)]):
        disagree[view, r : r + 4, c : c + 4, 3] = 1.0
    with pytest.raises(VisualHullError, match="share no voxel"):
        visual_hull_gaussians(disagree, cams)
