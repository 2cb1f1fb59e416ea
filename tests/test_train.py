"""Training: the loss falls on one object, checkpoints resume, DDP matches one process."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from engine.cli import main as gd_main
from engine.data.cache import CachedProps, build_cache
from engine.images import resize_views
from engine.models.config import get_model_config
from engine.models.gd_object import GDObjectModel
from engine.train import (
    TrainConfig,
    compute_loss,
    learning_rate,
    load_init_state,
    load_optimizer_tensors,
    optimizer_tensors,
    random_rig,
    train,
    training_views,
    wrap_ddp,
)
from engine.views import load_nerf_scene

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_props"


@pytest.fixture
def one_object(tmp_path: Path) -> Path:
    """The bundled sample props with a single training object."""
    root = tmp_path / "props"
    shutil.copytree(SAMPLE, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"] = {"train": [0], "val": [1], "test": [2]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tiny_cfg(data: Path, out: Path, **changes) -> TrainConfig:
    base = dict(
        model="object-tiny", data=str(data), out=str(out), steps=40, lr=3e-3, warmup=5,
        render_size=32, target_views=2, log_every=1, checkpoint_every=10, val_every=1000,
        val_objects=1, device="cpu", densify_from=25, feature_dropout=0.0,
    )  # fmt: skip
    base.update(changes)
    return TrainConfig(**base)


@pytest.mark.slow
def test_tiny_model_loss_falls_on_one_object(one_object: Path, tmp_path: Path):
    run = train(tiny_cfg(one_object, tmp_path / "run"))
    log = [r for r in read_log(run) if r["split"] == "train"]
    assert [r["step"] for r in log] == list(range(1, 41))
    coarse = [r["loss_coarse"] for r in log]
    assert sum(coarse[-5:]) / 5 < 0.7 * sum(coarse[:5]) / 5
    # The densifier joined at step 25 and its loss falls too.
    fine = [r["loss_fine"] for r in log if r["densify"]]
    assert len(fine) == 15 and all(f > 0 for f in fine)
    assert sum(fine[-4:]) / 4 < sum(fine[:4]) / 4
    assert (run / "checkpoint" / "model.safetensors").is_file()
    assert (run / "checkpoint" / "optimizer.safetensors").is_file()
    if importlib.util.find_spec("matplotlib") is not None:  # plots are an optional extra
        assert (run / "curves.png").is_file()


def test_resume_continues_from_the_checkpoint(one_object: Path, tmp_path: Path):
    cfg = tiny_cfg(one_object, tmp_path / "run", steps=12, checkpoint_every=4, densify=False)
    train(cfg, max_steps=6)  # stops at 6, last checkpoint at 6
    meta = json.loads((tmp_path / "run" / "checkpoint" / "model.json").read_text())
    assert meta["training"]["step"] == 6
    train(cfg)
    steps = [r["step"] for r in read_log(tmp_path / "run") if r["split"] == "train"]
    assert steps == list(range(1, 13))  # no step repeated or skipped


def test_init_densifier_pairs_one_runs_densifier_with_another_runs_backbone(
    one_object: Path, tmp_path: Path
):
    from engine.weights import save_weights

    cfg = get_model_config("object-tiny")
    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = tmp_path / f"w{seed}.safetensors"
        save_weights(GDObjectModel(cfg).state_dict(), path, {"config": cfg.to_dict()})
        files.append(path)
    # lr = 0: the one step leaves every tensor as it was loaded.
    run = train(tiny_cfg(
        one_object, tmp_path / "run", steps=1, lr=0.0, warmup=1, densify_from=0,
        init=str(files[0]), init_densifier=str(files[1]),
    ))  # fmt: skip
    got = load_file(str(run / "checkpoint" / "model.safetensors"))
    a, b = load_file(str(files[0])), load_file(str(files[1]))
    assert any(k.startswith("densifier.") for k in got) and any(
        k.startswith("backbone.") for k in got
    )
    for key, value in got.items():
        expected = b[key] if key.startswith("densifier.") else a[key]
        assert torch.equal(value, expected), key
    with pytest.raises(ValueError, match="init_densifier needs init"):
        train(tiny_cfg(one_object, tmp_path / "run2", steps=1, init_densifier=str(files[1])))


def test_candidates_option_sets_the_k_the_model_trains_and_infers_with(
    one_object: Path, tmp_path: Path, monkeypatch
):
    """`--candidates K` replaces the preset's densification candidates while training, and
    the checkpoint's config carries it, so the weights infer with the K they learned."""
    import engine.gd.pipeline as pipeline

    asked = []
    real = pipeline.gradient_mask

    def spy(*args, **kwargs):
        asked.append(kwargs["k"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "gradient_mask", spy)
    preset = get_model_config("object-tiny")
    k = preset.train_candidates + 5
    run = train(tiny_cfg(one_object, tmp_path / "run", steps=2, densify_from=0, candidates=k))
    assert asked and all(a == k for a in asked), asked
    meta = json.loads((run / "checkpoint" / "model.json").read_text())
    assert meta["config"]["candidates"] == k and meta["config"]["train_candidates"] == k
    asked.clear()
    run = train(tiny_cfg(one_object, tmp_path / "run0", steps=1, densify_from=0))
    # (the training step asks train_candidates; the validation at the end, candidates)
    assert asked[0] == preset.train_candidates != preset.candidates, asked
    assert set(asked) <= {preset.train_candidates, preset.candidates}, asked
    meta = json.loads((run / "checkpoint" / "model.json").read_text())
    assert meta["config"]["candidates"] == preset.candidates


def test_render_size_above_the_input_size_trains_on_finer_targets(
    one_object: Path, tmp_path: Path, monkeypatch
):
    from engine.data.cache import cache_dir

    seen: list[tuple[int, ...]] = []
    forward = GDObjectModel.forward

    def recording(self, images, *args, **kwargs):
        seen.append(tuple(images.shape))
        return forward(self, images, *args, **kwargs)

    monkeypatch.setattr(GDObjectModel, "forward", recording)
    run = train(tiny_cfg(one_object, tmp_path / "run", steps=2, render_size=96, val_every=2))
    assert (cache_dir(one_object, "train", 96) / "index.json").is_file()
    assert not cache_dir(one_object, "train", 64).exists()
    # The model gets the 96² views in training and validation (it reads them at its own
    # sizes: tests/test_models.py).
    assert seen and all(shape[-3:-1] == (96, 96) for shape in seen)
    log = read_log(run)
    assert [r["split"] for r in log] == ["train", "train", "val"]
    assert all(r["loss"] > 0 for r in log if r["split"] == "train")


def test_random_rig_draws_inputs_from_every_view_and_scores_the_rest(one_object: Path):
    import random

    sample = CachedProps(build_cache(one_object, "all", 32, progress=False))[0]
    total = len(sample["input_cameras"]) + len(sample["target_cameras"])
    everything = torch.cat([sample["input_images"], sample["target_images"]])
    rng = random.Random(0)
    seen_counts = set()
    assert total == 8  # 4 ring + 4 targets
    for _ in range(20):
        rig = random_rig(sample, rng.randint(2, 5), 3, rng)
        n = len(rig["input_cameras"])
        seen_counts.add(n)
        assert rig["input_images"].shape[0] == rig["input_alphas"].shape[0] == n
        assert len(rig["target_cameras"]) == rig["target_images"].shape[0] == 3
        # Inputs and targets are distinct views of the object, images with their cameras.
        picked = torch.cat([rig["input_images"], rig["target_images"]])
        rows = [int((everything - im).abs().flatten(1).sum(1).argmin()) for im in picked]
        assert len(set(rows)) == n + 3 and max(rows) < total
        w2c = torch.cat([sample["input_cameras"].world_to_camera,
                         sample["target_cameras"].world_to_camera])  # fmt: skip
        got = torch.cat([rig["input_cameras"].world_to_camera,
                         rig["target_cameras"].world_to_camera])  # fmt: skip
        torch.testing.assert_close(got, w2c[rows])
    assert seen_counts == {2, 3, 4, 5}
    # All but one view at most: something is always left to score.
    assert len(random_rig(sample, 99, 4, rng)["target_cameras"]) == 1
    # Every object of a step reads as many views (they are stacked into one batch).
    cfg = TrainConfig(rig_views=(2, 8), target_views=2)
    batch = training_views([sample, sample, sample], cfg, rng)
    assert len({len(s["input_cameras"]) for s in batch}) == 1


def test_silhouette_model_trains_with_random_rigs_and_the_alpha_loss(
    one_object: Path, tmp_path: Path
):
    """A `silhouette` model reads the input alphas; random rigs and the alpha loss run
    end to end and the loss falls (coarse and fine)."""
    cfg_model = get_model_config("object-tiny")
    cfg_model = cfg_model.with_(backbone=replace(cfg_model.backbone, silhouette=True))
    cfg = tiny_cfg(one_object, tmp_path / "run", steps=30, densify_from=15,
                   rig_views=(2, 6), alpha_weight=1.0)  # fmt: skip
    run = train(cfg, cfg_model)
    log = [r for r in read_log(run) if r["split"] == "train"]
    coarse = [r["loss_coarse"] for r in log]
    assert sum(coarse[-5:]) / 5 < sum(coarse[:5]) / 5
    assert all(math.isfinite(r["loss_fine"]) and r["loss_fine"] > 0 for r in log[15:])
    with pytest.raises(ValueError, match="at most"):
        train(tiny_cfg(one_object, tmp_path / "bad", rig_views=(2, 9)))


def test_alpha_loss_adds_the_silhouette_error(one_object: Path):
    samples = _samples(one_object)
    model = _model()
    plain = compute_loss(model, samples, TrainConfig(render_size=32), densify=False)
    torch.manual_seed(0)
    model = _model()
    with_alpha = compute_loss(
        model, samples, TrainConfig(render_size=32, alpha_weight=2.0), densify=False
    )
    assert with_alpha.coarse > plain.coarse


def test_optimizer_state_survives_safetensors():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_tensors(opt)
    meta = json.loads(json.dumps(meta))  # what the JSON file holds
    other = torch.optim.AdamW(model.parameters(), lr=0.1)
    load_optimizer_tensors(other, tensors, meta)
    a, b = opt.state_dict(), other.state_dict()
    for pid in a["state"]:
        for key, value in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][pid][key]))


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, warmup=10, steps=110)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(60, cfg) == pytest.approx(0.05 + 0.95 * 0.5)
    assert learning_rate(110, cfg) == pytest.approx(0.05)


