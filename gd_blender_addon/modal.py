"""The job operators' machinery: the modal timer and its synchronous twin, progress,
cancel, the one-job-at-a-time rule and the model stage. operators.py subclasses these
and only gathers settings; jobs.py runs the worker thread; results.py lands results.

Every long operator follows one pattern (`JobOperator`):
    prepare()  main thread: validate, read the scene, queue the stages below. Changes
               nothing, so a bad input leaves the scene exactly as it was.
    stages     the model loads in a worker thread (reading and hashing weights takes
               seconds); then one render per stage on the main thread (the UI redraws and
               Esc is seen between).
    job()      worker thread: the engine, with plain data in and out (no bpy, no operator).
    finish()   main thread: the result lands in the scene (one new object, or in place).
In the UI `execute` (a button, F3, a script) drives this from a modal timer (status bar
text, progress indicator, Esc cancels) and returns at once; with no event loop
(`bpy.app.background`, where timers never fire) it runs the same stages and blocks.
"""

from __future__ import annotations

import functools
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import bpy

from . import dependencies, jobs
from .errors import UserError
from .preferences import (
    MISSING_TORCH,
    SCENE_MODEL,
    get_prefs,
    scene_weights_for,
    weights_for,
)
from .refine_job import view_size

# ---------------------------------------------------------------------------- the model
_models: dict[tuple[str, str, str | None], Any] = {}


class ModelRequest(NamedTuple):
    """Which model to load, as plain strings: resolved on the main thread (preferences and
    the add-on's user folder are bpy), loaded in the worker."""

    name: str
    device: str
    weights: str | None


def model_request(context: bpy.types.Context) -> ModelRequest:
    """The model the preferences name (main thread). The add-on's folders go on sys.path
    here too: finding them calls `bpy.utils.extension_path_user`, which is bpy."""
    if not dependencies.torch_available():
        raise UserError(MISSING_TORCH)
    dependencies.setup_paths()
    prefs = get_prefs(context)
    return ModelRequest(prefs.model, prefs.device.lower(), weights_for(prefs))


def scene_model_request(context: bpy.types.Context) -> ModelRequest:
    """The scene model (Reconstruct Scene) with the preferences' device and Scene Weights
    File (main thread, as `model_request`)."""
    request = model_request(context)
    prefs = get_prefs(context)
    return ModelRequest(SCENE_MODEL, request.device, scene_weights_for(prefs))


def load_engine_model(name: str, device: str, weights: str | None) -> Any:
    """`engine.resolve.resolve_model`, cached per (name, device, weights). Worker thread: no
    bpy here (`model_request` resolved the paths). Tests replace this."""
    key = (name, device, weights)
    model = _models.get(key)
    if model is None:
        try:
            dependencies.check_engine_origin()
        except ImportError as err:
            raise UserError(str(err)) from None
        from engine.resolve import resolve_model

        _models.clear()  # one model in memory at a time
        model = resolve_model(name, device, weights=weights, hint=None)  # load_model_work hints
        _models[key] = model
    return model


MISSING_WEIGHTS_ADVICE = (
    "Download them in the add-on's preferences (Download Weights) or choose a weights file there"
)


def load_model_work(
    request: ModelRequest,
    progress: jobs.Progress,
    cancel: threading.Event,
    advice: str = MISSING_WEIGHTS_ADVICE,
) -> Any:
    """Worker: the requested model, with one clear error for missing weights (`advice`:
    what the user can do about it)."""
    progress(0.0, f"loading {request.name}")
    try:
        return load_engine_model(*request)
    except FileNotFoundError as err:  # engine.resolve.WeightsNotFoundError is one
        raise UserError(f"Model weights missing: {err}. {advice}") from None


def clear_models() -> None:
    _models.clear()


# ---------------------------------------------------------------------------- one job at a time
def blocked_by_job() -> str | None:
    job = jobs.active_job()
    return f"Busy: {job.name} is running (Esc or Cancel stops it)" if job else None


def engine_blocker() -> str | None:
    """Why no engine job can start now (PyTorch missing, another job running), or None:
    what every scene job's blocker checks first."""
    if not dependencies.torch_available():
        return MISSING_TORCH
    return blocked_by_job()


# ---------------------------------------------------------------------------- the driver
def is_interactive(context: bpy.types.Context) -> bool:
    """Whether an event loop will drive a modal operator: not `bpy.app.background` (timers
    never fire there, DESIGN.md §5) and a window to put the timer on."""
    return not bpy.app.background and getattr(context, "window", None) is not None


class Stage(NamedTuple):
    """One piece of a job operator. Main-thread stage: `run()` does it (`then` is None).
    Worker stage: `run()` (main thread) returns the worker's function, built from plain data;
    `then(result)` takes its result on the main thread."""

    message: str
    run: Callable[[], Any]
    then: Callable[[Any], None] | None


