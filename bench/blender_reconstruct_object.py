"""The add-on's one-button workflow end to end, with the shipped object-small weights.

    python bench/blender_reconstruct_object.py [--seconds 30] [--views 16] [--region-seconds 10]
        [--novel 4] [--out docs/blender_reconstruct_object.png]
        [--results bench/results/blender_reconstruct_object.md]

A textured Suzanne (Blender's colour-grid image, a sun and a grey world) in an empty scene:
Reconstruct Object (a rig of --views cameras, Cycles captures at the model's resolution,
the model on a spread subset, refinement for --seconds against all views with held-out
PSNR), then Refine for --region-seconds on a Region box over one side of the head. Prints
the operators' own reports (counts, times, held-out PSNR) and checks that the rig left no
camera behind. Run by hand; timings depend on the machine's load.

Then what an artist sees: --novel cameras the rig never had (between its rows, 25° up,
at the rig's distance) render the mesh and the splat object with Cycles through the
add-on's own capture settings (the splat with the scene's Cycles settings as the add-on
left them), and the splat with the engine's rasteriser; both are scored against the mesh
render on white (PSNR over the whole image and over the mesh's pixels, alpha > 0.5).
--out writes mesh | Cycles splat | engine splat, a row a view; --results the numbers with
the machine, the command and the date.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

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


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 3) straight RGBA composited on white (the model's background)."""
    return rgba[..., :3] * rgba[..., 3:4] + (1.0 - rgba[..., 3:4])


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = float(diff[mask].mean()) if mask is not None else float(diff.mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _record_report(module: str, name: str, lines: list[str]) -> None:
    """Wrap the add-on's report function `module.name` (where the operator looks it up) so
    the lines it makes (counts, times, held-out PSNR) are also kept in `lines`."""
    target = importlib.import_module(module)
    function = getattr(target, name)

    def wrapper(*args, **kwargs):
        lines.append(function(*args, **kwargs))
        return lines[-1]

    setattr(target, name, wrapper)


def novel_views(bpy, prop, splat, count: int, out_dir: Path) -> list[dict]:
    """Mesh (Cycles), splat (Cycles) and splat (engine) images from `count` new cameras."""
    import torch

    from engine.camera_formats import from_blender
    from engine.data.camera_poses import distance_for_fill, look_at_origin
    from engine.render import render
    from gd_blender_addon.camera_capture import camera_record, render_view
    from gd_blender_addon.pointcloud import object_to_gaussians
    from gd_blender_addon.rig import RIG_FILL, RIG_FOV_DEG, isolated, rig_camera, world_bounds

    scene = bpy.context.scene
    lo, hi = world_bounds([prop])
    centre, radius = (lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2
    distance = distance_for_fill(radius, RIG_FOV_DEG, RIG_FILL)
    gaussians, _, _ = object_to_gaussians(splat, apply_transform=True)
    size = 256
    rows = []
    for i in range(count):
        pose = look_at_origin(20.0 + 360.0 * i / count, 25.0, distance)
        pose[:3, 3] += centre
        with rig_camera(scene, pose.tolist(), RIG_FOV_DEG) as cam:
            with isolated(scene, [prop]):
                mesh = render_view(scene, cam, size, out_dir / f"mesh_{i}.png")
            with isolated(scene, [splat]):
                cycles = render_view(scene, cam, size, out_dir / f"splat_{i}.png")
            record = camera_record(cam, size, size)
        cameras = from_blender(np.array(record.pop("matrix_world")), **record)
        with torch.no_grad():
            engine = render(gaussians, cameras, background=torch.ones(3), depth=False)
        gt = _on_white(mesh)
        rows.append({
            "mesh": gt, "cycles": _on_white(cycles),
            "engine": engine.colors[0].clamp(0, 1).numpy(), "object": mesh[..., 3] > 0.5,
        })  # fmt: skip
    return rows


def write_montage(rows: list[dict], path: Path) -> None:
    from PIL import Image

    tiles = [np.concatenate([r["mesh"], r["cycles"], r["engine"]], axis=1) for r in rows]
    image = (np.clip(np.concatenate(tiles, axis=0), 0, 1) * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="Refine Seconds (default 30)")
    parser.add_argument("--views", type=int, default=16, help="Rig Views (default 16)")
    parser.add_argument("--region-seconds", type=float, default=10.0)
    parser.add_argument("--novel", type=int, default=4, help="new views scored (0: none)")
    parser.add_argument("--out", type=Path, default=None, help="mesh | Cycles | engine PNG")
    parser.add_argument("--results", type=Path, default=None, help="results markdown file")
    args = parser.parse_args()
    import bpy

    from bench.machine import cpu_and_memory

    importlib.import_module("addon_utils").enable("gd_blender_addon", default_set=True)
    reports: list[str] = []
    _record_report("gd_blender_addon.operators", "reconstruct_report", reports)
    scene = _scene(bpy)
    scene.gd_splat.refine_seconds = args.seconds
    scene.gd_splat.rig_views = args.views
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    prop = bpy.context.active_object
    result = bpy.ops.gd.reconstruct_object()
    wall = time.perf_counter() - start
    print(f"Reconstruct Object: {result}, {wall:.1f} s wall")
    obj = bpy.context.active_object
    lines = [f"Reconstruct Object ({args.views} rig views, Refine Seconds {args.seconds:g}): "
             f"{wall:.1f} s wall, {len(obj.data.points):,} Gaussians, "
             f"{len(obj.gd_splat.views)} stored views, cameras left in the file: "
             f"{[c.name for c in bpy.data.cameras]}"]  # fmt: skip
    print(lines[-1])
    if args.novel > 0:
        with tempfile.TemporaryDirectory() as tmp:
            rows = novel_views(bpy, prop, obj, args.novel, Path(tmp))
        table = ["| view | Cycles splat vs mesh (full / object dB) | engine splat vs mesh | "
                 "Cycles splat vs engine splat |", "|---|---:|---:|---:|"]  # fmt: skip
        for i, r in enumerate(rows):
            table.append(f"| {i} | {_psnr(r['cycles'], r['mesh']):.2f} / "
                         f"{_psnr(r['cycles'], r['mesh'], r['object']):.2f} | "
                         f"{_psnr(r['engine'], r['mesh']):.2f} / "
                         f"{_psnr(r['engine'], r['mesh'], r['object']):.2f} | "
                         f"{_psnr(r['cycles'], r['engine']):.2f} |")  # fmt: skip

        def mean(key: str, masked: bool) -> float:
            return float(np.mean([_psnr(r[key], r["mesh"], r["object"] if masked else None)
                                  for r in rows]))  # fmt: skip

        between = np.mean([_psnr(r["cycles"], r["engine"]) for r in rows])
        table.append(f"| mean | {mean('cycles', False):.2f} / {mean('cycles', True):.2f} | "
                     f"{mean('engine', False):.2f} / {mean('engine', True):.2f} | "
                     f"{between:.2f} |")  # fmt: skip
        print("\n".join(table))
        if args.out:
            write_montage(rows, args.out)
            print(f"wrote {args.out}")
    else:
        table = []
    region = bpy.data.objects.new("Region", None)
    region.empty_display_type = "CUBE"
    region.empty_display_size = 0.25
    region.location = (0.3, -0.6, 0.6)
    scene.collection.objects.link(region)
    bpy.context.view_layer.update()
    scene.gd_splat.region = region
    scene.gd_splat.refine_seconds = args.region_seconds
    start = time.perf_counter()
    # Refine imports refine_report from refine_job when it reports (after Reconstruct, whose
    # report already holds its refinement line).
    _record_report("gd_blender_addon.refine_job", "refine_report", reports)
    result = bpy.ops.gd.refine()
    lines.append(f"Refine on a Region ({args.region_seconds:g} s): {result}, "
                 f"{time.perf_counter() - start:.1f} s wall")  # fmt: skip
    print(lines[-1])
    if args.results:
        cpu, mem = cpu_and_memory()
        text = [
            "# The add-on's one-button workflow (`bench/blender_reconstruct_object.py`)", "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            f"- command: `python {' '.join(sys.argv)}`",
            f"- machine: {cpu}, {mem}, {os.cpu_count()} logical CPUs, Python "
            f"{platform.python_version()}, bpy {bpy.app.version_string}",
            f"- load: 1-min load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after",
            "- scene: textured Suzanne (colour grid), a sun, grey world; shipped object-small",
            "",
            *[f"- {line}" for line in lines], "",
            "The operators' reports:", "", *[f"- {line}" for line in reports], "",
            "New views (never in the rig; 25° up, the rig's distance), scored against the "
            "mesh's Cycles render on white at 256²:", "", *table, "",
        ]  # fmt: skip
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text("\n".join(text))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
