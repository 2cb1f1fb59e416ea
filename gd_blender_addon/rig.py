"""The temporary camera rig of Reconstruct Object (main thread only).

N cameras look at the selection's bounding sphere from directions spread evenly (a
Fibonacci spiral, uniform by area) over the upper hemisphere (elevations 5° to 75°), at
the distance where that sphere spans `RIG_FILL` of the frame, with a `RIG_FOV_DEG` field of
view (`engine.data.camera_poses` places the training cameras the same way).

The rig is a list of poses, never a set of objects left in the scene: each view's camera
is created right before its render and removed right after it, inside one `finally`
(`rig_camera`), so between two renders, after an error, after Esc, and if Blender drops
the job (another file opened), the scene holds no rig data at all. While a view renders,
every other object that would render (meshes, curves, other splats...) is hidden from the
render (`isolated`), lights stay, and the render engine is Cycles (`using_cycles`); all of
it is restored in the same `finally`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from .camera_capture import camera_record, render_view
from .errors import UserError

RIG_FOV_DEG = 40.0
"""Horizontal field of view of every rig camera (the generated data's range is 30-50°)."""
RIG_FILL = 0.75
"""Fraction of the frame width the selection's bounding sphere spans (data: 0.5-0.9)."""
RIG_ELEVATION_RANGE_DEG = (5.0, 75.0)
"""The band of view directions: the upper hemisphere (a prop stands on something), the
range bench/refine.py's hemisphere rigs use, so its numbers predict this workflow's."""
RIG_MIN_VIEWS, RIG_MAX_VIEWS = 4, 64
CAMERA_NAME = "GD Rig Camera"
# Object types that never put pixels in a render of the prop: kept as they are.
_LEAVE_VISIBLE = {"LIGHT", "CAMERA", "EMPTY", "LIGHT_PROBE", "SPEAKER", "ARMATURE", "LATTICE"}


@dataclass(frozen=True)
class RigPlan:
    """Where the rig's cameras go.

    Attributes:
        poses: N camera `matrix_world`s (4x4 nested lists; the camera looks down its -Z).
        fov_deg: horizontal field of view of every camera.
        centre, radius: the bounding sphere of the selection they frame (world units).
    """

    poses: tuple[tuple[tuple[float, ...], ...], ...]
    fov_deg: float
    centre: tuple[float, float, float]
    radius: float

    def __len__(self) -> int:
        return len(self.poses)


def world_bounds(objects: Iterable[bpy.types.Object]) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi) world corners of the objects' bounding boxes (evaluated: modifiers count),
    or None when there are no corners or the box is flat on every axis."""
    corners = [
        np.array(obj.matrix_world, dtype=np.float64) @ np.array([*corner, 1.0])
        for obj in objects
        for corner in obj.bound_box
    ]
    if not corners:
        return None
    points = np.array(corners)[:, :3]
    lo, hi = points.min(axis=0), points.max(axis=0)
    if not np.isfinite(points).all() or float(np.linalg.norm(hi - lo)) <= 1e-9:
        return None
    return lo, hi


def rig_directions(count: int) -> np.ndarray:
    """(count, 2) azimuth, elevation in degrees: a Fibonacci spiral over the elevation band,
    uniform by area (sin(elevation) evenly spaced), golden-angle steps in azimuth."""
    lo, hi = (math.sin(math.radians(e)) for e in RIG_ELEVATION_RANGE_DEG)
    i = np.arange(count, dtype=np.float64)
    heights = hi - (i + 0.5) * (hi - lo) / count  # top down: the first view from above
    elevations = np.degrees(np.arcsin(heights))
    azimuths = np.degrees(i * math.pi * (3.0 - math.sqrt(5.0))) % 360.0
    return np.stack([azimuths, elevations], axis=1)


def plan_rig(lo: Sequence[float], hi: Sequence[float], count: int,
             fov_deg: float = RIG_FOV_DEG, fill: float = RIG_FILL) -> RigPlan:  # fmt: skip
    """The poses of `count` cameras framing the box [lo, hi]."""
    from engine.data.camera_poses import distance_for_fill, look_at_origin

    if not RIG_MIN_VIEWS <= count <= RIG_MAX_VIEWS:
        raise UserError(f"the rig takes {RIG_MIN_VIEWS} to {RIG_MAX_VIEWS} views, got {count}")
    lo_a, hi_a = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    centre = (lo_a + hi_a) / 2
    radius = float(np.linalg.norm(hi_a - lo_a)) / 2
    distance = distance_for_fill(radius, fov_deg, fill)
    poses = []
    for azimuth, elevation in rig_directions(count):
        c2w = look_at_origin(float(azimuth), float(elevation), distance)
        c2w[:3, 3] += centre
        poses.append(tuple(tuple(float(v) for v in row) for row in c2w))
    return RigPlan(tuple(poses), float(fov_deg), tuple(float(c) for c in centre), radius)


def check_selection(objects: Sequence[bpy.types.Object]) -> list[bpy.types.Object]:
    """The meshes to reconstruct, in name order; raises UserError naming what is wrong."""
    from .pointcloud import is_gaussian_object

    if not objects:
        raise UserError("Nothing selected: select the mesh (or meshes) to reconstruct")
    for obj in objects:
        if obj.type != "MESH":
            raise UserError(
                f"'{obj.name}' is a {obj.type.lower()}, not a mesh: Reconstruct Object renders "
                "the selected meshes; select only meshes"
            )
        if is_gaussian_object(obj):
            raise UserError(f"'{obj.name}' is a splat object; select the mesh to reconstruct")
    meshes = sorted(objects, key=lambda o: o.name)
    if world_bounds(meshes) is None:
        raise UserError("The selected meshes have no geometry to frame")
    return meshes


@contextlib.contextmanager
def rig_camera(scene: bpy.types.Scene, pose: Any, fov_deg: float) -> Iterator[bpy.types.Object]:
    """A camera at `pose`, linked to the scene only inside the `with`; removed (object and
    camera data) on the way out, whatever happened."""
    import mathutils

    data = bpy.data.cameras.new(CAMERA_NAME)
    obj = None
    try:
        data.sensor_fit = "HORIZONTAL"
        data.lens_unit = "FOV"
        data.angle = math.radians(fov_deg)
        obj = bpy.data.objects.new(CAMERA_NAME, data)
        obj.matrix_world = mathutils.Matrix([list(row) for row in pose])
        scene.collection.objects.link(obj)
        yield obj
    finally:
        if obj is not None:
            bpy.data.objects.remove(obj, do_unlink=True)
        bpy.data.cameras.remove(data)


def _may_render(obj: bpy.types.Object) -> bool:
    """Whether `obj` can put pixels in a render: geometry, or an empty that instances a
    collection (lights only light; cameras, plain empties and the like show nothing)."""
    if obj.type == "EMPTY":
        return obj.instance_type == "COLLECTION" and obj.instance_collection is not None
    return obj.type not in _LEAVE_VISIBLE


@contextlib.contextmanager
def isolated(scene: bpy.types.Scene, keep: Sequence[bpy.types.Object]) -> Iterator[None]:
    """Hide every object that could appear in a render from it, except `keep` (and lights,
    which light the prop); restore each one's `hide_render` on the way out."""
    kept = {obj.name for obj in keep}
    saved = [(obj, obj.hide_render) for obj in scene.objects
             if obj.name not in kept and _may_render(obj)]  # fmt: skip
    try:
        for obj, _ in saved:
            obj.hide_render = True
        yield
    finally:
        for obj, value in saved:
            if obj.hide_render != value:
                obj.hide_render = value


