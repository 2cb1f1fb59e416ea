"""The one SHA-256 helper: weights checksums, download verification and the evaluation
report all hash files the same way. Stdlib only (the add-on imports it before torch)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file"]

_BLOCK = 1 << 20  # 1 MiB reads: large enough to be fast, small enough to stay flat in memory


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lower-case hex SHA-256 of the file at `path`.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
