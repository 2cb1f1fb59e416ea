"""`refine`: optimise every Gaussian parameter against posed views for a time budget or a
step count, densifying as it goes (DESIGN.md §8, "Refinement from a feed-forward start")."""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..images import resize_views
from ..metrics import psnr
from .config import RefineConfig
from .densify import (
    DensifyStats,
    GradientStats,
    clone_and_split,
    grow_candidates,
    learned_densify,
    prune,
)
from .errors import RefineError
from .loss import refine_loss
from .params import GaussianParams, learning_rates
from .views import farthest_point_views, holdout_indices, scene_scale

Progress = Callable[[float, str], None]


@dataclass
class RefineResult:
    """What `refine` returns.

    Attributes:
        gaussians: the refined Gaussians (detached, on the input's device); with held-out
            views and `keep_best`, the state with the best held-out PSNR.
        trainable: (N,) bool, the rows that were allowed to change (all, or the `select`ed
            ones and what densification made of them): `gaussians[~trainable]` is the
            input's `gaussians[~select]`, bit for bit and in the same order.
        steps: optimisation steps taken.
        seconds: wall time of the whole call.
        cancelled: the cancel event stopped the run early.
        holdout: (H,) int64 indices of the held-out views (empty: none).
        holdout_psnr: held-out PSNR (dB, mean over those views) of the returned state, or
            None without held-out views; `holdout_psnr_start` the same before step one.
        counts: "start", "final", "pruned", "cloned", "split", "learned_candidates",
            "learned_added" Gaussian counts.
        loss_history: training loss of every step.
        psnr_history: (step, held-out PSNR) at each evaluation.
        densify_seconds: wall time spent pruning and growing (included in `seconds`).
        snapshots: (seconds, step, Gaussians) for each of `refine(snapshots=...)`: the state
            a run with that budget would have ended with (the schedule does not depend on
            the budget), taken when the next step would cross it.
    """

    gaussians: Gaussians
    trainable: Tensor
    steps: int
    seconds: float
    cancelled: bool
    holdout: Tensor
    holdout_psnr: float | None
    holdout_psnr_start: float | None
    counts: dict[str, int] = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)
    psnr_history: list[tuple[int, float]] = field(default_factory=list)
    snapshots: list[tuple[float, int, Gaussians]] = field(default_factory=list)
    densify_seconds: float = 0.0