@contextlib.contextmanager
def using_cycles(scene: bpy.types.Scene) -> Iterator[None]:
    """Render with Cycles (the views are the model's inputs: what it was trained on, and
    EEVEE needs a GPU context that headless Blender lacks); restore the engine after."""
    engine = scene.render.engine
    try:
        if engine != "CYCLES":
            scene.render.engine = "CYCLES"
        yield
    finally:
        if scene.render.engine != engine:
            scene.render.engine = engine


def capture_view(
    scene: bpy.types.Scene,
    plan: RigPlan,
    index: int,
    size: int,
    path: Path,
    keep: Sequence[bpy.types.Object],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render rig view `index` at size x size into `path` (one render: call it once per
    timer tick). Returns (RGBA pixels, world camera record). The scene is as it was before
    the call when it returns or raises."""
    with (
        using_cycles(scene),
        isolated(scene, keep),
        rig_camera(scene, plan.poses[index], plan.fov_deg) as camera,
    ):
        pixels = render_view(scene, camera, size, path)
        record = camera_record(camera, size, size)
    return pixels, record


def check_coverage(views: Sequence[np.ndarray], names: Sequence[str]) -> None:
    """Raise UserError when no view shows anything (all-transparent renders)."""
    if any(float(v[..., 3].max()) > 0.05 for v in views):
        return
    hidden = [name for name in names
              if (obj := bpy.data.objects.get(name)) is not None and obj.hide_render]  # fmt: skip
    why = (f"{', '.join(repr(n) for n in hidden)} is hidden from renders (Object > Visibility "
           "> Renders)") if hidden else (
        "the selection is invisible to the render (hidden from renders, a disabled "
        "collection, or a fully transparent material)")  # fmt: skip
    raise UserError(f"The rig's {len(views)} renders are empty: {why}")


@dataclass
class Capture:
    """The rig's renders so far (main thread), one `render` call per timer tick.

    Attributes:
        keep: names of the meshes being reconstructed (looked up at each render, so a mesh
            deleted meanwhile gives a clear error rather than a dangling reference).
        views, records, paths: RGBA pixels, world camera records and PNG paths per view.
    """

    keep: list[str]
    views: list[np.ndarray] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def render(self, scene: bpy.types.Scene, plan: RigPlan, index: int, path: Path,
               size: int) -> None:  # fmt: skip
        objects = []
        for name in self.keep:
            obj = bpy.data.objects.get(name)
            if obj is None:
                raise UserError(f"'{name}' was deleted while the rig was rendering it")
            objects.append(obj)
        pixels, record = capture_view(scene, plan, index, size, path, objects)
        self.views.append(pixels)
        self.records.append(record)
        self.paths.append(path)

    def check(self) -> None:
        check_coverage(self.views, self.keep)
