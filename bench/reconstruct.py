"""Reconstruction benchmark: 4 views at 256² -> coarse and fine Gaussians on the CPU.

    .venv/bin/python bench/reconstruct.py                        # shipped object-small weights
    .venv/bin/python bench/reconstruct.py --weights runs/x/checkpoint/model.safetensors
    .venv/bin/python bench/reconstruct.py --no-write --repeats 1 # quick look, no results file

For each bundled sample prop (`examples/sample_props`, 4 input views at 256²) it times
`model.reconstruct` with densification (the product) and without (coarse only), the
median of `--repeats` runs each, after one warm-up reconstruction that is excluded
(first calls load numba kernels and size allocator pools). Wall time and process CPU
time (user + system, all threads) are both recorded: on a loaded machine wall time
includes waiting for a core, CPU time does not.

Each thread setting (`--threads`, default 1 and 2, torch and numba alike) is measured in a
fresh child process, so its peak RSS (VmHWM: everything the process ever held, Python +
torch included) is its own. One more child, with the first thread setting, attributes the
densification time to its parts (wrapped functions, exclusive times) and runs
torch.profiler once; instrumentation never touches the timed children.

Targets (issue #5): total ≤ 10 s, densification adds ≤ 50 % to coarse-only, peak RSS ≤ 4 GB.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_and_memory, status_mb  # bench/ is the script's own folder

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "reconstruct.md"
SAMPLES = ROOT / "examples" / "sample_props" / "objects"
TARGET_TOTAL_S = 10.0
TARGET_SHARE = 0.5
TARGET_RSS_MB = 4096.0
NOTES_MARKER = "<!-- notes below are hand-written and kept when the benchmark re-runs -->"


# ---------------------------------------------------------------------------- child side
def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load(weights: str, threads: int):
    """The model (CPU, eval) and the input views of every sample prop."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from engine.resolve import resolve_model
    from engine.views import load_nerf_scene

    model = resolve_model(weights, device="cpu")
    props = sorted(p for p in SAMPLES.iterdir() if (p / "transforms_input.json").is_file())
    views = [load_nerf_scene(p / "transforms_input.json") for p in props]
    return model, [(p.name, v.rgba(), v.cameras) for p, v in zip(props, views, strict=True)]


def measure(weights: str, repeats: int, threads: int) -> dict:
    """Timings of coarse-only and full reconstructions of every sample prop."""
    import torch

    base_rss = status_mb("VmRSS")
    model, props = _load(weights, threads)
    loaded_rss = status_mb("VmRSS")
    # Warm-up (excluded): one full and one coarse-only reconstruction of the first prop.
    _, images, cameras = props[0]
    model.reconstruct(images, cameras)
    model.reconstruct(images, cameras, densify=False)
    rows = []
    for name, images, cameras in props:
        runs: dict[str, list[dict]] = {"coarse": [], "full": []}
        for r in range(repeats):
            # Alternate the order so neither mode always follows the other.
            for mode in ("coarse", "full") if r % 2 == 0 else ("full", "coarse"):
                c0, t0 = _cpu_seconds(), time.perf_counter()
                rec = model.reconstruct(images, cameras, densify=mode == "full")
                wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
                runs[mode].append({"wall": wall, "cpu": cpu, "stats": rec.stats})
        row = {"prop": name, "views": len(cameras), "size": f"{cameras.width}x{cameras.height}"}
        for mode, rs in runs.items():
            row[mode] = {
                "wall": statistics.median(x["wall"] for x in rs),
                "wall_min": min(x["wall"] for x in rs),
                "cpu": statistics.median(x["cpu"] for x in rs),
                "walls": [x["wall"] for x in rs],
                "seconds": {
                    k: statistics.median(x["stats"]["seconds"][k] for x in rs)
                    for k in rs[0]["stats"]["seconds"]
                },
                "counts": rs[0]["stats"]["counts"],
            }
        rows.append(row)
    return {
        "rows": rows,
        "peak_rss_mb": status_mb("VmHWM"),
        "base_rss_mb": base_rss,
        "loaded_rss_mb": loaded_rss,
        "threads": torch.get_num_threads(),
        "image_size": model.image_size,
        "model": model.name,
        "sha256": model.weights_sha256,
    }


