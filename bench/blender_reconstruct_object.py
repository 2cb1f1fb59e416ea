"""The add-on's one-button workflow end to end, with the shipped object-small weights.

    python bench/blender_reconstruct_object.py [--seconds 30] [--views 16] [--region-seconds 10]

A textured Suzanne (Blender's colour-grid image, a sun and a grey world) in an empty scene:
Reconstruct Object (a rig of --views cameras, Cycles captures at the model's resolution,
the model on a spread subset, refinement for --seconds against all views with held-out
PSNR), then Refine for --region-seconds on a Region box over one side of the head. Prints
the operators' own reports (counts, times, held-out PSNR) and checks that the rig left no
camera behind. Run by hand; timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _scene(bpy) -> object:
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    world = bpy.data.worlds.new("Grey")
    with warnings.catch_warnings():  # deprecated for 6.0, still how 5.0 makes the tree
        warnings.simplefilter("ignore", DeprecationWarning)
        world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.8, 0.8, 0.8, 1.0)
    scene.world = world
    bpy.ops.mesh.primitive_monkey_add(size=1.0, location=(0.3, -0.2, 0.5))
    prop = bpy.context.active_object
    prop.name = "Suzanne"
    bpy.ops.object.shade_smooth()
    image = bpy.data.images.new("grid", 256, 256)
    image.generated_type = "COLOR_GRID"
    material = bpy.data.materials.new("grid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        material.use_nodes = True
    texture = material.node_tree.nodes.new("ShaderNodeTexImage")
    texture.image = image
    bsdf = material.node_tree.nodes["Principled BSDF"]
    material.node_tree.links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
    prop.data.materials.append(material)
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = (0.6, 0.2, 0.8)
    sun.data.energy = 3.0
    scene.collection.objects.link(sun)
    for obj in scene.objects:
        obj.select_set(obj == prop)
    bpy.context.view_layer.objects.active = prop
    bpy.context.view_layer.update()
    return scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="Refine Seconds (default 30)")
    parser.add_argument("--views", type=int, default=16, help="Rig Views (default 16)")
    parser.add_argument("--region-seconds", type=float, default=10.0)
    args = parser.parse_args()
    import bpy

    importlib.import_module("addon_utils").enable("gd_blender_addon", default_set=True)
    scene = _scene(bpy)
    scene.gd_splat.refine_seconds = args.seconds
    scene.gd_splat.rig_views = args.views
    start = time.perf_counter()
    result = bpy.ops.gd.reconstruct_object()
    print(f"Reconstruct Object: {result}, {time.perf_counter() - start:.1f} s wall")
    obj = bpy.context.active_object
    print(f"{obj.name}: {len(obj.data.points):,} Gaussians, {len(obj.gd_splat.views)} stored "
          f"views; cameras left in the file: {[c.name for c in bpy.data.cameras]}")  # fmt: skip
    region = bpy.data.objects.new("Region", None)
    region.empty_display_type = "CUBE"
    region.empty_display_size = 0.25
    region.location = (0.3, -0.6, 0.6)
    scene.collection.objects.link(region)
    bpy.context.view_layer.update()
    scene.gd_splat.region = region
    scene.gd_splat.refine_seconds = args.region_seconds
    start = time.perf_counter()
    result = bpy.ops.gd.refine()
    print(f"Refine (Region): {result}, {time.perf_counter() - start:.1f} s wall")


if __name__ == "__main__":
    main()
