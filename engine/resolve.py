"""The one way from "a model name or a weights path" to a ready model.

    model = resolve_model("object-small", "auto")             # the shipped weights
    model = resolve_model("object-small", device, weights="w.safetensors")
    model = resolve_model("runs/v2/checkpoint/model.safetensors", device)
    model = resolve_model("runs/v2", device)                  # a training run's folder

The CLI (reconstruct, evaluate, demo), the Blender add-on and the benches all load their
model here; `engine.models.load_model` underneath builds it from one preset or one file.
Missing weights are one error, `WeightsNotFoundError` (a FileNotFoundError): a path that
is not there names the path; missing shipped weights name the file that should have been
shipped, followed by the caller's `hint` (what its user can do about it, in its words:
flags for the CLI, buttons for the add-on).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .weights import WeightsNotFoundError, shipped_weights, weights_in_folder

if TYPE_CHECKING:
    from .models import GDObjectModel, GDSceneModel

__all__ = ["DEFAULT_HINT", "WeightsNotFoundError", "resolve_model"]

DEFAULT_HINT = "train them with `gd train` and pass the weights file (or the run's folder)"


def resolve_model(
    model: str | os.PathLike,
    device: str | torch.device = "auto",
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    hint: str | None = DEFAULT_HINT,
) -> GDObjectModel | GDSceneModel:
    """The model (eval mode, on `device`) that `model` names.

    Args:
        model: a preset name ("object-small", "scene-small", ...), a `.safetensors` file
            (its `.json` beside it) or a folder holding one (`engine.weights.weights_in_folder`: a
            training run's folder works). Anything with a path separator, a `.safetensors`
            suffix or that exists on disk is a path.
        device: "auto", "cpu", "cuda", "mps" or a torch.device.
        weights: for a preset name, a weights file to use instead of the shipped one.
        pretrained: False gives a preset with random weights (tests, plumbing); a path
            always loads its weights.
        hint: appended to the missing-shipped-weights message; None appends nothing (the
            caller adds its own).
    Raises:
        WeightsNotFoundError: a weights file (given, or shipped for the preset) is missing.
        ValueError: unknown preset, a folder without one clear weights file, weights that
            cannot be read or do not fit (from `engine.models.load_model`).
    """
    from . import models  # looked up per call: tests replace models.load_model

    path = Path(model)
    if path.suffix == ".safetensors" or os.sep in str(model) or path.exists():
        if path.is_dir():
            path = weights_in_folder(path)
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: weights file not found")
        return models.load_model(path, device=device)
    name = str(model)
    models.get_any_config(name)  # an unknown name says so before any file is looked for
    if pretrained and weights is not None and not Path(weights).is_file():
        raise WeightsNotFoundError(f"{weights}: weights file not found")
    if pretrained and weights is None and not shipped_weights(name).is_file():
        where = _shown(shipped_weights(name))
        message = f"no shipped weights for {name!r}: {where} and its .json beside it are missing"
        raise WeightsNotFoundError(message + (f"; {hint}" if hint else ""))
    return models.load_model(name, device=device, weights=weights, pretrained=pretrained)


def _shown(path: Path) -> Path:
    """`path` relative to the working directory when inside it (shorter messages)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path
