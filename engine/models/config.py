"""Configurations of the object model: backbone + densifier + what the model expects.

Frozen dataclasses, written next to weights as JSON (`to_dict` / `from_dict`), so a
weights file always says what network it belongs to. A weights file is data from users and
downloads: nothing read from it may name code to import or run (DESIGN.md §4), so the one
field that did, `BackboneConfig.dino_repo`, is never written and refused when read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Self, TypeVar

from ..gd.config import (
    CHILD_SAMPLES,
    SMALL,
    DensifyConfig,
    ViewFeatureConfig,
    densify_config_from_dict,
)

DINO_MODELS = frozenset(
    {
        *(f"dinov2_vit{size}14{reg}" for size in "sblg" for reg in ("", "_reg")),
        *(f"dino_vit{size}{patch}" for size in "sb" for patch in (8, 16)),
    }
)
"""The torch hub entry points a weights file may name for the "dino" encoder: DINOv2's and
DINO's ViTs. The name is looked up in a hub checkout that the person running the code
chose (`load_model(..., dino_repo=...)`), so a file can pick among these and nothing else."""


class UnsafeConfigError(ValueError):
    """A config read from a file names code or a path to import (e.g. a torch hub
    checkout); such things come only from the person running the code, never a file."""


@dataclass(frozen=True)
class BackboneConfig:
    """LaRa-style backbone sizes (`object_backbone.py`).

    Attributes:
        encoder: "cnn" (trained from scratch) or "dino" (a local DINO ViT checkout).
        dino_repo: the local torch hub checkout for "dino", imported when the backbone is
            built; set only in Python or by `load_model(..., dino_repo=...)`, never
            written to or read from a weights file (`to_dict` blanks it).
        dino_model: the hub entry point for "dino" (from a file: one of `DINO_MODELS`).
        image_channels: encoder output width.
        volume_channels: feature-volume width D.
        heads: heads of the voxel-to-view cross-attention.
        resolution: feature-volume side (voxels).
        extent: the volume spans [-extent, extent]³ in model units.
        upsample: Gaussian volume = resolution · upsample per side.
        gaussian_channels: width of the up-sampled Gaussian volume.
        gaussians_per_voxel: Gaussians decoded per Gaussian-volume voxel.
        feature_dim: per-Gaussian feature handed to the densifier.
        sh_degree: SH degree of the coarse Gaussians (>= 1).
        mid_blocks, refine_blocks: 3D residual blocks at half and full resolution.
        pos_frequencies: Fourier frequencies of the voxel query's position encoding.
        offset_range: Gaussian centres move at most this many voxels from their voxel.
        scale_prior: initial scale, in voxels.
        opacity_bias: initial opacity logit.
        prune_opacity: inference drops coarse Gaussians at or below this opacity.
        silhouette: read the input alphas (`silhouette.py`): the alpha under each voxel
            in each view joins its view token, the soft visual hull joins the volume,
            and decoded opacities are gated by the hull (nothing renders where an input
            view shows background). Views without alpha make it a no-op.
        gate_dilation: pixels (at `image_size`) the silhouettes are dilated by for the
            opacity gate, so soft or slightly wrong mask edges do not cut the prop.
        photo_volume: a second, finer look at the views (`photo_volume.py`): every voxel of
            the Gaussian volume (resolution · upsample per side, not the coarser feature
            volume) samples the views' pixels and encoder features, and their mean and
            variance over the views that see it inside their silhouettes (agreement means
            surface, and the mean is its colour) enter the Gaussian volume through a
            zero-initialised MLP, so weights trained without it start unchanged.
        view_colours: colour the decoded Gaussians from the views (`view_colours.py`): a
            Gaussian's DC colour becomes the mean of the input pixels under its centre
            over the views that see it (a soft depth test against a render of the decoded
            set), where any view sees it; unseen Gaussians keep the network's colour, and
            the higher SH bands are the network's. No parameters: weights trained without
            it load unchanged.
        view_colour_tolerance: that depth test's tolerance, in Gaussian-volume voxels.
    """

    encoder: str = "cnn"
    dino_repo: str = ""
    dino_model: str = "dinov2_vits14"
    image_channels: int = 32
    volume_channels: int = 48
    heads: int = 4
    resolution: int = 16
    extent: float = 0.7
    upsample: int = 2
    gaussian_channels: int = 32
    gaussians_per_voxel: int = 1
    feature_dim: int = 16
    sh_degree: int = 1
    mid_blocks: int = 1
    refine_blocks: int = 1
    pos_frequencies: int = 6
    offset_range: float = 1.0
    scale_prior: float = 0.5
    opacity_bias: float = -4.0
    prune_opacity: float = 0.005
    silhouette: bool = False
    gate_dilation: int = 2
    photo_volume: bool = False
    view_colours: bool = False
    view_colour_tolerance: float = 2.0

    def __post_init__(self) -> None:
        if self.sh_degree < 1:
            raise ValueError("the object backbone emits SH degree >= 1")
        if self.volume_channels % self.heads:
            raise ValueError("volume_channels must be divisible by heads")
        if self.resolution % 2:
            raise ValueError("resolution must be even (one down-sampling stage)")
        for name in ("image_channels", "volume_channels", "gaussian_channels"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8 (GroupNorm groups)")


@dataclass(frozen=True, kw_only=True)
class ModelConfigBase:
    """The fields the object model's config (`ObjectModelConfig`) and the scene model's
    (`engine.models.scene_backbone.SceneModelConfig`) share, in the order a weights file's
    config lists them; each of those declares its own defaults."""

    name: str
    """Preset name."""
    image_size: int
    """Square input resolution the backbone reads its views at."""
    detail_size: int = 0
    """Square resolution of the views the densifier reads (gradient mask, view features,
    the children's own samples); 0: `image_size`. Finer than the backbone's input, it shows
    the fine Gaussians detail the coarse ones were made without."""
    max_views: int
    """Most input views accepted."""
    backbone: Any
    """The backbone's config (a `BackboneConfig` or a `SceneBackboneConfig`)."""
    densify: DensifyConfig
    """The generative densifier's config."""
    candidates: int
    """Default densification budget K at inference."""
    train_candidates: int
    """K while training (smaller renders, faster steps)."""
    gradient_variant: str = "abs"
    """Candidate scores: "abs" (AbsGS) or "plain"."""

    def with_(self, **changes: Any) -> Self:
        """A copy with `changes` (`dataclasses.replace`)."""
        return replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class ObjectModelConfig(ModelConfigBase):
    """The whole object model (the fields: `ModelConfigBase`)."""

    name: str = "object-small"
    image_size: int = 128
    max_views: int = 8
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    densify: DensifyConfig = SMALL
    candidates: int = 2000
    train_candidates: int = 2000

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data, for a weights file: `backbone.dino_repo` is
        blanked (a path on this machine, and code that `from_dict` refuses to import)."""
        data = asdict(self)
        data["backbone"]["dino_repo"] = ""
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ObjectModelConfig:
        """Inverse of `to_dict`, for configs read from files.

        Raises:
            UnsafeConfigError: the config names code to import: a `backbone.dino_repo`,
                or a `backbone.dino_model` outside `DINO_MODELS`.
            ValueError: unknown keys (a newer weights file) or malformed values.
        """
        if not isinstance(data, dict):
            raise ValueError(
                f"object model config must be a JSON object, not {type(data).__name__}"
            )
        _refuse_code(data.get("backbone"))
        return model_config_from_dict(ObjectModelConfig, BackboneConfig, data, "object")


ModelConfig = TypeVar("ModelConfig")


def model_config_from_dict(
    cls: type[ModelConfig], backbone_cls: type, data: dict[str, Any], kind: str
) -> ModelConfig:
    """`cls(**data)` with its nested `backbone` (a `backbone_cls`) and `densify` (a
    `DensifyConfig`) rebuilt from their dicts: the object and the scene model configs'
    `from_dict` past their own checks of what `data` is.

    Raises:
        ValueError: keys that are not fields of `cls` (a newer weights file), a missing
            `backbone` or `densify`, or malformed values; `kind` ("object", "scene") names
            the config in the message.
    """
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {kind} model config keys {sorted(unknown)}")
    data = dict(data)
    try:
        backbone = backbone_cls(**data.pop("backbone"))
        densify = densify_config_from_dict(data.pop("densify"))
        return cls(**data, backbone=backbone, densify=densify)
    # Missing or extra keys, wrong JSON types (a list where a dict belongs: AttributeError).
    except (TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"malformed {kind} model config ({err})") from None


def _refuse_code(backbone: Any) -> None:
    """Refuse a file's backbone config that would make building the model import code."""
    if not isinstance(backbone, dict):
        return  # from_dict's own checks report the shape
    if backbone.get("dino_repo"):
        raise UnsafeConfigError(
            "the weights' config names a torch hub checkout to import "
            f"(backbone.dino_repo = {backbone['dino_repo']!r}); weights never choose code to "
            "run: pass your own local DINO checkout as load_model(..., dino_repo=DIR)"
        )
    model = backbone.get("dino_model", BackboneConfig.dino_model)
    if not isinstance(model, str) or model not in DINO_MODELS:
        raise UnsafeConfigError(
            f"the weights' config names an unknown torch hub entry point "
            f"(backbone.dino_model = {model!r}); expected one of {sorted(DINO_MODELS)}"
        )


# The densifier of the object model: children re-sample the input views where they are
# (DESIGN.md §8), the grid is tied to the Gaussian volume's voxel (level 1 = half a voxel).
# v2 (issue 16) reads the input silhouettes; trained from v1's weights (`--init`), whose
# backbone lacks only the zero-initialised silhouette layers. v3 adds the photo-consistency
# volume, from v2's weights the same way; v4 (shipped) colours the decoded Gaussians from the
# views (`view_colours`, no parameters: v3's weights load as they are). A weights file
# carries its own config, so a shipped model still loads as itself while this preset
# describes the next.
# A 48³ Gaussian volume (`upsample` 3, trained from v3 through
# `ObjectBackbone.adapt_init_state`: 2,500 backbone + 600 densifier steps) was measured and
# not kept: test coarse 22.95 -> 23.02 dB but fine 23.87 -> 23.62, with 3x the coarse
# Gaussians (9.2k) and 3x the backbone time.
_SMALL_BACKBONE = BackboneConfig(silhouette=True, photo_volume=True, view_colours=True)
# Residual heads start every child as a smaller copy of its parent, so the fine render
# begins close to the coarse one and training only has to learn the improvement.
_SMALL_DENSIFY = SMALL.with_(
    candidates=2000,
    residual=True,
    sh_degree=1,
    child_samples=CHILD_SAMPLES,
    color_gate=True,
    # Half a Gaussian-volume voxel (its side is 2 · extent / (resolution · upsample)).
    grid_size=_SMALL_BACKBONE.extent / (_SMALL_BACKBONE.resolution * _SMALL_BACKBONE.upsample),
    offset_scale=1.0,
    # Candidates are scored on a 64² render: the gradient-mask render and backward were
    # most of the densification time on the CPU.
    mask_size=64,
)

OBJECT_SMALL = ObjectModelConfig(
    name="object-small",
    backbone=_SMALL_BACKBONE,
    densify=_SMALL_DENSIFY,
    detail_size=256,
    # Inference K: a third of a typical coarse set. On the test split K = 1000 / 1500 /
    # 2000 gave fine - coarse +1.95 / +2.01 / +2.05 dB while the densifier's cost grows
    # with K; 1000 keeps densification near half the coarse-only time on the CPU
    # (bench/results/reconstruct.md). `budget=` / `--budget` asks for more.
    candidates=1000,
    train_candidates=2000,
)
"""Trainable on 2 CPU cores in hours: 16³ feature volume, 32³ Gaussian volume; the
backbone reads 128² views, the densifier 256² ones (the dataset's own size)."""

_TINY_BACKBONE = BackboneConfig(
    image_channels=16, volume_channels=16, heads=2, resolution=8, gaussian_channels=16,
    feature_dim=8, mid_blocks=0, refine_blocks=0, pos_frequencies=3,
)  # fmt: skip
OBJECT_TINY = ObjectModelConfig(
    name="object-tiny",
    image_size=64,
    backbone=_TINY_BACKBONE,
    densify=_SMALL_DENSIFY.with_(
        channels=(16, 16),
        heads=(2, 2),
        patch_size=16,
        grid_size=0.5 * 2 * _TINY_BACKBONE.extent / (_TINY_BACKBONE.resolution * 2),
        view=ViewFeatureConfig(dim=16, heads=2),
    ),
    candidates=256,
    train_candidates=128,
)
"""For tests and plumbing: seconds to train a few steps."""

_PAPER_BACKBONE = BackboneConfig(
    image_channels=128, volume_channels=256, heads=8, resolution=32, extent=0.7, upsample=2,
    gaussian_channels=64, gaussians_per_voxel=2, feature_dim=32, sh_degree=1,
    mid_blocks=4, refine_blocks=2, pos_frequencies=8,
)  # fmt: skip
OBJECT_PAPER = ObjectModelConfig(
    name="object-paper",
    image_size=512,
    max_views=8,
    backbone=_PAPER_BACKBONE,
    densify=SMALL.__class__(
        grid_size=0.5 * 2 * _PAPER_BACKBONE.extent / (_PAPER_BACKBONE.resolution * 2),
        child_samples=CHILD_SAMPLES,
    ),
    candidates=12_000,
    train_candidates=12_000,
)
"""LaRa-sized: a 32³ volume of 256 channels up-sampled to 64³ with 2 Gaussians a voxel,
and the official GD object densifier (K = 12k, R = [2, 4], channels [160, 256])."""

PRESETS: dict[str, ObjectModelConfig] = {
    c.name: c for c in (OBJECT_TINY, OBJECT_SMALL, OBJECT_PAPER)
}


def get_model_config(name: str) -> ObjectModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {list(PRESETS)}") from None
