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
from engine.io import save, write_ply
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
    # What a 3DGS trainer writes after training on this transforms.json: the camera
    # file's world, untouched (write_ply stores the values it is given).
    ply = tmp_path / "scene.ply"
    write_ply(ply, g)
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


def _pixels(folder) -> list[np.ndarray]:
    return [np.asarray(Image.open(f)).astype(int) for f in sorted(folder.glob("*.png"))]


def test_render_needs_no_images_only_w_and_h(scene, tmp_path, capsys):
    """A camera path: frames with poses and the top-level w/h, images never rendered."""
    g, cams, ply, cams_json = scene
    data = json.loads(cams_json.read_text())
    for frame in data["frames"]:
        frame["file_path"] = "nowhere/" + frame["file_path"].split("/")[-1]
    no_images = tmp_path / "path.json"
    no_images.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["render", str(ply), "--cameras", str(no_images), "--out", str(out),
                 "--background", "black", "--device", "cpu"]) == 0  # fmt: skip
    assert sorted(f.name for f in out.glob("*.png")) == ["view_0.png", "view_1.png", "view_2.png"]
    expected = render(g, cams, background=torch.zeros(3)).colors
    for i, pixels in enumerate(_pixels(out)):
        assert np.abs(pixels - to_uint8(expected[i]).astype(int)).max() <= 1
    # No file_path at all: frames are named by their index.
    for frame in data["frames"]:
        del frame["file_path"]
    no_paths = tmp_path / "no_paths.json"
    no_paths.write_text(json.dumps(data))
    out2 = tmp_path / "out2"
    assert main(["render", str(ply), "--cameras", str(no_paths), "--out", str(out2)]) == 0
    assert sorted(f.name for f in out2.glob("*.png")) == ["000.png", "001.png", "002.png"]
    # Neither w/h nor an image to take the size from: one clear line, nothing written.
    del data["w"], data["h"]
    no_size = tmp_path / "no_size.json"
    no_size.write_text(json.dumps(data))
    capsys.readouterr()
    out3 = tmp_path / "out3"
    assert main(["render", str(ply), "--cameras", str(no_size), "--out", str(out3)]) == 2
    assert "add 'w' and 'h'" in capsys.readouterr().err
    assert not out3.exists()


def test_render_axes_raw_lines_up_a_shared_frame_standard_our_exports(scene, tmp_path):
    """The 3DGS case (file in the cameras' frame) needs the default raw read; a file that
    `engine.io.save` / `gd reconstruct` wrote (PLY space) lines up with --axes standard."""
    g, cams, ply, cams_json = scene
    expected = [to_uint8(c).astype(int) for c in render(g, cams, background=torch.zeros(3)).colors]

    def run(path, out, *extra):
        assert main(["render", str(path), "--cameras", str(cams_json), "--out", str(out),
                     "--background", "black", "--device", "cpu", *extra]) == 0  # fmt: skip
        return max(np.abs(p - e).max() for p, e in zip(_pixels(out), expected, strict=True))

    assert run(ply, tmp_path / "raw") <= 1  # trained file, default raw: lines up
    exported = tmp_path / "exported.ply"
    save(g, exported)  # standard: PLY space
    assert run(exported, tmp_path / "std", "--axes", "standard") <= 1
    assert run(exported, tmp_path / "wrong") > 100  # read raw, it is turned away
