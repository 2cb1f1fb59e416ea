"""The "photo" render mode: a generated prop standing on a textured ground plane in its HDRI
environment, rendered opaque (background visible, no alpha) as JPEG, from cameras already
in a dataset (imports bpy).

Photos of a prop are what a user brings to "Reconstruct from photos"; rendering them from
the same cameras as the dataset's alpha PNGs lets `bench/photos.py` compare reconstruction
from photos (foreground masks estimated) with reconstruction from exact alpha.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
import numpy as np

from .assets import PHOTOS
from .materials import build_material
from .scene import BuiltProp, build_prop, render_to, set_camera, set_matrix

GROUND_NAME = "gd_ground"
# Ground textures: photos of surfaces a prop could stand on (scikit-image's bundled data).
GROUND_PHOTOS = ("brick", "grass", "gravel", "page", "coffee", "chelsea")


def ground_spec(rng: np.random.Generator) -> dict[str, Any]:
    """A material spec (`materials.build_material`) for the ground: a tiled photo."""
    name = str(rng.choice([p for p in GROUND_PHOTOS if p in PHOTOS]))
    repeat = float(rng.uniform(6.0, 14.0))
    tint = rng.uniform(0.6, 1.0, 3)
    return {
        "base": {
            "kind": "photo",
            "photo": {"name": name, "crop": [0.0, 0.0, 1.0, 1.0], "tint": tint.round(4).tolist()},
            "repeat": [repeat, repeat],
        },
        "roughness": float(rng.uniform(0.6, 0.95)),
        "metallic": 0.0,
        "coat": 0.0,
        "bump": 0.0,
    }


def add_ground(
    built: BuiltProp, rng: np.random.Generator, size: float = 20.0, lights_prop: bool = False
) -> bpy.types.Object:
    """A square textured plane of side `size` under the prop, touching its lowest point.

    The prop casts its shadow on the ground either way. Unless `lights_prop`, the ground is
    invisible to the prop's own light paths (Cycles ray visibility: no bounce light, no
    shadow on the prop, the HDRI's lower half still lights it), so the prop's pixels are lit
    as in the dataset's alpha renders and the photos differ from them by the background
    (what masks must remove), not by relighting that no mask can undo.
    """
    old = bpy.data.objects.get(GROUND_NAME)
    if old is not None:
        bpy.data.objects.remove(old)
    mesh = bpy.data.meshes.new(GROUND_NAME)
    h = size / 2
    mesh.from_pydata([(-h, -h, 0), (h, -h, 0), (h, h, 0), (-h, h, 0)], [], [(0, 1, 2, 3)])
    uv = mesh.uv_layers.new(name="UVMap")
    uv.data.foreach_set("uv", [0, 0, 1, 0, 1, 1, 0, 1])
    mesh.materials.append(build_material(ground_spec(rng), "gd_ground_mat"))
    obj = bpy.data.objects.new(GROUND_NAME, mesh)
    bpy.context.scene.collection.objects.link(obj)
    if not lights_prop:
        obj.visible_diffuse = obj.visible_glossy = obj.visible_transmission = False
        obj.visible_shadow = False
    matrix = np.eye(4)
    matrix[2, 3] = float(built.bbox_min[2])
    set_matrix(obj, matrix)
    return obj


def configure_photo(scene: bpy.types.Scene, quality: int = 90) -> None:
    """Opaque film (the HDRI is the visible background) and JPEG output."""
    scene.render.film_transparent = False
    image = scene.render.image_settings
    image.file_format, image.color_mode, image.quality = "JPEG", "RGB", quality


def render_photos(
    scene: bpy.types.Scene,
    spec: dict[str, Any],
    camera_to_world: np.ndarray,
    fov_deg: float,
    out_dir: Path,
    seed: int,
    ground_lights_prop: bool = False,
) -> list[Path]:
    """Build the prop of `spec` on a ground plane and render one JPEG a camera.

    Args:
        camera_to_world: (V, 4, 4) Blender/OpenGL camera-to-world matrices.
        fov_deg: horizontal field of view shared by the views.
        seed: picks the ground texture.
        ground_lights_prop: let the ground bounce light onto and shadow the prop (see
            `add_ground`).
    Returns:
        The V paths `out_dir/000.jpg`, ...
    """
    built = build_prop(scene, spec)
    add_ground(built, np.random.default_rng([seed, 11]), lights_prop=ground_lights_prop)
    configure_photo(scene)
    paths = []
    for k, c2w in enumerate(camera_to_world):
        set_camera(scene, c2w, fov_deg)
        path = out_dir / f"{k:03d}.jpg"
        render_to(scene, path)
        paths.append(path)
    return paths
