"""Photos in the add-on on real bpy (issue 17): Import Photos leaves the render resolution
alone unless asked, opaque photos are cut out (estimated masks, or mask files) before the
engine sees them, Preview Masks shows the cut, and captures or photos that show nothing
stop with a clear error and leave the scene exactly as it was.

The scene, the tiny model spy (conftest.py) and the snapshot (_addon_helpers.py) are the
other add-on tests'.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ._addon_helpers import attributes, reconstruct, snapshot

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel"),
    pytest.mark.skipif(importlib.util.find_spec("cv2") is None, reason="needs OpenCV"),
]

SIDE = 96


def _background(side: int) -> np.ndarray:
    """(side, side, 3) a green-brown ground under a blue sky, with some texture."""
    y, x = np.mgrid[0:side, 0:side] / side
    ground = np.stack([0.35 + 0.1 * np.sin(20 * x), 0.5 + 0.05 * np.cos(15 * y), 0.25 + 0 * x], -1)
    sky = np.stack([0.55 + 0 * x, 0.7 + 0 * x, 0.95 - 0.2 * y], -1)
    return np.where((y < 0.3)[..., None], sky, ground).astype(np.float32)


def _write_photos(folder: Path, scene: Any, hide_prop: bool = False,
                  masks: bool = False) -> tuple[Path, np.ndarray]:  # fmt: skip
    """Opaque JPEG photos of the scene's cameras (the prop's render composited on a
    background, no alpha) + transforms.json; with `masks`, a masks/ folder beside them.
    Returns the transforms file and the true silhouettes (V, S, S) bool."""
    from PIL import Image

    from engine.camera_formats import from_blender, write_nerf_transforms
    from engine.cameras import Cameras
    from gd_blender_addon.camera_capture import camera_record, render_view

    folder.mkdir(parents=True, exist_ok=True)
    prop = scene.objects["Prop"]
    prop.hide_render = hide_prop
    cams, paths, truth = [], [], []
    for cam in sorted((o for o in scene.objects if o.type == "CAMERA"), key=lambda o: o.name):
        rgba = render_view(scene, cam, SIDE, folder / f"tmp_{cam.name}.png")
        alpha = rgba[..., 3:]
        photo = rgba[..., :3] * alpha + _background(SIDE) * (1 - alpha)
        path = folder / f"{cam.name}.jpg"
        Image.fromarray((photo * 255 + 0.5).astype(np.uint8)).save(path, quality=95)
        paths.append(path)
        truth.append(alpha[..., 0] > 0.5)
        cams.append(from_blender(**camera_record(cam, SIDE, SIDE)))
        if masks:
            (folder / "masks").mkdir(exist_ok=True)
            Image.fromarray((alpha[..., 0] > 0.5).astype(np.uint8) * 255).save(
                folder / "masks" / f"{cam.name}.png"
            )
    prop.hide_render = False
    write_nerf_transforms(folder / "transforms.json", Cameras.cat(cams), paths)
    return folder / "transforms.json", np.stack(truth)


def _import(scene: Any, transforms: Path, **kw: Any) -> list[Any]:
    import bpy

    for obj in scene.objects:
        obj.select_set(False)
    assert bpy.ops.gd.import_photos(filepath=str(transforms), **kw) == {"FINISHED"}
    return [o for o in bpy.context.selected_objects if o.type == "CAMERA"]


def test_import_photos_leaves_the_render_resolution_unless_asked(scene, addon, tmp_path):
    transforms, _ = _write_photos(tmp_path / "photos", scene)
    _import(scene, transforms)
    assert (scene.render.resolution_x, scene.render.resolution_y) == (640, 480)
    _import(scene, transforms, set_resolution=True)
    assert (scene.render.resolution_x, scene.render.resolution_y) == (SIDE, SIDE)


@pytest.mark.slow
def test_opaque_photos_are_cut_out_before_reconstructing(scene, spy, tmp_path):
    import bpy

    transforms, truth = _write_photos(tmp_path / "photos", scene)
    cams = _import(scene, transforms)
    assert scene.gd_splat.photo_masks == "AUTO"
    # The preview shows photos above and cut-outs below, before anything is reconstructed.
    assert bpy.ops.gd.preview_masks() == {"FINISHED"}
    preview = bpy.data.images["GD Mask Preview"]
    assert tuple(preview.size) == (4 * 256, 2 * 256) and spy.calls == []
    obj = reconstruct(scene, spy)
    _, (images, _, _), _ = spy.calls[-1]
    alpha = images[..., 3].numpy()
    assert images.shape[0] == len(cams) == 4 and obj is not None
    # The model got the estimated masks (resized to its input): the prop, not the frame.
    size = alpha.shape[-1]
    from PIL import Image

    for k in range(4):
        true = np.asarray(Image.fromarray(truth[k]).resize((size, size))) > 0
        est = alpha[k] > 0.5
        assert (est & true).sum() / (est | true).sum() > 0.8, k


def test_lost_parts_warnings_are_reported_as_warnings(scene, spy, tmp_path, monkeypatch, capfd):
    import bpy

    import engine.masks as masks_module

    transforms, _ = _write_photos(tmp_path / "photos", scene)
    _import(scene, transforms)
    assert bpy.ops.gd.preview_masks() == {"FINISHED"}
    assert "Warning" not in capfd.readouterr().out
    # As if the estimate had found that view 0's mask lost part of the prop.
    estimate = masks_module.estimate_masks

    def warned(*args, **kwargs):
        masks = estimate(*args, **kwargs)
        masks.warnings.append("view 0: 40% of its mask's area stands above the ground ...")
        return masks

    monkeypatch.setattr(masks_module, "estimate_masks", warned)
    assert bpy.ops.gd.preview_masks() == {"FINISHED"}
    out = capfd.readouterr().out
    assert "Warning" in out and "warning: view 0: 40% of its mask's area" in out
    assert spy.calls == []


@pytest.mark.slow
def test_mask_files_are_used(scene, spy, tmp_path):
    transforms, truth = _write_photos(tmp_path / "photos", scene, masks=True)
    cams = _import(scene, transforms)
    # Found beside the photos (masks/<photo name>.png) without mask_path in the json.
    from gd_blender_addon.photos import mask_file

    assert all(mask_file(c) is not None for c in cams)
    scene.gd_splat.photo_masks = "FILES"
    reconstruct(scene, spy)
    _, (images, _, _), _ = spy.calls[-1]
    coverage = float((images[..., 3] > 0.5).float().mean())
    assert 0.02 < coverage < 0.5  # the files' silhouettes, not the whole frame


def test_mask_files_missing(scene, spy, tmp_path):
    import bpy

    transforms, _ = _write_photos(tmp_path / "photos", scene)
    _import(scene, transforms)
    scene.gd_splat.photo_masks = "FILES"
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match="has no mask file"):
        bpy.ops.gd.reconstruct()
    assert snapshot(scene) == before and spy.calls == []


@pytest.mark.slow
def test_photos_of_nothing_are_refused_and_nothing_is_created(scene, spy, tmp_path):
    import bpy

    transforms, _ = _write_photos(tmp_path / "photos", scene, hide_prop=True)
    _import(scene, transforms)
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match="Nothing was created"):
        bpy.ops.gd.reconstruct()
    assert snapshot(scene) == before and spy.calls == []


@pytest.mark.parametrize("how", ["hidden", "clipped"])
def test_empty_captures_are_refused_and_nothing_is_created(scene, spy, how):
    import bpy

    if how == "hidden":
        scene.objects["Prop"].hide_render = True
    else:  # the prop lies beyond every camera's clip range
        for cam in (o for o in scene.objects if o.type == "CAMERA"):
            cam.data.clip_end = 0.5
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match=r"camera 'Cam0' shows no prop: its render is empty"):
        bpy.ops.gd.reconstruct()
    assert snapshot(scene) == before and spy.calls == []


@pytest.mark.slow
def test_densify_against_empty_captures_is_refused_and_nothing_changes(scene, spy):
    """Densify rendering the selected cameras checks the captures as Reconstruct does: a
    prop hidden from render gives blank views, and densifying against them would erase
    the selection."""
    import bpy

    obj = reconstruct(scene, spy)
    obj.gd_splat.views.clear()  # no stored views: Densify renders the selected cameras
    for cam in (o for o in scene.objects if o.type == "CAMERA"):
        cam.select_set(True)
    bpy.context.view_layer.objects.active = obj
    scene.objects["Prop"].hide_render = True
    before, state, calls = attributes(obj), snapshot(scene), len(spy.calls)
    with pytest.raises(RuntimeError, match=r"camera 'Cam0' shows no prop: its render is empty"):
        bpy.ops.gd.densify_selected(whole_object=True)
    assert snapshot(scene) == state and len(spy.calls) == calls
    after = attributes(obj)
    assert all(np.array_equal(after[key], values) for key, values in before.items())


def test_transforms_mask_path_is_remembered(scene, addon, tmp_path):
    transforms, _ = _write_photos(tmp_path / "photos", scene, masks=True)
    data = json.loads(transforms.read_text())
    for frame in data["frames"]:
        frame["mask_path"] = "masks/" + Path(frame["file_path"]).stem + ".png"
    transforms.write_text(json.dumps(data))
    cams = _import(scene, transforms)
    assert all(c.data["gd_mask_path"].endswith(".png") for c in cams)
