"""engine.masks: foreground masks of photos without alpha (estimated from the views),
mask files, and the errors for views that show no common prop.

The photos are ray-cast: a two-coloured box standing on a checkered ground plane under a
sky gradient, seen by a ring of cameras, so the true silhouette is known exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.camera_formats import write_nerf_transforms
from engine.cameras import Cameras
from engine.cli import main
from engine.masks import (
    MaskConfig,
    MaskError,
    check_consistency,
    consistency_iou,
    estimate_masks,
    find_ground,
    find_mask_file,
    ground_errors,
    lost_parts,
    odd_view_out,
    resolve_masks,
    subject_sphere,
)
from engine.views import load_nerf_scene

from .test_visual_hull import pixel_rays, raycast_box

pytest.importorskip("cv2")

SIZE = 128
CENTER = (0.0, 0.0, 0.0)
HALF = (0.35, 0.25, 0.3)


def ring(n: int = 4, elevation: float = 20.0, distance: float = 2.6, outward: bool = False,
         offset_deg: float = 15.0) -> Cameras:  # fmt: skip
    """n cameras on a ring looking at the origin (or, `outward`, away from it)."""
    eyes, targets = [], []
    for i in range(n):
        az, el = math.radians(offset_deg + 360 * i / n), math.radians(elevation)
        eye = distance * torch.tensor(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)],
            dtype=torch.float64,
        )
        eyes.append(eye)
        targets.append(eye * 2.0 if outward else torch.zeros(3, dtype=torch.float64))
    return Cameras.look_at(torch.stack(eyes), torch.stack(targets), fov_x_deg=40.0,
                           width=SIZE, height=SIZE)  # fmt: skip


def photos(cameras: Cameras, with_box: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, H, W, 4) opaque RGBA photos and (V, H, W) bool true silhouettes."""
    o, d = pixel_rays(cameras)
    ground_z = CENTER[2] - HALF[2]
    t = (ground_z - o[..., 2]) / torch.where(d[..., 2].abs() < 1e-9, -1e-9, d[..., 2])
    hit_ground = t > 0
    p = o + t[..., None] * d
    checker = ((torch.floor(p[..., 0] * 4) + torch.floor(p[..., 1] * 4)) % 2)[..., None]
    grass = torch.tensor([0.35, 0.55, 0.25], dtype=torch.float64)
    soil = torch.tensor([0.55, 0.45, 0.3], dtype=torch.float64)
    ground = grass * checker + soil * (1 - checker)
    up = d[..., 2:3].clamp(0, 1)
    sky = torch.tensor([0.75, 0.85, 0.95], dtype=torch.float64) * (1 - up) + torch.tensor(
        [0.35, 0.5, 0.85], dtype=torch.float64) * up  # fmt: skip
    rgb = torch.where(hit_ground[..., None], ground, sky)
    truth = torch.zeros(rgb.shape[:3], dtype=torch.bool)
    if with_box:
        box = raycast_box(cameras, CENTER, HALF).double()
        truth = box[..., 3] > 0.5
        rgb = torch.where(truth[..., None], box[..., :3], rgb)
    noise = torch.Generator().manual_seed(0)
    rgb = (rgb + 0.02 * torch.randn(rgb.shape, generator=noise, dtype=torch.float64)).clamp(0, 1)
    rgba = torch.cat([rgb, torch.ones_like(rgb[..., :1])], -1).float()
    return rgba, truth


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_masks_of_a_known_silhouette_reach_iou_09():
    cameras = ring()
    rgba, truth = photos(cameras)
    masks = estimate_masks(rgba[..., :3], cameras)
    assert masks.source == "estimated" and masks.alphas.shape == truth.shape
    for k in range(len(cameras)):
        assert iou(masks.alphas[k] > 0.5, truth[k]) >= 0.9, k
    assert min(masks.consistency) >= 0.8
    # auto picks the estimate for photos without alpha, alpha for views with one
    assert resolve_masks(rgba, cameras, "auto").source == "estimated"
    cut = torch.cat([rgba[..., :3], truth[..., None].float()], -1)
    chosen = resolve_masks(cut, cameras, "auto")
    assert chosen.source == "alpha" and torch.equal(chosen.alphas, truth.float())


