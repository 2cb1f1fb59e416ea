"""Scenes data (`gd data make --kind scenes`): the room spec and its camera clip (pure
numpy, fast), the kind recorded in the manifest, and one tiny real-Blender render (RGB,
depth consistent with the room box, cameras as planned, resume)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from engine.data.procedural.room_spec import (
    CAMERA_CLEARANCE,
    CONTEXT_ANGLE_DEG,
    CONTEXT_OVERLAP,
    TARGET_BEYOND,
    frustum_overlap,
    in_frustum,
    item_bbox,
    look_matrix,
    path_pose,
    pixel_rays,
    ray_box_exit,
    sample_room,
    view_angle_deg,
)

HAS_BPY = importlib.util.find_spec("bpy") is not None


def _point_in_box(point: np.ndarray, part: dict) -> bool:
    centre, size = np.asarray(part["matrix"])[:3, 3], np.asarray(part["args"]["size"])
    return bool(np.all(np.abs(point - centre) < size / 2))


# ---------------------------------------------------------------------------- geometry
def test_look_matrix_is_a_rigid_camera_looking_along_yaw_and_pitch():
    m = look_matrix(np.array([1.0, 2.0, 1.5]), 90.0, -30.0)
    assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(m[:3, :3]), 1.0)
    forward = -m[:3, 2]
    assert np.allclose(forward, [0.0, math.cos(math.radians(30)), -0.5], atol=1e-12)
    assert abs(m[2, 0]) < 1e-12  # no roll: the image's x axis stays horizontal


def test_ray_box_exit_and_planar_depth():
    lo, hi = np.array([-2.0, -3.0, 0.0]), np.array([2.0, 3.0, 2.5])
    dirs = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    t = ray_box_exit(np.array([0.0, 0.0, 1.0]), dirs, lo, hi)
    assert np.allclose(t, [2.0, 3.0, 1.5, 2.0])
    # pixel_rays: t is the planar depth (the direction's component along the axis is 1).
    c2w = look_matrix(np.array([0.0, 0.0, 2.0]), 0.0, 0.0)  # looks at the x = 2 wall
    origin, rays = pixel_rays(c2w, 60.0, 8)
    depth = ray_box_exit(origin, rays, lo, np.array([2.0, 3.0, 4.0]))
    assert np.allclose(depth, 2.0)


def test_frustum_overlap_falls_with_rotation():
    room = (8.0, 8.0, 3.0)
    eye = np.array([0.0, 0.0, 1.5])
    fov = 60.0
    values = [frustum_overlap(look_matrix(eye, 0, 0), look_matrix(eye, a, 0), fov, room)
              for a in (0, 15, 30, 45, 60, 180)]  # fmt: skip
    assert values[0] == 1.0 and values[-1] == 0.0
    assert all(a > b for a, b in zip(values[:5], values[1:5], strict=False))
    assert 0.3 < values[2] < 0.7  # half the fov apart: about half the frame shared
    assert values[4] < 0.1
    # in_frustum agrees with the camera frame: the point ahead is in, one behind is not.
    c2w = look_matrix(eye, 0, 0)
    assert in_frustum(np.array([[3.0, 0, 1.5], [-3.0, 0, 1.5]]), c2w, fov).tolist() == [
        True,
        False,
    ]


# ---------------------------------------------------------------------------- spec
def test_room_spec_is_deterministic_and_json():
    a, b = sample_room(3, 5), sample_room(3, 5)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(sample_room(3, 6)) != json.dumps(a)
    assert json.dumps(sample_room(4, 5)) != json.dumps(a)
    assert len(sample_room(3, 5, n_target=3)["cameras"]["target"]) == 3


@pytest.mark.parametrize("index", range(6))
def test_context_pair_targets_and_furniture_meet_the_plan(index):
    spec = sample_room(11, index)
    w, d, h = spec["room"]
    clip, cams = spec["clip"], spec["cameras"]
    ctx = [np.asarray(c) for c in cams["context"]]
    fov = clip["fov_deg"]
    angle = view_angle_deg(*ctx)
    overlap = frustum_overlap(*ctx, fov, tuple(spec["room"]))
    assert CONTEXT_ANGLE_DEG[0] <= angle <= CONTEXT_ANGLE_DEG[1]
    assert CONTEXT_OVERLAP[0] <= overlap <= CONTEXT_OVERLAP[1]
    assert math.isclose(angle, clip["context_angle_deg"], abs_tol=1e-3)
    assert math.isclose(overlap, clip["context_overlap"], abs_tol=1e-3)
    # Six targets: one slightly before the first context view, four between, one after.
    s = clip["target_s"]
    assert len(s) == len(cams["target"]) == 6
    assert -TARGET_BEYOND[1] <= s[0] <= -TARGET_BEYOND[0]
    assert 1 + TARGET_BEYOND[0] <= s[-1] <= 1 + TARGET_BEYOND[1]
    assert all(0 < x < 1 for x in s[1:-1]) and s == sorted(s)
    t0, t1 = clip["context_t"]
    for x, t, cam in zip(s, clip["target_t"], cams["target"], strict=True):
        assert math.isclose(t, t0 + x * (t1 - t0), abs_tol=1e-5)
        assert np.allclose(path_pose(clip["path"], t), cam, atol=1e-5)
    # Every camera inside the room, clear of the walls and of the furniture.
    for cam in cams["context"] + cams["target"]:
        p = np.asarray(cam)[:3, 3]
        assert abs(p[0]) <= w / 2 - CAMERA_CLEARANCE + 1e-6
        assert abs(p[1]) <= d / 2 - CAMERA_CLEARANCE + 1e-6
        assert 0.5 < p[2] < h - 0.3
    assert len(spec["furniture"]) >= 1
    for item in spec["furniture"]:
        lo, hi = item_bbox(item)
        assert np.all(lo >= [-w / 2 - 1e-3, -d / 2 - 1e-3, -1e-3]), item["kind"]
        assert np.all(hi <= [w / 2 + 1e-3, d / 2 + 1e-3, h]), item["kind"]
        for cam in cams["context"] + cams["target"]:
            p = np.asarray(cam)[:3, 3]
            assert not np.all((p > lo) & (p < hi)), "a camera inside furniture"


@pytest.mark.parametrize("index", range(4))
def test_openings_are_holes_in_the_walls(index):
    spec = sample_room(2, index)
    w, d, h = spec["room"]
    assert 1 <= len(spec["openings"]) <= 2
    for o in spec["openings"]:
        half = {"south": -d / 2, "north": d / 2, "west": -w / 2, "east": w / 2}[o["wall"]]
        out = 0.05 if half > 0 else -0.05  # inside the wall's thickness
        z = 0.5 * (o["bottom"] + o["top"])
        if o["wall"] in ("south", "north"):
            hole, solid = [o["center"], half + out, z], [o["center"], half + out, h - 0.05]
        else:
            hole, solid = [half + out, o["center"], z], [half + out, o["center"], h - 0.05]
        assert not any(_point_in_box(np.array(hole), p) for p in spec["shell"])
        assert any(_point_in_box(np.array(solid), p) for p in spec["shell"])


def test_bundled_sample_scene_matches_the_generator():
    """examples/sample_scene was made by this spec (seed 2033, scene 0, 4 targets): a spec
    change that alters scenes must regenerate it (and bump SCENE_GENERATOR_VERSION)."""
    from pathlib import Path

    from engine.data.layout import SCENE_GENERATOR_VERSION

    root = Path(__file__).resolve().parents[1] / "examples" / "sample_scene"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["kind"] == "scenes" and manifest["finished"] == 1
    assert manifest["generator_version"] == SCENE_GENERATOR_VERSION
    room = json.loads((root / "scenes" / "000000" / "room.json").read_text())
    assert room["spec"] == json.loads(json.dumps(sample_room(2033, 0, 4)))
    for split, count in (("context", 2), ("target", 4)):
        assert len(list((root / "scenes" / "000000" / split).glob("*.png"))) == count
        assert len(list((root / "scenes" / "000000" / f"{split}_depth").glob("*.png"))) == count


# ---------------------------------------------------------------------------- kinds
def test_wrong_kind_resume_is_refused(tmp_path):
    from engine.data.layout import manifest_kind
    from engine.data.make import MakeConfig, _manifest, make_dataset

    props = MakeConfig(out=tmp_path / "p", objects=1, resolution=32, progress=False)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(_manifest(props, [], None)))
    assert manifest_kind(json.loads((tmp_path / "p" / "manifest.json").read_text())) == "props"
    with pytest.raises(ValueError, match="holds a props dataset.*--kind scenes"):
        make_dataset(MakeConfig(out=tmp_path / "p", objects=1, resolution=32, kind="scenes"))
    scenes = MakeConfig(out=tmp_path / "s", objects=1, resolution=32, kind="scenes")
    manifest = _manifest(scenes, [], None)
    assert manifest["kind"] == "scenes" and manifest["format"] == "gd-scenes"
    assert manifest["views"] == {"context": 2, "target": 6}
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="holds a scenes dataset.*--kind props"):
        make_dataset(MakeConfig(out=tmp_path / "s", objects=1, resolution=32))
    # The props manifest is as before: no "kind" key, its format says it.
    assert "kind" not in _manifest(props, [], None)


def test_scenes_config_is_checked():
    from engine.data.make import MakeConfig, make_dataset

    with pytest.raises(ValueError, match="2 context views"):
        make_dataset(MakeConfig(out="unused", objects=1, kind="scenes", views_in=4))
    with pytest.raises(ValueError, match="kind must be one of"):
        make_dataset(MakeConfig(out="unused", objects=1, kind="rooms"))


# ---------------------------------------------------------------------------- Blender
@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    from engine.data.make import MakeConfig, make_dataset

    root = tmp_path_factory.mktemp("scenes")
    cfg = MakeConfig(out=root, objects=1, resolution=32, seed=5, workers=1, samples=1,
                     progress=False, kind="scenes")  # fmt: skip
    report = make_dataset(cfg)
    assert report.failed == {}, report.failed
    return root, cfg


@pytest.mark.blender
@pytest.mark.slow
@pytest.mark.skipif(not HAS_BPY, reason="needs the bpy wheel")
def test_tiny_render_files_cameras_and_depth(rendered):
    from PIL import Image

    from engine.camera_formats import read_nerf_transforms
    from engine.data.layout import DEPTH_SCALE
    from engine.images import read_depth_png

    root, _ = rendered
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["kind"] == "scenes" and manifest["finished"] == 1
    folder = root / "scenes" / "000000"
    room = json.loads((folder / "room.json").read_text())
    spec = room["spec"]
    assert spec == json.loads(json.dumps(sample_room(5, 0)))
    lo = np.array([-spec["room"][0] / 2, -spec["room"][1] / 2, 0.0])
    hi = np.array([spec["room"][0] / 2, spec["room"][1] / 2, spec["room"][2]])
    fov = spec["clip"]["fov_deg"]
    for split, count in (("context", 2), ("target", 6)):
        data = json.loads((folder / f"transforms_{split}.json").read_text())
        assert 0 < data["near"] < data["far"] and data["depth_scale"] == 0.001
        frames = read_nerf_transforms(folder / f"transforms_{split}.json")
        assert len(frames.cameras) == count
        c2w = (frames.cameras.camera_to_world.double() @ np.diag([1.0, -1, -1, 1])).numpy()
        assert np.allclose(c2w, np.asarray(spec["cameras"][split]), atol=1e-4)
        assert math.isclose(math.degrees(data["camera_angle_x"]), fov, abs_tol=1e-3)
        for k in range(count):
            with Image.open(folder / split / f"{k:03d}.png") as image:
                assert image.mode == "RGB" and image.size == (32, 32)
                assert np.asarray(image).std() > 3  # a lit room, not a flat fill
            depth = read_depth_png(folder / f"{split}_depth" / f"{k:03d}.png", DEPTH_SCALE)
            assert depth.shape == (32, 32)
            origin, rays = pixel_rays(np.asarray(spec["cameras"][split][k]), fov, 32)
            box = ray_box_exit(origin, rays, lo, hi).reshape(32, 32)
            valid = np.isfinite(depth)
            assert valid.mean() > 0.5
            assert data["near"] <= np.nanmin(depth) and np.nanmax(depth) <= data["far"]
            # Planar depth: furniture only brings surfaces nearer than the room box...
            assert (depth[valid] <= box[valid] * 1.03 + 0.03).mean() > 0.97
            # ...and the walls, floor and ceiling seen past it match the box.
            match = np.abs(depth[valid] - box[valid]) <= 0.03 * box[valid] + 0.02
            assert match.mean() > 0.5, (split, k, match.mean())


@pytest.mark.blender
@pytest.mark.slow
@pytest.mark.skipif(not HAS_BPY, reason="needs the bpy wheel")
def test_resume_skips_finished_scenes_and_refuses_props(rendered):
    from engine.data.make import MakeConfig, make_dataset

    root, cfg = rendered
    before = (root / "scenes" / "000000" / "done.json").read_text()
    report = make_dataset(cfg)
    assert report.rendered == [] and report.skipped == 1 and report.failed == {}
    assert (root / "scenes" / "000000" / "done.json").read_text() == before
    with pytest.raises(ValueError, match="holds a scenes dataset"):
        make_dataset(MakeConfig(out=root, objects=1, resolution=32, seed=5, progress=False))


def test_montage_of_a_scenes_dataset_shows_views_over_depth(tmp_path):
    from pathlib import Path

    from PIL import Image

    from engine.data.montage import make_montage

    root = Path(__file__).resolve().parents[1] / "examples" / "sample_scene"
    out = make_montage(root, tmp_path / "sheet.png", count=1, tile=32)
    with Image.open(out) as image:
        assert image.size == (6 * 32, 2 * 32)  # 2 context + 4 target views, depth beneath
