"""Tests for engine.camera_formats: the Blender, NeRF and COLMAP converters."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.camera_formats import (
    ColmapModel,
    colmap_to_cameras,
    from_blender,
    read_colmap,
    read_nerf_transforms,
    to_blender,
    write_colmap,
    write_nerf_transforms,
)
from engine.cameras import CameraError, Cameras

from ._camera_helpers import F64, assert_same_cameras, random_cameras


# ---------------------------------------------------------------------------- helpers
def rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def blender_matrix(location, euler_xyz_deg, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    """matrix_world as Blender builds it: T @ Rz @ Ry @ Rx @ S (XYZ Euler)."""
    ex, ey, ez = (math.radians(d) for d in euler_xyz_deg)
    cy_, sy_ = math.cos(ey), math.sin(ey)
    ry = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
    m = np.eye(4)
    m[:3, :3] = rot_z(math.degrees(ez)) @ ry @ rot_x(math.degrees(ex)) @ np.diag(scale)
    m[:3, 3] = location
    return m


BLENDER_DEFAULTS = dict(
    lens=50.0, sensor_width=36.0, sensor_height=24.0, sensor_fit="AUTO", shift_x=0.0,
    shift_y=0.0, resolution_x=64, resolution_y=48,
)  # fmt: skip


# ---------------------------------------------------------------------------- Blender
BLENDER_CASES = [
    # fit, shift_x, shift_y, res_x, res_y, pixel aspect x, y, percentage
    ("AUTO", 0.0, 0.0, 64, 48, 1.0, 1.0, 100),
    ("AUTO", 0.1, -0.2, 48, 64, 1.0, 1.0, 100),
    ("HORIZONTAL", -0.15, 0.05, 40, 60, 2.0, 1.0, 100),
    ("VERTICAL", 0.3, 0.1, 80, 50, 1.0, 3.0, 100),
    ("VERTICAL", -0.05, -0.1, 50, 80, 1.5, 1.0, 50),
    ("AUTO", 0.2, -0.1, 60, 50, 1.0, 2.5, 100),
    ("AUTO", 0.0, 0.3, 61, 60, 1.0, 1.1, 100),  # non-square pixels flip AUTO to vertical
]


@pytest.mark.parametrize("case", BLENDER_CASES)
def test_blender_round_trip(case):
    fit, shift_x, shift_y, res_x, res_y, pax, pay, pct = case
    matrices = np.stack(
        [blender_matrix((1.0, -4.0, 2.0), (70.0, 10.0, 30.0), (2.0, 2.0, 2.0)),
         blender_matrix((-3.0, 0.5, 1.0), (95.0, -5.0, -120.0))]
    )  # fmt: skip
    params = dict(lens=35.0, sensor_width=30.0, sensor_height=20.0, sensor_fit=fit,
                  shift_x=shift_x, shift_y=shift_y, resolution_x=res_x, resolution_y=res_y,
                  pixel_aspect_x=pax, pixel_aspect_y=pay, resolution_percentage=pct)  # fmt: skip
    cams = from_blender(matrices, **params, dtype=F64)
    assert (cams.width, cams.height) == (res_x * pct // 100, res_y * pct // 100)
    settings_list = to_blender(cams, sensor_width=36.0)
    assert len(settings_list) == 2
    for i, blender in enumerate(settings_list):
        assert blender["sensor_fit"] == "AUTO"
        assert min(blender["pixel_aspect_x"], blender["pixel_aspect_y"]) == 1.0
        assert_same_cameras(cams[i], from_blender(**blender, dtype=F64), atol=1e-9)


@settings(max_examples=25, deadline=None, database=None)
@given(
    fx=st.floats(20.0, 200.0), aspect=st.floats(0.5, 2.0), cx=st.floats(-20.0, 80.0),
    cy=st.floats(-20.0, 80.0), width=st.integers(8, 96), height=st.integers(8, 96),
)  # fmt: skip
def test_cameras_to_blender_round_trip_property(fx, aspect, cx, cy, width, height):
    cams = Cameras(torch.eye(4, dtype=F64), fx, fx * aspect, cx, cy, width, height)
    (blender,) = to_blender(cams)
    assert_same_cameras(cams, from_blender(**blender, dtype=F64), atol=1e-9)


def test_blender_hand_computed_intrinsics():
    landscape = from_blender(np.eye(4), **{**BLENDER_DEFAULTS, "shift_x": 0.1, "shift_y": 0.2})
    assert float(landscape.fx[0]) == pytest.approx(50 / 36 * 64)
    assert float(landscape.fy[0]) == pytest.approx(50 / 36 * 64)
    assert float(landscape.cx[0]) == pytest.approx(32 - 0.1 * 64)
    assert float(landscape.cy[0]) == pytest.approx(24 + 0.2 * 64)
    # AUTO on a portrait image fits the sensor *width* to the image height.
    portrait = from_blender(np.eye(4), **{**BLENDER_DEFAULTS, "resolution_x": 48,
                                          "resolution_y": 64})  # fmt: skip
    assert float(portrait.fx[0]) == pytest.approx(50 / 36 * 64)
    vertical = from_blender(np.eye(4), **{**BLENDER_DEFAULTS, "sensor_fit": "VERTICAL"})
    assert float(vertical.fx[0]) == pytest.approx(50 / 24 * 48)
    # Pixels twice as tall as wide: half the vertical focal length in pixels.
    tall = from_blender(np.eye(4), **BLENDER_DEFAULTS, pixel_aspect_y=2.0)
    assert float(tall.fy[0]) == pytest.approx(float(tall.fx[0]) / 2)
    half = from_blender(np.eye(4), **BLENDER_DEFAULTS, resolution_percentage=50)
    assert (half.width, half.height) == (32, 24)
    assert float(half.fx[0]) == pytest.approx(float(landscape.fx[0]) / 2)


def test_blender_camera_at_known_pose_gives_opencv_extrinsics():
    # Camera at (0, -5, 0), rotation_euler (90°, 0, 0): looks along +Y with +Z up.
    cams = from_blender(blender_matrix((0.0, -5.0, 0.0), (90.0, 0.0, 0.0)), **BLENDER_DEFAULTS,
                        dtype=F64)  # fmt: skip
    expected = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]],
        dtype=F64,
    )
    torch.testing.assert_close(cams.world_to_camera[0], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(cams.centers[0], torch.tensor([0.0, -5.0, 0.0], dtype=F64))
    pixels, depth = cams.project(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64))
    assert depth[0, 0].item() == pytest.approx(5.0)
    torch.testing.assert_close(pixels[0, 0], torch.tensor([32.0, 24.0], dtype=F64))
    assert pixels[0, 1, 1].item() < 24.0  # world up is image up


@pytest.mark.parametrize("case", BLENDER_CASES)
def test_blender_optical_axis_lands_on_principal_point(case):
    fit, shift_x, shift_y, res_x, res_y, pax, pay, pct = case
    matrix = blender_matrix((1.0, 2.0, 3.0), (40.0, 20.0, -60.0), (1.0, 3.0, 0.5))
    cams = from_blender(matrix, 40.0, 36.0, 24.0, fit, shift_x, shift_y, res_x, res_y, pax, pay,
                        pct, dtype=F64)  # fmt: skip
    rot = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    on_axis = matrix[:3, 3] - 7.0 * rot[:, 2]  # Blender cameras look down their local -Z
    pixels, depth = cams.project(torch.tensor(on_axis)[None])
    torch.testing.assert_close(pixels[0, 0], torch.stack([cams.cx[0], cams.cy[0]]))
    assert depth[0, 0].item() == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [({"sensor_fit": "DIAGONAL"}, "sensor_fit"), ({"lens": 0.0}, "lens"),
     ({"shift_x": float("inf")}, "shift_x"), ({"resolution_x": 0}, "resolution_x"),
     ({"matrix_world": np.eye(3)}, "matrix_world"),
     ({"matrix_world": np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])},
      "shear")],
)  # fmt: skip
def test_blender_bad_inputs(override, message):
    args = {"matrix_world": np.eye(4), **BLENDER_DEFAULTS, **override}
    with pytest.raises(CameraError, match=message):
        from_blender(**args)


@pytest.mark.blender
def test_blender_formula_matches_bpy_world_to_camera_view():
    bpy = pytest.importorskip("bpy")
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Matrix, Vector

    scene = bpy.data.scenes.new("test_cameras")
    data = bpy.data.cameras.new("test_cameras")
    obj = bpy.data.objects.new("test_cameras", data)
    try:
        points = np.random.default_rng(0).normal(size=(8, 3))
        for fit, shift_x, shift_y, res_x, res_y, pax, pay, pct in BLENDER_CASES[1:5]:
            matrix = blender_matrix((1.0, -6.0, 2.0), (75.0, 5.0, 10.0), (2.0, 2.0, 2.0))
            obj.matrix_world = Matrix(matrix.tolist())
            data.lens, data.sensor_width, data.sensor_height = 35.0, 30.0, 20.0
            data.sensor_fit, data.shift_x, data.shift_y = fit, shift_x, shift_y
            render = scene.render
            render.resolution_x, render.resolution_y = res_x, res_y
            render.pixel_aspect_x, render.pixel_aspect_y = pax, pay
            render.resolution_percentage = pct
            cams = from_blender(np.array(obj.matrix_world), data.lens, data.sensor_width,
                                data.sensor_height, data.sensor_fit, data.shift_x, data.shift_y,
                                res_x, res_y, pax, pay, pct, dtype=F64)  # fmt: skip
            pixels, depth = cams.project(torch.tensor(points))
            for n, point in enumerate(points):
                ndc = world_to_camera_view(scene, obj, Vector(point.tolist()))
                u, v = ndc.x * cams.width, (1.0 - ndc.y) * cams.height
                assert pixels[0, n, 0].item() == pytest.approx(u, abs=5e-4)
                assert pixels[0, n, 1].item() == pytest.approx(v, abs=5e-4)
                assert depth[0, n].item() == pytest.approx(ndc.z, abs=1e-5)
    finally:
        bpy.data.objects.remove(obj)
        bpy.data.cameras.remove(data)
        bpy.data.scenes.remove(scene)


# ---------------------------------------------------------------------------- NeRF
def touch_images(folder: Path, names: list[str]) -> list[Path]:
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # writers and readers never open images when w/h are given
        paths.append(path)
    return paths


@pytest.mark.parametrize("shared", [True, False])
def test_nerf_round_trip(tmp_path: Path, shared: bool):
    cams = random_cameras(3, seed=10)
    if shared:
        cams = Cameras(cams.world_to_camera, 50.0, 52.0, 31.0, 25.0, cams.width, cams.height)
    images = touch_images(tmp_path, ["images/a.png", "images/b.png", "c.jpg"])
    json_path = tmp_path / "transforms.json"
    write_nerf_transforms(json_path, cams, images, extra={"aabb_scale": 4})
    data = json.loads(json_path.read_text())
    assert ("fl_x" in data) == shared and ("fl_x" in data["frames"][0]) != shared
    assert data["frames"][0]["file_path"] == "images/a.png"
    frames = read_nerf_transforms(json_path, dtype=F64)
    assert_same_cameras(cams, frames.cameras, atol=1e-9)
    assert frames.image_paths == images
    assert frames.extra == {"aabb_scale": 4}
    assert read_nerf_transforms(json_path).cameras.dtype == torch.float32


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_nerf_camera_angle_form_and_image_size_from_header(tmp_path: Path):
    Image.new("RGB", (40, 30)).save(tmp_path / "r_0.png")
    angle = 0.7
    identity = np.eye(4).tolist()
    path = write_json(tmp_path / "transforms.json", {
        "camera_angle_x": angle,
        "frames": [{"file_path": "./r_0", "transform_matrix": identity}],
    })  # fmt: skip
    frames = read_nerf_transforms(path, dtype=F64)
    cams = frames.cameras
    assert (cams.width, cams.height) == (40, 30)
    assert float(cams.fx[0]) == pytest.approx(0.5 * 40 / math.tan(0.5 * angle))
    assert float(cams.fy[0]) == pytest.approx(float(cams.fx[0]))
    assert (float(cams.cx[0]), float(cams.cy[0])) == (20.0, 15.0)
    assert frames.image_paths == [tmp_path / "r_0.png"]
    # OpenGL camera at the origin looks down world -Z, with +Y up in the image.
    pixels, depth = cams.project(torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.5, -2.0]], dtype=F64))
    torch.testing.assert_close(pixels[0, 0], torch.tensor([20.0, 15.0], dtype=F64))
    assert depth[0, 0].item() == pytest.approx(2.0)
    assert pixels[0, 1, 1].item() < 15.0


def test_nerf_per_frame_intrinsics_override_top_level(tmp_path: Path):
    touch_images(tmp_path, ["a.png", "b.png"])
    identity = np.eye(4).tolist()
    path = write_json(tmp_path / "t.json", {
        "w": 40, "h": 30, "camera_angle_x": 0.7, "camera_angle_y": 0.5, "cx": 19.0,
        "frames": [{"file_path": "a.png", "transform_matrix": identity},
                   {"file_path": "b.png", "transform_matrix": identity, "fl_x": 33.0,
                    "cy": 14.0}],
    })  # fmt: skip
    cams = read_nerf_transforms(path, dtype=F64).cameras
    assert float(cams.fy[0]) == pytest.approx(0.5 * 30 / math.tan(0.25))
    assert cams.fx[1].item() == 33.0 and cams.cx.tolist() == [19.0, 19.0]
    assert cams.cy.tolist() == [15.0, 14.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "invalid JSON"),
     ({"w": 4, "h": 4, "fl_x": 4}, "missing 'frames'"),
     ({"w": 4, "h": 4, "fl_x": 4, "frames": []}, "no frames"),
     ({"w": 4, "h": 4, "fl_x": 4, "frames": [{"file_path": "a.png"}]}, "transform_matrix"),
     ({"w": 4, "h": 4, "frames": [{"file_path": "a.png", "transform_matrix": "I"}]}, "4x4"),
     ({"w": 4, "h": 4, "frames": [{"file_path": "a.png", "transform_matrix": "I4"}]}, "fl_x"),
     ('{"w": 4, "h": 4, "fl_x": NaN, "frames": [{"file_path": "a.png", "transform_matrix": I4}]}',
      "finite"),
     ({"w": 4, "h": 4, "fl_x": "4", "frames": [{"file_path": "a.png", "transform_matrix": "I4"}]},
      "number"),
     ({"w": 4, "h": 4, "fl_x": 4, "frames": [{"file_path": "zz", "transform_matrix": "I4"}]},
      "image 'zz' not found"),
     ({"w": 4, "h": 4, "fl_x": 4, "frames": [
         {"file_path": "a.png", "transform_matrix": "I4"},
         {"file_path": "a.png", "transform_matrix": "I4", "w": 5}]}, "all frames"),
     ({"w": 4, "h": 4, "fl_x": 4, "k1": 0.1, "frames": [
         {"file_path": "a.png", "transform_matrix": "I4"}]}, "undistort"),
     ({"w": 4, "h": 4, "fl_x": 4, "frames": [
         {"file_path": "a.png", "transform_matrix": "2I4"}]}, "orthonormal"),
     ({"fl_x": 4, "frames": [{"file_path": "a.png", "transform_matrix": "I4"}]}, "'w' and 'h'")],
)  # fmt: skip
def test_nerf_bad_files_name_the_file(tmp_path: Path, content, message):
    touch_images(tmp_path, ["a.png"])  # empty file: PIL cannot read its size
    text = content if isinstance(content, str) else json.dumps(content)
    text = text.replace('"2I4"', json.dumps(np.diag([2.0, 2.0, 2.0, 1.0]).tolist()))
    text = text.replace('"I4"', json.dumps(np.eye(4).tolist()))
    text = text.replace("I4", json.dumps(np.eye(4).tolist()))
    path = write_json(tmp_path / "bad_transforms.json", text)
    with pytest.raises(CameraError, match=message) as info:
        read_nerf_transforms(path)
    assert "bad_transforms.json" in str(info.value)


def test_nerf_writer_refuses_bad_input_and_writes_nothing(tmp_path: Path):
    cams = random_cameras(2, seed=11)
    path = tmp_path / "out" / "transforms.json"
    with pytest.raises(CameraError, match="1 image paths for 2 cameras"):
        write_nerf_transforms(path, cams, ["a.png"])
    with pytest.raises(CameraError, match="clash"):
        write_nerf_transforms(path, cams, ["a.png", "b.png"], extra={"fl_x": 1.0})
    cams.fx = torch.tensor([50.0, float("nan")], dtype=F64)  # broken after construction
    with pytest.raises(CameraError, match="transforms.json: camera values must be finite"):
        write_nerf_transforms(path, cams, ["a.png", "b.png"])
    assert not path.parent.exists()


# ---------------------------------------------------------------------------- COLMAP
@pytest.mark.parametrize("binary", [False, True])
def test_colmap_round_trip(tmp_path: Path, binary: bool):
    cams = random_cameras(4, seed=12)
    names = ["d.png", "b.png", "c/a.png", "a.png"]
    write_colmap(tmp_path, cams, names, binary=binary)
    ext = ".bin" if binary else ".txt"
    assert {p.name for p in tmp_path.iterdir()} == {
        f"{s}{ext}" for s in ("cameras", "images", "points3D")
    }
    model = read_colmap(tmp_path)
    assert {img["name"] for img in model.images.values()} == set(names)
    back, back_names = colmap_to_cameras(model, dtype=F64)
    assert back_names == sorted(names)
    order = [names.index(n) for n in back_names]
    assert_same_cameras(cams[order], back, atol=1e-9)
    subset, subset_names = colmap_to_cameras(model, ["c/a.png", "d.png"], dtype=F64)
    assert subset_names == ["c/a.png", "d.png"]
    assert_same_cameras(cams[[2, 0]], subset, atol=1e-9)


CAMERAS_TXT = """# Camera list
1 SIMPLE_PINHOLE 40 30 35.0 20.5 14.5
2 SIMPLE_RADIAL 40 30 36.0 20.0 15.0 0
3 OPENCV 40 30 37.0 38.0 19.0 16.0 0 0 0 0
"""
IMAGES_TXT = """# Image list
# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME
1 0.7071067811865476 0 0 0.7071067811865476 1 2 3 1 rot.png
10.0 20.0 -1
2 1 0 0 0 0 0 5 2 ident.png

