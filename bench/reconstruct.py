"""Reconstruction benchmark: posed views -> coarse and fine Gaussians on the CPU.

    .venv/bin/python bench/reconstruct.py                        # shipped object-small weights
    .venv/bin/python bench/reconstruct.py --weights runs/x/checkpoint/model.safetensors
    .venv/bin/python bench/reconstruct.py --no-write --repeats 1 # quick look, no results file
    .venv/bin/python bench/reconstruct.py --model scene-small    # the scene model (issue 18)
    .venv/bin/python bench/reconstruct.py --model scene-small --random-init --no-write

The model comes from `engine.resolve.resolve_model` (`--model` a preset name, `--weights` a
weights file, or both: that preset with those weights; `--random-init`: the preset untrained,
for timing before weights exist). Its kind picks the input and the results file:

- object model: each bundled sample prop (`examples/sample_props`, 4 input views at 256²),
  results in bench/results/reconstruct.md;
- scene model: each bundled sample scene (`examples/sample_scene`, 2 context views at 256²
  with the scene's near/far), results in bench/results/reconstruct_scene.md.

For each sample it times `model.reconstruct` with densification (the product) and without
(coarse only), the median of `--repeats` runs each, after one warm-up reconstruction that is
excluded (first calls load numba kernels and size allocator pools). Wall time and process CPU
time (user + system, all threads) are both recorded: on a loaded machine wall time
includes waiting for a core, CPU time does not.

Each thread setting (`--threads`, default 1 and 2, torch and numba alike) is measured in a
fresh child process, so its peak RSS (VmHWM: everything the process ever held, Python +
torch included) is its own. One more child, with the first thread setting, attributes the
densification time to its parts (wrapped functions, exclusive times) and runs
torch.profiler once; instrumentation never touches the timed children.

Targets: object model (issue #5) total ≤ 10 s, densification adds ≤ 50 % to coarse-only,
peak RSS ≤ 4 GB; scene model (issue 18) 2 views at 256² to fine Gaussians ≤ 2 s,
densification adds ≤ 100 % to coarse-only.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from machine import cpu_and_memory, status_mb  # bench/ is the script's own folder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "object-small"
NOTES_MARKER = "<!-- notes below are hand-written and kept when the benchmark re-runs -->"
SEED = 0
"""torch seed before the model is built: `--random-init` weights are the same every run."""


@dataclass(frozen=True)
class Kind:
    """What differs between benchmarking the object and the scene model."""

    noun: str  # one sample: "prop", "scene"
    title: str
    samples: Path  # a folder of sample folders
    marker: str  # the file that makes a folder a sample
    results: Path
    call: str  # the timed call, as the results file shows it
    issue: str
    total_s: float  # target: full reconstruction, wall seconds
    share: float  # target: densification adds at most this fraction of coarse-only
    rss_mb: float | None  # target: peak RSS (None: reported, no target)


OBJECT = Kind(
    noun="prop",
    title="Reconstruction benchmark",
    samples=ROOT / "examples" / "sample_props" / "objects",
    marker="transforms_input.json",
    results=ROOT / "bench" / "results" / "reconstruct.md",
    call="model.reconstruct(images, cameras)",
    issue="issue #5",
    total_s=10.0,
    share=0.5,
    rss_mb=4096.0,
)
SCENE = Kind(
    noun="scene",
    title="Scene reconstruction benchmark",
    samples=ROOT / "examples" / "sample_scene" / "scenes",
    marker="transforms_context.json",
    results=ROOT / "bench" / "results" / "reconstruct_scene.md",
    call="model.reconstruct(images, cameras, near=near, far=far)",
    issue="issue 18",
    total_s=2.0,
    share=1.0,
    rss_mb=None,
)
KINDS = {"object": OBJECT, "scene": SCENE}


# ---------------------------------------------------------------------------- child side
class Sample(NamedTuple):
    """One benchmark input: `model.reconstruct(images, cameras, **kwargs)`."""

    name: str
    images: Any  # (V, H, W, C) tensor
    cameras: Any  # engine.cameras.Cameras
    kwargs: dict[str, float]


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sample_folders(kind: Kind) -> list[Path]:
    return sorted(p for p in kind.samples.iterdir() if (p / kind.marker).is_file())


def _object_samples() -> list[Sample]:
    """Each sample prop's input views (straight RGBA) and cameras."""
    from engine.views import load_nerf_scene

    out = []
    for p in _sample_folders(OBJECT):
        views = load_nerf_scene(p / OBJECT.marker)
        out.append(Sample(p.name, views.rgba(), views.cameras, {}))
    return out


def _scene_samples() -> list[Sample]:
    """Each sample scene's context views, cameras and depth range."""
    from engine.data.scenes import load_scene

    out = []
    for p in _sample_folders(SCENE):
        s = load_scene(p)
        rng = {"near": float(s["near"]), "far": float(s["far"])}
        out.append(Sample(p.name, s["context_images"], s["context_cameras"], rng))
    return out


