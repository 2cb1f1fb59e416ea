"""A small learned refinement of estimated foreground masks (issue 17).

`engine.masks.estimate_masks` finds the prop in photos with GrabCut seeded by the cameras'
geometry. Its outlines are off by a pixel or two where the prop's edge has little colour
contrast with the ground, and a two-pixel outline error costs a reconstruction 1.4-1.6 dB
(the prop is drawn against white). `MaskRefiner` is a U-Net of a few hundred thousand
parameters that reads a photo and its coarse mask and returns a corrected mask: its output
is a correction to the coarse mask's logit, so an untrained refiner returns the coarse mask.

It is trained on our own data only (`engine.mask_refiner_train`: the data generator's
photos of training props, whose alpha renders give the true masks) and ships as
`engine/assets/mask-refiner.safetensors` when it has been measured to help
(`bench/photos.py`); without that file `load_mask_refiner` returns None and masks stay as
estimated. Nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import ASSETS, load_weights

NAME = "mask-refiner"
"""The shipped weights' name: `engine/assets/mask-refiner.safetensors` (+ `.json`)."""

_EPS = 1e-3  # coarse masks are clamped into [eps, 1 - eps] before their logit


@dataclass(frozen=True)
class MaskRefinerConfig:
    """Shape of the refiner."""

    channels: tuple[int, ...] = (16, 32, 64, 96)
    """Feature channels at full resolution and after each halving (len - 1 halvings)."""
    cue: bool = False
    """Also read the estimate's `standing_cue` (how clearly each pixel stands above the
    ground the views share: a lamp shade the colour of the bricks behind it does, a shadow
    does not), as two channels: the cue and where it is known."""
    band: int = 8
    """The correction applies within this many pixels of the coarse mask's outline only:
    the refiner moves outlines and restores what the estimate cut near them; far from the
    outline (sky, ground, the prop's inside) the coarse mask stands."""

    @property
    def in_channels(self) -> int:
        """RGB, the coarse mask, and the cue's two channels when read."""
        return 6 if self.cue else 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MaskRefinerConfig:
        return cls(channels=tuple(int(c) for c in data["channels"]),
                   cue=bool(data.get("cue", False)), band=int(data.get("band", 8)))  # fmt: skip


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
    )  # fmt: skip


class MaskRefiner(nn.Module):
    """U-Net from (photo, coarse mask) to refined mask logits."""

    def __init__(self, cfg: MaskRefinerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MaskRefinerConfig()
        ch = self.cfg.channels
        self.down = nn.ModuleList([_block(self.cfg.in_channels, ch[0])])
        self.down.extend(_block(a, b) for a, b in zip(ch[:-1], ch[1:], strict=True))
        self.up = nn.ModuleList(_block(b + a, a) for a, b in zip(ch[:-1], ch[1:], strict=True))
        self.head = nn.Conv2d(ch[0], 1, 1)
        # Zero correction at the start: the refiner begins as the identity on the coarse mask.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        """Image sides must be a multiple of this (`refine_masks` pads to it)."""
        return 2 ** (len(self.cfg.channels) - 1)

    def forward(self, images: Tensor, masks: Tensor, cue: Tensor | None = None) -> Tensor:
        """Refined mask logits.

        Args:
            images: (B, 3, H, W) RGB in [0, 1]. masks: (B, 1, H, W) coarse masks in [0, 1].
                H and W are multiples of `multiple`.
            cue: (B, 1, H, W) `engine.masks.standing_cue` in [0, 1], NaN where unknown;
                None: unknown everywhere. Read only when `cfg.cue`.
        Returns:
            (B, 1, H, W) logits: the coarse mask's logit plus the learned correction within
            `cfg.band` pixels of its outline.
        """
        prior = torch.logit(masks.clamp(_EPS, 1.0 - _EPS))
        hard = (masks > 0.5).float()
        grown, shrunk = _square_max(hard, self.cfg.band), -_square_max(-hard, self.cfg.band)
        band = grown - shrunk  # 1 within `band` px of the outline (both sides), else 0
        x = [images * 2.0 - 1.0, masks * 2.0 - 1.0]
        if self.cfg.cue:
            if cue is None:
                cue = torch.full_like(masks, float("nan"))
            known = torch.isfinite(cue)
            x += [torch.where(known, cue * 2.0 - 1.0, 0.0), known.to(masks.dtype) * 2.0 - 1.0]
        x = torch.cat(x, 1)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in reversed(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return prior + band * self.head(x)


def _square_max(x: Tensor, r: int) -> Tensor:
    """(B, C, H, W) max over each pixel's (2r + 1)² window, as one max pool but separable:
    a column pass then a row pass, 2(2r + 1) comparisons a pixel instead of (2r + 1)²."""
    x = F.max_pool2d(x, (2 * r + 1, 1), stride=1, padding=(r, 0))
    return F.max_pool2d(x, (1, 2 * r + 1), stride=1, padding=(0, r))


def refine_masks(
    model: MaskRefiner, images: Tensor, masks: Tensor, cue: Tensor | None = None
) -> Tensor:
    """Refined masks of views.

    Args:
        images: (V, H, W, 3) RGB in [0, 1]. masks: (V, H, W) coarse masks in [0, 1].
        cue: (V, H, W) `engine.masks.standing_cue` (NaN: unknown), or None.
    Returns:
        (V, H, W) float32 masks in [0, 1].
    """
    if images.shape[:3] != masks.shape:
        raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} differ")
    v, h, w = masks.shape
    m = model.multiple
    ph, pw = (-h) % m, (-w) % m
    if cue is not None and cue.shape != masks.shape:
        raise ValueError(f"cue {tuple(cue.shape)} and masks {tuple(masks.shape)} differ")
    x = images.permute(0, 3, 1, 2).float()
    y = masks[:, None].float()
    c = None if cue is None else cue[:, None].float()
    if ph or pw:  # replicate the border: the pad is cut off again below
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y = F.pad(y, (0, pw, 0, ph), mode="replicate")
        c = None if c is None else F.pad(c, (0, pw, 0, ph), mode="replicate")
    param = next(model.parameters())
    with torch.no_grad():
        logits = model(x.to(param), y.to(param), None if c is None else c.to(param))
    return torch.sigmoid(logits[:, 0, :h, :w]).float().cpu()


def load_mask_refiner(path: str | os.PathLike | None = None) -> MaskRefiner | None:
    """The refiner in eval mode from `path`, or the shipped weights; None when `path` is
    None and no weights ship (masks are then used as estimated).

    Raises:
        WeightsNotFoundError: `path` is given and missing.
        ValueError: unreadable weights or a config that does not fit them.
    """
    file = Path(path) if path is not None else ASSETS / f"{NAME}.safetensors"
    if path is None and not file.is_file():
        return None
    state, meta = load_weights(file)
    config = meta.get("config")
    if not isinstance(config, dict) or "channels" not in config:
        raise ValueError(f"{file}: its config names no refiner channels")
    model = MaskRefiner(MaskRefinerConfig.from_dict(config))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{file}: weights do not fit the refiner ({err})") from None
    return model.eval()
