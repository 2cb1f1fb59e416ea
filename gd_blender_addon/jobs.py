"""Long engine work off Blender's main thread: a worker thread, a queue and a cancel Event.

bpy may only be touched on the main thread, so the worker gets plain data (tensors, arrays)
and hands back plain data; the main thread drains the queue (from a modal operator's timer
in the UI, or in a loop with `run_blocking` where there is no event loop: `bpy.app.background`,
where timers never fire) and applies the result to the scene.

A job that was cancelled reports as cancelled even when the worker happened to finish: the
result is dropped, so Esc never leaves a half-wanted object behind.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

Progress = Callable[[float, str], None]
# Called on the main thread for every progress message of every job, after the job's own
# callback: (fraction, message, cancel event). Scripts can watch jobs (or cancel them) here;
# the tests use it to cancel mid-run where no Esc key exists.
progress_listeners: list[Callable[[float, str, threading.Event], None]] = []

_active: Job | None = None


class JobCancelled(Exception):
    """The user cancelled (Esc) or `cancel()` was called."""


def active_job() -> Job | None:
    """The running job, if any (one at a time: the engine is heavy, results land in order).

    A job whose worker has ended no longer blocks others even if nobody collected its
    result (e.g. its modal operator was dropped when another file was opened)."""
    if _active is None or _active.finished or not _active.alive:
        return None
    return _active


def abandon_active() -> None:
    """Cancel the running job and forget it (a new file is being loaded)."""
    global _active
    if _active is not None:
        _active.cancel()
    _active = None


def notify(fraction: float, message: str, cancel: threading.Event) -> None:
    """Tell the progress listeners (main thread only)."""
    for listener in list(progress_listeners):
        listener(fraction, message, cancel)


class Job:
    """Runs `work(progress, cancel)` in a daemon thread.

    Attributes:
        cancel_event: set by `cancel()`; `work` should check it (the engine raises its
            `Cancelled` when it sees it).
        finished, result, error: outcome once `poll` has seen the end.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[Progress, threading.Event], Any],
        on_progress: Progress | None = None,
        cancel_event: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.work = work
        self.on_progress = on_progress
        self.cancel_event = cancel_event or threading.Event()
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_trace = ""
        self.fraction = 0.0
        self.message = ""
        self._queue: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ worker side
    def _progress(self, fraction: float, message: str) -> None:
        self._queue.put(("progress", float(fraction), str(message)))

    def _run(self) -> None:
        try:
            result = self.work(self._progress, self.cancel_event)
        except BaseException as err:  # handed to the main thread, which reports it
            self._queue.put(("error", err, traceback.format_exc()))
        else:
            self._queue.put(("done", result, None))

    # ------------------------------------------------------------------ main-thread side
    def start(self) -> Job:
        global _active
        if active_job() is not None:
            raise RuntimeError(f"another job is running ({_active.name}); wait or press Esc")
        _active = self
        self._thread = threading.Thread(target=self._run, name=f"gd-{self.name}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def poll(self, timeout: float = 0.0) -> bool:
        """Handle queued messages (main thread); True once the worker has ended."""
        deadline = time.monotonic() + timeout
        while not self.finished:
            wait = max(0.0, deadline - time.monotonic())
            try:
                kind, a, b = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                self.fraction, self.message = a, b
                if self.on_progress is not None:
                    self.on_progress(a, b)
                notify(a, b, self.cancel_event)
            else:
                if kind == "done":
                    self.result = a
                else:
                    self.error, self.error_trace = a, b
                self.finished = True
                if self._thread is not None:
                    self._thread.join()
        return self.finished

    def outcome(self) -> Any:
        """The result; raises JobCancelled when cancelled, or the worker's exception."""
        if not self.finished:
            raise RuntimeError("the job has not finished")
        if self.cancelled:
            raise JobCancelled(f"{self.name} cancelled")
        if self.error is not None:
            raise self.error
        return self.result

    def run_blocking(self) -> Any:
        """Start, drain the queue on this (main) thread until the end, return `outcome()`.

        The synchronous path for `bpy.app.background`, where no timer or modal event loop
        runs; the work still happens in the worker thread.
        """
        self.start()
        while not self.poll(timeout=0.05):
            pass
        return self.outcome()
