"""Photos with known poses as Blender cameras, and views ready for the engine.

Importing a NeRF `transforms.json` or a COLMAP folder creates one camera object a photo,
with the photo as its background image (what the camera shows in the viewport), in a new
collection. Reconstruct from photos then reads those background images, or the background
images of any cameras the user set up by hand.

`prepare_views` turns views of any size into the square inputs the model wants: a centred
square crop, resized, with the intrinsics moved and scaled to match (pure torch, runs in the
worker thread).

Photos are cut out before the model sees them (the panel's Masks: Auto / Alpha / Mask Files
/ None; `engine.masks` does the work): mask files replace the photos' alpha on the
main thread (`apply_mask_files`), estimated masks are made in the worker (`masked_work`),
and Preview Masks shows photos | cut-outs as an image first. Captures of cameras are
checked the same way: a render that shows nothing stops Reconstruct before anything is
created. Import Photos changes the render resolution only when asked, and says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import bpy
import numpy as np
from mathutils import Matrix

from .camera_capture import CaptureError, camera_record, read_image_pixels

# The panel's Masks option -> engine.masks mode.
MASK_MODES = {"AUTO": "auto", "ALPHA": "alpha", "FILES": "files", "NONE": "none"}
# Custom property on a camera's data: its photo's mask file, recorded by Import Photos.
MASK_PATH_KEY = "gd_mask_path"
PREVIEW_IMAGE = "GD Mask Preview"


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
    mask_paths: Sequence[Path | None] = (),
) -> list[bpy.types.Object]:
    from engine.camera_formats import to_blender

    missing = [str(p) for p in photos if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} photo(s) not found, e.g. {missing[0]}")
    collection = _new_collection(context, name)
    objects = []
    for i, (settings, photo) in enumerate(zip(to_blender(cameras), photos, strict=True)):
        obj = _add_camera(collection, f"{name}.{i:03d} {Path(photo).stem}", settings, Path(photo))
        if i < len(mask_paths) and mask_paths[i] is not None:
            obj.data[MASK_PATH_KEY] = str(Path(mask_paths[i]).resolve())
        objects.append(obj)
    # Only on request (Import Photos' "Set Render Resolution", off by default and reported):
    # the render resolution belongs to the user's scene.
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
    context: bpy.types.Context, path: str | os.PathLike, set_resolution: bool = False
) -> list[bpy.types.Object]:
    """Cameras (selected) for the frames of a NeRF `transforms.json` (a frame's `mask_path`
    is remembered on its camera for the Mask Files option)."""
    from engine.views import nerf_files

    files = nerf_files(path)
    name = files.source.parent.name or "photos"
    return _import(
        context, files.cameras, files.image_paths, name, set_resolution, files.mask_paths
    )


def import_colmap(
    context: bpy.types.Context, folder: str | os.PathLike, set_resolution: bool = False
) -> list[bpy.types.Object]:
    """Cameras (selected) for the images of a COLMAP model (binary or text) in `folder`,
    `folder/sparse/0` or `folder/sparse`; photos from `folder/images`, `folder/input` or
    `folder` itself (`engine.views.colmap_files`)."""
    from engine.views import colmap_files

    files = colmap_files(folder)
    name = files.source.name or "colmap"
    return _import(
        context, files.cameras, files.image_paths, name, set_resolution, files.mask_paths
    )


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


# ---------------------------------------------------------------------------- masks


def mask_file(camera: bpy.types.Object) -> Path | None:
    """The foreground mask file of a camera's photo: the one Import Photos recorded (a
    frame's `mask_path`, a COLMAP `masks/` folder), else a `masks/` folder beside the photo
    or beside its folder holding a file of the photo's name; None when there is none."""
    from engine.masks import find_mask_file

    recorded = camera.data.get(MASK_PATH_KEY)
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    image = background_image(camera)
    if image is None or not image.filepath:
        return None
    photo = Path(bpy.path.abspath(image.filepath))
    for folder in (photo.parent / "masks", photo.parent.parent / "masks"):
        found = find_mask_file(photo, folder)
        if found is not None and found != photo:
            return found
    return None