class JobOperator:
    """Shared modal/synchronous driver; subclasses define prepare/job/finish.

    `prepare` queues stages (`add_step`, `add_work`); the base runs them in order, then the
    job itself (`job()`, in the worker) and lands its result (`finish`). In the UI one stage
    advances per timer tick of a modal handler; without an event loop the same stages run
    in a loop (`_advance` serves both).
    """

    _job: jobs.Job | None = None
    _timer: Any = None
    job_name = "job"
    """What the status bar and the reports call the job; a subclass with a `bl_label` and
    no `job_name` of its own gets its label."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "job_name" not in vars(cls) and "bl_label" in vars(cls):
            cls.job_name = cls.bl_label

    # -- subclass API
    def prepare(self, context: bpy.types.Context) -> None:
        raise NotImplementedError

    def job(self) -> jobs.Work:
        """The job's worker function, made on the main thread once every queued stage ran.

        Build it with `functools.partial` of a module-level function over plain data: the
        worker must hold neither the operator nor `context` nor any bpy data (Blender frees
        the operator when it ends; the job may outlive it). The default hands over the bound
        `work` method, which keeps the operator: Download Weights still does that.
        """
        return self.work

    def work(self, progress: jobs.Progress, cancel: threading.Event) -> Any:
        raise NotImplementedError

    def finish(self, context: bpy.types.Context, result: Any) -> None:
        raise NotImplementedError

    def cleanup(self, context: bpy.types.Context) -> None:
        """Always called at the end (temporary files...)."""

    def add_step(self, message: str, step: Callable[[], None]) -> None:
        """Queue main-thread work (one render): each step gets its own timer tick."""
        self._stages.append(Stage(message, step, None))

    def add_work(
        self, message: str, make: Callable[[], jobs.Work], then: Callable[[Any], None]
    ) -> None:
        """Queue worker-thread work: `make()` returns the worker's function (see `job`),
        `then(result)` takes the result on the main thread."""
        self._stages.append(Stage(message, make, then))

    # -- driver
    def _setup(self, context: bpy.types.Context) -> None:
        self._cancel = threading.Event()
        self._stages: list[Stage] = []
        self._started = time.monotonic()
        self._job = None
        self._then: Callable[[Any], None] | None = None
        self._result: Any = None
        self._progress_on = False

    def _begin(self, context: bpy.types.Context) -> None:
        """Validate and queue everything (main thread); raises on bad input."""
        if jobs.active_job() is not None:
            raise UserError(blocked_by_job())
        self.prepare(context)
        self.add_work("starting", self.job, self._keep_result)
        self._stage_count = len(self._stages)

    def _keep_result(self, result: Any) -> None:
        self._result = result

    def _advance(self, context: bpy.types.Context, wait: float) -> bool:
        """Move the operation on by one piece (main thread): run the next stage, start its
        worker, or poll the running worker for up to `wait` seconds. True once the job's
        result is in `_result`. Raises JobCancelled or the worker's error."""
        if self._job is not None:
            if not self._job.poll(timeout=wait):
                self._progress(context, self._job.fraction, self._job.message)
                return False
            job, self._job = self._job, None
            self._then(job.outcome())
        elif self._stages:
            if self._cancel.is_set():
                raise jobs.JobCancelled()
            done = self._stage_count - len(self._stages)
            stage = self._stages.pop(0)
            # Renders and the model share the first 30%; the job reports 30-100% itself.
            self._main_progress(context, 0.3 * done / max(1, self._stage_count - 1), stage.message)
            if self._cancel.is_set():
                raise jobs.JobCancelled()
            if stage.then is None:
                stage.run()
            else:
                self._then = stage.then
                self._job = jobs.Job(self.job_name, stage.run(), self._cancel).start()
        return self._job is None and not self._stages

    def _progress(self, context: bpy.types.Context, fraction: float, message: str) -> None:
        wm = context.window_manager
        if not self._progress_on:
            wm.progress_begin(0, 1000)
            self._progress_on = True
        wm.progress_update(int(1000 * max(0.0, min(1.0, fraction))))
        text = f"{self.job_name}: {message} ({100 * fraction:.0f}%) - Esc to cancel"
        workspace = getattr(context, "workspace", None)
        if workspace is not None and not bpy.app.background:
            workspace.status_text_set(text)

    def _main_progress(self, context: bpy.types.Context, fraction: float, message: str) -> None:
        self._progress(context, fraction, message)
        jobs.notify(fraction, message, self._cancel)

    def _end(self, context: bpy.types.Context) -> None:
        if self._job is not None:  # an error on the main thread: stop the worker too
            self._job.cancel()
            self._job = None
        self._stages, self._then, self._result = [], None, None
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        if self._progress_on:
            context.window_manager.progress_end()
            self._progress_on = False
        workspace = getattr(context, "workspace", None)
        if workspace is not None and not bpy.app.background:
            workspace.status_text_set(None)
        try:
            self.cleanup(context)
        except Exception:
            traceback.print_exc()

    def _fail(self, err: BaseException) -> set[str]:
        if isinstance(err, jobs.JobCancelled):
            self.report({"WARNING"}, f"{self.job_name} cancelled; nothing was changed")
            return {"CANCELLED"}
        if isinstance(err, (UserError, ValueError, FileNotFoundError)):
            message = str(err)
        elif isinstance(err, OSError):
            message = f"File error: {err}"
        else:
            traceback.print_exception(err)
            message = f"Unexpected error ({type(err).__name__}: {err}); see the console"
        self.report({"ERROR"}, message)
        return {"CANCELLED"}

    def _finish(self, context: bpy.types.Context, result: Any) -> set[str]:
        self.finish(context, result)
        return {"FINISHED"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        """In the UI: start the modal job and return at once, so nothing that calls
        `execute` (a button, F3, a script) freezes Blender. Without an event loop: run it
        all here and return when the result has landed."""
        if is_interactive(context):
            return self.start_modal(context)
        return self.run_blocking(context)

    def run_blocking(self, context: bpy.types.Context) -> set[str]:
        """The synchronous path: the stages in a loop; the worker still does the job."""
        self._setup(context)
        try:
            self._begin(context)
            while not self._advance(context, wait=0.05):
                pass
            return self._finish(context, self._result)
        except BaseException as err:
            return self._fail(err)
        finally:
            self._end(context)

    def start_modal(self, context: bpy.types.Context) -> set[str]:
        """The UI path: validate and queue now, then a modal timer advances the stages."""
        self._setup(context)
        try:
            self._begin(context)
        except BaseException as err:
            self._end(context)
            return self._fail(err)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        self._progress(context, 0.0, "starting")
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: Any) -> set[str]:
        if event.type == "ESC" and event.value == "PRESS":
            self._cancel.set()
            self._progress(context, self._job.fraction if self._job else 0.0, "cancelling")
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            if not self._advance(context, wait=0.0):
                return {"RUNNING_MODAL"}
            status = self._finish(context, self._result)
        except BaseException as err:
            self._end(context)
            return self._fail(err)
        self._end(context)
        return status


