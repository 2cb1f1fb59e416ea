"""`gd train`: train (or resume) the object model on a props dataset.

gd train --config object-small --data datasets/props256_s1 --out runs/small --steps 6000
gd train --config runs/small/train_config.json --max-steps 500      # continue a run
torchrun --nproc_per_node 2 -m engine.cli train --config ... --device cpu   # DDP
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_args import float_range, nonnegative_int, positive_float, positive_int

# Flags that map one to one onto TrainConfig fields (None: keep the config's value), each
# with the argparse type that checks it: counts, sizes and intervals are positive (the
# *_every ones divide the step), 0 means "the default" for render_size and threads.
_FIELDS = {
    "data": str, "out": str, "steps": positive_int, "batch_size": positive_int,
    "target_views": positive_int, "lr": positive_float, "warmup": nonnegative_int,
    "grad_clip": positive_float, "render_size": nonnegative_int,
    "densify_from": nonnegative_int, "feature_dropout": float_range(0.0, 1.0, high_open=True),
    "init": str, "init_densifier": str, "checkpoint_every": positive_int,
    "log_every": positive_int, "val_every": positive_int, "seed": nonnegative_int,
    "device": str, "threads": nonnegative_int,
}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the object model (resumes from checkpoints)")
    p.add_argument("--config", default="object-small",
                   help="a model preset (object-tiny, object-small, object-paper) or a "
                        "train_config.json of an earlier run")  # fmt: skip
    for name, kind in _FIELDS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    p.add_argument("--no-densify", dest="densify", action="store_false", default=None,
                   help="train the backbone alone (coarse losses only)")  # fmt: skip
    p.add_argument("--freeze-backbone", action="store_true", default=None)
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many steps in this call (the schedule still runs "
                        "to --steps; run again to continue)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    source = Path(args.config)
    if source.suffix == ".json":
        if not source.is_file():
            raise FileNotFoundError(f"{source}: training config not found")
        try:
            base = json.loads(source.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{source}: not valid JSON ({err})") from None
        except RecursionError:  # the parser recurses once a nesting level
            raise ValueError(f"{source}: not valid JSON (nested too deeply)") from None
        if not isinstance(base, dict):
            raise ValueError(f"{source}: a training config must be a JSON object")
    else:
        base = {"model": args.config, "out": f"runs/{args.config}"}
    overrides = {name: getattr(args, name) for name in (*_FIELDS, "densify", "freeze_backbone")}
    base.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(base)
    if not Path(cfg.data).is_dir():
        raise FileNotFoundError(
            f"{cfg.data}: dataset folder not found (make one with `gd data make`)"
        )
    out = train(cfg, max_steps=args.max_steps)
    print(f"run folder: {out} (config: {out / 'train_config.json'})")
    return 0
