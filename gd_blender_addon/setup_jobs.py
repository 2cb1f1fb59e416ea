"""Worker-thread jobs of Install PyTorch and Download Weights: plain data in, plain data
out (no bpy; jobs.py explains why). Their failures become UserErrors, a cancel becomes
jobs.JobCancelled. The add-on does no HTTP of its own: downloads are
`engine.download.download_weights`."""

from __future__ import annotations

import threading
from pathlib import Path

from . import dependencies, jobs
from .errors import UserError


def install_work(
    build: str, commands: list[list[str]], progress: jobs.Progress, cancel: threading.Event
) -> None:
    """Worker: pip-install PyTorch and the engine's dependencies with `commands`."""
    try:
        dependencies.install(build, progress, cancel, commands=commands)
    except InterruptedError:
        raise jobs.JobCancelled() from None
    except (RuntimeError, OSError) as err:
        raise UserError(f"Installing PyTorch failed: {err}") from None


def fetch_weights(
    url: str,
    sha256: str,
    config_sha256: str,
    dest: Path,
    progress: jobs.Progress,
    cancel: threading.Event,
) -> Path:
    """Download the weights and the JSON config the engine reads beside them with
    `engine.download.download_weights` (both SHA-256 verified and size-capped, moved into
    place together); the add-on itself does no HTTP. Engine errors become UserErrors.
    `prepare` put the engine on sys.path (main thread: the user folder is bpy's)."""
    from engine.download import DownloadCancelled, DownloadError, download_weights

    try:
        return download_weights(url, dest, sha256, config_sha256, progress, cancel)
    except DownloadCancelled:
        raise jobs.JobCancelled() from None
    except (DownloadError, ValueError) as err:  # ValueError: a malformed URL or SHA-256
        raise UserError(f"Download failed: {err}") from None
