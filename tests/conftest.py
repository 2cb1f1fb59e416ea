"""Shared test helpers: seeded random Gaussians, the harness of the file readers' fuzz
tests, the `bpy` fixture and the add-on tests' fixtures (`addon`, `tiny`, `spy`, `scene`).
Import the helpers (`from .conftest import random_gaussians`); pytest loads this file
first, and tests/ is a package, so the relative import finds it. Fixtures need no import."""

from __future__ import annotations

import importlib
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from engine.gaussians import Gaussians

from ._addon_helpers import CAPTURE, Spy, grid_material


def random_gaussians(
    n: int,
    sh_degree: int = 0,
    seed: int = 0,
    *,
    gen: torch.Generator | None = None,
    means_std: float = 1.0,
    means_range: tuple[float, float] | None = None,
    log_scale_range: tuple[float, float] | None = (-4.0, -3.0),
    log_scale_normal: tuple[float, float] | None = None,
    quats_std: float = 1.0,
    opacity_std: float = 1.0,
    sh_std: float = 1.0,
    sh_range: tuple[float, float] | None = None,
    quats: torch.Tensor | None = None,
    sh: torch.Tensor | None = None,
) -> Gaussians:
    """n random Gaussians (float32, CPU), drawn in the order means, log-scales, quaternions,
    opacity logits, SH from `gen` (default: a generator seeded with `seed`).

    Each file format's tests pick ranges its encoding holds without clamping:
    means ~ N(0, means_std²), or uniform in `means_range=(lo, hi)` on every axis;
    log-scales uniform in `log_scale_range`, or N(mean, std²) with
    `log_scale_normal=(mean, std)`; quaternions ~ N(0, quats_std²) (not normalised); opacity
    logits ~ N(0, opacity_std²); SH ~ N(0, sh_std²), or uniform in `sh_range`, with
    (sh_degree + 1)² coefficients. `quats` or `sh` given are used as they are and not
    drawn (a test that draws them first, from the same `gen`, keeps its values).
    """
    if gen is None:
        gen = torch.Generator().manual_seed(seed)
    if means_range is not None:
        lo, hi = means_range
        means = torch.rand(n, 3, generator=gen) * (hi - lo) + lo
    else:
        means = torch.randn(n, 3, generator=gen) * means_std
    if log_scale_normal is not None:
        mean, std = log_scale_normal
        log_scales = torch.randn(n, 3, generator=gen) * std + mean
    else:
        lo, hi = log_scale_range
        log_scales = torch.rand(n, 3, generator=gen) * (hi - lo) + lo
    if quats is None:
        quats = torch.randn(n, 4, generator=gen) * quats_std
    opacity_logits = torch.randn(n, generator=gen) * opacity_std
    if sh is None and sh_range is not None:
        lo, hi = sh_range
        sh = torch.rand(n, (sh_degree + 1) ** 2, 3, generator=gen) * (hi - lo) + lo
    elif sh is None:
        sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen) * sh_std
    return Gaussians(means=means, log_scales=log_scales, quats=quats,
                     opacity_logits=opacity_logits, sh=sh)  # fmt: skip


# ---------------------------------------------------------------------------- Blender
@pytest.fixture
def bpy():
    """The `bpy` module after Blender's factory settings with an empty scene (the add-on
    tests'); skips the test where the bpy wheel is not installed."""
    bpy = pytest.importorskip("bpy")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy


# ---------------------------------------------------------------------------- fuzzing
def fuzz(max_examples: int = 100, *checks: HealthCheck) -> settings:
    """hypothesis settings of the readers' fuzz tests: no deadline (a busy CI machine),
    too_slow (and `checks`) suppressed."""
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, *checks])  # fmt: skip


FUZZ = fuzz()


