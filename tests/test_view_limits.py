"""Hostile view inputs (hardening issue 12): image bombs, huge legal images, nested JSON.

Views are decoded in one place (`engine.images.read_rgba`), reduced to the size the
model needs, and refused above `MAX_IMAGE_PIXELS` from their header; JSON readers of user
files turn a `RecursionError` into their own error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.camera_formats import colmap_to_cameras, read_colmap, read_nerf_transforms
from engine.cameras import CameraError
from engine.cli import main
from engine.data.lara import read_gso_scene
from engine.data.layout import read_json
from engine.images import (
    MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    composite,
    image_size,
    read_depth_png,
    read_rgba,
)
from engine.views import load_views

from ._bomb_helpers import PEAK_LIMIT, png_uniform, run_measured

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_props" / "objects" / "000000"
NESTED = "[" * 100_000 + "]" * 100_000


def transforms(folder: Path, image: str, size: int, frames: int = 2) -> Path:
    """A transforms.json of `frames` of the sample's input poses, all showing `image`
    (relative to `folder`), with intrinsics scaled to `size`²."""
    data = json.loads((SAMPLE / "transforms_input.json").read_text())
    scale = size / data["w"]
    for key in ("fl_x", "fl_y", "cx", "cy"):
        data[key] *= scale
    data["w"] = data["h"] = size
    data["frames"] = [dict(f, file_path=image) for f in data["frames"][:frames]]
    path = folder / "transforms.json"
    path.write_text(json.dumps(data))
    return path


def test_a_20000_square_png_is_refused_from_its_header(tmp_path: Path) -> None:
    """Was a DecompressionBombError traceback (exit 1); now one line, exit 2."""
    (tmp_path / "huge.png").write_bytes(png_uniform(20_000, 20_000))  # 840 KB, valid
    views = transforms(tmp_path, "huge.png", 20_000, frames=4)
    out = tmp_path / "prop.ply"
    args = ["reconstruct", str(views), "-o", str(out), "--model", "object-tiny", "--random-init"]
    run = run_measured(gd=[*args, "--device", "cpu"])
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gd reconstruct: error: "), run.stderr
    assert "huge.png: image is too large (400,000,000 pixels; a view may have" in lines[0]
    assert not out.exists()
    assert run.peak_bytes < PEAK_LIMIT


def test_image_size_from_the_header_is_checked_against_the_limit(tmp_path: Path) -> None:
    (tmp_path / "edge.png").write_bytes(png_uniform(8192, 8192))
    assert image_size(tmp_path / "edge.png") == (8192, 8192)  # the limit itself is allowed
    (tmp_path / "over.png").write_bytes(png_uniform(8193, 8192))
    with pytest.raises(ImageTooLargeError, match=f"at most {MAX_IMAGE_PIXELS:,}"):
        image_size(tmp_path / "over.png")
    with pytest.raises(ImageTooLargeError, match="over.png"):
        read_rgba(tmp_path / "over.png", (64, 64))
    # A transforms.json without w/h takes the size from the first image's header.
    views = transforms(tmp_path, "over.png", 8193)
    data = json.loads(views.read_text())
    del data["w"], data["h"]
    views.write_text(json.dumps(data))
    with pytest.raises(CameraError, match="over.png: image is too large"):
        read_nerf_transforms(views)


def test_a_depth_png_is_decoded_under_the_same_limit(tmp_path: Path) -> None:
    """Scene depth maps go through the view images' header check, not a bare Image.open."""
    (tmp_path / "over.png").write_bytes(png_uniform(8193, 8192))
    with pytest.raises(ImageTooLargeError, match="over.png: image is too large"):
        read_depth_png(tmp_path / "over.png", 0.001)
    depth = np.array([[0, 1500], [65535, 7]], np.uint16)
    Image.fromarray(depth).save(tmp_path / "depth.png")
    got = read_depth_png(tmp_path / "depth.png", 0.001)
    assert np.isnan(got[0, 0])
    np.testing.assert_allclose(got[0, 1:].tolist() + got[1].tolist(), [1.5, 65.535, 0.007],
                               rtol=1e-6)  # fmt: skip


def test_a_legal_8000_square_view_is_decoded_reduced(tmp_path: Path) -> None:
    """An 8000² RGBA view was decoded whole into float32 (4 GB a frame); now it costs its
    8-bit pixels (256 MB, and a premultiplied copy) and floats at the model's size."""
    (tmp_path / "big.png").write_bytes(png_uniform(8000, 8000, rgba=True))
    views = transforms(tmp_path, "big.png", 8000)
    code = (
        "from engine.views import load_nerf_scene\n"
        f"v = load_nerf_scene({str(views)!r}, max_side=256)\n"
        "print(tuple(v.images.shape), v.cameras.width, round(float(v.cameras.fx[0]), 3),"
        " round(float(v.images[0, 5, 5, 0]), 4))\n"
    )
    run = run_measured(python=code)
    assert run.returncode == 0, run.stderr
    full_fx = json.loads(views.read_text())["fl_x"]
    # Straight colour 200/255 at alpha 200/255, composited on white.
    value = 200 / 255 * 200 / 255 + (1 - 200 / 255)
    expected = f"(2, 256, 256, 3) 256 {round(full_fx * 256 / 8000, 3)} {round(value, 4)}"
    assert run.stdout.strip() == expected
    assert run.peak_bytes < PEAK_LIMIT, f"peak {run.peak_bytes / 2**30:.2f} GiB"


