"""Model weights on disk: safetensors tensors + a JSON config beside them.

    object-small.safetensors   the state dict (never a pickle: DESIGN.md §4)
    object-small.json          {"config": ObjectModelConfig, "training": {...}, "sha256": ...}

Shipped weights live in `engine/assets/`, so `load_model("object-small")` works offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_path, write_atomic
from .hashing import sha256_file

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_METADATA_BYTES = 16 << 20
"""The largest JSON beside a weights file that is read (configs are a few kB, optimizer
metadata of a checkpoint some hundred): a bigger one is refused, not loaded into memory."""


class WeightsNotFoundError(FileNotFoundError):
    """No weights file where one was expected; the message says how to get one."""


def shipped_weights(name: str) -> Path:
    """Path of the shipped weights for a model name (may not exist)."""
    return ASSETS / f"{name}.safetensors"


def weights_in_folder(folder: Path) -> Path:
    """The model weights in a folder: `model.safetensors`, a training run's
    `checkpoint/model.safetensors`, or the folder's only `.safetensors` file."""
    for candidate in (folder / "model.safetensors", folder / "checkpoint" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise ValueError(
            f"{folder}: no model.safetensors, checkpoint/model.safetensors or single "
            f".safetensors file (found {len(found)})"
        )
    return found[0]


def metadata_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".json")


def save_weights(
    state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, Any]
) -> str:
    """Write tensors (safetensors) and `metadata` (JSON, plus the file's sha256), atomically.

    Returns the sha256 of the tensors file.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)
    digest = sha256_file(path)
    meta = {**metadata, "sha256": digest}
    write_atomic(metadata_path(path), json.dumps(meta, indent=1) + "\n")
    return digest


def load_weights(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) from a safetensors file and its JSON.

    Raises:
        WeightsNotFoundError: the file is missing.
        ValueError: unreadable file, missing metadata or a checksum mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: weights file not found")
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise ValueError(f"{meta_file}: the config that goes with {path.name} is missing")
    try:
        if meta_file.stat().st_size > MAX_METADATA_BYTES:
            raise ValueError(
                f"{meta_file}: {meta_file.stat().st_size} bytes, more than a weights config "
                f"may have ({MAX_METADATA_BYTES})"
            )
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{meta_file}: cannot read ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: not a weights config (a JSON object)")
    expected = meta.get("sha256")
    if expected and sha256_file(path) != expected:
        raise ValueError(f"{path}: checksum mismatch (file corrupt or replaced)")
    try:
        state = load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    return state, meta