3 2 0 0 0 0 0 5 3 scaled_q.png
1.0 2.0 3
"""


def test_colmap_text_hand_written_model_in_sparse_0(tmp_path: Path):
    model_dir = tmp_path / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (model_dir / "cameras.txt").write_text(CAMERAS_TXT)
    (model_dir / "images.txt").write_text(IMAGES_TXT)
    (model_dir / "points3D.bin").write_bytes(b"garbage")  # ignored
    cams, names = colmap_to_cameras(read_colmap(tmp_path), dtype=F64)
    assert names == ["ident.png", "rot.png", "scaled_q.png"]
    # COLMAP's principal points are already pixel-centre-at-0.5: no shift.
    assert cams.cx.tolist() == [20.0, 20.5, 19.0] and cams.cy.tolist() == [15.0, 14.5, 16.0]
    assert cams.fx.tolist() == [36.0, 35.0, 37.0] and cams.fy.tolist() == [36.0, 35.0, 38.0]
    rot_z90 = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(cams.world_to_camera[1, :3, :3], rot_z90)
    torch.testing.assert_close(cams.world_to_camera[1, :3, 3], torch.tensor([1.0, 2, 3], dtype=F64))
    torch.testing.assert_close(cams.world_to_camera[2, :3, :3], torch.eye(3, dtype=F64))


@pytest.mark.parametrize(
    ("camera_line", "message"),
    [("1 SIMPLE_RADIAL 40 30 35 20 15 0.01", "undistort"),
     ("1 OPENCV 40 30 35 35 20 15 0 0 0.001 0", "undistort"),
     ("1 OPENCV_FISHEYE 40 30 35 35 20 15 0 0 0 0", "unsupported camera model"),
     ("1 PINHOLE 40 30 35 35 20", "needs 4 params"),
     ("1 PINHOLE 40 30 35 nan 20 15", "non-finite"),
     ("1 PINHOLE 40 30 -35 35 20 15", "positive"),
     ("1 WEIRD 40 30 35", "unknown camera model")],
)  # fmt: skip
def test_colmap_bad_cameras_name_the_file(tmp_path: Path, camera_line: str, message: str):
    (tmp_path / "cameras.txt").write_text(camera_line + "\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n")
    with pytest.raises(CameraError, match=message) as info:
        read_colmap(tmp_path)
    assert "cameras.txt" in str(info.value)


def test_colmap_size_mismatch_missing_camera_and_missing_model(tmp_path: Path):
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 40 30 1 1 1 1\n2 PINHOLE 41 30 1 1 1 1\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n2 1 0 0 0 0 0 0 2 b.png\n")
    model = read_colmap(tmp_path)
    with pytest.raises(CameraError, match="41x30"):
        colmap_to_cameras(model)
    assert len(colmap_to_cameras(model, ["a.png"])[0]) == 1
    with pytest.raises(CameraError, match="not in the COLMAP model"):
        colmap_to_cameras(model, ["zz.png"])
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 7 a.png\n")
    with pytest.raises(CameraError, match="images.txt: image 1 .* camera 7"):
        read_colmap(tmp_path)
    with pytest.raises(CameraError, match="empty_dir: no COLMAP model"):
        read_colmap(tmp_path / "empty_dir")
    bad_model = ColmapModel({1: {"model": "PINHOLE", "width": 4, "height": 4,
                                 "params": [1, 1, 2, 2]}},
                            {1: {"name": "x", "camera_id": 2, "qvec": [1, 0, 0, 0],
                                 "tvec": [0, 0, 0]}})  # fmt: skip
    with pytest.raises(CameraError, match="missing camera 2"):
        colmap_to_cameras(bad_model)


def test_colmap_truncated_or_garbage_binary(tmp_path: Path):
    write_colmap(tmp_path / "good", random_cameras(2, seed=13), ["a.png", "b.png"], binary=True)
    good = {name: (tmp_path / "good" / name).read_bytes() for name in ("cameras.bin", "images.bin")}
    huge_count = struct.pack("<Q", 2**62) + b"\0" * 40
    cases = [("cameras.bin", good["cameras.bin"][:-5]), ("cameras.bin", huge_count),
             ("cameras.bin", good["cameras.bin"] + b"\0"), ("images.bin", good["images.bin"][:30]),
             ("images.bin", good["images.bin"][:-3]), ("images.bin", huge_count),
             ("images.bin", good["images.bin"][:-9] + b"x" * 9),  # unterminated name
             ("cameras.bin", b"\x01")]  # fmt: skip
    for i, (broken_name, data) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        for name, content in good.items():
            (folder / name).write_bytes(data if name == broken_name else content)
        with pytest.raises(CameraError) as info:
            read_colmap(folder)
        assert broken_name in str(info.value), (i, str(info.value))


def test_colmap_writer_refuses_bad_input_and_writes_nothing(tmp_path: Path):
    cams = random_cameras(2, seed=14)
    folder = tmp_path / "model"
    for names, message in [
        (["a.png"], "1 names for 2"),
        (["a b.png", "c.png"], "whitespace"),
        (["a.png", "a.png"], "unique"),
        (["", "b"], "non-empty"),
    ]:
        with pytest.raises(CameraError, match=message):
            write_colmap(folder, cams, names, binary=True)
    cams.world_to_camera = cams.world_to_camera * 2.0  # broken after construction
    with pytest.raises(CameraError, match="model: world_to_camera of camera 0"):
        write_colmap(folder, cams, ["a.png", "b.png"], binary=False)
    assert not folder.exists()
    write_colmap(folder, random_cameras(1), ["a.png"], binary=False)
    with pytest.raises(CameraError, match="remove them"):
        write_colmap(folder, random_cameras(1), ["a.png"], binary=True)
    assert not (folder / "cameras.bin").exists()
