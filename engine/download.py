"""Downloading model weights: progress, a cancel that works within a fraction of a second
whatever the server does, a size cap, SHA-256 verification and an all-or-nothing result.
Pure Python (requests), no bpy and no torch: the Blender add-on calls it only when
`bpy.app.online_access` allows network use, and keeps no HTTP code of its own.

The body streams into a temporary file in the destination's directory (`engine.atomic`), is
hashed on the way, and replaces `dest` only when the hash matches, so `dest` is either the
complete, verified file or untouched, and no partial file is left behind on any failure.

The network is read by a helper thread that hands chunks to the caller through a small
queue; the caller waits on that queue a tenth of a second at a time and checks `cancel`
in between. A read blocked on a server that stalls or drips a byte a second therefore never
delays a cancel (requests cannot interrupt a blocked read, and its read timeout only
measures the gap between bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import atomic
from .atomic import atomic_open

__all__ = [
    "CONFIG_MAX_BYTES",
    "DEFAULT_MAX_BYTES",
    "DownloadCancelled",
    "DownloadError",
    "DownloadTooLarge",
    "download",
    "download_weights",
]

CHUNK = 1 << 16
DEFAULT_MAX_BYTES = 4 << 30
"""The most bytes `download` writes unless told otherwise: 4 GiB, ten times the largest
preset's weights (object-paper, float32), far below what fills a user's disk by accident."""
CONFIG_MAX_BYTES = 1 << 20
"""The most bytes of a weights config (JSON): the shipped one is about 4 kB."""
_POLL = 0.1  # seconds between cancel checks while the network is silent
_READ_AHEAD = 16  # chunks the network thread may queue before it waits for the writer


class DownloadError(RuntimeError):
    """The download failed (network, HTTP status, size, checksum, disk); the message says
    which."""


class DownloadCancelled(DownloadError):
    """The cancel event was set during the download."""


class DownloadTooLarge(DownloadError):
    """The server announced or sent more bytes than the download's `max_bytes`."""


def _check_sha(sha256: str) -> str:
    sha = sha256.strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return sha


def _check_url(url: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"only http(s) URLs can be downloaded, got {url!r}")


def _content_length(headers: Any) -> int | None:
    """The announced body size, or None when absent or malformed (then only the running
    count against `max_bytes` bounds the download)."""
    value = headers.get("Content-Length")
    try:
        length = int(value)
    except (TypeError, ValueError):
        return None
    return length if length >= 0 else None


def _socket_of(response: Any) -> socket.socket | None:
    """The socket under a requests streaming response, or None where this urllib3 keeps it
    elsewhere. Best effort: only used to wake the network thread after a cancel."""
    raw = getattr(response, "raw", None)
    for path in (("_connection", "sock"), ("_fp", "fp", "raw", "_sock")):
        obj = raw
        for name in path:
            obj = getattr(obj, name, None)
        if isinstance(obj, socket.socket):
            return obj
    return None


