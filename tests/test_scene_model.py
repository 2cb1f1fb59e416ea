"""The scene model (issue 18): backbone + generative densification, its input checks,
its training loss and loop, and its weights through `load_model`."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
import torch

from engine.cameras import Cameras, view_overlap
from engine.data.scenes import load_scene
from engine.images import resize_views
from engine.models import Cancelled, GDSceneModel, SceneModelConfig, load_model
from engine.models.gd_scene import check_depth_range
from engine.models.scene_backbone import SCENE_PRESETS, get_scene_config
from engine.train import train
from engine.train_config import TrainConfig
from engine.train_scene import inverse_depth_error, scene_loss, scene_scores
from engine.weights import save_weights

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_scene"
SCENE = SAMPLE / "scenes" / "000000"


@pytest.fixture(scope="module")
def sample() -> dict:
    return load_scene(SCENE)


@pytest.fixture(scope="module")
def tiny() -> GDSceneModel:
    torch.manual_seed(0)
    return GDSceneModel(get_scene_config("scene-tiny")).eval()


def _reconstruct(model: GDSceneModel, sample: dict, **kwargs):
    return model.reconstruct(
        sample["context_images"], sample["context_cameras"],
        near=float(sample["near"]), far=float(sample["far"]), **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCENE_PRESETS))
def test_config_round_trips_with_its_densifier(name):
    cfg = get_scene_config(name)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert SceneModelConfig.from_dict(data) == cfg
    assert cfg.densify.candidates_per_view and cfg.densify.levels == 3
    with pytest.raises(ValueError, match="unknown scene model config keys"):
        SceneModelConfig.from_dict({**data, "surprise": 1})


def test_reconstruct_keeps_the_coarse_set_and_adds_fine_gaussians(tiny, sample):
    coarse = _reconstruct(tiny, sample, densify=False)
    fine = _reconstruct(tiny, sample)
    v, size = len(sample["context_cameras"]), tiny.image_size
    assert coarse.stats["counts"]["decoded"] == v * size * size
    counts = fine.stats["counts"]
    k = counts["candidates"]
    assert 0 < k <= tiny.cfg.candidates * v
    assert counts["final"] == counts["coarse"] - k + counts["fine"]
    assert len(fine.gaussians) == counts["final"]
    assert int((fine.level > 0).sum()) == counts["fine"]
    # Gaussians stay in the cameras' world: every coarse centre is in front of the camera
    # it came from, between the scene's near and far (the backbone clamps to the range).
    near, far = float(sample["near"]), float(sample["far"])
    means = coarse.gaussians.means.reshape(v, -1, 3)
    small = resize_views(sample["context_images"], sample["context_cameras"], size)[1]
    for i in range(v):
        _, depth = small[i : i + 1].project(means[i])
        assert float(depth.min()) >= near * 0.999 and float(depth.max()) <= far * 1.001
    assert torch.isfinite(fine.gaussians.means).all()


def test_a_finer_detail_size_feeds_the_densifier_larger_views(sample):
    """detail_size > image_size: per-pixel Gaussians from the small views, the densifier
    reads (and training renders) the larger ones, as the object model's detail_size."""
    torch.manual_seed(0)
    cfg = get_scene_config("scene-tiny").with_(detail_size=128)
    model = GDSceneModel(cfg).eval()
    assert model.view_size == 128 and model.image_size == 64
    rec = _reconstruct(model, sample)
    assert rec.stats["counts"]["decoded"] == 2 * 64 * 64
    assert rec.stats["counts"]["fine"] > 0
    train_cfg = TrainConfig(model="scene-tiny", input_size=64, render_size=128, target_views=2)
    terms = scene_loss(model.train(), [sample], train_cfg, True, False, random.Random(0))
    terms.total.backward()
    assert any(p.grad is not None for p in model.densifier.parameters())


def test_reconstruct_refuses_input_it_cannot_use(tiny, sample):
    images, cams = sample["context_images"], sample["context_cameras"]
    near, far = float(sample["near"]), float(sample["far"])
    with pytest.raises(ValueError, match="2 to 4 context views"):
        tiny.reconstruct(images[:1], cams[:1], near=near, far=far)
    with pytest.raises(ValueError, match="same camera pose|same position"):
        tiny.reconstruct(images[[0, 0]], cams[[0, 0]], near=near, far=far)
    with pytest.raises(ValueError, match="near < far"):
        tiny.reconstruct(images, cams, near=far, far=near)
    bad = images.clone()
    bad[1, 3, 4, 0] = float("nan")
    with pytest.raises(ValueError, match="image 1 has NaN"):
        tiny.reconstruct(bad, cams, near=near, far=far)
    with pytest.raises(ValueError, match="images are"):
        tiny.reconstruct(images[:, :128], cams, near=near, far=far)
    # The second camera turned to look the other way: nothing to match.
    c2w = cams.camera_to_world.clone()
    c2w[1, :3, :3] = c2w[1, :3, :3] @ torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
    away = Cameras(torch.linalg.inv(c2w), cams.fx, cams.fy, cams.cx, cams.cy,
                   cams.width, cams.height)  # fmt: skip
    with pytest.raises(ValueError, match="does not overlap any other view"):
        tiny.reconstruct(images, away, near=near, far=far)


