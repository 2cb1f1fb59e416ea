"""engine.refine: time/step-budgeted optimisation with densification, on tiny scenes
(random target Gaussians rendered at 32² by the numba rasteriser), and `gd reconstruct
--refine-steps` with more views than the model reads."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.cameras import Cameras
from engine.gaussians import Gaussians
from engine.refine import (
    RefineConfig,
    RefineError,
    farthest_point_views,
    holdout_indices,
    random_gaussians,
    refine,
)
from engine.refine.config import RefineConfig as _Config
from engine.refine.params import GaussianParams, learning_rates
from engine.render import render

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_props" / "objects" / "000000"
SIZE = 32
NO_DENSIFY = RefineConfig(densify=False)


def ring(n: int, size: int = SIZE, radius: float = 2.0) -> Cameras:
    """n cameras around the origin, alternately above and below it."""
    angle = torch.arange(n) * (2 * torch.pi / n)
    z = torch.where(torch.arange(n) % 2 == 0, 0.6, -0.3)
    eyes = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), z], 1)
    return Cameras.look_at(eyes, torch.zeros(3), fov_x_deg=40.0, width=size, height=size)


@pytest.fixture(scope="module")
def scene() -> tuple[torch.Tensor, Cameras]:
    """8 views at 32² of 300 random opaque Gaussians."""
    target = random_gaussians(300, half_size=0.35, opacity=0.8, seed=1)
    cams = ring(8)
    with torch.no_grad():
        images = render(target, cams).colors
    return images, cams


@pytest.fixture()
def start() -> Gaussians:
    return random_gaussians(200, half_size=0.35, seed=2)


def same(a: Gaussians, b: Gaussians) -> bool:
    return all(torch.equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(Gaussians))


def test_refinement_lowers_the_loss(scene, start):
    images, cams = scene
    with torch.no_grad():
        before = float(((render(start, cams).colors - images) ** 2).mean())
    res = refine(start, images, cams, steps=60, holdout=0, seed=0)
    with torch.no_grad():
        after = float(((render(res.gaussians, cams).colors - images) ** 2).mean())
    assert res.steps == 60 and len(res.loss_history) == 60
    assert sum(res.loss_history[-10:]) / 10 < 0.8 * res.loss_history[0]
    assert after < 0.6 * before
    res.gaussians.validate()


def test_held_out_views_are_scored_and_not_trained_on(scene, start):
    images, cams = scene
    seen: list[str] = []
    res = refine(start, images, cams, steps=20, config=RefineConfig(eval_every=10),
                 progress=lambda f, m: seen.append(m))  # fmt: skip
    assert res.holdout.tolist() == holdout_indices(8, None, RefineConfig()).tolist()
    assert len(res.holdout) == 1
    assert res.holdout_psnr is not None and res.holdout_psnr_start is not None
    assert [s for s, _ in res.psnr_history] == [0, 10, 20]
    assert any("held-out PSNR" in m for m in seen)
    # The returned state is the best one evaluated.
    assert res.holdout_psnr == max(p for _, p in res.psnr_history)
    # Few views: nothing held out.
    assert len(holdout_indices(4, None, RefineConfig())) == 0


def test_cancel_returns_promptly_with_a_valid_result(scene, start):
    images, cams = scene
    cancel = threading.Event()
    stop_at = []

    def progress(fraction: float, message: str) -> None:
        if "step 3," in message:
            stop_at.append(time.perf_counter())
            cancel.set()

    res = refine(start, images, cams, seconds=60.0, cancel=cancel, progress=progress,
                 config=NO_DENSIFY)  # fmt: skip
    assert res.cancelled and res.steps == 3
    assert res.seconds < 30.0
    res.gaussians.validate()
    assert len(res.gaussians) == len(start)
    # Cancelled before the first step: the input comes back unchanged.
    cancel = threading.Event()
    cancel.set()
    res = refine(start, images, cams, steps=10, cancel=cancel)
    assert res.cancelled and res.steps == 0 and same(res.gaussians, start)


def test_time_budget_is_respected(scene, start):
    images, cams = scene
    refine(start, images, cams, steps=1, holdout=0)  # numba kernels compiled / loaded
    budget = 2.0
    t0 = time.perf_counter()
    res = refine(start, images, cams, seconds=budget)
    elapsed = time.perf_counter() - t0
    assert res.steps > 1
    assert 0.5 * budget <= elapsed <= 1.1 * budget
    assert res.seconds <= elapsed


def test_snapshots_are_the_states_shorter_runs_end_with(scene, start):
    """The schedule depends on steps, not on the budget: a snapshot after k steps of a
    long run is bit for bit what a k-step run returns, densification included."""
    images, cams = scene
    cfg = RefineConfig(densify_every=4, grad_threshold=1e-9, lr_decay_steps=20)
    long = refine(start, images, cams, steps=12, holdout=0, config=cfg, snapshots=(5, 9))
    assert [(b, s) for b, s, _ in long.snapshots] == [(5.0, 5), (9.0, 9)]
    for budget, _, snap in long.snapshots:
        short = refine(start, images, cams, steps=int(budget), holdout=0, config=cfg)
        assert same(snap, short.gaussians)
    assert len(long.snapshots[1][2]) > len(start)  # densification happened before step 9
    # Time budgets: one snapshot per budget, the last one the final state.
    timed = refine(start, images, cams, seconds=1.5, holdout=0, snapshots=(0.5, 1.5))
    assert [b for b, _, _ in timed.snapshots] == [0.5, 1.5]
    assert timed.snapshots[0][1] <= timed.snapshots[1][1] == timed.steps
    assert same(timed.snapshots[1][2], timed.gaussians)


def test_warmup_steps_render_smaller_views_then_full_size(scene, start, monkeypatch):
    """Coarse-to-fine: the first `warmup_steps` steps see the views at `warmup_side`, the
    rest (and every held-out score) at full size; the warm-up never takes more than half
    the budget, so a short run still ends on full-size steps."""
    import engine.render as render_module

    images, cams = scene
    sizes: list[int] = []

    def spy(gaussians, cameras, *args, **kwargs):
        sizes.append(cameras.width)
        return render(gaussians, cameras, *args, **kwargs)

    monkeypatch.setattr(render_module, "render", spy)
    cfg = RefineConfig(warmup_steps=10, warmup_side=16, eval_every=50)
    res = refine(start, images, cams, steps=30, holdout=0, config=cfg)
    assert sizes == [16] * 10 + [SIZE] * 20
    assert sum(res.loss_history[-5:]) < sum(res.loss_history[:5])
    sizes.clear()
    refine(start, images, cams, steps=12, holdout=0, config=cfg)
    assert sizes == [16] * 6 + [SIZE] * 6
    sizes.clear()
    refine(start, images, cams, steps=6, config=cfg)  # one view held out, scored at 32²
    assert sizes == [SIZE] + [16] * 3 + [SIZE] * 3 + [SIZE]
    sizes.clear()
    refine(start, images, cams, steps=6, holdout=0, config=RefineConfig(warmup_steps=0))
    assert sizes == [SIZE] * 6


def test_split_clone_keeps_the_cap_and_prunes_transparent(scene, start):
    images, cams = scene
    g = start.clone()
    g.opacity_logits[:50] = -12.0  # opacity 6e-6: below prune_opacity
    cap = len(g) - 50 + 10  # pruning first makes room for 10
    cfg = RefineConfig(densify_every=5, grad_threshold=1e-9, max_gaussians=cap,
                       densify_until=1.0, eval_every=1000)  # fmt: skip
    # One densification (at step 5): it prunes and grows in the same round.
    res = refine(g, images, cams, steps=5, holdout=0, config=cfg)
    c = res.counts
    assert c["pruned"] >= 50
    assert 0 < c["cloned"] + c["split"] <= 10
    assert c["final"] == len(res.gaussians) <= cap
    assert c["final"] == c["start"] - c["pruned"] + c["cloned"] + c["split"]
    assert bool((res.gaussians.opacities >= cfg.prune_opacity).all())
    # Later rounds keep the cap.
    res = refine(g, images, cams, steps=20, holdout=0, config=cfg)
    assert len(res.gaussians) <= cap


def test_clone_and_split_keep_adam_state_in_step():
    from engine.refine.densify import clone_and_split

    g = random_gaussians(6, seed=3, sh_degree=1)
    g.log_scales[:3] = -8.0  # small: cloned; the rest split
    cfg = RefineConfig()
    params = GaussianParams(g, learning_rates(cfg, 1.0), torch.ones(6, dtype=torch.bool))
    sum(t.square().sum() for t in params.tensors.values()).backward()
    params.step()
    exp_avg = params.optimizer.state[params.tensors["means"]]["exp_avg"].clone()
    parents = params.tensors["log_scales"].detach()[[3, 5]].exp().repeat(2, 1)
    selected = torch.tensor([True, False, False, True, False, True])
    cloned, split = clone_and_split(params, selected, cfg, 1.0, torch.Generator().manual_seed(0))
    assert (cloned, split) == (1, 2)
    assert len(params) == 6 + 1 + 2
    for t in params.tensors.values():
        state = params.optimizer.state[t]
        assert state["exp_avg"].shape == t.shape == state["exp_avg_sq"].shape
    means_state = params.optimizer.state[params.tensors["means"]]["exp_avg"]
    # Rows: 0 1 2 4 (kept), 0 (clone, parent's moments), 3 3 5 5 (split, fresh moments).
    assert torch.equal(means_state[4], exp_avg[0])
    assert torch.equal(means_state[5:], torch.zeros(4, 3))
    split_scales = params.tensors["log_scales"][5:].detach().exp()
    assert torch.allclose(split_scales, parents / cfg.split_scale_divisor)


def test_select_leaves_the_others_bit_identical(scene, start):
    images, cams = scene
    select = torch.zeros(len(start), dtype=torch.bool)
    select[::2] = True
    cfg = RefineConfig(densify_every=5, grad_threshold=1e-9, densify_until=1.0)
    original = start.clone()
    res = refine(start, images, cams, steps=15, holdout=0, select=select, config=cfg)
    assert same(start, original)  # the input is not modified in place
    assert same(res.gaussians[~res.trainable], original[~select])
    assert res.counts["cloned"] + res.counts["split"] > 0
    moved = res.gaussians[res.trainable]
    assert len(moved) != int(select.sum()) or not same(moved, original[select])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seconds": 0}, "seconds must be"),
        ({"steps": 0}, "steps must be"),
        ({"seconds": -1.0}, "seconds must be"),
        ({"seconds": float("nan")}, "seconds must be"),
        ({}, "exactly one"),
        ({"seconds": 5.0, "steps": 5}, "exactly one"),
        ({"steps": 2, "select": torch.zeros(200, dtype=torch.bool)}, "select is empty"),
        ({"steps": 2, "select": torch.ones(3, dtype=torch.bool)}, "select must be"),
        ({"steps": 2, "holdout": [0, 0]}, "repeat"),
        ({"steps": 2, "holdout": 8}, "holdout count"),
    ],
)
def test_bad_arguments_are_clear_errors(scene, start, kwargs, message):
    images, cams = scene
    with pytest.raises(RefineError, match=message):
        refine(start, images, cams, **kwargs)


def test_bad_views_and_tiny_budget_are_clear_errors(scene, start):
    images, cams = scene
    with pytest.raises(RefineError, match="images must be"):
        refine(start, images[:, :16], cams, steps=1)
    with pytest.raises(RefineError, match="too small for one refinement step"):
        refine(start, images, cams, seconds=1e-6)
    with pytest.raises(ValueError, match="batch_views"):
        _Config(batch_views=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        _Config(warmup_steps=-1)
    with pytest.raises(ValueError, match="warmup_side"):
        _Config(warmup_side=0)


def test_learned_densifier_keeps_counts_within_the_cap(scene, start):
    from engine.models import load_model

    images, cams = scene
    model = load_model("object-tiny", pretrained=False, device="cpu")
    cap = len(start) + 60
    cfg = RefineConfig(densify_every=3, grad_threshold=1e-9, max_gaussians=cap,
                       densify_until=1.0)  # fmt: skip
    res = refine(start, images, cams, steps=6, holdout=0, densifier=model, config=cfg)
    assert res.counts["learned_candidates"] > 0
    assert len(res.gaussians) <= cap
    assert res.counts["final"] == len(res.gaussians)
    res.gaussians.validate()


def test_farthest_point_views_spread_around_a_ring():
    angle = torch.arange(8) * torch.pi / 4
    eyes = torch.stack([2 * torch.cos(angle), 2 * torch.sin(angle), torch.zeros(8)], 1)
    cams = Cameras.look_at(eyes, torch.zeros(3), width=16, height=16)
    picked = farthest_point_views(cams, 4).tolist()
    assert picked in ([0, 2, 4, 6], [1, 3, 5, 7])
    assert farthest_point_views(cams, 20).tolist() == list(range(8))


def _merged_views(folder: Path, size: int = 64) -> Path:
    """The sample's 4 input and 4 target views at `size`² in one transforms.json."""
    frames = []
    data = None
    for part in ("input", "target"):
        data = json.loads((SAMPLE / f"transforms_{part}.json").read_text())
        for frame in data["frames"]:
            with Image.open(SAMPLE / frame["file_path"]) as im:
                small = im.convert("RGBA").resize((size, size), Image.BOX)
            name = f"{part}_{len(frames):02d}.png"
            small.save(folder / name)
            frames.append({**frame, "file_path": name})
    scale = size / data["w"]
    for key in ("fl_x", "fl_y", "cx", "cy"):
        data[key] *= scale
    data["w"] = data["h"] = size
    data["frames"] = frames
    path = folder / "transforms.json"
    path.write_text(json.dumps(data))
    return path