def apply_mask_files(
    pixels: np.ndarray, camera: bpy.types.Object, mode: str
) -> tuple[np.ndarray, bool]:
    """The photo's RGBA with its alpha replaced by its mask file when `mode` (panel value)
    asks for files, or is AUTO and the photo has no alpha; (pixels, whether a file was used).

    Raises:
        CaptureError: FILES and the camera has no mask file.
    """
    from engine.masks import alpha_usable, read_mask

    if mode not in ("FILES", "AUTO"):
        return pixels, False
    if mode == "AUTO" and alpha_usable(pixels[None, ..., 3]):
        return pixels, False  # the photo's own alpha wins (the engine's rule, per view)
    path = mask_file(camera)
    if path is None:
        if mode == "FILES":
            raise CaptureError(
                f"camera '{camera.name}' has no mask file (a masks/ folder beside its photo "
                "with a file of the photo's name, or mask_path in transforms.json)"
            )
        return pixels, False
    out = pixels.copy()
    out[..., 3] = read_mask(path, (pixels.shape[1], pixels.shape[0]))
    return out, True


def mask_strip(images: Any, masked: Any) -> np.ndarray:
    """(2S, V*S, 4) float RGBA strip for the preview: the photos on top, below them each
    photo cut out by its mask on white (what the model will read)."""
    photos = images[..., :3].numpy()
    alpha = masked[..., 3:].numpy()
    cut = masked[..., :3].numpy() * alpha + (1.0 - alpha)
    top = np.concatenate(list(photos), axis=1)
    bottom = np.concatenate(list(cut), axis=1)
    rgb = np.concatenate([top, bottom], axis=0)
    return np.concatenate([rgb, np.ones((*rgb.shape[:2], 1), np.float32)], -1)


def show_preview(strip: np.ndarray) -> bpy.types.Image:
    """The strip as the image datablock `PREVIEW_IMAGE` (replaced if it exists), shown in
    every open Image Editor."""
    height, width = strip.shape[:2]
    image = bpy.data.images.get(PREVIEW_IMAGE)
    if image is not None and tuple(image.size) != (width, height):
        bpy.data.images.remove(image)
        image = None
    if image is None:
        image = bpy.data.images.new(PREVIEW_IMAGE, width, height, alpha=True)
    # Blender stores the bottom row first; the pixels are sRGB-encoded like the photos.
    image.colorspace_settings.name = "sRGB"
    image.pixels.foreach_set(np.ascontiguousarray(strip[::-1], np.float32).ravel())
    image.update()
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
    return image


class MaskRequest(NamedTuple):
    """How the views of one Reconstruct are cut out.

    Attributes:
        mode: "RENDER" (captures of cameras: alpha from the transparent film, checked not
            empty) or a panel value (AUTO, ALPHA, FILES, NONE).
        from_files: the views' alpha already holds their mask files (`apply_mask_files`).
        names: the cameras' names, for messages.
    """

    mode: str
    from_files: bool
    names: list[str]


