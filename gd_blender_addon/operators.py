"""Operators: Reconstruct, Reconstruct Object, Reconstruct Scene, Densify Selected, Refine,
import/export, install PyTorch, download weights. Each one polls, gathers its settings and
queues stages; the rest lives in small modules: modal.py (the job operators' machinery:
modal timer or blocking loop, progress, Esc, the model stage), jobs.py (the worker thread),
rig.py (the camera rig), refine_job.py / densify_job.py / setup_jobs.py (worker jobs),
results.py (landing a result), render_setup.py (Cycles settings for splats), scene_job.py
(Reconstruct Scene's depth range, camera check and worker job).

The scene jobs (modal.SceneJobOperator) are UNDO but not REGISTER: Adjust Last Operation
(the redo panel, F9) and Repeat Last (Shift+R) pick only REGISTER operators, and either would
re-run a whole job synchronously. UNDO still has Blender push one undo step when the result
has landed.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import dependencies, jobs
from .camera_capture import CaptureError, camera_record, check_camera, render_view_hiding, to_local
from .densify_job import densify_with_views, densify_work, lineage
from .errors import UserError
from .modal import JobOperator, SceneJobOperator, clear_models, engine_blocker
from .preferences import MISSING_TORCH, get_prefs
from .refine_job import RefineSettings, reconstruct_report
from .results import land_reconstruction, stored_views
from .setup_jobs import fetch_weights, install_work


# ---------------------------------------------------------------------------- helpers
def settings(context: bpy.types.Context) -> Any:
    return context.scene.gd_splat


def mask_report_level(masks: Any) -> set[str]:
    """How to report a job that cut photos out with `masks` (`engine.masks.Masks` or None):
    a mask that probably lost part of the prop is worth the artist's look (a warning)."""
    return {"WARNING"} if masks is not None and masks.warnings else {"INFO"}


def selected_cameras(context: bpy.types.Context) -> list[bpy.types.Object]:
    """Selected camera objects in name order (a stable view order)."""
    return sorted((o for o in context.selected_objects if o.type == "CAMERA"), key=lambda o: o.name)


def is_splat(obj: bpy.types.Object | None) -> bool:
    # pointcloud.py needs torch; without it nothing can be a splat the add-on can use.
    if obj is None or not dependencies.torch_available():
        return False
    from .pointcloud import is_gaussian_object

    return bool(is_gaussian_object(obj))


def reconstruct_blocker(context: bpy.types.Context) -> str | None:
    """Why Reconstruct cannot run now, or None (cheap: no model loading, no pixels)."""
    reason = engine_blocker()
    if reason:
        return reason
    cameras = selected_cameras(context)
    if not cameras:
        return "Select at least one camera: Reconstruct uses each selected camera as a view"
    photos = settings(context).source == "PHOTOS"
    for camera in cameras:
        try:
            check_camera(camera)
        except CaptureError as err:
            return str(err)
        if photos:
            from .photos import background_image

            if background_image(camera) is None:
                return f"Camera '{camera.name}' has no background image (photo)"
    return None


def densify_blocker(context: bpy.types.Context) -> str | None:
    reason = engine_blocker()
    if reason:
        return reason
    if not is_splat(context.active_object):
        return "Make a Gaussian splat object active (made by Reconstruct or imported)"
    obj = context.active_object
    if settings(context).region is None:
        from .pointcloud import has_selected_points

        if not has_selected_points(obj):
            return NOTHING_SELECTED
    mode = settings(context).densify_views
    has_views = len(obj.gd_splat.views) > 0
    if mode == "STORED" and not has_views:
        return f"'{obj.name}' has no stored views; select cameras and choose Views: Cameras"
    if (mode == "CAMERAS" or not has_views) and not selected_cameras(context):
        return "No stored views on the object: select the cameras to densify against"
    return None


def _blocker_unless(check: Callable[[], object], *errors: type[Exception]) -> str | None:
    """`engine_blocker()`, else the message of the error in `errors` that `check` raises,
    else None: the blockers whose own check is one call that raises what is wrong."""
    reason = engine_blocker()
    if reason:
        return reason
    try:
        check()
    except errors as err:
        return str(err)
    return None


def reconstruct_object_blocker(context: bpy.types.Context) -> str | None:
    """Why Reconstruct Object cannot run now, or None."""
    from .rig import check_selection

    return _blocker_unless(lambda: check_selection(list(context.selected_objects)), UserError)


def scene_cameras(context: bpy.types.Context) -> list[bpy.types.Object]:
    """The cameras Reconstruct Scene would use: 2 to 4 selected perspective cameras, in name
    order; UserError (or CaptureError) naming what is wrong."""
    from .scene_job import check_count

    cameras = selected_cameras(context)
    check_count(len(cameras))
    for camera in cameras:
        check_camera(camera)
    return cameras


