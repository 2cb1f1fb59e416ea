"""`gd render` end to end, including bad input (`gd demo`: tests/test_demo.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.camera_formats import write_nerf_transforms
from engine.cameras import Cameras
from engine.cli import main
from engine.gaussians import Gaussians
from engine.images import to_uint8
from engine.io import save
from engine.render import render


@pytest.fixture()
def scene(tmp_path):
    gen = torch.Generator().manual_seed(0)
    n = 300
    g = Gaussians(
        means=torch.randn(n, 3, generator=gen) * 0.3,
        log_scales=torch.full((n, 3), -3.0),
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.full((n,), 2.0),
        sh=torch.randn(n, 4, 3, generator=gen) * 0.4,
    )
    ply = tmp_path / "scene.ply"
    save(g, ply)
    eyes = torch.tensor([[2.5, 0.0, 0.5], [0.0, 2.5, 0.5], [-2.0, -1.0, 1.0]])
    cams = Cameras.look_at(eyes, torch.zeros(3, 3), fov_x_deg=45.0, width=40, height=30)
    images = [tmp_path / "images" / f"view_{i}.png" for i in range(3)]
    images[0].parent.mkdir()
    for p in images:
        Image.new("RGB", (40, 30)).save(p)
    cams_json = tmp_path / "transforms.json"
    write_nerf_transforms(cams_json, cams, images)
    return g, cams, ply, cams_json


def test_render_writes_one_png_per_camera(scene, tmp_path, capsys):
    g, cams, ply, cams_json = scene
    out = tmp_path / "out"
    assert main(["render", str(ply), "--cameras", str(cams_json), "--out", str(out),
                 "--background", "black", "--device", "cpu"]) == 0  # fmt: skip
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["view_0.png", "view_1.png", "view_2.png"]
    expected = render(g, cams, background=torch.zeros(3)).colors
    for i, f in enumerate(files):
        pixels = np.asarray(Image.open(f))
        assert pixels.shape == (30, 40, 3)
        assert np.abs(pixels.astype(int) - to_uint8(expected[i]).astype(int)).max() <= 1
    assert "wrote 3 images (40x30) of 300 Gaussians" in capsys.readouterr().out


def test_render_bad_inputs_fail_cleanly_and_write_nothing(scene, tmp_path, capsys):
    _, _, ply, cams_json = scene
    out = tmp_path / "never"
    missing = tmp_path / "missing.ply"
    assert main(["render", str(missing), "--cameras", str(cams_json), "--out", str(out)]) == 2
    assert "missing.ply" in capsys.readouterr().err
    broken_ply = tmp_path / "broken.ply"
    broken_ply.write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    assert main(["render", str(broken_ply), "--cameras", str(cams_json), "--out", str(out)]) == 2
    assert "ascii" in capsys.readouterr().err
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    assert main(["render", str(ply), "--cameras", str(bad_json), "--out", str(out)]) == 2
    assert "bad.json" in capsys.readouterr().err
    no_frames = tmp_path / "empty.json"
    no_frames.write_text(json.dumps({"camera_angle_x": 0.8, "frames": []}))
    assert main(["render", str(ply), "--cameras", str(no_frames), "--out", str(out)]) == 2
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        main(["render", str(ply), "--cameras", str(cams_json), "--out", str(out),
              "--background", "2,0,0"])  # fmt: skip
    assert exc.value.code == 2
    assert not out.exists()
