"""Rendering selected cameras for the engine (main thread only).

Each view is rendered with the scene's own render engine at a square resolution, on a
transparent film (Reconstruct Scene keeps the scene's background: `transparent=False`),
with the Standard view transform (what the model was trained on), without compositor,
sequencer or motion blur, at a capture's own sample count (a scene set up for its final
frames, or Cycles' default of 4096, would take minutes a view). Every setting
touched is recorded first and restored in a `finally`, so an error, a cancel between views
or a failed render leaves the scene as it was.

Pixels come back as DESIGN.md §5 says they can headless: render with `write_still` to a
temporary PNG, `bpy.data.images.load`, `pixels.foreach_get`, then remove the image datablock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import bpy
import numpy as np


class CaptureError(ValueError):
    """A camera that cannot be used; the message names it."""


# Views are a network's input, not final frames: the training data had 4 samples and
# OpenImageDenoise (engine/data/procedural/scene.py). A scene already set to fewer keeps its
# own count; with fewer than the scene's, the denoiser is switched on.
CAPTURE_SAMPLES = 16
# Transparent layers a ray may cross: Cycles' default 8 renders stacked alpha-blended
# surfaces (splats of other tools, foliage cards) dark and smeared (DESIGN.md §5). A scene
# that allows more keeps its own.
CAPTURE_TRANSPARENT_BOUNCES = 64


# (path below the scene, attribute, value during capture). Order matters on restore too:
# media type before file format before colour mode and depth (their enums depend on it).
def _capture_settings(
    scene: bpy.types.Scene, size: int, transparent: bool = True
) -> list[tuple[Any, str, Any]]:
    render = scene.render
    image = render.image_settings
    settings: list[tuple[Any, str, Any]] = [
        (render, "resolution_x", size),
        (render, "resolution_y", size),
        (render, "resolution_percentage", 100),
        (render, "pixel_aspect_x", 1.0),
        (render, "pixel_aspect_y", 1.0),
        (render, "film_transparent", bool(transparent)),
        (render, "use_border", False),
        (render, "use_multiview", False),
        (render, "use_file_extension", True),
        (render, "use_compositing", False),
        (render, "use_sequencer", False),
        (render, "use_motion_blur", False),
        # Keeps the scene's BVH and the world's importance map between the views: ~0.1 s a
        # view at 128² on the CPU instead of ~0.85 s with an HDRI (DESIGN.md §5).
        (render, "use_persistent_data", True),
    ]
    settings += _sampling_settings(scene)
    if hasattr(image, "media_type"):  # Blender 5.0+
        settings.append((image, "media_type", "IMAGE"))
    settings += [
        (image, "file_format", "PNG"),
        (image, "color_mode", "RGBA"),
        (image, "color_depth", "8"),
        (image, "compression", 15),
        (scene.view_settings, "view_transform", "Standard"),
        (scene.view_settings, "look", "None"),
        (scene.view_settings, "exposure", 0.0),
        (scene.view_settings, "gamma", 1.0),
    ]
    return [(owner, attr, value) for owner, attr, value in settings if hasattr(owner, attr)]


def _sampling_settings(scene: bpy.types.Scene) -> list[tuple[Any, str, Any]]:
    """Sample count (and what goes with it) for the scene's render engine."""
    engine = scene.render.engine
    if engine == "CYCLES" and hasattr(scene, "cycles"):
        cycles = scene.cycles
        samples = min(int(cycles.samples), CAPTURE_SAMPLES)
        settings = [
            (cycles, "samples", samples),
            (cycles, "use_adaptive_sampling", False),  # the same noise in every view
            (cycles, "transparent_max_bounces",
             max(int(cycles.transparent_max_bounces), CAPTURE_TRANSPARENT_BOUNCES)),
        ]  # fmt: skip
        if samples < cycles.samples:
            # Denoised the way the training data was (engine/data/procedural/scene.py):
            # OpenImageDenoise's FAST quality and prefilter, also 2.5x quicker than the
            # default HIGH/ACCURATE at 256² (0.81 vs 2.07 s a view, measured).
            settings += [(cycles, "use_denoising", True),
                         (cycles, "denoising_quality", "FAST"),
                         (cycles, "denoising_prefilter", "FAST")]  # fmt: skip
        return settings
    if engine.startswith("BLENDER_EEVEE"):
        eevee = scene.eevee
        return [(eevee, "taa_render_samples", min(int(eevee.taa_render_samples), CAPTURE_SAMPLES))]
    return []  # Workbench: one sample a pixel anyway


@contextlib.contextmanager
def capture_settings(scene: bpy.types.Scene, size: int, transparent: bool = True) -> Iterator[None]:
    """Apply the capture settings; restore every one of them (and the scene camera and
    render file path) on exit, whatever happened. `transparent`: film transparent (the
    prop alone) or not (the scene's background renders too)."""
    settings = _capture_settings(scene, size, transparent)
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in settings]
    saved += [(scene.render, "filepath", scene.render.filepath), (scene, "camera", scene.camera)]
    had_result = any(image.type == "RENDER_RESULT" for image in bpy.data.images)
    try:
        for owner, attr, value in settings:
            setattr(owner, attr, value)
        yield
    finally:
        errors = []
        for owner, attr, value in saved:
            try:
                if getattr(owner, attr) != value:
                    setattr(owner, attr, value)
            except (AttributeError, TypeError, ValueError) as err:  # keep restoring the rest
                errors.append(f"{attr}: {err}")
        if errors:
            print("gd_splat: could not restore", "; ".join(errors))
        if not had_result:  # rendering creates "Render Result"; leave no trace of ours
            for image in [i for i in bpy.data.images if i.type == "RENDER_RESULT"]:
                bpy.data.images.remove(image)


