"""The Blender scene of one generator process: render settings, building a prop from its
spec (normalised into [-0.5, 0.5]^3), cameras and rendering (imports bpy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from .lighting import setup_world
from .materials import build_material
from .shapes import build_part, evaluated_vertices, surface_samples

CAMERA_NAME = "gd_camera"
PROP_COLLECTION = "gd_prop"


@dataclass
class RenderSettings:
    """Cycles settings for one worker.

    Attributes:
        resolution: square image side in pixels.
        samples: path-traced samples a pixel; few, because OIDN (fast mode, with albedo
            and normal guides) cleans up the rest at a small fraction of the cost of more
            samples (measured at 256^2 on one core: 4 spp + OIDN fast ~0.33 s a view).
        denoise: run OpenImageDenoise.
        threads: CPU threads for this process (one per worker process works best).
    """

    resolution: int = 256
    samples: int = 4
    denoise: bool = True
    threads: int = 1


def configure(settings: RenderSettings) -> bpy.types.Scene:
    """Start from an empty factory scene set up for RGBA Cycles renders on the CPU."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = settings.samples
    cycles.use_adaptive_sampling = False
    cycles.use_denoising = settings.denoise
    cycles.denoiser = "OPENIMAGEDENOISE"
    cycles.denoising_quality = "FAST"
    cycles.denoising_input_passes = "RGB_ALBEDO_NORMAL"
    cycles.denoising_prefilter = "FAST"
    # Props need a few bounces for glossy inter-reflection, not caustics.
    cycles.max_bounces, cycles.diffuse_bounces, cycles.glossy_bounces = 4, 2, 2
    cycles.transmission_bounces, cycles.transparent_max_bounces = 2, 4
    cycles.caustics_reflective = cycles.caustics_refractive = False
    cycles.blur_glossy = 1.0  # filter glossy: fewer fireflies at 4 spp
    cycles.sample_clamp_indirect = 5.0
    cycles.seed = 0
    render = scene.render
    render.resolution_x = render.resolution_y = settings.resolution
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    render.film_transparent = True
    render.use_persistent_data = True  # keeps BVH and world between the views of a prop
    render.threads_mode = "FIXED"
    render.threads = settings.threads
    image = render.image_settings
    image.file_format, image.color_mode, image.color_depth = "PNG", "RGBA", "8"
    image.compression = 15  # PNG deflate level: mostly speed, files stay small at 256^2
    # Standard sRGB view: texture and photo colours come out as authored.
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    camera = bpy.data.objects.new(CAMERA_NAME, bpy.data.cameras.new(CAMERA_NAME))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.data.sensor_fit = "HORIZONTAL"
    camera.data.clip_start, camera.data.clip_end = 0.01, 100.0
    return scene


def clear_prop(scene: bpy.types.Scene) -> None:
    """Remove the previous prop's objects, meshes, materials and texture images (the
    world's HDRIs stay loaded)."""
    collection = bpy.data.collections.get(PROP_COLLECTION)
    ids: list[Any] = []
    if collection is not None:
        ids += list(collection.objects)
        ids.append(collection)
    ids += [m for m in bpy.data.meshes]
    ids += [m for m in bpy.data.materials]
    ids += [i for i in bpy.data.images if not i.filepath.endswith(".exr")]
    if ids:
        bpy.data.batch_remove(ids)
    resync_next_render(scene)


def resync_next_render(scene: bpy.types.Scene) -> None:
    """Make the next render sync the whole scene afresh (after a prop or room was replaced).

    Cycles' persistent data keeps what it synced by datablock; a new prop's materials and
    images, allocated where the removed ones were, could be taken for them and drawn with
    their textures (a prop showing the previous prop's photo or label, depending on what
    the session rendered before). The next view renders without persistent data (Cycles
    then drops what it kept), and `render_to` turns it back on for the views after it."""
    scene.render.use_persistent_data = False


@dataclass
class BuiltProp:
    """A prop in the scene after normalisation.

    Attributes:
        objects: its Blender objects.
        vertices: (N, 3) world positions of every evaluated vertex.
        bbox_min, bbox_max: (3,) world bounding box, inside [-0.5, 0.5]^3.
        radius: distance from the origin to the farthest vertex.
        normalisation: (4, 4) matrix applied after pose (uniform scale and translation).
    """

    objects: list[bpy.types.Object]
    vertices: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    radius: float
    normalisation: np.ndarray


def build_prop(scene: bpy.types.Scene, spec: dict[str, Any]) -> BuiltProp:
    """Build the prop of `spec`, pose it (rotation x stretch), then scale and centre it so
    its bounding box's largest side is spec["extent"] and its centre the origin."""
    clear_prop(scene)
    setup_world(scene, spec["world"])
    collection = bpy.data.collections.new(PROP_COLLECTION)
    scene.collection.children.link(collection)
    materials = [build_material(m, f"mat{i}") for i, m in enumerate(spec["materials"])]
    pose = np.eye(4)
    pose[:3, :3] = np.asarray(spec["rotation"]) @ np.diag(spec["stretch"])
    objects = []
    for i, part in enumerate(spec["parts"]):
        obj = build_part(part, f"part{i:02d}", collection)
        obj.data.materials.append(materials[part["material"]])
        set_matrix(obj, pose)
        objects.append(obj)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    verts = np.concatenate([evaluated_vertices(o, depsgraph) for o in objects])
    lo, hi = verts.min(0), verts.max(0)
    scale = spec["extent"] / float((hi - lo).max())
    norm = np.diag([scale, scale, scale, 1.0])
    norm[:3, 3] = -scale * 0.5 * (lo + hi)
    for obj in objects:
        set_matrix(obj, norm @ pose)
    verts = verts * scale + norm[:3, 3]
    return BuiltProp(
        objects, verts, verts.min(0), verts.max(0), float(np.linalg.norm(verts, axis=1).max()), norm
    )


def set_matrix(obj: bpy.types.Object, matrix: np.ndarray) -> None:
    """Set an object's `matrix_world` from a (4, 4) numpy matrix."""
    from mathutils import Matrix

    obj.matrix_world = Matrix(np.asarray(matrix).tolist())


def set_camera(scene: bpy.types.Scene, c2w: np.ndarray, fov_deg: float) -> bpy.types.Object:
    """Place the scene camera at the OpenGL/Blender camera-to-world `c2w` (4, 4) with a
    horizontal field of view of `fov_deg`."""
    camera = scene.camera
    camera.data.lens_unit = "FOV"
    camera.data.angle = np.radians(fov_deg)
    set_matrix(camera, c2w)
    return camera


def rendered_cameras(scene: bpy.types.Scene, matrices: list[np.ndarray]) -> Any:
    """`engine.cameras.Cameras` of views rendered by the scene camera's current lens and
    the render settings, from the (4, 4) `matrix_world`s Blender rendered them with."""
    from engine.camera_formats import from_blender

    data, render = scene.camera.data, scene.render
    return from_blender(
        np.stack(matrices), data.lens, data.sensor_width, data.sensor_height,
        data.sensor_fit, data.shift_x, data.shift_y, render.resolution_x,
        render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y,
        render.resolution_percentage,
    )  # fmt: skip


def render_to(scene: bpy.types.Scene, path: Path) -> None:
    """Render the scene camera's view to an RGBA PNG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    scene.render.use_persistent_data = True  # off for a new prop's first view


def surface_points(built: BuiltProp, rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3) random world points on the built prop's surface (see `surface_samples`)."""
    return surface_samples(built.objects, bpy.context.evaluated_depsgraph_get(), rng, count)
