"""engine.mask_refiner: the learned correction of estimated masks starts as the identity,
refines views of any size, loads only its own safetensors weights, and its training
(engine.mask_refiner_train) runs on a tiny photo dataset, checkpoints and resumes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.camera_formats import write_nerf_transforms
from engine.cameras import Cameras
from engine.mask_refiner import MaskRefiner, MaskRefinerConfig, load_mask_refiner, refine_masks
from engine.weights import WeightsNotFoundError, save_weights

cv2 = pytest.importorskip("cv2")

SMALL = MaskRefinerConfig(channels=(8, 8, 8))


def _disk(side: int, radius: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    cy, cx = centre or (side / 2, side / 2)
    y, x = np.mgrid[:side, :side] + 0.5
    return (((y - cy) ** 2 + (x - cx) ** 2) <= radius**2).astype(np.float32)


def test_an_untrained_refiner_returns_the_coarse_mask():
    torch.manual_seed(0)
    model = MaskRefiner(SMALL).eval()
    images = torch.rand(2, 24, 24, 3)
    masks = torch.from_numpy(np.stack([_disk(24, 7), _disk(24, 4)]))
    masks[0, 3, 3] = 0.4  # a soft pixel survives as it is
    out = refine_masks(model, images, masks)
    assert out.shape == masks.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, masks.clamp(1e-3, 1 - 1e-3), atol=1e-6, rtol=0)


def test_odd_sizes_are_padded_and_cut_back():
    torch.manual_seed(0)
    model = MaskRefiner(SMALL).eval()
    for p in model.head.parameters():  # a refiner that does something
        torch.nn.init.normal_(p, std=0.5)
    images, masks = torch.rand(3, 21, 30, 3), torch.rand(3, 21, 30)
    out = refine_masks(model, images, masks)
    assert out.shape == (3, 21, 30) and bool(((out >= 0) & (out <= 1)).all())
    with pytest.raises(ValueError, match="differ"):
        refine_masks(model, images, masks[:, :20])


def test_the_cue_is_read_where_known_and_unknown_without_it():
    """A refiner that reads the standing cue takes it per view (NaN: unknown) or not at all,
    and one widened from a refiner without the cue (`widened`) starts as that refiner."""
    from engine.mask_refiner_train import widened

    torch.manual_seed(0)
    plain = MaskRefiner(SMALL).eval()
    for p in plain.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    cued = MaskRefiner(dataclasses.replace(SMALL, cue=True)).eval()
    assert cued.cfg.in_channels == 6 and plain.cfg.in_channels == 4
    cued.load_state_dict(widened(plain.state_dict(), cued.state_dict()))
    images, masks = torch.rand(2, 21, 30, 3), torch.rand(2, 21, 30)
    cue = torch.rand(2, 21, 30)
    cue[0, :5] = float("nan")
    expected = refine_masks(plain, images, masks)
    torch.testing.assert_close(refine_masks(cued, images, masks, cue), expected)
    torch.testing.assert_close(refine_masks(cued, images, masks), expected)
    for p in cued.down[0][0].parameters():  # now the cue changes the result
        torch.nn.init.normal_(p, std=0.5)
    a, b = refine_masks(cued, images, masks, cue), refine_masks(cued, images, masks)
    assert bool(torch.isfinite(a).all()) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="differ"):
        refine_masks(cued, images, masks, cue[:, :20])


def test_the_standing_cue_grows_with_the_ground_error():
    from engine.masks import standing_cue

    errors = np.array([[[0.0, 0.1, 0.5, 5.0, np.inf]]], np.float32)
    cue = standing_cue(errors, background_error=0.1, lost_error=5.0)
    assert cue.dtype == np.float32 and cue.shape == errors.shape
    np.testing.assert_allclose(cue[0, 0, :4], [0.0, 1 / 6, 0.5, 50 / 55], rtol=1e-6)
    assert np.isnan(cue[0, 0, 4])  # no other view frames it: unknown


def test_weights_round_trip_and_nothing_ships_means_none(tmp_path, monkeypatch):
    import engine.mask_refiner as mr

    monkeypatch.setattr(mr, "ASSETS", tmp_path / "assets")
    assert load_mask_refiner() is None  # no shipped weights: masks stay as estimated
    with pytest.raises(WeightsNotFoundError):
        load_mask_refiner(tmp_path / "missing.safetensors")
    torch.manual_seed(1)
    model = MaskRefiner(SMALL)
    path = tmp_path / "assets" / "mask-refiner.safetensors"
    save_weights(model.state_dict(), path, {"config": SMALL.to_dict()})
    loaded = load_mask_refiner()
    assert loaded is not None and not loaded.training and loaded.cfg == SMALL
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(),
                              strict=True):  # fmt: skip
        assert torch.equal(a, b), k
    save_weights(model.state_dict(), path, {"config": MaskRefinerConfig().to_dict()})
    with pytest.raises(ValueError, match="do not fit"):
        load_mask_refiner(path)
    save_weights(model.state_dict(), path, {"note": "no config"})
    with pytest.raises(ValueError, match="names no refiner"):
        load_mask_refiner(path)


def test_coarse_masks_are_wrong_the_ways_estimates_are():
    from engine.mask_refiner_train import coarse_mask

    true = _disk(64, 20)
    seen = []
    for seed in range(40):
        a = coarse_mask(true, np.random.default_rng(seed))
        b = coarse_mask(true, np.random.default_rng(seed))
        assert a.shape == true.shape and a.dtype == np.float32 and np.array_equal(a, b)
        assert a.min() >= 0.0 and a.max() <= 1.0
        seen.append(float(((a > 0.5) != (true > 0.5)).mean()))
    assert min(seen) < 0.005 < max(seen)  # some nearly right, some clearly wrong
    assert np.array_equal(coarse_mask(np.zeros((8, 8), np.float32), np.random.default_rng(0)),
                          np.zeros((8, 8), np.float32))  # fmt: skip


def _photo_dataset(root, props: int = 3, side: int = 32):
    """A props dataset layout with photos: a disk on a noisy ground, its alpha renders."""
    cams = Cameras.look_at(torch.tensor([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5]]), torch.zeros(3),
                           fov_x_deg=40.0, width=side, height=side)  # fmt: skip
    rng = np.random.default_rng(0)
    for index in range(props):
        folder = root / "objects" / f"{index:06d}"  # 0 is held out for validation
        (folder / "input").mkdir(parents=True)
        (folder / "photos").mkdir()
        alphas, photos = [], []
        for v in range(len(cams)):
            mask = _disk(side, 8 + index, (16 + v, 15 - v))
            rgb = np.full((side, side, 3), (0.8, 0.3, 0.2)) * mask[..., None] + rng.uniform(
                0.2, 0.6, (side, side, 3)) * (1 - mask[..., None])  # fmt: skip
            rgba = np.concatenate([rgb, mask[..., None]], -1)
            Image.fromarray((rgba * 255).astype(np.uint8)).save(folder / "input" / f"{v:03d}.png")
            Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / "photos" / f"{v:03d}.jpg")
            alphas.append(folder / "input" / f"{v:03d}.png")
            photos.append(folder / "photos" / f"{v:03d}.jpg")
        write_nerf_transforms(folder / "transforms_input.json", cams, alphas)
        write_nerf_transforms(folder / "transforms_photos.json", cams, photos)
    return root


def test_training_runs_checkpoints_and_resumes(tmp_path):
    import engine.mask_refiner_train as train

    root = _photo_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = [str(root), "--out", str(out), "--batch", "2", "--crop", "16", "--size", "32",
            "--save-every", "2", "--threads", "1", "--channels", "8,8,8"]  # fmt: skip
    assert train.main([*args, "--steps", "2"]) == 0
    meta = json.loads((out / "checkpoint" / "model.json").read_text())
    assert meta["training"]["step"] == 2 and meta["training"]["props"] == 3
    first = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first] == [1, 2] and "val_l1_coarse" in first[-1]
    with open(out / "log.jsonl", "a") as f:  # a killed run logged a step after its checkpoint
        f.write(json.dumps({"step": 3, "bce": 0.0, "l1": 0.0}) + "\n")
    # The estimator's own masks join the synthetic ones (one file a prop; empty if refused).
    assert train.main([*args, "--estimate-only"]) == 0
    assert sorted(f.name for f in (out / "estimated").iterdir()) == ["0.npz", "1.npz", "2.npz"]
    with np.load(out / "estimated" / "1.npz") as data:  # with the cue (NaN: no ground here)
        assert data["cue"].shape == data["masks"].shape and data["cue"].dtype == np.float16
    assert train.main([*args, "--steps", "4"]) == 0  # resumes at 2
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    model = load_mask_refiner(out / "checkpoint" / "model.safetensors")
    assert model is not None and model.cfg == SMALL
    # A refiner that reads the cue starts from the one without it, and trains.
    cued = tmp_path / "cued"
    assert train.main([args[0], "--out", str(cued), *args[3:], "--steps", "2", "--cue",
                       "--init", str(out / "checkpoint" / "model.safetensors")]) == 0  # fmt: skip
    model = load_mask_refiner(cued / "checkpoint" / "model.safetensors")
    assert model is not None and model.cfg == dataclasses.replace(SMALL, cue=True)
    with pytest.raises(ValueError, match="no props with finished photos"):
        train.main([str(tmp_path / "empty"), "--out", str(tmp_path / "r2"), "--steps", "1"])


def test_the_shipped_refiner_reads_the_cue_and_says_how_it_was_trained():
    from engine.weights import ASSETS

    model = load_mask_refiner()
    assert model is not None and not model.training and model.cfg.cue
    meta = json.loads((ASSETS / "mask-refiner.json").read_text())
    assert [s["run"] for s in meta["training"]["stages"]][-1] == "runs/mask-refiner-b64"
    assert model.cfg.band == meta["config"]["band"] == 64
    # A clean mask of a prop that stands out from its ground is left as it is.
    rng = np.random.default_rng(0)
    disk = _disk(64, 18)
    photo = np.full((64, 64, 3), (0.8, 0.3, 0.2)) * disk[..., None] + rng.uniform(
        0.3, 0.6, (64, 64, 3)
    ) * (1 - disk[..., None])
    images = torch.from_numpy(photo[None].astype(np.float32))
    out = refine_masks(model, images, torch.from_numpy(disk[None]), torch.full((1, 64, 64), 0.1))
    kept = out[0].numpy() > 0.5
    assert (kept & (disk > 0.5)).sum() / (kept | (disk > 0.5)).sum() > 0.95