def _check_args(
    gaussians: Gaussians,
    images: Tensor,
    cameras: Cameras,
    seconds: float | None,
    steps: int | None,
    select: Tensor | None,
) -> None:
    if not isinstance(gaussians, Gaussians):
        raise RefineError(f"gaussians must be engine.Gaussians, got {type(gaussians).__name__}")
    if len(gaussians) == 0:
        raise RefineError("there are no Gaussians to refine")
    if not isinstance(cameras, Cameras):
        raise RefineError(f"cameras must be engine.cameras.Cameras, got {type(cameras).__name__}")
    if (seconds is None) == (steps is None):
        raise RefineError("give exactly one of seconds= (a time budget) or steps=")
    if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds)
                                    and seconds > 0):  # fmt: skip
        raise RefineError(f"seconds must be a finite number > 0, got {seconds!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise RefineError(f"steps must be an integer >= 1, got {steps!r}")
    shape = (len(cameras), cameras.height, cameras.width, 3)
    if not isinstance(images, Tensor) or tuple(images.shape) != shape:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise RefineError(f"images must be a tensor of shape {shape}, got {got}")
    if not bool(torch.isfinite(images).all()):
        raise RefineError("images have NaN or infinite pixels")
    if select is not None:
        if not isinstance(select, Tensor) or select.dtype != torch.bool or \
                tuple(select.shape) != (len(gaussians),):  # fmt: skip
            raise RefineError(f"select must be a bool tensor of shape ({len(gaussians)},)")
        if not bool(select.any()):
            raise RefineError("select is empty: nothing would be refined")


def _shrink_to(images: Tensor, cameras: Cameras, side: int) -> tuple[Tensor, Cameras]:
    """(V, H, W, 3) views and their cameras resampled so the longer side is at most `side`
    (aspect kept; unchanged when already within it)."""
    longer = max(cameras.width, cameras.height)
    if longer <= side:
        return images, cameras
    w = max(1, round(cameras.width * side / longer))
    h = max(1, round(cameras.height * side / longer))
    return resize_views(images, cameras, w, h)


def _snapshot(params: GaussianParams) -> tuple[Gaussians, Tensor]:
    return params.snapshot(), params.trainable.clone()


_loss = refine_loss  # the name earlier callers used


def _one_torch_thread(fn: Callable[..., RefineResult]) -> Callable[..., RefineResult]:
    """Run `fn` with PyTorch on one thread when it renders with the numba kernels.

    The heavy work is then in numba's own threads; PyTorch's few small ops per step gain
    nothing from a second thread, and its OpenMP pool waiting at barriers beside numba's
    made a step 4x slower in wall time on a shared 2-core machine (0.42 s against 2.3 s,
    measured on a hemisphere prop, load average 8). The previous count is restored."""

    @functools.wraps(fn)
    def wrapper(gaussians: Gaussians, *args: Any, **kwargs: Any) -> RefineResult:
        from ..render import resolve_backend

        on_numba = False
        if isinstance(gaussians, Gaussians):
            with contextlib.suppress(ValueError):  # refine itself reports a bad backend
                on_numba = resolve_backend(kwargs.get("backend", "auto"),
                                           gaussians.device) == "numba"  # fmt: skip
        if not on_numba:
            return fn(gaussians, *args, **kwargs)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(gaussians, *args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


@_one_torch_thread
def refine(
    gaussians: Gaussians,
    images: Tensor,
    cameras: Cameras,
    *,
    seconds: float | None = None,
    steps: int | None = None,
    holdout: int | Sequence[int] | None = None,
    select: Tensor | None = None,
    densifier: Any = None,
    background: Sequence[float] | Tensor = (1.0, 1.0, 1.0),
    backend: str = "auto",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    seed: int = 0,
    config: RefineConfig | None = None,
    snapshots: Sequence[float] = (),
) -> RefineResult:
    """Optimise all parameters of `gaussians` against posed views, densifying as it goes.

    Args:
        gaussians: N Gaussians (any device; the result stays there).
        images: (V, H, W, 3) RGB in [0, 1] on `background`, V >= 1 (4 to 64 is typical).
        cameras: the V cameras (one image size); views larger than `config.max_side` are
            resampled down to it.
        seconds: wall-clock budget (the last step ends within it; a first step that does
            not fit raises). Exactly one of `seconds` and `steps`.
        steps: number of optimisation steps.
        holdout: views kept out of the optimisation and scored (see
            `views.holdout_indices`; default: automatic with >= 8 views).
        select: optional (N,) bool: only these Gaussians (and their children) change,
            get pruned or densified; every other one is returned bit-identical, in order
            (`RefineResult.trainable` marks which is which).
        densifier: a model with `densify()` (`engine.models.GDObjectModel`): grow with its
            learned GD module instead of 3DGS clone/split.
        background: RGB behind the splats (white: the object convention).
        backend: renderer backend (`engine.render`): numba on CPU, gsplat on CUDA, torch.
        progress: called with (fraction done, message naming the step and held-out PSNR).
        cancel: set it to stop after the current step; the best state so far is returned.
        seed: seeds view sampling and split offsets.
        config: `RefineConfig` (defaults otherwise).
        snapshots: budgets (seconds with `seconds=`, steps with `steps=`) at which to keep a
            copy of the Gaussians in `RefineResult.snapshots` (benchmarks score several
            budgets from one run this way); the copying is not counted against the budget.
    Raises:
        RefineError (a ValueError): bad budget, views or selection; a time budget too small
            for one step.
    """
    from ..render import render, resolve_backend

    cfg = config or RefineConfig()
    _check_args(gaussians, images, cameras, seconds, steps, select)
    start = time.perf_counter()
    report = progress or (lambda f, m: None)
    device = gaussians.device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    dev_generator = torch.Generator(device=device).manual_seed(seed)
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    chosen_backend = resolve_backend(backend, device)
    absgrad = cfg.absgrad and chosen_backend != "torch"

    images = images.to(device=device, dtype=torch.float32)
    cameras = cameras.to(device=device, dtype=torch.float32)
    if cfg.max_side:
        images, cameras = _shrink_to(images, cameras, cfg.max_side)
    small_images, small_cameras = images, cameras
    if cfg.warmup_steps:
        small_images, small_cameras = _shrink_to(images, cameras, cfg.warmup_side)
    held = holdout_indices(len(cameras), holdout, cfg)
    train_mask = torch.ones(len(cameras), dtype=torch.bool)
    train_mask[held] = False
    train_idx = train_mask.nonzero().flatten()
    extent = cfg.scene_scale or scene_scale(cameras[train_idx])
    learned = densifier is not None
    learned_views = None
    if learned:
        if not callable(getattr(densifier, "densify", None)):
            raise RefineError("densifier must be a model with a densify() method")
        learned_views = train_idx[farthest_point_views(cameras[train_idx], densifier.max_views)]

    trainable = torch.ones(len(gaussians), dtype=torch.bool, device=device)
    if select is not None:
        trainable = select.to(device)
    lrs = learning_rates(cfg, extent)
    params = GaussianParams(gaussians, lrs, trainable)
    stats = GradientStats(len(params), device)
    counts = DensifyStats()
    threshold = cfg.grad_threshold * (4.0 if absgrad else 1.0)

    eval_seconds = [0.0]  # the last evaluation's time: the budget keeps it for the final one

    def evaluate() -> float | None:
        if held.numel() == 0:
            return None
        t_eval = time.perf_counter()
        with torch.no_grad():
            g = params.gaussians()
            scores = [psnr(render(g, cameras[[int(i)]], background=bg, backend=backend,
                                  depth=False).colors,
                           images[[int(i)]]) for i in held]  # fmt: skip
        eval_seconds[0] = time.perf_counter() - t_eval
        return float(torch.cat(scores).mean())

    best_psnr = evaluate()
    start_psnr = best_psnr
    best_state = _snapshot(params) if best_psnr is not None and cfg.keep_best else None
    psnr_history = [] if best_psnr is None else [(0, best_psnr)]
    latest_psnr = best_psnr
    losses: list[float] = []
    order: list[int] = []
    step = 0
    cancelled = False
    step_times: list[float] = []
    densify_seconds = 0.0
    loop_start = time.perf_counter()
    pending = sorted(float(b) for b in snapshots)
    taken: list[tuple[float, int, Gaussians]] = []
    paused = [0.0]  # seconds spent copying snapshots, left out of the budget

    def elapsed() -> float:
        return time.perf_counter() - start - paused[0]

    def take_snapshots(final: bool) -> None:
        # A budget's state is the last one before a step would cross it (as the budget
        # check below stops), or the final state when the run ends first.
        while pending:
            if steps is not None:
                due = final or step >= pending[0]
            else:
                due = final or elapsed() + max(step_times[-5:], default=0.0) > pending[0]
            if not due:
                break
            t_s = time.perf_counter()
            taken.append((pending.pop(0), step, params.snapshot()))
            paused[0] += time.perf_counter() - t_s

    def fraction() -> float:
        if steps is not None:
            return step / steps
        return min(1.0, elapsed() / seconds)

    while True:
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        if steps is not None and step >= steps:
            break
        if seconds is not None and step > 0:
            # Stop when the next step and the final held-out evaluation would run past the
            # budget. The slowest of the recent steps predicts the next: on a shared
            # machine one step can take twice the mean.
            remaining = seconds - elapsed()
            if remaining < max(step_times[-5:]) + eval_seconds[0]:
                break
        t0 = time.perf_counter()
        if len(order) < cfg.batch_views:
            order += train_idx[torch.randperm(len(train_idx), generator=generator)].tolist()
        batch, order = order[: cfg.batch_views], order[cfg.batch_views :]
        batch = list(dict.fromkeys(batch))  # a view once per batch (few training views)

        # means lr: 3DGS's exponential decay, over lr_decay_steps (or the budget).
        decay = min(1.0, step / cfg.lr_decay_steps) if cfg.lr_decay_steps else fraction()
        params.set_lr("means", lrs["means"] * cfg.means_lr_final**decay)
        # Coarse-to-fine: the first steps at warmup_side. Never past half the budget, so a
        # short run still ends with full-size steps.
        warm = step < cfg.warmup_steps and fraction() < 0.5
        step_images, step_cameras = (small_images, small_cameras) if warm else (images, cameras)
        out = render(params.gaussians(), step_cameras[batch], background=bg, backend=backend,
                     absgrad=absgrad, depth=False)  # fmt: skip
        loss = refine_loss(out.colors, step_images[batch], cfg.ssim_weight)
        loss.backward()
        grad = getattr(out.means2d, "absgrad", None) if absgrad else None
        if grad is None:
            grad = out.means2d.grad
        if grad is not None:
            stats.add(grad.detach(), out.radii > 0, step_cameras.width, step_cameras.height)
        params.step()
        step += 1
        losses.append(float(loss.detach()))
        step_times.append(time.perf_counter() - t0)

        if seconds is not None and step == 1 and time.perf_counter() - start > seconds:
            raise RefineError(
                f"a time budget of {seconds:g} s is too small for one refinement step "
                f"(the first took {time.perf_counter() - loop_start:.2f} s with "
                f"{len(params):,} Gaussians at {cameras.width}x{cameras.height})"
            )

        until = cfg.densify_until_step
        densify_now = (cfg.densify and step % cfg.densify_every == 0
                       and fraction() <= cfg.densify_until
                       and (until is None or step <= until))  # fmt: skip
        if densify_now:
            t_d = time.perf_counter()
            kept = prune(params, cfg, extent)
            counts.pruned += int((~kept).sum())
            scores = stats.mean()[kept]  # the statistics follow the rows pruning kept
            room = cfg.max_gaussians - len(params)
            if learned:
                fpc = float(densifier.fine_per_candidate)
                room = min(room, cfg.learned_budget)
                k = int(room // max(fpc - 1.0, 1e-6))
            else:
                k = room
            selected = grow_candidates(params, scores, cfg, threshold, k)
            if bool(selected.any()):
                if learned:
                    c, a = learned_densify(params, selected, densifier, images[learned_views],
                                           cameras[learned_views], room)  # fmt: skip
                    counts.learned_candidates += c
                    counts.learned_added += a
                else:
                    c, s = clone_and_split(params, selected, cfg, extent, dev_generator)
                    counts.cloned += c
                    counts.split += s
            stats = GradientStats(len(params), device)
            step_times[-1] += time.perf_counter() - t_d
            densify_seconds += time.perf_counter() - t_d

        if held.numel() and (step % cfg.eval_every == 0):
            latest_psnr = evaluate()
            psnr_history.append((step, latest_psnr))
            if cfg.keep_best and latest_psnr > best_psnr:
                best_psnr, best_state = latest_psnr, _snapshot(params)
        shown = "" if latest_psnr is None else f", held-out PSNR {latest_psnr:.2f} dB"
        report(fraction(), f"refining: step {step}, {len(params):,} Gaussians{shown}")
        take_snapshots(final=False)

    take_snapshots(final=True)
    # The final state, scored (unless just scored), against the best one seen.
    final_psnr = latest_psnr
    if held.numel() and (not psnr_history or psnr_history[-1][0] != step):
        final_psnr = evaluate()
        psnr_history.append((step, final_psnr))
    result_g, result_trainable, result_psnr = params.snapshot(), params.trainable, final_psnr
    if best_state is not None and best_psnr > final_psnr:
        (result_g, result_trainable), result_psnr = best_state, best_psnr
    report(1.0, "refined" + ("" if result_psnr is None else f": held-out {result_psnr:.2f} dB"))
    return RefineResult(
        gaussians=result_g, trainable=result_trainable, steps=step,
        seconds=time.perf_counter() - start, cancelled=cancelled, holdout=held,
        holdout_psnr=result_psnr, holdout_psnr_start=start_psnr,
        counts={"start": len(gaussians), "final": len(result_g), **counts.__dict__},
        loss_history=losses, psnr_history=psnr_history, snapshots=taken,
        densify_seconds=densify_seconds,
    )  # fmt: skip
