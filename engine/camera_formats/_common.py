"""Helpers shared by the camera format modules: axis flip, file context."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from ..cameras import CameraError

# OpenCV camera axes (y down, z forward) versus OpenGL/Blender ones (y up, z backward).
_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)


def flip_yz(dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
    """(4, 4) diag(1, -1, -1, 1): turns OpenCV camera axes into OpenGL ones and back."""
    return torch.diag(torch.tensor(_FLIP_YZ, dtype=dtype, device=device))


@contextmanager
def in_file(path: Path) -> Iterator[None]:
    """Prefix CameraErrors raised while parsing with the file they came from."""
    try:
        yield
    except CameraError as err:
        raise CameraError(f"{path}: {err}") from None
