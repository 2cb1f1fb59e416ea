"""Where a job's result lands in the scene (main thread): a new splat object with its views
stored on it, and the views read back for Densify and Refine.

The views a splat object was made from stay with it (properties.py): rendered views (the
selected cameras' or Reconstruct Object's rig) are PNGs packed into the .blend as image
datablocks with a fake user, so they survive saving, reopening and undo (packing happens
inside the operator, before its one undo step is pushed); photo views point at the photo's
image datablock. Cameras are JSON in the object's local frame, so moving or uniformly
scaling the object later keeps them valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bpy

from .camera_capture import to_local
from .errors import UserError


def store_views(
    obj: bpy.types.Object,
    paths: list[Path],
    images: list[Any],
    records: list[dict[str, Any]],
    source: str,
) -> None:
    """Remember the views on the object: rendered PNGs (`paths`) are packed into the .blend
    with a fake user; photos (`images`, when there are no paths) are pointed at."""
    local = to_local(records, obj.matrix_world)
    data = obj.gd_splat
    data.views.clear()
    data.source = source
    for i, record in enumerate(local):
        if paths:
            image = bpy.data.images.load(str(paths[i]), check_existing=False)
            image.pack()
            image.name = f"{obj.name} view {i:02d}"
            image.use_fake_user = True
        else:
            image = images[i]
        view = data.views.add()
        view.image = image
        view.camera = json.dumps(record)


def stored_views(obj: bpy.types.Object) -> tuple[list[Any], list[dict[str, Any]]]:
    """(pixels, camera records in the object's local frame) of the views kept on `obj`."""
    from .camera_capture import read_image_pixels

    pixels, records = [], []
    for i, view in enumerate(obj.gd_splat.views):
        if view.image is None:
            raise UserError(
                f"view {i} of '{obj.name}' lost its image; densify against "
                "selected cameras instead (Views: Selected Cameras)"
            )
        pixels.append(read_image_pixels(view.image))
        records.append(json.loads(view.camera))
    return pixels, records


def land_reconstruction(
    context: bpy.types.Context,
    rec: Any,
    name: str,
    paths: list[Path],
    images: list[Any],
    records: list[dict[str, Any]],
    source: str,
) -> tuple[bpy.types.Object, str]:
    """One new splat object from `rec` (gaussians, level, parent), with its display, its
    views stored and the scene's Cycles settings raised for splats; made active and the
    only selected object. Returns (object, sentence on the render settings changed, or "").
    On any error nothing is left behind (object, point data, packed views)."""
    from . import display
    from .pointcloud import gaussians_to_object, remove_data
    from .render_setup import ensure_splat_render_settings

    obj = gaussians_to_object(
        context.collection, rec.gaussians, name, level=rec.level, parent=rec.parent
    )
    images_before = set(bpy.data.images)
    try:
        display.ensure_display(obj)
        store_views(obj, paths, images, records, source)
        note = ensure_splat_render_settings(context.scene)  # last: nothing fails after it
    except BaseException:
        data = obj.data
        bpy.data.objects.remove(obj)
        if data.users == 0:
            remove_data(data)  # PointCloud, or the 4.2-4.4 fallback Mesh
        for image in set(bpy.data.images) - images_before:
            bpy.data.images.remove(image)
        raise
    for other in context.selected_objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj
    return obj, note
