"""Long engine work off Blender's main thread: a worker thread, a queue and a cancel Event.

bpy may only be touched on the main thread, so the worker gets plain data (tensors, arrays)
and hands back plain data; the main thread drains the queue (from a modal operator's timer
in the UI, or in a loop with `run_blocking` where there is no event loop: `bpy.app.background`,
where timers never fire) and applies the result to the scene.

A job holds nothing of Blender's: its work function is built from plain data (never a bound
method of an operator, never a `context`), and progress goes back through the queue, to be
read on the main thread (`fraction`, `message`) by whoever polls. The job outlives its
operator (`active_job`, the panel's progress box), so anything it held would stay alive and
be touched after Blender freed it. A finished job drops its work function.

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
# What a worker runs: work(progress, cancel) -> result, from plain data only.
Work = Callable[[Progress, threading.Event], Any]
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


def _forget(job: Job) -> None:
    """Stop pointing at a finished job, so its result is freed with its operator's."""
    global _active
    if _active is job:
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
        fraction, message: the latest progress `poll` has seen.
        finished, result, error: outcome once `poll` has seen the end.
    """

    def __init__(self, name: str, work: Work, cancel_event: threading.Event | None = None) -> None:
        self.name = name
        self.work: Work | None = work
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

    def _run(self, work: Work) -> None:
        try:
            result = work(self._progress, self.cancel_event)
        except BaseException as err:  # handed to the main thread, which reports it
            self._queue.put(("error", err, traceback.format_exc()))
        else:
            self._queue.put(("done", result, None))

    # ------------------------------------------------------------------ main-thread side
    def start(self) -> Job:
        global _active
        if active_job() is not None:
            raise RuntimeError(f"another job is running ({_active.name}); wait or press Esc")
        if self.work is None:
            raise RuntimeError(f"{self.name} already ran")
        _active = self
        work, self.work = self.work, None  # the thread holds it only while it runs
        self._thread = threading.Thread(
            target=self._run, args=(work,), name=f"gd-{self.name}", daemon=True
        )
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
                notify(a, b, self.cancel_event)
            else:
                if kind == "done":
                    self.result = a
                else:
                    self.error, self.error_trace = a, b
                self.finished = True
                if self._thread is not None:
                    self._thread.join()
                _forget(self)
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

    def run_blocking(self, on_progress: Progress | None = None) -> Any:
        """Start, drain the queue on this (main) thread until the end, return `outcome()`.

        The synchronous path for `bpy.app.background`, where no timer or modal event loop
        runs; the work still happens in the worker thread. `on_progress(fraction, message)`
        is called here, on the main thread, after each poll; the job does not keep it.
        """
        self.start()
        while not self.poll(timeout=0.05):
            if on_progress is not None:
                on_progress(self.fraction, self.message)
        return self.outcome()
