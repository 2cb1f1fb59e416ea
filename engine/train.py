"""Training the object and scene models: losses, schedule, checkpoints, DDP.

    gd train --config object-small --data datasets/props256_s1 --out runs/small --steps 20000
    gd train --config scene-small --data datasets/scenes256_s1 --out runs/scene-small ...
    torchrun --nproc_per_node 2 -m engine.cli train ...      # same code, DDP (gloo / nccl)

Loss (DESIGN.md §2): MSE + 0.5·(1 − MS-SSIM) on the coarse and on the fine render of the
input and target views. AdamW with linear warm-up and cosine decay, gradient clipping,
bf16 autocast on CUDA. Checkpoints are safetensors + JSON: the model (`model.*`) and the
optimizer state in a separate file (`optimizer.*`), written atomically every
`checkpoint_every` steps, so a run killed at any moment resumes from the last one. The
scene model's loss and validation live in `train_scene.py`; the loop, schedule and
checkpoints are shared.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .atomic import write_atomic
from .cameras import Cameras
from .devices import resolve_device
from .images import resize_views
from .metrics import ms_ssim, psnr
from .models.config import ObjectModelConfig, get_model_config
from .models.gd_object import WHITE, GDObjectModel
from .models.normalization import estimate_normalization
from .render import render
from .train_config import TrainConfig
from .weights import load_weights, save_weights


# ---------------------------------------------------------------------------- losses
def image_loss(pred: Tensor, target: Tensor, ms_ssim_weight: float) -> Tensor:
    """MSE + w·(1 − MS-SSIM), averaged over views. pred, target: (V, H, W, 3)."""
    loss = (pred - target).square().mean()
    if ms_ssim_weight:
        loss = loss + ms_ssim_weight * (1 - ms_ssim(pred, target)).mean()
    return loss


@dataclass
class LossTerms:
    total: Tensor
    coarse: float
    fine: float
    psnr_coarse: float
    psnr_fine: float
    coarse_count: int = 0
    fine_count: int = 0
    depth: float = 0.0

    @staticmethod
    def mean(total: Tensor, stats: dict[str, Any], n: int) -> LossTerms:
        """The batch mean of `total` and of the per-item sums in `stats` (`new_stats`)."""
        return LossTerms(
            total / n, stats["coarse"] / n, stats["fine"] / n,
            stats["psnr_coarse"] / n, stats["psnr_fine"] / n,
            stats["coarse_count"] // n, stats["fine_count"] // n, stats["depth"] / n,
        )  # fmt: skip


def new_stats() -> dict[str, Any]:
    """Per-batch sums `output_losses` (and a depth term) add to; `LossTerms.mean` reads them."""
    return {"coarse": 0.0, "fine": 0.0, "psnr_coarse": 0.0, "psnr_fine": 0.0,
            "coarse_count": 0, "fine_count": 0, "depth": 0.0}  # fmt: skip


def model_space(
    sample: dict[str, Any], device: torch.device
) -> tuple[Tensor, Cameras, Tensor, Cameras]:
    """Normalise one object's views the way `reconstruct` does (cameras only).

    Returns input images and cameras, target images and cameras, at the cache's size.
    """
    norm = estimate_normalization(sample["input_cameras"])
    inputs = norm.cameras_to_model(sample["input_cameras"]).to(device=device)
    targets = norm.cameras_to_model(sample["target_cameras"]).to(device=device)
    return sample["input_images"].to(device), inputs, sample["target_images"].to(device), targets


def loss_alphas(sample: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """(V, S, S) input and (T, S, S) target alphas of one object (ones when unknown)."""
    inp, tgt = sample["input_images"], sample["target_images"]
    a_in = sample.get("input_alphas", torch.ones_like(inp[..., 0]))
    a_tgt = sample.get("target_alphas", torch.ones_like(tgt[..., 0]))
    return a_in.to(device), a_tgt.to(device)


def compute_loss(
    model: nn.Module,
    samples: list[dict[str, Any]],
    cfg: TrainConfig,
    densify: bool,
    drop_features: bool = False,
) -> LossTerms:
    """Mean loss over the objects of a (per-process) batch.

    Every object renders its coarse set (and the merged fine set) into its input and
    target views.
    """
    core: GDObjectModel = model.module if hasattr(model, "module") else model
    device = next(core.parameters()).device
    prepared = [model_space(s, device) for s in samples]
    alphas = [loss_alphas(s, device) for s in samples]
    images = torch.stack([p[0] for p in prepared])
    outs = model(images, [p[1] for p in prepared], densify=densify,
                 drop_backbone_features=drop_features,
                 alphas=torch.stack([a for a, _ in alphas]))  # fmt: skip
    total = images.new_zeros(())
    stats = new_stats()
    bg = torch.tensor(WHITE, device=device)
    for (inp, in_cams, tgt, tgt_cams), (a_in, a_tgt), out in zip(
        prepared, alphas, outs, strict=True
    ):
        gt, cams = torch.cat([inp, tgt]), Cameras.cat([in_cams, tgt_cams])
        gt = torch.cat([gt, torch.cat([a_in, a_tgt])[..., None]], -1)
        if cfg.render_size > 0:
            gt, cams = resize_views(gt, cams, cfg.render_size)
        gt, gt_alpha = gt[..., :3], gt[..., 3]
        total = total + output_losses(out, cams, gt, bg, cfg, stats, gt_alpha)
    return LossTerms.mean(total, stats, len(samples))


def output_losses(
    out: Any,
    cams: Cameras,
    gt: Tensor,
    background: Tensor,
    cfg: TrainConfig,
    stats: dict[str, Any],
    gt_alpha: Tensor | None = None,
) -> Tensor:
    """Sum of `image_loss` (plus the alpha term with `gt_alpha` and `cfg.alpha_weight`) of
    a model output's coarse and merged fine Gaussians (`out.coarse`, `out.densified`, as
    the object and scene models return them) rendered into `cams` against gt (C, H, W, 3);
    adds each set's loss, PSNR and count to `stats` (`new_stats`)."""
    stats["coarse_count"] += len(out.coarse)
    sets = []
    # A frozen backbone's render has no gradient to give: skip it (validation still
    # scores the coarse set).
    if out.coarse.means.requires_grad:
        sets.append(("coarse", out.coarse))
    if out.densified is not None:
        sets.append(("fine", out.densified.merged.gaussians))
        stats["fine_count"] += len(out.densified.merged.gaussians)
    total = gt.new_zeros(())
    for name, gaussians in sets:
        drawn = render(gaussians, cams, background=background)
        loss = image_loss(drawn.colors, gt, cfg.ms_ssim_weight)
        if cfg.alpha_weight and gt_alpha is not None:
            loss = loss + cfg.alpha_weight * (drawn.alphas - gt_alpha).square().mean()
        total = total + loss
        stats[name] += float(loss.detach())
        stats[f"psnr_{name}"] += float(psnr(drawn.colors.detach(), gt).mean())
    return total


