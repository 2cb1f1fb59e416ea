"""Add-on: import splat files as splat objects (point clouds; vertex-only meshes on Blender
4.2-4.4) and export objects, with real bpy."""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from ._splat_helpers import REPRESENTATIONS, point_count, splat_type, use_representation

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel"),
]

FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")


def _gaussians(n: int, degree: int, seed: int = 0):
    """Well-behaved Gaussians (the lossy formats quantise; keep values in their ranges)."""
    from engine.gaussians import Gaussians

    gen = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    sh = torch.randn(n, k, 3, generator=gen) * 0.3
    return Gaussians(
        means=(torch.rand(n, 3, generator=gen) - 0.5) * 2,
        log_scales=torch.empty(n, 3).uniform_(-5, -2, generator=gen),
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.empty(n).uniform_(-2, 3, generator=gen),
        sh=sh,
    )


def _data_counts(bpy) -> tuple[int, ...]:
    d = bpy.data
    return (len(d.objects), len(d.meshes), len(d.pointclouds), len(d.materials),
            len(d.node_groups), len(d.collections))  # fmt: skip


def _object(bpy, g, name="splat", **kw):
    from gd_blender_addon import pointcloud

    return pointcloud.gaussians_to_object(bpy.context, g, name, **kw)


def _same_up_to_sign(q1: torch.Tensor, q2: torch.Tensor, atol: float) -> None:
    sign = torch.sign((q1 * q2).sum(-1, keepdim=True))
    torch.testing.assert_close(q1, q2 * sign, atol=atol, rtol=0)


@REPRESENTATIONS
@pytest.mark.parametrize("axes", ["raw", "standard"])
def test_ply_round_trip(bpy, tmp_path, monkeypatch, as_mesh, axes):
    from engine.io import load, save
    from gd_blender_addon import display, pointcloud, splat_files

    use_representation(monkeypatch, as_mesh)
    g = _gaussians(300, 3)
    path = tmp_path / "scene.ply"
    save(g, path, axes=axes)
    obj = splat_files.import_splat(path, bpy.context, axes=axes)
    assert obj.name == "scene" and obj.type == splat_type()
    assert [m.name for m in obj.modifiers] == [display.MODIFIER_NAME]
    g2, _, _ = pointcloud.object_to_gaussians(obj)
    out = tmp_path / "again.ply"
    splat_files.export_object(obj, out, axes=axes)
    g3 = load(out, axes=axes)
    if axes == "raw":  # no turn anywhere: the same values and the same file, bit for bit
        for f in FIELDS:
            assert torch.equal(getattr(g, f), getattr(g2, f)), f
            assert torch.equal(getattr(g, f), getattr(g3, f)), f
        assert out.read_bytes() == path.read_bytes()
        return
    # Standard: turned into PLY space and back. Positions only change sign; orientations
    # and SH of degree >= 2 go through float32 rounding of the turn.
    for h in (g2, g3):
        for f in ("means", "log_scales", "opacity_logits"):
            assert torch.equal(getattr(g, f), getattr(h, f)), f
        torch.testing.assert_close(h.quats, g.quats, atol=1e-6, rtol=0)
        torch.testing.assert_close(h.sh, g.sh, atol=1e-6, rtol=0)


def test_export_bakes_the_world_transform(bpy, tmp_path):
    from engine.io import load
    from gd_blender_addon import pointcloud, splat_files

    obj = _object(bpy, _gaussians(50, 2))
    obj.location = (1.0, -2.0, 0.5)
    obj.rotation_euler = (0.2, 0.5, -1.0)
    obj.scale = (2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    path = tmp_path / "moved.ply"
    splat_files.export_object(obj, path)
    want, _, _ = pointcloud.object_to_gaussians(obj, apply_transform=True)
    got = load(path)
    for f in ("means", "log_scales", "opacity_logits"):
        assert torch.equal(getattr(want, f), getattr(got, f)), f
    for f in ("quats", "sh"):  # float32 rounding of the turn into PLY space and back
        torch.testing.assert_close(getattr(got, f), getattr(want, f), atol=1e-6, rtol=0)
    local, _, _ = pointcloud.object_to_gaussians(obj)
    assert not torch.allclose(got.means, local.means)


def _standard_column(n: int = 60):
    """A tall column as 3DGS training output holds one (PLY space: -Y up, +Z front):
    grey, 2 units tall along file -Y, 0.2 wide; a red marker at its top (file y = -2)
    and a green one on its front face (file +Z)."""
    from engine.gaussians import Gaussians, rgb_to_sh_dc

    t = torch.linspace(0, 1, n)
    means = torch.stack([torch.zeros(n), -2 * t, torch.zeros(n)], dim=1)
    rgb = torch.full((n, 3), 0.5)
    marker_top = torch.tensor([[0.0, -2.1, 0.0]])
    marker_front = torch.tensor([[0.0, -1.0, 0.3]])
    means = torch.cat([means, marker_top, marker_front])
    rgb = torch.cat([rgb, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])])
    return Gaussians.isotropic(means, math.log(0.05), 3.0, rgb_to_sh_dc(rgb)[:, None, :])