def read_fuzzed(
    content: bytes,
    read: Callable[[Path], Gaussians],
    error: type[Exception],
    name: str,
    *,
    names_the_file: bool = True,
) -> Gaussians | None:
    """`content` written to a temporary file `name` and read with `read`: either valid
    Gaussians (returned) or `error` (None; its message names the file when
    `names_the_file`). Any other exception fails the test."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(content)
        try:
            g = read(path)
        except error as e:
            if names_the_file:
                assert str(path) in str(e)
            return None
        g.validate()
        return g


def written_bytes(write: Callable[..., object], name: str, *args, **kwargs) -> bytes:
    """The bytes `write(path, *args, **kwargs)` puts in a temporary file `name`."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        write(path, *args, **kwargs)
        return path.read_bytes()


def visible_gaussians(
    n: int,
    *,
    extent: float,
    scale: float,
    opacity: float,
    gen: torch.Generator | None = None,
    seed: int = 0,
) -> Gaussians:
    """n round Gaussians of one scale and opacity that a small render shows: means uniform
    in a centred cube of side `extent`, random (unnormalised) quaternions and RGB colours,
    drawn in that order from `gen` (default: seeded with `seed`)."""
    if gen is None:
        gen = torch.Generator().manual_seed(seed)
    return Gaussians.from_activated(
        means=(torch.rand(n, 3, generator=gen) - 0.5) * extent,
        scales=torch.full((n, 3), scale),
        quats=torch.randn(n, 4, generator=gen),
        opacities=torch.full((n,), opacity),
        colors=torch.rand(n, 3, generator=gen),
    )


# ---------------------------------------------------------------------------- add-on tests
# The add-on enabled in headless Blender (per test module), the tiny randomly initialised
# model and its spy in place of the real model loader, and a factory-empty scene with a
# textured cube and four cameras (test_addon_*.py; helpers in _addon_helpers.py).
@pytest.fixture(scope="module")
def addon():
    import bpy

    addon_utils = importlib.import_module("addon_utils")  # after bpy, which puts it on sys.path

    addon_utils.enable("gd_blender_addon", default_set=True)
    import gd_blender_addon

    yield gd_blender_addon
    addon_utils.disable("gd_blender_addon", default_set=True)
    assert not hasattr(bpy.types, "GD_OT_reconstruct")


@pytest.fixture(scope="module")
def tiny():
    import torch

    from engine.models import load_model

    torch.manual_seed(0)
    return load_model("object-tiny", device="cpu", pretrained=False)


@pytest.fixture
def spy(addon, tiny, monkeypatch):
    from gd_blender_addon import modal

    spy = Spy(tiny)
    monkeypatch.setattr(modal, "load_engine_model", lambda *a, **k: spy)
    return spy


@pytest.fixture
def scene(addon):
    """A factory-empty scene: a textured cube prop (0.6 wide, centred at (0.2, -0.1, 0.3))
    and 4 perspective cameras around it; Cycles with one sample."""
    import bpy
    from mathutils import Matrix

    from engine.data.camera_poses import look_at

    # read_homefile keeps the enabled add-ons (read_factory_settings would unload them).
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.cycles.device = "CPU"
    scene.render.resolution_x, scene.render.resolution_y = 640, 480  # must survive capture
    scene.render.film_transparent = False
    scene.gd_splat.resolution = CAPTURE
    scene.gd_splat.refine_seconds = 0.0  # these tests are about the model's result
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    scene.world = world
    bpy.ops.mesh.primitive_cube_add(size=0.6, location=(0.2, -0.1, 0.3))
    prop = bpy.context.active_object
    prop.name = "Prop"
    material = grid_material()
    prop.data.materials.append(material)
    centre = np.array([0.2, -0.1, 0.3])
    cameras = []
    for i in range(4):
        angle = math.radians(45 + 90 * i)
        eye = centre + 2.2 * np.array([math.cos(angle), math.sin(angle), 0.45])
        data = bpy.data.cameras.new(f"Cam{i}")
        data.lens = 50
        cam = bpy.data.objects.new(f"Cam{i}", data)
        cam.matrix_world = Matrix(look_at(eye, centre).tolist())
        scene.collection.objects.link(cam)
        cameras.append(cam)
    scene.camera = cameras[0]
    for obj in scene.objects:
        obj.select_set(True)
    bpy.context.view_layer.objects.active = prop
    bpy.context.view_layer.update()  # evaluated matrices, as after any redraw
    return scene
