"""Honest evaluation of an object model on a props dataset (`gd evaluate`).

For every object of a split the model reconstructs from the input views; the coarse set
and the final (densified) set are each rendered into the held-out TARGET cameras and
scored on their own (DESIGN §2: never "best of" as a headline; the official protocol's
best-of figure is reported once, labelled). Written to the output folder:

    report.md          summary (coarse vs fine, gain, how often fine >= coarse), Gaussian
                       counts, stage times, per-object table, definitions, provenance
    metrics.json       the same, machine-readable, per object and per view
    images/            GT | visual hull | coarse | fine strips for the first target views
                       of the first objects
    hist_log_scale.png, hist_opacity.png
                       coarse vs selected candidates vs generated fine Gaussians (Fig. 8)

Definitions (also written into the report):
- Full-image PSNR/SSIM/LPIPS on the target views at the dataset's native resolution,
  rendered over a white background like the ground truth (DESIGN §4).
- Object-pixel PSNR: PSNR over the pixels of `object_mask`: ground-truth alpha > 0.5,
  dilated by r = max(1, round(H / 128)) pixels (2 px at 256²). It depends on the ground
  truth only, so coarse and fine (and different models or checkpoints) are scored on
  the same pixels; floaters away from the object show in full-image PSNR instead.
- Per object: mean over its target views; summary: mean over objects.
- Visual hull: a non-learned reference (`engine.baselines.visual_hull`) made from the same
  input views and scored on the same target views, so every report states the model's
  margin over it.
- `views`: how many input views the model reads (`plan_views`). Fewer than the dataset's
  input ring: an evenly spaced subset of the ring. More: the ring plus the LAST target
  views, which are then never scored; the scored targets are the first ones, so
  `views=8, targets=4` and `views=4, targets=4` score the very same views.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .atomic import atomic_open, write_atomic
from .baselines.visual_hull import visual_hull_gaussians
from .cameras import Cameras
from .data.datasets import PropsDataset
from .data.layout import SPLITS, read_manifest, write_json_atomic
from .gaussians import Gaussians
from .hashing import sha256_file
from .images import resize_views, straight_rgba
from .metrics import lpips_or_none, psnr, ssim
from .plots import histogram_stats, image_strip, plot_histograms
from .render import render

METRICS = ("psnr", "psnr_object", "ssim", "lpips")
METRIC_TITLES = {
    "psnr": "PSNR, full image (dB) ↑",
    "psnr_object": "PSNR, object pixels (dB) ↑",
    "ssim": "SSIM ↑",
    "lpips": "LPIPS (AlexNet) ↓",
}
MASK_ALPHA = 0.5
# Cap on values kept per object for the histograms (a fine set can hold ~100k Gaussians).
HIST_SAMPLES_PER_OBJECT = 20_000


# ---------------------------------------------------------------------------- views
@dataclass(frozen=True)
class ViewPlan:
    """Which of an object's views the model reads and which are scored.

    Attributes:
        inputs: indices into the object's input views (its ring) given to the model.
        borrowed: indices of target views given to the model as extra inputs; never scored.
        scored: indices of the target views scored.
    """

    inputs: tuple[int, ...]
    borrowed: tuple[int, ...]
    scored: tuple[int, ...]

    @property
    def views(self) -> int:
        return len(self.inputs) + len(self.borrowed)

    def describe(self) -> str:
        """One line for the report."""
        text = f"{self.views} input view(s): input {_ranges(self.inputs)}"
        if self.borrowed:
            text += f" + target {_ranges(self.borrowed)} (borrowed as inputs, never scored)"
        return text + f"; target {_ranges(self.scored)} scored"

    def to_json(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "borrowed_targets": list(self.borrowed),
                "scored_targets": list(self.scored)}  # fmt: skip


def _ranges(indices: Sequence[int]) -> str:
    if not indices:
        return "none"
    if list(indices) == list(range(indices[0], indices[-1] + 1)) and len(indices) > 2:
        return f"{indices[0]}–{indices[-1]}"
    return ", ".join(str(i) for i in indices)


def plan_views(
    n_input: int,
    n_target: int,
    views: int | None = None,
    targets: int | None = None,
    max_views: int | None = None,
) -> ViewPlan:
    """Choose the input views and the scored target views of an object.

    Args:
        n_input, n_target: how many input (ring) and target views the object has.
        views: input views for the model (None: the whole ring). At most `n_input`: an
            evenly spaced subset of the ring (the generator renders it in azimuth order).
            More: the ring plus the last `views - n_input` target views.
        targets: score only the first `targets` of the target views not borrowed
            (None: all of them).
        max_views: the model's limit, if it has one.
    Raises:
        ValueError: views outside 1..max_views, too few target views left to score.
    """
    if views is None:
        views = n_input
    if views < 1:
        raise ValueError(f"--views must be at least 1, got {views}")
    if max_views is not None and views > max_views:
        raise ValueError(f"the model reads 1 to {max_views} views, got --views {views}")
    if views <= n_input:
        inputs = tuple(sorted({(i * n_input) // views for i in range(views)}))
        borrowed: tuple[int, ...] = ()
    else:
        inputs = tuple(range(n_input))
        extra = views - n_input
        if extra >= n_target:
            raise ValueError(
                f"--views {views}: the objects have {n_input} input views, and borrowing "
                f"{extra} of their {n_target} target views would leave none to score"
            )
        borrowed = tuple(range(n_target - extra, n_target))
    left = n_target - len(borrowed)
    if targets is not None and not 1 <= targets <= left:
        raise ValueError(
            f"--targets {targets}: {left} target view(s) are left to score"
            + (f" (target {_ranges(borrowed)} are inputs with --views {views})" if borrowed
               else "")
        )  # fmt: skip
    scored = tuple(range(left if targets is None else targets))
    return ViewPlan(inputs, borrowed, scored)


def apply_plan(item: dict[str, Any], plan: ViewPlan) -> dict[str, Any]:
    """A `PropsDataset` item with the plan's inputs as `input_*` and only the scored
    targets as `target_*` (images, alphas and cameras selected alike)."""
    out = dict(item)
    ins, bor, sc = list(plan.inputs), list(plan.borrowed), list(plan.scored)
    for key in ("images", "alphas"):
        out[f"input_{key}"] = torch.cat([item[f"input_{key}"][ins], item[f"target_{key}"][bor]])
        out[f"target_{key}"] = item[f"target_{key}"][sc]
    in_cams, tgt_cams = item["input_cameras"], item["target_cameras"]
    out["input_cameras"] = Cameras.cat([in_cams[ins], tgt_cams[bor]]) if bor else in_cams[ins]
    out["target_cameras"] = tgt_cams[sc]
    return out


# ---------------------------------------------------------------------------- pieces
def object_mask(alphas: Tensor, radius: int | None = None) -> Tensor:
    """Object pixels of target views: ground-truth alpha > 0.5, dilated.

    Args:
        alphas: (T, H, W) ground-truth coverage in [0, 1].
        radius: dilation in pixels (a (2r+1)² square); default max(1, round(H / 128)),
            2 px at 256², so silhouette errors (edges a little off) count as object.
    Returns:
        (T, H, W) bool.
    """
    if radius is None:
        radius = max(1, round(alphas.shape[-2] / 128))
    mask = (alphas > MASK_ALPHA).float()[:, None]
    if radius > 0:
        mask = F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)
    return mask[:, 0] > 0


def image_metrics(pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, list[float | None]]:
    """Per-view scores of rendered views.

    Args:
        pred, target: (T, H, W, 3) in [0, 1]. mask: (T, H, W) object pixels.
    Returns:
        metric name -> T values ("lpips" only when LPIPS is available). NaN (an empty
        mask) becomes None.
    """
    pred = pred.clamp(0, 1)
    out: dict[str, Tensor | None] = {
        "psnr": psnr(pred, target),
        "psnr_object": psnr(pred, target, mask),
        "ssim": ssim(pred, target),
        "lpips": lpips_or_none(pred, target),
    }
    return {k: _finite_list(v) for k, v in out.items() if v is not None}


def _finite_list(values: Tensor) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in values.detach().cpu()]


def nanmean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values (None and NaN skipped), None when there are none."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def machine_description(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _subsample(values: Tensor, limit: int, seed: int) -> Tensor:
    values = values.detach().float().cpu().reshape(-1)
    if values.numel() <= limit:
        return values
    g = torch.Generator().manual_seed(seed)
    return values[torch.randperm(values.numel(), generator=g)[:limit]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- one object
@dataclass
class ObjectEval:
    """Scores of one object.

    Attributes:
        index: the object's number in the dataset.
        coarse, fine: metric -> per-view values (T,) for the coarse and the final set.
        white: metric -> per-view values of an all-white image (a floor to read against).
        hull: metric -> per-view values of the visual-hull splat (empty when not made).
        counts: Gaussian counts. seconds: per stage (model's stats plus wall times).
        renders: (T, H, W, 3) ground truth, coarse and fine renders (CPU) for the strips.
        hist: series name -> sampled log-scales / opacities for the histograms.
    """

    index: int
    views: int
    coarse: dict[str, list[float | None]]
    fine: dict[str, list[float | None]]
    white: dict[str, list[float | None]]
    counts: dict[str, int]
    seconds: dict[str, float]
    hull: dict[str, list[float | None]] = field(default_factory=dict)
    backend: str = ""
    renders: dict[str, Tensor] = field(default_factory=dict, repr=False)
    hist: dict[str, dict[str, Tensor]] = field(default_factory=dict, repr=False)

    def mean(self, which: str, metric: str) -> float | None:
        return nanmean(getattr(self, which).get(metric, []))

    def to_json(self) -> dict[str, Any]:
        """Per-object summary and per-view values."""
        return {
            "index": self.index,
            "views": self.views,
            **{
                which: {
                    "mean": {m: self.mean(which, m) for m in getattr(self, which)},
                    "per_view": getattr(self, which),
                }
                for which in ("coarse", "fine", "white", "hull")
                if getattr(self, which)
            },
            "counts": self.counts,
            "seconds": self.seconds,
        }


def gaussian_counts(rec: Any) -> dict[str, int]:
    """coarse, final (fine total), candidates (coarse Gaussians replaced), generated (fine
    Gaussians made from them) and added (final - coarse), from a reconstruction."""
    level = rec.level.detach().cpu()
    parent = rec.parent.detach().cpu()
    generated = level > 0
    stats_counts = (rec.stats or {}).get("counts", {})
    candidates = stats_counts.get("candidates")
    if candidates is None:  # every candidate left at least one child in the merge
        candidates = int(parent[generated].unique().numel())
    return {
        "coarse": len(rec.coarse),
        "final": len(rec.gaussians),
        "candidates": int(candidates),
        "generated": int(generated.sum()),
        "added": len(rec.gaussians) - len(rec.coarse),
    }


def _hist_samples(rec: Any, seed: int) -> dict[str, dict[str, Tensor]]:
    """Log-scales (all three axes) and opacities of the coarse set, of the candidates that
    were replaced and of the generated fine Gaussians."""
    level, parent = rec.level.detach().cpu(), rec.parent.detach().cpu()
    generated = level > 0
    coarse: Gaussians = rec.coarse
    sets = {
        "coarse": coarse,
        "candidates": coarse[parent[generated].unique()],
        "fine": rec.gaussians[generated.to(rec.gaussians.device)],
    }
    lim = HIST_SAMPLES_PER_OBJECT
    return {
        name: {
            "log_scale": _subsample(g.log_scales, lim, seed),
            "opacity": _subsample(g.opacities, lim, seed),
        }
        for name, g in sets.items()
    }


def evaluate_object(
    model: Any,
    item: dict[str, Any],
    device: torch.device,
    keep_renders: bool = False,
    visual_hull: bool = True,
    budget: int | None = None,
) -> ObjectEval:
    """Reconstruct one object from its input views and score coarse and fine on its
    target views, beside the visual-hull splat of the same inputs (see the module
    docstring for the definitions).

    Args:
        model: has `reconstruct(images, cameras)` and `image_size` (the engine's object
            model or anything shaped like it); views are given at its `view_size` when
            it has one (the size it reads in full), else at `image_size`.
        item: a `PropsDataset` item (input_* and target_* images, alphas, cameras).
        device: where to render and score.
        keep_renders: keep the (T, H, W, 3) renders for the image strips.
        visual_hull: also make and score the visual-hull splat (from the input views at
            their native size, normalised as the model normalises them: from the cameras).
        budget: densification candidates K passed to `reconstruct` (None: the model's own).
    """
    size = int(getattr(model, "view_size", model.image_size))
    # RGBA, as the add-on's captures are: a model that reads silhouettes gets them, the
    # others composite on white and see the same pixels as before.
    rgba = straight_rgba(item["input_images"].float(), item["input_alphas"].float())
    images, cameras = resize_views(rgba, item["input_cameras"], size)
    _sync(device)
    t0 = time.perf_counter()
    kwargs = {} if budget is None else {"budget": budget}
    rec = model.reconstruct(images.to(device), cameras.to(device=device), **kwargs)
    _sync(device)
    wall = time.perf_counter() - t0

    targets = item["target_images"].float().to(device)
    target_cams = item["target_cameras"].to(device=device, dtype=torch.float32)
    mask = object_mask(item["target_alphas"].float().to(device))
    white = torch.ones(3, device=device)
    t0 = time.perf_counter()
    with torch.no_grad():
        coarse_out = render(rec.coarse.to(device), target_cams, background=white)
        fine_out = render(rec.gaussians.to(device), target_cams, background=white)
    coarse_img, fine_img = coarse_out.colors, fine_out.colors
    _sync(device)
    render_wall = time.perf_counter() - t0

    hull_scores: dict[str, list[float | None]] = {}
    hull_seconds: dict[str, float] = {}
    hull_count: dict[str, int] = {}
    hull_img = None
    if visual_hull:
        rgba = torch.cat([item["input_images"].float(), item["input_alphas"].float()[..., None]],
                         dim=-1)  # fmt: skip
        t0 = time.perf_counter()
        hull = visual_hull_gaussians(rgba, item["input_cameras"])
        hull_seconds["visual_hull_wall"] = time.perf_counter() - t0
        with torch.no_grad():
            hull_img = render(hull.to(device), target_cams, background=white).colors
        hull_scores = image_metrics(hull_img, targets, mask)
        hull_count = {"visual_hull": len(hull)}

    stage_seconds = {str(k): float(v) for k, v in (rec.stats or {}).get("seconds", {}).items()}
    result = ObjectEval(
        index=int(item.get("index", -1)),
        views=len(target_cams),
        coarse=image_metrics(coarse_img, targets, mask),
        fine=image_metrics(fine_img, targets, mask),
        white=image_metrics(torch.ones_like(targets), targets, mask),
        counts={**gaussian_counts(rec), **hull_count},
        seconds={
            **stage_seconds,
            "reconstruct_wall": wall,
            "render_targets_wall": render_wall,
            **hull_seconds,
        },
        hull=hull_scores,
        backend=fine_out.backend,
        hist=_hist_samples(rec, seed=int(item.get("index", 0))),
    )
    if keep_renders:
        result.renders = {"gt": targets.cpu(), "coarse": coarse_img.cpu(), "fine": fine_img.cpu()}
        if hull_img is not None:
            result.renders["hull"] = hull_img.cpu()
    return result


# ---------------------------------------------------------------------------- whole split
def summarize(objects: Sequence[ObjectEval]) -> dict[str, Any]:
    """Means over objects, gains, win rates and the labelled best-of figure."""
    metrics = [m for m in METRICS if any(m in o.coarse for o in objects)]
    out: dict[str, Any] = {"objects": len(objects), "metrics": metrics}
    for which in ("coarse", "fine", "white"):
        out[which] = {m: nanmean([o.mean(which, m) for o in objects]) for m in metrics}
    if all(o.hull for o in objects):
        out["visual_hull"] = {m: nanmean([o.mean("hull", m) for o in objects]) for m in metrics}
        # The model's margin over the non-learned reference (positive: the model is better;
        # for LPIPS, lower is better, so its margin is hull - model).
        sign = {m: -1.0 if m == "lpips" else 1.0 for m in metrics}
        out["margin_over_visual_hull"] = {
            which: {
                m: sign[m] * (out[which][m] - out["visual_hull"][m])
                if out[which][m] is not None and out["visual_hull"][m] is not None
                else None
                for m in metrics
            }
            for which in ("coarse", "fine")
        }
        beats = {}
        for m in ("psnr", "psnr_object"):
            pairs = [(o.mean("fine", m), o.mean("hull", m)) for o in objects]
            pairs = [(f, h) for f, h in pairs if f is not None and h is not None]
            beats[m] = {"fine_gt_hull": sum(f > h for f, h in pairs), "of": len(pairs)}
        out["fine_beats_visual_hull"] = beats
    out["gain"] = {
        m: (out["fine"][m] - out["coarse"][m])
        if out["fine"][m] is not None and out["coarse"][m] is not None
        else None
        for m in metrics
    }
    wins = {}
    for m in ("psnr", "psnr_object"):
        pairs = [(o.mean("fine", m), o.mean("coarse", m)) for o in objects]
        pairs = [(f, c) for f, c in pairs if f is not None and c is not None]
        wins[m] = {
            "fine_ge_coarse": sum(f >= c for f, c in pairs),
            "of": len(pairs),
            "fraction": (sum(f >= c for f, c in pairs) / len(pairs)) if pairs else None,
        }
    out["fine_ge_coarse"] = wins
    # The released GD evaluation keeps, per object, whichever render scores higher. Shown
    # only for comparison with published numbers, labelled as such (DESIGN §2).
    out["best_of_per_object_not_headline"] = {
        m: nanmean(
            [
                max(v for v in (o.mean("fine", m), o.mean("coarse", m)) if v is not None)
                if (o.mean("fine", m), o.mean("coarse", m)) != (None, None)
                else None
                for o in objects
            ]
        )
        for m in ("psnr", "psnr_object")
    }
    count_keys = list(objects[0].counts) if objects else []
    out["counts_mean"] = {k: float(np.mean([o.counts[k] for o in objects])) for k in count_keys}
    stages: list[str] = []
    for o in objects:
        stages += [s for s in o.seconds if s not in stages]
    out["seconds_mean"] = {s: nanmean([o.seconds.get(s) for o in objects]) for s in stages}
    return out


def _pooled_hist(objects: Sequence[ObjectEval]) -> dict[str, dict[str, Tensor]]:
    pooled: dict[str, dict[str, Tensor]] = {}
    for series in ("coarse", "candidates", "fine"):
        pooled[series] = {
            q: torch.cat([o.hist[series][q] for o in objects if series in o.hist] or
                         [torch.zeros(0)])
            for q in ("log_scale", "opacity")
        }  # fmt: skip
    return pooled


def write_outputs(
    out_dir: Path, objects: Sequence[ObjectEval], summary: dict, meta: dict
) -> dict[str, Any]:
    """Histograms, metrics.json and report.md (the image strips are written as objects are
    evaluated). Returns the metrics.json content."""
    pooled = _pooled_hist(objects)
    labels = {
        "coarse": "coarse (all)",
        "candidates": "candidates (replaced)",
        "fine": "fine (generated)",
    }
    hists = {
        "log_scale": dict(title="Gaussian log-scales (ln sigma, all three axes)",
                          xlabel="ln(scale) [world units]"),
        "opacity": dict(title="Gaussian opacities (sigmoid of the logit)", xlabel="opacity",
                        value_range=(0.0, 1.0)),
    }  # fmt: skip
    hist_stats = {}
    for name, options in hists.items():
        series = {labels[s]: pooled[s][name] for s in labels}
        try:
            hist_stats[name] = plot_histograms(series, out_dir / f"hist_{name}.png", **options)
        except ImportError:  # no matplotlib (an optional extra): the numbers without the plot
            hist_stats[name] = histogram_stats(series, value_range=options.get("value_range"))
    data = {
        "meta": meta,
        "definitions": DEFINITIONS,
        "summary": summary,
        "histograms": hist_stats,
        "objects": [o.to_json() for o in objects],
    }
    write_json_atomic(out_dir / "metrics.json", data)
    write_atomic(out_dir / "report.md", render_report(summary, objects, meta))
    return data


DEFINITIONS = {
    "renders": "coarse = rec.coarse, fine = rec.gaussians (coarse with the candidates "
    "replaced by their generated Gaussians); each rendered into the target cameras over "
    "white and scored on its own, never best-of",
    "clamping": "renders are clamped to [0, 1] before scoring (as when saved as images)",
    "resolution": "inputs resampled to the model's square input size (area filter, cameras "
    "scaled); targets scored at the dataset's native resolution",
    "psnr": "10·log10(1/MSE) over all pixels and channels, MSE floored at 1e-10 (100 dB)",
    "psnr_object": "PSNR over object pixels: ground-truth alpha > 0.5 dilated by "
    "max(1, round(H/128)) px; depends on the ground truth only, identical for coarse and fine",
    "ssim": "Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03, valid pixels, mean over "
    "RGB (= skimage structural_similarity gaussian_weights=True, use_sample_covariance=False)",
    "lpips": "lpips package, AlexNet, inputs in [-1, 1]; only when installed with local weights",
    "averaging": "per object: mean over its target views; summary: mean over objects",
    "white": "an all-white image scored the same way (what predicting only the background "
    "would get)",
    "visual_hull": "non-learned reference from the same input views "
    "(engine/baselines/visual_hull.py): silhouettes (alpha > 0.5) carved on a 96³ grid over "
    "the model's cube (normalised from the cameras as the model is), one isotropic Gaussian "
    "(sigma 0.4 voxel, opacity 0.95, SH DC) per surface voxel, coloured by the alpha-weighted "
    "mean of the input pixels where a z-buffer says the voxel is seen; rendered and scored "
    "like coarse and fine",
    "views": "--views N: N < ring size takes an evenly spaced subset of the input ring; "
    "N > ring size adds the last N − ring target views as inputs and never scores them "
    "(the first target views are scored; --targets T scores only the first T, so runs with "
    "different N can be scored on the same views)",
    "best_of": "per object the higher of coarse and fine (the released GD evaluation's "
    "protocol); for comparison with published numbers only",
}


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_report(summary: dict, objects: Sequence[ObjectEval], meta: dict) -> str:
    """The report's Markdown."""
    metrics = summary["metrics"]
    digits = {"psnr": 2, "psnr_object": 2, "ssim": 4, "lpips": 4}
    lines = [
        f"# Evaluation: {meta['model']['name']} on {meta['data']['path']} ({meta['split']})",
        "",
        f"- Model: `{meta['model']['name']}` — {meta['model']['weights_note']}"
        + (
            f"; K = {meta['model']['candidates']} densification candidates per object"
            if meta["model"].get("candidates")
            else ""
        ),
        (
            f"- Weights: `{meta['model']['weights_path']}`, sha256 `{meta['model']['sha256']}`"
            if meta["model"]["weights_path"]
            else "- Weights: none (randomly initialised model)"
        ),
        f"- Data: `{meta['data']['path']}`, split `{meta['split']}`, "
        f"{summary['objects']} object(s){meta['data']['limit_note']}",
        f"- Views: {meta['data']['input_views']} input views at "
        f"{meta['data']['input_size']}, read at {meta['model']['image_size']}² by the backbone "
        f"and {meta['model'].get('detail_size', meta['model']['image_size'])}² by the "
        f"densifier; {meta['data']['target_views']} target views scored at their native "
        f"{meta['data']['target_size']}"
        + (f" ({meta['data']['view_plan_text']})" if meta["data"].get("view_plan_text") else ""),
        f"- Date: {meta['date']}; machine: {meta['machine']['platform']}, "
        f"{meta['machine']['cpu_count']} CPUs, device {meta['machine']['device']}"
        + (f" ({meta['machine']['gpu']})" if "gpu" in meta["machine"] else "")
        + f", torch {meta['machine']['torch']}, {meta.get('render_backend')} rasteriser",
        f"- Command: `{meta['command']}`",
        "",
        "## Summary",
        "",
        "Coarse and fine are each scored on their own. Mean over objects; each object is the "
        "mean over its target views.",
        "",
    ]
    hull = summary.get("visual_hull")
    if hull:
        lines += ["| metric | coarse | fine | fine − coarse | visual hull | fine − hull "
                  "| all-white image |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    else:
        lines += ["| metric | coarse | fine | fine − coarse | all-white image |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
    for m in metrics:
        d = digits[m]
        row = (
            f"| {METRIC_TITLES[m]} | {_f(summary['coarse'][m], d)} | {_f(summary['fine'][m], d)}"
            f" | {_signed(summary['gain'][m], d)}"
        )
        if hull:
            row += (f" | {_f(hull[m], d)}"
                    f" | {_signed(summary['margin_over_visual_hull']['fine'][m], d)}")  # fmt: skip
        lines.append(row + f" | {_f(summary['white'][m], d)} |")
    if hull:
        margin, beats = summary["margin_over_visual_hull"], summary["fine_beats_visual_hull"]
        lines += [
            "",
            "**Margin over the visual hull** (non-learned: silhouettes of the same input views "
            "carved on a 96³ grid, surface voxels coloured from the views that see them; "
            f"`engine/baselines/visual_hull.py`): fine {_signed(margin['fine']['psnr'], 2)} dB "
            f"full image, {_signed(margin['fine']['psnr_object'], 2)} dB on object pixels; "
            f"coarse {_signed(margin['coarse']['psnr'], 2)} dB / "
            f"{_signed(margin['coarse']['psnr_object'], 2)} dB. Fine beats the hull on "
            f"{beats['psnr']['fine_gt_hull']} of {beats['psnr']['of']} objects (full image), "
            f"{beats['psnr_object']['fine_gt_hull']} of {beats['psnr_object']['of']} "
            "(object pixels).",
        ]
    if "lpips" not in metrics:
        lines += ["", "LPIPS: not computed (the `lpips` package or its local weights are "
                  "missing; nothing is downloaded)."]  # fmt: skip
    win = summary["fine_ge_coarse"]
    lines += [
        "",
        f"Fine ≥ coarse: full-image PSNR on {win['psnr']['fine_ge_coarse']} of "
        f"{win['psnr']['of']} objects ({_pct(win['psnr']['fraction'])}), object-pixel PSNR on "
        f"{win['psnr_object']['fine_ge_coarse']} of {win['psnr_object']['of']} "
        f"({_pct(win['psnr_object']['fraction'])}).",
        "",
        "Best-of (the released GD evaluation's protocol: per object the better of coarse and "
        "fine; **not our headline number**, for comparison with published figures only): "
        f"PSNR {_f(summary['best_of_per_object_not_headline']['psnr'])} dB, object-pixel "
        f"{_f(summary['best_of_per_object_not_headline']['psnr_object'])} dB.",
        "",
        "## Gaussians (mean per object)",
        "",
        "| coarse | final (fine set) | candidates replaced | generated | added |"
        + (" visual hull |" if hull else ""),
        "|---:|---:|---:|---:|---:|" + ("---:|" if hull else ""),
        "| " + " | ".join(f"{summary['counts_mean'].get(k, 0):.0f}" for k in
                         ("coarse", "final", "candidates", "generated", "added")
                         + (("visual_hull",) if hull else ())) + " |",
        "",
        "![log-scales](hist_log_scale.png) ![opacities](hist_opacity.png)",
        "",
        "## Time (mean seconds per object)",
        "",
        "Stages as reported by the model (`rec.stats['seconds']`), then the wall time of the "
        "whole `reconstruct` call and of rendering both sets into the target views.",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]  # fmt: skip
    for stage, sec in summary["seconds_mean"].items():
        lines.append(f"| {stage} | {_f(sec, 3)} |")
    header = ["object", "PSNR c", "PSNR f", "Δ", "obj PSNR c", "obj PSNR f", "Δ obj",
              "SSIM c", "SSIM f"]  # fmt: skip
    if hull:
        header += ["PSNR hull", "obj PSNR hull"]
    if "lpips" in metrics:
        header += ["LPIPS c", "LPIPS f"]
    header += ["N coarse", "N final", "s"]
    lines += ["", "## Per object", "", "| " + " | ".join(header) + " |",
              "|" + "---:|" * len(header)]  # fmt: skip
    for o in objects:
        pc, pf = o.mean("coarse", "psnr"), o.mean("fine", "psnr")
        oc, of = o.mean("coarse", "psnr_object"), o.mean("fine", "psnr_object")
        row = [f"{o.index:06d}", _f(pc), _f(pf), _delta(pf, pc), _f(oc), _f(of), _delta(of, oc),
               _f(o.mean("coarse", "ssim"), 4), _f(o.mean("fine", "ssim"), 4)]  # fmt: skip
        if hull:
            row += [_f(o.mean("hull", "psnr")), _f(o.mean("hull", "psnr_object"))]
        if "lpips" in metrics:
            row += [_f(o.mean("coarse", "lpips"), 4), _f(o.mean("fine", "lpips"), 4)]
        row += [str(o.counts["coarse"]), str(o.counts["final"]),
                _f(o.seconds.get("reconstruct_wall"), 2)]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()]
    if meta.get("images"):
        shown = "GT | visual hull | coarse | fine" if hull else "GT | coarse | fine"
        lines += ["", "## Images", "", f"{shown}, in `images/`:", ""]
        lines += [f"![{p}]({p})" for p in meta["images"]]
    return "\n".join(lines) + "\n"


def _signed(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{100 * fraction:.0f}%"


def _delta(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a - b:+.2f}"


# ---------------------------------------------------------------------------- entry points
def open_dataset(data: str | os.PathLike, split: str) -> PropsDataset:
    """The props dataset split to evaluate; clear errors for a missing folder or an empty
    split (nothing is written before these checks)."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
    manifest = read_manifest(root)
    dataset = PropsDataset(root, split)
    if len(dataset) == 0:
        sizes = ", ".join(f"{s} {len(manifest['splits'].get(s, []))}" for s in SPLITS)
        raise ValueError(
            f"{root}: split {split!r} has no finished objects (manifest: {sizes}); "
            "choose another split, e.g. --split all"
        )
    return dataset


def evaluate(
    model: Any,
    dataset: PropsDataset,
    out_dir: str | os.PathLike,
    *,
    split: str = "unknown",
    limit: int | None = None,
    image_objects: int = 4,
    image_views: int = 2,
    device: torch.device | str = "cpu",
    views: int | None = None,
    targets: int | None = None,
    visual_hull: bool = True,
    budget: int | None = None,
    meta: dict[str, Any] | None = None,
    progress: Callable[[int, int, ObjectEval], None] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on the first `limit` objects of `dataset` and write the report.

    Args:
        model: an object model (`reconstruct`, `image_size`, `name`, `weights_path`).
        dataset: the split to score (`open_dataset`). split: its name, for the report.
        out_dir: report folder (created).
        limit: evaluate only the first N objects (None: all).
        image_objects, image_views: GT | coarse | fine strips for the first
            `image_views` target views of the first `image_objects` objects.
        device: where rendering and scoring run.
        views: input views the model reads (None: the dataset's input ring); see
            `plan_views` for where they come from when the ring has fewer.
        targets: score only the first T target views left after `views` (None: all).
        visual_hull: score the visual-hull baseline beside the model.
        budget: densification candidates K per object (None: the model's default,
            `config.candidates`).
        meta: provenance to merge into the report (data path, split, command line).
        progress: called after each object with (done, total, result).
    Returns:
        The content of metrics.json.
    """
    device = torch.device(device)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    if total <= 0:
        raise ValueError("nothing to evaluate (limit must be at least 1)")
    # The view plan is checked on the first object before anything is written.
    first = dataset[0]
    plan = plan_views(len(first["input_cameras"]), len(first["target_cameras"]), views,
                      targets, getattr(model, "max_views", None))  # fmt: skip
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    objects: list[ObjectEval] = []
    image_files: list[str] = []
    for position in range(total):
        item = first if position == 0 else dataset[position]
        counts = (len(item["input_cameras"]), len(item["target_cameras"]))
        if counts != (len(first["input_cameras"]), len(first["target_cameras"])):
            raise ValueError(
                f"object {item.get('index')} has {counts[0]} input and {counts[1]} target "
                "views, unlike the first object: one view plan cannot serve both"
            )
        item = apply_plan(item, plan)
        keep = position < image_objects
        result = evaluate_object(model, item, device, keep_renders=keep,
                                 visual_hull=visual_hull, budget=budget)  # fmt: skip
        if keep:
            image_files += _write_strips(out_dir, result, image_views)
            result.renders = {}
        objects.append(result)
        if progress is not None:
            progress(position + 1, total, result)
    summary = summarize(objects)
    weights_path = getattr(model, "weights_path", None)
    weights_sha = (
        sha256_file(weights_path) if weights_path and Path(weights_path).is_file() else None
    )
    planned = apply_plan(first, plan)
    in_cams, tgt_cams = planned["input_cameras"], planned["target_cameras"]
    limit_note = "" if total == len(dataset) else f" (first {total} of {len(dataset)})"
    full_meta: dict[str, Any] = {
        "model": {
            "name": str(getattr(model, "name", type(model).__name__)),
            "image_size": int(model.image_size),
            "detail_size": int(getattr(model, "detail_size", model.image_size)),
            "weights_path": str(weights_path) if weights_path else None,
            "sha256": weights_sha,
            "weights_note": "trained weights" if weights_path else
            "no weights file: random initialisation (untrained)",
            "config": config_dict(getattr(model, "config", None)),
            "candidates": budget if budget is not None else getattr(
                getattr(model, "config", None), "candidates", None),
        },
        "data": {
            "path": str(dataset.root),
            "objects_in_split": len(dataset),
            "limit": limit,
            "limit_note": limit_note,
            "input_views": len(in_cams),
            "input_size": f"{in_cams.width}x{in_cams.height}",
            "target_views": len(tgt_cams),
            "target_size": f"{tgt_cams.width}x{tgt_cams.height}",
            "views_in_dataset": {"input": len(first["input_cameras"]),
                                 "target": len(first["target_cameras"])},
            "view_plan": plan.to_json(),
            "view_plan_text": plan.describe(),
        },
        "split": split,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(device),
        "render_backend": objects[0].backend,
        "command": shlex.join(sys.argv),
        "images": image_files,
    }  # fmt: skip
    for key, value in (meta or {}).items():
        if isinstance(value, dict) and isinstance(full_meta.get(key), dict):
            full_meta[key] = {**full_meta[key], **value}
        else:
            full_meta[key] = value
    return write_outputs(out_dir, objects, summary, full_meta)


def config_dict(config: Any) -> Any:
    """A model config as JSON-ready data for a report (its to_dict(), a dataclass's fields,
    else its str())."""
    if config is None:
        return None
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    try:
        from dataclasses import asdict

        return asdict(config)
    except TypeError:
        return str(config)


def _write_strips(out_dir: Path, result: ObjectEval, views: int) -> list[str]:
    """GT | (visual hull |) coarse | fine PNGs (labels carry each render's PSNR) for the
    first views."""
    names = []
    r = result.renders
    for j in range(min(views, result.views)):
        pc, pf = result.coarse["psnr"][j], result.fine["psnr"][j]
        # ASCII only: Pillow's built-in font has no glyph for the report's dash.
        db = lambda v: "n/a" if v is None else f"{v:.2f} dB"  # noqa: E731
        images, labels = [r["gt"][j]], ["ground truth"]
        if "hull" in r:
            images.append(r["hull"][j])
            labels.append(f"visual hull {db(result.hull['psnr'][j])}")
        images += [r["coarse"][j], r["fine"][j]]
        labels += [f"coarse {db(pc)}", f"fine {db(pf)}"]
        strip = image_strip(images, labels)
        name = f"images/{result.index:06d}_view{j:02d}.png"
        with atomic_open(out_dir / name) as f:
            strip.save(f, format="PNG")
        names.append(name)
    return names
