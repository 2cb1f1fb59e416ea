"""Add-on: Gaussians <-> Blender POINTCLOUD objects (vertex-only MESH objects on Blender
4.2-4.4, and forced on newer ones by the `mesh` cases), with real bpy (headless)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from ._splat_helpers import (
    REPRESENTATIONS,
    edit_select_all,
    point_count,
    set_selection,
    splat_type,
    use_representation,
)
from .conftest import random_gaussians as shared_random_gaussians

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel"),
]

FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")


def random_gaussians(n: int, degree: int = 0, seed: int = 0):
    """Log-scales ~ N(-3, 1), quaternions ~ N(0, 2.5²) (deliberately not unit length),
    opacity logits ~ N(0, 9)."""
    return shared_random_gaussians(n, degree, seed, log_scale_normal=(-3.0, 1.0),
                                   quats_std=2.5, opacity_std=3.0)  # fmt: skip


def bits(t: torch.Tensor) -> torch.Tensor:
    """float32 bit patterns: equality here is bit-exact (-0.0 and 0.0 differ)."""
    return t.contiguous().view(torch.int32)


def counts(bpy) -> tuple[int, ...]:
    d = bpy.data
    return len(d.objects), len(d.meshes), len(d.pointclouds), len(d.materials), len(d.node_groups)


def test_representation_follows_the_convert_operator(bpy):
    """POINTCLOUD objects exactly where `object.convert` has that target: Blender 4.5+."""
    from gd_blender_addon import pointcloud

    assert pointcloud.pointcloud_objects_supported() == (bpy.app.version >= (4, 5, 0))


@REPRESENTATIONS
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_bit_exact(bpy, monkeypatch, degree, as_mesh):
    from gd_blender_addon import pointcloud

    use_representation(monkeypatch, as_mesh)
    n = 257
    g = random_gaussians(n, degree, seed=degree)
    g.means[0] = torch.tensor([-0.0, 1e-38, 3.4e38])  # sign of zero, subnormal, huge
    level = torch.randint(0, 4, (n,))
    parent = torch.randint(0, 2**31 - 1, (n,))
    obj = pointcloud.gaussians_to_object(bpy.context, g, "splat", level=level, parent=parent)
    assert obj.type == splat_type() and point_count(obj) == n
    assert pointcloud.is_gaussian_object(obj)
    names = {a.name for a in obj.data.attributes}
    expected = {"opacity", "scale", "rotation", "f_dc", "gd_level", "gd_parent", "radius"}
    expected |= {f"f_rest_{i}" for i in range((degree + 1) ** 2 - 1)}
    assert expected <= names and expected - {"radius"} <= set(pointcloud.ATTRIBUTES)
    if obj.type == "POINTCLOUD":
        assert ".select_vert" not in names  # no mesh leftovers
    else:  # a fresh mesh: no vertex selected, so Densify asks for a selection
        assert len(obj.data.edges) == len(obj.data.polygons) == 0
        assert not pointcloud.selected_point_mask(obj).any()
        assert not pointcloud.has_selected_points(obj)
    types = {a.name: a.data_type for a in obj.data.attributes}
    assert types["rotation"] == "QUATERNION" and types["opacity"] == "FLOAT"
    assert types["scale"] == types["f_dc"] == "FLOAT_VECTOR" and types["gd_level"] == "INT"

    g2, level2, parent2 = pointcloud.object_to_gaussians(obj)
    assert g2.sh_degree == degree and g2.dtype == torch.float32
    for f in FIELDS:
        assert torch.equal(bits(getattr(g, f)), bits(getattr(g2, f))), f
    assert level2.dtype == parent2.dtype == torch.int64
    assert torch.equal(level2, level) and torch.equal(parent2, parent)


@REPRESENTATIONS
def test_defaults_radius_and_no_leftovers(bpy, monkeypatch, as_mesh):
    from gd_blender_addon import pointcloud

    use_representation(monkeypatch, as_mesh)
    g = random_gaussians(50)
    before = counts(bpy)
    obj = pointcloud.gaussians_to_object(bpy.context, g, "splat")
    after = counts(bpy)
    mesh = obj.type == "MESH"  # exactly one new datablock, of the object's type
    assert after[0] == before[0] + 1
    assert after[1] == before[1] + mesh and after[2] == before[2] + (not mesh)
    _, level, parent = pointcloud.object_to_gaussians(obj)
    assert torch.equal(level, torch.zeros(50, dtype=torch.int64))
    assert torch.equal(parent, torch.arange(50))
    radius = np.empty(50, np.float32)
    obj.data.attributes["radius"].data.foreach_get("value", radius)
    want = pointcloud.SIGMA_EXTENT * torch.exp(g.log_scales.double().mean(1))
    np.testing.assert_allclose(radius, want.numpy(), rtol=1e-6)


@REPRESENTATIONS
def test_float64_and_empty(bpy, monkeypatch, as_mesh):
    from gd_blender_addon import pointcloud

    use_representation(monkeypatch, as_mesh)
    g = random_gaussians(10, 1).to(dtype=torch.float64)
    obj = pointcloud.gaussians_to_object(bpy.context, g, "f64")
    g2, _, _ = pointcloud.object_to_gaussians(obj)
    assert torch.equal(g2.means, g.means.float())

    empty = random_gaussians(0, 2)
    obj0 = pointcloud.gaussians_to_object(bpy.context, empty, "empty")
    assert obj0.type == splat_type() and point_count(obj0) == 0
    g0, level0, parent0 = pointcloud.object_to_gaussians(obj0)
    assert len(g0) == 0 and g0.sh_degree == 2 and level0.shape == parent0.shape == (0,)


def test_collection_selection_and_active_restored(bpy):
    from gd_blender_addon import pointcloud

    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_uv_sphere_add()
    sphere = bpy.context.active_object
    sphere.select_set(False)
    cube.select_set(True)
    bpy.context.view_layer.objects.active = cube
    sub = bpy.data.collections.new("Splats")
    bpy.context.scene.collection.children.link(sub)

    obj = pointcloud.gaussians_to_object(sub, random_gaussians(20), "in_sub")
    assert [c.name for c in obj.users_collection] == ["Splats"]
    assert bpy.context.view_layer.objects.active == cube
    assert cube.select_get() and not sphere.select_get() and not obj.select_get()
    assert cube.type == "MESH" and sphere.type == "MESH"
    matrix = np.diag([2.0, 2.0, 2.0, 1.0])
    matrix[:3, 3] = (1, 2, 3)
    obj2 = pointcloud.gaussians_to_object(bpy.context, random_gaussians(5), "m", None, None, matrix)
    np.testing.assert_allclose(np.array(obj2.matrix_world), matrix)


def test_creation_while_another_object_is_in_edit_mode(bpy):
    from gd_blender_addon import pointcloud

    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    bpy.ops.object.mode_set(mode="EDIT")
    obj = pointcloud.gaussians_to_object(bpy.context, random_gaussians(30), "while_editing")
    assert obj.type == splat_type() and point_count(obj) == 30
    assert cube.mode == "EDIT" and bpy.context.view_layer.objects.active == cube
    assert cube.type == "MESH"


def test_bad_level_creates_nothing(bpy):
    from gd_blender_addon import pointcloud

    before = counts(bpy)
    with pytest.raises(ValueError, match="32-bit"):
        pointcloud.gaussians_to_object(
            bpy.context, random_gaussians(4), "x", parent=torch.tensor([0, 1, 2, 2**40])
        )
    with pytest.raises(ValueError, match="shape"):
        pointcloud.gaussians_to_object(bpy.context, random_gaussians(4), "x", level=torch.zeros(3))
    assert counts(bpy) == before


def _rotation(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_apply_transform_rigid_uniform_scale(bpy):
    from engine.gaussians import Gaussians
    from engine.transforms import rotate_gaussians
    from gd_blender_addon import pointcloud

    g = random_gaussians(100, 3, seed=7)
    obj = pointcloud.gaussians_to_object(bpy.context, g, "t")
    obj.location = (0.5, -1.0, 2.0)
    obj.rotation_euler = (0.3, -0.7, 1.9)
    obj.scale = (1.7, 1.7, 1.7)
    bpy.context.view_layer.update()
    world, _, _ = pointcloud.object_to_gaussians(obj, apply_transform=True)

    m = np.array(obj.matrix_world, dtype=np.float64)
    r = m[:3, :3] / 1.7
    scaled = Gaussians(g.means * 1.7, g.log_scales + math.log(1.7), g.quats, g.opacity_logits, g.sh)
    want = rotate_gaussians(scaled, torch.from_numpy(r), torch.from_numpy(m[:3, 3]))
    torch.testing.assert_close(world.means, want.means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(world.log_scales, want.log_scales, atol=1e-5, rtol=0)
    q1, q2 = world.rotations, want.rotations
    sign = torch.sign((q1 * q2).sum(-1, keepdim=True))
    torch.testing.assert_close(q1, q2 * sign, atol=1e-5, rtol=0)
    torch.testing.assert_close(world.sh, want.sh, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(world.sh[:, 1:], g.sh[:, 1:], atol=1e-2)  # really rotated
    torch.testing.assert_close(world.opacity_logits, g.opacity_logits)
    # Object space is untouched without apply_transform.
    local, _, _ = pointcloud.object_to_gaussians(obj)
    assert torch.equal(local.means, g.means)


def test_apply_transform_general_matrix_maps_covariances(bpy):
    from gd_blender_addon import pointcloud

    g = random_gaussians(64, 1, seed=3)
    obj = pointcloud.gaussians_to_object(bpy.context, g, "t")
    obj.location = (1.0, 2.0, -3.0)
    obj.rotation_euler = (0.4, 0.1, -1.2)
    obj.scale = (0.5, 2.0, -1.5)  # per-axis and a mirror
    bpy.context.view_layer.update()
    world, _, _ = pointcloud.object_to_gaussians(obj, apply_transform=True)
    m = torch.from_numpy(np.array(obj.matrix_world, dtype=np.float64))
    a = m[:3, :3]
    want_cov = a @ g.to(dtype=torch.float64).covariances @ a.T
    got_cov = world.to(dtype=torch.float64).covariances
    torch.testing.assert_close(got_cov, want_cov, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(world.means.double(), g.means.double() @ a.T + m[:3, 3],
                               atol=1e-5, rtol=1e-6)  # fmt: skip
    torch.testing.assert_close(world.sh[:, 0], g.sh[:, 0])  # DC colour unchanged


@REPRESENTATIONS
def test_replace_gaussians_keeps_object(bpy, monkeypatch, as_mesh):
    from gd_blender_addon import display, pointcloud

    use_representation(monkeypatch, as_mesh)
    obj = pointcloud.gaussians_to_object(bpy.context, random_gaussians(40), "keep")
    display.ensure_display(obj, "ELLIPSOIDS")
    data_name, materials = obj.data.name, [m.name for m in obj.data.materials]
    kind, n_before = obj.type, counts(bpy)
    g = random_gaussians(90, 2, seed=5)
    level = torch.cat([torch.zeros(40), torch.ones(50)]).long()
    parent = torch.cat([torch.arange(40), torch.randint(0, 40, (50,))])
    pointcloud.replace_gaussians(obj, g, level, parent)
    assert bpy.data.objects["keep"] == obj and obj.data.name == data_name
    assert [m.name for m in obj.data.materials] == materials
    assert [m.name for m in obj.modifiers] == [display.MODIFIER_NAME]
    assert obj.type == kind and counts(bpy) == n_before  # the old datablock is gone
    assert point_count(obj) == 90
    g2, level2, parent2 = pointcloud.object_to_gaussians(obj)
    for f in FIELDS:
        assert torch.equal(getattr(g, f), getattr(g2, f))
    assert torch.equal(level2, level) and torch.equal(parent2, parent)


def test_selected_point_mask(bpy):
    from gd_blender_addon import pointcloud

    if splat_type() != "POINTCLOUD":
        pytest.skip("no point cloud objects on this Blender (see the mesh test below)")
    obj = pointcloud.gaussians_to_object(bpy.context, random_gaussians(20), "sel")
    # A new cloud: nothing selected, explicitly (Blender acts on it so: Delete keeps all).
    assert not pointcloud.selected_point_mask(obj).any()
    assert not pointcloud.has_selected_points(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.pointcloud.delete()
    bpy.ops.object.mode_set(mode="OBJECT")
    assert len(obj.data.points) == 20
    # Select All removes the attribute, which Blender reads as all selected: so do we.
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.pointcloud.select_all(action="SELECT")
    bpy.ops.object.mode_set(mode="OBJECT")
    assert obj.data.attributes.get(pointcloud.SELECTION_ATTRIBUTE) is None
    assert pointcloud.selected_point_mask(obj).tolist() == [True] * 20
    assert pointcloud.has_selected_points(obj)
    # Blender's own edit-mode operator writes the attribute we read.
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.pointcloud.select_all(action="DESELECT")
    bpy.ops.object.mode_set(mode="OBJECT")
    attr = obj.data.attributes[pointcloud.SELECTION_ATTRIBUTE]
    assert attr.data_type == "BOOLEAN" and attr.domain == "POINT"
    assert not pointcloud.selected_point_mask(obj).any()
    want = np.zeros(20, bool)
    want[[1, 4, 19]] = True
    attr.data.foreach_set("value", want)
    mask = pointcloud.selected_point_mask(obj)
    assert mask.dtype == torch.bool and mask.tolist() == want.tolist()
    # ...and what we read is what Blender acts on: deleting the selection removes exactly those.
    bpy.ops.object.mode_set(mode="EDIT")
    assert pointcloud.selected_point_mask(obj).tolist() == want.tolist()  # current in edit mode
    bpy.ops.pointcloud.delete()
    bpy.ops.object.mode_set(mode="OBJECT")
    assert len(obj.data.points) == 17
    # A selection made in edit mode is readable while still editing.
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.pointcloud.select_random(seed=3)
    in_edit = pointcloud.selected_point_mask(obj)
    bpy.ops.object.mode_set(mode="OBJECT")
    assert 0 < int(in_edit.sum()) < 17
    assert torch.equal(in_edit, pointcloud.selected_point_mask(obj))


def test_selected_point_mask_mesh(bpy, monkeypatch):
    """Mesh splats (Blender 4.2-4.4; forced on newer ones): `.select_vert`, absent = none."""
    from gd_blender_addon import pointcloud

    use_representation(monkeypatch, pointcloud.pointcloud_objects_supported())
    obj = pointcloud.gaussians_to_object(bpy.context, random_gaussians(20), "sel")
    assert obj.type == "MESH"
    assert not pointcloud.selected_point_mask(obj).any()  # fresh: none selected (Densify asks)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    edit_select_all(obj, "DESELECT")
    assert not pointcloud.selected_point_mask(obj).any()  # read from the edit data
    bpy.ops.object.mode_set(mode="OBJECT")
    # Blender drops the attribute when nothing is selected: absent must mean none.
    assert obj.data.attributes.get(".select_vert") is None
    assert not pointcloud.selected_point_mask(obj).any()
    want = np.zeros(20, bool)
    want[[1, 4, 19]] = True
    set_selection(obj, want)
    mask = pointcloud.selected_point_mask(obj)
    assert mask.dtype == torch.bool and mask.tolist() == want.tolist()
    # ...and what we read is what Blender acts on: deleting the selection removes exactly those.
    g, level, _ = pointcloud.object_to_gaussians(obj)
    n_meshes = len(bpy.data.meshes)
    bpy.ops.object.mode_set(mode="EDIT")
    assert pointcloud.selected_point_mask(obj).tolist() == want.tolist()
    # Edit Mode meshes have no attribute data over RNA: every reader still sees the points
    # (through a temporary copy, removed again).
    g_edit, level_edit, _ = pointcloud.object_to_gaussians(obj)
    for f in FIELDS:
        assert torch.equal(getattr(g, f), getattr(g_edit, f)), f
    assert torch.equal(level, level_edit) and len(bpy.data.meshes) == n_meshes
    assert bpy.ops.mesh.delete(type="VERT") == {"FINISHED"}
    bpy.ops.object.mode_set(mode="OBJECT")
    assert len(obj.data.vertices) == 17
    # A selection made in edit mode is readable while still editing (not yet written back).
    bpy.ops.object.mode_set(mode="EDIT")
    edit_select_all(obj, "DESELECT")
    bpy.ops.mesh.select_random(seed=3)
    in_edit = pointcloud.selected_point_mask(obj)
    assert obj.mode == "EDIT"
    bpy.ops.object.mode_set(mode="OBJECT")
    assert 0 < int(in_edit.sum()) < 17
    assert torch.equal(in_edit, pointcloud.selected_point_mask(obj))


@REPRESENTATIONS
def test_points_in_region(bpy, monkeypatch, as_mesh):
    from gd_blender_addon import pointcloud

    use_representation(monkeypatch, as_mesh)
    gen = np.random.default_rng(0)
    pts = gen.uniform(-3, 3, size=(2000, 3)).astype(np.float32)
    g = random_gaussians(2000)
    g.means = torch.from_numpy(pts)
    obj = pointcloud.gaussians_to_object(bpy.context, g, "region_test")
    obj.location = (0.25, 0.0, -0.5)  # the cloud's own transform counts too
    empty = bpy.data.objects.new("Box", None)
    empty.empty_display_type = "CUBE"
    empty.empty_display_size = 0.5
    empty.location = (1.0, -0.5, 0.2)
    empty.rotation_euler = (0.0, 0.0, math.radians(30))
    empty.scale = (2.0, 1.0, 1.5)
    bpy.context.scene.collection.objects.link(empty)
    bpy.context.view_layer.update()
    world = pts.astype(np.float64) + np.array([0.25, 0.0, -0.5])
    rz = _rotation([0, 0, 1], math.radians(30))
    local = ((world - [1.0, -0.5, 0.2]) @ rz) / [2.0, 1.0, 1.5]  # rows: Rᵀ (p - t) / s
    want = np.all(np.abs(local) <= 0.5, axis=1)
    got = pointcloud.points_in_region(obj, empty).numpy()
    assert 20 < want.sum() < 1900 and np.array_equal(got, want)

    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(-1.0, 0.0, 0.0))
    cube = bpy.context.active_object
    cube.scale = (1.0, 2.0, 0.5)
    bpy.context.view_layer.update()
    rel = world - [-1.0, 0.0, 0.0]
    want_cube = (np.abs(rel[:, 0]) <= 1) & (np.abs(rel[:, 1]) <= 2) & (np.abs(rel[:, 2]) <= 0.5)
    assert np.array_equal(pointcloud.points_in_region(obj, cube).numpy(), want_cube)


def test_is_gaussian_object_and_errors(bpy):
    from gd_blender_addon import pointcloud

    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    assert not pointcloud.is_gaussian_object(cube)
    assert not pointcloud.is_gaussian_object(None)
    with pytest.raises(ValueError, match="no Gaussian splat attributes"):
        pointcloud.object_to_gaussians(cube)
    lamp = bpy.data.objects.new("lamp", bpy.data.lights.new("l", "POINT"))
    assert not pointcloud.is_gaussian_object(lamp)
    with pytest.raises(ValueError, match="POINTCLOUD"):
        pointcloud.object_to_gaussians(lamp)


def test_reads_mesh_with_ply_scalar_sh_layout(bpy):
    """Objects other tools make (mesh vertices, PLY-named scalar f_rest) can be read."""
    from engine.io.ply import sh_rest_names
    from gd_blender_addon import pointcloud

    n, degree = 12, 2
    g = random_gaussians(n, degree)
    mesh = bpy.data.meshes.new("other")
    mesh.vertices.add(n)
    mesh.attributes["position"].data.foreach_set("vector", g.means.numpy().ravel())

    def add(name, kind, values):
        attr = mesh.attributes.new(name, kind, "POINT")
        prop = "vector" if kind == "FLOAT_VECTOR" else "value"
        attr.data.foreach_set(prop, np.ascontiguousarray(values, np.float32).ravel())

    add("opacity", "FLOAT", g.opacity_logits.numpy())
    add("scale", "FLOAT_VECTOR", g.log_scales.numpy())
    add("rotation", "QUATERNION", g.quats.numpy())
    add("f_dc", "FLOAT_VECTOR", g.sh[:, 0].numpy())
    rest = g.sh[:, 1:].transpose(1, 2).reshape(n, -1).numpy()  # PLY channel-major
    for i, name in enumerate(sh_rest_names(degree)):
        add(name, "FLOAT", rest[:, i])
    obj = bpy.data.objects.new("other", mesh)
    bpy.context.scene.collection.objects.link(obj)
    assert pointcloud.is_gaussian_object(obj)
    g2, _, _ = pointcloud.object_to_gaussians(obj)
    for f in FIELDS:
        assert torch.equal(getattr(g, f), getattr(g2, f)), f


def test_modules_import_without_torch():
    """The add-on must register in a Blender without torch: these modules import it lazily."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import bpy\n"
        "from gd_blender_addon import display, pointcloud, splat_files\n"
        "assert 'gd_level' in pointcloud.ATTRIBUTES and display.MODES\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