def reconstruct_scene_blocker(context: bpy.types.Context) -> str | None:
    """Why Reconstruct Scene cannot run now, or None (cheap: no model, no renders)."""
    return _blocker_unless(lambda: scene_cameras(context), UserError, CaptureError)


def scene_meshes(context: bpy.types.Context) -> list[bpy.types.Object]:
    """The meshes a render of the scene shows: in the view layer, not hidden from renders,
    not splat objects (hidden while the views render)."""
    return [o for o in context.view_layer.objects
            if o.type == "MESH" and not o.hide_render and not is_splat(o)]  # fmt: skip


def scene_depth_range(
    context: bpy.types.Context, cameras: list[bpy.types.Object]
) -> tuple[float, float]:
    """(near, far) for the scene model: the depths, in front of the cameras, of the 8
    corners of each visible mesh's world bounding box (`scene_job.depth_range`)."""
    import numpy as np

    from .scene_job import depth_range

    corners = [np.array(obj.matrix_world) @ np.array([*corner, 1.0])
               for obj in scene_meshes(context) for corner in obj.bound_box]  # fmt: skip
    if not corners:
        raise UserError(
            "Nothing to reconstruct: the scene has no mesh that renders (all hidden from "
            "renders, or none in the view layer)"
        )
    points = np.array(corners)[:, :3]
    return depth_range(points, [np.array(c.matrix_world) for c in cameras])


REFINE_NEEDS_SECONDS = (
    "Refine Seconds is 0: set how long to refine (Refine Seconds in the panel) and press "
    "Refine again"
)


def refine_blocker(context: bpy.types.Context) -> str | None:
    """Why Refine cannot run now, or None."""
    reason = engine_blocker()
    if reason:
        return reason
    obj = context.active_object
    if not is_splat(obj):
        return "Make a Gaussian splat object active (made by Reconstruct or imported)"
    if not len(obj.gd_splat.views):
        return f"'{obj.name}' has no stored views to refine against (only Reconstruct stores them)"
    if not refine_settings(context).enabled:
        return REFINE_NEEDS_SECONDS
    return None


def export_blocker(context: bpy.types.Context) -> str | None:
    if not dependencies.torch_available():
        return MISSING_TORCH
    if not is_splat(context.active_object):
        return "Make a Gaussian splat object active to export it"
    return None


def _world_bbox(objects: list[bpy.types.Object]) -> list[list[float]] | None:
    """(2, 3) world bounds of the objects' bounding boxes, or None if there are none."""
    from mathutils import Vector

    corners = [obj.matrix_world @ Vector(c) for obj in objects for c in obj.bound_box]
    if not corners:
        return None
    lo = [min(c[i] for c in corners) for i in range(3)]
    hi = [max(c[i] for c in corners) for i in range(3)]
    if any(h - low <= 0 for low, h in zip(lo, hi, strict=True)):
        return None
    return [lo, hi]


def refine_settings(context: bpy.types.Context, steps: int = 0) -> RefineSettings:
    """The refinement budget: the panel's Refine Seconds, or `steps` when a script gives it."""
    return RefineSettings(seconds=float(settings(context).refine_seconds), steps=int(steps))


def any_splats(context: bpy.types.Context) -> bool:
    """Whether the scene has a splat object (the panel's render tips; cheap enough to draw)."""
    return dependencies.torch_available() and any(is_splat(o) for o in context.scene.objects)


def _check_still_there(obj: bpy.types.Object, done: str) -> None:
    """UserError when the splat object a job works on was deleted while it ran."""
    try:
        obj.name  # noqa: B018 (raises ReferenceError once the object is gone)
    except ReferenceError:
        raise UserError(f"The splat object was deleted while it was being {done}") from None


def _region_mask(obj: bpy.types.Object, region: bpy.types.Object, part: str) -> Any:
    """(N,) bool of the Gaussians inside `region`; UserError when there are none (`part`
    ends the advice: "move the Region box over the part to ...")."""
    from .pointcloud import points_in_region

    mask = points_in_region(obj, region)
    if not bool(mask.any()):
        raise UserError(
            f"No Gaussians inside '{region.name}': move the Region box over the part to {part}"
        )
    return mask


def _splat_objects(context: bpy.types.Context) -> list[bpy.types.Object]:
    from .pointcloud import is_gaussian_object

    return [o for o in context.scene.objects if is_gaussian_object(o)]


class _RefineSteps:
    """Mixin: the hidden step count that scripts and tests give instead of the panel's
    Refine Seconds (Blender collects the annotation from the mixin, as from ExportHelper)."""

    refine_steps: IntProperty(  # type: ignore[valid-type]
        name="Refine Steps",
        description="Scripts and tests: refine this many steps instead of the panel's seconds",
        default=0, min=0, options={"SKIP_SAVE"},
    )  # fmt: skip