def _load(model: str | None, weights: str | None, random_init: bool, threads: int):
    """The model (CPU, eval), its kind's name and the samples of that kind."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    from engine.models.gd_scene import GDSceneModel
    from engine.resolve import resolve_model

    if weights is not None and not model:
        net = resolve_model(weights, device="cpu")  # the file's own metadata names the model
    else:
        net = resolve_model(
            model or DEFAULT_MODEL, device="cpu", weights=weights, pretrained=not random_init
        )
    if isinstance(net, GDSceneModel):
        return net, "scene", _scene_samples()
    return net, "object", _object_samples()


def _reconstruct(model, sample: Sample, densify: bool = True):
    return model.reconstruct(sample.images, sample.cameras, densify=densify, **sample.kwargs)


def measure(
    model: str | None, weights: str | None, random_init: bool, repeats: int, threads: int
) -> dict:
    """Timings of coarse-only and full reconstructions of every sample."""
    import torch

    base_rss = status_mb("VmRSS")
    net, kind, samples = _load(model, weights, random_init, threads)
    loaded_rss = status_mb("VmRSS")
    # Warm-up (excluded): one full and one coarse-only reconstruction of the first sample.
    _reconstruct(net, samples[0])
    _reconstruct(net, samples[0], densify=False)
    rows = []
    for sample in samples:
        runs: dict[str, list[dict]] = {"coarse": [], "full": []}
        for r in range(repeats):
            # Alternate the order so neither mode always follows the other.
            for mode in ("coarse", "full") if r % 2 == 0 else ("full", "coarse"):
                c0, t0 = _cpu_seconds(), time.perf_counter()
                rec = _reconstruct(net, sample, densify=mode == "full")
                wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
                runs[mode].append({"wall": wall, "cpu": cpu, "stats": rec.stats})
        cams = sample.cameras
        row = {"name": sample.name, "views": len(cams), "size": f"{cams.width}x{cams.height}",
               "inputs": sample.kwargs}  # fmt: skip
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
        "kind": kind,
        "rows": rows,
        "peak_rss_mb": status_mb("VmHWM"),
        "base_rss_mb": base_rss,
        "loaded_rss_mb": loaded_rss,
        "threads": torch.get_num_threads(),
        "image_size": net.image_size,
        "model": net.name,
        "weights_path": None if net.weights_path is None else str(net.weights_path),
        "sha256": net.weights_sha256,
        "random_init": net.weights_path is None,
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


Patch = tuple[Any, str, "str | Callable[[str | None], str]"]


def _densify_patches() -> list[Patch]:
    """The parts of gradient selection and densification, shared by both models."""
    import engine.gd.attention as attention
    import engine.gd.densify as densify
    import engine.gd.gradient_mask as gradient_mask
    import engine.gd.pipeline as pipeline
    import engine.gd.view_features as view_features
    import engine.render as render_mod

    def render_label(parent: str | None) -> str:
        if parent == "gradient mask: loss + backward":
            return "gradient mask: render forward"
        return "coarse re-render for view features"

    return [
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
    ]


def _backbone_patches(kind: str) -> list[Patch]:
    """The coarse stage of the object or the scene model (its parts for the scene model)."""
    if kind == "object":
        import engine.models.gd_object as gd_object
        import engine.models.object_backbone as object_backbone

        return [
            (object_backbone.ObjectBackbone, "forward", "backbone"),
            (gd_object, "merge", "merge"),
        ]
    import engine.models.scene_backbone as sb

    return [
        (sb.SceneBackbone, "forward", "backbone: other (decoder, heads, Gaussians)"),
        (sb.Encoder, "forward", "backbone: CNN encoder"),
        (sb.ViewTransformer, "forward", "backbone: view transformer"),
        (sb, "plane_sweep_cost", "backbone: plane-sweep cost volume"),
        (sb.CostRefiner, "forward", "backbone: cost refiner"),
    ]


def breakdown(
    model: str | None, weights: str | None, random_init: bool, threads: int, repeats: int
) -> dict:
    """Where reconstruction time goes (exclusive seconds per part, mean over runs of every
    sample) and the torch.profiler's top operators for one full reconstruction."""
    net, kind, samples = _load(model, weights, random_init, threads)
    _reconstruct(net, samples[0])  # warm-up, as in `measure`

    timers = _Timers()
    patches = _backbone_patches(kind) + _densify_patches()
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, label in patches:
        setattr(obj, name, timers.wrap(getattr(obj, name), label))
    runs = 0
    stage: dict[str, float] = {}
    try:
        for _ in range(repeats):
            for sample in samples:
                rec = _reconstruct(net, sample)
                runs += 1
                for k, v in rec.stats["seconds"].items():
                    stage[k] = stage.get(k, 0.0) + v
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)

    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _reconstruct(net, samples[-1])
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
def _child(what: str, args: argparse.Namespace, repeats: int, threads: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--repeats", str(repeats),
           "--threads", str(threads)]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    if args.weights is not None:
        cmd += ["--weights", str(args.weights)]
    if args.random_init:
        cmd.append("--random-init")
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