@pytest.mark.parametrize("suffix", [".ply", ".spz"])
def test_standard_files_import_upright(bpy, tmp_path, suffix):
    """A 3DGS .ply and an .spz (PLY space, -Y up, as trainers and splat-transform write them,
    written here by the raw writers) stand upright in Blender, their front facing -Y (what
    Front view shows)."""
    from engine.io import write_ply, write_spz
    from gd_blender_addon import pointcloud, splat_files

    g = _standard_column()
    path = tmp_path / f"column{suffix}"
    if suffix == ".ply":
        write_ply(path, g)
    else:
        write_spz(path, g)
    obj = splat_files.import_splat(path, bpy.context, display_mode=None)
    bpy.context.view_layer.update()
    corners = np.array([list(c) for c in obj.bound_box])  # Blender's own bounds, local
    extent = corners.max(0) - corners.min(0)
    assert extent[2] > 1.9 and extent[2] > 3 * max(extent[0], extent[1]), extent  # tall in Z
    back, _, _ = pointcloud.object_to_gaussians(obj, apply_transform=True)
    colours = back.base_colors
    red = int(torch.argmax(colours[:, 0] - colours[:, 1]))
    green = int(torch.argmax(colours[:, 1] - colours[:, 0]))
    z = back.means[:, 2]
    assert float(back.means[red, 2]) == pytest.approx(float(z.max()), abs=1e-3)  # top is up
    assert float(back.means[red, 2]) > 2.0
    assert float(back.means[green, 1]) < -0.25  # the front faces -Y
    # Read raw, the same file lies along Blender's -Y: the option keeps old behaviour.
    raw = splat_files.import_splat(path, bpy.context, display_mode=None, axes="raw")
    bpy.context.view_layer.update()
    corners = np.array([list(c) for c in raw.bound_box])
    assert (corners.max(0) - corners.min(0))[1] > 1.9


def test_ply_levels_round_trip(bpy, tmp_path):
    from engine.io import read_ply
    from gd_blender_addon import pointcloud, splat_files

    n = 40
    level = torch.cat([torch.zeros(25), torch.full((15,), 2)]).long()
    parent = torch.cat([torch.arange(25), torch.randint(0, 25, (15,))])
    obj = _object(bpy, _gaussians(n, 1), level=level, parent=parent)
    path = tmp_path / "levels.ply"
    splat_files.export_object(obj, path, levels=True)
    extra = read_ply(path).extra
    assert extra["gd_level"].dtype == np.int32 and sorted(extra) == ["gd_level", "gd_parent"]
    back = splat_files.import_splat(path, bpy.context, name="back", display_mode=None)
    assert back.name == "back" and len(back.modifiers) == 0
    _, level2, parent2 = pointcloud.object_to_gaussians(back)
    assert torch.equal(level2, level) and torch.equal(parent2, parent)
    # Without levels=True the file is a plain INRIA PLY.
    plain = tmp_path / "plain.ply"
    splat_files.export_object(obj, plain)
    assert read_ply(plain).extra == {}


@pytest.mark.parametrize(
    "suffix, degree, tol",
    [
        (".spz", 3, dict(means=2e-3, log_scales=0.07, quats=0.02, opacity=0.05, sh=0.1)),
        (".splat", 0, dict(means=1e-6, log_scales=1e-6, quats=0.02, opacity=0.05, sh=0.03)),
        (".glb", 2, dict(means=1e-6, log_scales=1e-5, quats=1e-5, opacity=1e-5, sh=1e-4)),
        (".gltf", 1, dict(means=1e-6, log_scales=1e-5, quats=1e-5, opacity=1e-5, sh=1e-4)),
        (".compressed.ply", 3, dict(means=2e-3, log_scales=0.03, quats=0.01, opacity=0.05,
                                    sh=0.1)),
    ],
)  # fmt: skip
def test_lossy_formats_round_trip(bpy, tmp_path, suffix, degree, tol):
    from gd_blender_addon import pointcloud, splat_files

    g = _gaussians(200, degree, seed=11)
    obj = _object(bpy, g)
    path = tmp_path / f"scene{suffix}"
    splat_files.export_object(obj, path)
    back = splat_files.import_splat(path, bpy.context)
    assert back.name == "scene"
    g2, _, _ = pointcloud.object_to_gaussians(back)
    assert len(g2) == len(g)
    if suffix == ".compressed.ply":  # Morton-sorted on write: match by position
        order = torch.cdist(g.means, g2.means).argmin(dim=1)
        g2 = g2[order]
    torch.testing.assert_close(g2.means, g.means, atol=tol["means"], rtol=0)
    torch.testing.assert_close(g2.log_scales, g.log_scales, atol=tol["log_scales"], rtol=0)
    _same_up_to_sign(g2.rotations, g.rotations, tol["quats"])
    torch.testing.assert_close(g2.opacities, g.opacities, atol=tol["opacity"], rtol=0)
    torch.testing.assert_close(g2.sh[:, 0], g.sh[:, 0], atol=tol["sh"], rtol=0)
    if degree and suffix != ".splat":
        assert g2.sh_degree == degree
        torch.testing.assert_close(g2.sh, g.sh, atol=tol["sh"], rtol=0)