# ---------------------------------------------------------------------------- reconstruct
RECONSTRUCT_SOURCES = (
    ("SCENE", "Panel Setting", "Use the panel's Source"),
    ("CAMERAS", "Cameras", "Render the selected cameras"),
    ("PHOTOS", "Photos", "Use the selected cameras' background images"),
)


class GD_OT_reconstruct(_RefineSteps, SceneJobOperator, bpy.types.Operator):
    """Reconstruct Gaussian splats of the prop seen by the selected cameras"""

    bl_idname = "gd.reconstruct"
    bl_label = "Reconstruct"

    source: EnumProperty(name="Source", items=RECONSTRUCT_SOURCES, default="SCENE")  # type: ignore[valid-type]

    blocker = staticmethod(reconstruct_blocker)

    def prepare(self, context: bpy.types.Context) -> None:
        scene = context.scene
        source = settings(context).source if self.source == "SCENE" else self.source
        cameras = selected_cameras(context)
        if not cameras:
            raise UserError(
                "No camera selected: select the cameras to reconstruct from (each selected "
                "camera is one input view)"
            )
        for camera in cameras:
            check_camera(camera)
        self._photos = source == "PHOTOS"
        self._refine = refine_settings(context, self.refine_steps)
        self._views: list[Any] = []
        self._records: list[dict[str, Any]] = []
        self._images: list[Any] = []  # photo image datablocks to remember on the object
        self._paths: list[Path] = []
        self._tmp: Path | None = None
        mode = settings(context).photo_masks if self._photos else "RENDER"
        used: list[bool] = []
        if self._photos:
            from .photos import apply_mask_files, photo_view

            for camera in cameras:
                pixels, record, image = photo_view(camera)
                pixels, from_file = apply_mask_files(pixels, camera, mode)
                used.append(from_file)
                self._views.append(pixels)
                self._records.append(record)
                self._images.append(image)
            if any(used) and not all(used):
                missing = cameras[used.index(False)].name
                raise UserError(
                    f"Mask files were found for some photos but not for camera '{missing}'; "
                    "give every photo a mask, or set Masks to Auto without mask files"
                )
        from_files = bool(used) and all(used)
        from .photos import MaskRequest

        self._masks = MaskRequest(mode, from_files, [c.name for c in cameras])
        self.add_model_stage(context)
        # Selected non-camera objects (the prop) bound the reconstruction.
        props = [
            o
            for o in context.selected_objects
            if o.type not in {"CAMERA", "LIGHT"} and not is_splat(o)
        ]
        self._bbox = _world_bbox(props)
        self._name = f"{props[0].name} splats" if props else "Splats"
        if not self._photos:
            self._tmp = Path(tempfile.mkdtemp(prefix="gd_views_"))
            hidden = _splat_objects(context)
            for i, camera in enumerate(cameras):
                path = self._tmp / f"view_{i:03d}.png"

                def step(camera: bpy.types.Object = camera, path: Path = path) -> None:
                    self._views.append(render_view_hiding(scene, camera, self._size, path, hidden))
                    self._records.append(camera_record(camera, self._size, self._size))
                    self._paths.append(path)

                self.add_step(f"rendering {camera.name}", step)

    def job(self) -> jobs.Work:
        from .photos import masked_work
        from .refine_job import reconstruct_with_views

        # Views are cut out (photos) or checked not to be empty (renders) in the worker first.
        work = functools.partial(
            reconstruct_with_views, self._model, list(self._records), self._bbox, self._refine
        )
        return functools.partial(
            masked_work, work, list(self._views), list(self._records), self._masks
        )

    def finish(self, context: bpy.types.Context, rec: Any) -> None:
        source = "photos" if self._photos else "cameras"
        _, note = land_reconstruction(context, rec, self._name, self._paths, self._images,
                                      self._records, source)  # fmt: skip
        masks = getattr(rec, "masks", None)
        if masks is not None:
            note = f"{note} {masks.summary().capitalize()}".strip()
        self.report(mask_report_level(masks),
                    reconstruct_report(rec, time.monotonic() - self._started, note))  # fmt: skip


# ---------------------------------------------------------------------------- densify
NOTHING_SELECTED = (
    "Nothing selected to densify: in Edit Mode select the Gaussians that need detail, or set "
    "a Region box"
)


