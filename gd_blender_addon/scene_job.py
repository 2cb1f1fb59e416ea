"""Reconstruct Scene's plain-data parts: the depth range of the scene in front of the
cameras, the check of the cameras against the scene model, and the worker-thread job
(plain data in, plain data out; no bpy here, jobs.py explains why).

The scene model (`engine.models.gd_scene.GDSceneModel`) reads 2 to its `max_views` context
views of the scene as it is, background included, and returns Gaussians in the cameras'
own world: no normalisation into a cube, so the result lands as it comes. Its plane sweep
needs the depth range the scene lies in; `depth_range` takes it from the bounding boxes
of the visible meshes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import jobs
from .errors import UserError
from .refine_job import Reconstructed, scaled

SCENE_MIN_VIEWS, SCENE_MAX_VIEWS = 2, 4
"""Cameras Reconstruct Scene takes (the scene presets' `max_views` is 4; a model with
fewer says so itself)."""
MIN_NEAR = 0.05
"""Closest near plane (scene units) `depth_range` gives."""
NEAR_MARGIN, FAR_MARGIN = 0.9, 1.1
"""The depth range is the corners' depths widened by these factors."""


def depth_range(corners: Any, camera_matrices: Sequence[Any]) -> tuple[float, float]:
    """(near, far) of world points `corners` (N, 3) seen from cameras with the Blender
    `matrix_world`s `camera_matrices` (each looks down its -Z): the planar depths of the
    points in front of any camera, near = max(MIN_NEAR, 0.9 x the least), far = 1.1 x the
    greatest. UserError when no point is in front of a camera."""
    points = np.asarray(corners, dtype=np.float64).reshape(-1, 3)
    depths = []
    for matrix in camera_matrices:
        m = np.asarray(matrix, dtype=np.float64)
        forward = -m[:3, 2] / max(float(np.linalg.norm(m[:3, 2])), 1e-12)
        depths.append((points - m[:3, 3]) @ forward)
    d = np.concatenate(depths) if depths else np.zeros(0)
    d = d[np.isfinite(d) & (d > 0)]
    if d.size == 0:
        raise UserError(
            "Nothing to reconstruct in front of the selected cameras: no visible mesh lies "
            "in front of any of them (hidden from renders, or behind the cameras)"
        )
    near = max(MIN_NEAR, NEAR_MARGIN * float(d.min()))
    far = FAR_MARGIN * float(d.max())
    if not far > near:
        raise UserError(
            f"The scene in front of the cameras is closer than {MIN_NEAR:g} units (farthest "
            f"point at {float(d.max()):.3g}): move the cameras back"
        )
    return near, far


def check_count(count: int) -> None:
    """UserError unless `count` cameras is what Reconstruct Scene takes."""
    if not SCENE_MIN_VIEWS <= count <= SCENE_MAX_VIEWS:
        raise UserError(
            f"Reconstruct Scene takes {SCENE_MIN_VIEWS} to {SCENE_MAX_VIEWS} cameras that see "
            f"the same part of the scene; {count} selected"
        )


def _scene_model_error(err: ValueError) -> UserError:
    return UserError(f"Cannot reconstruct the scene: {err}")


def check_views(model: Any, records: list[dict[str, Any]], near: float, far: float) -> None:
    """Main thread, before any render: the model's own checks of the cameras (count, copies
    of one pose, the depth range, views that no other view overlaps) on blank images, so a
    bad set of cameras is refused without rendering them. UserError with its message."""
    import torch

    from engine.camera_formats import from_blender
    from engine.cameras import Cameras
    from engine.models.gd_scene import GDSceneModel

    if not isinstance(model, GDSceneModel):
        raise UserError(
            "The model loaded for Reconstruct Scene is not a scene model: choose a scene "
            "model's weights (Scene Weights File in the add-on's preferences)"
        )
    cameras = Cameras.cat([from_blender(**record) for record in records])
    blank = torch.zeros(len(cameras), cameras.height, cameras.width, 3)
    try:
        model.prepare_views(blank, cameras, near, far)
    except ValueError as err:
        raise _scene_model_error(err) from None


def reconstruct_scene_work(
    model: Any,
    views: list[Any],
    records: list[dict[str, Any]],
    near: float,
    far: float,
    budget: int | None,
    progress: jobs.Progress,
    cancel: threading.Event,
) -> Reconstructed:
    """Worker: the scene model on the rendered views (RGBA, opaque: the background is part
    of the scene) and their world camera records. The model's ValueErrors (views that do
    not overlap...) become UserErrors; its `Cancelled` reports as a cancel (jobs.py)."""
    from .photos import prepare_views
    from .refine_job import view_size

    progress(0.3, "preparing views")
    side = min(min(v.shape[0], v.shape[1]) for v in views)
    images, cameras = prepare_views(views, records, min(side, view_size(model)))
    try:
        rec = model.reconstruct(
            images[..., :3], cameras, near=float(near), far=float(far), densify=True,
            budget=budget or None, progress=scaled(progress, 0.35, 1.0), cancel=cancel,
        )  # fmt: skip
    except ValueError as err:
        raise _scene_model_error(err) from None
    if len(rec.gaussians) == 0:
        raise UserError("The scene model produced no Gaussians from these views")
    return Reconstructed(rec.gaussians, rec.level, rec.parent, len(cameras), len(cameras))