def _smooth_rgba(size: int) -> np.ndarray:
    """(size, size, 4) uint8 gradients with alpha varying from 0 to 255."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    channels = [x, y, 0.5 + 0.5 * np.sin(6 * x * y), np.clip(1.5 * x, 0, 1)]
    return np.round(np.stack(channels, -1) * 255).astype(np.uint8)


@pytest.mark.parametrize(("fmt", "mode", "tolerance"), [("PNG", "RGBA", 2.5), ("JPEG", "RGB", 4)])
def test_reduced_decoding_matches_resampling_the_full_image(
    tmp_path: Path, fmt: str, mode: str, tolerance: float
) -> None:
    """What the model received before (composite at full size, then area filter) and what
    it receives now (decoded reduced, then composited) agree to a few 8-bit steps."""
    path = tmp_path / f"view.{fmt.lower()}"
    Image.fromarray(_smooth_rgba(1024)).convert(mode).save(path, format=fmt, quality=95)
    full = torch.from_numpy(composite(read_rgba(path)))[None].permute(0, 3, 1, 2)
    before = F.interpolate(full, size=(256, 256), mode="area")[0].permute(1, 2, 0)
    after = torch.from_numpy(composite(read_rgba(path, (256, 256))))
    assert after.shape == (256, 256, 3)
    assert float((after - before).abs().max()) <= tolerance / 255


def test_load_views_max_side_scales_the_cameras(tmp_path: Path) -> None:
    Image.fromarray(_smooth_rgba(512)).save(tmp_path / "v.png")
    frames = read_nerf_transforms(transforms(tmp_path, "v.png", 512))
    full = load_views(frames.image_paths, frames.cameras)
    small = load_views(frames.image_paths, frames.cameras, max_side=128)
    assert full.images.shape == (2, 512, 512, 3) and small.images.shape == (2, 128, 128, 3)
    assert (small.cameras.width, small.cameras.height) == (128, 128)
    assert torch.allclose(small.cameras.fx, frames.cameras.fx / 4)
    assert torch.allclose(small.cameras.cx, frames.cameras.cx / 4)
    same = load_views(frames.image_paths, frames.cameras, max_side=1024)  # never enlarged
    assert torch.equal(same.images, full.images)


def test_deeply_nested_transforms_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Was a RecursionError with a 32-line traceback."""
    path = tmp_path / "transforms.json"
    path.write_text(NESTED)
    with pytest.raises(CameraError, match="nested too deeply"):
        read_nerf_transforms(path)
    out = tmp_path / "prop.ply"
    assert main(["reconstruct", str(path), "-o", str(out), "--model", "object-tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "transforms.json: invalid JSON: nested too deeply" in err[0]
    assert not out.exists()


def test_deeply_nested_dataset_json(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(NESTED)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_json(tmp_path / "manifest.json")
    (tmp_path / "transforms.json").write_text(NESTED)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_gso_scene(tmp_path)


@pytest.mark.parametrize("text", [NESTED, "[1, 2]"])
def test_training_config_json(tmp_path: Path, capsys: pytest.CaptureFixture, text: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(text)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{config}: " in err[0]
    assert not (tmp_path / "run").exists()


def test_transforms_values_beyond_float32_are_refused(tmp_path: Path) -> None:
    """Found by bench/fuzz_readers.py: cy = -1e308 is finite in the JSON but read as -inf
    into float32 cameras, which were returned without a check."""
    Image.new("RGB", (8, 8)).save(tmp_path / "v.png")
    views = transforms(tmp_path, "v.png", 8)
    data = json.loads(views.read_text())
    data["cy"] = -1e308
    views.write_text(json.dumps(data))
    with pytest.raises(CameraError, match=f"{views}: camera values must be finite"):
        read_nerf_transforms(views)
    assert read_nerf_transforms(views, dtype=torch.float64).cameras.cy[0] == -1e308


def test_colmap_values_beyond_float32_are_refused(tmp_path: Path) -> None:
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 40 30 1e300 35 20 15\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n")
    model = read_colmap(tmp_path)
    with pytest.raises(CameraError, match="camera values must be finite"):
        colmap_to_cameras(model)
    assert float(colmap_to_cameras(model, dtype=torch.float64)[0].fx[0]) == 1e300


def test_png_chunk_length_past_the_file(tmp_path: Path) -> None:
    """Found by bench/fuzz_readers.py: an IDAT length field of 2 GB in a 100-byte PNG makes
    Pillow allocate 2 GB to skip it; where that fails it was a MemoryError traceback."""
    Image.new("RGBA", (16, 16)).save(tmp_path / "v.png")
    data = bytearray((tmp_path / "v.png").read_bytes())
    at = data.find(b"IDAT") - 4
    data[at : at + 4] = (0x7FFFFFF0).to_bytes(4, "big")
    (tmp_path / "v.png").write_bytes(data)
    path = tmp_path / "v.png"
    code = f"from engine.images import read_rgba; read_rgba({str(path)!r})"
    run = run_measured(python=code, data_limit=1 << 30)  # a machine without 2 GB to spare
    last = run.stderr.strip().splitlines()[-1]
    assert last == f"ValueError: {path}: cannot read image (out of memory decoding it)"
