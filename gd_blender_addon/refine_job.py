"""Worker-thread jobs of Reconstruct, Reconstruct Object and Refine: plain data in (RGBA
arrays, camera records, tensors), plain data out. No bpy here (jobs.py explains why).

Reconstruct: the model reads at most its `max_views` of the views, spread around the prop
(farthest-point sampling on the camera centres, as `gd reconstruct` does); refinement
(`engine.refine.refine`, optional) then optimises the result against *all* of them, holding
some out (one in 8, with 8 or more views) and reporting their PSNR.

Refine on an existing object: refinement against its stored views in the object's local
frame. With a selection, only the selected Gaussians (and what densification makes of
them) change; the others come back bit-identical and first, in their order (as Densify
leaves them). Refinement does not say which input row a new or moved Gaussian came from,
so a refined Gaussian takes `gd_level`/`gd_parent` of the nearest input Gaussian that was
refined (nearest by position before refinement).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import jobs

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class RefineSettings:
    """How long to refine: `steps` (> 0, scripts and tests) wins over `seconds`; both 0
    means no refinement."""

    seconds: float = 0.0
    steps: int = 0

    @property
    def enabled(self) -> bool:
        return self.steps > 0 or self.seconds > 0

    def budget(self) -> dict[str, Any]:
        """`refine()`'s budget keyword: steps= or seconds=."""
        return {"steps": int(self.steps)} if self.steps > 0 else {"seconds": float(self.seconds)}

    def describe(self) -> str:
        return f"{self.steps} steps" if self.steps > 0 else f"{self.seconds:g} s"


@dataclass
class Reconstructed:
    """A reconstruction (world frame), refined or not.

    Attributes:
        gaussians, level, parent: what lands on the object (level/parent as `lineage`).
        views: views given; model_views: how many of them the model read.
        refined: the `RefineResult`, or None without refinement.
    """

    gaussians: Any
    level: Any
    parent: Any
    views: int
    model_views: int
    refined: Any = None


@dataclass
class Refined:
    """An object's Gaussians after Refine (its local frame), frozen rows first.

    Attributes:
        gaussians, level, parent: the new point data.
        frozen: how many leading rows are the unselected input rows, bit-identical.
        result: the `RefineResult` (its `gaussians` in refine's own order).
    """

    gaussians: Any
    level: Any
    parent: Any
    frozen: int
    result: Any


def view_size(model: Any) -> int:
    """Side of the square views to give `model`: the size it reads in full."""
    return int(getattr(model, "view_size", model.image_size))


def scaled(progress: Progress, start: float, end: float) -> Progress:
    """`progress` with fractions mapped onto [start, end]."""
    return lambda f, m: progress(start + (end - start) * float(f), m)


def spread_views(cameras: Any, max_views: int | None) -> Any:
    """(K,) int64 indices of at most `max_views` cameras spread around the prop."""
    import torch

    from engine.refine import farthest_point_views

    if max_views is None or len(cameras) <= max_views:
        return torch.arange(len(cameras))
    return farthest_point_views(cameras, int(max_views))


def on_white(images: Any) -> Any:
    """(V, H, W, 3) RGB of (V, H, W, 4) straight-alpha views composited on white (the
    object convention refinement renders against)."""
    if images.shape[-1] == 3:
        return images
    alpha = images[..., 3:4]
    return images[..., :3] * alpha + (1.0 - alpha)


def _refine(gaussians: Any, images: Any, cameras: Any, settings: RefineSettings,
            select: Any, progress: Progress, cancel: threading.Event,
            config: Any = None) -> Any:  # fmt: skip
    from engine.refine import refine

    result = refine(
        gaussians, on_white(images), cameras, **settings.budget(), select=select,
        progress=progress, cancel=cancel, config=config,
    )  # fmt: skip
    if result.cancelled or cancel.is_set():
        raise jobs.JobCancelled()  # Esc drops the whole job: nothing lands
    return result


def reconstruct_work(
    model: Any,
    views: list[Any],
    records: list[dict[str, Any]],
    bbox: Any,
    refine: RefineSettings,
    progress: Progress,
    cancel: threading.Event,
) -> Reconstructed:
    """Worker: reconstruct from plain views (the model reads a spread subset of at most its
    `max_views`), then optionally refine against all of them."""
    import torch

    from .photos import prepare_views

    progress(0.3, "preparing views")
    images, cameras = prepare_views(views, records, view_size(model))
    chosen = spread_views(cameras, getattr(model, "max_views", None))
    box = None if bbox is None else torch.as_tensor(bbox, dtype=torch.float32)
    end = 0.5 if refine.enabled else 1.0
    rec = model.reconstruct(
        images[chosen], cameras[chosen], bbox=box, densify=True,
        progress=scaled(progress, 0.35, end), cancel=cancel,
    )  # fmt: skip
    out = Reconstructed(rec.gaussians, rec.level, rec.parent, len(cameras), len(chosen))
    if not refine.enabled:
        return out
    if len(rec.gaussians) == 0:
        raise ValueError("the model produced no Gaussians, so there is nothing to refine")
    result = _refine(rec.gaussians, images, cameras, refine, None, scaled(progress, end, 1.0),
                     cancel)  # fmt: skip
    out.gaussians = result.gaussians
    out.level, out.parent = inherit_lineage(rec.gaussians.means, rec.level, rec.parent, None,
                                            result)  # fmt: skip
    out.refined = result
    return out


