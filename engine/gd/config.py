"""Hyper-parameters of the generative densification module.

`OBJECT` and `SCENE` follow the paper / official release (DESIGN.md §2);
`SMALL` is sized to train on a 2-core CPU. Configs are frozen dataclasses so
they can be hashed, compared and written next to weights as JSON
(`dataclasses.asdict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .serialization import ORDERS

CHILD_SAMPLES = 8
"""Width of `view_features.ChildSampler` features (mean input RGB, then the rest): the
value a config's `child_samples` takes when children re-sample the inputs."""


@dataclass(frozen=True)
class ViewFeatureConfig:
    """Per-Gaussian features from the input views (`view_features.py`).

    Attributes:
        dim: width of the cross-attention over views (and of its output feature).
        heads: attention heads; `dim % heads == 0`.
        samples_per_view: channels sampled per view (input RGB, coarse RGB,
            alpha, |depth difference|); fixed by the method.
    """

    dim: int = 64
    heads: int = 4
    samples_per_view: int = 8

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"view feature dim {self.dim} not divisible by heads {self.heads}")


@dataclass(frozen=True)
class DensifyConfig:
    """Generative densification hyper-parameters; one entry per level where a tuple.

    Attributes:
        candidates: K, Gaussians selected for densification (per view when
            `candidates_per_view`).
        upsample: R per level, children spawned by every point.
        channels: feature width per level.
        heads: attention heads per level.
        depths: transformer blocks per level (before UP).
        patch_size: serialized-attention patch size P.
        continue_ratio: per level except the last, the fraction of points (by
            the learned mask) that continue to the next level; the rest become
            leaves. 1.0 disables the mask for that level.
        drop_path: largest stochastic-depth probability (linear schedule over
            blocks, largest first, as in the official decoder).
        orders: serialization curves cycled over the blocks of a level.
        shuffle_orders: shuffle `orders` per level and forward in training.
        mlp_ratio: transformer MLP hidden width / channels.
        num_frequencies: Fourier frequencies of γ(Δx) in UP.
        offset_scale: Δx = offset_scale · grid_size · tanh(MLP(f)).
        grid_size: level-1 grid size, in world units (object: half a voxel of
            the 64³ LaRa volume over [-1, 1], as in the official code). Levels
            halve it. `None` means "derive from the data" (see `densify.py`).
        opacity_bias: added to the head's opacity logit (non-residual mode).
        scale_divisor: fine log-scale prior log(grid_size / scale_divisor),
            i.e. log(0.5 · voxel / 24) for the object model.
        sh_degree: SH degree of the fine Gaussians.
        residual: head predicts offsets on the parent candidate's parameters.
        child_samples: width of extra per-child features the HEAD reads from a
            sampler of the input views at each child's own position (0: off).
            DESIGN.md §8: in the prototype, texture came from children
            re-sampling the inputs where they are, not from the parent.
        color_gate: with child samples, the HEAD also predicts a gate g in (0, 1) per
            child and sets its base colour to (1 - g)·(its own prediction) + g·(the
            mean input colour the views show where the child is). DESIGN.md §8: a gated
            mix of sampled and parent colour is where the prototype's gain came from;
            as a learned residual the same mapping took far more steps to find.
        mask_size: the gradient mask renders the coarse set with its longer side at
            this many pixels (area-downsampled images, scaled cameras; never enlarged;
            0: the views' own size). Its render and backward cost scale with the pixel
            count and dominated densification on the CPU (bench/results/reconstruct.md),
            while the top-K ranking needs far less resolution than the images. The view
            features sample that same small render (its colour, alpha and depth) at the
            candidates and children; the input images themselves are read at full size.
        view: per-view feature settings.
    """

    candidates: int = 12_000
    candidates_per_view: bool = False
    upsample: tuple[int, ...] = (2, 4)
    channels: tuple[int, ...] = (160, 256)
    heads: tuple[int, ...] = (20, 32)
    depths: tuple[int, ...] = (2, 2)
    patch_size: int = 48
    continue_ratio: tuple[float, ...] = (0.8,)
    drop_path: float = 0.3
    orders: tuple[str, ...] = ORDERS
    shuffle_orders: bool = True
    mlp_ratio: float = 4.0
    num_frequencies: int = 15
    offset_scale: float = 0.5
    grid_size: float | None = 0.5 * 2.0 / 64
    opacity_bias: float = -2.18
    scale_divisor: float = 24.0
    sh_degree: int = 1
    residual: bool = False
    child_samples: int = 0
    color_gate: bool = False
    mask_size: int = 0
    view: ViewFeatureConfig = field(default_factory=ViewFeatureConfig)

    def __post_init__(self) -> None:
        levels = len(self.upsample)
        if levels < 1:
            raise ValueError("need at least one level")
        for name in ("channels", "heads", "depths"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} needs one entry per level ({levels})")
        if len(self.continue_ratio) != levels - 1:
            raise ValueError(f"continue_ratio needs {levels - 1} entries (levels - 1)")
        if any(r < 1 for r in self.upsample):
            raise ValueError("upsample factors must be >= 1")
        if any(not 0.0 < c <= 1.0 for c in self.continue_ratio):
            raise ValueError("continue ratios must be in (0, 1]")
        for c, h in zip(self.channels, self.heads, strict=True):
            if c % h:
                raise ValueError(f"channels {c} not divisible by heads {h}")
        bad = [o for o in self.orders if o not in ORDERS]
        if bad or not self.orders:
            raise ValueError(f"orders must be a non-empty subset of {ORDERS}, got {self.orders}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError("drop_path must be in [0, 1)")
        if self.child_samples < 0:
            raise ValueError("child_samples must be >= 0")
        if self.color_gate and self.child_samples < 3:
            raise ValueError("color_gate needs child_samples (their first 3 are the mean RGB)")
        if self.mask_size < 0:
            raise ValueError("mask_size must be >= 0 (0: the views' own size)")
        if self.grid_size is not None and self.grid_size <= 0:
            raise ValueError("grid_size must be positive")

    @property
    def levels(self) -> int:
        return len(self.upsample)

    @property
    def voxel_size(self) -> float | None:
        """Coarse voxel size implied by `grid_size` (level-1 grid = half a voxel)."""
        return None if self.grid_size is None else 2.0 * self.grid_size

    def with_(self, **changes) -> DensifyConfig:
        """Copy with some fields changed (validated)."""
        return replace(self, **changes)


def continue_count(n: int, ratio: float) -> int:
    """Points (of n) that continue past a SPLIT: ceil(ratio · n), robust to float noise.

    0.8 · 24000 is 19200.000000000004 in floats; a plain ceil would keep 19201.
    """
    return min(n, math.ceil(round(ratio * n, 6)))


def level_counts(num_candidates: int, cfg: DensifyConfig) -> list[tuple[int, int]]:
    """(points after UP, leaves emitted) for every level, for one batch element.

    N_1 = K·R_1; a level l < L keeps c_l' = ceil(c_l·N_l) points and emits
    N_l - c_l' leaves; N_{l+1} = c_l'·R_{l+1}; the last level emits all N_L.
    """
    out, n = [], num_candidates
    for level, r in enumerate(cfg.upsample):
        n *= r
        if level < cfg.levels - 1:
            keep = continue_count(n, cfg.continue_ratio[level])
            out.append((n, n - keep))
            n = keep
        else:
            out.append((n, n))
    return out


def fine_count(num_candidates: int, cfg: DensifyConfig) -> int:
    """Fine Gaussians produced from `num_candidates` candidates (one batch element)."""
    return sum(leaves for _, leaves in level_counts(num_candidates, cfg))


OBJECT = DensifyConfig()
"""Official object model (LaRa + GD): 12k candidates -> 81,600 fine Gaussians."""

SCENE_LEVELS: dict[str, Any] = {
    "candidates_per_view": True,
    "upsample": (2, 2, 2),
    # Not in the release: 0.6 reproduces the published count (2 views x 30k candidates
    # of MVSplat's 131k: (2 + 2c + 4c²) · 60k + 71k ≈ 347k at c = 0.6).
    "continue_ratio": (0.6, 0.6),
    # Scene units vary and a pixel's footprint grows with its depth: the grid comes from
    # the candidates' own scales.
    "grid_size": None,
}
"""The paper's scene densifier, as `DensifyConfig` fields: K candidates per context view,
three levels of R = 2, 60 % of the points continuing, no fixed grid. `SCENE` and the
CPU-sized scene model's densifier (`models/scene_backbone.py`) share it."""

SCENE = DensifyConfig(
    **SCENE_LEVELS,
    candidates=30_000,
    channels=(320, 256, 128),
    # Head width 8 as in the object model; the release does not state these.
    heads=(40, 32, 16),
    depths=(2, 2, 2),
    sh_degree=3,
)
"""Scene model (MVSplat + GD)."""

SMALL = DensifyConfig(
    candidates=4_000,
    channels=(32, 48),
    heads=(2, 4),
    depths=(1, 1),
    drop_path=0.1,
    sh_degree=0,
    view=ViewFeatureConfig(dim=32, heads=4),
)
"""CPU-sized object config: same structure (2 levels, R = [2, 4], c = 0.8), narrow and shallow."""


def densify_config_from_dict(data: dict) -> DensifyConfig:
    """Inverse of `dataclasses.asdict` for a `DensifyConfig` read from JSON (lists back to
    tuples, the nested `view`). Raises TypeError / KeyError on missing or unknown keys."""
    data = dict(data)
    view = ViewFeatureConfig(**data.pop("view"))
    tuples = {f.name for f in fields(DensifyConfig) if "tuple" in str(f.type)}
    data = {k: tuple(v) if k in tuples else v for k, v in data.items()}
    return DensifyConfig(**data, view=view)


PRESETS: dict[str, DensifyConfig] = {"object": OBJECT, "scene": SCENE, "small": SMALL}


def get_config(name: str) -> DensifyConfig:
    """Preset by name: "object", "scene" or "small"."""
    try:
        return PRESETS[name]
    except KeyError:
        known = list(PRESETS)
        raise ValueError(f"unknown densify config {name!r}; expected one of {known}") from None
