"""Add-on: the splat look (Geometry Nodes + materials) with real bpy and Cycles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ._splat_helpers import REPRESENTATIONS, use_representation
from .conftest import random_gaussians

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel"),
]

ROOT = Path(__file__).resolve().parents[1]


def _gaussians(n: int, seed: int = 0):
    """SH degree 1; log-scales ~ N(-3, 1), quaternions ~ N(0, 9)."""
    return random_gaussians(n, 1, seed, log_scale_normal=(-3.0, 1.0), quats_std=3.0)


class _Evaluated:
    """What `obj`'s display evaluates to, read from the depsgraph's object instances
    (`bpy.types.GeometrySet` would be simpler but is not in bpy 4.2.23 or 4.4.0).

    matrices: (M, 4, 4) world matrices of the mesh instances (the ellipsoids), in point
    order; instance_mesh: the first instance's mesh; pointcloud: the evaluated point cloud
    (the object's own for a POINTCLOUD object, a geometry instance for a MESH one) or None.
    """

    def __init__(self, bpy, obj) -> None:
        depsgraph = bpy.context.evaluated_depsgraph_get()
        matrices, self.instance_mesh, self.pointcloud = [], None, None
        for inst in depsgraph.object_instances:
            owner = inst.parent if inst.is_instance else inst.object
            if owner is None or owner.original != obj:
                continue
            ob = inst.object
            if inst.is_instance and ob.type == "MESH":
                matrices.append(np.array(inst.matrix_world))
                if self.instance_mesh is None:
                    self.instance_mesh = ob.data
            elif ob.type == "POINTCLOUD" and len(ob.data.points):
                assert self.pointcloud is None  # one point cloud only
                self.pointcloud = ob.data
        self.matrices = np.array(matrices).reshape(-1, 4, 4)


def _evaluated(bpy, obj) -> _Evaluated:
    return _Evaluated(bpy, obj)


def _state(bpy, obj):
    return (
        [(m.name, m.type, m.node_group.name if m.node_group else None) for m in obj.modifiers],
        sorted(bpy.data.node_groups.keys()),
        sorted(bpy.data.materials.keys()),
        [m.name for m in obj.data.materials],
    )


@REPRESENTATIONS
def test_ensure_display_is_idempotent_and_switches_mode(bpy, monkeypatch, as_mesh):
    from gd_blender_addon import display, pointcloud

    use_representation(monkeypatch, as_mesh)
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

    mod = obj.modifiers[display.MODIFIER_NAME]
    key = display._input_identifier(mod.node_group, "Ellipsoids")
    assert display.modifier_input(mod, key) is True
    display.ensure_display(obj, "POINTS")
    display.ensure_display(obj, "points")
    assert display.modifier_input(mod, key) is False
    assert _state(bpy, obj) == first  # only the mode input changed
    ev = _evaluated(bpy, obj)
    assert len(ev.matrices) == 0 and len(ev.pointcloud.points) == 30

    # A second object shares the node group and materials.
    other = pointcloud.gaussians_to_object(bpy.context, _gaussians(5, 1), "other")
    display.ensure_display(other)
    assert sorted(bpy.data.node_groups.keys()) == first[1]
    assert sorted(bpy.data.materials.keys()) == first[2]


@REPRESENTATIONS
def test_outdated_tree_is_rebuilt_in_place(bpy, monkeypatch, as_mesh):
    from gd_blender_addon import display, pointcloud

    use_representation(monkeypatch, as_mesh)
    obj = pointcloud.gaussians_to_object(bpy.context, _gaussians(10), "splat")
    display.ensure_display(obj)
    ng = bpy.data.node_groups[display.NODE_GROUP_NAME]
    ng.nodes.clear()  # e.g. a file saved by an older add-on version
    ng[display._VERSION_KEY] = 0
    display.ensure_display(obj)
    assert bpy.data.node_groups[display.NODE_GROUP_NAME] == ng and len(ng.nodes) > 10
    assert len(_evaluated(bpy, obj).matrices) == 10


@REPRESENTATIONS
def test_auto_mode_threshold(bpy, monkeypatch, as_mesh):
    from gd_blender_addon import display, pointcloud

    use_representation(monkeypatch, as_mesh)
    small = pointcloud.gaussians_to_object(bpy.context, _gaussians(20), "small")
    big = pointcloud.gaussians_to_object(bpy.context, _gaussians(40), "big")
    monkeypatch.setattr(display, "POINTS_THRESHOLD", 30)
    assert display.display_mode(small) == "ELLIPSOIDS" and display.display_mode(big) == "POINTS"
    display.ensure_display(small)
    display.ensure_display(big)
    ev_small, ev_big = _evaluated(bpy, small), _evaluated(bpy, big)
    assert len(ev_small.matrices) == 20 and ev_small.pointcloud is None
    assert len(ev_big.matrices) == 0 and len(ev_big.pointcloud.points) == 40
    with pytest.raises(ValueError, match="display mode"):
        display.ensure_display(small, "SPHERES")


@REPRESENTATIONS
def test_ellipsoid_instances_follow_the_gaussians(bpy, monkeypatch, as_mesh):
    """Evaluated instances: one per point, transform = [R(q/|q|) diag(exp(scale)) | mean]."""
    from engine.rotations import quaternion_to_matrix
    from gd_blender_addon import display, pointcloud

    use_representation(monkeypatch, as_mesh)
    n = 64
    g = _gaussians(n, 2)
    obj = pointcloud.gaussians_to_object(bpy.context, g, "splat")
    display.ensure_display(obj, "ELLIPSOIDS")
    ev = _evaluated(bpy, obj)
    assert len(ev.matrices) == n and ev.pointcloud is None  # instances keep point order
    got = ev.matrices
    want = (quaternion_to_matrix(g.quats.double()) * g.scales.double()[:, None, :]).numpy()
    np.testing.assert_allclose(got[:, :3, :3], want, atol=1e-6)
    np.testing.assert_allclose(got[:, :3, 3], g.means.numpy(), atol=0)
    # The instanced ico-sphere has the ellipsoid material and radius SIGMA_EXTENT (in sigma).
    ico = ev.instance_mesh
    used = {ico.materials[p.material_index].name for p in ico.polygons}
    assert used == {display.ELLIPSOID_MATERIAL}
    radii = np.linalg.norm(np.array([v.co for v in ico.vertices]), axis=1)
    np.testing.assert_allclose(radii, pointcloud.SIGMA_EXTENT, rtol=1e-4)
    # Point mode: radius SIGMA_EXTENT * geometric-mean sigma, stored sigma for the shader.
    display.ensure_display(obj, "POINTS")
    pc = _evaluated(bpy, obj).pointcloud
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


@REPRESENTATIONS
@pytest.mark.parametrize("mode", ["ELLIPSOIDS", "POINTS"])
def test_cycles_render_matches_engine_render(bpy, tmp_path, monkeypatch, mode, as_mesh):
    """Cycles (Standard view transform, white world) vs engine.render from the same camera."""
    use_representation(monkeypatch, as_mesh)
    fidelity = _fidelity_module()
    scene_before = bpy.context.scene
    settings_before = (scene_before.render.engine, scene_before.view_settings.view_transform)
    d = bpy.data
    counts_before = (len(d.objects), len(d.scenes), len(d.pointclouds), len(d.meshes))
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
    assert (len(d.objects), len(d.scenes), len(d.pointclouds), len(d.meshes)) == counts_before
