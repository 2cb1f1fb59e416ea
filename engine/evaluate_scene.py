"""Scoring the scene model on held-out generated scenes, beside a non-learned baseline.

    gd evaluate scene-small datasets/scenes256_s1 --split test --out docs/eval/scene-small

For every scene of the split: `model.reconstruct` from its two context views (the scene's
own near/far), then the coarse and the densified Gaussians are each rendered on black into
the scene's target views (between and slightly beyond the context cameras) and scored on
their own (PSNR, SSIM, LPIPS when installed); the coarse Gaussians' depth is rendered into
the context views and compared with the depth Blender rendered there. The baseline needs no
learning: classic plane-sweep stereo (`plane_sweep_baseline`), one Gaussian per pixel at
the depth where the views' normalised colour patches agree best, the pixel's own colour.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .atomic import write_atomic
from .cameras import Cameras
from .evaluate import config_dict, image_metrics, machine_description, nanmean
from .gaussians import Gaussians, rgb_to_sh_dc
from .images import resize_views, save_png
from .models.gd_scene import BLACK, GDSceneModel
from .models.scene_backbone import depth_candidates, plane_sweep_cost, unproject_depths
from .render import render

PATCH = 5
"""Side of the colour patches the baseline's plane sweep compares."""


# ---------------------------------------------------------------------------- baseline
def plane_sweep_baseline(
    images: Tensor, cameras: Cameras, near: float, far: float, depths: int = 64
) -> tuple[Gaussians, Tensor]:
    """Non-learned per-pixel Gaussians: winner-take-all plane-sweep stereo.

    Each pixel's PATCH x PATCH colour patch, made zero-mean and unit-length (so the score
    is normalised cross-correlation), is compared along D planes uniform in inverse depth
    with the patches the other views show there (`plane_sweep_cost`); the best plane is
    the pixel's depth. Gaussians sit there, opaque, one pixel footprint wide, with the
    pixel's colour.

    Args:
        images: (V, H, W, 3) context views in [0, 1]; cameras: V cameras of W x H.
        near, far: the depth range swept.
    Returns:
        Gaussians (V·H·W, ordered view, row, column) and their depths (V, H, W).
    """
    v, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2)
    patches = F.unfold(x, PATCH, padding=PATCH // 2).reshape(v, 3 * PATCH * PATCH, h, w)
    patches = patches - patches.mean(1, keepdim=True)
    patches = patches / patches.norm(dim=1, keepdim=True).clamp_min(1e-3)
    near_t = torch.tensor([near], dtype=images.dtype)
    far_t = torch.tensor([far], dtype=images.dtype)
    planes = depth_candidates(near_t, far_t, depths)  # (1, D)
    # The cost divides by sqrt(C); undo it so the score is the correlation itself.
    cost = plane_sweep_cost(patches[None], [cameras], planes)[0] * math.sqrt(patches.shape[1])
    depth = planes[0][cost.argmax(1)]  # (V, H, W)
    means = unproject_depths(depth, cameras).reshape(-1, 3)
    focal = 0.5 * (cameras.fx + cameras.fy)
    footprint = (depth / focal[:, None, None]).reshape(-1, 1).expand(-1, 3)
    n = means.shape[0]
    quats = torch.zeros(n, 4, dtype=images.dtype)
    quats[:, 0] = 1.0
    sh = rgb_to_sh_dc(images.reshape(-1, 3))[:, None]
    opacity = torch.full((n,), 4.0, dtype=images.dtype)  # sigmoid 0.98
    return Gaussians.unchecked(means, footprint.log(), quats, opacity, sh), depth


# ---------------------------------------------------------------------------- scoring
def depth_scores(rendered: Tensor, alphas: Tensor, true: Tensor) -> dict[str, float | None]:
    """Depth of a render against the true depth where both have a surface.

    Args:
        rendered: (V, H, W) expected depth; alphas: (V, H, W); true: (V, H, W), 0: none.
    Returns:
        abs_rel (mean |d - d*| / d*), abs_m (mean |d - d*|) and delta1 (share of pixels
        with max(d/d*, d*/d) < 1.25), over pixels with alpha > 0.5 and a true surface.
    """
    ok = (true > 0) & (alphas > 0.5) & (rendered > 0)
    if not bool(ok.any()):
        return {"abs_rel": None, "abs_m": None, "delta1": None}
    d, t = rendered[ok], true[ok]
    ratio = torch.maximum(d / t, t / d)
    return {
        "abs_rel": float(((d - t).abs() / t).mean()),
        "abs_m": float((d - t).abs().mean()),
        "delta1": float((ratio < 1.25).float().mean()),
    }


@dataclass
class SceneEval:
    """One scene's scores: per method ("baseline", "coarse", "fine") the mean of each
    image metric over the target views, depth scores of the coarse and baseline
    Gaussians in the context views, counts and seconds."""

    index: int
    images: dict[str, dict[str, float | None]] = field(default_factory=dict)
    depth: dict[str, dict[str, float | None]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def psnr(self, method: str) -> float | None:
        return self.images.get(method, {}).get("psnr")


def evaluate_scene(
    model: GDSceneModel, sample: dict[str, Any], baseline: bool = True
) -> tuple[SceneEval, dict[str, Tensor]]:
    """Score one scene (module docstring); also returns the renders for the strips."""
    size = model.view_size  # what the model reads at most: scores at that resolution
    ctx, ctx_cams = sample["context_images"], sample["context_cameras"]
    near, far = float(sample["near"]), float(sample["far"])
    t0 = time.perf_counter()
    rec = model.reconstruct(ctx, ctx_cams, near=near, far=far)
    seconds = time.perf_counter() - t0
    targets, t_cams = resize_views(sample["target_images"], sample["target_cameras"], size)
    small, small_cams = resize_views(ctx, ctx_cams, size)
    true_depth = F.interpolate(sample["context_depths"][:, None], size=(size, size),
                               mode="nearest-exact")[:, 0]  # fmt: skip
    result = SceneEval(int(sample.get("index", -1)), counts=dict(rec.stats["counts"]),
                       seconds=seconds)  # fmt: skip
    sets = {"coarse": rec.coarse, "fine": rec.gaussians}
    if baseline:
        sets["baseline"], _ = plane_sweep_baseline(small, small_cams, near, far)
    renders = {"gt": targets}
    mask = torch.ones_like(targets[..., 0], dtype=torch.bool)
    with torch.no_grad():
        for name, gaussians in sets.items():
            _score_set(result, renders, name, gaussians, targets, t_cams, mask, small_cams,
                       true_depth)  # fmt: skip
    return result, renders


def _score_set(
    result: SceneEval,
    renders: dict[str, Tensor],
    name: str,
    gaussians: Gaussians,
    targets: Tensor,
    t_cams: Cameras,
    mask: Tensor,
    small_cams: Cameras,
    true_depth: Tensor,
) -> None:
    """Render one Gaussian set into the targets (scores, strip) and, unless it is the
    fine set, into the context views (depth scores)."""
    drawn = render(gaussians, t_cams, background=BLACK, depth=False).colors.clamp(0, 1)
    renders[name] = drawn
    per_view = image_metrics(drawn, targets, mask)
    result.images[name] = {k: nanmean(v) for k, v in per_view.items() if k != "psnr_object"}
    if name != "fine":
        ctx_render = render(gaussians, small_cams, background=BLACK)
        result.depth[name] = depth_scores(ctx_render.depths, ctx_render.alphas, true_depth)


def summarize_scenes(scenes: list[SceneEval]) -> dict[str, Any]:
    """Means over scenes, fine − coarse, the share of scenes where fine ≥ coarse + 0.5 dB."""

    def mean(values: list[float | None]) -> float | None:
        return nanmean(values)

    methods = [m for m in ("baseline", "coarse", "fine") if m in scenes[0].images]
    out: dict[str, Any] = {"scenes": len(scenes)}
    for m in methods:
        keys = scenes[0].images[m].keys()
        out[m] = {k: mean([s.images[m].get(k) for s in scenes]) for k in keys}
    gains = [s.psnr("fine") - s.psnr("coarse") for s in scenes]
    out["fine_minus_coarse"] = sum(gains) / len(gains)
    out["fine_at_least_coarse_plus_0_5"] = sum(g >= 0.5 for g in gains) / len(gains)
    out["fine_at_least_coarse"] = sum(g >= 0.0 for g in gains) / len(gains)
    if "baseline" in methods:
        out["fine_minus_baseline"] = mean([s.psnr("fine") - s.psnr("baseline") for s in scenes])
    out["depth"] = {
        m: {k: mean([s.depth[m].get(k) for s in scenes]) for k in ("abs_rel", "abs_m", "delta1")}
        for m in scenes[0].depth
    }
    out["seconds_per_scene"] = sum(s.seconds for s in scenes) / len(scenes)
    counts = scenes[0].counts.keys()
    out["counts"] = {k: sum(s.counts.get(k, 0) for s in scenes) // len(scenes) for k in counts}
    return out


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_scene_report(summary: dict[str, Any], scenes: list[SceneEval], meta: dict) -> str:
    """report.md: what was run, the summary table, depth, and every scene's row."""
    lines = [
        "# Scene model evaluation", "",
        f"- model: {meta.get('model')} (weights {meta.get('weights')}, sha256 "
        f"{meta.get('weights_sha256')})",
        f"- data: {meta.get('data')}, split {meta.get('split')}, {summary['scenes']} scenes, "
        "2 context views each, every target view scored at the model's view size",
        f"- command: `{meta.get('command')}`",
        "- machine: " + ", ".join(f"{k} {v}" for k, v in (meta.get("machine") or {}).items()),
        f"- date: {meta.get('date')}", "",
        "The fine render's own scores; coarse is the same reconstruction before densification. "
        "The baseline needs no learning: plane-sweep stereo (normalised cross-correlation of "
        f"{PATCH}x{PATCH} colour patches over 64 planes, winner-take-all), one opaque "
        "Gaussian a pixel in the pixel's colour.", "",
        "| | PSNR (dB) | SSIM | LPIPS |", "|---|---:|---:|---:|",
    ]  # fmt: skip
    for m, label in (("baseline", "plane-sweep baseline"), ("coarse", "coarse"),
                     ("fine", "**fine**")):  # fmt: skip
        if m in summary:
            s = summary[m]
            lines.append(f"| {label} | {_f(s.get('psnr'))} | {_f(s.get('ssim'), 3)} | "
                         f"{_f(s.get('lpips'), 3)} |")  # fmt: skip
    lines += [
        "",
        f"- fine − coarse: {summary['fine_minus_coarse']:+.2f} dB on average; scenes with "
        f"fine ≥ coarse + 0.5 dB: {100 * summary['fine_at_least_coarse_plus_0_5']:.0f} %; "
        f"fine ≥ coarse: {100 * summary['fine_at_least_coarse']:.0f} %",
    ]
    if "fine_minus_baseline" in summary:
        lines.append(f"- fine − baseline: {summary['fine_minus_baseline']:+.2f} dB")
    lines += [
        f"- seconds per scene (reconstruct with densification): "
        f"{summary['seconds_per_scene']:.2f}",
        "- Gaussians per scene (mean): "
        + ", ".join(f"{k} {v:,}" for k, v in summary["counts"].items()),
        "", "## Depth in the context views", "",
        "Expected depth of the rendered Gaussians against Blender's depth, where both show a "
        "surface (alpha > 0.5).", "",
        "| | AbsRel | mean abs (m) | δ < 1.25 |", "|---|---:|---:|---:|",
    ]  # fmt: skip
    for m, d in summary["depth"].items():
        lines.append(f"| {m} | {_f(d['abs_rel'], 3)} | {_f(d['abs_m'], 3)} | "
                     f"{_f(d['delta1'], 3)} |")  # fmt: skip
    lines += ["", "## Scenes", "", "| scene | baseline | coarse | fine | fine − coarse |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for s in scenes:
        gain = s.psnr("fine") - s.psnr("coarse")
        lines.append(f"| {s.index:06d} | {_f(s.psnr('baseline'))} | {_f(s.psnr('coarse'))} | "
                     f"{_f(s.psnr('fine'))} | {gain:+.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def evaluate_scenes(
    model: GDSceneModel,
    dataset: Any,
    out_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    image_scenes: int = 4,
    baseline: bool = True,
    meta: dict[str, Any] | None = None,
    progress: Callable[[int, int, SceneEval], None] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on a `ScenesDataset`; writes report.md, metrics.json and
    strips (targets: GT | baseline | coarse | fine) of the first `image_scenes` scenes."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("no finished scenes in this split")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    scenes: list[SceneEval] = []
    strips = []
    for i in range(n):
        sample = dataset[i]
        result, renders = evaluate_scene(model, sample, baseline)
        scenes.append(result)
        if i < image_scenes:
            order = [k for k in ("gt", "baseline", "coarse", "fine") if k in renders]
            rows = [torch.cat(list(renders[k][:3]), 1) for k in order]
            path = out / f"scene_{result.index:06d}.png"
            save_png(torch.cat(rows, 0), path)
            strips.append(path.name)
        if progress is not None:
            progress(i + 1, n, result)
    summary = summarize_scenes(scenes)
    device = model.device
    meta = {
        "model": model.name,
        "weights": str(model.weights_path) if model.weights_path else "random init",
        "weights_sha256": model.weights_sha256,
        "config": config_dict(model.cfg),
        "machine": machine_description(device),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **(meta or {}),
    }
    data = {"summary": summary, "meta": meta, "strips": strips,
            "scenes": [s.__dict__ for s in scenes]}  # fmt: skip
    write_atomic(out / "metrics.json", json.dumps(data, indent=1) + "\n")
    report = render_scene_report(summary, scenes, meta)
    report += "\n" + "\n".join(f"![{p}]({p})" for p in strips) + "\n"
    report += "\nEach strip: rows GT, baseline, coarse, fine; three target views.\n"
    write_atomic(out / "report.md", report)
    return data