class _Timers:
    """Exclusive wall time per label: a wrapped call's time is charged to its label and
    taken off the label of the wrapped call it runs inside."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.stack: list[list[float]] = []  # [start, time of nested wrapped calls]

    def wrap(self, fn, label):
        """`label` is a string, or a function of the enclosing label (None at top)."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            parent = self.stack[-1][2] if self.stack else None
            name = label(parent) if callable(label) else label
            self.stack.append([time.perf_counter(), 0.0, name])
            try:
                return fn(*args, **kwargs)
            finally:
                start, nested, _ = self.stack.pop()
                elapsed = time.perf_counter() - start
                self.total[name] = self.total.get(name, 0.0) + elapsed - nested
                self.calls[name] = self.calls.get(name, 0) + 1
                if self.stack:
                    self.stack[-1][1] += elapsed

        return timed


def breakdown(weights: str, threads: int, repeats: int) -> dict:
    """Where reconstruction time goes (exclusive seconds per part, mean over runs of every
    prop) and the torch.profiler's top operators for one full reconstruction."""
    import engine.gd.attention as attention
    import engine.gd.densify as densify
    import engine.gd.gradient_mask as gradient_mask
    import engine.gd.pipeline as pipeline
    import engine.gd.view_features as view_features
    import engine.models.gd_object as gd_object
    import engine.models.object_backbone as object_backbone
    import engine.render as render_mod

    model, props = _load(weights, threads)
    _, images, cameras = props[0]
    model.reconstruct(images, cameras)  # warm-up, as in `measure`

    timers = _Timers()

    def render_label(parent: str | None) -> str:
        if parent == "gradient mask: loss + backward":
            return "gradient mask: render forward"
        return "coarse re-render for view features"

    patches = [
        (object_backbone.ObjectBackbone, "forward", "backbone"),
        (gradient_mask, "view_space_gradients", "gradient mask: loss + backward"),
        (render_mod, "render", render_label),
        (pipeline, "candidate_features", "view features (sampling + view attention)"),
        (view_features.ChildSampler, "__call__", "child sampling (children re-sample inputs)"),
        (densify, "serialize", "serialization (space-filling curves)"),
        (densify, "patch_layout", "serialization (space-filling curves)"),
        (attention.Block, "forward", "densifier attention blocks"),
        (densify.Upsample, "forward", "UP (children offsets and features)"),
        (densify.GaussianHead, "forward", "HEAD (Gaussian parameters)"),
        (densify.GenerativeDensifier, "forward", "densifier other (split mask, gather, cat)"),
        (pipeline, "merge_fine", "merge"),
        (gd_object, "merge", "merge"),
    ]
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, label in patches:
        setattr(obj, name, timers.wrap(getattr(obj, name), label))
    runs = 0
    stage: dict[str, float] = {}
    try:
        for _ in range(repeats):
            for _, images, cameras in props:
                rec = model.reconstruct(images, cameras)
                runs += 1
                for k, v in rec.stats["seconds"].items():
                    stage[k] = stage.get(k, 0.0) + v
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)

    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.reconstruct(images, cameras)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return {
        "runs": runs,
        "parts": {k: v / runs for k, v in sorted(timers.total.items(), key=lambda kv: -kv[1])},
        "calls": {k: v / runs for k, v in timers.calls.items()},
        "stages": {k: v / runs for k, v in stage.items()},
        "profile": table,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------- parent side
def _child(kind: str, weights: str, repeats: int, threads: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--weights", weights,
           "--repeats", str(repeats), "--threads", str(threads)]  # fmt: skip
    env = dict(os.environ)
    if threads > 0:  # numba reads this when its thread pool starts, before any kernel runs
        env["NUMBA_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def machine_description() -> str:
    cpu, mem = cpu_and_memory()
    mem = f", {mem}" if mem else ""
    import torch

    try:
        import numba

        nb = f", numba {numba.__version__}"
    except ImportError:
        nb = ""
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}, "
            f"torch {torch.__version__}{nb}")  # fmt: skip