def reconstruct_with_views(
    model: Any, records: list[dict[str, Any]], bbox: Any, refine: RefineSettings,
    views: list[Any], progress: Progress, cancel: threading.Event,
) -> Reconstructed:  # fmt: skip
    """`reconstruct_work` with the (cut-out) views given last, as `photos.masked_work` calls."""
    return reconstruct_work(model, views, records, bbox, refine, progress, cancel)


def refine_object_work(
    gaussians: Any,
    level: Any,
    parent: Any,
    views: list[Any],
    records: list[dict[str, Any]],
    select: Any,
    settings: RefineSettings,
    progress: Progress,
    cancel: threading.Event,
) -> Refined:
    """Worker: refine an object's Gaussians (local frame) against its stored views (local
    camera records). `select`: (N,) bool or None (every Gaussian)."""
    import torch

    from engine.refine import RefineConfig

    from .photos import prepare_views

    progress(0.0, "preparing views")
    side = min(min(v.shape[0], v.shape[1]) for v in views)
    cap = RefineConfig().max_side
    images, cameras = prepare_views(views, records, min(side, cap) if cap else side)
    if select is not None and bool(select.all()):
        select = None
    # No low-resolution warm-up: it suits a feed-forward start, but this splat may have
    # been refined already, and low-resolution steps blur what full-size ones sharpened
    # until the warm-up ends (measured on 3 refined props, 10 more seconds, PSNR on views
    # never refined against: 5 s in, 27.9 against 31.4 dB; at the end 31.45 against 31.40).
    config = RefineConfig(warmup_steps=0)
    result = _refine(gaussians, images, cameras, settings, select, progress, cancel, config)
    trainable = result.trainable.cpu()
    order = torch.cat([(~trainable).nonzero().flatten(), trainable.nonzero().flatten()])
    new_level, new_parent = inherit_lineage(gaussians.means, level, parent, select, result)
    frozen = int((~trainable).sum())
    out = result.gaussians[order.to(result.gaussians.device)]
    return Refined(out, new_level[order], new_parent[order], frozen, result)


def inherit_lineage(means: Any, level: Any, parent: Any, select: Any,
                    result: Any) -> tuple[Any, Any]:  # fmt: skip
    """(level, parent) of every row of `result.gaussians` (refine's order).

    Frozen rows are the unselected input rows in order and keep their own; each refined
    row takes those of the nearest input Gaussian that was refined (`select`, None: all).
    """
    import torch

    level = torch.as_tensor(level, dtype=torch.int64).cpu()
    parent = torch.as_tensor(parent, dtype=torch.int64).cpu()
    trainable = result.trainable.cpu()
    chosen = torch.ones(len(level), dtype=torch.bool) if select is None else select.cpu()
    source = torch.empty(len(trainable), dtype=torch.int64)
    source[~trainable] = (~chosen).nonzero().flatten()
    candidates = chosen.nonzero().flatten()
    anchors = means.detach().cpu().float()[candidates]
    moved = result.gaussians.means.detach().cpu().float()[trainable]
    nearest = torch.empty(len(moved), dtype=torch.int64)
    for start in range(0, len(moved), 4096):  # bounded memory: 4096 x N distances a chunk
        block = torch.cdist(moved[start : start + 4096], anchors)
        nearest[start : start + 4096] = block.argmin(dim=1)
    source[trainable] = candidates[nearest]
    return level[source], parent[source]


def refine_report(result: Any) -> str:
    """One line on a RefineResult: steps, time, counts, held-out PSNR."""
    c = result.counts
    text = (f"refined {result.steps} steps in {result.seconds:.1f} s, Gaussians "
            f"{c['start']:,} -> {c['final']:,}")  # fmt: skip
    if result.holdout_psnr is not None:
        text += (f", held-out PSNR {result.holdout_psnr_start:.2f} -> "
                 f"{result.holdout_psnr:.2f} dB ({len(result.holdout)} views)")  # fmt: skip
    else:
        text += " (no held-out views: fewer than 8)"
    return text


def reconstruct_report(rec: Reconstructed, seconds: float, note: str = "") -> str:
    """The Reconstruct operators' closing message."""
    read = "" if rec.model_views == rec.views else f" (the model read {rec.model_views})"
    text = (f"Reconstructed {len(rec.gaussians):,} Gaussians from {rec.views} views{read} "
            f"in {seconds:.1f} s")  # fmt: skip
    if rec.refined is not None:
        text += "; " + refine_report(rec.refined)
    return text + (f". {note}" if note else "")
