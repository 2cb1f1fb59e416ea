"""Tests for engine.cameras: the Cameras container (converters: test_camera_formats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.cameras import CameraError, Cameras

from ._camera_helpers import F64, assert_same_cameras, random_cameras


def test_project_matches_hand_computed_pinhole():
    cams = random_cameras(3, seed=1)
    points = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    pixels, depth = cams.project(points)
    assert pixels.shape == (3, 5, 2) and depth.shape == (3, 5)
    for c in range(3):
        m = cams.world_to_camera[c].numpy()
        fx, fy, cx, cy = (float(getattr(cams, k)[c]) for k in ("fx", "fy", "cx", "cy"))
        for n in range(5):
            x, y, z = m[:3, :3] @ points[n].numpy() + m[:3, 3]
            assert depth[c, n].item() == pytest.approx(z, abs=1e-12)
            assert pixels[c, n, 0].item() == pytest.approx(fx * x / z + cx, abs=1e-9)
            assert pixels[c, n, 1].item() == pytest.approx(fy * y / z + cy, abs=1e-9)


def test_look_at_sees_target_at_image_centre_with_up_up():
    # The last two look straight down and straight up: the fallback up vector kicks in.
    eyes = torch.tensor([[3.0, -4.0, 1.0], [0.0, 5.0, 0.0], [0.1, 0.2, 6.0], [0.1, 0.2, -2.0]])
    target = torch.tensor([0.1, 0.2, 0.3])
    cams = Cameras.look_at(eyes, target, fov_x_deg=50.0, width=40, height=30)
    pixels, depth = cams.project(target[None])
    torch.testing.assert_close(
        pixels[:, 0], torch.tensor([[20.0, 15.0]]).expand(4, 2), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(depth[:, 0], (eyes - target).norm(dim=-1))
    assert float(cams.fx[0]) == pytest.approx(20.0 / math.tan(math.radians(25.0)))
    torch.testing.assert_close(cams.centers, eyes, atol=1e-5, rtol=0)
    # A point above the target appears above the centre (smaller v) for the side views.
    above, _ = cams[:2].project((target + torch.tensor([0.0, 0.0, 0.5]))[None])
    assert bool((above[:, 0, 1] < 15.0).all())
    with pytest.raises(CameraError, match="coincides"):
        Cameras.look_at(target[None], target)
    # Y-up world looking straight down -Y: still a valid camera seeing its target.
    y_up = Cameras.look_at(torch.tensor([0.0, 3.0, 0.0]), torch.zeros(3), up=(0.0, 1.0, 0.0))
    pixels, depth = y_up.project(torch.zeros(1, 3))
    torch.testing.assert_close(pixels[0, 0], torch.tensor([128.0, 128.0]))
    assert depth.item() == pytest.approx(3.0)


def test_camera_to_world_inverts_world_to_camera_and_intrinsics_matrix():
    cams = random_cameras(4, seed=3)
    eye = torch.eye(4, dtype=F64).expand(4, 4, 4)
    torch.testing.assert_close(cams.camera_to_world @ cams.world_to_camera, eye)
    torch.testing.assert_close(cams.camera_to_world[:, :3, 3], cams.centers)
    k = cams.intrinsics
    assert k.shape == (4, 3, 3)
    torch.testing.assert_close(k[:, 0, 0], cams.fx)
    torch.testing.assert_close(k[:, 1, 2], cams.cy)
    assert bool((k[:, 2] == torch.tensor([0.0, 0.0, 1.0], dtype=F64)).all())


def test_from_intrinsics_matrix_shifts_opencv_origin_by_half_pixel():
    cams = random_cameras(2, seed=4)
    same = Cameras.from_intrinsics_matrix(cams.world_to_camera, cams.intrinsics, 64, 48)
    assert_same_cameras(cams, same, atol=0)
    shifted = Cameras.from_intrinsics_matrix(
        cams.world_to_camera, cams.intrinsics, 64, 48, opencv_pixel_origin=True
    )
    torch.testing.assert_close(shifted.cx, cams.cx + 0.5)
    torch.testing.assert_close(shifted.cy, cams.cy + 0.5)
    torch.testing.assert_close(shifted.fx, cams.fx)
    skewed = cams.intrinsics[0].clone()
    skewed[0, 1] = 3.0
    with pytest.raises(CameraError, match="skew"):
        Cameras.from_intrinsics_matrix(torch.eye(4), skewed, 64, 48)


def test_indexing_iteration_and_conversion():
    cams = random_cameras(5, seed=5)
    assert len(cams[2]) == 1 and len(cams[-1]) == 1
    torch.testing.assert_close(cams[-1].fx, cams.fx[4:])
    assert len(cams[1:4]) == 3
    torch.testing.assert_close(cams[torch.tensor([4, 0])].fx, cams.fx[[4, 0]])
    torch.testing.assert_close(cams[[4, 0]].fx, cams.fx[[4, 0]])
    mask = torch.tensor([True, False, True, False, False])
    torch.testing.assert_close(cams[mask].cx, cams.cx[mask])
    torch.testing.assert_close(cams[[True, False, True, False, False]].cx, cams.cx[mask])
    torch.testing.assert_close(cams[np.int64(3)].fx, cams.fx[3:4])
    assert [float(c.fx[0]) for c in cams] == cams.fx.tolist()
    with pytest.raises(IndexError):
        cams[5]
    with pytest.raises(CameraError, match="mask"):
        cams[torch.tensor([True, False])]
    half = cams.to(dtype=torch.float32)
    assert half.dtype == torch.float32 and half.fx.dtype == torch.float32
    assert half.device == torch.device("cpu")
    with pytest.raises(CameraError, match="floating"):
        cams.to(dtype=torch.int32)


def test_scaled_cameras_project_to_scaled_pixels():
    cams = random_cameras(2, seed=6, width=64, height=48)
    small = cams.scaled(16, 24)
    points = torch.randn(6, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    big_px, big_z = cams.project(points)
    small_px, small_z = small.project(points)
    torch.testing.assert_close(small_px, big_px * torch.tensor([0.25, 0.5], dtype=F64))
    torch.testing.assert_close(small_z, big_z)
    assert (small.width, small.height) == (16, 24)


def test_cat_requires_matching_sizes():
    a, b = random_cameras(2, seed=8), random_cameras(3, seed=9)
    both = Cameras.cat([a, b.to(dtype=torch.float32)])
    assert len(both) == 5 and both.dtype == F64
    torch.testing.assert_close(both.fx[2:], b.fx)
    with pytest.raises(CameraError, match="64x48 and 32x48"):
        Cameras.cat([a, random_cameras(1, width=32)])
    with pytest.raises(CameraError, match="empty"):
        Cameras.cat([])


def test_single_matrix_and_scalar_intrinsics_are_broadcast():
    cams = Cameras(torch.eye(4), 50.0, 50.0, 32.0, 24.0, 64, 48)
    assert len(cams) == 1 and cams.fx.shape == (1,) and cams.fx.dtype == torch.float32


def _bad_camera_args(case: str) -> dict:
    args = dict(world_to_camera=torch.eye(4).repeat(2, 1, 1), fx=torch.full((2,), 50.0),
                fy=torch.full((2,), 50.0), cx=torch.full((2,), 32.0), cy=torch.full((2,), 24.0),
                width=64, height=48)  # fmt: skip
    if case == "shape":
        args["world_to_camera"] = torch.eye(3).repeat(2, 1, 1)
    elif case == "fy_shape":
        args["fy"] = torch.full((3,), 50.0)
    elif case == "nan":
        args["cx"] = torch.tensor([32.0, float("nan")])
    elif case == "focal":
        args["fx"] = torch.tensor([50.0, 0.0])
    elif case == "width":
        args["width"] = 0
    elif case == "float_height":
        args["height"] = 48.0
    elif case in ("scale", "mirror", "last_row"):
        m = args["world_to_camera"].clone()
        if case == "scale":
            m[1, :3, :3] *= 2.0
        elif case == "mirror":
            m[1, 0, 0] = -1.0
        else:
            m[1, 3, 0] = 0.5
        args["world_to_camera"] = m
    return args


@pytest.mark.parametrize(
    ("case", "message"),
    [("shape", "shape"), ("fy_shape", "fy must have shape"), ("nan", "finite"),
     ("focal", "positive"), ("width", "width"), ("float_height", "integer"),
     ("scale", "camera 1: rotation"), ("mirror", "determinant"), ("last_row", "last row")],
)  # fmt: skip
def test_invalid_cameras_raise(case: str, message: str):
    with pytest.raises(CameraError, match=message):
        Cameras(**_bad_camera_args(case))
