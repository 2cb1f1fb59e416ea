"""Loaders: NeRF transforms scenes, the props layout, COLMAP, LaRa's Gobjaverse and GSO
layouts, and the clear errors for malformed files (fast, no bpy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.camera_formats import write_colmap, write_nerf_transforms
from engine.cameras import Cameras
from engine.data.camera_poses import look_at_origin
from engine.data.datasets import PropsDataset, collate_views
from engine.data.layout import (
    DONE_NAME,
    object_dir,
    split_indices,
    transforms_path,
    write_json_atomic,
)
from engine.views import load_colmap_scene, load_nerf_scene

SIZE = 16


def _cameras(count: int, size: int = SIZE) -> Cameras:
    c2w = np.stack([look_at_origin(360 * k / count, 20, 2.5) for k in range(count)])
    w2c = torch.from_numpy(np.linalg.inv(c2w @ np.diag([1.0, -1, -1, 1]))).float()
    return Cameras(w2c, 20.0, 20.0, size / 2, size / 2, size, size)


def _write_rgba(path, size=SIZE, alpha=255, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = value
    rgba[..., 3] = 0
    rgba[4:12, 4:12, 3] = alpha
    Image.fromarray(rgba).save(path)
    return path


def _nerf_scene(tmp_path, count=3):
    paths = [_write_rgba(tmp_path / "train" / f"r_{k}.png") for k in range(count)]
    write_nerf_transforms(tmp_path / "transforms.json", _cameras(count), paths)
    return tmp_path / "transforms.json"


def test_nerf_scene_loads_and_composites_on_background(tmp_path):
    views = load_nerf_scene(_nerf_scene(tmp_path), background=(0.0, 1.0, 0.0))
    assert views.images.shape == (3, SIZE, SIZE, 3) and views.alphas.shape == (3, SIZE, SIZE)
    assert len(views.cameras) == 3 and views.cameras.width == SIZE
    # Outside the square: background green; inside: the opaque red value.
    assert torch.allclose(views.images[0, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(views.images[0, 8, 8], torch.tensor([100 / 255, 0.0, 0.0]))
    assert views.alphas[0, 8, 8] == 1 and views.alphas[0, 0, 0] == 0
    # A folder holding transforms.json works too.
    assert len(load_nerf_scene(tmp_path).cameras) == 3


def test_malformed_transforms_json_names_the_file(tmp_path):
    path = tmp_path / "transforms.json"
    path.write_text('{"frames": [ {"file_path": "a.png", ')  # truncated
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        load_nerf_scene(path)
    path.write_text(json.dumps({"frames": [{"file_path": "a.png"}]}))  # no transform_matrix
    with pytest.raises(ValueError, match="transforms.json.*transform_matrix"):
        load_nerf_scene(path)


def test_missing_image_names_the_file(tmp_path):
    path = _nerf_scene(tmp_path)
    (tmp_path / "train" / "r_1.png").unlink()
    with pytest.raises((ValueError, FileNotFoundError), match="r_1"):
        load_nerf_scene(path)


def test_mismatched_image_size_names_the_file(tmp_path):
    path = _nerf_scene(tmp_path)
    _write_rgba(tmp_path / "train" / "r_2.png", size=SIZE * 2)
    with pytest.raises(ValueError, match=r"r_2\.png.*32x32.*16x16"):
        load_nerf_scene(path)
    # Asked to, the loader resamples instead.
    assert load_nerf_scene(path, resize=True).images.shape == (3, SIZE, SIZE, 3)


def test_unreadable_image_names_the_file(tmp_path):
    path = _nerf_scene(tmp_path)
    (tmp_path / "train" / "r_0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="r_0.png"):
        load_nerf_scene(path)


def _props_dataset(tmp_path, seed=0, objects=4):
    finished = []
    for i in range(objects):
        folder = object_dir(tmp_path, i)
        for split, count in (("input", 4), ("target", 2)):
            paths = [
                _write_rgba(folder / split / f"{k:03d}.png", value=10 * i) for k in range(count)
            ]
            write_nerf_transforms(transforms_path(folder, split), _cameras(count), paths)
        if i != objects - 1:  # the last one was interrupted: no completion marker
            write_json_atomic(folder / DONE_NAME, {"index": i})
            finished.append(i)
    write_json_atomic(
        tmp_path / "manifest.json", {"seed": seed, "splits": split_indices(seed, range(objects))}
    )
    return finished


def test_props_dataset_items_and_collate(tmp_path):
    finished = _props_dataset(tmp_path)
    ds = PropsDataset(tmp_path, "all")
    assert ds.indices == finished  # unfinished objects are never served
    item = ds[1]
    assert item["index"] == 1
    assert item["input_images"].shape == (4, SIZE, SIZE, 3)
    assert item["input_alphas"].shape == (4, SIZE, SIZE)
    assert item["target_images"].shape == (2, SIZE, SIZE, 3)
    assert len(item["input_cameras"]) == 4 and len(item["target_cameras"]) == 2
    assert torch.allclose(item["input_images"][0, 8, 8], torch.tensor([10 / 255, 0.0, 0.0]))
    batch = collate_views([ds[0], ds[1]])
    assert batch["input_images"].shape == (2, 4, SIZE, SIZE, 3)
    assert len(batch["target_cameras"]) == 2 and batch["index"] == [0, 1]
    assert PropsDataset(tmp_path, "all", n_target=1)[0]["target_images"].shape[0] == 1
    with pytest.raises(ValueError, match="split"):
        PropsDataset(tmp_path, "bogus")


def test_props_dataset_without_manifest_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        PropsDataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(ValueError, match="manifest.json"):
        PropsDataset(tmp_path)


def test_colmap_scene(tmp_path):
    cams = _cameras(3)
    names = [f"view{k}.png" for k in range(3)]
    for name in names:
        _write_rgba(tmp_path / "images" / name)
    write_colmap(tmp_path / "sparse" / "0", cams, names, binary=False)
    views = load_colmap_scene(tmp_path)
    assert views.images.shape == (3, SIZE, SIZE, 3)
    assert torch.allclose(views.cameras.world_to_camera, cams.world_to_camera, atol=1e-5)
    (tmp_path / "images" / "view2.png").unlink()
    with pytest.raises(FileNotFoundError, match="view2.png"):
        load_colmap_scene(tmp_path)


def test_gobjaverse_h5_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    from engine.data.lara import GobjaverseDataset

    path = tmp_path / "gobjaverse.h5"
    fov = math.radians(40)
    with h5py.File(path, "w") as f:
        for name in ("obj_a", "obj_b"):
            g = f.create_group(name)
            for i in range(8):
                rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
                rgba[4:12, 4:12] = (200, 50, 25, 255)
                g[f"image_{i}"] = rgba
                # OpenCV camera-to-world on a ring around the origin.
                g[f"c2w_{i}"] = look_at_origin(45 * i, 20, 2.0) @ np.diag([1.0, -1, -1, 1])
                g[f"fov_{i}"] = np.array([fov, fov])
            groups = g.create_group("groups")
            for k in range(4):
                groups[f"groups_4_{k}"] = np.array([2 * k, 2 * k + 1])
        f.create_group("splits")["test"] = np.array([b"obj_b"])
    ds = GobjaverseDataset(path, "test")
    assert ds.names == ["obj_b"]
    item = ds[0]
    assert item["input_images"].shape == (4, SIZE, SIZE, 3)
    assert torch.allclose(item["input_images"][0, 8, 8], torch.tensor([200, 50, 25]) / 255.0)
    assert torch.allclose(item["input_images"][0, 0, 0], torch.ones(3))
    cams = item["input_cameras"]
    assert torch.allclose(cams.fx, torch.tensor(SIZE / (2 * math.tan(fov / 2))))
    # Input k is view 2k; its centre is where the c2w put it and the origin projects to
    # the image centre.
    expected = torch.tensor(look_at_origin(90.0, 20, 2.0)[:3, 3]).float()
    assert torch.allclose(cams.centers[1], expected, atol=1e-5)
    uv, _ = cams.project(torch.zeros(1, 3))
    assert torch.allclose(uv, torch.full_like(uv, SIZE / 2), atol=1e-4)
    assert len(GobjaverseDataset(path, "all")) == 2


def test_gso_folder_layout(tmp_path):
    from engine.data.lara import GSODataset

    scene = tmp_path / "alarm_clock"
    frames = []
    for idx in range(10):
        _write_rgba(scene / f"r_{idx:03d}.png")
        k = [[560.0, 0, 256.0], [0, 560.0, 256.0], [0, 0, 1]]  # at LaRa's 512^2
        frames.append(
            {"transform_matrix": look_at_origin(36 * idx, 30, 2.2).tolist(), "intrinsic_matrix": k}
        )
    (scene / "transforms.json").write_text(json.dumps({"frames": frames}))
    ds = GSODataset(tmp_path, n_input=4, n_target=2)
    item = ds[0]
    assert item["input_images"].shape == (4, SIZE, SIZE, 3) and item["target_images"].shape[0] == 2
    cams = item["input_cameras"]
    assert torch.allclose(cams.fx, torch.tensor(560.0 * SIZE / 512))
    uv, depth = cams.project(torch.zeros(1, 3))
    assert (depth > 0).all() and torch.allclose(uv, torch.full_like(uv, SIZE / 2), atol=1e-4)
    (scene / "transforms.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="alarm_clock.transforms.json"):
        ds[0]


def test_bundled_sample_props_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples" / "sample_props"
    ds = PropsDataset(root, "all")
    assert len(ds) == 3
    item = ds[0]
    assert item["input_images"].shape == (4, 256, 256, 3)
    assert item["target_images"].shape == (4, 256, 256, 3)
    coverage = (item["input_alphas"] > 0.5).float().mean()
    assert 0.02 < coverage < 0.9
