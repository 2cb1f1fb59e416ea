"""Generative densification: candidate selection, serialized attention, UP/SPLIT/HEAD, merge.

See DESIGN.md §2 for the method. Public entry points:

    cfg = get_config("small")
    gd = GenerativeDensifier(cfg, in_channels)
    out = gd(means, feats)                         # DensifyOutput: gaussians, level, parent
    merged = merge(coarse, selected, out.gaussians, out.level, out.parent)
"""

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
from .densify import DensifyOutput, GenerativeDensifier, grid_size_from_scales, split_top_k
from .merge import MergeResult, merge
from .serialization import ORDERS, encode, hilbert_encode, serialize, z_order_encode

__all__ = [
    "OBJECT",
    "ORDERS",
    "SCENE",
    "SMALL",
    "DensifyConfig",
    "DensifyOutput",
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