def _shown(path: Path) -> str:
    """The path relative to the repository when inside it, else absolute."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _load_text(when: str) -> str:
    a, b, c = os.getloadavg()
    return f"{when} {a:.2f}, {b:.2f}, {c:.2f}"


def _weights_note(weights: Path) -> str:
    meta_path = weights.with_suffix(".json")
    note = ""
    try:
        meta = json.loads(meta_path.read_text())
        train = meta.get("training") or {}
        step = train.get("step") if isinstance(train, dict) else None
        if step is not None:
            note = f", training step {step}"
    except (OSError, json.JSONDecodeError):
        pass
    return note


def _thread_section(res: dict, meta: dict) -> list[str]:
    """Tables and targets of one `measure` child (one torch/numba thread setting)."""
    rows = res["rows"]
    n = res["threads"]
    lines = [
        f"## {n} thread{'s' if n != 1 else ''} (torch and numba)",
        "",
        "Wall seconds are medians (fastest run in brackets: the least disturbed one on a busy "
        f"machine); CPU seconds are medians. Peak RSS of this process: {res['peak_rss_mb']:.0f} "
        f"MB ({res['base_rss_mb']:.0f} MB at start, {res['loaded_rss_mb']:.0f} MB with model "
        "and views loaded).",
        "",
        "| prop | full wall s | full CPU s | coarse-only wall s | coarse-only CPU s | "
        "densification adds (wall) | coarse | candidates | fine | final |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, c = r["full"], r["coarse"]
        add = f["wall"] - c["wall"]
        cnt = f["counts"]
        lines.append(
            f"| {r['prop']} | {f['wall']:.2f} ({f['wall_min']:.2f}) | {f['cpu']:.2f} | "
            f"{c['wall']:.2f} ({c['wall_min']:.2f}) | {c['cpu']:.2f} | "
            f"+{add:.2f} s ({add / c['wall']:.0%}) | {cnt['coarse']:,} | "
            f"{cnt.get('candidates', 0):,} | {cnt.get('fine', 0):,} | {cnt['final']:,} |"
        )
    stage_names = list(rows[0]["full"]["seconds"])
    lines += [
        "",
        "Per-stage seconds of the full runs (`rec.stats['seconds']`, each a median on its own, "
        "so they need not add up to the total):",
        "",
        "| prop | " + " | ".join(stage_names) + " |",
        "|---|" + "---:|" * len(stage_names),
    ]
    for r in rows:
        st = r["full"]["seconds"]
        lines.append(f"| {r['prop']} | " + " | ".join(f"{st[k]:.2f}" for k in stage_names) + " |")

    total = statistics.mean(r["full"]["wall"] for r in rows)
    coarse = statistics.mean(r["coarse"]["wall"] for r in rows)
    share = (total - coarse) / coarse
    cpu_total = statistics.mean(r["full"]["cpu"] for r in rows)
    cpu_coarse = statistics.mean(r["coarse"]["cpu"] for r in rows)
    cpu_share = (cpu_total - cpu_coarse) / cpu_coarse
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    suffix = ", under load" if meta["loaded"] else ""
    lines += [
        "",
        f"Targets (mean over the {len(rows)} props{suffix}):",
        "",
        f"- total ≤ {TARGET_TOTAL_S:.0f} s: {total:.2f} s wall ({cpu_total:.2f} s CPU) — "
        f"{met(total <= TARGET_TOTAL_S)}",
        f"- densification adds ≤ {TARGET_SHARE:.0%} to coarse-only ({coarse:.2f} s wall, "
        f"{cpu_coarse:.2f} s CPU): +{share:.0%} wall, +{cpu_share:.0%} CPU time — "
        f"{met(share <= TARGET_SHARE)}",
        f"- peak RSS ≤ {TARGET_RSS_MB / 1024:.0f} GB: {res['peak_rss_mb']:.0f} MB — "
        f"{met(res['peak_rss_mb'] <= TARGET_RSS_MB)}",
        "",
    ]
    return lines


def render_markdown(results: list[dict], brk: dict | None, meta: dict) -> str:
    first = results[0]
    rows = first["rows"]
    lines = [
        "# Reconstruction benchmark",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']}",
        f"- Command: `{meta['command']}`",
        f"- Weights: `{meta['weights']}` ({first['model']}, sha256 `{first['sha256']}`"
        f"{meta['weights_note']})",
        f"- Load average (1, 5, 15 min): {meta['load_before']}; {meta['load_after']}; "
        f"benchmark niceness {meta['nice']}",
    ]
    if meta["loaded"]:
        lines.append(
            "- **Taken under load**: other processes (model training) were using the cores, "
            "so wall times are pessimistic and noisy. CPU time (user + system, all threads "
            "of the process) is less affected, most of all with one thread (no thread waits "
            "for a busy sibling). Re-run on a quiet machine for the record."
        )
    lines += [
        f"- Input: each bundled sample prop (`examples/sample_props/objects/*`), "
        f"{rows[0]['views']} views at {rows[0]['size']}, resampled to the model's "
        f"{first['image_size']}² input; CPU.",
        f"- Method: one fresh process per thread setting; one warm-up reconstruction (full, "
        f"then coarse-only) excluded; then the median of {meta['repeats']} runs per prop and "
        "mode, modes alternating. Full = `model.reconstruct(images, cameras)` (coarse + "
        "generative densification + merge); coarse-only = `densify=False`. Peak RSS: the "
        "process's VmHWM (Python, torch and the model included).",
        "",
    ]
    for res in results:
        lines += _thread_section(res, meta)
    if brk is not None:
        n = brk["threads"]
        lines += [
            "## Where the time goes",
            "",
            f"A separate process ({n} thread{'s' if n != 1 else ''}) wraps the parts below "
            "with timers (exclusive wall time: a part's nested parts are not counted in it), "
            f"mean per full reconstruction over {brk['runs']} runs; stage means from the same "
            "runs: " + ", ".join(f"{k} {v:.2f} s" for k, v in brk["stages"].items()) + ".",
            "",
            "| part | seconds | calls per run |",
            "|---|---:|---:|",
        ]
        for k, v in brk["parts"].items():
            lines.append(f"| {k} | {v:.3f} | {brk['calls'][k]:.0f} |")
        lines += [
            "",
            "torch.profiler, one full reconstruction, top operators by self CPU time "
            "(numba rasteriser kernels show as NumbaRasterize*):",
            "",
            "```",
            brk["profile"].rstrip(),
            "```",
        ]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path,
                   default=ROOT / "engine" / "assets" / "object-small.safetensors")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts to measure, one process each (0: torch's default); "
                        "the attribution uses the first")  # fmt: skip
    p.add_argument("--no-breakdown", action="store_true", help="skip the attribution child")
    p.add_argument("--no-write", action="store_true", help="print, do not write the results")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", choices=("measure", "breakdown"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "measure":
        threads = args.threads[0]
        print("RESULT " + json.dumps(measure(str(args.weights), args.repeats, threads)))
        return 0
    if args.child == "breakdown":
        threads = args.threads[0]
        print("RESULT " + json.dumps(breakdown(str(args.weights), threads, args.repeats)))
        return 0

    if not args.weights.is_file():
        print(f"{args.weights}: weights not found; pass --weights PATH.safetensors "
              "(its .json beside it)", file=sys.stderr)  # fmt: skip
        return 2
    load_before = os.getloadavg()
    results = [
        _child("measure", str(args.weights), args.repeats, t, timeout=1800) for t in args.threads
    ]
    brk = None
    if not args.no_breakdown:
        # One thread: attribution of work, not of waiting for a busy sibling thread.
        brk = _child("breakdown", str(args.weights), 2, args.threads[0], timeout=1800)
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "command": shlex.join(["python", *sys.argv]),
        "weights": _shown(args.weights),
        "weights_note": _weights_note(args.weights),
        "load_before": "before " + ", ".join(f"{x:.2f}" for x in load_before),
        "load_after": _load_text("after"),
        # More runnable processes than half the cores before or after: not a quiet machine.
        "loaded": max(load_before[0], os.getloadavg()[0]) > 0.5 * cores,
        "repeats": args.repeats,
        "nice": os.nice(0),
    }
    del load_after
    text = render_markdown(results, brk, meta)
    print(text)
    if args.out.is_file():
        # Hand-written analysis below the marker survives re-runs (re-read it after one).
        old = args.out.read_text(encoding="utf-8")
        if NOTES_MARKER in old:
            text += "\n" + old[old.index(NOTES_MARKER) :]
    if not args.no_write:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