def _weights_line(first: dict) -> str:
    """The results file's line on the weights: which file and its sha256, or that they
    were random."""
    if first["random_init"]:
        return (
            f"- Weights: **random (untrained)**: `{first['model']}` built with `--random-init` "
            f"(torch seed {SEED}), no trained weights loaded. Timings only: the Gaussian "
            "counts and which Gaussians are densified are an untrained model's, not the "
            "product's; re-run with the trained weights for the record."
        )
    path = Path(first["weights_path"])
    return (
        f"- Weights: `{_shown(path)}` ({first['model']}, sha256 `{first['sha256']}`"
        f"{_weights_note(path)})"
    )


def _input_line(kind: Kind, first: dict) -> str:
    row = first["rows"][0]
    where = f"`{_shown(kind.samples)}/*`"
    if kind is SCENE:
        rng = ", ".join(
            f"{r['name']} near {r['inputs']['near']:g}, far {r['inputs']['far']:g}"
            for r in first["rows"]
        )
        return (
            f"- Input: each bundled sample scene ({where}), its {row['views']} context views "
            f"at {row['size']} and its depth range ({rng}), resampled to the model's "
            f"{first['image_size']}² input; CPU."
        )
    return (
        f"- Input: each bundled sample prop ({where}), {row['views']} views at {row['size']}, "
        f"resampled to the model's {first['image_size']}² input; CPU."
    )


def _thread_section(res: dict, kind: Kind, meta: dict) -> list[str]:
    """Tables and targets of one `measure` child (one torch/numba thread setting)."""
    rows = res["rows"]
    n = res["threads"]
    count_names = list(rows[0]["full"]["counts"])
    lines = [
        f"## {n} thread{'s' if n != 1 else ''} (torch and numba)",
        "",
        "Wall seconds are medians (fastest run in brackets: the least disturbed one on a busy "
        f"machine); CPU seconds are medians. Peak RSS of this process: {res['peak_rss_mb']:.0f} "
        f"MB ({res['base_rss_mb']:.0f} MB at start, {res['loaded_rss_mb']:.0f} MB with model "
        "and views loaded). Gaussian counts (`rec.stats['counts']`) of the full run.",
        "",
        f"| {kind.noun} | full wall s | full CPU s | coarse-only wall s | coarse-only CPU s | "
        "densification adds (wall) | " + " | ".join(count_names) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(count_names),
    ]
    for r in rows:
        f, c = r["full"], r["coarse"]
        add = f["wall"] - c["wall"]
        cnt = f["counts"]
        lines.append(
            f"| {r['name']} | {f['wall']:.2f} ({f['wall_min']:.2f}) | {f['cpu']:.2f} | "
            f"{c['wall']:.2f} ({c['wall_min']:.2f}) | {c['cpu']:.2f} | "
            f"{add:+.2f} s ({add / c['wall']:+.0%}) | "
            + " | ".join(f"{cnt.get(k, 0):,}" for k in count_names)
            + " |"
        )
    stage_names = list(rows[0]["full"]["seconds"])
    lines += [
        "",
        "Per-stage seconds of the full runs (`rec.stats['seconds']`, each a median on its own, "
        "so they need not add up to the total):",
        "",
        f"| {kind.noun} | " + " | ".join(stage_names) + " |",
        "|---|" + "---:|" * len(stage_names),
    ]
    for r in rows:
        st = r["full"]["seconds"]
        lines.append(f"| {r['name']} | " + " | ".join(f"{st[k]:.2f}" for k in stage_names) + " |")

    total = statistics.mean(r["full"]["wall"] for r in rows)
    coarse = statistics.mean(r["coarse"]["wall"] for r in rows)
    share = (total - coarse) / coarse
    cpu_total = statistics.mean(r["full"]["cpu"] for r in rows)
    cpu_coarse = statistics.mean(r["coarse"]["cpu"] for r in rows)
    cpu_share = (cpu_total - cpu_coarse) / cpu_coarse
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    suffix = ", under load" if meta["loaded"] else ""
    plural = "s" if len(rows) != 1 else ""
    rss = res["peak_rss_mb"]
    rss_line = (
        f"- peak RSS: {rss:.0f} MB (no target)"
        if kind.rss_mb is None
        else f"- peak RSS ≤ {kind.rss_mb / 1024:.0f} GB: {rss:.0f} MB — {met(rss <= kind.rss_mb)}"
    )
    lines += [
        "",
        f"Targets ({kind.issue}; mean over the {len(rows)} {kind.noun}{plural}{suffix}):",
        "",
        f"- total ≤ {kind.total_s:g} s: {total:.2f} s wall ({cpu_total:.2f} s CPU) — "
        f"{met(total <= kind.total_s)}",
        f"- densification adds ≤ {kind.share:.0%} to coarse-only ({coarse:.2f} s wall, "
        f"{cpu_coarse:.2f} s CPU): {share:+.0%} wall, {cpu_share:+.0%} CPU time — "
        f"{met(share <= kind.share)}",
        rss_line,
        "",
    ]
    return lines


