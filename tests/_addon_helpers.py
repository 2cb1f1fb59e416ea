"""Helpers of the add-on tests (test_addon_*.py): the tiny model spy, what a failed or
cancelled operator must leave alone (`snapshot`), a splat object's point attributes,
running Reconstruct, Esc during a job, and stand-ins for the modal path's event and window
manager. The fixtures built on them (`addon`, `tiny`, `spy`, `scene`) are in conftest.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ._splat_helpers import point_count

CAPTURE = 32  # render the cameras at 32^2 (the model resamples to its own size)


ATTRS = ("opacity", "scale", "rotation", "f_dc", "gd_level", "gd_parent")


class Spy:
    """Wraps the tiny model and records what reconstruct/densify returned."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.image_size, self.max_views = model.image_size, model.max_views
        self.calls: list[tuple[str, Any, Any]] = []

    def reconstruct(self, images, cameras, **kw):
        rec = self.model.reconstruct(images, cameras, **kw)
        self.calls.append(("reconstruct", (images, cameras, kw), rec))
        return rec

    def densify(self, gaussians, images, cameras, **kw):
        res = self.model.densify(gaussians, images, cameras, **kw)
        self.calls.append(("densify", (gaussians, images, cameras, kw), res))
        return res


def grid_material() -> Any:
    """A material showing Blender's 64² colour-grid test image as base colour: texture for
    the props the add-on tests render."""
    import bpy

    image = bpy.data.images.new("grid", 64, 64)
    image.generated_type = "COLOR_GRID"
    material = bpy.data.materials.new("grid")
    material.use_nodes = True
    nodes = material.node_tree.nodes
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    material.node_tree.links.new(texture.outputs["Color"],
                                 nodes["Principled BSDF"].inputs["Base Color"])  # fmt: skip
    return material


def window_override():
    import bpy

    window = bpy.context.window_manager.windows[0]
    return bpy.context.temp_override(window=window, screen=window.screen)


RENDER_SETTINGS = (
    "engine", "resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x",
    "pixel_aspect_y", "film_transparent", "filepath", "use_border", "use_compositing",
    "use_sequencer", "use_file_extension",
)  # fmt: skip


def snapshot(scene: Any) -> dict[str, Any]:
    """Everything a failed or cancelled operator must leave alone."""
    import bpy

    render, image = scene.render, scene.render.image_settings
    state = {f"render.{k}": getattr(render, k) for k in RENDER_SETTINGS}
    for key in ("media_type", "file_format", "color_mode", "color_depth", "compression"):
        if hasattr(image, key):
            state[f"image.{key}"] = getattr(image, key)
    for key in ("view_transform", "look", "exposure", "gamma"):
        state[f"view.{key}"] = getattr(scene.view_settings, key)
    state["camera"] = scene.camera.name if scene.camera else None
    state["objects"] = sorted(o.name for o in bpy.data.objects)
    state["images"] = sorted(i.name for i in bpy.data.images)
    state["meshes"] = sorted(m.name for m in bpy.data.meshes)
    state["pointclouds"] = sorted(p.name for p in bpy.data.pointclouds)
    state["collections"] = sorted(c.name for c in bpy.data.collections)
    state["hide_render"] = {o.name: o.hide_render for o in bpy.data.objects}
    state["matrices"] = {o.name: [list(r) for r in o.matrix_world] for o in bpy.data.objects}
    state["modes"] = {o.name: o.mode for o in bpy.data.objects}
    return state


def attributes(obj: Any) -> dict[str, np.ndarray]:
    """Every point attribute (position included) of a splat object, as arrays."""
    out = {}
    n = point_count(obj)
    for attr in obj.data.attributes:
        if attr.domain != "POINT" or attr.name.startswith("."):
            continue
        width = {"FLOAT": 1, "INT": 1, "FLOAT_VECTOR": 3, "QUATERNION": 4, "FLOAT_COLOR": 4,
                 "BOOLEAN": 1}[attr.data_type]  # fmt: skip
        field = "vector" if attr.data_type == "FLOAT_VECTOR" else "value"
        if attr.data_type == "FLOAT_COLOR":
            field = "color"
        dtype = np.int32 if attr.data_type in ("INT", "BOOLEAN") else np.float32
        buf = np.empty(n * width, dtype)
        attr.data.foreach_get(field, buf)
        out[attr.name] = buf.reshape(n, width)
    return out


def reconstruct(scene: Any, spy: Spy) -> Any:
    import bpy

    before = {o.name for o in bpy.data.objects}
    assert bpy.ops.gd.reconstruct() == {"FINISHED"}
    new = [o for o in bpy.data.objects if o.name not in before]
    assert len(new) == 1
    return new[0]


def cancelled_run(operator: Callable[[], set[str]], when: str) -> set[str]:
    """Run a job operator (e.g. `bpy.ops.gd.reconstruct`) with Esc pressed during its
    captures ("capture") or once its job is 30 % done ("engine"); returns its result."""
    from gd_blender_addon import jobs

    def cancel(fraction: float, message: str, event: threading.Event) -> None:
        if when == "capture" or fraction >= 0.3:
            event.set()

    jobs.progress_listeners.append(cancel)
    try:
        return operator()
    finally:
        jobs.progress_listeners.remove(cancel)


class Event:
    def __init__(self, kind: str, value: str = "NOTHING") -> None:
        self.type, self.value = kind, value


class WindowManager:
    """Records what the modal path asks of Blender's window manager."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.progress: list[int] = []

    def event_timer_add(self, step, window=None):
        self.calls.append("timer_add")
        return "timer"

    def event_timer_remove(self, timer) -> None:
        self.calls.append("timer_remove")

    def modal_handler_add(self, op) -> None:
        self.calls.append("modal_handler_add")

    def progress_begin(self, lo, hi) -> None:
        self.calls.append("progress_begin")

    def progress_update(self, value) -> None:
        self.progress.append(value)

    def progress_end(self) -> None:
        self.calls.append("progress_end")
