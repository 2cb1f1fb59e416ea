"""Limits every splat file reader enforces before it allocates anything.

Hostile files declare counts (SPZ's header, a PLY element, glTF accessors) or sizes (a gzip
stream, a sidecar `.bin`) far beyond what they hold; each reader checks what a file declares
against these limits and against the bytes actually present, and refuses with its own
format error before allocating memory for the declared amount.

MAX_GAUSSIANS: the most Gaussians any reader returns, 50 million. A scene that large takes
    about 2.8 GB as float32 `Gaussians` at SH degree 0 and 12 GB at degree 3, beyond what the
    engine or Blender handle usefully; real captures hold 0.1-10 million. Files with more are
    refused with a message naming this limit. Writers are not limited.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["MAX_GAUSSIANS", "check_gaussian_count", "gaussian_arrays", "read_regular_file"]

MAX_GAUSSIANS = 50_000_000


def check_gaussian_count(count: int, error: Callable[[str], Exception]) -> None:
    """Raise `error(message)` if a file declares more than `MAX_GAUSSIANS` Gaussians."""
    if count > MAX_GAUSSIANS:
        raise error(
            f"the file declares {count:,} Gaussians, above the {MAX_GAUSSIANS:,} this reader "
            "accepts (engine.io.limits.MAX_GAUSSIANS)"
        )


def gaussian_arrays(n: int, sh_coeffs: int) -> dict[str, np.ndarray]:
    """Empty float32 arrays a reader decodes n Gaussians into (after `check_gaussian_count`),
    named as `Gaussians`' fields: means (n, 3), log_scales (n, 3), quats (n, 4),
    opacity_logits (n,), sh (n, sh_coeffs, 3)."""
    return {
        "means": np.empty((n, 3), np.float32),
        "log_scales": np.empty((n, 3), np.float32),
        "quats": np.empty((n, 4), np.float32),
        "opacity_logits": np.empty(n, np.float32),
        "sh": np.empty((n, sh_coeffs, 3), np.float32),
    }


def read_regular_file(path: Path, length: int, folder: Path) -> bytes:
    """The first `length` bytes of `path`, which must be a regular file inside `folder`.

    For files a document names (a glTF's sidecar `.bin`): the path is resolved (symlinks
    followed) and must stay inside `folder` (resolved too); it is opened non-blocking, so a
    FIFO cannot hang the reader, and must be a regular file (not a FIFO, device such as
    /dev/zero, or directory); at most `length` bytes are read.

    Raises:
        ValueError: outside `folder`, not a regular file, or shorter than `length` bytes;
            the message says which (the caller adds the file's name).
        OSError: the file cannot be opened or read.
    """
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise ValueError("it leads outside the file's folder (a symlink?)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(resolved, flags)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file")
        if info.st_size < length:
            raise ValueError(f"it has {info.st_size} bytes, fewer than the {length} declared")
        data = f.read(length)
    if len(data) < length:  # only if the file shrank after fstat
        raise ValueError(f"it has {len(data)} bytes, fewer than the {length} declared")
    return data
