"""Photos with known poses as Blender cameras, and views ready for the engine.

Importing a NeRF `transforms.json` or a COLMAP folder creates one camera object a photo,
with the photo as its background image (what the camera shows in the viewport), in a new
collection. Reconstruct from photos then reads those background images, or the background
images of any cameras the user set up by hand.

`prepare_views` turns views of any size into the square inputs the model wants: a centred
square crop, resized, with the intrinsics moved and scaled to match (pure torch, runs in the
worker thread).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from mathutils import Matrix

from .camera_capture import CaptureError, camera_record, read_image_pixels

COLMAP_IMAGE_DIRS = ("images", "input", ".")


def _new_collection(context: bpy.types.Context, name: str) -> bpy.types.Collection:
    collection = bpy.data.collections.new(name)
    context.scene.collection.children.link(collection)
    return collection


def _add_camera(
    collection: bpy.types.Collection, name: str, settings: dict[str, Any], photo: Path
) -> bpy.types.Object:
    """One camera object from `to_blender` settings, with `photo` as background image."""
    data = bpy.data.cameras.new(name)
    data.lens = settings["lens"]
    data.sensor_width = settings["sensor_width"]
    data.sensor_height = settings["sensor_height"]
    data.sensor_fit = settings["sensor_fit"]
    data.shift_x, data.shift_y = settings["shift_x"], settings["shift_y"]
    obj = bpy.data.objects.new(name, data)
    obj.matrix_world = Matrix(settings["matrix_world"])
    collection.objects.link(obj)
    background = data.background_images.new()
    background.image = bpy.data.images.load(str(photo), check_existing=True)
    data.show_background_images = True
    return obj


def _import(
    context: bpy.types.Context,
    cameras: Any,
    photos: Sequence[Path],
    name: str,
    set_resolution: bool,
) -> list[bpy.types.Object]:
    from engine.camera_formats import to_blender

    missing = [str(p) for p in photos if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} photo(s) not found, e.g. {missing[0]}")
    collection = _new_collection(context, name)
    objects = []
    for i, (settings, photo) in enumerate(zip(to_blender(cameras), photos, strict=True)):
        objects.append(
            _add_camera(collection, f"{name}.{i:03d} {Path(photo).stem}", settings, Path(photo))
        )
    if set_resolution:
        # So the camera frame in the viewport has the photos' aspect ratio.
        context.scene.render.resolution_x = cameras.width
        context.scene.render.resolution_y = cameras.height
        context.scene.render.resolution_percentage = 100
    for obj in context.view_layer.objects:
        obj.select_set(False)
    for obj in objects:
        obj.select_set(True)
    context.view_layer.objects.active = objects[0]
    return objects


def import_nerf(
    context: bpy.types.Context, path: str | os.PathLike, set_resolution: bool = True
) -> list[bpy.types.Object]:
    """Cameras (selected) for the frames of a NeRF `transforms.json`."""
    from engine.camera_formats import read_nerf_transforms

    frames = read_nerf_transforms(path)
    name = Path(path).parent.name or "photos"
    return _import(context, frames.cameras, frames.image_paths, name, set_resolution)


def import_colmap(
    context: bpy.types.Context, folder: str | os.PathLike, set_resolution: bool = True
) -> list[bpy.types.Object]:
    """Cameras (selected) for the images of a COLMAP model (binary or text) in `folder`,
    `folder/sparse/0` or `folder/sparse`; photos from `folder/images`, `folder/input` or
    `folder` itself."""
    from engine.camera_formats import colmap_to_cameras, read_colmap

    folder = Path(folder)
    cameras, names = colmap_to_cameras(read_colmap(folder))
    for sub in COLMAP_IMAGE_DIRS:
        photos = [folder / sub / n for n in names]
        if all(p.is_file() for p in photos):
            break
    else:
        raise FileNotFoundError(
            f"{folder}: the photos of the COLMAP model (e.g. {names[0]}) are not in "
            f"{', '.join(str(folder / d) for d in COLMAP_IMAGE_DIRS)}"
        )
    return _import(context, cameras, photos, folder.name or "colmap", set_resolution)


def background_image(camera: bpy.types.Object) -> bpy.types.Image | None:
    """The first background image of a camera that has an image datablock, if any."""
    for background in camera.data.background_images:
        if background.image is not None:
            return background.image
    return None


def photo_view(camera: bpy.types.Object) -> tuple[np.ndarray, dict[str, Any], bpy.types.Image]:
    """(RGBA pixels, camera record, image) of a camera's background photo (main thread)."""
    image = background_image(camera)
    if image is None:
        raise CaptureError(
            f"camera '{camera.name}' has no background image; add the photo it took under "
            "Camera > Background Images, or import photos with Reconstruct > Import Photos"
        )
    pixels = read_image_pixels(image)
    height, width = pixels.shape[:2]
    return pixels, camera_record(camera, width, height), image


def prepare_views(
    views: Sequence[np.ndarray], records: Sequence[dict[str, Any]], size: int
) -> tuple[Any, Any]:
    """Square `size` x `size` RGBA views (V, S, S, 4) float32 tensor and their `Cameras`.

    Each view is cropped to its centred square and resized (bilinear with antialiasing, on
    alpha-premultiplied colour so transparent pixels do not bleed); the principal point
    moves with the crop and the intrinsics scale with the resize. Views already S x S pass
    through bit for bit.
    """
    import torch
    import torch.nn.functional as F

    from engine.camera_formats import from_blender
    from engine.cameras import Cameras

    images, cameras = [], []
    for rgba, record in zip(views, records, strict=True):
        height, width = rgba.shape[:2]
        camera = from_blender(**record)
        if (width, height) != (camera.width, camera.height):
            raise CaptureError(
                f"a {width}x{height} view has a {camera.width}x{camera.height} camera"
            )
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
        tensor = torch.from_numpy(np.ascontiguousarray(rgba[y0 : y0 + side, x0 : x0 + side]))
        scale = size / side
        if side != size:
            chw = tensor.permute(2, 0, 1)[None].float()
            chw = torch.cat([chw[:, :3] * chw[:, 3:], chw[:, 3:]], 1)
            chw = F.interpolate(
                chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            alpha = chw[:, 3:].clamp(0, 1)
            rgb = torch.where(alpha > 1e-6, chw[:, :3] / alpha.clamp_min(1e-6), 0.0)
            tensor = torch.cat([rgb.clamp(0, 1), alpha], 1)[0].permute(1, 2, 0)
        images.append(tensor.float())
        cameras.append(
            Cameras(
                camera.world_to_camera,
                camera.fx * scale,
                camera.fy * scale,
                (camera.cx - x0) * scale,
                (camera.cy - y0) * scale,
                size,
                size,
            )
        )
    return torch.stack(images).contiguous(), Cameras.cat(cameras)
