"""Add-on: the splat look (Geometry Nodes + materials) with real bpy and Cycles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel"),
]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bpy():
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy


def _gaussians(n: int, seed: int = 0):
    from engine.gaussians import Gaussians

    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen) - 3,
        torch.randn(n, 4, generator=gen) * 3, torch.randn(n, generator=gen),
        torch.randn(n, 4, 3, generator=gen),
    )  # fmt: skip


def _evaluated(bpy, obj):
    depsgraph = bpy.context.evaluated_depsgraph_get()
    return depsgraph, bpy.types.GeometrySet.from_evaluated_object(obj.evaluated_get(depsgraph))


def _state(bpy, obj):
    return (
        [(m.name, m.type, m.node_group.name if m.node_group else None) for m in obj.modifiers],
        sorted(bpy.data.node_groups.keys()),
        sorted(bpy.data.materials.keys()),
        [m.name for m in obj.data.materials],
    )


def test_ensure_display_is_idempotent_and_switches_mode(bpy):
    from gd_blender_addon import display, pointcloud

    obj = pointcloud.gaussians_to_object(bpy.context, _gaussians(30), "splat")
    display.ensure_display(obj, "ELLIPSOIDS")
    first = _state(bpy, obj)
    assert first[0] == [(display.MODIFIER_NAME, "NODES", display.NODE_GROUP_NAME)]
    assert first[1] == [display.NODE_GROUP_NAME]
    assert first[2] == sorted([display.ELLIPSOID_MATERIAL, display.POINT_MATERIAL])
    nodes_before = len(bpy.data.node_groups[display.NODE_GROUP_NAME].nodes)
    for _ in range(3):
        display.ensure_display(obj, "ELLIPSOIDS")
    assert _state(bpy, obj) == first
    assert len(bpy.data.node_groups[display.NODE_GROUP_NAME].nodes) == nodes_before

    display.ensure_display(obj, "POINTS")
    display.ensure_display(obj, "points")
    assert _state(bpy, obj) == first  # only the mode input changed
    _, geometry = _evaluated(bpy, obj)
    assert geometry.instances_pointcloud() is None and len(geometry.pointcloud.points) == 30

    # A second object shares the node group and materials.
    other = pointcloud.gaussians_to_object(bpy.context, _gaussians(5, 1), "other")
    display.ensure_display(other)
    assert sorted(bpy.data.node_groups.keys()) == first[1]
    assert sorted(bpy.data.materials.keys()) == first[2]


def test_outdated_tree_is_rebuilt_in_place(bpy):
    from gd_blender_addon import display, pointcloud

    obj = pointcloud.gaussians_to_object(bpy.context, _gaussians(10), "splat")
    display.ensure_display(obj)
    ng = bpy.data.node_groups[display.NODE_GROUP_NAME]
    ng.nodes.clear()  # e.g. a file saved by an older add-on version
    ng[display._VERSION_KEY] = 0
    display.ensure_display(obj)
    assert bpy.data.node_groups[display.NODE_GROUP_NAME] == ng and len(ng.nodes) > 10
    _, geometry = _evaluated(bpy, obj)
    assert len(geometry.instances_pointcloud().points) == 10


def test_auto_mode_threshold(bpy, monkeypatch):
    from gd_blender_addon import display, pointcloud

    small = pointcloud.gaussians_to_object(bpy.context, _gaussians(20), "small")
    big = pointcloud.gaussians_to_object(bpy.context, _gaussians(40), "big")
    monkeypatch.setattr(display, "POINTS_THRESHOLD", 30)
    assert display.display_mode(small) == "ELLIPSOIDS" and display.display_mode(big) == "POINTS"
    display.ensure_display(small)
    display.ensure_display(big)
    _, g_small = _evaluated(bpy, small)
    _, g_big = _evaluated(bpy, big)
    assert len(g_small.instances_pointcloud().points) == 20
    assert g_big.instances_pointcloud() is None and len(g_big.pointcloud.points) == 40
    with pytest.raises(ValueError, match="display mode"):
        display.ensure_display(small, "SPHERES")


def test_ellipsoid_instances_follow_the_gaussians(bpy):
    """Evaluated instances: one per point, transform = [R(q/|q|) diag(exp(scale)) | mean]."""
    from engine.rotations import quaternion_to_matrix
    from gd_blender_addon import display, pointcloud

    n = 64
    g = _gaussians(n, 2)
    obj = pointcloud.gaussians_to_object(bpy.context, g, "splat")
    display.ensure_display(obj, "ELLIPSOIDS")
    depsgraph, geometry = _evaluated(bpy, obj)
    assert len(geometry.instances_pointcloud().points) == n
    mats = [np.array(i.matrix_world) for i in depsgraph.object_instances
            if i.is_instance and i.parent and i.parent.original == obj]  # fmt: skip
    assert len(mats) == n  # instances keep point order
    got = np.stack(mats)
    want = (quaternion_to_matrix(g.quats.double()) * g.scales.double()[:, None, :]).numpy()
    np.testing.assert_allclose(got[:, :3, :3], want, atol=1e-6)
    np.testing.assert_allclose(got[:, :3, 3], g.means.numpy(), atol=0)
    # The instanced ico-sphere has the ellipsoid material and radius SIGMA_EXTENT (in sigma).
    (reference,) = geometry.instance_references()
    ico = reference.mesh
    used = {ico.materials[p.material_index].name for p in ico.polygons}
    assert used == {display.ELLIPSOID_MATERIAL}
    radii = np.linalg.norm(np.array([v.co for v in ico.vertices]), axis=1)
    np.testing.assert_allclose(radii, pointcloud.SIGMA_EXTENT, rtol=1e-4)
    # Point mode: radius SIGMA_EXTENT * geometric-mean sigma, stored sigma for the shader.
    display.ensure_display(obj, "POINTS")
    _, geometry = _evaluated(bpy, obj)
    pc = geometry.pointcloud
    radius, sigma = np.empty(n, np.float32), np.empty(n, np.float32)
    pc.attributes["radius"].data.foreach_get("value", radius)
    pc.attributes["gd_sigma"].data.foreach_get("value", sigma)
    want_sigma = torch.exp(g.log_scales.double().mean(1)).numpy()
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-5)
    np.testing.assert_allclose(radius, pointcloud.SIGMA_EXTENT * want_sigma, rtol=1e-5)


def test_rejects_non_gaussian_objects(bpy):
    from gd_blender_addon import display

    bpy.ops.mesh.primitive_cube_add()
    with pytest.raises(ValueError, match="not a Gaussian splat object"):
        display.ensure_display(bpy.context.active_object)
    assert len(bpy.context.active_object.modifiers) == 0


def _fidelity_module():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import blender_display_fidelity
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return blender_display_fidelity


@pytest.mark.parametrize("mode", ["ELLIPSOIDS", "POINTS"])
def test_cycles_render_matches_engine_render(bpy, tmp_path, mode):
    """Cycles (Standard view transform, white world) vs engine.render from the same camera."""
    fidelity = _fidelity_module()
    scene_before = bpy.context.scene
    settings_before = (scene_before.render.engine, scene_before.view_settings.view_transform)
    counts_before = (len(bpy.data.objects), len(bpy.data.scenes), len(bpy.data.pointclouds))
    out = tmp_path / "side_by_side.png"
    result = fidelity.fidelity(out, n=400, samples=2, mode=mode)
    assert result["psnr"] >= 20.0, result["psnr"]
    # Not trivially equal because both are blank: the splats cover a good part of the view.
    covered = (result["engine"] < 0.9).any(axis=-1).mean()
    assert covered > 0.1
    assert out.is_file() and out.stat().st_size > 1000
    # The user's scene was left alone; everything the check made is gone.
    assert bpy.context.scene == scene_before
    after = (scene_before.render.engine, scene_before.view_settings.view_transform)
    assert after == settings_before
    assert (len(bpy.data.objects), len(bpy.data.scenes), len(bpy.data.pointclouds)) == counts_before