# ---------------------------------------------------------------------------- schedule
def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to 5% of it at `steps`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


# ---------------------------------------------------------------------------- checkpoints
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state as flat tensors (safetensors) + JSON-able rest."""
    state = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    out: Path, model: GDObjectModel, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig
) -> None:
    """model.safetensors/json (weights + model config + progress) and optimizer.*."""
    ckpt = out / "checkpoint"
    meta = {
        "config": model.cfg.to_dict(),
        # No RNG state: a resumed run re-seeds from (seed, rank, step), see `train`.
        "training": {"step": step, "train_config": asdict(cfg)},
    }
    # Optimizer first: a crash between the two files leaves an older model with a newer
    # optimizer, which resume detects by the step recorded in both.
    tensors, opt_meta = optimizer_tensors(opt)
    save_weights(tensors, ckpt / "optimizer.safetensors", {**opt_meta, "step": step})
    save_weights(model.state_dict(), ckpt / "model.safetensors", meta)


def load_checkpoint(
    out: Path, model: GDObjectModel, opt: torch.optim.Optimizer | None
) -> dict[str, Any] | None:
    """Restore the latest checkpoint of a run; returns its training metadata (or None)."""
    ckpt = out / "checkpoint"
    if not (ckpt / "model.safetensors").is_file():
        return None
    state, meta = load_weights(ckpt / "model.safetensors")
    model.load_state_dict(state)
    if opt is not None and (ckpt / "optimizer.safetensors").is_file():
        tensors, opt_meta = load_weights(ckpt / "optimizer.safetensors")
        if opt_meta.get("step") == meta["training"]["step"]:
            load_optimizer_tensors(opt, tensors, opt_meta)
    return meta["training"]


def load_init_state(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Start `model` from `state` (an `--init`, not a resume).

    Parameters the state lacks keep their fresh initialisation when they belong to a
    module that the state's model did not have (e.g. the colour gates of a densifier
    trained without them); a model with `adapt_init_state` first converts what it knows
    how to (a different Gaussian-volume up-sampling); anything else that does not fit is
    an error.
    """
    adapt = getattr(model, "adapt_init_state", None)
    if adapt is not None:
        state = adapt(state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{source}: weights do not fit this model (unexpected {unexpected[:3]})")
    new_modules = {k.rsplit(".", 1)[0] for k in missing}
    # A module is new when none of its tensors are in the state (partially present
    # modules mean a different architecture, not an added one).
    partial = [m for m in new_modules if any(k.rsplit(".", 1)[0] == m for k in state)]
    if partial:
        raise ValueError(f"{source}: weights do not fit this model (missing {missing[:3]})")
    if missing:
        names = ", ".join(sorted(new_modules))
        print(f"init: {len(missing)} tensors not in {source} keep their initialisation ({names})")


# ---------------------------------------------------------------------------- DDP
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if device.type == "cuda":
        # Bind this process to its GPU before NCCL starts, so ranks do not share GPU 0.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap_ddp(model: nn.Module, device: torch.device, cfg: TrainConfig) -> nn.Module:
    if not (dist.is_available() and dist.is_initialized()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index or 0] if device.type == "cuda" else None
    # Frozen backbones and coarse-only phases leave parameters without gradients.
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


# ---------------------------------------------------------------------------- loop
def batches(
    n: int, batch: int, rank: int, world: int, seed: int, start_epoch: int
) -> Iterator[list[int]]:
    """Endless shuffled epochs; each process takes its own interleaved share."""
    epoch = start_epoch
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        mine = order[rank::world]
        for i in range(0, len(mine) - batch + 1, batch):
            yield [int(j) for j in mine[i : i + batch]]
        epoch += 1


def select_targets(sample: dict[str, Any], k: int, rng: random.Random) -> dict[str, Any]:
    total = len(sample["target_cameras"])
    idx = sorted(rng.sample(range(total), min(k, total)))
    out = dict(sample)
    out["target_images"] = sample["target_images"][idx]
    out["target_alphas"] = sample["target_alphas"][idx]
    out["target_cameras"] = sample["target_cameras"][idx]
    return out


def random_rig(sample: dict[str, Any], n: int, targets: int, rng: random.Random) -> dict[str, Any]:
    """A random camera rig: `n` input views drawn from all of the object's views (its ring
    and its targets; at most all but one), and up to `targets` of the rest as targets, so
    the model learns any number of views from any direction."""
    images = torch.cat([sample["input_images"], sample["target_images"]])
    alphas = torch.cat([sample["input_alphas"], sample["target_alphas"]])
    cams = Cameras.cat([sample["input_cameras"], sample["target_cameras"]])
    total = len(cams)
    n = min(n, total - 1)
    order = rng.sample(range(total), total)
    ins, rest = sorted(order[:n]), sorted(order[n : n + targets])
    out = dict(sample)
    for prefix, idx in (("input", ins), ("target", rest)):
        out[f"{prefix}_images"], out[f"{prefix}_alphas"] = images[idx], alphas[idx]
        out[f"{prefix}_cameras"] = cams[idx]
    return out


def training_views(
    samples: list[dict[str, Any]], cfg: TrainConfig, rng: random.Random
) -> list[dict[str, Any]]:
    """The input and loss views of one training step's objects (`rig_views`,
    `target_views`); with random rigs every object of the step reads as many views."""
    if cfg.rig_views[0] > 0:
        n = rng.randint(*cfg.rig_views)
        return [random_rig(s, n, cfg.target_views, rng) for s in samples]
    return [select_targets(s, cfg.target_views, rng) for s in samples]


@dataclass
class Run:
    """Everything a training loop needs, made by `setup_run`.

    Attributes:
        model: the model (the main process checkpoints and validates it).
        net: `model`, wrapped in DistributedDataParallel under torchrun.
        params: the parameters the optimizer trains (all but a frozen backbone's).
        opt: AdamW over `params`.
        step: the step training starts from (0, or the resumed checkpoint's).
        batches: endless per-process batches of training-set indices, already
            advanced past those the resumed steps consumed.
        rng: target-view and feature-dropout draws (seeded by seed, rank and step).
        train_set, val_set: decoded caches (val_set None when the data has no val split).
        device, ddp: where and as which process this runs.
    """

    model: GDObjectModel
    net: nn.Module
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    step: int
    batches: Iterator[list[int]]
    rng: random.Random
    train_set: Any
    val_set: Any
    device: torch.device
    ddp: Dist


def is_scene_model(name: str) -> bool:
    """Whether a preset name is one of the scene models (`scene_backbone.SCENE_PRESETS`)."""
    from .models.scene_backbone import SCENE_PRESETS

    return name in SCENE_PRESETS


def setup_run(cfg: TrainConfig, model_cfg: ObjectModelConfig | None = None) -> Run:
    """Distributed setup, model (fresh, `--init` or resumed), freezing, optimizer and the
    data caches; writes `train_config.json` on the main process."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ddp = init_distributed(device)
    if device.type == "cuda" and ddp.world > 1:
        device = torch.device("cuda", ddp.local_rank)  # one GPU per process
    out = Path(cfg.out)
    model, model_cfg, scene = _make_model(cfg, model_cfg, device, ddp.rank)
    params = [
        p
        for n, p in model.named_parameters()
        if not (cfg.freeze_backbone and n.startswith("backbone."))
    ]
    if cfg.freeze_backbone:
        model.backbone.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    resumed = load_checkpoint(out, model, opt)
    step = resumed["step"] if resumed else 0
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "train_config.json", json.dumps(asdict(cfg), indent=1) + "\n")
    train_set, val_set = _scene_sets(cfg) if scene else _object_sets(cfg, model_cfg, ddp)
    if len(train_set) == 0:
        raise ValueError(f"{cfg.data}: no finished items in the train split")
    net = wrap_ddp(model, device, cfg)
    epoch_len = max(1, len(train_set) // (cfg.batch_size * ddp.world))
    it = batches(len(train_set), cfg.batch_size, ddp.rank, ddp.world, cfg.seed, step // epoch_len)
    for _ in range(step % epoch_len):
        next(it)
    rng = random.Random(cfg.seed * 1000 + ddp.rank + step)
    return Run(model, net, params, opt, step, it, rng, train_set, val_set, device, ddp)


def _make_model(
    cfg: TrainConfig, model_cfg: Any, device: torch.device, rank: int
) -> tuple[nn.Module, Any, bool]:
    """(model on `device`, its config, whether it is a scene model): fresh, seeded per
    rank, or with `--init` (and `--init-densifier`) weights loaded."""
    scene = is_scene_model(cfg.model if model_cfg is None else model_cfg.name)
    if scene:
        from .models.scene_backbone import get_scene_config

        model_cfg = model_cfg or get_scene_config(cfg.model)
    model_cfg = model_cfg or get_model_config(cfg.model)
    if cfg.candidates:
        model_cfg = replace(model_cfg, candidates=cfg.candidates, train_candidates=cfg.candidates)
    if cfg.rig_views[1] > model_cfg.max_views:
        raise ValueError(
            f"rig_views {cfg.rig_views}: {model_cfg.name} reads at most {model_cfg.max_views} views"
        )
    torch.manual_seed(cfg.seed + rank)
    # A "dino" backbone trained from scratch starts from the hub's DINO weights (the one
    # place they are asked for); with --init they come from that file instead.
    if scene:
        from .models.gd_scene import GDSceneModel

        model = GDSceneModel(model_cfg).to(device)
    else:
        model = GDObjectModel(model_cfg, pretrained_encoder=not cfg.init).to(device)
    if cfg.init:
        state, _ = load_weights(cfg.init)
        if cfg.init_densifier:
            other, _ = load_weights(cfg.init_densifier)
            state.update({k: v for k, v in other.items() if k.startswith("densifier.")})
        load_init_state(model, state, cfg.init)
    elif cfg.init_densifier:
        raise ValueError("init_densifier needs init (the backbone to pair it with)")
    return model, model_cfg, scene


def _object_sets(cfg: TrainConfig, model_cfg: Any, ddp: Dist) -> tuple[Any, Any]:
    """Train and val splits of a props dataset, decoded once into caches (`data.cache`)."""
    from .data.cache import CachedProps, build_cache, cache_dir

    # Views are decoded at the largest of the model's input size, its detail size and the
    # render size: the model resizes them for its parts, the loss scores them at the render
    # size and validation at full size.
    size = max(model_cfg.image_size, model_cfg.detail_size, cfg.render_size)
    # The main process decodes the caches; the others wait and then only read them.
    if ddp.main:
        build_cache(cfg.data, "train", size, progress=True)
        with contextlib.suppress(ValueError):
            build_cache(cfg.data, "val", size, progress=False)
    if ddp.world > 1:
        dist.barrier()
    train_set = CachedProps(cache_dir(cfg.data, "train", size))
    val_set = None
    if (cache_dir(cfg.data, "val", size) / "index.json").is_file():
        val_set = CachedProps(cache_dir(cfg.data, "val", size))
    return train_set, val_set


def _scene_sets(cfg: TrainConfig) -> tuple[Any, Any]:
    """Train and val splits of a scenes dataset, read from disk each step (a scene's
    PNGs decode in tens of milliseconds; no cache). val is None when empty."""
    from .data.scenes import ScenesDataset

    train_set = ScenesDataset(cfg.data, "train")
    val_set = ScenesDataset(cfg.data, "val")
    return train_set, (val_set if len(val_set) else None)


@dataclass
class StepResult:
    """What one optimizer step did, for the log."""

    terms: LossTerms
    lr: float
    grad_norm: float
    densify: bool


def train_step(run: Run, cfg: TrainConfig, autocast: Any) -> StepResult:
    """One optimizer step on the next batch (a non-finite gradient skips the update)."""
    run.model.train()
    lr = learning_rate(run.step, cfg)
    for group in run.opt.param_groups:
        group["lr"] = lr
    items = [run.train_set[i] for i in next(run.batches)]
    densify = cfg.densify and run.step >= cfg.densify_from
    drop = densify and run.rng.random() < cfg.feature_dropout
    with autocast if autocast is not None else contextlib.nullcontext():
        if is_scene_model(run.model.name):
            from .train_scene import scene_loss

            terms = scene_loss(run.net, items, cfg, densify, drop, run.rng)
        else:
            samples = training_views(items, cfg, run.rng)
            terms = compute_loss(run.net, samples, cfg, densify, drop)
    run.opt.zero_grad(set_to_none=True)
    terms.total.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip))
    if not math.isfinite(grad_norm):
        run.opt.zero_grad(set_to_none=True)  # skip a non-finite step rather than poison Adam
    else:
        run.opt.step()
    run.step += 1
    return StepResult(terms, lr, grad_norm, densify)


def train_record(step: int, result: StepResult, seconds_per_step: float) -> dict[str, Any]:
    """The metrics.jsonl line of a training step."""
    terms = result.terms
    return {
        "step": step, "split": "train", "loss": float(terms.total.detach()),
        "loss_coarse": terms.coarse, "loss_fine": terms.fine,
        "psnr_coarse": terms.psnr_coarse, "psnr_fine": terms.psnr_fine,
        "lr": result.lr, "grad_norm": result.grad_norm, "coarse_count": terms.coarse_count,
        "fine_count": terms.fine_count, "loss_depth": terms.depth, "densify": result.densify,
        "seconds_per_step": seconds_per_step, "time": time.time(),
    }  # fmt: skip


def train(
    cfg: TrainConfig, model_cfg: ObjectModelConfig | None = None, max_steps: int | None = None
) -> Path:
    """Run (or resume) training; returns the run folder. `max_steps` stops early (this
    call only), e.g. to train in sessions."""
    run = setup_run(cfg, model_cfg)
    out, main = Path(cfg.out), run.ddp.main
    log = (out / "metrics.jsonl").open("a") if main else None
    bar = None
    if main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=run.step, desc="train", unit="step",
                   dynamic_ncols=True)  # fmt: skip
    stop = cfg.steps if max_steps is None else min(cfg.steps, run.step + max_steps)
    autocast = None
    if run.device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    t_last = time.perf_counter()
    while run.step < stop:
        result = train_step(run, cfg, autocast)
        step, terms = run.step, result.terms
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{float(terms.total.detach()):.4f}",
                psnr_c=f"{terms.psnr_coarse:.2f}",
                psnr_f=f"{terms.psnr_fine:.2f}",
            )
        if log is not None and (step % cfg.log_every == 0 or step == stop):
            now = time.perf_counter()
            log.write(json.dumps(train_record(step, result, (now - t_last) / cfg.log_every)))
            log.write("\n")
            log.flush()
            t_last = now
        if main and run.val_set is not None and (step % cfg.val_every == 0 or step == cfg.steps):
            record = validate(run.model, run.val_set, cfg, result.densify, step)
            log.write(json.dumps(record) + "\n")
            log.flush()
        if main and (step % cfg.checkpoint_every == 0 or step == stop):
            save_checkpoint(out, run.model, run.opt, step, cfg)
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
        try:
            from .plots import plot_training_curves

            plot_training_curves(out / "metrics.jsonl", out / "curves.png")
        except ImportError:
            pass
    if run.ddp.world > 1:
        dist.barrier()
    return out


@torch.no_grad()
def validate(
    model: GDObjectModel, val_set: Any, cfg: TrainConfig, densify: bool, step: int
) -> dict[str, Any]:
    """Mean coarse / fine PSNR on held-out target views of the first `val_objects`."""
    model.eval()
    psnr_coarse, psnr_fine, n = 0.0, 0.0, 0
    for i in range(min(cfg.val_objects, len(val_set))):
        sample = val_set[i]
        if is_scene_model(model.name):
            from .train_scene import scene_scores

            scores = scene_scores(model, sample, densify)
            coarse, fine = scores["psnr_coarse"], scores["psnr_fine"]
        else:
            coarse, fine = compute_terms_eval(model, sample, densify)  # the mask enables grad
        psnr_coarse += coarse
        psnr_fine += fine
        n += 1
    model.train()
    mean_fine = psnr_fine / n if math.isfinite(psnr_fine) else None  # strict JSON has no NaN
    return {"step": step, "split": "val", "psnr_coarse": psnr_coarse / n, "psnr_fine": mean_fine,
            "objects": n, "time": time.time()}  # fmt: skip


def compute_terms_eval(
    model: GDObjectModel, sample: dict[str, Any], densify: bool
) -> tuple[float, float]:
    """(coarse PSNR, fine PSNR) of one held-out object's target views (fine NaN without
    densification)."""
    device = next(model.parameters()).device
    inp, in_cams, tgt, tgt_cams = model_space(sample, device)
    a_in, _ = loss_alphas(sample, device)
    out = model(inp[None], [in_cams], densify=densify, budget=model.cfg.candidates,
                alphas=a_in[None])[0]  # fmt: skip
    bg = torch.tensor(WHITE, device=device)
    coarse = render(out.coarse.detach(), tgt_cams, background=bg).colors
    psnr_coarse = float(psnr(coarse, tgt).mean())
    if out.densified is None:
        return psnr_coarse, float("nan")
    fine = render(out.densified.merged.gaussians.detach(), tgt_cams, background=bg).colors
    return psnr_coarse, float(psnr(fine, tgt).mean())
