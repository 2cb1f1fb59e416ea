"""MVSplat-style scene backbone: posed context views -> one Gaussian per pixel.

    images (B, V, H, W, 3) + cameras (V per scene) + near, far (B,)
      -> CNN feature pyramid, one level a stride of 2                (B·V, C_k, H/2^k, W/2^k)
      -> transformer on the coarsest level (stride s = 4 for three levels, MVSplat's 1/4):
         window self-attention in each view, then cross-attention to the same window
         of the other views
      -> plane-sweep cost volume: each view's features against every other view's,
         warped onto D fronto-parallel planes between near and far (uniform in inverse
         depth), dot product / sqrt(C), averaged over the other views   (B, V, D, h, w)
      -> a small 2D U-Net refines [cost, features] into depth logits; softmax over D;
         the expected depth in inverse-depth space                          (B, V, h, w)
      -> a decoder climbs the pyramid to full resolution (skip connections, image,
         coarse depth) and heads give, per pixel: a depth correction, opacity, scale,
         rotation, SH and a feature for the densifier
      -> Gaussians: centre = camera centre + depth · ray, the ray scaled to unit camera z
         (the depth is planar, along the optical axis, as the scenes dataset stores it).

Any number of context views >= 2: the cost of a view averages its correlations with all
the others, and cross-attention reads all the others' tokens.

Geometry is computed, not learned (DESIGN.md §8: on two cores inductive bias beats
capacity): the plane sweep uses the cameras, and layers that correct the geometric
estimate (depth refinement, SH beyond DC) start at zero or near it, so an untrained
network already puts every Gaussian at the correlation's best depth with its pixel's colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras, rigid_inverse
from ..gaussians import MAX_SH_DEGREE, Gaussians, rgb_to_sh_dc
from ..gd.config import (
    CHILD_SAMPLES,
    SCENE_LEVELS,
    SMALL,
    DensifyConfig,
    ViewFeatureConfig,
)
from ..rotations import matrix_to_quaternion, normalize_quaternions, quaternion_multiply
from .config import ModelConfigBase, model_config_from_dict

__all__ = [
    "SCENE_PRESETS",
    "SCENE_SMALL",
    "SCENE_SMALL_DENSIFY",
    "SCENE_TINY",
    "SceneBackbone",
    "SceneBackboneConfig",
    "SceneBackboneOutput",
    "SceneModelConfig",
    "camera_tensors",
    "depth_candidates",
    "get_scene_config",
    "plane_sweep_cost",
    "unproject_depths",
]

SPACINGS = ("inverse", "linear")


# ---------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class SceneBackboneConfig:
    """Sizes of `SceneBackbone`.

    Attributes:
        channels: CNN widths, one per pyramid level: level 0 is full resolution, each next
            one halves it. The last level (stride `2 ** (len(channels) - 1)`, 4 for three
            levels as in MVSplat) carries the transformer and the cost volume; the others
            are the decoder's skip connections.
        heads: attention heads (must divide `channels[-1]`).
        blocks: transformer blocks, each self-attention, cross-view attention and an MLP.
        window: side, in coarsest-level cells, of the square windows attention runs in
            (odd blocks shift them by half a window, as Swin does); 0 = global attention
            over the whole view (affordable at 64² input: 16² tokens). The coarsest level
            must be a whole number of windows.
        mlp_ratio: hidden width of the transformer MLP over `channels[-1]`.
        depths: D, the plane-sweep depth candidates.
        spacing: "inverse" (candidates uniform in 1/depth between near and far, as MVSplat;
            nearby surfaces get the finer steps) or "linear" (uniform in depth). The
            expected depth is taken in the same space.
        refine_channels: width of the cost-refinement U-Net (twice that at its bottom).
        head_channels: width of the full-resolution features the Gaussian heads read.
        feature_dim: F, the per-Gaussian feature handed to the densifier.
        sh_degree: SH degree of the Gaussians (0..3); coefficients beyond DC start at zero.
        scale_prior: initial Gaussian scale (standard deviation) in pixel footprints, i.e.
            `scale_prior · depth / focal` metres.
        opacity_bias: initial opacity logit.
        depth_refine: the full-resolution head may move each pixel's depth off the
            up-sampled cost-volume estimate (starts at zero; clamped to [near, far]).
    """

    channels: tuple[int, ...] = (16, 32, 64)
    heads: int = 4
    blocks: int = 2
    window: int = 8
    mlp_ratio: int = 2
    depths: int = 32
    spacing: str = "inverse"
    refine_channels: int = 32
    head_channels: int = 32
    feature_dim: int = 32
    sh_degree: int = 1
    scale_prior: float = 1.0
    opacity_bias: float = 0.0
    depth_refine: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or min(self.channels) <= 0:
            raise ValueError(f"channels must be positive widths, got {self.channels}")
        if self.channels[-1] % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide channels[-1] ({self.channels[-1]})")
        if self.depths < 2:
            raise ValueError(f"depths (D) must be at least 2, got {self.depths}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if not 0 <= self.sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {self.sh_degree}")
        if self.window < 0 or self.blocks < 0 or self.scale_prior <= 0:
            raise ValueError("window and blocks must be >= 0 and scale_prior > 0")

    @property
    def stride(self) -> int:
        """Pixels per cell of the coarsest level (the cost volume's resolution)."""
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True, kw_only=True)
class SceneModelConfig(ModelConfigBase):
    """The scene model: `SceneBackbone` and its generative densifier (`gd_scene.py`); the
    fields are `ModelConfigBase`'s, with `backbone` a `SceneBackboneConfig`."""

    name: str = "scene-small"
    image_size: int = 256
    """Square input resolution the model reads context views at (`GDSceneModel.reconstruct`
    resamples views to it; training may read smaller ones: the backbone is convolutional
    and its geometry is computed)."""
    max_views: int = 4
    """Most context views accepted (the cost grows with V²)."""
    backbone: SceneBackboneConfig = field(default_factory=SceneBackboneConfig)
    densify: DensifyConfig = field(default_factory=lambda: SCENE_SMALL_DENSIFY)
    """The densifier (`candidates` per context view: `candidates_per_view`)."""
    # K = 1000 a view, as in training: on 16 validation scenes K = 1000 / 2000 / 4000 / 8000
    # gave fine - coarse +0.06 / +0.05 / -0.08 / -0.31 dB (docs/eval/scene-small).
    candidates: int = 1000
    """Inference K per context view."""
    train_candidates: int = 1000
    """K per context view while training."""

    def __post_init__(self) -> None:
        if not self.densify.candidates_per_view:
            raise ValueError("the scene densifier takes candidates per view")
        if self.candidates < 1 or self.train_candidates < 1:
            raise ValueError("candidates and train_candidates must be positive")

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data, for a weights file."""
        data = asdict(self)
        data["backbone"]["channels"] = list(self.backbone.channels)
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SceneModelConfig:
        """Inverse of `to_dict`. Raises ValueError on unknown keys or malformed values."""
        if not isinstance(data, dict) or not isinstance(data.get("backbone", {}), dict):
            raise ValueError("scene model config must be a JSON object with a backbone object")
        # Either may be left out: then the defaults.
        data = {"backbone": {}, "densify": asdict(SCENE_SMALL_DENSIFY), **data}
        return model_config_from_dict(SceneModelConfig, SceneBackboneConfig, data, "scene")


SCENE_SMALL_DENSIFY = SMALL.with_(
    **SCENE_LEVELS,
    candidates=2000,
    channels=(32, 32, 32),
    heads=(4, 4, 4),
    depths=(1, 1, 1),
    offset_scale=1.0,
    residual=True,
    sh_degree=1,
    child_samples=CHILD_SAMPLES,
    color_gate=True,
    mask_size=128,
)
"""CPU-sized scene densifier: 4.64 fine Gaussians a candidate (3 levels, R = 2, c = 0.6)."""


SCENE_TINY = SceneModelConfig(
    name="scene-tiny",
    image_size=64,
    backbone=SceneBackboneConfig(
        channels=(8, 16, 16), heads=2, blocks=1, window=0, depths=8, refine_channels=8,
        head_channels=16, feature_dim=8,
    ),
    densify=SCENE_SMALL_DENSIFY.with_(
        channels=(16, 16, 16), heads=(2, 2, 2), patch_size=16, mask_size=32,
        view=ViewFeatureConfig(dim=16, heads=2),
    ),
    candidates=64,
    train_candidates=32,
)  # fmt: skip
"""For tests and plumbing: global attention at 64² (16² tokens), D = 8."""

SCENE_SMALL = SceneModelConfig(
    name="scene-small",
    image_size=256,
    backbone=SceneBackboneConfig(
        channels=(24, 48, 96), heads=4, blocks=2, window=16, depths=32, refine_channels=48,
        head_channels=32, feature_dim=32, sh_degree=1,
    ),
)  # fmt: skip
"""Trainable on 2 CPU cores: 256² views, 64² cost volume of D = 32, attention in 16²
windows (64 px of the image; the 4 windows a side of MVSplat's 2x2 split at 1/4 of 256²
would be 32² tokens, four times the cost)."""

SCENE_PRESETS: dict[str, SceneModelConfig] = {c.name: c for c in (SCENE_TINY, SCENE_SMALL)}


def get_scene_config(name: str) -> SceneModelConfig:
    """A scene preset by name ("scene-tiny", "scene-small")."""
    try:
        return SCENE_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown scene model {name!r}; expected one of {list(SCENE_PRESETS)}"
        ) from None


@dataclass
class SceneBackboneOutput:
    """Per-pixel Gaussians of a batch of scenes.

    Attributes:
        gaussians: B world-space `Gaussians`, V·H·W each, ordered (view, row, column).
        depths: (B, V, H, W) planar depth of every pixel's Gaussian, metres.
        features: (B, V·H·W, F) per-Gaussian features for the densifier, same order.
        probabilities: (B, V, D, h, w) softmax over the depth candidates at the cost
            volume's resolution (h = H / stride).
        candidates: (B, D) the candidates' depths, near first.
    """

    gaussians: list[Gaussians]
    depths: Tensor
    features: Tensor
    probabilities: Tensor
    candidates: Tensor


# ---------------------------------------------------------------------------- geometry
def camera_tensors(
    cameras: Sequence[Cameras], dtype: torch.dtype | None = None, device: Any = None
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Stack B batches of V cameras each.

    Returns:
        world_to_camera (B, V, 4, 4), intrinsics (B, V, 4) as fx, fy, cx, cy, and the
        shared image size (W, H).
    Raises:
        ValueError: no cameras, batches of different lengths or of different image sizes.
    """
    if not cameras:
        raise ValueError("no cameras")
    first = cameras[0]
    for b, cams in enumerate(cameras):
        if len(cams) != len(first):
            raise ValueError(f"scene {b} has {len(cams)} cameras, scene 0 has {len(first)}")
        if (cams.width, cams.height) != (first.width, first.height):
            raise ValueError(
                f"scene {b}'s cameras are {cams.width}x{cams.height} pixels, scene 0's "
                f"{first.width}x{first.height}; all views must share one size"
            )
    dtype = dtype or first.dtype
    device = device if device is not None else first.device
    cams = [c.to(device, dtype) for c in cameras]
    w2c = torch.stack([c.world_to_camera for c in cams])
    k = torch.stack([torch.stack([c.fx, c.fy, c.cx, c.cy], -1) for c in cams])
    return w2c, k, (first.width, first.height)