def test_cancel_stops_before_any_result(tiny, sample):
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        _reconstruct(tiny, sample, cancel=event)


def test_view_overlap_of_the_sample_pair_and_of_cameras_back_to_back(sample):
    cams = sample["context_cameras"]
    near, far = float(sample["near"]), float(sample["far"])
    both = view_overlap(cams, near, far)
    assert both.shape == (2, 2) and torch.equal(both.diagonal(), torch.ones(2, dtype=both.dtype))
    assert float(both[0, 1]) > 0.4 and float(both[1, 0]) > 0.4
    eye = torch.zeros(2, 3)
    backs = Cameras.look_at(eye, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]),
                            fov_x_deg=50.0, width=32, height=32)  # fmt: skip
    assert float(view_overlap(backs, 0.5, 10.0)[0, 1]) == 0.0


def test_check_depth_range():
    assert check_depth_range(0.5, 8) == (0.5, 8.0)
    for near, far in ((0, 1), (2, 1), (float("nan"), 1), (1, float("inf")), ("a", 2)):
        with pytest.raises(ValueError):
            check_depth_range(near, far)


def test_inverse_depth_error_is_zero_when_right_and_ignores_missing_depth():
    true = torch.full((1, 4, 4), 2.0)
    true[0, 0, 0] = 0.0  # no surface (sky through a window)
    pred = torch.full((1, 4, 4), 2.0)
    pred[0, 0, 0] = 99.0
    assert float(inverse_depth_error(pred, true, 1.0, 4.0)) == 0.0
    pred[0, 1, 1] = 4.0  # 1/2 - 1/4 = 0.25 over a span of 1 - 0.25
    expected = (0.25 / 0.75) / 15
    assert float(inverse_depth_error(pred, true, 1.0, 4.0)) == pytest.approx(expected)


def test_scene_loss_trains_backbone_and_densifier(sample):
    torch.manual_seed(0)
    model = GDSceneModel(get_scene_config("scene-tiny")).train()
    cfg = TrainConfig(model="scene-tiny", input_size=64, target_views=2, depth_weight=0.1,
                      range_jitter=0.3)  # fmt: skip
    terms = scene_loss(model, [{**sample, "index": 0}], cfg, True, False, random.Random(0))
    assert torch.isfinite(terms.total) and terms.depth > 0
    terms.total.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum()}
    assert any(n.startswith("backbone.") for n in grads)
    assert any(n.startswith("densifier.generative.") for n in grads)
    scores = scene_scores(model.eval(), sample, densify=True)
    assert set(scores) == {"psnr_coarse", "psnr_fine", "inverse_depth_error", "depth_error_m"}
    assert all(torch.isfinite(torch.tensor(v)) for v in scores.values())


def test_training_runs_resumes_and_loads_through_load_model(tmp_path):
    cfg = TrainConfig(model="scene-tiny", data=str(SAMPLE), out=str(tmp_path / "run"), steps=3,
                      target_views=2, depth_weight=0.1, checkpoint_every=2, log_every=1,
                      warmup=1, threads=1)  # fmt: skip
    out = train(cfg, max_steps=2)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert all("loss_depth" in json.loads(x) for x in lines)
    train(cfg)  # resumes at step 2 and finishes step 3
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    model = load_model(out / "checkpoint" / "model.safetensors")
    assert isinstance(model, GDSceneModel) and model.name == "scene-tiny"


def test_load_model_refuses_scene_weights_that_do_not_fit(tmp_path):
    model = GDSceneModel(get_scene_config("scene-tiny"))
    state = model.state_dict()
    state.pop(next(iter(state)))
    path = tmp_path / "scene.safetensors"
    save_weights(state, path, {"config": model.cfg.to_dict()})
    with pytest.raises(ValueError, match="do not fit scene-tiny"):
        load_model(path)
    with pytest.raises(ValueError, match="holds 'scene-tiny' weights, not 'scene-small'"):
        load_model("scene-small", weights=path)
