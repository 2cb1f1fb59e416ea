"""The scene model: MVSplat-style backbone -> gradient mask -> view features -> densifier.

    model = load_model("scene-small")
    rec = model.reconstruct(images, cameras, near=0.5, far=8.0)   # world-space coarse and fine

Two (to `max_views`) context views of a room, corner or set: one Gaussian per pixel from a
plane-sweep cost volume (`scene_backbone.py`), then generative densification of the
Gaussians with the largest view-space gradients in the context views (the paper's scene
model: K candidates per view, three levels of R = 2). Unlike the object model there is no
normalisation into a cube and no white background: the Gaussians are in the cameras' own
world, and what the views show behind the subject stays.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras, check_baseline, view_overlap
from ..gaussians import Gaussians
from ..gd.gradient_mask import gradient_mask
from ..gd.pipeline import DensifyPipeline, DensifyPipelineResult
from ..images import resize_views
from .base import GDModel, Progress, Reconstruction, check_cancel, check_view_images
from .scene_backbone import SceneBackbone, SceneModelConfig

BLACK = (0.0, 0.0, 0.0)

MIN_OVERLAP = 0.1
"""Least fraction of a context view that another view must also see (`view_overlap`):
below it the plane sweep has nothing to match and depth would be a guess."""


@dataclass
class SceneOutput:
    """Training-time output for one scene of a batch.

    Attributes:
        coarse: the V·H·W per-pixel Gaussians (every one gets a gradient).
        depths: (V, H, W) their planar depths.
        densified: the densifier's result (merged set, fine set, selection), or None.
    """

    coarse: Gaussians
    depths: Tensor
    densified: DensifyPipelineResult | None


def check_depth_range(near: float, far: float) -> tuple[float, float]:
    """(near, far) as floats, or ValueError unless 0 < near < far, both finite."""
    try:
        near, far = float(near), float(far)
    except (TypeError, ValueError):
        raise ValueError(f"near and far must be numbers, got {near!r} and {far!r}") from None
    if not (math.isfinite(near) and math.isfinite(far) and 0 < near < far):
        raise ValueError(f"the depth range needs 0 < near < far, got near {near}, far {far}")
    return near, far


class GDSceneModel(GDModel):
    """MVSplat-style per-pixel Gaussians + generative densification for scenes."""

    def __init__(self, cfg: SceneModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = SceneBackbone(cfg.backbone)
        self.densifier = DensifyPipeline(cfg.densify, backbone_dim=cfg.backbone.feature_dim)

    # ------------------------------------------------------------------ training forward
    def forward(
        self,
        images: Tensor,
        cameras: Sequence[Cameras],
        near: Tensor,
        far: Tensor,
        densify: bool = True,
        budget: int | None = None,
        drop_backbone_features: bool = False,
        detail: tuple[Tensor, Sequence[Cameras]] | None = None,
    ) -> list[SceneOutput]:
        """World-space forward for training.

        Args:
            images: (B, V, H, W, 3) context views in [0, 1] (H, W multiples of the
                backbone's stride times its window).
            cameras: B `Cameras` of V views each.
            near, far: (B,) depth ranges.
            densify: also run the densifier.
            budget: candidates per context view (default `cfg.train_candidates`).
            drop_backbone_features: give the densifier zeros instead of backbone
                features, so it also learns to densify splats that have none.
            detail: the same context views at a finer size for the densifier, images
                (B, V, S, S, 3) and B `Cameras` (None: `images` themselves).
        """
        out = self.backbone(images, cameras, near, far)
        d_images, d_cameras = detail if detail is not None else (images, cameras)
        results = []
        for b, (coarse, feats) in enumerate(zip(out.gaussians, out.features, strict=True)):
            dens = None
            if densify:
                if drop_backbone_features:
                    feats = torch.zeros_like(feats)
                k = (budget or self.cfg.train_candidates) * len(cameras[b])
                dens = self.densifier(
                    coarse, d_images[b], d_cameras[b], budget=k, backbone_feats=feats,
                    background=BLACK, variant=self.cfg.gradient_variant,
                )  # fmt: skip
            results.append(SceneOutput(coarse, out.depths[b], dens))
        return results

    # ------------------------------------------------------------------ inference
    def prepare_views(
        self, images: Tensor, cameras: Cameras, near: float, far: float
    ) -> tuple[Tensor, Cameras, float, float]:
        """Validate context views and bring them to the model: (V, H, W, 3|4) ->
        (V, S, S, 3) at S = `view_size` (resampled, cameras scaled to match; RGBA is
        composited on black).

        Raises:
            ValueError: fewer than 2 or more than `max_views` views, images that do not
                match the cameras, non-finite pixels, copies of one pose, a bad depth
                range, or a view that no other view overlaps.
        """
        if isinstance(cameras, Cameras) and not 2 <= len(cameras) <= self.max_views:
            raise ValueError(
                f"{self.name} reconstructs a scene from 2 to {self.max_views} context views "
                f"(two cameras that see the same part of it), got {len(cameras)}"
            )
        images, cameras = check_view_images(images, cameras)
        near, far = check_depth_range(near, far)
        check_baseline(cameras)
        overlap = view_overlap(cameras, near, far)
        overlap.fill_diagonal_(0.0)
        best = overlap.amax(dim=1)
        if bool((best < MIN_OVERLAP).any()):
            i = int(torch.argmin(best))
            raise ValueError(
                f"view {i} does not overlap any other view between depths {near:g} and "
                f"{far:g} (at most {100 * float(best[i]):.0f} % of it is seen by another "
                "camera): the scene model matches what two cameras both see; choose cameras "
                "that look at the same part of the scene"
            )
        images = images.clamp(0.0, 1.0)
        if images.shape[-1] == 4:
            images = images[..., :3] * images[..., 3:]
        images, cameras = resize_views(images.contiguous(), cameras, self.view_size)
        return images, cameras, near, far

    @torch.no_grad()
    def reconstruct(
        self,
        images: Tensor,
        cameras: Cameras,
        *,
        near: float,
        far: float,
        densify: bool = True,
        budget: int | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Reconstruction:
        """Per-pixel Gaussians of a scene from its context views, then densified.

        Args:
            images: (V, H, W, 3) RGB in [0, 1], or (V, H, W, 4) RGBA (on black).
            cameras: V world-space cameras (OpenCV, pixel intrinsics) of one image size.
            near, far: the depth range the scene lies in, in the cameras' units.
            densify: run generative densification (False: coarse only).
            budget: densification candidates per context view (default `cfg.candidates`).
            progress: called with (fraction done, stage message).
            cancel: set it to stop; `Cancelled` is raised at the next stage boundary.
        Returns:
            A `Reconstruction` in the cameras' world.
        """
        report = progress or (lambda f, m: None)
        times: dict[str, float] = {}
        start = t0 = time.perf_counter()
        check_cancel(cancel)
        report(0.0, "preparing views")
        images, cams, near, far = self.prepare_views(images, cameras, near, far)
        images = images.to(self.device)
        cams = cams.to(device=self.device, dtype=torch.float32)
        times["prepare"] = time.perf_counter() - t0
        check_cancel(cancel)

        report(0.1, "coarse Gaussians")
        t0 = time.perf_counter()
        self.eval()
        rng = torch.tensor([near], device=self.device), torch.tensor([far], device=self.device)
        small, small_cams = resize_views(images, cams, self.image_size)
        out = self.backbone(small[None], [small_cams], *rng)
        coarse, feats = out.gaussians[0], out.features[0]
        decoded = len(coarse)
        # Below 1/255 opacity a Gaussian never passes the rasteriser's alpha cut.
        keep = coarse.opacities >= 1.0 / 255.0
        coarse, feats = coarse[keep], feats[keep]
        times["backbone"] = time.perf_counter() - t0
        check_cancel(cancel)
        counts = {"decoded": decoded, "coarse": len(coarse)}
        if not densify or len(coarse) == 0:
            times["total"] = time.perf_counter() - start
            report(1.0, "done")
            return Reconstruction.coarse_only(coarse.to("cpu"), counts, times)

        report(0.5, "densifying")
        t0 = time.perf_counter()
        images, cams = resize_views(images, cams, self.detail_size)
        k = min((budget or self.cfg.candidates) * len(cams), len(coarse))
        selection = gradient_mask(
            coarse, images, cams, k=k, variant=self.cfg.gradient_variant, background=BLACK,
            mask_size=self.cfg.densify.mask_size,
        )  # fmt: skip
        times["select"] = time.perf_counter() - t0
        check_cancel(cancel)
        result = self.densifier(
            coarse, images, cams, select=selection.selected, backbone_feats=feats,
            background=BLACK, coarse_render=selection.scores,
        )  # fmt: skip
        times["densify"] = time.perf_counter() - t0 - times["select"]
        merged = result.merged
        counts.update(
            candidates=int(selection.selected.sum()),
            fine=len(result.fine.gaussians),
            final=len(merged.gaussians),
        )
        times["total"] = time.perf_counter() - start
        report(1.0, "done")
        return Reconstruction(
            merged.gaussians.to("cpu"), coarse.to("cpu"), merged.level.cpu(),
            merged.parent.cpu(), {"counts": counts, "seconds": times},
        )  # fmt: skip