class GD_OT_densify(SceneJobOperator, bpy.types.Operator):
    """Add detail to the selected Gaussians (Edit Mode selection or the Region object);
    every other Gaussian keeps its exact values"""

    bl_idname = "gd.densify_selected"
    bl_label = "Densify Selected"
    job_name = "Densify"

    # Densifying everything has to be asked for: a cloud with no selection (fresh, just
    # densified, or after Select All, which leaves none) would otherwise grow every run.
    whole_object: BoolProperty(  # type: ignore[valid-type]
        name="Whole Object",
        description="Densify every Gaussian of the object, whatever is selected (each run "
        "adds detail everywhere, so the object grows every time)",
        default=False, options={"SKIP_SAVE"},
    )  # fmt: skip

    blocker = staticmethod(densify_blocker)

    def prepare(self, context: bpy.types.Context) -> None:
        obj = context.active_object
        if not is_splat(obj):
            raise UserError(
                "Make a Gaussian splat object active (made by Reconstruct or "
                "imported) to densify it"
            )
        import torch

        from .pointcloud import has_selected_points, object_to_gaussians, selected_point_mask

        self._tmp = None
        self.hold_in_object_mode(obj)
        opts = settings(context)
        region = opts.region
        mask = None  # whole object: every Gaussian, counted once the object is read
        if self.whole_object:
            pass
        elif region is not None:
            mask = _region_mask(obj, region, "densify")
        elif has_selected_points(obj):
            mask = selected_point_mask(obj)
        else:
            raise UserError(NOTHING_SELECTED)
        use_stored = opts.densify_views == "STORED" or (
            opts.densify_views == "AUTO" and len(obj.gd_splat.views) > 0
        )
        self._views: list[Any] = []
        self._records: list[dict[str, Any]] = []
        cameras = [] if use_stored else selected_cameras(context)
        if use_stored:
            if not len(obj.gd_splat.views):
                raise UserError(
                    f"'{obj.name}' has no stored views; select cameras and set "
                    "Views to Selected Cameras"
                )
            self._views, self._records = stored_views(obj)
        else:
            if not cameras:
                raise UserError(
                    "No camera selected: the object has no stored views, so "
                    "select the cameras to densify against"
                )
            for camera in cameras:
                check_camera(camera)
            if opts.source == "PHOTOS":
                from .photos import photo_view

                for camera in cameras:
                    pixels, record, _ = photo_view(camera)
                    self._views.append(pixels)
                    self._records.append(to_local([record], obj.matrix_world)[0])
        self.add_model_stage(context)
        self._gaussians, self._level, self._parent = object_to_gaussians(obj)
        if mask is None:
            mask = torch.ones(len(self._gaussians.means), dtype=torch.bool)
        self._mask = mask
        self._budget = int(opts.budget)
        self._rendered = bool(cameras) and not self._views
        self._camera_names = [camera.name for camera in cameras]
        if self._rendered:
            self._tmp = Path(tempfile.mkdtemp(prefix="gd_views_"))
            hidden = _splat_objects(context)
            scene = context.scene
            for i, camera in enumerate(cameras):
                path = self._tmp / f"view_{i:03d}.png"

                def step(camera: bpy.types.Object = camera, path: Path = path) -> None:
                    size = self._size
                    self._views.append(render_view_hiding(scene, camera, size, path, hidden))
                    record = camera_record(camera, size, size)
                    self._records.append(to_local([record], obj.matrix_world)[0])

                self.add_step(f"rendering {camera.name}", step)

    def job(self) -> jobs.Work:
        if not self._rendered:
            return functools.partial(
                densify_work, self._model, self._gaussians, list(self._views),
                list(self._records), self._mask, self._budget,
            )  # fmt: skip
        from .photos import MaskRequest, masked_work

        # Captures of the selected cameras are checked not to be empty first (a prop hidden
        # from render or clipped), as Reconstruct's are: densifying against blank views
        # would erase the selection.
        work = functools.partial(
            densify_with_views, self._model, self._gaussians, list(self._records),
            self._mask, self._budget,
        )  # fmt: skip
        request = MaskRequest("RENDER", False, list(self._camera_names))
        return functools.partial(masked_work, work, list(self._views), list(self._records), request)

    def finish(self, context: bpy.types.Context, res: Any) -> None:
        from .pointcloud import replace_gaussians

        _check_still_there(self._obj, "densified")

        level, parent = lineage(self._level, self._parent, res.level, res.parent)
        before = int(self._mask.numel())
        replace_gaussians(self._obj, res.gaussians, level, parent)
        added = len(res.gaussians.means) - before
        self.report(
            {"INFO"},
            f"Densified {int(self._mask.sum())} Gaussians: "
            f"{before} -> {len(res.gaussians.means)} ({added:+d})",
        )


