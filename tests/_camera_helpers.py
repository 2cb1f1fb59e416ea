"""Helpers shared by the camera tests (test_cameras.py, test_camera_formats.py)."""

from __future__ import annotations

import torch

from engine.cameras import Cameras
from engine.rotations import quaternion_to_matrix

F64 = torch.float64


def random_cameras(n: int, seed: int = 0, width: int = 64, height: int = 48) -> Cameras:
    """n float64 cameras with random poses and slightly varied, off-centre intrinsics."""
    g = torch.Generator().manual_seed(seed)
    w2c = torch.eye(4, dtype=F64).repeat(n, 1, 1)
    w2c[:, :3, :3] = quaternion_to_matrix(torch.randn(n, 4, generator=g, dtype=F64))
    w2c[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=F64) * 3
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)  # noqa: E731
    return Cameras(
        w2c, u(0.8, 1.2) * width, u(0.8, 1.2) * width, u(0.4, 0.6) * width,
        u(0.4, 0.6) * height, width, height,
    )  # fmt: skip


def assert_same_cameras(a: Cameras, b: Cameras, atol: float = 1e-5) -> None:
    assert (a.width, a.height) == (b.width, b.height)
    assert len(a) == len(b)
    b = b.to(dtype=a.dtype)
    torch.testing.assert_close(a.world_to_camera, b.world_to_camera, atol=atol, rtol=0)
    for name in ("fx", "fy", "cx", "cy"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=0)