def test_gd_train_cli_rejects_bad_input(tmp_path: Path, capsys):
    assert gd_main(["train", "--config", "object-tiny", "--data", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "cfg.json"
    bad.write_text("{not json")
    assert gd_main(["train", "--config", str(bad)]) == 2
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it before anything runs
        gd_main(["train", "--config", "object-tiny", "--data", str(SAMPLE),
                 "--out", str(tmp_path / "k"), "--candidates", "-1"])  # fmt: skip
    assert exit_.value.code == 2 and "--candidates" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


# ---------------------------------------------------------------------------- DDP
def _samples(data: Path) -> list[dict]:
    ds = CachedProps(build_cache(data, "all", 64, progress=False))
    out = []
    for i in range(2):
        s = ds[i]
        s = {
            **s,
            "target_images": s["target_images"][:2],
            "target_alphas": s["target_alphas"][:2],
            "target_cameras": s["target_cameras"][:2],
        }
        out.append(s)
    return out


def _model() -> GDObjectModel:
    torch.manual_seed(0)
    model = GDObjectModel(get_model_config("object-tiny"))
    # Eval mode: no drop-path and no order shuffling, so both runs see the same network.
    return model.eval()


def _ddp_worker(rank: int, world: int, store: str, data: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = _model()
        net = wrap_ddp(model, torch.device("cpu"), TrainConfig())
        cfg = TrainConfig(render_size=32)
        terms = compute_loss(net, [_samples(Path(data))[rank]], cfg, densify=True)
        terms.total.backward()
        if rank == 0:
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            save_file(grads, out)
        # Neither rank may tear gloo down while its peer still has the last all-reduce
        # in flight: that aborted rank 1 ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(one_object: Path, tmp_path: Path):
    manifest = json.loads((one_object / "manifest.json").read_text())
    manifest["splits"] = {"train": [0, 1, 2], "val": [], "test": []}
    (one_object / "manifest.json").write_text(json.dumps(manifest))
    _samples(one_object)  # build the cache once, before the workers read it
    out = tmp_path / "ddp_grads.safetensors"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(one_object), str(out)), nprocs=2)
    ddp = load_file(out)

    model = _model()
    terms = compute_loss(model, _samples(one_object), TrainConfig(render_size=32), densify=True)
    terms.total.backward()
    single = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(ddp) == set(single)
    assert len(single) > 50  # backbone and densifier both received gradients
    for name, grad in single.items():
        torch.testing.assert_close(ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_init_from_weights_without_the_colour_gates_keeps_their_initialisation():
    """--init from a densifier trained before the colour gates existed: every tensor it
    has is loaded, the gates start at their initial (mostly shut) values; a state missing
    part of a module the model has is refused."""
    cfg = get_model_config("object-tiny")
    assert cfg.densify.color_gate
    old = GDObjectModel(cfg.with_(densify=cfg.densify.with_(color_gate=False)))
    model = GDObjectModel(cfg)
    fresh_gates = {k: v.clone() for k, v in model.state_dict().items() if ".gate." in k}
    assert fresh_gates
    load_init_state(model, old.state_dict(), "old.safetensors")
    state = model.state_dict()
    for key, value in old.state_dict().items():
        assert torch.equal(state[key], value), key
    for key, value in fresh_gates.items():
        assert torch.equal(state[key], value), key
    broken = dict(old.state_dict())
    broken.pop(next(k for k in broken if k.endswith("head.net.0.bias")))
    with pytest.raises(ValueError, match="do not fit"):
        load_init_state(model, broken, "broken.safetensors")


def test_init_across_gaussian_volume_upsampling_resamples_the_upsampling_kernel():
    """--init from a model with a coarser Gaussian volume (object-small v3: 32³ -> v4: 48³):
    the up-sampling kernel is resampled (outer sub-voxels copy the old outer ones, the
    middle one is their mean), every other tensor loads unchanged, and the model runs."""
    cfg = get_model_config("object-tiny")
    old = GDObjectModel(cfg.with_(backbone=replace(cfg.backbone, upsample=2)))
    model = GDObjectModel(cfg.with_(backbone=replace(cfg.backbone, upsample=3)))
    load_init_state(model, old.state_dict(), "old.safetensors")
    key = "backbone.to_gaussian_volume.weight"
    w_old, w_new = old.state_dict()[key], model.state_dict()[key]
    assert w_new.shape == w_old.shape[:2] + (3, 3, 3)
    torch.testing.assert_close(w_new[..., 0, 0, 0], w_old[..., 0, 0, 0])
    torch.testing.assert_close(w_new[..., 2, 2, 2], w_old[..., 1, 1, 1])
    middle = 0.5 * (w_old[..., 0, 0, 1] + w_old[..., 1, 0, 1])
    torch.testing.assert_close(w_new[..., 1, 0, 2], middle)
    for name, value in old.state_dict().items():
        if name != key:
            assert torch.equal(model.state_dict()[name], value), name
    vs = load_nerf_scene("examples/sample_props/objects/000000/transforms_input.json")
    images, cams = resize_views(vs.rgba(), vs.cameras, 64)
    out = model.eval().reconstruct(images, cams, densify=False)
    assert len(out.coarse) > 0 and torch.isfinite(out.coarse.means).all()
    # Same factor: nothing to resample, the state is handed back as is.
    assert model.adapt_init_state(model.state_dict()).keys() == model.state_dict().keys()