# ---------------------------------------------------------------------------- reconstruct object
class GD_OT_reconstruct_object(_RefineSteps, SceneJobOperator, bpy.types.Operator):
    """Reconstruct the selected meshes as splats: render them with Cycles from a temporary
    camera rig, reconstruct, then refine for Refine Seconds"""

    bl_idname = "gd.reconstruct_object"
    bl_label = "Reconstruct Object"

    blocker = staticmethod(reconstruct_object_blocker)

    def prepare(self, context: bpy.types.Context) -> None:
        from . import rig

        meshes = rig.check_selection(list(context.selected_objects))
        lo, hi = rig.world_bounds(meshes)
        self._plan = rig.plan_rig(lo, hi, int(settings(context).rig_views))
        self._refine = refine_settings(context, self.refine_steps)
        self._bbox = [lo.tolist(), hi.tolist()]
        self._name = f"{meshes[0].name} splats"
        self._capture = rig.Capture([m.name for m in meshes])
        self.add_model_stage(context)
        self._tmp = Path(tempfile.mkdtemp(prefix="gd_rig_"))
        scene = context.scene
        for i in range(len(self._plan)):
            path = self._tmp / f"view_{i:03d}.png"
            step = functools.partial(self._capture.render, scene, self._plan, i, path)
            self.add_step(f"rendering rig view {i + 1}/{len(self._plan)}",
                          lambda step=step: step(self._size))  # fmt: skip
        self.add_step("checking the views", self._capture.check)

    def job(self) -> jobs.Work:
        from .refine_job import reconstruct_work

        c = self._capture
        return functools.partial(reconstruct_work, self._model, list(c.views),
                                 list(c.records), self._bbox, self._refine)  # fmt: skip

    def finish(self, context: bpy.types.Context, rec: Any) -> None:
        c = self._capture
        _, note = land_reconstruction(context, rec, self._name, c.paths, [], c.records, "rig")
        self.report({"INFO"}, reconstruct_report(rec, time.monotonic() - self._started, note))


# ---------------------------------------------------------------------------- reconstruct scene
SCENE_OBJECT_NAME = "GD Scene"
MISSING_SCENE_WEIGHTS = (
    "Reconstruct Scene needs the scene model's weights: train them (gd train --config "
    "scene-small) and choose the file as Scene Weights File in the add-on's preferences"
)


class GD_OT_reconstruct_scene(SceneJobOperator, bpy.types.Operator):
    """Reconstruct the scene (background included) seen by 2 to 4 selected cameras as one
    splat object in the scene's own frame"""

    bl_idname = "gd.reconstruct_scene"
    bl_label = "Reconstruct Scene"

    blocker = staticmethod(reconstruct_scene_blocker)

    def prepare(self, context: bpy.types.Context) -> None:
        from .modal import scene_model_request

        scene = context.scene
        cameras = scene_cameras(context)
        self._near, self._far = scene_depth_range(context, cameras)
        self._budget = int(settings(context).scene_candidates) or None
        self._camera_names = [camera.name for camera in cameras]
        self._views: list[Any] = []
        self._records: list[dict[str, Any]] = []
        self._paths: list[Path] = []
        self.add_model_stage(context, scene_model_request(context), MISSING_SCENE_WEIGHTS)
        self.add_step("checking the cameras", self._check_cameras)
        self._tmp = Path(tempfile.mkdtemp(prefix="gd_scene_"))
        hidden = _splat_objects(context)
        for i, camera in enumerate(cameras):
            path = self._tmp / f"view_{i:03d}.png"
            step = functools.partial(self._render, scene, camera, path, hidden)
            self.add_step(f"rendering {camera.name}", step)

    def _camera(self, name: str) -> bpy.types.Object:
        camera = bpy.data.objects.get(name)
        if camera is None:
            raise UserError(f"Camera '{name}' was deleted while the scene was being rendered")
        return camera

    def _check_cameras(self) -> None:
        """The model's checks on the cameras (overlap...) before rendering any of them."""
        from .scene_job import check_views

        size = self._size
        records = [camera_record(self._camera(n), size, size) for n in self._camera_names]
        check_views(self._model, records, self._near, self._far)

    def _render(self, scene: bpy.types.Scene, camera: bpy.types.Object, path: Path,
                hidden: list[bpy.types.Object]) -> None:  # fmt: skip
        from .rig import using_cycles

        # The scene as it is: its world behind it, not the object workflow's clear film.
        with using_cycles(scene):
            pixels = render_view_hiding(scene, camera, self._size, path, hidden,
                                        transparent=False)  # fmt: skip
        self._views.append(pixels)
        self._records.append(camera_record(camera, self._size, self._size))
        self._paths.append(path)

    def job(self) -> jobs.Work:
        from .scene_job import reconstruct_scene_work

        return functools.partial(
            reconstruct_scene_work, self._model, list(self._views), list(self._records),
            self._near, self._far, self._budget,
        )  # fmt: skip

    def finish(self, context: bpy.types.Context, rec: Any) -> None:
        _, note = land_reconstruction(context, rec, SCENE_OBJECT_NAME, self._paths, [],
                                      self._records, "scene")  # fmt: skip
        depth = f"Depth range {self._near:.3g} to {self._far:.3g}"
        note = f"{depth}. {note}" if note else depth
        self.report({"INFO"}, reconstruct_report(rec, time.monotonic() - self._started, note))


