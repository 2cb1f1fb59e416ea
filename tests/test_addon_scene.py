"""Reconstruct Scene (issue 18) in real headless Blender (bpy wheel) with the tiny random
scene model (`scene-tiny`, pretrained=False): 2 to 4 selected cameras render the scene as it
is (background kept), the depth range comes from the visible meshes in front of them, and
the Gaussians land in the scene's own frame (no normalisation). Bad inputs (a wrong number
of cameras, cameras that see different things, missing weights) and a cancel leave the
scene exactly as it was.

Fast on purpose: 32² captures, Cycles at one sample, the tiny model's 64² input.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np
import pytest

from ._addon_helpers import cancelled_run, grid_material, snapshot
from ._splat_helpers import point_count, splat_type

# The operator tests' fixture: the add-on enabled for this module.

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel"),
]

CAPTURE = 32
CENTRE = np.array([3.0, -2.0, 1.0])  # far from the origin: a normalised result would show


@pytest.fixture(scope="module")
def tiny_scene():
    import torch

    from engine.resolve import resolve_model

    torch.manual_seed(0)
    return resolve_model("scene-tiny", "cpu", pretrained=False)


@pytest.fixture
def calls(addon, tiny_scene, monkeypatch):
    """The tiny scene model as the add-on's model; the list of its reconstruct calls
    (images, cameras, keywords, result)."""
    from gd_blender_addon import modal

    seen: list[tuple[Any, Any, dict[str, Any], Any]] = []
    reconstruct = tiny_scene.reconstruct

    def spy(images, cameras, **kw):
        rec = reconstruct(images, cameras, **kw)
        seen.append((images, cameras, kw, rec))
        return rec

    monkeypatch.setattr(tiny_scene, "reconstruct", spy, raising=False)
    monkeypatch.setattr(modal, "load_engine_model", lambda *a, **k: tiny_scene)
    return seen


def _camera(scene: Any, name: str, eye: Any, target: Any) -> Any:
    import bpy
    from mathutils import Matrix

    from engine.data.camera_poses import look_at

    data = bpy.data.cameras.new(name)
    data.lens = 35
    cam = bpy.data.objects.new(name, data)
    cam.matrix_world = Matrix(look_at(np.asarray(eye), np.asarray(target)).tolist())
    scene.collection.objects.link(cam)
    return cam


@pytest.fixture
def scene(addon):
    """A small set off the origin: a floor and a back wall, a textured cube on the floor,
    a coloured world; cameras Cam0..Cam4 looking at the cube from the front (a few tens of
    degrees apart) and Away0/Away1 back to back beside it. Cam0 and Cam1 are selected."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)  # keeps the enabled add-on
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.cycles.device = "CPU"
    scene.render.resolution_x, scene.render.resolution_y = 640, 480  # must survive capture
    scene.render.film_transparent = False
    scene.gd_splat.resolution = CAPTURE
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.3, 0.5, 0.8, 1.0)
    scene.world = world
    material = grid_material()
    x, y, z = CENTRE
    bpy.ops.mesh.primitive_plane_add(size=4.0, location=(x, y, z - 0.5))
    bpy.context.active_object.name = "Floor"
    bpy.ops.mesh.primitive_plane_add(size=4.0, location=(x, y + 2.0, z + 1.5),
                                     rotation=(math.pi / 2, 0.0, 0.0))  # fmt: skip
    bpy.context.active_object.name = "Wall"
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(x, y, z))
    cube = bpy.context.active_object
    cube.name = "Cube"
    cube.data.materials.append(material)
    for i, angle in enumerate((-30, -15, 0, 15, 30)):
        a = math.radians(angle - 90)  # the cameras stand on the -Y side, facing the wall
        eye = CENTRE + np.array([3.5 * math.cos(a), 3.5 * math.sin(a), 1.2])
        _camera(scene, f"Cam{i}", eye, CENTRE)
    side = CENTRE + np.array([-1.0, -1.5, 0.0])
    _camera(scene, "Away0", side, side + np.array([1.0, 0.0, 0.0]))
    _camera(scene, "Away1", side + np.array([0.0, 0.1, 0.0]), side + np.array([-1.0, 0.1, 0.0]))
    scene.camera = scene.objects["Cam0"]
    _select_only(scene, ["Cam0", "Cam1"])
    bpy.context.view_layer.update()
    return scene


def _select_only(scene: Any, names: list[str]) -> None:
    import bpy

    for obj in scene.objects:
        obj.select_set(obj.name in names)
    bpy.context.view_layer.objects.active = scene.objects[names[0]] if names else None


