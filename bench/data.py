"""Throughput of the props generator: objects per minute at 256^2 with 4 + 8 views.

Renders a fresh dataset with `engine.data.make.make_dataset` (real Blender worker
processes, as `gd data make` does) and writes bench/results/data.md with the machine,
command, date, objects/min and per-object render times. Load averages before and after
are recorded because the CPU may be shared.

    .venv/bin/python bench/data.py                         # ~1-2 min on 2 cores
    .venv/bin/python bench/data.py --objects 8 --res 128 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "data.md"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    from engine.data.make import MakeConfig, make_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=40)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="0: one per core")
    p.add_argument("--views-in", type=int, default=4)
    p.add_argument("--views-target", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "datasets" / "bench_data")
    p.add_argument("--keep", action="store_true", help="keep the rendered dataset")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)

    if args.out.exists():
        shutil.rmtree(args.out)  # a fresh folder: resuming would measure nothing
    load_before = os.getloadavg()
    cfg = MakeConfig(
        out=args.out, objects=args.objects, resolution=args.res, seed=args.seed,
        workers=args.workers, views_in=args.views_in, views_target=args.views_target,
    )  # fmt: skip
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = make_dataset(cfg)
    load_after = os.getloadavg()
    # CPU seconds the (finished, waited-for) worker processes used: with the cores shared,
    # wall-clock rate understates what the generator does on an idle machine.
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    cpu_per_object = cpu / max(len(report.rendered), 1)
    ideal = 60.0 * (os.cpu_count() or 1) / cpu_per_object
    per_object = [
        json.loads((args.out / "objects" / f"{i:06d}" / "done.json").read_text())["seconds"]
        for i in report.rendered
    ]
    views = args.views_in + args.views_target
    rate = report.objects_per_minute
    command = "python bench/data.py " + " ".join(argv if argv is not None else sys.argv[1:])
    import bpy  # only for its version; the workers did the rendering

    median = statistics.median(per_object) if per_object else float("nan")
    before = " / ".join(f"{x:.2f}" for x in load_before)
    after = " / ".join(f"{x:.2f}" for x in load_after)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# Props generator throughput",
        "",
        f"- date: {now}",
        f"- machine: {_cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- Blender (bpy) {bpy.app.version_string}, Cycles CPU, 4 spp + OIDN fast, "
        f"{cfg.worker_count()} worker processes x 1 thread",
        f"- command: `{command.strip()}`",
        f"- load average (1/5/15 min) before: {before}; after: {after}",
        "",
        "| objects | res | views/object | wall s | objects/min "
        "| render s/object (median, per worker) | failed |",
        "|---|---|---|---|---|---|---|",
        f"| {len(report.rendered)} | {args.res}² | {views} | {report.seconds:.1f} "
        f"| **{rate:.1f}** | {median:.2f} | {len(report.failed)} |",
        "",
        f"Worker CPU time: {cpu:.0f} s in all, {cpu_per_object:.2f} CPU-s per object (startup "
        f"included), i.e. **{ideal:.1f} objects/min if all {os.cpu_count()} cores were ours** "
        "(derived from CPU time).",
        "",
        "Wall time includes starting the Blender worker processes (~2 s). If the load average "
        "before the run was well above 0, other jobs shared the cores and the wall-clock "
        "objects/min is a lower bound.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    if not args.keep:
        shutil.rmtree(args.out)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