# ---------------------------------------------------------------------------- refine
class GD_OT_refine(_RefineSteps, SceneJobOperator, bpy.types.Operator):
    """Refine the active splat object against its stored views for Refine Seconds; with an
    Edit Mode selection or a Region only those Gaussians change"""

    bl_idname = "gd.refine"
    bl_label = "Refine"

    blocker = staticmethod(refine_blocker)

    def prepare(self, context: bpy.types.Context) -> None:
        from .pointcloud import object_to_gaussians

        obj = context.active_object
        if not is_splat(obj):
            raise UserError("Make a Gaussian splat object active to refine it")
        self._refine = refine_settings(context, self.refine_steps)
        if not self._refine.enabled:
            raise UserError(REFINE_NEEDS_SECONDS)
        if not len(obj.gd_splat.views):
            raise UserError(
                f"'{obj.name}' has no stored views to refine against: only objects made by "
                "Reconstruct or Reconstruct Object keep the views they were made from"
            )
        self.hold_in_object_mode(obj)
        self._mask = refine_selection(obj, settings(context).region)
        self._views, self._records = stored_views(obj)
        self._gaussians, self._level, self._parent = object_to_gaussians(obj)

    def job(self) -> jobs.Work:
        from .refine_job import refine_object_work

        return functools.partial(
            refine_object_work, self._gaussians, self._level, self._parent, self._views,
            self._records, self._mask, self._refine,
        )  # fmt: skip

    def finish(self, context: bpy.types.Context, res: Any) -> None:
        from .pointcloud import replace_gaussians
        from .refine_job import refine_report

        _check_still_there(self._obj, "refined")
        replace_gaussians(self._obj, res.gaussians, res.level, res.parent)
        kept = f"; {res.frozen:,} unselected Gaussians kept exactly" if res.frozen else ""
        self.report({"INFO"}, f"'{self._obj.name}': {refine_report(res.result)}{kept}")


def refine_selection(obj: bpy.types.Object, region: bpy.types.Object | None) -> Any:
    """(N,) bool of the Gaussians Refine may change: inside the Region, else the Edit Mode
    selection, else None (all of them: unlike Densify, refining everything is the plain
    case, and it does not grow the object each time)."""
    from .pointcloud import has_selected_points, selected_point_mask

    if region is not None:
        return _region_mask(obj, region, "refine, or clear the Region to refine the whole object")
    if has_selected_points(obj):
        mask = selected_point_mask(obj)
        return None if bool(mask.all()) else mask
    return None


class GD_OT_splat_render_settings(bpy.types.Operator):
    """Raise the scene's Cycles transparent bounces to what splats need (never lowers them)"""

    bl_idname = "gd.splat_render_settings"
    bl_label = "Set Render Settings for Splats"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        from .render_setup import ensure_splat_render_settings

        note = ensure_splat_render_settings(context.scene)
        self.report({"INFO"}, note or "The scene's render settings already suit splats")
        return {"FINISHED"}


# ---------------------------------------------------------------------------- files
SPLAT_GLOB = "*.ply;*.spz;*.splat;*.sog;*.glb;*.gltf;*meta.json"
# How a splat file's axes meet Blender's (engine/io/axes.py); shared by import and export.
AXES_ITEMS = [
    ("standard", "Standard",
     "The format's own frame: PLY space (-Y up) for .ply/.spz/.splat/.sog, Y-up for glTF; "
     "files from 3DGS training, SuperSplat or splat-transform come in upright"),
    ("raw", "Raw",
     "File coordinates are Blender's, unturned: files that share their frame with a camera "
     "set, and this add-on's exports from before the standard axes"),
]  # fmt: skip


class GD_OT_export_splats(bpy.types.Operator, ExportHelper):
    """Export the active splat object (.ply, .compressed.ply, .spz, .splat, .sog, .glb, .gltf)"""

    bl_idname = "gd.export_splats"
    bl_label = "Export Splats"
    bl_options = {"REGISTER"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default=SPLAT_GLOB, options={"HIDDEN"})  # type: ignore[valid-type]
    levels: BoolProperty(  # type: ignore[valid-type]
        name="Keep Levels", default=True,
        description="Plain .ply only: also store each Gaussian's densification level and "
        "parent (extra vertex properties other tools ignore)",
    )  # fmt: skip
    axes: EnumProperty(name="Axes", items=AXES_ITEMS, default="standard")  # type: ignore[valid-type]

    @classmethod
    def description(cls, context: bpy.types.Context, properties: Any) -> str:
        reason = export_blocker(context)
        return f"Disabled: {reason}" if reason else (cls.__doc__ or "")

    def check(self, context: bpy.types.Context) -> bool:
        return False  # keep the suffix the user typed: it picks the format

    def execute(self, context: bpy.types.Context) -> set[str]:
        reason = export_blocker(context)
        if reason:
            self.report({"ERROR"}, reason)
            return {"CANCELLED"}
        from .splat_files import export_object

        try:
            path = Path(self.filepath)
            plain_ply = path.suffix.lower() == ".ply" and not path.name.lower().endswith(
                ".compressed.ply"
            )
            export_object(
                context.active_object, path, levels=self.levels and plain_ply, axes=self.axes
            )
        except (ValueError, TypeError, OSError) as err:
            self.report({"ERROR"}, f"Export failed: {err}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {Path(self.filepath).name}")
        return {"FINISHED"}


