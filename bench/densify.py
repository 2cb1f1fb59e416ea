"""Time and peak memory of one densifier forward (and forward+backward) vs. candidate count.

Every measurement runs in a fresh subprocess so peaks do not leak between
sizes. CPU memory is the growth of the process's peak resident set (VmHWM in
/proc/self/status, reset through /proc/self/clear_refs just before the timed
call) over the resident set at that moment; that counts every allocation
torch makes, which tracemalloc does not see. CUDA memory is
torch.cuda.max_memory_allocated growth.

    .venv/bin/python bench/densify.py                    # writes bench/results/densify.md
    .venv/bin/python bench/densify.py --sizes 1000 10000 --config small --no-write

A second part attributes the forward+backward time at the two largest sizes to
groups of operators (torch.profiler, 1 thread), to show which parts grow faster
than the number of candidates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "densify.md"
IN_CHANNELS = 64
SAMPLE_SECONDS = 0.5
"""Shortest timed sample: calls shorter than this are timed in a batch, per call."""


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(
    config: str, n: int, mode: str, device: str, repeats: int, seed: int, threads: int
) -> dict:
    """One measurement, in this process. mode: "forward" (no_grad, eval) or "backward"."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    import engine.gd.attention as attention
    from engine.gd import GenerativeDensifier, get_config

    attention.CHECKPOINT = os.environ.get("GD_BENCH_CHECKPOINT", "1") == "1"
    torch.manual_seed(seed)
    cfg = get_config(config)
    model = GenerativeDensifier(cfg, IN_CHANNELS).to(device)
    model.train(mode == "backward")
    gen = torch.Generator().manual_seed(seed)
    # Candidates on a surface-like set: a sphere shell of the object cube.
    d = torch.randn(n, 3, generator=gen)
    means = (0.4 * d / d.norm(dim=1, keepdim=True)).to(device)
    feats = torch.randn(n, IN_CHANNELS, generator=gen).to(device)

    def run() -> int:
        if mode == "forward":
            with torch.no_grad():
                out = model(means, feats)
        else:
            out = model(means, feats)
            g = out.gaussians
            loss = sum(t.square().mean() for t in (g.means, g.log_scales, g.sh, g.opacity_logits))
            loss.backward()
            model.zero_grad(set_to_none=True)
        return len(out.gaussians)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # Warm-up on a tiny input (kernels, lazy init), small enough that the memory it
    # frees cannot hide much of the measured peak.
    small = min(n, 64)
    means_full, feats_full = means, feats
    means, feats = means_full[:small], feats_full[:small]
    run()
    means, feats = means_full, feats_full
    sync()
    inner = 1
    if repeats > 1:
        # Timing runs (memory runs pass repeats=1 and skip this): one untimed call at
        # full size grows the heap as training's steady state would, and tells how many
        # calls make a sample of SAMPLE_SECONDS, so that a 40 ms call at 1k candidates
        # is not timed alone (rusage ticks and load spikes would swamp it).
        t0 = time.perf_counter()
        run()
        sync()
        inner = max(1, round(SAMPLE_SECONDS / max(time.perf_counter() - t0, 1e-6)))
    times, user_times, sys_times, peak = [], [], [], 0
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            reset = _reset_peak_rss()
            base = _status_kib("VmRSS") * 1024
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(inner):
            count = run()
        sync()
        times.append((time.perf_counter() - t0) / inner)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        user_times.append((r1.ru_utime - r0.ru_utime) / inner)
        sys_times.append((r1.ru_stime - r0.ru_stime) / inner)
        if device.startswith("cuda"):
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
        else:
            peak = max(peak, _status_kib("VmHWM") * 1024 - base)
            if not reset:
                peak = -1
    return {
        "config": config,
        "n": n,
        "mode": mode,
        "device": device,
        "fine": count,
        "seconds": min(times),
        "user_seconds": min(user_times),
        "sys_seconds": min(sys_times),
        "peak_bytes": peak,
        "threads": torch.get_num_threads(),
        "calls_per_sample": inner,
    }