def apply_masks(
    views: Sequence[np.ndarray], records: Sequence[dict[str, Any]], request: MaskRequest
) -> tuple[list[np.ndarray], Any]:
    """Views (H, W, 4) whose alpha is the prop's foreground, and the `Masks` (or None).

    Runs in the worker. Masks are estimated at most `MaskConfig.work_side` a side and
    resized back to each view.
    Raises:
        CaptureError: a capture shows nothing, or the masks are missing or implausible; the
            message names the camera and says nothing was created.
    """
    import torch

    from engine.camera_formats import from_blender
    from engine.cameras import Cameras
    from engine.masks import MaskConfig, MaskError, check_masks

    def name(text: str) -> str:  # "view 2 ..." -> "camera 'Cam.002' ..."
        for k, camera in enumerate(request.names):
            text = text.replace(f"view {k} ", f"camera '{camera}' ", 1)
        return text

    views = [np.asarray(v, np.float32) for v in views]
    if request.mode == "NONE":
        return views, None
    if request.mode == "RENDER" or request.from_files:
        source = "render" if request.mode == "RENDER" else "files"
        for k, view in enumerate(views):
            try:
                check_masks(view[None, ..., 3], source)  # its message names "view 0"
            except MaskError as err:
                text = str(err).replace("view 0 ", f"camera '{request.names[k]}' ", 1)
                raise CaptureError(f"{text}. Nothing was created.") from None
        return views, None
    try:
        sizes = {v.shape[:2] for v in views}
        if len(sizes) != 1:
            raise MaskError("the photos differ in size; give mask files to cut them out")
        import cv2

        height, width = views[0].shape[:2]
        side = MaskConfig().work_side * 2  # the estimate works at work_side; keep some margin
        scale = min(1.0, side / max(width, height))
        sw, sh = max(8, round(width * scale)), max(8, round(height * scale))
        small = [cv2.resize(v, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1 else v
                 for v in views]  # fmt: skip
        cameras = Cameras.cat([from_blender(**r) for r in records]).scaled(sw, sh)
        from engine.masks import resolve_masks

        masks = resolve_masks(torch.from_numpy(np.stack(small)), cameras, MASK_MODES[request.mode])
    except MaskError as err:
        raise CaptureError(f"{name(str(err))}. Nothing was created.") from None
    out = []
    for view, alpha in zip(views, masks.alphas.numpy(), strict=True):
        if alpha.shape != view.shape[:2]:
            alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
        cut = view.copy()
        cut[..., 3] = np.clip(alpha, 0.0, 1.0)
        out.append(cut)
    return out, masks


def masked_work(
    work: Callable[[list[np.ndarray], Any, Any], Any],
    views: list[np.ndarray],
    records: list[dict[str, Any]],
    request: MaskRequest,
    progress: Callable[[float, str], None],
    cancel: Any,
) -> Any:
    """Worker: cut out (or check) the views, then `work(views, progress, cancel)`; the
    result gets a `masks` attribute (`engine.masks.Masks` or None) for the report."""
    progress(0.05, "finding the prop in the views" if request.mode != "RENDER" else "checking")
    views, masks = apply_masks(views, records, request)
    result = work(views, progress, cancel)
    # A result type without room for it (slots) goes without; the report then says less.
    with contextlib.suppress(AttributeError):
        result.masks = masks
    return result


def resolution_note(
    context: bpy.types.Context, cameras: Sequence[bpy.types.Object], before: tuple[int, int, int]
) -> str:
    """What Import Photos did (or did not do) to the scene's render resolution, for its
    report: the change when Set Render Resolution was on, else a hint when the camera
    frames will not match the photos' aspect."""
    render = context.scene.render
    now = (render.resolution_x, render.resolution_y, render.resolution_percentage)
    image = background_image(cameras[0]) if cameras else None
    width, height = tuple(image.size) if image is not None else (0, 0)
    if now != before:
        return (f"render resolution set to {now[0]}x{now[1]} (was {before[0]}x{before[1]} "
                f"at {before[2]}%)")  # fmt: skip
    if width and height and abs(width / height - now[0] / max(now[1], 1)) > 1e-3:
        return (f"render resolution left at {now[0]}x{now[1]}; the photos are {width}x"
                f"{height}, so camera frames show another aspect (Set Render Resolution "
                "matches them)")  # fmt: skip
    return f"render resolution left at {now[0]}x{now[1]}"


def preview_masks(
    cameras: Sequence[bpy.types.Object], mode: str, size: int = 256
) -> tuple[bpy.types.Image, Any]:
    """Cut the cameras' photos out as Reconstruct would and show photos | cut-outs as the
    image `PREVIEW_IMAGE` (each view cropped to the square the model reads, `size` px).

    Returns:
        (the preview image, `engine.masks.Masks` or None).
    Raises:
        CaptureError: no photo, missing mask files, implausible masks.
    """
    views, records, used = [], [], []
    for camera in cameras:
        pixels, record, _ = photo_view(camera)
        pixels, from_file = apply_mask_files(pixels, camera, mode)
        views.append(pixels)
        records.append(record)
        used.append(from_file)
    request = MaskRequest(mode, bool(used) and all(used), [c.name for c in cameras])
    masked, masks = apply_masks(views, records, request)
    opaque = [np.concatenate([v[..., :3], np.ones_like(v[..., :1])], -1) for v in views]
    photos_sq, _ = prepare_views(opaque, records, size)
    masked_sq, _ = prepare_views(masked, records, size)
    return show_preview(mask_strip(photos_sq, masked_sq)), masks
