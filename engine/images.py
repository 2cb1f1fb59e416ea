"""Writing rendered images to disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def to_uint8(image: Tensor) -> np.ndarray:
    """(H, W, C) float in [0, 1] -> (H, W, C) uint8, rounded."""
    return (image.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_png(image: Tensor, path: str | Path) -> None:
    """Write an (H, W, 3) or (H, W, 4) float image atomically (temp file, then rename)."""
    path = Path(path)
    array = to_uint8(image)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
