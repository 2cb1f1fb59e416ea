"""ScenesDataset / load_scene on the bundled sample scene (examples/sample_scene)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.data.datasets import collate_views
from engine.data.scenes import ScenesDataset, load_scene

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_scene"


def test_sample_scene_items_cameras_and_depth_in_metres():
    data = ScenesDataset(SAMPLE, "all")
    assert len(data) == 1 and len(ScenesDataset(SAMPLE, "test")) == 0
    item = data[0]
    assert item["index"] == 0
    assert item["context_images"].shape == (2, 256, 256, 3)
    assert item["target_images"].shape == (4, 256, 256, 3)
    assert item["context_depths"].shape == (2, 256, 256)
    assert item["target_depths"].shape == (4, 256, 256)
    assert len(item["context_cameras"]) == 2 and len(item["target_cameras"]) == 4
    images = torch.cat([item["context_images"], item["target_images"]])
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.02
    near, far = float(item["near"]), float(item["far"])
    meta = json.loads((SAMPLE / "scenes/000000/transforms_context.json").read_text())
    assert (near, far) == pytest.approx((meta["near"], meta["far"]))
    depths = torch.cat([item["context_depths"], item["target_depths"]])
    valid = depths > 0
    assert valid.float().mean() > 0.5
    # near / far are 0.9 x the smallest and 1.1 x the largest depth (mm rounding aside).
    assert depths[valid].min() >= near - 1e-3 and depths[valid].max() <= far + 1e-3
    assert depths[valid].min() < near / 0.9 + 0.01 and depths[valid].max() > far / 1.1 - 0.01

    # Metres and planar: context view 0's pixels lifted by their depth land, in view 1,
    # where view 1's own depth map says the surface is (for the pixels both views see).
    cams = item["context_cameras"]
    d0 = item["context_depths"][0].double()
    v, u = torch.meshgrid(torch.arange(256.0) + 0.5, torch.arange(256.0) + 0.5, indexing="ij")
    cam0 = cams[0].to(dtype=torch.float64)
    x = (u - cam0.cx) / cam0.fx * d0
    y = (v - cam0.cy) / cam0.fy * d0
    local = torch.stack([x, y, d0, torch.ones_like(d0)], -1)[d0 > 0]
    world = (local @ cam0.camera_to_world[0].T)[:, :3]
    pixels, z = cams[1].to(dtype=torch.float64).project(world)
    pixels, z = pixels[0], z[0]
    inside = (pixels >= 1).all(-1) & (pixels[:, 0] < 255) & (pixels[:, 1] < 255) & (z > 0)
    assert inside.float().mean() > 0.2
    col, row = pixels[inside].long().unbind(-1)
    seen = item["context_depths"][1].double()[row, col]
    agree = (seen - z[inside]).abs() < 0.03 * z[inside] + 0.02
    assert agree.float().mean() > 0.6  # the rest: occluded in view 1, or edge pixels


def test_collate_and_n_target():
    data = ScenesDataset(SAMPLE, "train", n_target=2)
    batch = collate_views([data[0], data[0]])
    assert batch["context_images"].shape == (2, 2, 256, 256, 3)
    assert batch["target_depths"].shape == (2, 2, 256, 256)
    assert batch["near"].shape == (2,) and batch["far"].shape == (2,)
    assert len(batch["context_cameras"]) == 2 and len(batch["target_cameras"][0]) == 2


def test_max_side_reduces_views_cameras_and_depth():
    full = load_scene(SAMPLE / "scenes" / "000000", n_target=1)
    small = load_scene(SAMPLE / "scenes" / "000000", n_target=1, max_side=64)
    assert small["context_images"].shape == (2, 64, 64, 3)
    assert small["context_depths"].shape == (2, 64, 64)
    assert small["target_depths"].shape == (1, 64, 64)
    cams = small["context_cameras"]
    assert (cams.width, cams.height) == (64, 64)
    assert torch.allclose(cams.fx * 4, full["context_cameras"].fx)
    # Nearest sampling: every reduced depth is one of the full map's values (no blends
    # across edges), taken near the centre of its 4 x 4 block.
    assert torch.equal(small["context_depths"], full["context_depths"][:, 2::4, 2::4])


def test_errors_name_the_problem(tmp_path):
    root = tmp_path / "scenes"
    shutil.copytree(SAMPLE, root)
    folder = root / "scenes" / "000000"
    (folder / "target_depth" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match="001.png"):
        load_scene(folder)
    meta = json.loads((folder / "transforms_context.json").read_text())
    meta["near"] = meta["far"]
    (folder / "transforms_context.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="near < far"):
        load_scene(folder)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(kind="props", format="gd-props")
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a scenes dataset"):
        ScenesDataset(root)


def test_a_dataset_still_being_made_lists_scenes_finished_after_its_manifest(tmp_path, monkeypatch):
    """Training may start while `gd data make` still renders: the manifest (written at the
    end of a run) lists none of the new scenes, the markers on disk and (seed, index) do."""
    import engine.data.layout as layout

    seed, total, fractions = 1, 40, {"val": 0.2, "test": 0.2}
    finished_now = [i for i in range(total) if i % 3 == 0]
    manifest = {"seed": seed, "objects": total, "finished": 2, "split_fractions": fractions,
                "splits": {"train": [], "val": [], "test": []}}  # fmt: skip
    for i in finished_now:
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "done").touch()
    monkeypatch.setattr(layout, "is_finished", lambda folder: (folder / "done").is_file())
    folder = lambda i: tmp_path / str(i)  # noqa: E731
    got = {s: layout.finished_in_split(manifest, s, folder) for s in ("train", "val", "test")}
    for name, ids in got.items():
        assert ids == [i for i in finished_now if layout.split_of(seed, i, fractions) == name]
    assert sorted(sum(got.values(), [])) == finished_now
    # A finished dataset is what its manifest says.
    assert layout.finished_in_split({**manifest, "finished": total}, "train", folder) == []


def test_depth_png_round_trips_through_the_reader(tmp_path):
    """write_depth_png (atomic, 16-bit millimetres, 0 for no surface or out of range) and
    images.read_depth_png (NaN for those) agree."""
    import numpy as np

    from engine.data.layout import DEPTH_SCALE
    from engine.data.scene_generator import write_depth_png
    from engine.images import read_depth_png

    depth = np.array([[1.2345, np.nan], [70.0, 0.0004]], dtype=np.float32)
    path = tmp_path / "d" / "depth.png"
    write_depth_png(path, depth)
    assert sorted(p.name for p in path.parent.iterdir()) == ["depth.png"]  # no temp file left
    back = read_depth_png(path, DEPTH_SCALE)
    assert abs(float(back[0, 0]) - 1.234) < 1e-6 or abs(float(back[0, 0]) - 1.235) < 1e-6
    assert np.isnan(back[0, 1]) and np.isnan(back[1, 0]) and np.isnan(back[1, 1])