def check_camera(obj: bpy.types.Object) -> None:
    """Raise CaptureError unless `obj` is a perspective camera."""
    if obj is None or obj.type != "CAMERA":
        raise CaptureError(f"'{getattr(obj, 'name', obj)}' is not a camera")
    if obj.data.type != "PERSP":
        kind = {"ORTHO": "orthographic", "PANO": "panoramic"}.get(obj.data.type, obj.data.type)
        raise CaptureError(
            f"camera '{obj.name}' is {kind}; only perspective cameras can be used "
            "(set Camera > Lens > Type to Perspective)"
        )


def camera_record(obj: bpy.types.Object, width: int, height: int) -> dict[str, Any]:
    """The `from_blender` keyword arguments of camera `obj` for a width x height image."""
    check_camera(obj)
    cam = obj.data
    return {
        "matrix_world": [list(row) for row in obj.matrix_world],
        "lens": cam.lens,
        "sensor_width": cam.sensor_width,
        "sensor_height": cam.sensor_height,
        "sensor_fit": cam.sensor_fit,
        "shift_x": cam.shift_x,
        "shift_y": cam.shift_y,
        "resolution_x": int(width),
        "resolution_y": int(height),
    }


def read_image_pixels(image: bpy.types.Image) -> np.ndarray:
    """(H, W, 4) float32 straight RGBA, top row first, of a loaded image.

    For 8-bit files Blender gives the stored values / 255 (no colour conversion), i.e.
    sRGB-encoded like the PNGs the engine trains on.
    """
    width, height = image.size
    if width == 0 or height == 0:
        raise CaptureError(f"image '{image.name}' has no pixels (missing file {image.filepath!r}?)")
    channels = image.channels
    buffer = np.empty(width * height * channels, np.float32)
    image.pixels.foreach_get(buffer)
    pixels = buffer.reshape(height, width, channels)[::-1]  # Blender stores bottom row first
    if channels == 4:
        return np.ascontiguousarray(pixels)
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., : min(channels, 3)] = pixels[..., :3]
    if channels < 3:
        rgba[..., 1:3] = pixels[..., :1]
    return rgba


def read_png(path: Path) -> np.ndarray:
    """Load `path` as a temporary image datablock, read its pixels, remove the datablock."""
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        return read_image_pixels(image)
    finally:
        bpy.data.images.remove(image)


def render_view(
    scene: bpy.types.Scene,
    camera: bpy.types.Object,
    size: int,
    path: Path,
    transparent: bool = True,
) -> np.ndarray:
    """Render `camera` at size x size to the PNG `path`; returns its (H, W, 4) RGBA
    (`transparent=False`: the world shows behind the scene, alpha 1)."""
    check_camera(camera)
    path.parent.mkdir(parents=True, exist_ok=True)
    with capture_settings(scene, size, transparent):
        scene.camera = camera
        scene.render.filepath = str(path)
        result = bpy.ops.render.render(write_still=True, scene=scene.name)
    if "FINISHED" not in result or not path.is_file():
        raise CaptureError(f"rendering camera '{camera.name}' failed ({result})")
    return read_png(path)


def render_view_hiding(
    scene: bpy.types.Scene,
    camera: bpy.types.Object,
    size: int,
    path: Path,
    hidden: list[bpy.types.Object],
    transparent: bool = True,
) -> np.ndarray:
    """`render_view` with the `hidden` objects (earlier splat objects) hidden from the render
    and restored after: the engine must see the prop, not earlier reconstructions of it."""
    saved = [(obj, obj.hide_render) for obj in hidden]
    try:
        for obj, _ in saved:
            obj.hide_render = True
        return render_view(scene, camera, size, path, transparent)
    finally:
        for obj, value in saved:
            if obj.hide_render != value:
                obj.hide_render = value


def to_local(records: Sequence[dict[str, Any]], matrix_world: Any) -> list[dict[str, Any]]:
    """Camera records re-expressed in an object's local frame (for views stored on it).

    A camera sees object-local points through `inv(M) @ C` (C: the camera's matrix_world,
    M: the object's). With a uniform object scale s, perspective projection cannot tell a
    scene from the same scene scaled about the camera, so dividing the translation by s
    keeps the camera rigid. Non-uniform scales have no rigid equivalent and are refused.
    """
    m = np.asarray(matrix_world, dtype=np.float64)
    scales = np.linalg.norm(m[:3, :3], axis=0)
    if not np.allclose(scales, scales[0], rtol=1e-5):
        raise CaptureError(
            "the object has a non-uniform scale; apply it (Ctrl+A > Scale) before densifying"
        )
    inv = np.linalg.inv(m)
    out = []
    for record in records:
        c = inv @ np.asarray(record["matrix_world"], dtype=np.float64)
        c[:3, :3] *= scales[0]  # remove the 1/s the inverse put on the rotation...
        out.append({**record, "matrix_world": c.tolist()})  # ...translation already / s
    return out
