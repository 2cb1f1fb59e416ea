"""Splat file formats (DESIGN.md §6): `save` / `load` pick the format from the file suffix."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..gaussians import Gaussians
from .ply import PlyData, PlyFormatError, read_ply, write_ply

__all__ = [
    "PlyData",
    "PlyFormatError",
    "load",
    "read_ply",
    "save",
    "supported_suffixes",
    "write_ply",
]


def _load_ply(path: Path, device: torch.device | str) -> Gaussians:
    return read_ply(path, device=device).gaussians


# suffix (lower case) -> (writer(gaussians, path, **options), reader(path, device))
_FORMATS: dict[str, tuple[Callable[..., None], Callable[[Path, torch.device | str], Gaussians]]] = {
    ".ply": (lambda g, path, **options: write_ply(path, g, **options), _load_ply),
}


def supported_suffixes() -> list[str]:
    return sorted(_FORMATS)


def _format_for(path: Path) -> tuple[Callable[..., None], Callable[..., Gaussians]]:
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(
            f"{path}: unsupported splat file suffix {suffix or '(none)'!r}; "
            f"supported: {', '.join(supported_suffixes())}"
        )
    return _FORMATS[suffix]


def save(gaussians: Gaussians, path: str | os.PathLike[str], **options: Any) -> None:
    """Write `gaussians` to `path` in the format its suffix names; options go to the writer."""
    path = Path(path)
    writer, _ = _format_for(path)
    writer(gaussians, path, **options)


def load(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Gaussians:
    """Read Gaussians from `path` in the format its suffix names."""
    path = Path(path)
    _, reader = _format_for(path)
    return reader(path, device)