class GD_OT_import_splats(bpy.types.Operator, ImportHelper):
    """Import a Gaussian splat file as a point cloud object"""

    bl_idname = "gd.import_splats"
    bl_label = "Import Splats"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default=SPLAT_GLOB, options={"HIDDEN"})  # type: ignore[valid-type]
    axes: EnumProperty(name="Axes", items=AXES_ITEMS, default="standard")  # type: ignore[valid-type]

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not dependencies.torch_available():
            self.report({"ERROR"}, MISSING_TORCH)
            return {"CANCELLED"}
        from .splat_files import import_splat

        try:
            obj = import_splat(self.filepath, context.collection, axes=self.axes)
        except (ValueError, OSError) as err:
            self.report({"ERROR"}, f"Import failed: {err}")
            return {"CANCELLED"}
        for other in context.selected_objects:
            other.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        from .render_setup import ensure_splat_render_settings

        note = ensure_splat_render_settings(context.scene)
        self.report({"INFO"}, f"Imported {obj.name}" + (f". {note}" if note else ""))
        return {"FINISHED"}


class GD_OT_import_photos(bpy.types.Operator, ImportHelper):
    """Import posed photos (NeRF transforms.json, or a COLMAP folder / its cameras file) as
    cameras with the photos as background images"""

    bl_idname = "gd.import_photos"
    bl_label = "Import Photos"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default="*.json;*.bin;*.txt", options={"HIDDEN"})  # type: ignore[valid-type]
    set_resolution: BoolProperty(  # type: ignore[valid-type]
        name="Set Render Resolution",
        description="Also set the scene's render resolution to the photos' size, so camera "
        "frames match the photos (changes the scene; off by default)",
        default=False,
    )  # fmt: skip

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not dependencies.torch_available():
            self.report({"ERROR"}, MISSING_TORCH)
            return {"CANCELLED"}
        from . import photos

        path = Path(bpy.path.abspath(self.filepath))
        render = context.scene.render
        before = (render.resolution_x, render.resolution_y, render.resolution_percentage)
        try:
            if path.suffix.lower() == ".json":
                cameras = photos.import_nerf(context, path, self.set_resolution)
            else:
                folder = path if path.is_dir() else path.parent
                # cameras.bin in sparse/0 belongs to the folder two levels up.
                if folder.parent.name == "sparse":
                    folder = folder.parent.parent
                elif folder.name == "sparse":
                    folder = folder.parent
                cameras = photos.import_colmap(context, folder, self.set_resolution)
        except (ValueError, OSError) as err:
            self.report({"ERROR"}, f"Cannot import photos: {err}")
            return {"CANCELLED"}
        settings(context).source = "PHOTOS"
        note = photos.resolution_note(context, cameras, before)
        self.report({"INFO"}, f"Imported {len(cameras)} cameras with photos; {note}")
        return {"FINISHED"}


class GD_OT_preview_masks(bpy.types.Operator):
    """Cut the selected cameras' photos out with the panel's Masks setting and show the
    result as the image "GD Mask Preview" (photos above, what the model will read below)"""

    bl_idname = "gd.preview_masks"
    bl_label = "Preview Masks"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return dependencies.torch_available() and bool(selected_cameras(context))

    def execute(self, context: bpy.types.Context) -> set[str]:
        from . import photos

        try:
            image, masks = photos.preview_masks(
                selected_cameras(context), settings(context).photo_masks
            )
        except (ValueError, OSError) as err:
            self.report({"ERROR"}, f"Cannot cut out the photos: {err}")
            return {"CANCELLED"}
        summary = masks.summary() if masks is not None else "masks: none (photos as they are)"
        self.report(mask_report_level(masks),
                    f"{summary}; see the image '{image.name}' in an Image Editor")  # fmt: skip
        return {"FINISHED"}


# ---------------------------------------------------------------------------- setup
def online_access() -> bool:
    """Whether Blender allows network use (Preferences > System > Network); tests patch it."""
    return bool(bpy.app.online_access)


