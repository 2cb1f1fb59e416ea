"""Real Blender, real Cycles: render a 2-object dataset at 64^2 and check images, alpha,
cameras (re-projected surface points land on the silhouette), resume and determinism."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel"),
]

RES = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from engine.data.make import MakeConfig, make_dataset

    root = tmp_path_factory.mktemp("props")
    cfg = MakeConfig(out=root, objects=2, resolution=RES, seed=3, workers=2,
                     views_in=4, views_target=2, progress=False)  # fmt: skip
    report = make_dataset(cfg)
    assert report.failed == {}
    assert sorted(report.rendered) == [0, 1]
    return root, cfg


def _load(root, index):
    from engine.data.datasets import PropsDataset

    ds = PropsDataset(root, "all")
    position = ds.indices.index(index)
    prop = json.loads((root / "objects" / f"{index:06d}" / "prop.json").read_text())
    return ds[position], prop


def test_manifest_and_files(dataset):
    from engine.data.layout import split_of

    root, cfg = dataset
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["resolution"] == RES
    assert manifest["views"] == {"input": 4, "target": 2}
    assert manifest["finished"] == 2
    assert sorted(i for ids in manifest["splits"].values() for i in ids) == [0, 1]
    for i in (0, 1):
        assert i in manifest["splits"][split_of(3, i)]
        folder = root / "objects" / f"{i:06d}"
        assert (folder / "done.json").is_file()
        assert len(list((folder / "input").glob("*.png"))) == 4
        assert len(list((folder / "target").glob("*.png"))) == 2


def test_images_have_transparent_background_and_content(dataset):
    root, _ = dataset
    for path in sorted((root / "objects").glob("*/*/*.png")):
        with Image.open(path) as image:
            assert image.mode == "RGBA" and image.size == (RES, RES), path
            rgba = np.asarray(image)
        alpha = rgba[..., 3]
        # Transparent film: corners empty, the prop covers a real part of the frame.
        assert alpha[0, 0] == 0 and alpha[-1, -1] == 0, path
        coverage = (alpha > 127).mean()
        assert 0.01 < coverage < 0.9, (path, coverage)
        assert rgba[alpha > 127, :3].std() > 0, path  # shaded, not a flat fill


def test_cameras_follow_the_recorded_plan(dataset):
    from engine.camera_formats import read_nerf_transforms

    root, _ = dataset
    for i in (0, 1):
        folder = root / "objects" / f"{i:06d}"
        prop = json.loads((folder / "prop.json").read_text())
        raw = json.loads((folder / "transforms_input.json").read_text())
        assert raw["camera_angle_x"] == pytest.approx(
            np.radians(prop["views"]["fov_deg"]), abs=1e-6
        )
        assert {"fl_x", "fl_y", "cx", "cy", "w", "h"} <= set(raw)
        assert 30 <= prop["views"]["fov_deg"] <= 50
        cams = read_nerf_transforms(folder / "transforms_input.json").cameras
        # Every camera sits at the planned distance and looks at the origin (the prop's
        # centre projects to the image centre), the ring is at 20 degrees elevation.
        centres = cams.centers
        assert torch.allclose(
            centres.norm(dim=1), torch.tensor(prop["views"]["distance"]).float(), rtol=1e-4
        )
        uv, depth = cams.project(torch.zeros(1, 3))
        assert torch.allclose(uv, torch.full_like(uv, RES / 2), atol=1e-3)
        assert (depth > 0).all()
        elevation = torch.rad2deg(torch.asin(centres[:, 2] / centres.norm(dim=1)))
        assert torch.allclose(elevation, torch.tensor(20.0), atol=1e-3)


@pytest.mark.parametrize("index", [0, 1])
def test_surface_points_reproject_onto_the_silhouette(dataset, index):
    root, _ = dataset
    item, prop = _load(root, index)
    points = torch.tensor(prop["surface_points"], dtype=torch.float32)
    corners = torch.tensor(
        [[x, y, z] for x in (prop["bbox_min"][0], prop["bbox_max"][0])
         for y in (prop["bbox_min"][1], prop["bbox_max"][1])
         for z in (prop["bbox_min"][2], prop["bbox_max"][2])]
    )  # fmt: skip
    assert (corners.abs() <= 0.5 + 1e-5).all()  # normalised into [-0.5, 0.5]^3
    for split in ("input", "target"):
        cams, alphas = item[f"{split}_cameras"], item[f"{split}_alphas"]
        uv, depth = cams.project(points)
        assert (depth > 0).all()
        u = uv[..., 0].floor().long().clamp(0, RES - 1)
        v = uv[..., 1].floor().long().clamp(0, RES - 1)
        views = torch.arange(len(cams))[:, None]
        centre = alphas[views, v, u]
        # Vertices on the outline may fall on a half-covered pixel: allow one pixel.
        near = F.max_pool2d(alphas[:, None], 3, 1, 1)[:, 0][views, v, u]
        assert (near > 0.5).all(), (split, (near <= 0.5).sum())
        assert (centre > 0.5).float().mean() > 0.7, split
        # And the silhouette lies inside the projected bounding box (one pixel slack).
        box_uv, _ = cams.project(corners)
        for c in range(len(cams)):
            ys, xs = torch.nonzero(alphas[c] > 0.5, as_tuple=True)
            assert xs.min() + 1 >= box_uv[c, :, 0].min().floor() - 1
            assert xs.max() <= box_uv[c, :, 0].max().ceil() + 1
            assert ys.min() + 1 >= box_uv[c, :, 1].min().floor() - 1
            assert ys.max() <= box_uv[c, :, 1].max().ceil() + 1


def test_resume_skips_finished_and_rerenders_identically(dataset):
    from engine.data.make import make_dataset

    root, cfg = dataset
    report = make_dataset(cfg)
    assert report.rendered == [] and report.skipped == 2
    folder = root / "objects" / "000001"
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    (folder / "done.json").unlink()  # as if the run died while writing object 1
    shutil.rmtree(folder / "target")
    report = make_dataset(cfg)
    assert report.rendered == [1] and report.skipped == 1
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert set(after) == set(before)
    for name in ("prop.json", "transforms_input.json", "transforms_target.json"):
        assert after[Path(name)] == before[Path(name)], name
    for rel, data in before.items():
        if rel.suffix == ".png":
            a = np.asarray(Image.open(folder / rel), dtype=np.int16)
            b = np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)
            assert np.abs(a - b).mean() < 1.0, rel  # same prop, same cameras, same seed


def test_settings_mismatch_refuses_to_resume(dataset):
    from engine.data.make import MakeConfig, make_dataset

    root, _ = dataset
    with pytest.raises(ValueError, match="resolution"):
        make_dataset(MakeConfig(out=root, objects=2, resolution=RES * 2, seed=3, progress=False))


def test_split_filter_renders_only_that_split(dataset, tmp_path):
    from engine.data.layout import split_of
    from engine.data.make import MakeConfig, make_dataset

    root, cfg = dataset
    # The first object after the two finished ones that is not in train: the filter must
    # render it and skip the train objects before it.
    index = next(i for i in range(2, 200) if split_of(cfg.seed, i) != "train")
    split = split_of(cfg.seed, index)
    copy = tmp_path / "props"
    shutil.copytree(root, copy)
    grown = MakeConfig(out=copy, objects=index + 1, resolution=RES, seed=cfg.seed, workers=1,
                       views_in=4, views_target=2, progress=False, splits=(split,))  # fmt: skip
    report = make_dataset(grown)
    assert report.failed == {} and report.rendered == [index] and report.skipped == 2
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["splits"][split] == sorted({index, *(
        i for i in (0, 1) if split_of(cfg.seed, i) == split)})  # fmt: skip
    typo = MakeConfig(out=copy, objects=index + 1, resolution=RES, seed=cfg.seed,
                      views_in=4, views_target=2, progress=False, splits=("tset",))  # fmt: skip
    with pytest.raises(ValueError, match="unknown splits"):
        make_dataset(typo)
