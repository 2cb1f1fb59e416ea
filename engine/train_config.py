"""`TrainConfig`: the hyper-parameters of a training run, each documented where it is
declared; `gd train` makes its flags and their help from these fields
(`cli_args.add_config_flags`). It imports no training code, so building the command line
does not load the model, the renderer or the data pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .cli_args import (
    count_range,
    float_range,
    nonnegative_int,
    option,
    positive_float,
    positive_int,
)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run (saved with every checkpoint).

    Each field says what it means where it is declared; `gd train --help` shows the same
    words (`cli_args.add_config_flags` makes the flags from these fields).
    """

    model: str = option("object-small", "model preset to train (gd train --config)")
    data: str = option("datasets/props256_s1", "props or scenes dataset folder (`gd data make`)",
                      str)  # fmt: skip
    out: str = option("runs/object-small", "run folder (checkpoints, metrics.jsonl, curves.png)",
                      str)  # fmt: skip
    steps: int = option(20_000, "total optimizer steps", positive_int)
    batch_size: int = option(1, "objects per step and process", positive_int)
    target_views: int = option(4, "random target views rendered per object per step",
                               positive_int)  # fmt: skip
    rig_views: tuple[int, int] = option(
        (0, 0),
        "random camera rigs: each step reads between the two counts of input views drawn "
        "from ALL of an object's views (ring and targets), the loss the rest; (0, 0): the "
        "dataset's input ring, as rendered. Teaches the model 1 to max_views views from "
        "any rig (--rig-views 2-8)",
        count_range,
    )
    alpha_weight: float = option(0.0, "weight of the silhouette loss: MSE between the "
                                      "rendered and the true alpha of the loss views",
                                 float_range(0.0, 100.0))  # fmt: skip
    lr: float = option(1e-3, "AdamW peak learning rate", positive_float)
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas")
    weight_decay: float = option(0.05, "AdamW weight decay")
    warmup: int = option(300, "linear learning-rate warm-up steps (then cosine decay)",
                         nonnegative_int)  # fmt: skip
    grad_clip: float = option(1.0, "gradient clipping norm", positive_float)
    ms_ssim_weight: float = option(0.5, "w of the loss MSE + w·(1 − MS-SSIM)")
    render_size: int = option(
        0,
        "side at which the loss views are rendered (the ground truth is area-downsampled "
        "to it); 0: the model's image size. Small renders first (DESIGN.md §8) make early "
        "steps several times cheaper; a render size above the model's input size (decoded "
        "from the data at that size) lets the loss see detail finer than the inputs' "
        "pixels, where densification helps most",
        nonnegative_int,
    )
    input_size: int = option(
        0,
        "scene models: side the context views are read at while training (0: the "
        "model's image size); the backbone is convolutional and its plane sweep computed, "
        "so 128² steps teach what 256² inference uses at a quarter of the cost",
        nonnegative_int,
    )
    depth_weight: float = option(0.0, "scene models: weight of the L1 inverse-depth loss on "
                                      "the coarse Gaussians in the context views (the "
                                      "dataset's rendered depth; 0: off)",
                                 float_range(0.0, 100.0))  # fmt: skip
    range_jitter: float = option(0.0, "scene models: widen the depth range at random by up "
                                      "to this fraction (near down, far up) so the model "
                                      "does not learn that surfaces touch near and far",
                                 float_range(0.0, 0.9))  # fmt: skip
    densify: bool = option(True, "train the densifier and its losses (off: the backbone "
                                 "alone, coarse losses only)")  # fmt: skip
    densify_from: int = option(0, "step at which densification starts (the backbone first "
                                  "learns coarse shapes; candidates from an untrained "
                                  "backbone are noise)", nonnegative_int)  # fmt: skip
    freeze_backbone: bool = option(False, "train the densifier only")
    candidates: int = option(0, "densification candidates K the model trains with and its "
                                "saved config infers with (per context view for scene "
                                "models); 0: the model preset's own",
                             nonnegative_int)  # fmt: skip
    feature_dropout: float = option(0.25, "probability of hiding the backbone features from "
                                          "the densifier (so it also densifies splats that "
                                          "have none)",
                                    float_range(0.0, 1.0, high_open=True))  # fmt: skip
    init: str = option("", "weights to start from (e.g. a coarse-only run), not a resume",
                       str)  # fmt: skip
    init_densifier: str = option("", "weights whose densifier tensors replace --init's, to "
                                     "continue a trained densifier on a backbone that "
                                     "trained further", str)  # fmt: skip
    checkpoint_every: int = option(200, "steps between checkpoints", positive_int)
    log_every: int = option(10, "steps between metrics.jsonl lines", positive_int)
    val_every: int = option(500, "steps between validations", positive_int)
    val_objects: int = option(16, "validation objects scored each time")
    seed: int = option(0, "base seed (each process offsets it by its rank)", nonnegative_int)
    device: str = option("auto", "auto, cpu, cuda or mps", str)
    threads: int = option(0, "torch intra-op threads (0: torch's default)", nonnegative_int)
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(TrainConfig)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        data = dict(data)
        for key in ("betas", "rig_views"):
            if key in data:
                data[key] = tuple(data[key])
        return TrainConfig(**data)