def _offline_error() -> str:
    return (
        "Online access is off: enable Preferences > System > Network > Allow Online "
        "Access (or start Blender with --online-mode) to download"
    )


class GD_OT_install_dependencies(JobOperator, bpy.types.Operator):
    """Install PyTorch and the engine's other dependencies into this add-on's user folder
    (needs online access)"""

    bl_idname = "gd.install_dependencies"
    bl_label = "Install PyTorch"
    bl_options = {"REGISTER", "INTERNAL"}

    build: EnumProperty(  # type: ignore[valid-type]
        name="Build",
        items=(("CPU", "CPU", ""), ("CUDA", "CUDA", ""), ("DEFAULT", "Default", "")),
        default="CPU",
    )

    def prepare(self, context: bpy.types.Context) -> None:
        if not online_access():
            raise UserError(_offline_error())

    def job(self) -> jobs.Work:
        # The pip target is the add-on's user folder, which only bpy (main thread) knows.
        commands = dependencies.install_commands(self.build)
        return functools.partial(install_work, self.build, commands)

    def finish(self, context: bpy.types.Context, result: Any) -> None:
        dependencies.setup_paths()  # the user site-packages may be new: onto sys.path
        clear_models()
        self.report({"INFO"}, f"Installed: {dependencies.torch_summary()}")


class GD_OT_download_weights(JobOperator, bpy.types.Operator):
    """Download the model's weights and their config from the URL in the preferences, verify
    both SHA-256s and save them in the add-on's user folder (needs online access)"""

    bl_idname = "gd.download_weights"
    bl_label = "Download Weights"
    bl_options = {"REGISTER", "INTERNAL"}
    job_name = "Download weights"

    def prepare(self, context: bpy.types.Context) -> None:
        if not online_access():
            raise UserError(_offline_error())
        if not dependencies.torch_available():  # importing `engine` imports torch
            raise UserError(MISSING_TORCH)
        from .preferences import downloaded_weights_path

        prefs = get_prefs(context)
        if not (prefs.weights_url and prefs.weights_sha256 and prefs.weights_config_sha256):
            raise UserError(
                "Set the weights URL and the SHA-256s of the weights and of their config "
                "in the preferences first"
            )
        self._url, self._sha = prefs.weights_url, prefs.weights_sha256
        self._config_sha = prefs.weights_config_sha256
        self._dest = downloaded_weights_path(prefs.model)

    def job(self) -> jobs.Work:
        return functools.partial(fetch_weights, self._url, self._sha, self._config_sha, self._dest)

    def finish(self, context: bpy.types.Context, result: Any) -> None:
        clear_models()
        self.report({"INFO"}, f"Weights saved to {result}")


class GD_OT_cancel_job(bpy.types.Operator):
    """Stop the running reconstruction, densification or download (same as Esc)"""

    bl_idname = "gd.cancel_job"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return jobs.active_job() is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        job = jobs.active_job()
        if job is not None:
            job.cancel()
        return {"FINISHED"}


class GD_OT_show_preferences(bpy.types.Operator):
    """Open this add-on's preferences (PyTorch install, weights, device)"""

    bl_idname = "gd.show_preferences"
    bl_label = "Open Add-on Preferences"
    bl_options = {"INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        bpy.ops.screen.userpref_show("INVOKE_DEFAULT")
        context.preferences.active_section = "ADDONS"
        bpy.ops.preferences.addon_show(module=dependencies.PACKAGE)
        return {"FINISHED"}


def menu_import(self: Any, context: bpy.types.Context) -> None:
    self.layout.operator(GD_OT_import_splats.bl_idname, text="Gaussian Splats (.ply/.spz/...)")


def menu_export(self: Any, context: bpy.types.Context) -> None:
    self.layout.operator(GD_OT_export_splats.bl_idname, text="Gaussian Splats (.ply/.spz/...)")


classes = (
    GD_OT_reconstruct,
    GD_OT_reconstruct_object,
    GD_OT_reconstruct_scene,
    GD_OT_densify,
    GD_OT_refine,
    GD_OT_splat_render_settings,
    GD_OT_export_splats,
    GD_OT_import_splats,
    GD_OT_import_photos,
    GD_OT_preview_masks,
    GD_OT_install_dependencies,
    GD_OT_download_weights,
    GD_OT_cancel_job,
    GD_OT_show_preferences,
)
_register, _unregister = bpy.utils.register_classes_factory(classes)


@bpy.app.handlers.persistent
def _on_load_pre(*_args: Any) -> None:
    # Opening another file drops modal operators; their worker must not block later jobs.
    jobs.abandon_active()


def register() -> None:
    _register()
    bpy.app.handlers.load_pre.append(_on_load_pre)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    job = jobs.active_job()
    if job is not None:
        job.cancel()
    clear_models()
    _unregister()