# ---------------------------------------------------------------------------- scene jobs
class SceneJobOperator(JobOperator):
    """A job on the scene with the preferences' model: one engine job at a time, PyTorch
    needed; the tooltip says why it is disabled."""

    bl_options = {"UNDO"}  # not REGISTER: see operators.py's module docstring
    # staticmethod(context) -> why the operator cannot run, or a falsy value.
    blocker = None
    _model: Any = None
    _size = 0

    def _begin(self, context: bpy.types.Context) -> None:
        reason = engine_blocker()  # again: scripts run operators without the panel's check
        if reason:
            raise UserError(reason)
        super()._begin(context)

    def hold_in_object_mode(self, obj: bpy.types.Object) -> None:
        """Work on splat object `obj` in Object Mode (Edit Mode keeps its selection in edit
        data; Object Mode writes it back); `cleanup` puts it back in the mode it was in."""
        self._obj, self._mode = obj, obj.mode
        if obj.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")

    def cleanup(self, context: bpy.types.Context) -> None:
        """Remove the captures' temporary folder (`_tmp`), put the splat object (`_obj`)
        back in the mode it was in (`_mode`), and let the model go."""
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        obj, mode = getattr(self, "_obj", None), getattr(self, "_mode", "OBJECT")
        try:
            if obj is not None and mode != "OBJECT" and obj.mode != mode:
                bpy.ops.object.mode_set(mode=mode)
        except ReferenceError:  # the object was deleted while the job ran
            pass
        self._obj = self._model = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if jobs.active_job() is not None:
            cls.poll_message_set(blocked_by_job())
            return False
        return context.scene is not None

    @classmethod
    def description(cls, context: bpy.types.Context, properties: Any) -> str:
        reason = cls.blocker(context)
        return f"Disabled: {reason}" if reason else (cls.__doc__ or "")

    def add_model_stage(
        self,
        context: bpy.types.Context,
        request: ModelRequest | None = None,
        advice: str = MISSING_WEIGHTS_ADVICE,
    ) -> None:
        """Queue loading the preferences' model (or `request`) in the worker. Once it is
        there (main thread) pick the render size, `_size`, which the render steps queued
        after this read when they run. Any number of views: the model reads at most its
        `max_views` of them, spread around the prop (`refine_job.spread_views`); refinement
        uses all. `advice` ends the missing-weights error."""
        request = request or model_request(context)
        resolution = int(context.scene.gd_splat.resolution)

        def loaded(model: Any) -> None:
            self._model = model
            self._size = resolution or view_size(model)

        def make() -> jobs.Work:
            return functools.partial(load_model_work, request, advice=advice)

        self.add_work("loading the model", make, loaded)