def depth_candidates(near: Tensor, far: Tensor, count: int, spacing: str = "inverse") -> Tensor:
    """D depths from near to far, uniform in inverse depth ("inverse") or depth ("linear").

    Args:
        near, far: (B,) positive, near < far.
    Returns:
        (B, D) depths, near first.
    """
    t = torch.linspace(0, 1, count, dtype=near.dtype, device=near.device)
    return depth_from_unit(t[None], near[:, None], far[:, None], spacing)


def depth_from_unit(t: Tensor, near: Tensor, far: Tensor, spacing: str) -> Tensor:
    """Depth of a position t in [0, 1] of the candidate range (0: near, 1: far), in the
    spacing's own space (linear in 1/depth for "inverse"). near, far broadcast with t."""
    if spacing == "inverse":
        return 1.0 / ((1 - t) / near + t / far)
    return (1 - t) * near + t * far


def pixel_rays(intrinsics: Tensor, size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Camera-space rays through the centres of a grid of cells over the image.

    A grid of h x w cells over a W x H image has cell (i, j) centred at continuous pixel
    ((j + 0.5) W / w, (i + 0.5) H / h) (DESIGN §4: pixel edges at integers), so the full
    resolution grid gives the pixel centres (u + 0.5, v + 0.5).

    Args:
        intrinsics: (..., 4) fx, fy, cx, cy.
        size: the image's (W, H); grid: (h, w).
    Returns:
        (..., h, w, 3) directions with z = 1 (a point at planar depth d is d · ray).
    """
    (width, height), (h, w) = size, grid
    opts = {"dtype": intrinsics.dtype, "device": intrinsics.device}
    v = (torch.arange(h, **opts) + 0.5) * (height / h)
    u = (torch.arange(w, **opts) + 0.5) * (width / w)
    fx, fy, cx, cy = (intrinsics[..., i, None, None] for i in range(4))
    x = (u[None, :] - cx) / fx
    y = (v[:, None] - cy) / fy
    x, y = torch.broadcast_tensors(x, y)
    return torch.stack([x, y, torch.ones_like(x)], -1)


def unproject_depths(depths: Tensor, cameras: Sequence[Cameras] | Cameras) -> Tensor:
    """World positions of every pixel centre at its planar depth.

    Args:
        depths: (B, V, H, W) depth along each camera's optical axis (camera z), or
            (V, H, W) with one `Cameras`.
        cameras: B batches of V cameras of W x H (or one batch).
    Returns:
        (B, V, H, W, 3) (or (V, H, W, 3)) world points: camera centre + depth · ray.
    """
    if isinstance(cameras, Cameras):
        return unproject_depths(depths[None], [cameras])[0]
    w2c, k, size = camera_tensors(cameras, depths.dtype, depths.device)
    return _unproject(depths, w2c, k, size)


def _unproject(depths: Tensor, w2c: Tensor, k: Tensor, size: tuple[int, int]) -> Tensor:
    rays = pixel_rays(k, size, depths.shape[-2:])  # (B, V, H, W, 3)
    local = rays * depths[..., None]
    c2w_rot = w2c[..., :3, :3].transpose(-1, -2)  # rigid: the inverse rotation is Rᵀ
    centres = -(c2w_rot @ w2c[..., :3, 3:4])[..., 0]  # (B, V, 3)
    return torch.einsum("bvij,bvhwj->bvhwi", c2w_rot, local) + centres[:, :, None, None]


def plane_sweep_cost(
    features: Tensor, cameras: Sequence[Cameras], candidates: Tensor, min_depth: float = 1e-6
) -> Tensor:
    """Plane-sweep correlation of every view against all the others.

    For view i, each cell centre is lifted onto the D fronto-parallel planes of view i
    (planar depths `candidates`), projected into every other view j and j's features are
    sampled there (bilinear, zero outside the image or behind the camera); the cost is
    the dot product with i's own feature over sqrt(C), averaged over j.

    Args:
        features: (B, V, C, h, w) feature maps covering the cameras' whole images (any
            resolution: a cell of an h x w map over a W x H image spans W/w x H/h pixels).
        cameras: B batches of V >= 2 cameras.
        candidates: (B, D) planar depths.
        min_depth: points nearer to a camera than this count as behind it.
    Returns:
        (B, V, D, h, w) costs.
    """
    b, v, c, h, w = features.shape
    if v < 2:
        raise ValueError(f"the plane sweep needs at least 2 views, got {v}")
    w2c, k, size = camera_tensors(cameras, features.dtype, features.device)
    # Relative transforms i -> j: Y_j = M_ij · P_i + t_ij for a point P_i in camera i.
    c2w = rigid_inverse(w2c)
    rel = w2c[:, None] @ c2w[:, :, None]  # (B, Vi, Vj, 4, 4)
    rays = pixel_rays(k, size, (h, w)).reshape(b, v, h * w, 3)
    directions = torch.einsum("bijxy,bipy->bijpx", rel[..., :3, :3], rays)  # (B,Vi,Vj,hw,3)
    offsets = rel[..., :3, 3]  # (B, Vi, Vj, 3)
    fx, fy, cx, cy = k.unbind(-1)  # (B, V) each
    scale = 1.0 / math.sqrt(c)
    cost = features.new_zeros(b, v, candidates.shape[1], h, w)
    for i in range(v):
        for j in range(v):
            if i == j:
                continue
            # (B, D, hw, 3) points of view i's planes, in camera j.
            pts = candidates[:, :, None, None] * directions[:, i, j, None]
            pts = pts + offsets[:, i, j, None, None]
            z = pts[..., 2]
            safe = z.clamp_min(min_depth)
            u = fx[:, j, None, None] * pts[..., 0] / safe + cx[:, j, None, None]
            vv = fy[:, j, None, None] * pts[..., 1] / safe + cy[:, j, None, None]
            # grid_sample's align_corners=False puts -1 / +1 at the image's outer edges,
            # which is exactly our continuous pixel coordinates over W and H.
            grid = torch.stack([2 * u / size[0] - 1, 2 * vv / size[1] - 1], -1)
            grid = torch.where((z > min_depth)[..., None], grid, grid.new_full((), -2.0))
            d = candidates.shape[1]
            warped = F.grid_sample(
                features[:, j], grid.reshape(b, d * h, w, 2), mode="bilinear",
                padding_mode="zeros", align_corners=False,
            ).reshape(b, c, d, h, w)  # fmt: skip
            cost[:, i] += (warped * features[:, i, :, None]).sum(1) * scale
    return cost / (v - 1)


# ---------------------------------------------------------------------------- layers
def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, GELU, 3x3 conv) twice. (N, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvBlock(nn.Sequential):
    """3x3 conv from `cin` to `cout` (optionally strided), then a residual block."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1), ResBlock(cout))


