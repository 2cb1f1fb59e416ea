"""Training the scene model: its loss and validation (the loop is `train.py`'s).

    gd train --config scene-small --data datasets/scenes256_s1 --out runs/scene-small \
        --input-size 128 --target-views 3 --depth-weight 0.1

Per step and scene: the context views (resampled to `input_size`) give per-pixel
Gaussians, which are rendered on black into `target_views` random target views of the
scene (between and slightly beyond the context cameras); the loss is MSE + w·(1 − MS-SSIM)
on the coarse and on the densified render, plus, while the data has depth, an L1 term on
the coarse Gaussians' inverse depth in the context views (normalised by the scene's
inverse-depth range, so near and far rooms weigh alike). Depth supervision is a training
aid only: inference reads nothing but the views.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cameras import Cameras
from .images import resize_views
from .metrics import psnr
from .models.gd_scene import BLACK, GDSceneModel
from .render import render
from .train import LossTerms, new_stats, output_losses
from .train_config import TrainConfig


def _resized_depths(depths: Tensor, size: int) -> Tensor:
    """(V, H, W) depths at size² by nearest sampling (an edge pixel keeps one surface)."""
    if depths.shape[-1] == size and depths.shape[-2] == size:
        return depths
    return F.interpolate(depths[:, None], size=(size, size), mode="nearest-exact")[:, 0]


def scene_views(
    sample: dict[str, Any], cfg: TrainConfig, input_size: int, rng: random.Random | None
) -> dict[str, Any]:
    """One scene's step views: context views and depths at `input_size`, `target_views`
    random targets (all of them, in order, without `rng`) at the render size, and the
    depth range, widened at random by up to `range_jitter` (so the model does not learn
    that the true surfaces touch near and far)."""
    ctx, ctx_cams = resize_views(sample["context_images"], sample["context_cameras"], input_size)
    t_images, t_cams = sample["target_images"], sample["target_cameras"]
    if rng is not None:
        idx = sorted(rng.sample(range(len(t_cams)), min(cfg.target_views, len(t_cams))))
        t_images, t_cams = t_images[idx], t_cams[idx]
    size = cfg.render_size or input_size
    t_images, t_cams = resize_views(t_images, t_cams, size)
    near, far = float(sample["near"]), float(sample["far"])
    if rng is not None and cfg.range_jitter:
        near *= 1.0 - cfg.range_jitter * rng.random()
        far *= 1.0 + cfg.range_jitter * rng.random()
    return {
        "images": ctx, "cameras": ctx_cams,
        "depths": _resized_depths(sample["context_depths"], input_size),
        "target_images": t_images, "target_cameras": t_cams,
        "near": near, "far": far, "true_near": float(sample["near"]),
        "true_far": float(sample["far"]),
    }  # fmt: skip


def inverse_depth_error(pred: Tensor, true: Tensor, near: float, far: float) -> Tensor:
    """Mean |1/pred − 1/true| over pixels with a surface (true > 0), in units of the
    scene's inverse-depth range 1/near − 1/far. pred, true: (V, H, W)."""
    hit = true > 0
    if not bool(hit.any()):
        return pred.new_zeros(())
    span = 1.0 / near - 1.0 / far
    return ((1.0 / pred[hit] - 1.0 / true[hit]).abs() / span).mean()


def scene_loss(
    model: nn.Module,
    samples: list[dict[str, Any]],
    cfg: TrainConfig,
    densify: bool,
    drop_features: bool,
    rng: random.Random,
) -> LossTerms:
    """Mean loss over the scenes of a (per-process) batch (module docstring)."""
    core: GDSceneModel = model.module if hasattr(model, "module") else model
    device = next(core.parameters()).device
    size = cfg.input_size or core.image_size
    views = [scene_views(s, cfg, size, rng) for s in samples]
    images = torch.stack([v["images"] for v in views]).to(device)
    cams = [v["cameras"].to(device=device) for v in views]
    near = torch.tensor([v["near"] for v in views], device=device)
    far = torch.tensor([v["far"] for v in views], device=device)
    detail = None
    if core.detail_size != size:
        sized = [resize_views(s["context_images"], s["context_cameras"], core.detail_size)
                 for s in samples]  # fmt: skip
        detail = (torch.stack([im for im, _ in sized]).to(device),
                  [c.to(device=device) for _, c in sized])  # fmt: skip
    outs = model(images, cams, near, far, densify=densify, drop_backbone_features=drop_features,
                 detail=detail)  # fmt: skip
    total = images.new_zeros(())
    stats = new_stats()
    bg = torch.tensor(BLACK, device=device)
    for view, out in zip(views, outs, strict=True):
        gt = view["target_images"].to(device)
        t_cams = view["target_cameras"].to(device=device)
        total = total + output_losses(out, t_cams, gt, bg, cfg, stats)
        if cfg.depth_weight and out.depths.requires_grad:
            err = inverse_depth_error(
                out.depths, view["depths"].to(device), view["true_near"], view["true_far"]
            )
            total = total + cfg.depth_weight * err
            stats["depth"] += float(err.detach())
    return LossTerms.mean(total, stats, len(samples))


@torch.no_grad()
def scene_scores(
    model: GDSceneModel, sample: dict[str, Any], densify: bool, cameras: Cameras | None = None
) -> dict[str, float]:
    """Coarse and fine PSNR of one held-out scene's target views at the model's image size
    (fine NaN without densification) and the coarse Gaussians' depth error in the context
    views (`inverse_depth_error`, and the mean absolute depth error in metres)."""
    device = model.device
    size = model.image_size
    view = scene_views(sample, TrainConfig(render_size=model.view_size), size, None)
    images = view["images"].to(device)[None]
    cams = [view["cameras"].to(device=device)]
    near = torch.tensor([view["near"]], device=device)
    far = torch.tensor([view["far"]], device=device)
    d_images, d_cams = resize_views(sample["context_images"], sample["context_cameras"],
                                    model.detail_size)  # fmt: skip
    detail = (d_images.to(device)[None], [d_cams.to(device=device)])
    with torch.enable_grad():  # the gradient mask differentiates the coarse render
        out = model(images, cams, near, far, densify=densify, budget=model.cfg.candidates,
                    detail=detail)[0]  # fmt: skip
    gt = view["target_images"].to(device)
    t_cams = view["target_cameras"].to(device=device)
    bg = torch.tensor(BLACK, device=device)
    coarse = render(out.coarse.detach(), t_cams, background=bg).colors
    scores = {"psnr_coarse": float(psnr(coarse, gt).mean()), "psnr_fine": math.nan}
    if out.densified is not None:
        fine = render(out.densified.merged.gaussians.detach(), t_cams, background=bg).colors
        scores["psnr_fine"] = float(psnr(fine, gt).mean())
    true = view["depths"].to(device)
    hit = true > 0
    pred = out.depths.detach()
    scores["inverse_depth_error"] = float(
        inverse_depth_error(pred, true, view["true_near"], view["true_far"])
    )
    scores["depth_error_m"] = float((pred[hit] - true[hit]).abs().mean()) if hit.any() else 0.0
    return scores
