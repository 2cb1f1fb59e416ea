"""Pure parts of the data generator (no bpy): seeded prop specs, meshes, camera plans,
splits, label textures."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.cameras import Cameras
from engine.data.camera_poses import distance_for_fill, look_at_origin, plan_poses, sample_view_plan
from engine.data.layout import split_indices, split_of
from engine.data.procedural.geometry import beam_matrix, box, revolve, torus
from engine.data.procedural.spec import TEMPLATES, sample_prop


def test_importing_engine_data_does_not_import_bpy():
    code = (
        "import sys, engine.data, engine.data.datasets, engine.data.lara, engine.data.make, "
        "engine.data.cli, engine.data.procedural.spec; print('bpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prop_depends_only_on_seed_and_index():
    a = sample_prop(7, 12)
    assert json.dumps(a) == json.dumps(sample_prop(7, 12))  # JSON-able and reproducible
    assert a != sample_prop(7, 13) and a != sample_prop(8, 12)
    templates = {sample_prop(0, i)["template"] for i in range(300)}
    assert templates == set(TEMPLATES)  # every template shows up


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_template_makes_valid_parts(template):
    for index in range(5):
        spec = sample_prop(1, index, template=template)
        assert (
            spec["parts"]
            and len(spec["materials"]) == max(p["material"] for p in spec["parts"]) + 1
        )
        rot = np.asarray(spec["rotation"])
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-5) and np.linalg.det(rot) > 0
        assert 0 < spec["extent"] <= 1.0
        for part in spec["parts"]:
            assert np.isfinite(np.asarray(part["matrix"])).all()


def test_materials_cover_labels_photos_gloss_and_matte():
    mats = [m for i in range(200) for m in sample_prop(2, i)["materials"]]
    kinds = {m["base"]["kind"] for m in mats}
    assert {"noise", "checker", "brick", "photo", "plain"} <= kinds
    decals = [m["decal"]["image"]["kind"] for m in mats if m["decal"]]
    assert "label" in decals and "photo" in decals
    rough = np.array([m["roughness"] for m in mats])
    assert (rough < 0.3).any() and (rough > 0.5).any()
    fonts = {line["font"] for m in mats if m["decal"] and m["decal"]["image"]["kind"] == "label"
             for line in m["decal"]["image"]["label"]["lines"]}  # fmt: skip
    assert len(fonts) >= 2


@pytest.mark.skipif(
    importlib.util.find_spec("bpy") is None, reason="label fonts come from the bpy wheel"
)
def test_label_texture_has_fine_detail():
    from engine.data.procedural.assets import FONTS
    from engine.data.procedural.textures import draw_label, sample_label_spec

    spec = sample_label_spec(np.random.default_rng(0), FONTS)
    image = draw_label(spec)
    assert image.shape == (256, 512, 4) and image.dtype == np.uint8
    grey = image[..., :3].astype(float).mean(-1)
    # Printed text: many strong horizontal edges.
    assert (np.abs(np.diff(grey, axis=1)) > 60).sum() > 500
    assert np.array_equal(image, draw_label(spec))


def _closed_volume(verts, faces):
    """Signed volume by the divergence theorem (positive when faces wind outward)."""
    vol = 0.0
    for face in faces:
        p0 = verts[face[0]]
        for a, b in zip(face[1:-1], face[2:], strict=True):
            vol += np.dot(p0, np.cross(verts[a], verts[b])) / 6.0
    return vol


def test_meshes_are_closed_outward_and_have_uvs():
    cube = box((1.0, 2.0, 3.0))
    assert _closed_volume(cube.verts, cube.faces) == pytest.approx(6.0)
    cyl = revolve([(0.5, -0.5), (0.5, 0.5)], 64)
    assert _closed_volume(cyl.verts, cyl.faces) == pytest.approx(math.pi * 0.25, rel=0.01)
    sphere = revolve(
        [(math.sin(math.pi * k / 32), -math.cos(math.pi * k / 32)) for k in range(33)], 64
    )
    assert _closed_volume(sphere.verts, sphere.faces) == pytest.approx(4 / 3 * math.pi, rel=0.02)
    ring = torus(1.0, 0.25, 64, 32)
    assert _closed_volume(ring.verts, ring.faces) == pytest.approx(
        2 * math.pi**2 * 0.0625, rel=0.02
    )
    for mesh in (cube, cyl, sphere, ring):
        assert [len(f) for f in mesh.faces] == [len(u) for u in mesh.uvs]
        uv = np.array([c for f in mesh.uvs for c in f])
        assert uv.min() >= 0 and uv.max() <= 1


def test_beam_matrix_maps_unit_z_segment_onto_endpoints():
    start, end = np.array([0.1, -0.2, 0.0]), np.array([0.4, 0.3, 0.7])
    m = beam_matrix(start, end)
    ends = (m @ np.array([[0, 0, -0.5, 1], [0, 0, 0.5, 1]]).T).T[:, :3]
    assert np.allclose(ends, [start, end])


def test_hemisphere_rig_spreads_inputs_over_the_upper_hemisphere_and_keeps_targets():
    ring = sample_view_plan(np.random.default_rng(5), 16, 8)
    hemi = sample_view_plan(np.random.default_rng(5), 16, 8, input_rig="hemisphere")
    # The same random draws: field of view, framing and targets do not depend on the rig.
    assert (hemi.fov_deg, hemi.fill) == (ring.fov_deg, ring.fill)
    assert np.array_equal(hemi.target_azimuths_deg, ring.target_azimuths_deg)
    el = hemi.input_elevations_deg
    assert (el > 0).all() and (el < 80).all() and np.ptp(el) > 50
    # Even by area: equal steps of sin(elevation); azimuths all different.
    assert np.allclose(np.diff(np.sin(np.radians(el))), np.diff(np.sin(np.radians(el)))[0])
    assert len(np.unique(np.round(hemi.input_azimuths_deg, 3))) == 16
    with pytest.raises(ValueError, match="input_rig"):
        sample_view_plan(np.random.default_rng(5), 4, 8, input_rig="dome")


def test_view_plan_ring_fill_and_framing():
    rng = np.random.default_rng(0)
    plan = sample_view_plan(rng, 4, 8)
    assert 30 <= plan.fov_deg <= 50 and 0.5 <= plan.fill <= 0.9
    assert np.allclose(np.diff(np.sort(plan.input_azimuths_deg)), 90.0)
    assert np.allclose(plan.input_elevations_deg, 20.0)
    assert ((plan.target_elevations_deg >= -20) & (plan.target_elevations_deg <= 70)).all()
    poses = plan_poses(plan, radius=0.6)
    assert poses["input"].shape == (4, 4, 4) and poses["target"].shape == (8, 4, 4)
    # A sphere of that radius spans `fill` of the frame width in every view.
    size = 256
    fx = size / (2 * math.tan(math.radians(plan.fov_deg) / 2))
    c2w = np.concatenate([poses["input"], poses["target"]]) @ np.diag([1.0, -1, -1, 1])
    cams = Cameras(
        torch.from_numpy(np.linalg.inv(c2w)).float(), fx, fx, size / 2, size / 2, size, size
    )
    uv, depth = cams.project(torch.zeros(1, 3))
    assert torch.allclose(uv, torch.full_like(uv, size / 2), atol=1e-3)
    d = distance_for_fill(0.6, plan.fov_deg, plan.fill)
    assert torch.allclose(depth, torch.tensor(d).float(), rtol=1e-5)
    half_angle = math.asin(0.6 / d)  # silhouette cone of the sphere
    assert 2 * fx * math.tan(half_angle) / size == pytest.approx(plan.fill, rel=1e-6)


def test_look_at_straight_down_is_finite():
    m = look_at_origin(0.0, 90.0, 2.0)
    assert np.isfinite(m).all() and np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3))


def test_splits_fixed_by_seed_and_stable_when_growing():
    small = split_indices(5, range(100))
    big = split_indices(5, range(1000))
    for name, ids in small.items():
        assert set(ids) <= set(big[name])
    assert sum(len(v) for v in big.values()) == 1000
    assert 20 <= len(big["val"]) <= 80 and 20 <= len(big["test"]) <= 80
    assert split_indices(6, range(1000)) != big
    assert all(split_of(5, i) == n for n, ids in big.items() for i in ids)


def test_cli_registers_data_make_with_documented_defaults():
    import argparse

    from engine.data import cli

    parser = argparse.ArgumentParser(prog="gd")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "make", "OUT", "--objects", "5", "--seed", "9"])
    assert (args.objects, args.seed, args.res, args.workers) == (5, 9, 256, 0)
    assert (args.views_in, args.views_target, args.samples, args.kind) == (None, None, 4, "props")
    assert callable(args.func)
    # Views default per kind: 4 input + 8 target for props, 2 context + 6 target for scenes.
    from engine.data.make import MakeConfig

    assert (
        MakeConfig(out="OUT", objects=1).views_in,
        MakeConfig(out="OUT", objects=1).views_target,
    ) == (4, 8)
    scenes = MakeConfig(out="OUT", objects=1, kind="scenes")
    assert (scenes.views_in, scenes.views_target) == (2, 6)
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "make", "OUT"])  # --objects is required
