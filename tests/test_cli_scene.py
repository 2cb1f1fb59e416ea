"""`gd reconstruct --model scene-*` and `gd evaluate` on a scenes dataset, end to end with
the tiny randomly initialised scene model on the bundled sample scene, and the scene
model's bad inputs: one view, views that do not overlap, views of different sizes, no
depth range. Each is one clear message (exit status 2) with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from engine.cli import main
from engine.io import load

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_scene"
SCENE = SAMPLE / "scenes" / "000000"
TINY = ["--model", "scene-tiny", "--random-init", "--device", "cpu"]


@pytest.fixture
def scene(tmp_path) -> Path:
    """A copy of the sample scene's context views and transforms (tests edit it)."""
    folder = tmp_path / "scene"
    shutil.copytree(SCENE / "context", folder / "context")
    shutil.copy(SCENE / "transforms_context.json", folder / "transforms.json")
    return folder / "transforms.json"


def _fails(argv: list[str], capsys, *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_scene_reconstruct_writes_world_space_gaussians(scene, tmp_path, capsys):
    out = tmp_path / "out" / "room.ply"
    assert main(["reconstruct", str(scene), "-o", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "depth range 1.1919 to 4.9016; the model read 2 views" in text
    assert "coarse + fine" in text
    gaussians = load(out)
    assert len(gaussians) > 2 * 64 * 64  # every pixel of both views, plus the fine ones
    # Not normalised into an object cube: the room is metres across around its cameras.
    extent = gaussians.means.amax(0) - gaussians.means.amin(0)
    assert float(extent.max()) > 2.0


def test_scene_flags_override_the_file_and_are_required_without_it(scene, tmp_path, capsys):
    out = tmp_path / "room.ply"
    data = json.loads(scene.read_text())
    del data["near"], data["far"]
    scene.write_text(json.dumps(data))
    _fails(["reconstruct", str(scene), "-o", str(out), *TINY], capsys,
           "no depth range", "--near and --far")  # fmt: skip
    assert not out.exists()
    argv = ["reconstruct", str(scene), "-o", str(out), "--near", "1", "--far", "6", *TINY]
    assert main(argv) == 0
    assert "depth range 1 to 6" in capsys.readouterr().out
    _fails(["reconstruct", str(scene), "-o", str(out), "--near", "6", "--far", "1", *TINY],
           capsys, "0 < near < far")  # fmt: skip
    _fails(["reconstruct", str(scene), "-o", str(out), "--bbox", "0,0,0,1,1,1", *TINY], capsys,
           "--bbox is for object models")  # fmt: skip


def test_scene_bad_views_exit_2_and_write_nothing(scene, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out = out_dir / "room.ply"
    data = json.loads(scene.read_text())

    one = scene.parent / "one.json"
    one.write_text(json.dumps({**data, "frames": data["frames"][:1]}))
    _fails(["reconstruct", str(one), "-o", str(out), *TINY], capsys, "2 to 4 context views")

    away = scene.parent / "away.json"
    turned = json.loads(json.dumps(data))
    for row in turned["frames"][1]["transform_matrix"][:3]:
        row[0], row[2] = -row[0], -row[2]  # camera 1 looks the other way from the same spot
    away.write_text(json.dumps(turned))
    _fails(["reconstruct", str(away), "-o", str(out), *TINY], capsys,
           "does not overlap any other view")  # fmt: skip

    sizes = scene.parent / "sizes.json"
    other = json.loads(json.dumps(data))
    other["frames"][1].update({"w": 128, "h": 128, "fl_x": 85.3, "fl_y": 85.3, "cx": 64, "cy": 64})
    sizes.write_text(json.dumps(other))
    _fails(["reconstruct", str(sizes), "-o", str(out), *TINY], capsys,
           "frame 1 is 128x128 pixels but frame 0 is 256x256")  # fmt: skip

    Image.new("RGB", (128, 96)).save(scene.parent / "context" / "001.png")
    _fails(["reconstruct", str(scene), "-o", str(out), *TINY], capsys, "001.png", "128x96")
    assert not out_dir.exists()


def test_object_flags_and_models_do_not_mix(scene, tmp_path, capsys):
    out = tmp_path / "prop.ply"
    argv = ["reconstruct", str(scene), "-o", str(out), "--near", "1", "--far", "5",
            "--model", "object-tiny", "--random-init"]  # fmt: skip
    _fails(argv, capsys, "--near and --far are for scene models")
    assert not out.exists()


def test_evaluate_scores_a_scenes_dataset_beside_the_baseline(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "scene-tiny", str(SAMPLE), "--split", "all", "--random-init",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "1 scenes: PSNR coarse" in capsys.readouterr().out
    data = json.loads((out / "metrics.json").read_text())
    summary = data["summary"]
    assert summary["scenes"] == 1
    for method in ("baseline", "coarse", "fine"):
        assert 5.0 < summary[method]["psnr"] < 60.0
    assert set(summary["depth"]) == {"coarse", "baseline"}
    report = (out / "report.md").read_text()
    assert "plane-sweep baseline" in report and "scene_000000.png" in report
    assert (out / "scene_000000.png").is_file()
    _fails(["evaluate", "object-tiny", str(SAMPLE), "--split", "all", "--random-init", "--out",
            str(tmp_path / "no")], capsys, "not a scene model")  # fmt: skip
    assert not (tmp_path / "no").exists()
    _fails(["evaluate", "scene-tiny", str(SAMPLE), "--split", "all", "--random-init", "--out",
            str(tmp_path / "no"), "--budget", "10"],
           capsys, "--budget is for object models")  # fmt: skip
    assert not (tmp_path / "no").exists()
