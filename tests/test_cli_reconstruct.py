"""`gd reconstruct` end to end on 64² copies of the bundled sample prop, with the tiny
randomly initialised model (`--model object-tiny --random-init`), and its bad inputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.cli import main
from engine.io import load
from engine.reconstruct_cli import parse_bbox
from engine.views import load_nerf_scene

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_props" / "objects" / "000000"
SIZE = 64
TINY = ["--model", "object-tiny", "--random-init", "--device", "cpu"]


def make_views(
    folder: Path, ext: str = ".png", with_ext_in_json: bool = True, frames: list[int] | None = None
) -> Path:
    """64² copies of the sample's input views and a transforms.json for them.

    Args:
        ext: image file format (".png", ".webp", ...).
        with_ext_in_json: False writes NeRF-synthetic style `file_path`s without extension.
        frames: which of the 4 input views to use, in order (repeats allowed).
    Returns:
        The transforms.json path.
    """
    data = json.loads((SAMPLE / "transforms_input.json").read_text())
    scale = SIZE / data["w"]
    for key in ("fl_x", "fl_y", "cx", "cy"):
        data[key] *= scale
    data["w"] = data["h"] = SIZE
    (folder / "images").mkdir(parents=True, exist_ok=True)
    picked = []
    order = frames if frames is not None else range(len(data["frames"]))
    for j, i in enumerate(order):
        frame = dict(data["frames"][i])
        with Image.open(SAMPLE / frame["file_path"]) as im:
            small = im.convert("RGBA").resize((SIZE, SIZE), Image.BOX)
        name = f"images/view_{j:02d}"
        small.save(folder / (name + ext), lossless=True) if ext == ".webp" else small.save(
            folder / (name + ext)
        )
        frame["file_path"] = name + ext if with_ext_in_json else name
        picked.append(frame)
    data["frames"] = picked
    path = folder / "transforms.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> Path:
    return make_views(tmp_path_factory.mktemp("views"))


def test_reconstruct_writes_coarse_and_fine(views, tmp_path, capsys):
    out = tmp_path / "prop.ply"
    torch.manual_seed(0)
    assert main(["reconstruct", str(views), "-o", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    g = load(out)
    counts = dict(re.findall(r"(\w+) ([\d,]+)", text.split("Gaussians:")[1].splitlines()[0]))
    counts = {k: int(v.replace(",", "")) for k, v in counts.items()}
    assert len(g) == counts["final"] > counts["coarse"] > 0
    assert counts["fine"] > counts["candidates"] > 0
    for stage in ("prepare", "backbone", "select", "densify", "total"):
        assert f"{stage} " in text.split("seconds:")[1]
    assert f"wrote {out}: {len(g):,} Gaussians (coarse + fine)" in text
    assert bool(torch.isfinite(g.means).all())


def test_no_densify_writes_only_coarse_gaussians(views, tmp_path, capsys):
    out = tmp_path / "nested" / "dir" / "prop.spz"
    assert main(["reconstruct", str(views), "-o", str(out), "--no-densify", *TINY]) == 0
    text = capsys.readouterr().out
    coarse = int(re.search(r"coarse ([\d,]+)", text).group(1).replace(",", ""))
    assert len(load(out)) == coarse
    assert "(coarse only)" in text and "candidates" not in text


@pytest.mark.parametrize("suffix", [".splat", ".glb", ".compressed.ply"])
def test_output_format_follows_the_suffix(views, tmp_path, suffix):
    out = tmp_path / f"prop{suffix}"
    assert main(["reconstruct", str(views), "-o", str(out), "--no-densify", *TINY]) == 0
    assert len(load(out)) > 0


def test_budget_bbox_and_folder_input(views, tmp_path, capsys):
    out = tmp_path / "prop.ply"
    args = ["reconstruct", str(views.parent), "-o", str(out), "--budget", "50",
            "--bbox=-0.5,-0.5,-0.5,0.5,0.5,0.5", *TINY]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert re.search(r"candidates 50\b", text)


def test_file_paths_without_extension_find_webp_images(tmp_path, capsys):
    views = make_views(tmp_path, ext=".webp", with_ext_in_json=False, frames=[0, 1])
    loaded = load_nerf_scene(views)
    assert loaded.images.shape == (2, SIZE, SIZE, 3)
    out = tmp_path / "prop.ply"
    assert main(["reconstruct", str(views), "-o", str(out), "--no-densify", *TINY]) == 0
    assert "read 2 views (64x64)" in capsys.readouterr().out


def test_one_view_is_enough(tmp_path):
    views = make_views(tmp_path, frames=[0])
    out = tmp_path / "prop.ply"
    assert main(["reconstruct", str(views), "-o", str(out), "--no-densify", *TINY]) == 0
    assert out.is_file()


def test_rgba_is_composited_on_the_background(views):
    white = load_nerf_scene(views).images
    black = load_nerf_scene(views, background=(0.0, 0.0, 0.0)).images
    corner = (slice(None), 0, 0)  # the sample's corners are transparent
    assert torch.allclose(white[corner], torch.ones(4, 3))
    assert torch.allclose(black[corner], torch.zeros(4, 3))


def _fails(args: list[str], capsys, *words: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gd reconstruct: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err


def test_bad_views_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    out = out_dir / "sub" / "prop.ply"
    base = ["-o", str(out), "--no-densify", *TINY]

    # More views than the model reads are fine now: it reads the most spread-out ones and
    # refinement uses all (tests/test_refine.py); repeated poses are refused below.
    sizes = make_views(tmp_path / "sizes")
    Image.new("RGBA", (SIZE + 1, SIZE)).save(tmp_path / "sizes" / "images" / "view_02.png")
    _fails(["reconstruct", str(sizes), *base], capsys, "view_02.png", "65x64")

    away = make_views(tmp_path / "away")
    data = json.loads(away.read_text())
    m = data["frames"][1]["transform_matrix"]
    # Turn camera 1 around (OpenGL: it looked along -z, now along +z) in the same spot.
    for row in m[:3]:
        row[0], row[2] = -row[0], -row[2]
    away.write_text(json.dumps(data))
    _fails(["reconstruct", str(away), *base], capsys, "camera 1")

    _fails(["reconstruct", str(tmp_path / "missing.json"), *base], capsys, "missing.json")
    _fails(["reconstruct", str(sizes), "-o", str(tmp_path / "prop.xyz"), *TINY], capsys,
           "unsupported splat file suffix")  # fmt: skip

    # NaN pixels cannot come from a PNG; they can from a loader (EXR, a custom source).
    import engine.views

    real = engine.views.load_nerf_scene

    def with_nan(*args, **kwargs):
        views = real(*args, **kwargs)
        views.images[2, 5, 5, 1] = math.nan
        return views

    monkeypatch.setattr(engine.views, "load_nerf_scene", with_nan)
    good = make_views(tmp_path / "good")
    _fails(["reconstruct", str(good), *base], capsys, "image 2", "NaN")
    monkeypatch.undo()
    assert not out_dir.exists()
    assert not (tmp_path / "prop.xyz").exists()


def test_identical_camera_poses_exit_2_and_write_nothing(tmp_path, capsys):
    """Four frames with one transform_matrix (the audit's case) have no baseline."""
    views = make_views(tmp_path / "same")
    data = json.loads(views.read_text())
    for frame in data["frames"]:
        frame["transform_matrix"] = data["frames"][0]["transform_matrix"]
    views.write_text(json.dumps(data))
    out = tmp_path / "out" / "prop.ply"
    _fails(["reconstruct", str(views), "-o", str(out), *TINY], capsys,
           "all 4 cameras are at the same position")  # fmt: skip
    duplicated = make_views(tmp_path / "dup", frames=[0, 1, 2, 1])
    _fails(["reconstruct", str(duplicated), "-o", str(out), *TINY], capsys,
           "views 1 and 3 have the same camera pose")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_missing_shipped_weights_say_what_to_do(views, tmp_path, capsys, monkeypatch):
    import engine.weights

    monkeypatch.setattr(engine.weights, "ASSETS", tmp_path / "no_assets")
    out = tmp_path / "prop.ply"
    _fails(["reconstruct", str(views), "-o", str(out), "--device", "cpu"], capsys,
           "object-small", "gd train", "--model")  # fmt: skip
    assert not out.exists()


def test_failed_write_leaves_no_file_or_folder(views, tmp_path, capsys, monkeypatch):
    import engine.io

    def broken(g, path, **options):
        raise ValueError("disk says no")

    monkeypatch.setattr(engine.io, "save", broken)
    out = tmp_path / "a" / "b" / "prop.ply"
    _fails(["reconstruct", str(views), "-o", str(out), "--no-densify", *TINY], capsys,
           "disk says no")  # fmt: skip
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("text", ["1,2,3", "0,0,0,1,1,x", "0,0,0,1,-1,1"])
def test_bad_bbox_is_a_usage_error(views, tmp_path, text):
    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", str(views), "-o", str(tmp_path / "p.ply"), f"--bbox={text}", *TINY])
    assert exc.value.code == 2


def test_parse_bbox():
    box = parse_bbox("-1,-2,-3,1,2,3")
    assert box.tolist() == [[-1.0, -2.0, -3.0], [1.0, 2.0, 3.0]]
