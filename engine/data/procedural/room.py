"""The Blender side of interior scenes: build a room from its spec (`room_spec.py`) and
render opaque RGB views with a depth map each (imports bpy).

Depth is Cycles' Depth (Z) pass: for a perspective camera, the distance from the camera
to the surface along the camera's viewing axis (planar depth, not the distance along the
ray), in world units (metres); Cycles averages it over a pixel's samples, so pixels on an
edge hold a blend. Where no surface is hit (the HDRI seen through an opening) Cycles
writes 1e10. The pass reaches Python through the compositor: a File Output node writes a
float EXR that is read back and deleted.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from .lighting import setup_world
from .materials import build_material
from .scene import (
    RenderSettings,
    configure,
    render_to,
    resync_next_render,
    set_camera,
    set_matrix,
)
from .shapes import build_part

ROOM_COLLECTION = "gd_room"
DEPTH_ITEM = "depth"
# Depths beyond this are "no surface" (Cycles writes 1e10 for the world background).
NO_SURFACE = 1e4


@dataclass
class RoomScene:
    """A worker's Blender scene set up for rooms, and the compositor node writing depth."""

    scene: bpy.types.Scene
    depth_node: bpy.types.Node
    depth_dir: Path


def configure_rooms(settings: RenderSettings) -> RoomScene:
    """`scene.configure` for opaque RGB renders (background kept, no transparent film) with
    the Depth pass written by the compositor to a private temporary folder as float EXR."""
    scene = configure(settings)
    render = scene.render
    render.film_transparent = False
    render.image_settings.color_mode = "RGB"
    render.use_compositing = True
    scene.cycles.diffuse_bounces = 3  # rooms are lit mostly by bounce light
    scene.view_layers[0].use_pass_z = True
    tree = bpy.data.node_groups.new("gd_compositor", "CompositorNodeTree")
    scene.compositing_node_group = tree
    layers = tree.nodes.new("CompositorNodeRLayers")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    group_out = tree.nodes.new("NodeGroupOutput")
    tree.links.new(layers.outputs["Image"], group_out.inputs[0])
    node = tree.nodes.new("CompositorNodeOutputFile")
    node.file_output_items.new("FLOAT", DEPTH_ITEM)
    node.format.media_type = "IMAGE"
    node.format.file_format = "OPEN_EXR"
    node.format.color_depth = "32"
    node.format.color_mode = "BW"
    node.format.exr_codec = "ZIP"
    depth_dir = Path(tempfile.mkdtemp(prefix="gd_depth_"))
    atexit.register(shutil.rmtree, depth_dir, True)  # the worker's folder goes with it
    node.directory = str(depth_dir) + "/"
    node.file_name = "view_"
    tree.links.new(layers.outputs["Depth"], node.inputs[DEPTH_ITEM])
    return RoomScene(scene, node, depth_dir)


def clear_room() -> None:
    """Remove the previous room's objects, meshes, materials, lights and texture images
    (the world's HDRIs stay loaded)."""
    ids: list[Any] = []
    collection = bpy.data.collections.get(ROOM_COLLECTION)
    if collection is not None:
        ids += list(collection.objects)
        ids.append(collection)
    ids += list(bpy.data.meshes) + list(bpy.data.materials) + list(bpy.data.lights)
    ids += [i for i in bpy.data.images if not i.filepath.endswith(".exr")]
    if ids:
        bpy.data.batch_remove(ids)


def build_room(rs: RoomScene, spec: dict[str, Any]) -> list[bpy.types.Object]:
    """Build the shell, furniture and lights of `spec` and set its world; returns the
    mesh objects."""
    clear_room()
    scene = rs.scene
    resync_next_render(scene)
    setup_world(scene, spec["world"])
    collection = bpy.data.collections.new(ROOM_COLLECTION)
    scene.collection.children.link(collection)
    objects = []
    shell_materials = [build_material(m, f"room{i}") for i, m in enumerate(spec["materials"])]
    for i, part in enumerate(spec["shell"]):
        obj = build_part(part, f"shell{i:02d}", collection)
        obj.data.materials.append(shell_materials[part["material"]])
        objects.append(obj)
    for k, item in enumerate(spec["furniture"]):
        materials = [build_material(m, f"item{k}_{j}") for j, m in enumerate(item["materials"])]
        for i, part in enumerate(item["parts"]):
            obj = build_part(part, f"item{k:02d}_{i:02d}", collection)
            obj.data.materials.append(materials[part["material"]])
            set_matrix(obj, np.asarray(item["matrix"]))
            objects.append(obj)
    for k, light in enumerate(spec["lights"]):
        data = bpy.data.lights.new(f"light{k}", "AREA")
        data.shape = "RECTANGLE"
        data.size, data.size_y = light["size"]
        data.energy = light["power"]
        data.color = light["color"]
        obj = bpy.data.objects.new(f"light{k}", data)
        # Not seen directly: a light's own surface has no depth (Cycles writes none), so
        # its rectangle would be a hole in the depth maps. Glossy reflections keep it.
        obj.visible_camera = False
        collection.objects.link(obj)
        matrix = np.eye(4)  # area lights emit along their -Z: down
        matrix[:3, 3] = light["position"]
        set_matrix(obj, matrix)
    return objects


def render_view(
    rs: RoomScene, c2w: np.ndarray, fov_deg: float, path: Path
) -> tuple[bpy.types.Object, np.ndarray]:
    """Render the view of camera-to-world `c2w` (4, 4) with horizontal fov `fov_deg` to
    an RGB PNG at `path`; returns the camera and its (H, W) float32 depth in metres
    (planar, along the viewing axis), rows top to bottom, NaN where no surface was hit."""
    camera = set_camera(rs.scene, c2w, fov_deg)
    for old in rs.depth_dir.glob("*.exr"):
        old.unlink()
    render_to(rs.scene, path)
    files = sorted(rs.depth_dir.glob("*.exr"))
    if len(files) != 1:
        raise RuntimeError(f"expected one depth EXR in {rs.depth_dir}, found {len(files)}")
    image = bpy.data.images.load(str(files[0]))
    try:
        width, height = image.size
        pixels = np.empty(width * height * image.channels, dtype=np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    files[0].unlink()
    depth = pixels.reshape(height, width, -1)[::-1, :, 0].copy()  # Blender rows: bottom up
    depth[~(depth < NO_SURFACE)] = np.nan
    return camera, depth