@pytest.mark.parametrize(
    "name, content, error, match",
    [
        ("missing.ply", None, FileNotFoundError, "no such splat file"),
        ("garbage.ply", b"this is not a splat file at all\n" * 10, ValueError, "PLY"),
        ("garbage.spz", b"\x00\x01garbage" * 20, ValueError, "spz"),
        ("garbage.splat", b"\x01" * 33, ValueError, "splat"),
        ("garbage.glb", b"glTF\x02\x00\x00\x00junk", ValueError, "glb"),
        ("scene.obj", b"v 0 0 0\n", ValueError, "unsupported splat file suffix"),
    ],
)  # fmt: skip
def test_bad_files_raise_and_create_nothing(bpy, tmp_path, name, content, error, match):
    from gd_blender_addon import splat_files

    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    before = _data_counts(bpy)
    with pytest.raises(error, match=match):
        splat_files.import_splat(path, bpy.context)
    assert _data_counts(bpy) == before


def test_truncated_ply_and_folder_create_nothing(bpy, tmp_path):
    from engine.io import save
    from gd_blender_addon import splat_files

    path = tmp_path / "full.ply"
    save(_gaussians(100, 1), path)
    data = path.read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(data[: len(data) - 37])
    folder = tmp_path / "folder.ply"
    folder.mkdir()
    before = _data_counts(bpy)
    with pytest.raises(ValueError, match="cut.ply"):
        splat_files.import_splat(cut, bpy.context)
    with pytest.raises(ValueError, match="not a regular file"):
        splat_files.import_splat(folder, bpy.context)
    with pytest.raises(ValueError, match="display_mode"):
        splat_files.import_splat(path, bpy.context, display_mode="FANCY")
    assert _data_counts(bpy) == before


def test_export_failures_write_nothing(bpy, tmp_path):
    from gd_blender_addon import splat_files

    obj = _object(bpy, _gaussians(20, 1))
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    cases = [
        (cube, tmp_path / "cube.ply", {}, ValueError, "not a Gaussian splat object"),
        (obj, tmp_path / "scene.obj", {}, ValueError, "unsupported splat file suffix"),
        (obj, tmp_path / "nope" / "scene.ply", {}, FileNotFoundError, "no such folder"),
        (obj, tmp_path / "opt.ply", {"bogus_option": 1}, TypeError, "bogus_option"),
        (obj, tmp_path / "lv.spz", {"levels": True}, ValueError, "plain .ply"),
        (obj, tmp_path / "v.spz", {"version": 99}, ValueError, "version"),
    ]
    for target, path, options, error, match in cases:
        with pytest.raises(error, match=match):
            splat_files.export_object(target, path, **options)
    assert sorted(os.listdir(tmp_path)) == []

    # A failed export over an existing file leaves it unchanged.
    keep = tmp_path / "keep.spz"
    keep.write_bytes(b"previous contents")
    with pytest.raises(ValueError):
        splat_files.export_object(obj, keep, version=99)
    assert keep.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["keep.spz"]


def test_import_into_collection_and_compressed_name(bpy, tmp_path):
    from engine.io import save
    from gd_blender_addon import splat_files

    sub = bpy.data.collections.new("Imported")
    bpy.context.scene.collection.children.link(sub)
    path = tmp_path / "thing.compressed.ply"
    save(_gaussians(300, 0), path)
    obj = splat_files.import_splat(path, sub)
    assert obj.name == "thing" and [c.name for c in obj.users_collection] == ["Imported"]
    assert ".compressed.ply" in splat_files.supported_suffixes()
    assert math.isclose(point_count(obj), 300)


def test_blend_relative_paths(bpy, tmp_path):
    """'//' paths (what Blender's file fields hold) resolve next to the saved .blend."""
    from engine.io import save
    from gd_blender_addon import splat_files

    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    save(_gaussians(10, 0), tmp_path / "rel.ply")
    obj = splat_files.import_splat("//rel.ply", bpy.context)
    assert obj.name == "rel" and point_count(obj) == 10
    splat_files.export_object(obj, "//rel_out.splat")
    assert (tmp_path / "rel_out.splat").is_file()
