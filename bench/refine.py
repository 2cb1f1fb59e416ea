"""Held-out PSNR after 10 / 30 / 60 s of refinement (`engine.refine`) from three starts,
side by side in one run, on the bundled sample props.

Each prop (examples/sample_props/objects/*: 4 input + 4 target views at 256²) is
refined on its 4 input views only and scored on its 4 target views (full-image PSNR on
white, and object-pixel PSNR where the target's alpha > 0.5), from
  (a) the shipped model's fine output (coarse + generative densification),
  (b) its coarse output alone,
  (c) random Gaussians in the box the coarse means span, as many as the fine set.
Every budget is its own run from the same start (the schedule — learning-rate decay,
densification until 70 % — stretches over the budget), so "30 s" means a 30-s run.
Peak memory is the process's peak resident set after each run (VmHWM, reset before).

    nice .venv/bin/python bench/refine.py                  # writes bench/results/refine.md
    nice .venv/bin/python bench/refine.py --budgets 5 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_and_memory  # noqa: E402
from engine.data.datasets import load_nerf_scene  # noqa: E402
from engine.metrics import psnr  # noqa: E402
from engine.refine import random_gaussians, refine  # noqa: E402
from engine.render import render  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "refine.md"
PROPS = ROOT / "examples" / "sample_props" / "objects"


def _peak_mib(reset: bool = False) -> float:
    """Peak resident set (VmHWM) in MiB; `reset` restarts it (Linux clear_refs)."""
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _alpha(path: Path, size: int) -> torch.Tensor:
    """(V, size, size) alpha of the views of a transforms.json (object-pixel masks)."""
    import json

    import numpy as np
    from PIL import Image

    data = json.loads(path.read_text())
    out = []
    for frame in data["frames"]:
        with Image.open(path.parent / frame["file_path"]) as im:
            a = im.convert("RGBA").resize((size, size), Image.BOX).getchannel("A")
            out.append(torch.from_numpy(np.asarray(a, dtype=np.float32)))
    return torch.stack(out) / 255.0


def score(gaussians, targets, cams, mask) -> tuple[float, float]:
    """Mean full-image and object-pixel PSNR over the target views."""
    with torch.no_grad():
        colors = render(gaussians, cams).colors
    full = float(psnr(colors, targets).mean())
    obj = float(psnr(colors, targets, mask > 0.5).nanmean())
    return full, obj


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[10.0, 30.0, 60.0])
    p.add_argument("--props", type=int, default=3, help="how many sample props")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()

    from engine.models import load_model

    model = load_model("object-small", device="cpu")
    load_before = os.getloadavg()
    rows = []
    props = sorted(d for d in PROPS.iterdir() if d.is_dir())[: args.props]
    for prop in props:
        inputs = load_nerf_scene(prop / "transforms_input.json")
        targets = load_nerf_scene(prop / "transforms_target.json")
        mask = _alpha(prop / "transforms_target.json", targets.cameras.width)
        rec = model.reconstruct(inputs.images, inputs.cameras)
        lo, hi = rec.coarse.means.amin(0), rec.coarse.means.amax(0)
        starts = {
            "fine": rec.gaussians,
            "coarse": rec.coarse,
            "random": random_gaussians(len(rec.gaussians), center=(lo + hi) / 2,
                                       half_size=float((hi - lo).max()) / 2,
                                       sh_degree=rec.gaussians.sh_degree, seed=0),  # fmt: skip
        }
        for name, start in starts.items():
            full, obj = score(start, targets.images, targets.cameras, mask)
            rows.append((prop.name, name, 0.0, full, obj, len(start), 0, 0.0, float("nan")))
            print(rows[-1], flush=True)
            for budget in args.budgets:
                _peak_mib(reset=True)
                res = refine(start, inputs.images, inputs.cameras, seconds=budget, seed=0)
                full, obj = score(res.gaussians, targets.images, targets.cameras, mask)
                rows.append((prop.name, name, budget, full, obj, len(res.gaussians), res.steps,
                             res.seconds, _peak_mib()))  # fmt: skip
                print(rows[-1], flush=True)
    load_after = os.getloadavg()

    lines = [
        "# Refinement benchmark (`bench/refine.py`)",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `nice {shlex.join(['python', *sys.argv])}`",
        f"- machine: {', '.join(x for x in cpu_and_memory() if x)}, {os.cpu_count()} logical "
        f"CPUs, torch {torch.__version__}, Python {platform.python_version()}",
        f"- load: 1/5/15-min load average {'/'.join(f'{x:.1f}' for x in load_before)} before, "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} after: other engineers' jobs shared the "
        "2 cores during the run (run under `nice`), so step counts per budget are lower than "
        "on an idle machine.",
        "- setup: `refine(start, 4 input views, seconds=B)`, default `RefineConfig` (batch of "
        "4 views, classic split/clone densification, no held-out views since there are only "
        "4); scored on the 4 target views at 256² (full image on white; object pixels: "
        "target alpha > 0.5). Starts: the shipped `object-small` model's fine output, its "
        "coarse output, random Gaussians in the coarse set's box (as many as the fine set).",
        "",
        "| prop | start | budget (s) | PSNR full (dB) | PSNR object (dB) | Gaussians | steps "
        "| seconds | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:g} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:,} | "
                     f"{r[6]} | {r[7]:.1f} | {r[8]:.0f} |")  # fmt: skip
    lines += ["", "Mean over props:", "", "| start | budget (s) | PSNR full (dB) | "
              "PSNR object (dB) |", "|---|---:|---:|---:|"]  # fmt: skip
    for name in ("fine", "coarse", "random"):
        for budget in [0.0, *args.budgets]:
            sel = [r for r in rows if r[1] == name and r[2] == budget]
            full = sum(r[3] for r in sel) / len(sel)
            obj = sum(r[4] for r in sel) / len(sel)
            lines.append(f"| {name} | {budget:g} | {full:.2f} | {obj:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
