"""`gd train`: train (or resume) the object model on a props dataset, or the scene model
on a scenes dataset.

gd train --config object-small --data datasets/props256_s1 --out runs/small --steps 6000
gd train --config scene-small --data datasets/scenes256_s1 --out runs/scene-small \
    --input-size 128 --depth-weight 0.2
gd train --config runs/small/train_config.json --max-steps 500      # continue a run
torchrun --nproc_per_node 2 -m engine.cli train --config ... --device cpu   # DDP
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_args import add_command, add_config_flags, config_flags, positive_int
from .train_config import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "train",
                    "train the object or scene model (resumes from checkpoints)")  # fmt: skip
    p.add_argument("--config", default="object-small",
                   help="a model preset (object-tiny, object-small, object-paper on a props "
                        "dataset; scene-tiny, scene-small on a scenes dataset) or a "
                        "train_config.json of an earlier run")  # fmt: skip
    # One flag per documented TrainConfig field, help from the field (None: keep the
    # config's value).
    add_config_flags(p, TrainConfig)
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many steps in this call (the schedule still runs "
                        "to --steps; run again to continue)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .train import train

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
    overrides = {name: getattr(args, name) for name in config_flags(TrainConfig)}
    base.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(base)
    if not Path(cfg.data).is_dir():
        raise FileNotFoundError(
            f"{cfg.data}: dataset folder not found (make one with `gd data make`)"
        )
    out = train(cfg, max_steps=args.max_steps)
    print(f"run folder: {out} (config: {out / 'train_config.json'})")
    return 0
