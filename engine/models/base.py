"""What the object and the scene model share: their config-backed sizes, where their
weights came from, the checks every view tensor passes before either reads it, and what
their `reconstruct` reports, returns and raises when cancelled."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..cameras import Cameras
from ..gaussians import Gaussians

Progress = Callable[[float, str], None]
"""Called with (fraction done in [0, 1], stage message)."""


class Cancelled(Exception):
    """The caller's cancel event was set; nothing was returned."""


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise `Cancelled` if `cancel` is set: called at each stage boundary."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


@dataclass
class Reconstruction:
    """Result of `reconstruct` / `densify`, in world coordinates.

    Attributes:
        gaussians: N final Gaussians: untouched coarse ones first (in order), then fine.
        coarse: the coarse set the final one was made from (after pruning).
        level: (N,) int64, 0 for coarse Gaussians, 1..L for fine ones.
        parent: (N,) int64 index into `coarse`.
        stats: "counts" and "seconds" (per stage) dictionaries.
    """

    gaussians: Gaussians
    coarse: Gaussians
    level: Tensor
    parent: Tensor
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coarse_only(
        cls, coarse: Gaussians, counts: dict[str, int], seconds: dict[str, float]
    ) -> Reconstruction:
        """The coarse set as the final one (no densification, or nothing to densify):
        every Gaussian level 0 and its own parent; `counts` gains "final"."""
        n = len(coarse)
        return cls(
            coarse, coarse, torch.zeros(n, dtype=torch.int64), torch.arange(n),
            {"counts": {**counts, "final": n}, "seconds": seconds},
        )  # fmt: skip


class GDModel(nn.Module):
    """Base of `GDObjectModel` and `GDSceneModel`: a backbone, a `DensifyPipeline` as
    `densifier`, and a config `cfg` with name, image_size, detail_size, max_views and
    densify."""

    cfg: Any

    def __init__(self) -> None:
        super().__init__()
        self.weights_path = None
        self.weights_sha256: str | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def config(self) -> Any:
        return self.cfg

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def detail_size(self) -> int:
        """Side of the square views the densifier reads."""
        return self.cfg.detail_size or self.cfg.image_size

    @property
    def view_size(self) -> int:
        """Side of the square views the model reads in full (backbone or densifier);
        `reconstruct` resamples larger views down to it, so give it views this size."""
        return max(self.cfg.image_size, self.detail_size)

    @property
    def max_views(self) -> int:
        return self.cfg.max_views

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def fine_per_candidate(self) -> float:
        """Fine Gaussians each candidate becomes (6.8 for R = [2, 4], c = 0.8; 4.64 for
        three levels of R = 2, c = 0.6)."""
        from ..gd.config import fine_count

        return fine_count(1000, self.cfg.densify) / 1000


def check_view_images(images: Any, cameras: Any) -> tuple[Tensor, Cameras]:
    """Images (V, H, W, 3|4) that match V `cameras`, as finite float32.

    Raises:
        ValueError: cameras that are not `Cameras`, a wrong shape, a count or size that
            differs from the cameras', NaN or infinite pixels (naming the view).
    """
    if not isinstance(images, Tensor):
        images = torch.as_tensor(images)
    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras must be engine.cameras.Cameras, got {type(cameras).__name__}")
    v = len(cameras)
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"images must be (V, H, W, 3) or (V, H, W, 4), got {tuple(images.shape)}")
    if images.shape[0] != v:
        raise ValueError(f"{images.shape[0]} images for {v} cameras")
    if (images.shape[2], images.shape[1]) != (cameras.width, cameras.height):
        raise ValueError(
            f"images are {images.shape[2]}x{images.shape[1]} but the cameras are "
            f"{cameras.width}x{cameras.height}"
        )
    images = images.to(torch.float32)
    if not bool(torch.isfinite(images).all()):
        bad = int(torch.nonzero(~torch.isfinite(images).flatten(1).all(1))[0])
        raise ValueError(f"image {bad} has NaN or infinite pixels")
    return images, cameras
