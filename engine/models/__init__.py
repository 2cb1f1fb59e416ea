"""Models: the object model (LaRa-style backbone) and the scene model (MVSplat-style
backbone), each with generative densification.

model = load_model("object-small", device="auto")       # shipped weights, offline
scene = load_model("scene-small")                        # a GDSceneModel
rec = model.reconstruct(images, cameras, progress=cb, cancel=event)
res = model.densify(gaussians, images, cameras, select=mask, budget=20_000)
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from ..devices import resolve_device
from ..weights import WeightsNotFoundError, load_weights, shipped_weights
from .base import Cancelled, Reconstruction
from .config import PRESETS, ObjectModelConfig, UnsafeConfigError, get_model_config
from .gd_object import GDObjectModel
from .gd_scene import GDSceneModel
from .scene_backbone import SCENE_PRESETS, SceneModelConfig, get_scene_config

__all__ = [
    "PRESETS",
    "Cancelled",
    "GDObjectModel",
    "GDSceneModel",
    "ObjectModelConfig",
    "SceneModelConfig",
    "Reconstruction",
    "UnsafeConfigError",
    "WeightsNotFoundError",
    "get_any_config",
    "get_model_config",
    "load_model",
]


def is_scene_config(data: dict) -> bool:
    """Whether a weights file's config (JSON data) is a scene model's: scene presets are
    named "scene-*" and have no object backbone's Gaussian volume."""
    return isinstance(data, dict) and str(data.get("name", "")).startswith("scene")


def get_any_config(name: str) -> ObjectModelConfig | SceneModelConfig:
    """An object or scene preset by name; ValueError naming all of them otherwise."""
    if name in SCENE_PRESETS:
        return get_scene_config(name)
    if name in PRESETS:
        return get_model_config(name)
    raise ValueError(f"unknown model {name!r}; expected one of {[*PRESETS, *SCENE_PRESETS]}")


def load_model(
    name_or_path: str | os.PathLike = "object-small",
    device: str | torch.device = "auto",
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    *,
    dino_repo: str | os.PathLike | None = None,
) -> GDObjectModel | GDSceneModel:
    """An object or scene model ready for inference (eval mode).

    Args:
        name_or_path: a preset name ("object-small", "object-tiny", "object-paper",
            "scene-small", "scene-tiny") or a `.safetensors` file whose JSON config sits
            beside it.
        device: "auto", "cpu", "cuda", "mps" or a torch.device.
        weights: explicit weights file for a preset name (default: the shipped one).
        pretrained: False gives randomly initialised weights (tests, plumbing).
        dino_repo: for weights with the "dino" encoder, your local torch hub checkout of
            DINO(v2); it is imported (its hubconf.py runs), so it comes only from here,
            never from the weights' config.
    Raises:
        WeightsNotFoundError: no weights where expected (the message says what to do).
        UnsafeConfigError: the weights' config names code to import (a hub checkout).
        ValueError: unknown name, unreadable or mismatched weights, a "dino" model without
            `dino_repo` or `dino_repo` for a model without a DINO encoder.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    path = Path(name_or_path)
    if path.suffix == ".safetensors" or path.is_file():
        weights, pretrained = path, True
        cfg = None
    else:
        cfg = get_any_config(str(name_or_path))
    if not pretrained:
        if isinstance(cfg, SceneModelConfig):
            return GDSceneModel(cfg).to(dev).eval()
        model = GDObjectModel(_with_dino_repo(cfg, dino_repo, str(name_or_path)))
        return model.to(dev).eval()
    if weights is None:
        weights = shipped_weights(str(name_or_path))
        if not weights.is_file():
            raise WeightsNotFoundError(
                f"no shipped weights for {name_or_path!r} ({weights}); train them with "
                "`gd train`, pass weights=PATH, or use pretrained=False for a random model"
            )
    state, meta = load_weights(weights)
    if "config" not in meta:
        raise ValueError(f"{weights}: metadata has no model config")
    try:
        if is_scene_config(meta["config"]):
            saved = SceneModelConfig.from_dict(meta["config"])
        else:
            saved = ObjectModelConfig.from_dict(meta["config"])
    except ValueError as err:  # UnsafeConfigError included: say which file it came from
        raise type(err)(f"{weights}: {err}") from None
    if cfg is not None and saved.name != cfg.name:
        raise ValueError(f"{weights} holds {saved.name!r} weights, not {cfg.name!r}")
    if isinstance(saved, SceneModelConfig):
        if dino_repo is not None:
            raise ValueError(f"{weights}: dino_repo given, but this is a scene model")
        model = GDSceneModel(saved)
    else:
        model = GDObjectModel(_with_dino_repo(saved, dino_repo, weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: weights do not fit {saved.name} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.weights_path = Path(weights)
    model.weights_sha256 = meta.get("sha256")
    return model.to(dev).eval()


def _with_dino_repo(
    cfg: ObjectModelConfig, dino_repo: str | os.PathLike | None, weights: str | os.PathLike
) -> ObjectModelConfig:
    """`cfg` with the caller's DINO checkout filled in (the only way one gets there when
    loading weights), or an error when the encoder and the argument disagree."""
    if cfg.backbone.encoder != "dino":
        if dino_repo is not None:
            raise ValueError(
                f"{weights}: dino_repo given, but these weights use the "
                f"{cfg.backbone.encoder!r} encoder, not 'dino'"
            )
        return cfg
    if dino_repo is None:
        raise ValueError(
            f"{weights}: these weights use a DINO encoder ({cfg.backbone.dino_model}); pass "
            "your local torch hub checkout of it as load_model(..., dino_repo=DIR)"
        )
    repo = Path(dino_repo)
    if not (repo / "hubconf.py").is_file():
        raise ValueError(f"{repo}: not a torch hub checkout (no hubconf.py)")
    return replace(cfg, backbone=replace(cfg.backbone, dino_repo=str(repo)))