def _expected_depth_range(scene: Any, cameras: list[Any]) -> tuple[float, float]:
    """The brief's rule, spelled out independently: every corner of every mesh's world
    bounding box, its depth along each camera's view axis, positive ones only."""
    depths = []
    for obj in scene.objects:
        if obj.type != "MESH":
            continue
        for corner in obj.bound_box:
            p = np.array(obj.matrix_world) @ np.array([*corner, 1.0])
            for cam in cameras:
                m = np.array(cam.matrix_world)
                depths.append(float((p[:3] - m[:3, 3]) @ -m[:3, 2]))
    positive = [d for d in depths if d > 0]
    return max(0.05, 0.9 * min(positive)), 1.1 * max(positive)


# ---------------------------------------------------------------------------- happy path
@pytest.mark.slow
def test_reconstruct_scene_lands_in_the_cameras_world(scene, calls):
    import bpy
    import torch

    from engine.camera_formats import from_blender
    from engine.cameras import Cameras
    from gd_blender_addon.camera_capture import camera_record
    from gd_blender_addon.pointcloud import object_to_gaussians

    before = snapshot(scene)
    objects = set(before["objects"])
    assert bpy.ops.gd.reconstruct_scene() == {"FINISHED"}
    new = [o for o in bpy.data.objects if o.name not in objects]
    assert len(new) == 1
    obj = new[0]
    assert obj.name == "GD Scene" and obj.type == splat_type()
    assert bpy.context.active_object == obj and obj.select_get()

    ((images, cameras, kw, rec),) = calls
    assert images.shape == (2, CAPTURE, CAPTURE, 3) and len(cameras) == 2
    assert kw["densify"] is True and kw["budget"] is None
    assert kw["progress"] is not None and kw["cancel"] is not None
    # The background was kept: the world's blue fills the top corners (above the wall).
    sky = images[:, 0, 0]
    assert float((sky - sky[0]).abs().max()) < 0.05 and (sky[:, 2] > sky[:, 0] + 0.2).all()
    cams = [scene.objects["Cam0"], scene.objects["Cam1"]]
    near, far = _expected_depth_range(scene, cams)
    assert kw["near"] == pytest.approx(near, rel=1e-6)
    assert kw["far"] == pytest.approx(far, rel=1e-6)

    # Every Gaussian as the model returned it: no normalisation, no transform.
    g, level, parent = object_to_gaussians(obj)
    assert point_count(obj) == len(rec.gaussians.means)
    assert torch.equal(g.means, rec.gaussians.means.float())
    assert torch.equal(level, rec.level) and torch.equal(parent, rec.parent)
    assert np.allclose(np.array(obj.matrix_world), np.eye(4))
    # ...which lie in the frusta of the cameras in the world, between near and far: the
    # per-pixel (coarse) ones exactly, the densified ones within a small margin.
    world = Cameras.cat([from_blender(**camera_record(c, CAPTURE, CAPTURE)) for c in cams])
    pix, z = world.project(g.means)

    def in_frusta(margin: float, slack: float) -> torch.Tensor:
        lo, hi = -margin * CAPTURE, (1 + margin) * CAPTURE
        inside = (z > (1 - slack) * near) & (z < (1 + slack) * far)
        inside &= (pix[..., 0] >= lo) & (pix[..., 0] <= hi)
        inside &= (pix[..., 1] >= lo) & (pix[..., 1] <= hi)
        return inside.any(dim=0)

    coarse = level == 0
    assert int(coarse.sum()) > 0 and int((~coarse).sum()) > 0
    assert bool(in_frusta(0.0, 1e-4)[coarse].all())
    assert bool(in_frusta(0.1, 0.1).all())
    # Around the set, 3.7 units from the origin, where a normalised result would sit.
    assert float((g.means.mean(0) - torch.as_tensor(CENTRE).float()).norm()) < 2.0

    # Settings restored; the only new data: the object and its 2 packed views.
    after = snapshot(scene)
    for key in before:
        if key not in ("objects", "images", "pointclouds", "meshes", "hide_render", "matrices",
                       "modes"):  # fmt: skip
            assert after[key] == before[key], key
    assert len(set(after["images"]) - set(before["images"])) == 2
    assert len(obj.gd_splat.views) == 2 and obj.gd_splat.source == "scene"


