"""Refinement: time-budgeted optimisation of Gaussians against posed views, with
densification (3DGS clone/split or the learned GD module) while it runs.

    from engine.refine import RefineConfig, refine
    res = refine(gaussians, images, cameras, seconds=30, progress=cb, cancel=event)
    res.gaussians, res.holdout_psnr, res.counts

Modules: `config` (RefineConfig), `params` (Adam-optimised tensors and row surgery),
`densify` (gradient statistics, prune, clone/split, learned), `views` (holdout,
farthest-point view choice, scene extent), `loop` (`refine`), `init` (random starts).
"""

from .config import RefineConfig
from .errors import RefineError
from .init import random_gaussians
from .loop import RefineResult, refine
from .views import farthest_point_views, holdout_indices, scene_scale

__all__ = [
    "RefineConfig", "RefineError", "RefineResult", "farthest_point_views", "holdout_indices",
    "random_gaussians", "refine", "scene_scale",
]  # fmt: skip