def test_gd_reconstruct_refines_with_more_views_than_the_model_reads(tmp_path, capsys):
    from engine.cli import main
    from engine.io import load
    from engine.models import load_model
    from engine.weights import save_weights

    model = load_model("object-tiny", pretrained=False, device="cpu")
    cfg = model.config.with_(max_views=4)  # the sample's 8 views are more than it reads
    weights = tmp_path / "tiny4.safetensors"
    save_weights(model.state_dict(), weights, {"config": cfg.to_dict()})
    transforms = _merged_views(tmp_path)
    out = tmp_path / "prop.ply"
    args = ["reconstruct", str(transforms), "-o", str(out), "--model", str(weights),
            "--device", "cpu", "--refine-steps", "5"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "the model read 4 of the 8 views" in text
    assert re.search(r"refined 5 steps in [\d.]+ s on 7 views", text)
    assert re.search(r"held-out PSNR \(1 views\): [\d.]+ -> [\d.]+ dB", text)
    assert len(load(out)) > 0
    # --refine and --refine-steps exclude each other; 0 seconds is refused while parsing.
    for bad in (["--refine", "0"], ["--refine", "5", "--refine-steps", "5"]):
        with pytest.raises(SystemExit) as err:
            main(args[:-2] + bad)
        assert err.value.code == 2