class Encoder(nn.Module):
    """CNN pyramid: images (N, 3, H, W) -> one map per level, level k (N, C_k, H/2^k, W/2^k)."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        cins = (3,) + channels[:-1]
        self.levels = nn.ModuleList(
            ConvBlock(cin, cout, 1 if k == 0 else 2)
            for k, (cin, cout) in enumerate(zip(cins, channels, strict=True))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


class Attention(nn.Module):
    """Multi-head attention of queries (N, L, C) over a context (N, S, C) -> (N, L, C)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        n, length, dim = x.shape
        split = lambda t: t.reshape(n, -1, self.heads, dim // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.q(x))
        k, v = (split(t) for t in self.kv(context).chunk(2, -1))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(n, length, dim))


class ViewTransformerBlock(nn.Module):
    """Window self-attention, cross-attention to the other views' same window, MLP.

    Tokens come as windows (B, V, n, L, C): n windows of L tokens in each of V views.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(3))
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        b, v, n, length, c = x.shape
        y = self.norm_self(x).reshape(-1, length, c)
        x = x + self.self_attn(y, y).reshape(x.shape)
        y = self.norm_cross(x)
        # Context of view i: the tokens of the same window in every other view.
        others = torch.tensor([[j for j in range(v) if j != i] for i in range(v)], device=x.device)
        context = y.permute(0, 2, 1, 3, 4)[:, :, others]  # (B, n, V, V-1, L, C)
        context = context.permute(0, 2, 1, 3, 4, 5).reshape(-1, (v - 1) * length, c)
        x = x + self.cross_attn(y.reshape(-1, length, c), context).reshape(x.shape)
        return x + self.mlp(self.norm_mlp(x))


class ViewTransformer(nn.Module):
    """Transformer over the coarsest features of all views: (B, V, C, h, w) -> same.

    Odd blocks shift the windows by half a window (a cyclic roll, as Swin does, but
    without masking the wrapped border windows: cheap, and geometry comes from the cost
    volume, not from attention). No absolute position encoding is added: the CNN features
    carry the local layout, and one added to the features the plane sweep correlates
    would favour the candidate that maps each cell onto the same cell of the other view.
    """

    def __init__(self, dim: int, heads: int, blocks: int, window: int, mlp_ratio: int) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            ViewTransformerBlock(dim, heads, mlp_ratio) for _ in range(blocks)
        )

    def forward(self, x: Tensor) -> Tensor:
        b, v, c, h, w = x.shape
        wh, ww = (h, w) if self.window == 0 else (self.window, self.window)
        x = x.permute(0, 1, 3, 4, 2)  # (B, V, h, w, C)
        for index, block in enumerate(self.blocks):
            shift = (wh // 2, ww // 2) if index % 2 and self.window else (0, 0)
            if shift != (0, 0):
                x = x.roll((-shift[0], -shift[1]), dims=(2, 3))
            win = x.reshape(b, v, h // wh, wh, w // ww, ww, c).transpose(3, 4)
            win = block(win.reshape(b, v, -1, wh * ww, c))
            x = win.reshape(b, v, h // wh, w // ww, wh, ww, c).transpose(3, 4).reshape(x.shape)
            if shift != (0, 0):
                x = x.roll(shift, dims=(2, 3))
        return x.permute(0, 1, 4, 2, 3)


class CostRefiner(nn.Module):
    """Two-scale U-Net: [cost (D), features (C)] (N, D + C, h, w) -> depth logits (N, D, h, w).

    The output is added to the raw cost (times a learned gain), and its last layer starts
    near zero, so an untrained refiner passes the correlation through.
    """

    def __init__(self, depths: int, channels: int, width: int) -> None:
        super().__init__()
        self.inp = ConvBlock(depths + channels, width)
        self.down = ConvBlock(width, 2 * width, stride=2)
        self.up = ConvBlock(3 * width, width)
        self.out = nn.Conv2d(width, depths, 3, padding=1)
        # Small, not zero: the layers before it still get gradients at the first step.
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, cost: Tensor, features: Tensor) -> Tensor:
        x = self.inp(torch.cat([cost, features], 1))
        low = F.interpolate(self.down(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.gain * cost + self.out(self.up(torch.cat([x, low], 1)))


# ---------------------------------------------------------------------------- backbone
class SceneBackbone(nn.Module):
    """Posed context views of a scene -> one world-space Gaussian per pixel (MVSplat).

    forward(images (B, V, H, W, 3) in [0, 1], cameras: B `Cameras` of V views of W x H,
    near (B,), far (B,)) -> `SceneBackboneOutput`. H and W must be multiples of the
    coarsest level's stride (times `window` when windows are used).
    """

    def __init__(self, config: SceneBackboneConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or SceneBackboneConfig()
        top, d = cfg.channels[-1], cfg.depths
        self.encoder = Encoder(cfg.channels)
        self.transformer = ViewTransformer(top, cfg.heads, cfg.blocks, cfg.window, cfg.mlp_ratio)
        self.refiner = CostRefiner(d, top, cfg.refine_channels)
        # Decoder: coarsest level [features, probabilities, depth] then up the pyramid,
        # each level joined by the encoder's map of that level.
        self.decode_top = ConvBlock(top + d + 1, top)
        ups = [ConvBlock(cfg.channels[k + 1] + cfg.channels[k], cfg.channels[k])
               for k in reversed(range(len(cfg.channels) - 1))]  # fmt: skip
        self.decode_up = nn.ModuleList(ups)
        self.decode_full = nn.Sequential(
            nn.Conv2d(cfg.channels[0] + 3 + 1, cfg.head_channels, 3, padding=1), nn.GELU()
        )
        sh_count = 3 * (cfg.sh_degree + 1) ** 2
        widths = {"depth": 1, "opacity": 1, "scale": 3, "rotation": 4, "sh": sh_count,
                  "feature": cfg.feature_dim}  # fmt: skip
        self.heads = nn.ModuleDict(
            {name: nn.Conv2d(cfg.head_channels, n, 1) for name, n in widths.items()}
        )
        # Corrections to the geometric and photometric estimates start at zero: the
        # depth correction, and the SH (DC is added to the pixel's own colour).
        for name in ("depth", "sh"):
            nn.init.zeros_(self.heads[name].weight)
            nn.init.zeros_(self.heads[name].bias)
        nn.init.constant_(self.heads["opacity"].bias, cfg.opacity_bias)
        nn.init.zeros_(self.heads["scale"].bias)
        with torch.no_grad():  # identity rotation (w = 1) plus a little noise
            self.heads["rotation"].weight.mul_(0.1)
            self.heads["rotation"].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def check_inputs(
        self, images: Tensor, cameras: Sequence[Cameras], near: Tensor, far: Tensor
    ) -> None:
        """Raise ValueError with a plain message for input the backbone cannot use."""
        if images.ndim != 5 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, V, H, W, 3), got {tuple(images.shape)}")
        b, v, h, w, _ = images.shape
        if v < 2:
            raise ValueError(f"the scene backbone needs at least 2 context views, got {v}")
        if isinstance(cameras, Cameras) or len(cameras) != b:
            raise ValueError(f"cameras must be a list of {b} Cameras (one per scene)")
        for index, cams in enumerate(cameras):
            if len(cams) != v:
                raise ValueError(f"scene {index} has {v} views but {len(cams)} cameras")
            if (cams.width, cams.height) != (w, h):
                raise ValueError(
                    f"scene {index}'s cameras are {cams.width}x{cams.height} pixels but its "
                    f"views are {w}x{h}; every view and camera must share one size"
                )
        step = self.config.stride * max(1, self.config.window)
        if h % step or w % step:
            raise ValueError(
                f"views of {w}x{h} pixels: width and height must be multiples of {step} "
                f"(stride {self.config.stride} x window {max(1, self.config.window)}); resize them"
            )
        for name, value in (("near", near), ("far", far)):
            if not isinstance(value, Tensor) or tuple(value.shape) != (b,):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must be a tensor of shape ({b},), got {shape}")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} must be finite")
        if not bool((near > 0).all()) or not bool((near < far).all()):
            raise ValueError(
                "needs 0 < near < far for every scene, got "
                f"near {near.tolist()}, far {far.tolist()}"
            )

    def forward(
        self, images: Tensor, cameras: Sequence[Cameras], near: Tensor, far: Tensor
    ) -> SceneBackboneOutput:
        """Per-pixel Gaussians of B scenes.

        Args:
            images: (B, V, H, W, 3) RGB in [0, 1], V >= 2 context views.
            cameras: B `Cameras` of V views each, W x H pixels (world_to_camera OpenCV).
            near, far: (B,) the scenes' depth ranges, 0 < near < far.
        Returns:
            `SceneBackboneOutput`: B Gaussians of V·H·W, depths (B, V, H, W), features
            (B, V·H·W, F), depth probabilities (B, V, D, h, w), candidates (B, D).
        Raises:
            ValueError: fewer than 2 views, cameras that do not match the views (count or
                size), sizes not a multiple of the stride, near >= far or near <= 0.
        """
        self.check_inputs(images, cameras, near, far)
        cfg = self.config
        b, v, h, w, _ = images.shape
        near, far = near.to(images), far.to(images)
        w2c, k, size = camera_tensors(cameras, images.dtype, images.device)

        x = images.permute(0, 1, 4, 2, 3).reshape(b * v, 3, h, w)
        pyramid = self.encoder(x * 2 - 1)
        top = pyramid[-1]
        hc, wc = top.shape[-2:]
        feats = self.transformer(top.reshape(b, v, -1, hc, wc))  # (B, V, C, h, w)

        candidates = depth_candidates(near, far, cfg.depths, cfg.spacing)  # (B, D)
        cost = plane_sweep_cost(feats, cameras, candidates).reshape(b * v, cfg.depths, hc, wc)
        flat = feats.reshape(b * v, -1, hc, wc)
        probs = self.refiner(cost, flat).softmax(1)
        # Expected position in the candidate range, in the spacing's own space
        # (inverse depth for "inverse"): t in [0, 1], 0 at near.
        steps = torch.linspace(0, 1, cfg.depths, dtype=images.dtype, device=images.device)
        t = (probs * steps[:, None, None]).sum(1, keepdim=True)

        y = self.decode_top(torch.cat([flat, probs, t], 1))
        for up, skip in zip(self.decode_up, reversed(pyramid[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], 1))
        t_full = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        y = self.decode_full(torch.cat([y, x * 2 - 1, t_full], 1))
        out = {name: head(y) for name, head in self.heads.items()}

        if cfg.depth_refine:
            t_full = (t_full + out["depth"]).clamp(0, 1)
        per_view = lambda value: value.reshape(b, v, *value.shape[1:])  # noqa: E731
        t_full = per_view(t_full)[:, :, 0]  # (B, V, H, W)
        depths = depth_from_unit(
            t_full, near[:, None, None, None], far[:, None, None, None], cfg.spacing
        )
        gaussians = self._gaussians(
            images, depths, w2c, k, size, {n: per_view(o) for n, o in out.items()}
        )
        features = per_view(out["feature"]).permute(0, 1, 3, 4, 2).reshape(b, v * h * w, -1)
        return SceneBackboneOutput(gaussians, depths, features, per_view(probs), candidates)

    def _gaussians(
        self,
        images: Tensor,
        depths: Tensor,
        w2c: Tensor,
        k: Tensor,
        size: tuple[int, int],
        out: dict[str, Tensor],
    ) -> list[Gaussians]:
        """Gaussians from the heads' maps `out` (each (B, V, n, H, W)) and depths (B, V, H, W)."""
        cfg = self.config
        b, v, h, w = depths.shape
        flat = lambda t: t.permute(0, 1, 3, 4, 2).reshape(b, v * h * w, -1)  # noqa: E731
        means = _unproject(depths, w2c, k, size).reshape(b, -1, 3)
        # A pixel's footprint at its depth, so the initial scale is `scale_prior` pixels
        # wide from the view it came from whatever the scene's units.
        focal = (k[..., 0] + k[..., 1]) / 2  # (B, V)
        footprint = (depths / focal[:, :, None, None]).reshape(b, -1, 1)
        raw_scale = flat(out["scale"])
        log_scales = torch.log(footprint * cfg.scale_prior) + 3 * torch.tanh(raw_scale / 3)
        # Rotations are predicted in the camera's frame and turned into the world's, so
        # the same surface seen by another camera gets the same answer.
        c2w_quat = matrix_to_quaternion(w2c[..., :3, :3].transpose(-1, -2))  # (B, V, 4)
        quats = quaternion_multiply(
            c2w_quat[:, :, None].expand(b, v, h * w, 4).reshape(b, -1, 4),
            normalize_quaternions(flat(out["rotation"])),
        )
        opacity = flat(out["opacity"])[..., 0]
        sh = flat(out["sh"]).reshape(b, v * h * w, -1, 3)
        # DC: the pixel's own colour plus a learned correction.
        colours = images.reshape(b, v * h * w, 3)
        sh = torch.cat([sh[:, :, :1] + rgb_to_sh_dc(colours)[:, :, None], sh[:, :, 1:]], 2)
        return [
            Gaussians.unchecked(means[i], log_scales[i], quats[i], opacity[i], sh[i])
            for i in range(b)
        ]
