"""Generative densification: candidate selection, serialized attention, UP/SPLIT/HEAD, merge.

See DESIGN.md §2 for the method. Public entry points:

    cfg = get_config("small")
    gd = GenerativeDensifier(cfg, in_channels)
    out = gd(means, feats)                         # FineGaussians: gaussians, level, parent
    merged = merge(coarse, selected, out.gaussians, out.level, out.parent)

    pipeline = DensifyPipeline(cfg)                 # + gradient mask, view features, merge
    result = pipeline(coarse, images, cameras, select=None, budget=K)

`DensifyPipeline`, `gradient_mask` and the view-feature helpers use the renderer and
cameras; they are imported on first use so `engine.gd` itself does not need them.
"""

import importlib

from .config import (
    OBJECT,
    SCENE,
    SMALL,
    DensifyConfig,
    ViewFeatureConfig,
    continue_count,
    fine_count,
    get_config,
    level_counts,
)
from .densify import FineGaussians, GenerativeDensifier, grid_size_from_scales, split_top_k
from .merge import MergeResult, merge
from .serialization import ORDERS, encode, hilbert_encode, serialize, z_order_encode

_LAZY = {
    "DensifyPipeline": "pipeline",
    "DensifyPipelineResult": "pipeline",
    "Selection": "gradient_mask",
    "GradientScores": "gradient_mask",
    "gradient_mask": "gradient_mask",
    "view_space_gradients": "gradient_mask",
    "select_top_k": "gradient_mask",
    "candidate_budget": "gradient_mask",
    "ViewFeatureEncoder": "view_features",
    "ViewSamples": "view_features",
    "sample_views": "view_features",
    "candidate_features": "view_features",
    "gaussian_parameter_features": "view_features",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "OBJECT",
    "ORDERS",
    "SCENE",
    "SMALL",
    "DensifyConfig",
    "FineGaussians",
    "GenerativeDensifier",
    "MergeResult",
    "ViewFeatureConfig",
    "continue_count",
    "encode",
    "fine_count",
    "get_config",
    "grid_size_from_scales",
    "hilbert_encode",
    "level_counts",
    "merge",
    "serialize",
    "split_top_k",
    "z_order_encode",
]
