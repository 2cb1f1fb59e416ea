"""Time and peak memory of one densifier forward (and forward+backward) vs. candidate count.

Every measurement runs in a fresh subprocess so peaks do not leak between
sizes. CPU memory is the growth of the process's peak resident set (VmHWM in
/proc/self/status, reset through /proc/self/clear_refs just before the timed
call) over the resident set at that moment; that counts every allocation
torch makes, which tracemalloc does not see. CUDA memory is
torch.cuda.max_memory_allocated growth.

    .venv/bin/python bench/densify.py                    # writes bench/results/densify.md
    .venv/bin/python bench/densify.py --sizes 1000 10000 --config small --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "densify.md"
IN_CHANNELS = 64


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

    from engine.gd import GenerativeDensifier, get_config

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
    times, user_times, sys_times, peak = [], [], [], 0
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            reset = _reset_peak_rss()
            base = _status_kib("VmRSS") * 1024
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        count = run()
        sync()
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        user_times.append(r1.ru_utime - r0.ru_utime)
        sys_times.append(r1.ru_stime - r0.ru_stime)
        if device.startswith("cuda"):
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
        else:
            peak = max(peak, _status_kib("VmHWM") * 1024 - base)
            if not reset:
                peak = -1
    return {
        "config": config, "n": n, "mode": mode, "device": device, "fine": count,
        "seconds": min(times), "user_seconds": min(user_times), "sys_seconds": min(sys_times),
        "peak_bytes": peak,
        "threads": torch.get_num_threads(),
    }


def _child(args: argparse.Namespace) -> None:
    res = measure(
        args.config, args.n, args.mode, args.device, args.repeats, args.seed, args.threads
    )
    print("RESULT " + json.dumps(res))


def _run_child(
    config: str, n: int, mode: str, device: str, repeats: int, threads: int, env: dict
) -> dict:
    cmd = [sys.executable, __file__, "--child", "--config", config, "--n", str(n),
           "--mode", mode, "--device", device, "--repeats", str(repeats),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark child failed:\n{proc.stdout}\n{proc.stderr}")


# glibc keeps freed memory for reuse instead of unmapping it: large tensors stop costing
# a page fault per 4 KiB on every allocation (a process-wide choice for whoever runs
# training; the module cannot make it).
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**34)}
VARIANTS: dict[str, tuple[int, dict[str, str]]] = {
    "1 thread": (1, {}),
    "1 thread, tuned malloc": (1, TUNED_MALLOC),
    "2 threads": (2, {}),
}


def _spawn(
    config: str, n: int, mode: str, device: str, repeats: int, variant: str, memory: bool
) -> dict:
    """Time in one fresh process, CPU memory (if asked) in another."""
    threads, extra_env = VARIANTS[variant] if device == "cpu" else (0, {})
    res = _run_child(config, n, mode, device, repeats, threads, dict(os.environ, **extra_env))
    res["variant"] = variant if device == "cpu" else "default"
    if device == "cpu" and memory:
        # A fixed mmap threshold turns off glibc's adaptive one, so large buffers are
        # always mapped fresh and unmapped on free: peak RSS then tracks live tensors
        # rather than what the heap kept from earlier calls. It costs page faults, so
        # times come from the run above.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        res["peak_bytes"] = _run_child(config, n, mode, device, 1, threads, env)["peak_bytes"]
    elif device == "cpu":
        res["peak_bytes"] = -1  # measured in the 1-thread row
    return res


def _table(rows: list[dict]) -> str:
    lines = [
        "| device | setting | mode | candidates | fine Gaussians | wall (s) | user CPU (s) "
        "| system CPU (s) | peak memory (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = "-" if r["peak_bytes"] < 0 else f"{r['peak_bytes'] / 2**20:.0f}"
        lines.append(f"| {r['device']} | {r['variant']} | {r['mode']} | {r['n']:,} | "
                     f"{r['fine']:,} | {r['seconds']:.3f} | {r['user_seconds']:.3f} | "
                     f"{r['sys_seconds']:.3f} | {mem} |")
    return "\n".join(lines)


def _growth(rows: list[dict]) -> str:
    lines = [
        "| device | setting | mode | sizes | wall ratio | user-CPU ratio | memory ratio |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    key = lambda r: (r["device"], r["variant"], r["mode"])  # noqa: E731
    for k in dict.fromkeys(key(r) for r in rows):
        rs = sorted((r for r in rows if key(r) == k), key=lambda r: r["n"])
        for a, b in zip(rs, rs[1:], strict=False):
            ok = a["peak_bytes"] > 0 and b["peak_bytes"] > 0
            mem = f"{b['peak_bytes'] / a['peak_bytes']:.2f}" if ok else "-"
            user = b["user_seconds"] / max(a["user_seconds"], 1e-9)
            lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {a['n']:,} -> {b['n']:,} | "
                         f"{b['seconds'] / a['seconds']:.2f} | {user:.2f} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="forward", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="CPU settings to time (memory is measured with the first)")
    p.add_argument("--config", default="small", help="densify preset (small, object, scene)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    p.add_argument("--modes", nargs="+", default=["forward", "backward"])
    p.add_argument("--repeats", type=int, default=2, help="timed runs per size (min is kept)")
    p.add_argument("--extra", type=int, nargs="*", default=[12_000],
                   help="extra sizes timed forward-only (the 12k target)")
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
        for vi, variant in enumerate(variants):
            for mode in args.modes:
                for n in args.sizes:
                    # Keep the run short; a tuned heap needs one call to grow first.
                    repeats = args.repeats if n < 100_000 else 1 + ("tuned" in variant)
                    rows.append(_spawn(args.config, n, mode, device, repeats, variant, vi == 0))
                    print(json.dumps(rows[-1]), flush=True)
            for n in args.extra:
                rows.append(_spawn(args.config, n, "forward", device, args.repeats, variant, False))
                print(json.dumps(rows[-1]), flush=True)
    load_after = os.getloadavg()
    main_rows = [r for r in rows if r["n"] in args.sizes]
    load = "1/5/15-min load average {:.1f}/{:.1f}/{:.1f} before, {:.1f}/{:.1f}/{:.1f} after".format(
        *load_before, *load_after
    )
    cmd = "python " + " ".join([str(Path(__file__).relative_to(ROOT))] + sys.argv[1:])
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
  shell of radius 0.4; time is the best of {args.repeats} runs (at 100k: 1, or 2 with the
  tuned malloc) after a warm-up on 64 candidates; forward is
  `torch.no_grad()` in eval mode, backward is forward + backward in train mode.
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
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
