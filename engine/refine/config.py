"""`RefineConfig`: every knob of `engine.refine.refine`, documented where declared.

Learning rates follow gsplat's `simple_trainer.py` defaults (themselves 3DGS's), which are
tuned for 3DGS's scene scale: positions move in units of the scene's extent, so the means'
rate is multiplied by it (`scene_scale`), every other rate is scale-free.
"""

from __future__ import annotations

from dataclasses import dataclass

DENSIFIERS = ("classic", "learned")


@dataclass(frozen=True)
class RefineConfig:
    """Settings of one refinement run (the defaults suit 4–64 views of one prop)."""

    # ---------------------------------------------------------------- optimisation
    batch_views: int = 2
    """Training views rendered per step (sampled without replacement, cycling through all
    of them so that every view is seen equally often). Two beat four per second of budget
    (twice the steps; bench/refine.py, 2 hemisphere props, 20 s)."""
    max_side: int = 512
    """Views whose longer side exceeds this are resampled down to it before refinement
    (0: keep their size). Step time grows with the pixel count."""
    warmup_steps: int = 200
    """The first this many steps (and never past half the budget) render the views at
    `warmup_side`, a coarse-to-fine schedule: a step there costs about a third of a full
    one, and the first steps mostly move colours and blobs, which a smaller image shows as
    well. Measured on 8 hemisphere props, 10 s from the fine start: +0.4 to +0.6 dB
    (29.63 against 29.27, 29.11 against 28.55 on two groups of 4), from the visual hull
    +0.1 to +0.2; at 30 s +0.1 for both (compare `bench/refine.py --set warmup_steps=0`).
    0: full size throughout, which suits continuing a splat refined already (there the
    warm-up blurs it until it ends: 27.9 against 31.4 dB 5 s into 10 more seconds)."""
    warmup_side: int = 128
    """Longer side of the views during the warm-up steps (no effect when the views are
    not larger)."""
    means_lr: float = 1.6e-4
    """Adam rate of the means, times the scene extent (gsplat: 1.6e-4 · scene_scale)."""
    means_lr_final: float = 0.01
    """The means' rate decays exponentially to this fraction of itself (3DGS's schedule)
    over `lr_decay_steps` steps, or over the whole budget when that is None."""
    lr_decay_steps: int | None = 3000
    """Steps over which the means' rate decays (then it stays at the final rate). A step
    count, not a fraction of the budget, so that a run's state after t seconds does not
    depend on how long the run was going to be: "30 more seconds" continues a refinement,
    and a 60-s run passes through what a 10-s run returns."""
    scales_lr: float = 5e-3
    """Adam rate of the log-scales."""
    quats_lr: float = 1e-3
    """Adam rate of the (unnormalised) quaternions."""
    opacities_lr: float = 5e-2
    """Adam rate of the opacity logits."""
    sh0_lr: float = 2.5e-3
    """Adam rate of the DC SH coefficient (the base colour)."""
    shN_lr: float = 2.5e-3 / 20
    """Adam rate of the higher SH coefficients (gsplat: 1/20 of the DC rate)."""
    ssim_weight: float = 0.0
    """Loss = L1 + ssim_weight · (1 − SSIM) (`loss.fast_ssim`; 3DGS uses 0.2). Off by
    default: the SSIM term costs ~15 % of a step on the CPU and, at these budgets, the
    steps it costs were worth more held-out PSNR than the term (2 props, 20 s: +0.4 to
    +0.9 dB without it, together with batch_views 2)."""
    scene_scale: float | None = None
    """Scene extent for the means' rate and the size thresholds; None: 1.1 × the largest
    distance of a camera centre from their mean (gsplat), at least 1e-3."""

    # ---------------------------------------------------------------- densification
    densify: bool = True
    """Grow and prune during refinement (False: optimise the given Gaussians only)."""
    densifier: str = "classic"
    """"classic": 3DGS clone/split (gsplat's DefaultStrategy); "learned": the GD module of
    the model passed as `refine(..., densifier=model)` (set automatically then)."""
    densify_every: int = 25
    """Steps between densifications (the first after this many steps). A 60-s CPU budget
    buys a few hundred steps, so growth has to start early."""
    densify_until: float = 1.0
    """No densification after this fraction of the budget (1: no limit by fraction)."""
    densify_until_step: int | None = 2000
    """No densification after this step (None: no limit by step); budget-independent like
    `lr_decay_steps`."""
    grad_threshold: float = 0.0002
    """Candidates need a mean view-space positional gradient above this, in gsplat's
    normalised units (pixel gradient × image half-size × views in the batch). With the
    AbsGS gradient (numba, gsplat) the threshold is 4× this, as gsplat does."""
    absgrad: bool = True
    """Accumulate the AbsGS absolute gradient where the backend has it (else the plain
    one); AbsGS does not let opposite pulls from different pixels cancel."""
    grow_fraction: float = 0.2
    """At most this fraction of the (trainable) Gaussians grows per densification: the
    highest gradients above the threshold (a naive probe grew the top 20 %, DESIGN §8)."""
    small_scale: float = 0.01
    """Gaussians whose largest scale is at most this × scene_scale are cloned, larger
    ones split into 2 (gsplat's grow_scale3d)."""
    split_scale_divisor: float = 1.6
    """Split children get the parent's scales divided by this (3DGS: 0.8·2)."""
    prune_opacity: float = 0.005
    """Gaussians less opaque than this are removed at each densification."""
    prune_scale: float = 0.1
    """Gaussians whose largest scale exceeds this × scene_scale are removed (gsplat's
    prune_scale3d)."""
    max_gaussians: int = 200_000
    """Densification never takes the count above this (pruning happens first)."""
    learned_budget: int = 4_000
    """Most Gaussians one learned densification may add (also bounded by
    max_gaussians); each candidate becomes the model's `fine_per_candidate` children."""

    # ---------------------------------------------------------------- held-out views
    holdout_min_views: int = 8
    """With at least this many views some are held out of the optimisation and scored."""
    holdout_every: int = 8
    """Automatic holdout: one view in every this many (at least one), evenly spaced."""
    eval_every: int = 50
    """Steps between held-out PSNR evaluations (also at the end); progress messages
    report the latest one."""
    keep_best: bool = True
    """With held-out views, return the state with the best held-out PSNR seen at an
    evaluation (not necessarily the last): with few views refinement can overfit."""

    def __post_init__(self) -> None:
        positive = ("batch_views", "densify_every", "eval_every", "holdout_every",
                    "max_gaussians", "learned_budget", "holdout_min_views",
                    "warmup_side")  # fmt: skip
        for name in ("lr_decay_steps", "densify_until_step"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"RefineConfig.{name} must be >= 1 or None, got {value}")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RefineConfig.{name} must be >= 1, got {getattr(self, name)}")
        rates = ("means_lr", "scales_lr", "quats_lr", "opacities_lr", "sh0_lr", "shN_lr",
                 "split_scale_divisor", "small_scale", "prune_scale")  # fmt: skip
        for name in rates:
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"RefineConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("grow_fraction", "densify_until", "means_lr_final"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                value = getattr(self, name)
                raise ValueError(f"RefineConfig.{name} must be in [0, 1], got {value}")
        if self.warmup_steps < 0:
            raise ValueError(f"RefineConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_side < 0:
            raise ValueError(f"RefineConfig.max_side must be >= 0, got {self.max_side}")
        if self.densifier not in DENSIFIERS:
            raise ValueError(f"RefineConfig.densifier must be one of {DENSIFIERS}, "
                             f"got {self.densifier!r}")  # fmt: skip
        if self.scene_scale is not None and not self.scene_scale > 0:
            raise ValueError(f"RefineConfig.scene_scale must be > 0, got {self.scene_scale}")