def _write_views(folder: Path, rgba: torch.Tensor, cameras: Cameras,
                 masks: torch.Tensor | None = None) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, view in enumerate(rgba):
        path = folder / f"{k:03d}.jpg"
        Image.fromarray((view[..., :3].numpy() * 255 + 0.5).astype(np.uint8)).save(path)
        paths.append(path)
    transforms = folder / "transforms.json"
    write_nerf_transforms(transforms, cameras, paths)
    if masks is not None:
        (folder / "masks").mkdir()
        data = json.loads(transforms.read_text())
        for k, frame in enumerate(data["frames"]):
            Image.fromarray(masks[k].numpy().astype(np.uint8) * 255).save(
                folder / "masks" / f"{k:03d}.png"
            )
            frame["mask_path"] = f"masks/{k:03d}.png"
        transforms.write_text(json.dumps(data))
    return transforms


def test_mask_files_are_honoured(tmp_path: Path):
    cameras = ring()
    rgba, truth = photos(cameras)
    # A mask that is not the silhouette (the left half of the box's bounding rows) proves
    # the file, not an estimate, was used.
    masks = truth.clone()
    masks[:, :, SIZE // 2 :] = False
    transforms = _write_views(tmp_path / "v", rgba, cameras, masks)
    for mode in ("auto", "files"):
        views = load_nerf_scene(transforms, masks=mode)
        assert views.masks.source == "files"
        assert torch.equal(views.alphas > 0.5, masks)
        # outside the mask: the model's white background
        assert torch.all(views.images[~masks] == 1.0)
    with pytest.raises(MaskError, match="no alpha channel"):
        load_nerf_scene(transforms, masks="alpha")
    assert find_mask_file(tmp_path / "v" / "001.jpg", tmp_path / "v" / "masks").name == "001.png"


def test_all_background_photos_are_refused_and_nothing_is_written(tmp_path: Path, capsys):
    cameras = ring()
    rgba, _ = photos(cameras, with_box=False)
    with pytest.raises(MaskError):
        estimate_masks(rgba[..., :3], cameras)
    transforms = _write_views(tmp_path / "v", rgba, cameras)
    out = tmp_path / "out" / "prop.ply"
    code = main(["reconstruct", str(transforms), "-o", str(out), "--model", "object-tiny",
                 "--random-init"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "view" in err and "prop" in err
    assert not out.exists() and not out.parent.exists()


def test_cameras_that_share_no_subject_are_refused():
    cameras = ring(outward=True)
    rgba, _ = photos(cameras)
    with pytest.raises(MaskError, match="do not share one subject"):
        estimate_masks(rgba[..., :3], cameras)


def test_empty_renders_are_refused():
    cameras = ring()
    rgba, _ = photos(cameras)
    empty = rgba.clone()
    empty[..., 3] = 0.0
    with pytest.raises(MaskError, match="view 0 shows no prop: its alpha channel is empty"):
        resolve_masks(empty, cameras, "auto")
    # one empty view among good ones is named
    _, truth = photos(cameras)
    cut = torch.cat([rgba[..., :3], truth[..., None].float()], -1)
    cut[2, ..., 3] = 0.0
    with pytest.raises(MaskError, match="view 2 shows no prop"):
        resolve_masks(cut, cameras, "alpha")


def test_whole_frame_mask_files_are_refused(tmp_path: Path):
    cameras = ring()
    rgba, truth = photos(cameras)
    transforms = _write_views(tmp_path / "v", rgba, cameras, torch.ones_like(truth))
    with pytest.raises(MaskError, match="view 0: its mask file covers 100% of the frame"):
        load_nerf_scene(transforms, masks="files")


def test_colmap_masks_folder_is_honoured(tmp_path: Path):
    from engine.camera_formats import write_colmap
    from engine.views import load_colmap_scene

    cameras = ring()
    rgba, truth = photos(cameras)
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "masks").mkdir()
    names = []
    for k, view in enumerate(rgba):
        name = f"{k:03d}.jpg"
        Image.fromarray((view[..., :3].numpy() * 255 + 0.5).astype(np.uint8)).save(images / name)
        # COLMAP's own convention: the image's full name with .png appended.
        Image.fromarray(truth[k].numpy().astype(np.uint8) * 255).save(
            tmp_path / "masks" / f"{name}.png"
        )
        names.append(name)
    write_colmap(tmp_path / "sparse" / "0", cameras, names, binary=True)
    views = load_colmap_scene(tmp_path)
    assert views.masks.source == "files"
    assert torch.equal(views.alphas > 0.5, truth)
    assert load_colmap_scene(tmp_path, masks="none").masks is None


GROUND_Z = CENTER[2] - HALF[2]


def photos_with_shadow(cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`photos` with the box's shadow on the ground: ground points whose ray towards a low
    light meets the box are darkened to a dark blue (close to the box's blue face).

    Returns:
        (V, H, W, 4) RGBA, (V, H, W) true silhouettes, (V, H, W) shadowed ground pixels.
    """
    rgba, truth = photos(cameras)
    o, d = pixel_rays(cameras)
    t = (GROUND_Z - o[..., 2]) / torch.where(d[..., 2].abs() < 1e-9, -1e-9, d[..., 2])
    p = o + t[..., None] * d
    light = torch.tensor([-0.5, -0.9, 0.7], dtype=torch.float64)
    light = light / light.norm()
    c = torch.tensor(CENTER, dtype=torch.float64)
    h = torch.tensor(HALF, dtype=torch.float64)
    t0, t1 = (c - h - p) / light, (c + h - p) / light
    t_near, t_far = torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)
    shadow = (t > 0) & (t_far > t_near) & (t_far > 0) & ~truth
    tint = torch.tensor([0.3, 0.35, 1.6], dtype=torch.float32)
    rgb = torch.where(shadow[..., None], (rgba[..., :3] * tint).clamp(0, 1), rgba[..., :3])
    return torch.cat([rgb, rgba[..., 3:]], -1), truth, shadow


def test_the_ground_plane_under_the_prop_is_found_and_its_shadow_left_out():
    cameras = ring()
    rgba, truth, shadow = photos_with_shadow(cameras)
    assert all(int(s.sum()) > 300 for s in shadow)  # a shadow in every view
    center, radius = subject_sphere(cameras)
    images = rgba[..., :3].numpy()
    cfg = MaskConfig()
    found = find_ground(images, cameras, center, radius, cfg)
    assert found is not None and abs(found[0] - GROUND_Z) < 0.05 * radius, found
    # Where the plane lands in the other views, the shadowed ground looks the same (it is
    # on the plane); the box does not.
    errors, below = ground_errors(images, cameras, GROUND_Z)
    assert below[shadow].all()
    assert float(np.median(errors[shadow.numpy()])) < 0.05
    assert float(np.median(errors[truth.numpy()])) > 0.15
    masks = estimate_masks(rgba[..., :3], cameras)
    assert masks.ground_height is not None
    est = masks.alphas > 0.5
    for k in range(len(cameras)):
        assert iou(est[k], truth[k]) >= 0.9, k
        # The shipped refiner may round the outline by a pixel where the shadow meets the box.
        assert float((est[k] & shadow[k]).sum()) <= 0.04 * float(shadow[k].sum()), k


def test_a_mask_that_lost_part_of_the_prop_is_warned_about():
    cameras = ring()
    rgba, truth = photos(cameras)
    images = rgba[..., :3].numpy()
    center, radius = subject_sphere(cameras)
    cfg = MaskConfig()
    found = find_ground(images, cameras, center, radius, cfg)
    assert found is not None
    errors, _ = ground_errors(images, cameras, found[0])
    everywhere = np.ones(truth.shape, bool)
    true = truth.numpy()
    assert max(lost_parts(true, errors, found[1], everywhere, cfg)) <= cfg.lost_fraction
    # View 0's mask loses the upper two thirds of the box: what stands there is no ground.
    rows = np.nonzero(true[0].any(1))[0]
    cut = true.copy()
    cut[0, : rows[0] + 2 * (rows[-1] - rows[0]) // 3] = False
    lost = lost_parts(cut, errors, found[1], everywhere, cfg)
    assert lost[0] > cfg.lost_fraction, lost
    assert max(lost[1:]) <= cfg.lost_fraction, lost
    # The estimate of the whole box warns about nothing; the warnings reach the summary
    # the CLI and the add-on print.
    assert estimate_masks(rgba[..., :3], cameras).warnings == []
    warned = estimate_masks(rgba[..., :3], cameras, MaskConfig(lost_fraction=-1.0))
    assert len(warned.warnings) == len(cameras)
    assert "warning: view 0:" in warned.summary()


def test_no_ground_plane_is_found_behind_a_backdrop():
    # A different random backdrop in every view: no height makes the views agree.
    cameras = ring()
    rgba, _ = photos(cameras)
    noise = torch.rand(rgba.shape[:3] + (3,), generator=torch.Generator().manual_seed(1))
    center, radius = subject_sphere(cameras)
    assert find_ground(noise.numpy(), cameras, center, radius, MaskConfig()) is None


def test_the_refiner_corrects_the_estimate_and_the_checks_judge_its_result(tmp_path: Path):
    """MaskConfig.refine runs the learned refiner (engine.mask_refiner) on the estimate: one
    that changes nothing (zero correction) leaves the masks as estimated but for the coverage
    below `refined_floor`, and one that empties them is refused by the plausibility checks,
    which judge the refined masks."""
    from engine.mask_refiner import MaskRefiner, MaskRefinerConfig
    from engine.weights import save_weights

    cameras = ring()
    rgba, truth = photos(cameras)
    plain = estimate_masks(rgba[..., :3], cameras, MaskConfig(refine=False))
    torch.manual_seed(0)
    refiner = MaskRefiner(MaskRefinerConfig(channels=(8, 8, 8)))
    identity = tmp_path / "identity.safetensors"
    save_weights(refiner.state_dict(), identity, {"config": refiner.cfg.to_dict()})
    same = estimate_masks(rgba[..., :3], cameras, MaskConfig(refiner_weights=str(identity)))
    # (the refiner's logits clamp masks into [1e-3, 1 - 1e-3])
    floor = MaskConfig().refined_floor
    floored = torch.where(plain.alphas < floor, torch.zeros_like(plain.alphas), plain.alphas)
    assert bool(((plain.alphas > 0.0) & (plain.alphas < floor)).any())  # the feather's rim
    torch.testing.assert_close(same.alphas, floored, atol=1.01e-3, rtol=0)
    kept = estimate_masks(rgba[..., :3], cameras,
                          MaskConfig(refiner_weights=str(identity), refined_floor=0.0))  # fmt: skip
    torch.testing.assert_close(kept.alphas, plain.alphas, atol=1.01e-3, rtol=0)
    assert same.consistency == plain.consistency
    refiner = MaskRefiner(MaskRefinerConfig(channels=(8, 8, 8), band=128))
    torch.nn.init.constant_(refiner.head.bias, -30.0)  # every pixel background
    empty = tmp_path / "empty.safetensors"
    save_weights(refiner.state_dict(), empty, {"config": refiner.cfg.to_dict()})
    with pytest.raises(MaskError, match="empty|covers"):
        estimate_masks(rgba[..., :3], cameras, MaskConfig(refiner_weights=str(empty)))


def test_the_refiner_adds_only_what_stands_above_the_ground(tmp_path: Path):
    """Where a ground plane is found, a refiner that would grow every mask by its whole band
    adds only pixels the other views do not repeat as ground (`MaskConfig.refine_standing`):
    the box's shadow, the colour of its face, stays out."""
    from engine.mask_refiner import MaskRefiner, MaskRefinerConfig
    from engine.weights import save_weights

    cameras = ring()
    rgba, truth, shadow = photos_with_shadow(cameras)
    refiner = MaskRefiner(MaskRefinerConfig(channels=(8, 8, 8), band=6))
    torch.nn.init.constant_(refiner.head.bias, 30.0)  # every pixel in the band: prop
    grow = tmp_path / "grow.safetensors"
    save_weights(refiner.state_dict(), grow, {"config": refiner.cfg.to_dict()})
    plain = estimate_masks(rgba[..., :3], cameras, MaskConfig(refine=False))
    grown = estimate_masks(rgba[..., :3], cameras, MaskConfig(refiner_weights=str(grow)))
    no_gate = MaskConfig(refiner_weights=str(grow), refine_standing=0.0)
    ungated = estimate_masks(rgba[..., :3], cameras, no_gate)
    assert grown.standing is not None and grown.standing.shape == tuple(plain.alphas.shape)
    for k in range(len(cameras)):
        p, g, u = plain.alphas[k] > 0.5, grown.alphas[k] > 0.5, ungated.alphas[k] > 0.5
        assert bool((g >= p).all()) and bool((u >= g).all())
        # (the cue is blurred over 3 x 3 pixels: a pixel where the shadow meets the box)
        assert float((g & shadow[k]).sum()) <= 0.04 * float(shadow[k].sum()), k
        assert float((u & shadow[k]).sum()) > 0.1 * float(shadow[k].sum()), k


def test_the_view_the_others_disagree_with_is_named():
    """One view's mask lost most of the box: it carves the hull every view is compared
    with, so all of them read as inconsistent; leaving each view out finds the one without
    which the others agree, and the error names it and says how it differs."""
    cameras = ring()
    _, truth = photos(cameras)
    center, radius = subject_sphere(cameras)
    cfg = MaskConfig()
    true = truth.numpy()
    assert min(consistency_iou(true, cameras, center, radius, cfg.grid)) >= 0.8
    # View 2 keeps only the lower third of the box.
    cut = true.copy()
    rows = np.nonzero(true[2].any(1))[0]
    cut[2, : rows[0] + 2 * (rows[-1] - rows[0]) // 3] = False
    consistency = consistency_iou(cut, cameras, center, radius, cfg.grid)
    worst = int(np.argmin(consistency))
    assert consistency[worst] < cfg.min_consistency and worst != 2  # a good view is blamed
    odd = odd_view_out(cut, cameras, center, radius, cfg.grid, cfg.min_consistency)
    assert odd is not None and odd.view == 2, odd
    assert odd.covered > 0.9 and odd.recall < 0.6 and odd.others >= 0.8, odd
    with pytest.raises(MaskError, match="view 2: its mask covers only .* lost part of the prop"):
        check_consistency(consistency, cfg, odd)
    # View 2's mask is the box moved aside by a third of the frame: something else.
    moved = true.copy()
    moved[2] = np.roll(true[2], SIZE // 3, axis=1)
    consistency = consistency_iou(moved, cameras, center, radius, cfg.grid)
    odd = odd_view_out(moved, cameras, center, radius, cfg.grid, cfg.min_consistency)
    assert odd is not None and odd.view == 2 and odd.covered < 0.9, odd
    with pytest.raises(MaskError, match="view 2: .* lies outside .* shows something else"):
        check_consistency(consistency, cfg, odd)
    # Two views cannot tell which of them is odd: the plain message.
    assert odd_view_out(cut[:2], cameras[:2], center, radius, cfg.grid, 0.5) is None
    with pytest.raises(MaskError, match="the cameras do not show one prop"):
        check_consistency([0.9, 0.3], cfg, None)
