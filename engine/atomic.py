"""Atomic file writes: the one way the engine, the CLI and the add-on put a file on disk.

    with atomic_open("prop.ply") as f:        # a binary file object ("w" for text)
        f.write(data)
    with atomic_path("model.safetensors") as tmp:   # for writers that want a file name
        save_file(tensors, tmp)
    write_atomic("prop.splat", [header, records])   # bytes, str or an iterable of chunks

The data goes to a temporary file in the destination's folder, is flushed to disk
(fsync) and then renamed over the destination, so readers (and resumed runs) see the old
file or the new one, never half of one. On any exception, KeyboardInterrupt and the CLI's
SIGTERM included, the temporary file is removed and the destination is left as it was.

One behaviour for permissions: a replaced file keeps its mode (a 0600 file stays 0600);
a new file gets 0666 minus the umask (0644 under the usual 022), as `open()` would give.

Temporary names are `.gd-XXXXXXXX.tmp` (16 characters whatever the destination's name),
so a destination name up to the file system's limit (255 bytes) can be written. A process
killed outright (SIGKILL, power loss) cannot clean up after itself; the first write into a
folder in a later process removes temporary files of ours there that no live writer holds
(an advisory lock, where the platform has one) and that are older than `STALE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

try:  # POSIX advisory locks: a live writer holds one on its temporary file.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = ".gd-"
TEMP_SUFFIX = ".tmp"
# Our temporary names and nothing else: the sweep below must never touch other files.
_TEMP_NAME = re.compile(r"\.gd-[0-9a-f]{8}\.tmp")
# A temporary file this old that no process holds is left over from a killed writer. An
# hour is far longer than any write of ours stalls between two chunks.
STALE_SECONDS = 3600.0

_swept: set[str] = set()  # folders already swept by this process
_swept_lock = threading.Lock()

Chunk = bytes | bytearray | memoryview | str | Any  # Any: numpy arrays (buffer protocol)


def temp_name() -> str:
    """A fresh temporary file name of bounded length (16 characters)."""
    return f"{TEMP_PREFIX}{secrets.token_hex(4)}{TEMP_SUFFIX}"


def sweep_stale(folder: str | os.PathLike, older_than: float = STALE_SECONDS) -> list[Path]:
    """Remove our temporary files in `folder` left by killed writers; returns those removed.

    Only names matching `.gd-XXXXXXXX.tmp`, older than `older_than` seconds and (where
    `fcntl` exists) not locked by a live writer are removed. Errors are ignored: this is
    housekeeping and must never make a write fail.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                continue
            if not _unlocked(entry.path):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _unlocked(path: str) -> bool:
    """True if no process holds the writer's lock on `path` (always True without fcntl)."""
    if fcntl is None:  # pragma: no cover - Windows: the age alone decides
        return True
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True


def _sweep_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    sweep_stale(folder)


def _create_temp(folder: Path) -> tuple[int, Path, int]:
    """Create (O_EXCL) and lock a new temporary file in `folder`; (fd, path, its mode)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / temp_name()
        try:
            # 0o666: the umask decides a new file's mode, as a plain open() would.
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:  # 32 random bits: practically never, but never overwrite
            continue
        if fcntl is not None:
            with contextlib.suppress(OSError):  # e.g. a file system without locks
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The umask's verdict, read without os.umask() (which is process-wide and racy).
        return fd, tmp, stat.S_IMODE(os.fstat(fd).st_mode)
    raise FileExistsError(f"{folder}: no free temporary file name")  # pragma: no cover


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, path: Path, new_mode: int) -> None:
    """Give `tmp` the mode `path` should have, then rename it over `path`.

    `new_mode` is the mode a new file gets: the one the temporary file was created with
    (0o666 under the umask). Set explicitly because a writer given a name may have put a
    file of its own there (safetensors writes a 0600 file and renames it into place).
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = new_mode
    if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename the finished file `src` over `dst` (same file system) with the one mode rule:
    `dst`'s mode when it exists, else `src`'s own. For files staged elsewhere first (a
    download verified before it may replace anything)."""
    src, dst = Path(src), Path(dst)
    _commit(src, dst, stat.S_IMODE(os.stat(src).st_mode))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that takes a file name.

    The body writes the whole file at the yielded path (an empty file exists there; the
    writer may truncate it or put its own file in its place). On normal exit the file gets
    its mode, is synced and renamed over `path`; on any exception it is removed and `path`
    is untouched.

    Raises:
        OSError: the folder does not exist or cannot be written.
    """
    path = Path(path)
    folder = path.parent
    _sweep_once(folder)
    fd, tmp, new_mode = _create_temp(folder)
    try:
        try:
            yield tmp
            # The writer used its own descriptor: sync the file through a fresh one by name
            # (the writer may have replaced the inode ours points to).
            sync_fd = os.open(tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(sync_fd)
            finally:
                os.close(sync_fd)
        finally:
            # Windows cannot rename a file that is still open; the lock goes with the close.
            os.close(fd)
        _commit(tmp, path, new_mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Yield a file object writing a temporary file that replaces `path` on success.

    Args:
        path: the destination.
        mode: "wb" (default) or "w" (text; `encoding` defaults to UTF-8).
        encoding: text encoding for mode "w".
    Raises:
        ValueError: a mode other than "wb" or "w".
        OSError: the folder does not exist or cannot be written.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    _sweep_once(path.parent)
    fd, tmp, new_mode = _create_temp(path.parent)
    try:
        # The file object owns the descriptor (and with it the lock) from here on.
        if mode == "w":
            f: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            f = os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path, new_mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: Chunk | Iterable[Chunk]) -> None:
    """Write `data` to `path` atomically: bytes, a str (UTF-8) or an iterable of chunks
    (bytes, str or C-contiguous numpy arrays, written in order)."""
    single = isinstance(data, bytes | bytearray | memoryview | str)
    # A lone numpy array is one chunk, not an iterable of rows.
    chunks = [data] if single or hasattr(data, "__array_interface__") else data
    with atomic_open(path) as f:
        for chunk in chunks:
            f.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