# Operator groups for the attribution; first match wins, the rest is "other".
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matmul (Linear fwd/bwd)", ("aten::mm", "aten::addmm", "aten::bmm")),
    ("attention (SDPA fwd/bwd)", ("scaled_dot_product",)),
    ("sort (serialization, SPLIT top-k)", ("aten::sort", "aten::argsort")),
    (
        "gather/scatter (index, index_put)",
        (
            "aten::index",
            "aten::_index_put",
            "aten::scatter",
            "aten::gather",
            "aten::index_select",
            "aten::index_add",
        ),
    ),
    ("cat/copy", ("aten::cat", "aten::copy_", "aten::clone", "aten::contiguous")),
    ("layer norm fwd/bwd", ("layer_norm",)),
    ("GELU/tanh/sin/cos fwd/bwd", ("gelu", "tanh", "aten::sin", "aten::cos")),
    (
        "elementwise (mul/add/sum/...)",
        (
            "aten::mul",
            "aten::add",
            "aten::sum",
            "aten::div",
            "aten::sub",
            "aten::pow",
            "aten::fill_",
            "aten::zero_",
            "aten::where",
            "aten::bitwise",
            "aten::square",
            "aten::addcmul",
            "aten::rsqrt",
            "aten::sigmoid",
        ),
    ),
)


def attribute(config: str, n: int, seed: int) -> dict[str, float]:
    """Self CPU seconds of one forward+backward (train mode, 1 thread) per operator group.

    The profiled step is the second at full size, so one-off costs (heap growth,
    lazy init) are not in it; the profiler's own overhead per operator is, which
    weighs more at small N (so the ratios it gives are, if anything, low).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    import engine.gd.attention as attention
    from engine.gd import GenerativeDensifier, get_config

    torch.set_num_threads(1)
    attention.CHECKPOINT = os.environ.get("GD_BENCH_CHECKPOINT", "1") == "1"
    torch.manual_seed(seed)
    model = GenerativeDensifier(get_config(config), IN_CHANNELS).train()
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=gen)
    means, feats = 0.4 * d / d.norm(dim=1, keepdim=True), torch.randn(n, IN_CHANNELS, generator=gen)

    def step() -> None:
        g = model(means, feats).gaussians
        sum(t.square().mean() for t in (g.means, g.log_scales, g.sh, g.opacity_logits)).backward()
        model.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    out = {name: 0.0 for name, _ in GROUPS} | {"other": 0.0}
    for e in prof.key_averages():
        group = next((name for name, keys in GROUPS if any(k in e.key for k in keys)), "other")
        out[group] += e.self_cpu_time_total / 1e6
    return out


def _child(args: argparse.Namespace) -> None:
    if args.attribute_child:
        print("RESULT " + json.dumps(attribute(args.config, args.n, args.seed)))
        return
    res = measure(
        args.config, args.n, args.mode, args.device, args.repeats, args.seed, args.threads
    )
    print("RESULT " + json.dumps(res))


def _run_child(
    config: str, n: int, mode: str, device: str, repeats: int, threads: int, env: dict
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--config",
        config,
        "--n",
        str(n),
        "--mode",
        mode,
        "--device",
        device,
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark child failed:\n{proc.stdout}\n{proc.stderr}")


# glibc keeps freed memory for reuse instead of unmapping it: large tensors stop costing
# a page fault per 4 KiB on every allocation (a process-wide choice for whoever runs
# training; the module cannot make it).
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**34)}
NO_CHECKPOINT = {"GD_BENCH_CHECKPOINT": "0"}
# name -> (intra-op threads, environment, modes it applies to, whether to measure memory)
VARIANTS: dict[str, tuple[int, dict[str, str], tuple[str, ...], bool]] = {
    "1 thread": (1, {}, ("forward", "backward"), True),
    "1 thread, tuned malloc": (1, TUNED_MALLOC, ("forward", "backward"), False),
    "2 threads": (2, {}, ("forward", "backward"), False),
    # The trade-off `attention.CHECKPOINT` makes (training only: inference keeps nothing).
    "1 thread, no checkpointing": (1, NO_CHECKPOINT, ("backward",), True),
}


def _spawn(
    config: str, n: int, mode: str, device: str, repeats: int, variant: str, memory: bool
) -> dict:
    """Time in one fresh process, CPU memory (if asked) in another."""
    threads, extra_env = VARIANTS[variant][:2] if device == "cpu" else (0, {})
    res = _run_child(config, n, mode, device, repeats, threads, dict(os.environ, **extra_env))
    res["variant"] = variant if device == "cpu" else "default"
    if device == "cpu" and memory:
        # A fixed mmap threshold turns off glibc's adaptive one, so large buffers are
        # always mapped fresh and unmapped on free: peak RSS then tracks live tensors
        # rather than what the heap kept from earlier calls. It costs page faults, so
        # times come from the run above.
        env = dict(os.environ, **extra_env, MALLOC_MMAP_THRESHOLD_="131072")
        res["peak_bytes"] = _run_child(config, n, mode, device, 1, threads, env)["peak_bytes"]
    elif device == "cpu":
        res["peak_bytes"] = -1  # measured in the 1-thread rows
    return res


def _attribution(config: str, sizes: list[int]) -> str:
    """Markdown table: per operator group, seconds at the two largest sizes and their ratio."""
    if len(sizes) < 2:
        return "(needs two sizes)"
    a, b = sorted(sizes)[-2:]
    res = {}
    for n in (a, b):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--attribute-child",
            "--config",
            config,
            "--n",
            str(n),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"attribution child failed:\n{proc.stdout}\n{proc.stderr}")
        res[n] = json.loads(line[7:])
    ta, tb = sum(res[a].values()), sum(res[b].values())
    cells = []
    for name in sorted(res[b], key=lambda k: -res[b][k]):
        sa, sb = res[a][name], res[b][name]
        ratio = f"{sb / sa:.1f}" if sa > 0 else "-"
        cells.append([name, f"{sa:.3f}", f"{sb:.3f}", ratio, f"{100 * sb / tb:.1f}%",
                      f"{sb - b / a * sa:+.3f}"])  # fmt: skip
    cells.append(["**total**", f"{ta:.3f}", f"{tb:.3f}", f"{tb / ta:.1f}", "100%",
                  f"{tb - b / a * ta:+.3f}"])  # fmt: skip
    header = ["operator group", f"{a:,} (s)", f"{b:,} (s)", "ratio", f"share at {b:,}",
              "excess over linear (s)"]  # fmt: skip
    return _markdown(header, "lrrrrr", cells)


def _markdown(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table: `align` has one letter a column, l (left) or r (right)."""
    rule = "|" + "|".join("---:" if c == "r" else "---" for c in align) + "|"
    lines = ["| " + " | ".join(cells) + " |" for cells in [header, *rows]]
    return "\n".join([lines[0], rule, *lines[1:]])