class _Reader:
    """The network side of one download, run in a daemon thread.

    It puts ("head", response), then ("data", bytes) chunks, then ("end", None) or
    ("error", exception) on a bounded queue, so at most `_READ_AHEAD` chunks wait in memory.
    `close()` tells it to stop and shuts its socket down, which wakes a read blocked on a
    stalled server (closing the response instead could block on the reader's own lock).
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_READ_AHEAD)
        self.stop = threading.Event()
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, name="gd-download", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import requests  # lazily: Blender ships requests, the engine itself does not need it

        try:
            # identity: the body is hashed as sent, and no gzip bomb is inflated in memory.
            headers = {"Accept-Encoding": "identity"}
            timeout = (self.timeout, self.timeout)
            with requests.get(self.url, stream=True, timeout=timeout, headers=headers) as resp:
                self.sock = _socket_of(resp)
                if self.stop.is_set() or not self._put(("head", resp)):
                    return
                if resp.status_code != 200:
                    return
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    if not self._put(("data", chunk)):
                        return
            self._put(("end", None))
        except Exception as err:  # noqa: BLE001 (handed to the caller, which reports it)
            self._put(("error", err))

    def _put(self, item: tuple[str, Any]) -> bool:
        """Queue `item` unless told to stop first; False when stopped."""
        while not self.stop.is_set():
            try:
                self.items.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def get(self, cancel: threading.Event | None) -> tuple[str, Any]:
        """The next item; raises DownloadCancelled within `_POLL` seconds of `cancel`."""
        while True:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"{self.url}: download cancelled")
            try:
                return self.items.get(timeout=_POLL)
            except queue.Empty:
                continue

    def close(self) -> None:
        self.stop.set()
        sock = self.sock
        if sock is not None and self.thread.is_alive():
            # OSError: already closed, the thread is finishing anyway.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    *,
    timeout: float = 30.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Download `url` to `dest`, verifying its SHA-256; returns `dest` as a Path.

    Args:
        sha256: the expected hex digest (required: weights are never used unverified).
        progress: called from the calling thread with (fraction in [0, 1], message); the
            fraction is 0 while the size is unknown (no Content-Length).
        cancel: set it from another thread to stop; `download` raises DownloadCancelled
            within about 0.1 s, even while the server sends nothing.
        timeout: seconds to wait for the connection, and for each next byte.
        max_bytes: the most bytes accepted (default `DEFAULT_MAX_BYTES`); a larger
            Content-Length is refused before anything is written, a body without one is
            stopped at the first byte over.
    Raises:
        DownloadError: network or HTTP error, checksum mismatch, or a disk error.
        DownloadTooLarge: more than `max_bytes` announced or sent.
        DownloadCancelled: `cancel` was set.
        ValueError: a malformed `sha256`, a URL that is not http(s), or `max_bytes` < 1.
    """
    expected = _check_sha(sha256)
    _check_url(url)
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    dest = Path(dest)
    reader = _Reader(url, timeout)
    try:
        kind, value = reader.get(cancel)
        if kind == "error":
            raise DownloadError(f"{url}: download failed ({value})")
        if value.status_code != 200:
            raise DownloadError(f"{url}: HTTP {value.status_code} {value.reason or ''}".rstrip())
        total = _content_length(value.headers)
        if total is not None and total > max_bytes:
            raise DownloadTooLarge(
                f"{url}: the server announces {total} bytes, more than the {max_bytes} allowed"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        done = 0
        # engine.atomic: a short temporary name beside `dest` (whose own name may be near
        # NAME_MAX), removed on any failure below, renamed over `dest` only at the end.
        with atomic_open(dest) as file:
            while True:
                kind, value = reader.get(cancel)
                if kind == "end":
                    break
                if kind == "error":
                    raise DownloadError(f"{url}: download failed ({value})")
                done += len(value)
                if done > max_bytes:
                    raise DownloadTooLarge(f"{url}: more than the {max_bytes} bytes allowed")
                file.write(value)
                digest.update(value)
                if progress is not None:
                    fraction = min(done / total, 1.0) if total else 0.0
                    size = f" of {total / 1e6:.1f}" if total else ""
                    progress(fraction, f"{done / 1e6:.1f}{size} MB")
            if total is not None and done != total:
                raise DownloadError(f"{url}: got {done} bytes, expected {total} (connection cut?)")
            found = digest.hexdigest()
            if found != expected:
                raise DownloadError(
                    f"{url}: checksum mismatch (SHA-256 {found}, expected {expected}); "
                    "the file was not saved"
                )
            if cancel is not None and cancel.is_set():  # late cancel: still nothing replaced
                raise DownloadCancelled(f"{url}: download cancelled")
    except OSError as err:
        raise DownloadError(f"{dest}: cannot write the download ({err})") from None
    finally:
        reader.close()
    if progress is not None:
        progress(1.0, f"saved {dest.name}")
    return dest


def config_url_for(url: str) -> str:
    """The URL of the JSON config beside a weights URL: the path's suffix replaced by
    `.json`, query and fragment kept (`.../w.safetensors?dl=1` -> `.../w.json?dl=1`)."""
    parts = urlsplit(url)
    path = PurePosixPath(parts.path)
    if not path.name:
        raise ValueError(f"{url!r} names no file")
    return urlunsplit(parts._replace(path=str(path.with_suffix(".json"))))


def download_weights(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str,
    config_sha256: str,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    *,
    config_url: str | None = None,
    timeout: float = 30.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Download a `.safetensors` weights file and the JSON config the engine reads beside
    it, both verified, and move them into place together; returns `dest`.

    The config comes from `config_url` (default: `config_url_for(url)`), must match
    `config_sha256`, be at most `CONFIG_MAX_BYTES`, and be a JSON object whose "sha256"
    names the weights' digest (so the pair belongs together). Both files land in a
    temporary folder beside `dest` first; on any failure neither existing file changes.

    Args:
        dest: the weights' destination; the config goes to `dest.with_suffix(".json")`.
        sha256, config_sha256: expected hex digests of the weights and of the config.
        progress, cancel, timeout: as for `download` (progress covers the weights).
        max_bytes: the most bytes of the weights file.
    Raises:
        DownloadError (DownloadCancelled, DownloadTooLarge): as for `download`, and a
            config that is not such a JSON object.
        ValueError: malformed digests or URLs.
    """
    weights_sha, config_sha = _check_sha(sha256), _check_sha(config_sha256)
    _check_url(url)
    config_url = config_url or config_url_for(url)
    _check_url(config_url)
    dest = Path(dest)
    config_dest = dest.with_suffix(".json")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".gd-", dir=dest.parent))
    except OSError as err:
        raise DownloadError(f"{dest.parent}: cannot write the download ({err})") from None
    try:
        # The config first: it is small, so a wrong one fails before the long download.
        config = download(
            config_url, staging / "config.json", config_sha, cancel=cancel,
            timeout=timeout, max_bytes=CONFIG_MAX_BYTES,
        )  # fmt: skip
        _check_config(config, config_url, weights_sha)
        weights = download(
            url, staging / "weights.safetensors", weights_sha, progress, cancel,
            timeout=timeout, max_bytes=max_bytes,
        )  # fmt: skip
        try:
            # Keep the modes of the files being replaced (engine.atomic's one rule).
            atomic.replace(config, config_dest)
            atomic.replace(weights, dest)
        except OSError as err:
            raise DownloadError(f"{dest}: cannot write the download ({err})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _check_config(path: Path, url: str, weights_sha: str) -> None:
    """A downloaded config must be a JSON object naming the weights' SHA-256."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DownloadError(f"{url}: not a JSON weights config ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        raise DownloadError(f'{url}: not a weights config (no "sha256" of the weights)')
    if meta["sha256"].strip().lower() != weights_sha:
        raise DownloadError(f"{url} describes other weights (its SHA-256 differs)")
