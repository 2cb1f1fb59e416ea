"""The object model: backbone -> gradient mask -> view features -> densifier -> merge.

    model = GDObjectModel(get_model_config("object-small"))
    rec = model.reconstruct(images, cameras)            # world-space coarse and fine
    res = model.densify(gaussians, images, cameras, select=mask, budget=20_000)

`reconstruct` and `densify` take views anywhere in the world (any camera distance and
field of view that frames the prop): they normalise into the model's cube
(`normalization.py`), run, and map the Gaussians back. Both report progress through a
callback and stop with `Cancelled` when a `threading.Event` is set.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..cameras import Cameras, check_baseline
from ..gaussians import Gaussians
from ..gd.gradient_mask import gradient_mask
from ..gd.merge import MergeResult, merge
from ..gd.pipeline import DensifyPipeline, DensifyPipelineResult
from ..images import resize_views
from .base import GDModel, Progress, Reconstruction, check_cancel, check_view_images
from .config import ObjectModelConfig
from .normalization import (
    Normalization,
    check_cameras_see,
    estimate_normalization,
    normalization_from_bbox,
)
from .object_backbone import ObjectBackbone
from .silhouette import alphas_from_views, dilate_alphas, gate_opacities, silhouette_gate

WHITE = (1.0, 1.0, 1.0)


@dataclass
class ObjectOutput:
    """Training-time output for one batch element, in model space.

    Attributes:
        coarse: all decoded coarse Gaussians (no pruning: every one gets a gradient).
        densified: the densifier's result (merged set, fine set, selection), or None.
    """

    coarse: Gaussians
    densified: DensifyPipelineResult | None


class GDObjectModel(GDModel):
    """LaRa-style backbone + generative densification for objects.

    `pretrained_encoder`: a "dino" backbone's ViT starts from the hub's own pretrained
    weights (which its hub code may download); off unless training asks for it.
    """

    def __init__(self, cfg: ObjectModelConfig, pretrained_encoder: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ObjectBackbone(cfg.backbone, pretrained_encoder)
        self.densifier = DensifyPipeline(cfg.densify, backbone_dim=cfg.backbone.feature_dim)

    # ------------------------------------------------------------------ properties
    def adapt_init_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state` of a related model made loadable here (`ObjectBackbone.adapt_init_state`:
        a different Gaussian-volume up-sampling); used by training's `--init`."""
        return self.backbone.adapt_init_state(state, prefix="backbone.")

    # ------------------------------------------------------------------ training forward
    def forward(
        self,
        images: Tensor,
        cameras: list[Cameras],
        densify: bool = True,
        budget: int | None = None,
        drop_backbone_features: bool = False,
        alphas: Tensor | None = None,
    ) -> list[ObjectOutput]:
        """Model-space forward for training.

        Args:
            images: (B, V, S, S, 3) on white, at any size S; the backbone reads them
                resized to `image_size`, the densifier to `detail_size`.
            cameras: B model-space Cameras of V views each.
            densify: also run the densifier.
            budget: candidates per element (default: `cfg.train_candidates`).
            drop_backbone_features: give the densifier zeros instead of backbone
                features, so it also learns to densify splats that have none.
            alphas: (B, V, S, S) input coverage (None: unknown); a `silhouette` model
                reads them (`silhouette.py`).
        """
        if alphas is None:
            alphas = images.new_ones(images.shape[:4])
        sized = [
            resize_views(torch.cat([im, a[..., None]], -1), cams, self.image_size)
            for im, a, cams in zip(images, alphas, cameras, strict=True)
        ]
        small = torch.stack([im for im, _ in sized])
        out = self.backbone(small[..., :3], [cams for _, cams in sized], alphas=small[..., 3])
        results = []
        for bi, (coarse, feats) in enumerate(zip(out.gaussians, out.features, strict=True)):
            # Below 1/255 opacity a Gaussian never passes the rasteriser's alpha cut, so it
            # neither renders nor receives a gradient: dropping it changes nothing but cost.
            live = coarse.opacities.detach() >= 1.0 / 255.0
            coarse, feats = coarse[live], feats[live]
            dens = None
            if densify:
                if drop_backbone_features:
                    feats = torch.zeros_like(feats)
                views, cams = resize_views(
                    torch.cat([images[bi], alphas[bi][..., None]], -1), cameras[bi],
                    self.detail_size,
                )  # fmt: skip
                dens = self.densifier(
                    coarse, views[..., :3], cams, budget=budget or self.cfg.train_candidates,
                    backbone_feats=feats, background=WHITE, variant=self.cfg.gradient_variant,
                    merge=not self.cfg.backbone.silhouette,
                )  # fmt: skip
                if self.cfg.backbone.silhouette:
                    dens = self._gate_and_merge(coarse, dens, views[..., 3], cams)
            results.append(ObjectOutput(coarse, dens))
        return results

    def _gate_fine(self, fine: Gaussians, alphas: Tensor, cams: Cameras) -> Gaussians:
        """Fine Gaussians with opacities gated by the input silhouettes (a `silhouette`
        model; others unchanged). alphas: (V, S, S) at the size of `cams`."""
        if not self.cfg.backbone.silhouette:
            return fine
        # The gate's dilation is in backbone pixels; scale it to these views.
        radius = round(self.cfg.backbone.gate_dilation * cams.width / self.image_size)
        masks = dilate_alphas(alphas, radius)
        return gate_opacities(fine, silhouette_gate(fine.means, masks, cams))

    def _gate_and_merge(
        self, coarse: Gaussians, dens: DensifyPipelineResult, alphas: Tensor, cams: Cameras
    ) -> DensifyPipelineResult:
        """Gate the fine set by the silhouettes, then merge it into `coarse` (training)."""
        fine = dens.fine
        gated = self._gate_fine(fine.gaussians, alphas, cams)
        merged = merge(coarse, dens.selection.selected, gated, fine.level, fine.parent)
        fine = replace(fine, gaussians=gated)
        return replace(dens, merged=merged, fine=fine)

    # ------------------------------------------------------------------ inference
    def prepare_views(self, images: Tensor, cameras: Cameras) -> tuple[Tensor, Cameras]:
        """Validate views and bring them to the model: (V, H, W, 3|4) -> (V, S, S, 3).

        RGBA is composited on white (`prepare_views_rgba` keeps the alpha).
        """
        rgba, cameras = self.prepare_views_rgba(images, cameras)
        return rgba[..., :3].contiguous(), cameras

    def prepare_views_rgba(self, images: Tensor, cameras: Cameras) -> tuple[Tensor, Cameras]:
        """Validate views and bring them to the model: (V, H, W, 3|4) -> (V, S, S, 4).

        RGB composited on white, then alpha (all ones for RGB views: no silhouette is
        known). Views must be square; larger than `view_size` they are resampled (area
        filter) down to it and the cameras scaled with them.

        Raises:
            ValueError: wrong view count, image shape or size, non-finite pixels, views
                without a baseline (all cameras in one spot, or two with one pose).
        """
        if isinstance(cameras, Cameras) and not 1 <= len(cameras) <= self.max_views:
            raise ValueError(f"{self.name} takes 1 to {self.max_views} views, got {len(cameras)}")
        images, cameras = check_view_images(images, cameras)
        if len(cameras) >= 2:
            check_baseline(cameras)
        rgb, alpha = alphas_from_views(images.clamp(0.0, 1.0))
        images = torch.cat([rgb, alpha[..., None]], -1)
        if cameras.width != cameras.height:
            size = f"{cameras.width}x{cameras.height}"
            raise ValueError(f"{self.name} takes square views; got {size}")
        if cameras.width > self.view_size:
            images, cameras = resize_views(images, cameras, self.view_size)
        return images, cameras

    def _model_views(
        self, images: Tensor, cameras: Cameras, bbox: Tensor | None
    ) -> tuple[Tensor, Cameras, Normalization]:
        """Checked views on the model's device: images (V, S, S, 4) (RGB on white and
        alpha, S <= `view_size`), model-space cameras and the world <-> model
        normalisation."""
        images, cameras = self.prepare_views_rgba(images, cameras)
        norm = self.normalization(cameras, bbox)
        cams = norm.cameras_to_model(cameras).to(device=self.device, dtype=torch.float32)
        return images.to(self.device), cams, norm

    def normalization(self, cameras: Cameras, bbox: Tensor | None) -> Normalization:
        norm = estimate_normalization(cameras) if bbox is None else normalization_from_bbox(bbox)
        check_cameras_see(cameras, norm)
        return norm

    @torch.no_grad()
    def reconstruct(
        self,
        images: Tensor,
        cameras: Cameras,
        *,
        bbox: Tensor | None = None,
        densify: bool = True,
        budget: int | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Reconstruction:
        """Coarse Gaussians from posed views, then densified where detail is missing.

        Args:
            images: (V, H, W, 3) RGB in [0, 1] on white, or (V, H, W, 4) RGBA.
            cameras: V world-space cameras (OpenCV, pixel intrinsics).
            bbox: optional (2, 3) world bounding box of the prop; estimated from the
                cameras otherwise.
            densify: run generative densification (False: coarse only).
            budget: densification candidates K (default `cfg.candidates`).
            progress: called with (fraction done, stage message).
            cancel: set it to stop; `Cancelled` is raised at the next stage boundary.
        Returns:
            A `Reconstruction` in world coordinates.
        """
        report = progress or (lambda f, m: None)
        times: dict[str, float] = {}
        start = t0 = time.perf_counter()
        check_cancel(cancel)
        report(0.0, "preparing views")
        images, cams, norm = self._model_views(images, cameras, bbox)
        times["prepare"] = time.perf_counter() - t0
        check_cancel(cancel)

        report(0.1, "coarse Gaussians")
        t0 = time.perf_counter()
        self.eval()
        small, small_cams = resize_views(images, cams, self.image_size)
        out = self.backbone(small[None, ..., :3], [small_cams], alphas=small[None, ..., 3])
        coarse, feats = out.gaussians[0], out.features[0]
        decoded = len(coarse)
        keep = coarse.opacities > self.cfg.backbone.prune_opacity
        coarse, feats = coarse[keep], feats[keep]
        times["backbone"] = time.perf_counter() - t0
        check_cancel(cancel)
        coarse_world = norm.gaussians_to_world(coarse).to("cpu")
        counts = {"decoded": decoded, "coarse": len(coarse)}
        if not densify or len(coarse) == 0:
            times["total"] = time.perf_counter() - start
            report(1.0, "done")
            return Reconstruction.coarse_only(coarse_world, counts, times)

        report(0.5, "densifying")
        k = min(budget or self.cfg.candidates, len(coarse))
        images, cams = resize_views(images, cams, self.detail_size)
        result, sel_time = self._densify_model_space(coarse, feats, images, cams, k, None)
        times["select"] = sel_time
        times["densify"] = time.perf_counter() - t0 - times["backbone"] - sel_time
        check_cancel(cancel)
        fine_world, merged = _merge_in_world(coarse_world, result, norm)
        counts.update(
            candidates=int(result.selection.selected.sum()),
            fine=len(fine_world),
            final=len(merged.gaussians),
        )
        times["total"] = time.perf_counter() - start
        report(1.0, "done")
        return Reconstruction(
            merged.gaussians, coarse_world, merged.level, merged.parent,
            {"counts": counts, "seconds": times},
        )  # fmt: skip

    def _densify_model_space(
        self,
        coarse: Gaussians,
        feats: Tensor | None,
        views: Tensor,
        cams: Cameras,
        k: int,
        select: Tensor | None,
    ) -> tuple[DensifyPipelineResult, float]:
        """Candidate selection (top-k, optionally within `select`) and the densifier, without
        the merge (the caller merges in world space). views: (V, S, S, 4) RGB and alpha;
        a `silhouette` model gates the fine Gaussians by the alphas."""
        images, alphas = views[..., :3].contiguous(), views[..., 3]
        t0 = time.perf_counter()
        selection = gradient_mask(
            coarse, images, cams, k=k, variant="abs", background=WHITE,
            min_opacity=self.cfg.backbone.prune_opacity, mask_size=self.cfg.densify.mask_size,
            within=select,
        )  # fmt: skip
        sel_time = time.perf_counter() - t0
        if feats is None:
            feats = coarse.means.new_zeros(len(coarse), self.cfg.backbone.feature_dim)
        # The gradient mask's render of the coarse set doubles as the view features' one.
        result = self.densifier(
            coarse, images, cams, select=selection.selected, backbone_feats=feats,
            background=WHITE, coarse_render=selection.scores, merge=False,
        )  # fmt: skip
        if self.cfg.backbone.silhouette:
            fine = result.fine
            gated = self._gate_fine(fine.gaussians, alphas, cams)
            # Children the silhouettes shut off would only weigh down the file.
            keep = gated.opacities > self.cfg.backbone.prune_opacity
            fine = replace(fine, gaussians=gated[keep], level=fine.level[keep],
                           parent=fine.parent[keep], batch=fine.batch[keep])  # fmt: skip
            result = replace(result, fine=fine)
        return result, sel_time

    @torch.no_grad()
    def densify(
        self,
        gaussians: Gaussians,
        images: Tensor,
        cameras: Cameras,
        *,
        select: Tensor | None = None,
        budget: int | None = None,
        bbox: Tensor | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Reconstruction:
        """Densify Gaussians from anywhere (a file, the add-on) seen in posed views.

        Args:
            gaussians: N world-space Gaussians (no backbone features needed).
            images, cameras, bbox, progress, cancel: as in `reconstruct`.
            select: (N,) bool, the Gaussians that may be densified (the artist's region);
                None lets the gradient mask choose among all of them.
            budget: the most Gaussians to ADD. Each candidate becomes
                `fine_per_candidate` Gaussians; when the selection would add more than
                the budget, the candidates are the selected Gaussians with the largest
                view-space gradients. Default: every selected Gaussian (or
                `cfg.candidates` when nothing is selected).
        Returns:
            A `Reconstruction` whose first N - S Gaussians are the unselected input ones,
            bit for bit and in order; `parent` indexes `gaussians`.
        """
        report = progress or (lambda f, m: None)
        start = time.perf_counter()
        check_cancel(cancel)
        n = len(gaussians)
        if select is not None:
            select = torch.as_tensor(select)
            if select.dtype != torch.bool or tuple(select.shape) != (n,):
                raise ValueError(f"select must be a bool mask of shape ({n},)")
            if not bool(select.any()):
                raise ValueError("the selection is empty: select the Gaussians to densify")
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be a positive number of Gaussians, got {budget}")
        report(0.0, "preparing views")
        images, cams, norm = self._model_views(images, cameras, bbox)
        images, cams = resize_views(images, cams, self.detail_size)
        device = self.device
        model_g = norm.gaussians_to_model(gaussians.to("cpu")).to(device)
        pool = n if select is None else int(select.sum())
        if budget is not None:
            k = max(1, int(budget // max(self.fine_per_candidate - 1.0, 1e-6)))
        else:
            k = self.cfg.candidates if select is None else pool
        k = min(k, pool)
        check_cancel(cancel)
        report(0.2, "densifying")
        sel = None if select is None else select.to(device)
        result, sel_time = self._densify_model_space(model_g, None, images, cams, k, sel)
        check_cancel(cancel)
        fine_world, merged = _merge_in_world(gaussians.to("cpu"), result, norm)
        report(1.0, "done")
        counts = {
            "input": n,
            "candidates": int(result.selection.selected.sum()),
            "fine": len(fine_world),
            "final": len(merged.gaussians),
        }
        seconds = {"select": sel_time, "total": time.perf_counter() - start}
        return Reconstruction(
            merged.gaussians, gaussians.to("cpu"), merged.level, merged.parent,
            {"counts": counts, "seconds": seconds},
        )  # fmt: skip


def _merge_in_world(
    coarse_world: Gaussians, result: DensifyPipelineResult, norm: Normalization
) -> tuple[Gaussians, MergeResult]:
    """Fine Gaussians mapped to the world and merged into the world-space coarse set there,
    so unselected Gaussians are the caller's values bit for bit (no round trip through
    model space)."""
    fine_world = norm.gaussians_to_world(result.fine.gaussians).to("cpu")
    merged = merge(
        coarse_world, result.selection.selected.cpu(), fine_world,
        result.fine.level.cpu(), result.fine.parent.cpu(),
    )  # fmt: skip
    return fine_world, merged
