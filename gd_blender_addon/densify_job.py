"""Worker-thread job of Densify Selected: plain data in, plain data out (no bpy; jobs.py
explains why), and the lineage bookkeeping of its result."""

from __future__ import annotations

import threading
from typing import Any

from . import jobs
from .refine_job import scaled, spread_views, view_size


def densify_work(
    model: Any,
    gaussians: Any,
    views: list[Any],
    records: list[dict[str, Any]],
    mask: Any,
    budget: int,
    progress: jobs.Progress,
    cancel: threading.Event,
) -> Any:
    """Worker: densify the masked Gaussians against plain views and camera records (at
    most the model's `max_views` of them, spread around the prop: Reconstruct Object
    stores up to 64)."""
    from .photos import prepare_views

    progress(0.3, "preparing views")
    images, cameras = prepare_views(views, records, view_size(model))
    chosen = spread_views(cameras, getattr(model, "max_views", None))
    return model.densify(
        gaussians, images[chosen], cameras[chosen], select=mask, budget=budget,
        progress=scaled(progress, 0.35, 1.0), cancel=cancel,
    )  # fmt: skip


def densify_with_views(
    model: Any, gaussians: Any, records: list[dict[str, Any]], mask: Any, budget: int,
    views: list[Any], progress: jobs.Progress, cancel: threading.Event,
) -> Any:  # fmt: skip
    """`densify_work` with the (checked) views given last, as `photos.masked_work` calls."""
    return densify_work(model, gaussians, views, records, mask, budget, progress, cancel)


def lineage(level: Any, parent: Any, res_level: Any, res_parent: Any) -> tuple[Any, Any]:
    """The object's gd_level / gd_parent after a densify.

    The engine returns, per output Gaussian, its input index (`res_parent`) and level
    (0: copied unchanged, 1..L: fine). Copied Gaussians keep their level and parent; a fine
    one gets its input's level plus its own, and its gd_parent stays the index of the coarse
    Gaussian of the original reconstruction it descends from.
    """
    import torch

    source = torch.as_tensor(res_parent, dtype=torch.int64)
    level = torch.as_tensor(level, dtype=torch.int64)
    parent = torch.as_tensor(parent, dtype=torch.int64)
    return level[source] + torch.as_tensor(res_level, dtype=torch.int64), parent[source]
