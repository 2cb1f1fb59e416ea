"""The whole densification step: select candidates, featurise them, densify, merge.

    pipeline = DensifyPipeline(get_config("small"))
    result = pipeline(coarse, images, cameras)              # top-K by gradient
    result = pipeline(coarse, images, cameras, select=mask)  # the artist's region
    result.merged.gaussians                                   # coarse with the candidates replaced

`DensifyPipeline` is the whole step; the network inside it that turns candidates into
fine Gaussians is `GenerativeDensifier` (`densify.py`, attribute `generative`).

Works for any Gaussians: with a backbone feature per Gaussian (`backbone_dim`
> 0, the object and scene models) or without (a splat file), in which case the
Gaussians' own parameters stand in for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..gaussians import Gaussians
from .config import CHILD_SAMPLES, DensifyConfig
from .densify import FineGaussians, GenerativeDensifier, grid_size_from_scales
from .gradient_mask import (
    GradientScores,
    Selection,
    candidate_budget,
    coarse_tile_size,
    gradient_mask,
    mask_cameras,
)
from .merge import MergeResult
from .merge import merge as merge_fine
from .view_features import ChildSampler, ViewFeatureEncoder, candidate_features

if TYPE_CHECKING:
    from ..cameras import Cameras


@dataclass
class DensifyPipelineResult:
    """Output of `DensifyPipeline`.

    Attributes:
        merged: the coarse set with the candidates replaced by fine Gaussians (None when
            the caller merges itself, `merge=False`).
        fine: the `GenerativeDensifier`'s output (parents index the candidates).
        selection: which coarse Gaussians were candidates (and their scores).
        grid_size: the level-1 grid size used.
    """

    merged: MergeResult | None
    fine: FineGaussians
    selection: Selection
    grid_size: float


class DensifyPipeline(nn.Module):
    """Candidate selection, view-feature encoder, `GenerativeDensifier` and merge, end to end.

    Weights: `encoder.*` (the `ViewFeatureEncoder`) and `generative.*` (the
    `GenerativeDensifier`; `densifier.*` in weights saved before the rename, mapped on load).

    Args:
        cfg: densification config.
        backbone_dim: width of the per-Gaussian backbone feature (0 for none).
    """

    def __init__(self, cfg: DensifyConfig, backbone_dim: int = 0) -> None:
        super().__init__()
        if cfg.child_samples not in (0, CHILD_SAMPLES):
            raise ValueError(f"child_samples must be 0 or {CHILD_SAMPLES} (ChildSampler's width)")
        self.cfg = cfg
        self.encoder = ViewFeatureEncoder(cfg.view, backbone_dim)
        self.generative = GenerativeDensifier(cfg, self.encoder.out_channels)
        self.register_load_state_dict_pre_hook(_rename_old_keys)

    def forward(
        self,
        coarse: Gaussians,
        images: Tensor,
        cameras: Cameras,
        select: Tensor | None = None,
        budget: int | None = None,
        backbone_feats: Tensor | None = None,
        background: Tensor | Sequence[float] | float | None = None,
        variant: str = "abs",
        backend: str = "auto",
        coarse_render: GradientScores | None = None,
        merge: bool = True,
    ) -> DensifyPipelineResult:
        """Densify `coarse` (N Gaussians) seen in `images` (C, H, W, 3) from `cameras`.

        Args:
            select: explicit (N,) bool candidates; otherwise the top `budget`
                (default: the config's K, per view for the scene model) by
                view-space gradient.
            backbone_feats: (N, backbone_dim) features of the coarse Gaussians.
            background, variant, backend: see `gradient_mask`.
            coarse_render: with an explicit `select`, the caller's render of exactly
                these `coarse` Gaussians into these `cameras` (or the cameras scaled to
                a smaller size) on this `background` (anything with colors (C, h, w, 3),
                alphas and depths (C, h, w), e.g. the `GradientScores` the caller
                selected with). It replaces the render the view features would otherwise
                make, at `mask_cameras(cameras, cfg.mask_size)`: the same pixels (the
                forward pass does not depend on whether gradients are recorded), one
                render fewer.
            merge: merge the fine Gaussians into `coarse` (`result.merged`); False for a
                caller that merges them elsewhere (the object model, in world space).
        """
        if budget is None:
            budget = candidate_budget(self.cfg, len(cameras))
        selection = gradient_mask(
            coarse, images, cameras, k=budget, select=select, variant=variant,
            background=background, backend=backend, mask_size=self.cfg.mask_size,
        )  # fmt: skip
        if selection.scores is not None:
            s = selection.scores
            colors, alphas, depths = s.colors, s.alphas, s.depths
        elif coarse_render is not None:
            r = coarse_render
            shape = tuple(r.alphas.shape)
            if len(shape) != 3 or shape[0] != len(cameras) or r.colors.shape[:3] != shape:
                raise ValueError(
                    f"coarse_render must be {len(cameras)} views (colors (C, h, w, 3), "
                    f"alphas (C, h, w)), got colors {tuple(r.colors.shape)}, alphas {shape}"
                )
            colors, alphas, depths = r.colors.detach(), r.alphas.detach(), r.depths.detach()
        else:
            from ..render import render

            # The same size as the gradient mask's render, which is what the view
            # features see when the candidates are chosen by gradient.
            small = mask_cameras(cameras, self.cfg.mask_size)
            tile = coarse_tile_size(backend, coarse.device)
            with torch.no_grad():
                out = render(coarse.detach(), small, background=background, backend=backend,
                             tile_size=tile)  # fmt: skip
            colors, alphas, depths = out.colors, out.alphas, out.depths

        candidates = coarse[selection.selected]
        grid_size = self.cfg.grid_size
        if grid_size is None:
            grid_size = grid_size_from_scales(candidates.log_scales)
        feats = candidate_features(
            self.encoder, candidates, images, cameras, colors, alphas, depths,
            None if backbone_feats is None else backbone_feats[selection.selected],
            grid_size=grid_size,
        )  # fmt: skip
        sampler = None
        if self.cfg.child_samples:
            # Depth tolerance of two coarse voxels (4 level-1 cells).
            sampler = ChildSampler(images, cameras, alphas, depths, tolerance=4 * grid_size)
        fine = self.generative(
            candidates.means, feats, parents=candidates, grid_size=grid_size, child_sampler=sampler
        )
        merged = None
        if merge:
            merged = merge_fine(coarse, selection.selected, fine.gaussians, fine.level, fine.parent)
        return DensifyPipelineResult(merged, fine, selection, grid_size)


OLD_GENERATIVE_PREFIX = "densifier."
"""Where weights saved before the rename keep the `GenerativeDensifier` (the model's keys
were `densifier.densifier.*`, now `densifier.generative.*`)."""


def _rename_old_keys(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: `<prefix>densifier.*` -> `<prefix>generative.*`, in place."""
    old = prefix + OLD_GENERATIVE_PREFIX
    for key in [k for k in state if k.startswith(old)]:
        state[prefix + "generative." + key[len(old) :]] = state.pop(key)