def render_markdown(results: list[dict], brk: dict | None, meta: dict) -> str:
    first = results[0]
    kind = KINDS[first["kind"]]
    lines = [
        f"# {kind.title}",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']}",
        f"- Command: `{meta['command']}`",
        _weights_line(first),
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
        _input_line(kind, first),
        f"- Method: one fresh process per thread setting; one warm-up reconstruction (full, "
        f"then coarse-only) excluded; then the median of {meta['repeats']} runs per "
        f"{kind.noun} and mode, modes alternating. Full = `{kind.call}` (coarse + "
        "generative densification + merge); coarse-only = `densify=False`. Peak RSS: the "
        "process's VmHWM (Python, torch and the model included).",
        "",
    ]
    for res in results:
        lines += _thread_section(res, kind, meta)
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


def _check_weights(args: argparse.Namespace) -> str | None:
    """Why the model cannot be loaded (None: it can), said before any child starts."""
    if args.weights is not None:
        if not args.weights.is_file():
            return (
                f"{args.weights}: weights not found; pass --weights PATH.safetensors "
                "(its .json beside it)"
            )
        return None
    from engine.models import get_any_config
    from engine.weights import shipped_weights

    name = args.model or DEFAULT_MODEL
    try:
        get_any_config(name)
    except ValueError as err:
        return str(err)
    if not args.random_init and not shipped_weights(name).is_file():
        return (
            f"no shipped weights for {name!r} ({_shown(shipped_weights(name))} is missing); "
            "pass --weights PATH.safetensors (its .json beside it), or --random-init to time "
            "the untrained model"
        )
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help=f"a preset name (default {DEFAULT_MODEL}; scene-small, "
                   "scene-tiny: the scene model)")  # fmt: skip
    p.add_argument("--weights", type=Path,
                   help="a weights file (its .json beside it) instead of the preset's shipped "
                        "one; alone, the file's metadata names the model")  # fmt: skip
    p.add_argument("--random-init", action="store_true",
                   help="the preset, untrained (timings only; the results say so)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts to measure, one process each (0: torch's default); "
                        "the attribution uses the first")  # fmt: skip
    p.add_argument("--no-breakdown", action="store_true", help="skip the attribution child")
    p.add_argument("--no-write", action="store_true", help="print, do not write the results")
    p.add_argument("--out", type=Path,
                   help=f"results file (default {_shown(OBJECT.results)} for an object model, "
                        f"{_shown(SCENE.results)} for a scene model)")  # fmt: skip
    p.add_argument("--child", choices=("measure", "breakdown"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.random_init and args.weights is not None:
        p.error("--random-init and --weights exclude each other")
    weights = None if args.weights is None else str(args.weights)
    if args.child == "measure":
        res = measure(args.model, weights, args.random_init, args.repeats, args.threads[0])
        print("RESULT " + json.dumps(res))
        return 0
    if args.child == "breakdown":
        res = breakdown(args.model, weights, args.random_init, args.threads[0], args.repeats)
        print("RESULT " + json.dumps(res))
        return 0

    problem = _check_weights(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    results = [_child("measure", args, args.repeats, t, timeout=1800) for t in args.threads]
    brk = None
    if not args.no_breakdown:
        # One thread: attribution of work, not of waiting for a busy sibling thread.
        brk = _child("breakdown", args, 2, args.threads[0], timeout=1800)
    cores = os.cpu_count() or 1
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "command": shlex.join(["python", *sys.argv]),
        "load_before": "before " + ", ".join(f"{x:.2f}" for x in load_before),
        "load_after": _load_text("after"),
        # More runnable processes than half the cores before or after: not a quiet machine.
        "loaded": max(load_before[0], os.getloadavg()[0]) > 0.5 * cores,
        "repeats": args.repeats,
        "nice": os.nice(0),
    }
    text = render_markdown(results, brk, meta)
    print(text)
    out = args.out or KINDS[results[0]["kind"]].results
    if out.is_file():
        # Hand-written analysis below the marker survives re-runs (re-read it after one).
        old = out.read_text(encoding="utf-8")
        if NOTES_MARKER in old:
            text += "\n" + old[old.index(NOTES_MARKER) :]
    if not args.no_write:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
