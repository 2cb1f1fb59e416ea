"""Copy a training run's checkpoint into `engine/assets/` as the shipped weights.

    python tools/ship_weights.py runs/small-gd --name object-small --report docs/eval/object-small
    python tools/ship_weights.py runs/small-gd-gate --stages-from engine/assets/object-small.json
    python tools/ship_weights.py runs/scene-small --name scene-small --report docs/eval/scene-small

The shipped JSON keeps the model config (so `load_model` rebuilds the right network),
the training provenance (steps, data folder and seed, object counts, run configs of the
stages) and where the evaluation report is; the tensors are copied unchanged.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.weights import ASSETS, load_weights, save_weights  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="training run folder (with checkpoint/)")
    p.add_argument("--name", default="object-small")
    p.add_argument("--report", default="", help="evaluation report folder, recorded in the JSON")
    p.add_argument(
        "--stages",
        nargs="*",
        type=Path,
        default=[],
        help="earlier runs this one started from (their train_config.json is kept)",
    )
    p.add_argument(
        "--stages-from",
        type=Path,
        default=None,
        help="a shipped weights JSON (e.g. the one being replaced) whose recorded stages "
        "come first: the provenance of earlier runs whose folders are gone",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="inference budget K to record in the shipped config (default: the run's)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size to record in the shipped config (default: the run's); a scene "
        "model's backbone is convolutional, so weights trained on 128² views may ship for 256²",
    )
    args = p.parse_args()
    earlier = []
    if args.stages_from is not None:
        earlier = json.loads(args.stages_from.read_text())["training"]["stages"]
    state, meta = load_weights(args.run / "checkpoint" / "model.safetensors")
    training = meta["training"]
    train_cfg = training["train_config"]
    data = Path(train_cfg["data"])
    manifest = json.loads((data / "manifest.json").read_text()) if data.is_dir() else {}
    stages = list(earlier)
    for run in [*args.stages, args.run]:
        cfg = json.loads((run / "train_config.json").read_text())
        ck = json.loads((run / "checkpoint" / "model.json").read_text())
        stages.append({"run": str(run), "steps_done": ck["training"]["step"], "config": cfg})
    config = dict(meta["config"])
    if args.candidates is not None:
        if args.candidates < 1:
            p.error("--candidates must be >= 1")
        config["candidates"] = args.candidates
    if args.image_size is not None:
        config["image_size"] = args.image_size
    shipped = {
        "config": config,
        "training": {
            "stages": stages,
            "data": str(data),
            "data_seed": manifest.get("seed"),
            "data_counts": _counts(data, manifest),
            "data_resolution": manifest.get("resolution"),
            "generator_version": manifest.get("generator_version"),
            "machine": f"{platform.machine()}, {platform.system()}, CPU only (2 cores)",
        },
        "evaluation_report": args.report,
        "shipped": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    dest = ASSETS / f"{args.name}.safetensors"
    digest = save_weights(state, dest, shipped)
    size = dest.stat().st_size
    print(f"{dest} ({size / 1e6:.1f} MB, sha256 {digest})")
    return 0


def _counts(data: Path, manifest: dict) -> dict | None:
    """Finished items per split on disk (a dataset still being made has a stale manifest:
    `finished_in_split` counts what the run could read)."""
    from engine.data.layout import (
        SPLITS,
        finished_in_split,
        manifest_kind,
        object_dir,
        scene_dir,
    )

    if not manifest:
        return None
    folder = scene_dir if manifest_kind(manifest) == "scenes" else object_dir
    return {s: len(finished_in_split(manifest, s, lambda i: folder(data, i))) for s in SPLITS}


if __name__ == "__main__":
    sys.exit(main())
