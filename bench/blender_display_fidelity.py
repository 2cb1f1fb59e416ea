"""How close the add-on's Cycles splat look is to the engine's splat render.

    python bench/blender_display_fidelity.py [--out docs/blender_display_fidelity.png]

Builds a seeded set of smallish, fairly opaque Gaussians as a splat object with the
add-on's display (ELLIPSOIDS), renders it with Cycles from a camera at 128² in a scene of
its own (white world, view transform Standard, 128 transparent bounces, pixel filter
narrowed to the pixel centre like the rasteriser's sampling), renders the same Gaussians
with `engine.render.render` from the camera converted by `from_blender`, and prints the
PSNR. `--out` writes the side by side (engine | Cycles), upscaled 2x, as a PNG.
tests/test_addon_display.py runs `fidelity()` and requires >= 20 dB.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RES = 128


def _seeded_gaussians(
    n: int,
    seed: int,
    extent: float,
    sigma: tuple[float, float],
    opacity: tuple[float, float],
):
    """n seeded Gaussians, SH degree 0: centres uniform in [-extent/2, extent/2]³, each
    axis' sigma log-uniform in `sigma`, opacity uniform in `opacity`, random rotations and
    colours."""
    import torch

    from engine.gaussians import Gaussians

    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) - 0.5) * extent
    log_sigma = torch.empty(n, 3).uniform_(math.log(sigma[0]), math.log(sigma[1]), generator=gen)
    quats = torch.randn(n, 4, generator=gen)
    opacities = torch.empty(n).uniform_(*opacity, generator=gen)
    colors = torch.rand(n, 3, generator=gen)
    return Gaussians.from_activated(means, log_sigma.exp(), quats, opacities, colors=colors)


def make_gaussians(n: int = 400, seed: int = 0):
    """n seeded Gaussians in [-0.4, 0.4]³: sigma 0.015–0.05, opacity 0.5–0.95, SH degree 0."""
    return _seeded_gaussians(n, seed, 0.8, sigma=(0.015, 0.05), opacity=(0.5, 0.95))


def make_dense_gaussians(n: int = 600, seed: int = 0):
    """n seeded translucent Gaussians packed in [-0.25, 0.25]³ (sigma 0.03–0.08, opacity
    0.05–0.3): like a reconstruction, a ray crosses dozens of them, more than Cycles' default
    8 transparent bounces."""
    return _seeded_gaussians(n, seed, 0.5, sigma=(0.03, 0.08), opacity=(0.05, 0.3))


# Transparent bounces of the Cycles render: "matched" (what the rasteriser does: every
# layer, no Russian roulette), Cycles' own defaults, or the defaults as the add-on leaves
# them when it makes a splat object (gd_blender_addon/render_setup.py).
BOUNCES = ("matched", "defaults", "addon")


def _setup_scene(bpy, samples: int, seed: int):
    """A new scene (the user's is untouched) set up to match the rasteriser."""
    import mathutils

    from engine.data.camera_poses import look_at

    scene = bpy.data.scenes.new("GD Display Fidelity")
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.seed = seed
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.transparent_max_bounces = 128
    # No Russian roulette through the transparent layers: deterministic, noise-free blending.
    scene.cycles.min_transparent_bounces = 128
    scene.cycles.max_bounces = 4
    # Importance-sampled pixel filter this narrow puts every sample at the pixel centre,
    # which is where the rasteriser evaluates the Gaussians.
    scene.cycles.filter_width = 0.01
    scene.render.resolution_x = scene.render.resolution_y = RES
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"  # AgX (the default) shifts colours
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    world = bpy.data.worlds.new("GD Fidelity White")
    with warnings.catch_warnings():  # deprecated for 6.0, still how 5.0 makes the tree
        warnings.simplefilter("ignore", DeprecationWarning)
        world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bg.inputs["Strength"].default_value = 1.0
    scene.world = world
    cam_data = bpy.data.cameras.new("GD Fidelity Camera")
    cam_data.lens = 50.0
    cam = bpy.data.objects.new("GD Fidelity Camera", cam_data)
    cam.matrix_world = mathutils.Matrix(look_at(np.array([1.6, -1.9, 1.2]), np.zeros(3)).tolist())
    scene.collection.objects.link(cam)
    scene.camera = cam
    return scene, cam, world


def _engine_render(gaussians, scene, cam) -> np.ndarray:
    import torch

    from engine.camera_formats import from_blender
    from engine.render import render

    d, r = cam.data, scene.render
    cameras = from_blender(
        np.array(cam.matrix_world), d.lens, d.sensor_width, d.sensor_height, d.sensor_fit,
        d.shift_x, d.shift_y, r.resolution_x, r.resolution_y, r.pixel_aspect_x,
        r.pixel_aspect_y, r.resolution_percentage,
    )  # fmt: skip
    with torch.no_grad():
        out = render(gaussians, cameras, background=torch.ones(3))
    return out.colors[0].clamp(0, 1).numpy()


def _cycles_render(bpy, scene, tmp: Path) -> np.ndarray:
    from gd_blender_addon.camera_capture import read_png

    path = tmp / "cycles.png"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True, scene=scene.name)
    return read_png(path)[..., :3].copy()  # (H, W, 3), top row first


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def fidelity(out_png: str | Path | None = None, n: int = 400, samples: int = 8, seed: int = 0,
             mode: str = "ELLIPSOIDS", bounces: str = "matched",
             dense: bool = False) -> dict:  # fmt: skip
    """Render both ways; returns {"psnr", "engine", "cycles", "seconds"}. Needs bpy.

    bounces: one of BOUNCES; dense: `make_dense_gaussians` instead of `make_gaussians`.
    Leaves the current scene alone: the object, camera and world live in a scene made
    here, which is removed (with them) afterwards.
    """
    import bpy

    from gd_blender_addon import display, pointcloud

    if bounces not in BOUNCES:
        raise ValueError(f"bounces must be one of {BOUNCES}, got {bounces!r}")
    gaussians = (make_dense_gaussians if dense else make_gaussians)(n, seed)
    scene, cam, world = _setup_scene(bpy, samples, seed)
    if bounces != "matched":
        defaults = bpy.data.scenes.new("GD Fidelity Defaults")  # Cycles' defaults
        scene.cycles.transparent_max_bounces = defaults.cycles.transparent_max_bounces
        scene.cycles.min_transparent_bounces = defaults.cycles.min_transparent_bounces
        bpy.data.scenes.remove(defaults)
    if bounces == "addon":
        from gd_blender_addon.render_setup import ensure_splat_render_settings

        ensure_splat_render_settings(scene)
    obj = pointcloud.gaussians_to_object(scene.collection, gaussians, "GD Fidelity Splat")
    try:
        # A non-trivial object transform: the shaders work in instance/object space.
        obj.location = (0.05, 0.0, -0.05)
        obj.rotation_euler = (0.3, -0.2, 0.8)
        obj.scale = (1.2, 1.2, 1.2)
        scene.view_layers[0].update()
        display.ensure_display(obj, mode)
        # What the object holds (float32 round trip, world transform applied).
        stored, _, _ = pointcloud.object_to_gaussians(obj, apply_transform=True)
        reference = _engine_render(stored, scene, cam)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            cycles = _cycles_render(bpy, scene, Path(tmp))
        seconds = time.perf_counter() - start
    finally:
        data = obj.data
        bpy.data.objects.remove(obj)
        pointcloud.remove_data(data)  # PointCloud, or the Blender 4.2-4.4 fallback Mesh
        cam_data = cam.data
        bpy.data.objects.remove(cam)
        bpy.data.cameras.remove(cam_data)
        bpy.data.scenes.remove(scene)
        bpy.data.worlds.remove(world)
    result = {"psnr": psnr(reference, cycles), "engine": reference, "cycles": cycles,
              "seconds": seconds}  # fmt: skip
    if out_png is not None:
        from PIL import Image

        pair = np.concatenate([reference, cycles], axis=1)
        img = Image.fromarray(np.round(pair * 255).astype(np.uint8))
        img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)
        img.save(out_png, optimize=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="side-by-side PNG (engine | Cycles)")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--mode", default="ELLIPSOIDS", choices=["ELLIPSOIDS", "POINTS"])
    parser.add_argument("--bounces", default="matched", choices=BOUNCES,
                        help="Cycles transparent bounces: matched to the rasteriser (128, no "
                             "Russian roulette), Cycles' defaults, or as the add-on leaves "
                             "them")  # fmt: skip
    parser.add_argument(
        "--dense",
        action="store_true",
        help="translucent Gaussians packed tight (many layers per ray)",
    )
    args = parser.parse_args()
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    r = fidelity(args.out, n=args.n, samples=args.samples, mode=args.mode,
                 bounces=args.bounces, dense=args.dense)  # fmt: skip
    kind = "dense " if args.dense else ""
    print(f"{args.mode}, {args.bounces} bounces: PSNR {r['psnr']:.2f} dB (Cycles render "
          f"{r['seconds']:.2f} s, {args.n} {kind}Gaussians, {args.samples} samples, "
          f"{RES}x{RES})")  # fmt: skip


if __name__ == "__main__":
    main()
