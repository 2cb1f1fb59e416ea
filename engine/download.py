"""Downloading a file (model weights) with a progress callback, cancel, SHA-256 check and an
atomic write. Pure Python (requests), no bpy and no torch: the Blender add-on calls it only
when `bpy.app.online_access` allows network use.

The body streams into a temporary file in the destination's directory, is hashed on the way,
and replaces `dest` with `os.replace` only when the hash matches, so `dest` is either the
complete, verified file or untouched, and no partial file is left behind on any failure.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["DownloadCancelled", "DownloadError", "download", "sha256_file"]

CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """The download failed (network, HTTP status, checksum, disk); the message says which."""


class DownloadCancelled(DownloadError):
    """The cancel event was set during the download."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(sha256: str) -> str:
    sha = sha256.strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return sha


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    *,
    timeout: float = 30.0,
) -> Path:
    """Download `url` to `dest`, verifying its SHA-256; returns `dest` as a Path.

    Args:
        sha256: the expected hex digest (required: weights are never used unverified).
        progress: called with (fraction in [0, 1], message); the fraction is 0 while the
            size is unknown (no Content-Length).
        cancel: set it from another thread to stop; raises DownloadCancelled.
        timeout: seconds to wait for the connection and between chunks.
    Raises:
        DownloadError: network or HTTP error, checksum mismatch, or a disk error.
        DownloadCancelled: `cancel` was set.
        ValueError: a malformed `sha256` or a URL that is not http(s).
    """
    import requests  # lazily: Blender ships requests, the engine itself does not need it

    expected = _check_sha(sha256)
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"only http(s) URLs can be downloaded, got {url!r}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        done = 0
        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                if response.status_code != 200:
                    raise DownloadError(
                        f"{url}: HTTP {response.status_code} {response.reason or ''}".rstrip()
                    )
                total = int(response.headers.get("Content-Length") or 0)
                with os.fdopen(fd, "wb") as file:
                    fd = -1  # owned by `file` now
                    for chunk in response.iter_content(CHUNK):
                        if cancel is not None and cancel.is_set():
                            raise DownloadCancelled(f"{url}: download cancelled")
                        file.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            fraction = min(done / total, 1.0) if total else 0.0
                            progress(fraction, f"{done / 1e6:.1f} of {total / 1e6:.1f} MB")
        except requests.RequestException as err:
            raise DownloadError(f"{url}: download failed ({err})") from None
        except OSError as err:
            raise DownloadError(f"{dest}: cannot write the download ({err})") from None
        if total and done != total:
            raise DownloadError(f"{url}: got {done} bytes, expected {total} (connection cut?)")
        found = digest.hexdigest()
        if found != expected:
            raise DownloadError(
                f"{url}: checksum mismatch (SHA-256 {found}, expected {expected}); "
                "the file was not saved"
            )
        os.replace(tmp, dest)
    finally:
        if fd != -1:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    if progress is not None:
        progress(1.0, f"saved {dest.name}")
    return dest