@pytest.mark.slow
def test_candidates_setting_and_cycles_for_a_workbench_scene(scene, calls):
    """Scene Candidates reaches the model as its per-view budget; a scene set to Workbench
    is rendered with Cycles and set back."""
    import bpy

    scene.render.engine = "BLENDER_WORKBENCH"
    scene.gd_splat.scene_candidates = 8
    before = snapshot(scene)
    assert bpy.ops.gd.reconstruct_scene() == {"FINISHED"}
    ((_, _, kw, rec),) = calls
    assert kw["budget"] == 8 and rec.stats["counts"]["candidates"] <= 2 * 8
    assert scene.render.engine == "BLENDER_WORKBENCH"
    assert snapshot(scene)["render.engine"] == before["render.engine"]


def test_panel_shows_the_button_and_why_it_is_disabled(scene, addon):
    import bpy

    from gd_blender_addon.panels import VIEW3D_PT_gd_splat

    from .test_addon_register import FakeLayout

    def draw() -> str:
        log: list[str] = []
        VIEW3D_PT_gd_splat.draw(type("P", (), {"layout": FakeLayout(log)})(), bpy.context)
        return " ".join(log)

    text = draw()
    assert "operator gd.reconstruct_scene" in text and "prop scene_candidates" in text
    assert "Reconstruct Scene takes" not in text
    _select_only(scene, ["Cam0"])
    assert "Reconstruct Scene takes 2 to 4" in draw()


# ---------------------------------------------------------------------------- bad input
def test_an_object_model_is_refused(scene, addon, monkeypatch):
    import bpy
    import torch

    from engine.resolve import resolve_model
    from gd_blender_addon import modal

    torch.manual_seed(0)
    model = resolve_model("object-tiny", "cpu", pretrained=False)
    monkeypatch.setattr(modal, "load_engine_model", lambda *a, **k: model)
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match="not a scene model"):
        bpy.ops.gd.reconstruct_scene()
    assert snapshot(scene) == before


@pytest.mark.parametrize("names", [["Cam0"], ["Cam0", "Cam1", "Cam2", "Cam3", "Cam4"]])
def test_wrong_number_of_cameras_reports_and_changes_nothing(scene, calls, names):
    import bpy

    from gd_blender_addon import operators

    _select_only(scene, names)
    before = snapshot(scene)
    message = f"Reconstruct Scene takes 2 to 4 cameras .*; {len(names)} selected"
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.gd.reconstruct_scene()
    assert snapshot(scene) == before and calls == []
    reason = operators.reconstruct_scene_blocker(bpy.context)
    assert reason is not None and f"{len(names)} selected" in reason


def test_cameras_looking_away_from_each_other_report_no_overlap(scene, calls):
    import bpy

    _select_only(scene, ["Away0", "Away1"])
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match="Cannot reconstruct the scene: view . does not overlap"):
        bpy.ops.gd.reconstruct_scene()
    assert snapshot(scene) == before and calls == []  # refused before any render


def test_missing_scene_weights_is_one_clear_error(scene, addon, monkeypatch, tmp_path):
    import bpy

    import engine.resolve
    from gd_blender_addon import modal

    modal.clear_models()
    monkeypatch.setattr(engine.resolve, "shipped_weights", lambda name: tmp_path / "none")
    before = snapshot(scene)
    message = "Model weights missing: no shipped weights for 'scene-small'.*Scene Weights File"
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.gd.reconstruct_scene()
    assert snapshot(scene) == before


@pytest.mark.slow
@pytest.mark.parametrize("when", ["capture", "engine"])
def test_cancel_leaves_the_scene_unchanged(scene, calls, when):
    import bpy

    from gd_blender_addon import jobs

    before = snapshot(scene)
    assert cancelled_run(bpy.ops.gd.reconstruct_scene, when) == {"CANCELLED"}
    assert snapshot(scene) == before
    assert jobs.active_job() is None


def test_depth_range_of_points_in_front():
    pytest.importorskip("bpy")
    from gd_blender_addon.errors import UserError
    from gd_blender_addon.scene_job import depth_range

    camera = np.eye(4)  # at the origin, looking down -Z
    points = [[0, 0, -2.0], [1, 0, -10.0], [0, 0, 5.0]]  # the last one is behind
    assert depth_range(points, [camera]) == pytest.approx((1.8, 11.0))
    assert depth_range([[0, 0, -0.01], [0, 0, -1.0]], [camera]) == pytest.approx((0.05, 1.1))
    with pytest.raises(UserError, match="in front of the selected cameras"):
        depth_range([[0, 0, 5.0]], [camera])