def _table(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        mem = "-" if r["peak_bytes"] < 0 else f"{r['peak_bytes'] / 2**20:.0f}"
        cells.append([r["device"], r["variant"], r["mode"], f"{r['n']:,}", f"{r['fine']:,}",
                      f"{r['seconds']:.3f}", f"{r['user_seconds']:.3f}",
                      f"{r['sys_seconds']:.3f}", mem])  # fmt: skip
    header = ["device", "setting", "mode", "candidates", "fine Gaussians", "wall (s)",
              "user CPU (s)", "system CPU (s)", "peak memory (MiB)"]  # fmt: skip
    return _markdown(header, "lllrrrrrr", cells)


def _growth(rows: list[dict]) -> str:
    cells = []
    key = lambda r: (r["device"], r["variant"], r["mode"])  # noqa: E731
    for k in dict.fromkeys(key(r) for r in rows):
        rs = sorted((r for r in rows if key(r) == k), key=lambda r: r["n"])
        for a, b in zip(rs, rs[1:], strict=False):
            ok = a["peak_bytes"] > 0 and b["peak_bytes"] > 0
            mem = f"{b['peak_bytes'] / a['peak_bytes']:.2f}" if ok else "-"
            user = b["user_seconds"] / max(a["user_seconds"], 1e-9)
            wall = b["seconds"] / a["seconds"]
            limit = 1.2 * b["n"] / a["n"]
            ratios = [wall, user] + ([b["peak_bytes"] / a["peak_bytes"]] if ok else [])
            verdict = "yes" if max(ratios) <= limit else "no"
            cells.append([*k, f"{a['n']:,} -> {b['n']:,}", f"{wall:.2f}", f"{user:.2f}", mem,
                          verdict])  # fmt: skip
    header = ["device", "setting", "mode", "sizes", "wall ratio", "user-CPU ratio",
              "memory ratio", "all within 12x"]  # fmt: skip
    return _markdown(header, "llllrrrl", cells)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--attribute-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="forward", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="CPU settings to time (memory with '1 thread' and 'no checkpointing')",
    )
    p.add_argument("--config", default="small", help="densify preset (small, object, scene)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    p.add_argument("--modes", nargs="+", default=["forward", "backward"])
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per size, the same at every size (min is kept)",
    )
    p.add_argument("--no-attribute", action="store_true", help="skip the profiler attribution")
    p.add_argument(
        "--extra",
        type=int,
        nargs="*",
        default=[12_000],
        help="extra sizes timed forward-only (the 12k target)",
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    if args.child:
        _child(args)
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load_before = os.getloadavg()
    rows = []
    for device in devices:
        variants = args.variants if device == "cpu" else ["default"]
        for variant in variants:
            _, _, modes, memory = VARIANTS.get(variant, (0, {}, tuple(args.modes), False))
            for mode in [m for m in args.modes if m in modes]:
                for n in args.sizes:
                    # The same repeats at every size: a best of 3 against a single run
                    # would bias the ratios on a shared machine.
                    rows.append(_spawn(args.config, n, mode, device, args.repeats, variant, memory))
                    print(json.dumps(rows[-1]), flush=True)
            if "forward" not in modes:
                continue
            for n in args.extra:
                rows.append(_spawn(args.config, n, "forward", device, args.repeats, variant, False))
                print(json.dumps(rows[-1]), flush=True)
    load_after = os.getloadavg()
    main_rows = [r for r in rows if r["n"] in args.sizes]
    attribution = None
    if not args.no_attribute and "backward" in args.modes:
        load_attr = os.getloadavg()
        attribution = _attribution(args.config, args.sizes)
        print(attribution, flush=True)
    load = "{:.1f}/{:.1f}/{:.1f} before, {:.1f}/{:.1f}/{:.1f} after".format(
        *load_before, *load_after
    )
    cmd = "python " + shlex.join([str(Path(__file__).relative_to(ROOT))] + sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"""# Densifier benchmark (`bench/densify.py`)

- date: {datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
- command: `{cmd}`
- machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, \
Python {platform.python_version()}
- config: `{args.config}`, candidate features {IN_CHANNELS} wide, candidates on a sphere
  shell of radius 0.4; time is the best of {args.repeats} samples at every size, each size
  in a fresh process, after a warm-up on 64 candidates and one untimed call at full size;
  a sample is as many calls as fill {SAMPLE_SECONDS} s (so ~10 at 1k), timed per call;
  forward is `torch.no_grad()` in eval mode, backward is forward + backward in train
  mode, where every row chunk of the blocks, UP and HEAD is checkpointed
  (`engine.gd.attention.CHECKPOINT`) at every size, except in the "no checkpointing" rows.
- memory: CPU = growth of peak RSS (VmHWM, reset via /proc/self/clear_refs) over RSS just
  before the call, in a second fresh process per row with glibc's mmap threshold fixed at
  128 KiB (freed tensors leave the RSS, so the peak tracks live tensors); CUDA = growth of
  max_memory_allocated.
- load: 1/5/15-min load average {load} on {os.cpu_count()} CPUs. When other jobs
  share the cores, times are noisy (memory is not affected): with 2 intra-op threads on a
  busy 2-core machine every parallel region waits for whichever OpenMP thread is
  descheduled, so the 1-thread rows and their user CPU time are the robust measures.
- settings: torch intra-op threads; "tuned malloc" runs with
  `MALLOC_MMAP_THRESHOLD_=2^32 MALLOC_TRIM_THRESHOLD_=2^34`, so glibc reuses freed memory
  instead of mapping every tensor over 32 MB afresh (one page fault per 4 KiB, zeroed by
  the kernel): at 100k candidates that system time otherwise rivals the arithmetic.

{_table(rows)}

Growth between sizes (10x more candidates each step; linear cost means about 10):

{_growth(main_rows)}
"""
    if attribution is not None:
        text += f"""
Where the forward+backward time goes (torch.profiler self CPU time, 1 thread, train mode,
the second step at full size; load {"{:.1f}/{:.1f}/{:.1f}".format(*load_attr)} when it
started). "Excess" is the time beyond (size ratio) x the smaller size's: the superlinear part.

{attribution}
"""
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
