"""Held-out PSNR after 10 / 30 / 60 s of refinement (`engine.refine`) from three starts,
side by side in one run, on held-out props of the generated test split (issue 15).

Each prop (a `gd data make ... --rig hemisphere --views-in 16 --views-target 8` folder:
16 input views over the upper hemisphere, 8 random target views, 256²) is refined on
its 16 input views (no views held out of the optimisation) and scored on its 8 target
views: full-image PSNR on white, and object-pixel PSNR over the ground-truth alpha > 0.5
(dilated, as `gd evaluate` does). Starts:
  fine    the shipped model's output (coarse + generative densification) from its
          `max_views` input views spread furthest around the prop (as `gd reconstruct`
          picks them; 8 for object-small v2),
  coarse  its coarse output alone,
  hull    the visual hull of all 16 views (engine.baselines.visual_hull, non-learned).
Budget 0 is the start itself (the fine row is the fine render's own score).

One refinement run of the longest budget per (prop, start); the shorter budgets are
snapshots of that run (`refine(snapshots=...)`). The schedule is budget-independent (the
means' rate decays over `lr_decay_steps` steps, densification stops at a step, no
held-out views, no best-state selection; the low-resolution warm-up's 200 steps take a
few seconds, well inside half the shortest budget, where a time budget would cut them),
so a snapshot at 10 s is the state a 10-s run ends with; copying a snapshot is not
counted against the budget.

Rows are appended to a JSON-lines file as each (prop, start) finishes; running the same
command again resumes, and `--report` writes the markdown from the rows alone.

    gd data make datasets/hemi16_s1 --objects 320 --seed 1 --res 256 --views-in 16 \\
        --views-target 8 --rig hemisphere --splits test --workers 1
    nice .venv/bin/python bench/refine.py --props 16           # -> bench/results/refine.md
    nice .venv/bin/python bench/refine.py --props 2 --seconds 10 --snapshots 5 10 \\
        --rows /tmp/rows.jsonl --no-write --set ssim_weight=0  # quick variants
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
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
from engine.data.layout import read_manifest  # noqa: E402
from engine.evaluate import object_mask  # noqa: E402
from engine.metrics import psnr  # noqa: E402
from engine.refine import RefineConfig, farthest_point_views, refine  # noqa: E402
from engine.render import render  # noqa: E402
from engine.views import load_nerf_scene  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "refine.md"
DATA = ROOT / "datasets" / "hemi16_s1"
ROWS = ROOT / "datasets" / "bench_refine_rows.jsonl"
STARTS = ("fine", "coarse", "hull")


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


def score(gaussians, targets, cams, mask) -> tuple[float, float]:
    """Mean full-image and object-pixel PSNR over the target views."""
    with torch.no_grad():
        colors = render(gaussians, cams).colors
    full = float(psnr(colors, targets).mean())
    obj = float(psnr(colors, targets, mask > 0.5).nanmean())
    return full, obj


def _parse_set(items: list[str]) -> dict:
    """key=value overrides of RefineConfig fields (values parsed as JSON, else strings)."""
    names = {f.name for f in dataclasses.fields(RefineConfig)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in names:
            raise SystemExit(f"--set: RefineConfig has no field {key!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def held_out_props(root: Path, count: int) -> list[Path]:
    manifest = read_manifest(root)
    ids = sorted(manifest["splits"]["test"])[:count]
    return [root / "objects" / f"{i:06d}" for i in ids]


def run(args: argparse.Namespace) -> None:
    from engine.baselines.visual_hull import visual_hull_gaussians
    from engine.resolve import resolve_model

    overrides = _parse_set(args.set)
    cfg = RefineConfig(**overrides)
    model = resolve_model("object-small", device="cpu")
    done = {(r["prop"], r["start"]) for r in _read_rows(args.rows)}
    for prop in held_out_props(args.data, args.props):
        if all((prop.name, s) in done for s in args.starts):
            continue
        inputs = load_nerf_scene(prop / "transforms_input.json")
        targets = load_nerf_scene(prop / "transforms_target.json")
        mask = object_mask(targets.alphas)
        t0 = time.perf_counter()
        chosen = farthest_point_views(inputs.cameras, model.max_views)
        rec = model.reconstruct(inputs.rgba()[chosen], inputs.cameras[chosen])
        model_s = time.perf_counter() - t0
        starts = {"fine": rec.gaussians, "coarse": rec.coarse}
        if "hull" in args.starts:
            t0 = time.perf_counter()
            rgba = torch.cat([inputs.images, inputs.alphas[..., None]], dim=-1)
            starts["hull"] = visual_hull_gaussians(rgba, inputs.cameras)
            hull_s = time.perf_counter() - t0
        for name in args.starts:
            if (prop.name, name) in done:
                continue
            start = starts[name]
            load_before = os.getloadavg()
            full0, obj0 = score(start, targets.images, targets.cameras, mask)
            _peak_mib(reset=True)
            budget = {"steps": args.steps} if args.steps else {"seconds": args.seconds}
            res = refine(start, inputs.images, inputs.cameras, **budget,
                         snapshots=args.snapshots, holdout=0, seed=0, config=cfg,
                         densifier=model if args.densifier == "learned" else None)  # fmt: skip
            peak = _peak_mib()
            budgets = [{"budget": 0.0, "full": full0, "object": obj0, "count": len(start),
                        "step": 0}]  # fmt: skip
            for budget, step, g in res.snapshots:
                full, obj = score(g, targets.images, targets.cameras, mask)
                budgets.append({"budget": budget, "full": full, "object": obj,
                                "count": len(g), "step": step})  # fmt: skip
            row = {
                "prop": prop.name, "start": name, "budgets": budgets, "peak_rss_mib": peak,
                "steps": res.steps, "seconds": res.seconds, "counts": res.counts,
                "start_seconds": model_s if name != "hull" else hull_s,
                "load_before": load_before, "load_after": os.getloadavg(),
                "densifier": args.densifier, "config": overrides,
                "unit": "steps" if args.steps else "s",
                "densify_seconds": res.densify_seconds,
                "budget_arg": (f"steps={args.steps}" if args.steps
                               else f"seconds={args.seconds:g}"),
                "snapshot_args": args.snapshots,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }  # fmt: skip
            with open(args.rows, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            summary = " ".join(f"{b['budget']:g}s:{b['full']:.2f}" for b in budgets)
            print(f"{prop.name} {name:6s} {summary} n={len(res.gaussians)} steps={res.steps}",
                  flush=True)  # fmt: skip


def _read_rows(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def report(args: argparse.Namespace, command: str) -> str:
    rows = _read_rows(args.rows)
    if not rows:
        raise SystemExit(f"{args.rows}: no rows")
    props = sorted({r["prop"] for r in rows})
    starts = [s for s in STARTS if any(r["start"] == s for r in rows)]
    budgets = sorted({b["budget"] for r in rows for b in r["budgets"]})
    unit = rows[0].get("unit", "s")
    loads = [r["load_before"][0] for r in rows] + [r["load_after"][0] for r in rows]
    first = min(rows, key=lambda r: r["time"])
    last = max(rows, key=lambda r: r["time"])
    lines = [
        "# Refinement benchmark (`bench/refine.py`)",
        "",
        f"- date: {first['time']} to {last['time']} (UTC)",
        f"- command: `{command}`",
        f"- machine: {', '.join(x for x in cpu_and_memory() if x)}, {os.cpu_count()} logical "
        f"CPUs, torch {torch.__version__}, Python {platform.python_version()}",
        f"- load: 1-min load average {first['load_before'][0]:.1f} before the first run, "
        f"{last['load_after'][0]:.1f} after the last; between {min(loads):.1f} and "
        f"{max(loads):.1f} (mean {sum(loads) / len(loads):.1f}) at the starts and ends of "
        "the runs; the benchmark's own two threads account for about 2, more means other "
        "work shared the cores and every budget bought fewer steps.",
        f"- data: {len(props)} held-out props of the test split of `{args.data.name}` "
        "(seed 1), 16 input views over the upper hemisphere, 8 random target views, 256².",
        f"- setup: `refine(start, 16 views, {rows[0].get('budget_arg', 'seconds=60')}, "
        f"snapshots={tuple(rows[0].get('snapshot_args', (10, 30, 60)))}, holdout=0)`; "
        f"densifier: {rows[0]['densifier']}; config overrides: "
        f"{rows[0]['config'] or 'none (RefineConfig defaults)'}. One run per (prop, start), "
        "the shorter budgets are snapshots of it (the schedule does not depend on the "
        "budget, see the module docstring). Budget 0: the start itself, unrefined (the fine "
        "row is the model's own fine render; the hull row the non-learned baseline).",
        "",
        "## Mean over props",
        "",
        f"| start | budget ({unit}) | PSNR full (dB) | PSNR object (dB) | Gaussians | steps |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    means: dict[tuple[str, float], float] = {}
    for s in starts:
        for b in budgets:
            sel = [x for r in rows if r["start"] == s for x in r["budgets"] if x["budget"] == b]
            if not sel:
                continue
            k = len(sel)
            full = sum(x["full"] for x in sel) / k
            obj = sum(x["object"] for x in sel) / k
            means[(s, b)] = full
            lines.append(f"| {s} | {b:g} | {full:.2f} | {obj:.2f} | "
                         f"{sum(x['count'] for x in sel) / k:,.0f} | "
                         f"{sum(x['step'] for x in sel) / k:.0f} |")  # fmt: skip
    peak = max(r["peak_rss_mib"] for r in rows)
    dens = [r.get("densify_seconds") for r in rows if r.get("densify_seconds") is not None]
    if dens:
        lines += ["", f"Time in densification (prune + grow) per run: mean "
                  f"{sum(dens) / len(dens):.2f} s, max {max(dens):.2f} s."]  # fmt: skip
    lines += ["", f"Peak resident memory of the process during a refinement: {peak:,.0f} MiB "
              "(max over runs; includes the model and Python/torch).", ""]  # fmt: skip
    checks = []
    if ("fine", 30.0) in means:
        checks.append(f"fine at 30 s: {means[('fine', 30.0)]:.2f} dB (target >= 28)")
    if ("fine", 60.0) in means:
        checks.append(f"fine at 60 s: {means[('fine', 60.0)]:.2f} dB (target >= 30)")
    for b in budgets:
        if b > 0 and ("fine", b) in means and ("hull", b) in means:
            d = means[("fine", b)] - means[("hull", b)]
            checks.append(f"fine − hull at {b:g} s: {d:+.2f} dB")
    if checks:
        lines += ["Targets: " + "; ".join(checks) + ".", ""]
    lines += ["## Per prop", "",
              "| prop | start | " + " | ".join(f"{b:g} {unit}" for b in budgets)
              + " | Gaussians (end) | steps | peak RSS (MiB) |",
              "|---|---|" + "---:|" * (len(budgets) + 3)]  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["prop"], STARTS.index(r["start"]))):
        by = {x["budget"]: x for x in r["budgets"]}
        cells = [f"{by[b]['full']:.2f} / {by[b]['object']:.2f}" if b in by else "" for b in budgets]
        lines.append(f"| {r['prop']} | {r['start']} | " + " | ".join(cells)
                     + f" | {r['budgets'][-1]['count']:,} | {r['steps']} | "
                     f"{r['peak_rss_mib']:.0f} |")  # fmt: skip
    lines += ["", "Cells: full-image / object-pixel PSNR (dB) on the 8 target views."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--props", type=int, default=16, help="first N test props")
    p.add_argument("--seconds", type=float, default=60.0, help="budget of each run")
    p.add_argument("--steps", type=int, default=0,
                   help="a step budget instead (snapshots then count steps): compares "
                        "settings independently of the machine's load")  # fmt: skip
    p.add_argument("--snapshots", type=float, nargs="+", default=[10.0, 30.0, 60.0])
    p.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    p.add_argument("--densifier", choices=("classic", "learned"), default="classic")
    p.add_argument("--set", nargs="*", default=[], help="RefineConfig overrides key=value")
    p.add_argument("--rows", type=Path, default=ROWS, help="JSON-lines rows (resumable)")
    p.add_argument("--report", action="store_true", help="only write the report from rows")
    p.add_argument("--no-write", action="store_true", help="print the report only")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown written")
    args = p.parse_args()
    # The command that made the rows (a --report rerun only rewrites the file from them).
    argv = [a for a in sys.argv[1:] if a != "--report"]
    command = shlex.join(["python", "bench/refine.py", *argv])
    if not args.report:
        command += f" (niceness {os.nice(0)})"
        run(args)
    text = report(args, command)
    print(text)
    if not args.no_write:
        args.results.write_text(text)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
