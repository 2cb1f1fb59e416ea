"""Rasteriser benchmark: time and peak memory of forward and forward+backward.

    python bench/render.py                 # full sweep, writes bench/results/render.md
    python bench/render.py --quick         # 10k/100k at 256² only

Every configuration runs in a fresh subprocess so its peak RSS (VmHWM) is its
own. Scenes follow DESIGN.md §8's anchor: N random Gaussians in the unit cube,
scales 0.005–0.06, cameras on a ring at distance 2.5, horizontal FOV 39.6°.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_and_memory, peak_rss_mb  # bench/ is the script's own folder

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "render.md"


def make_scene(n: int, res: int, cams: int, device: str):
    import torch

    from engine.cameras import Cameras
    from engine.gaussians import Gaussians

    gen = torch.Generator().manual_seed(0)
    g = Gaussians(
        means=torch.rand(n, 3, generator=gen) - 0.5,
        log_scales=torch.log(torch.rand(n, 3, generator=gen) * 0.055 + 0.005),
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen),
        sh=torch.randn(n, 16, 3, generator=gen) * 0.2,
    ).to(device)
    angles = torch.arange(cams, dtype=torch.float64) * (2 * math.pi / cams)
    eyes = torch.stack([2.5 * torch.cos(angles), 2.5 * torch.sin(angles), 0.3 + 0 * angles], -1)
    cameras = Cameras.look_at(eyes, torch.zeros_like(eyes), fov_x_deg=39.6, width=res, height=res)
    return g, cameras.to(device=device, dtype=torch.float32)


def measure(n: int, res: int, cams: int, backend: str, device: str, repeats: int) -> dict:
    """Runs inside the child process."""
    import torch

    from engine.render import render

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    g, cameras = make_scene(n, res, cams, device)
    base_rss = peak_rss_mb()
    fwd, full = [], []
    for i in range(repeats + 1):  # first round warms caches (numba loads its compiled kernels)
        params = [p.detach().clone().requires_grad_(True) for p in g.parameters()]
        from engine.gaussians import Gaussians

        gg = Gaussians.unchecked(*params)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            render(gg, cameras, backend=backend)
        sync()
        t1 = time.perf_counter()
        out = render(gg, cameras, backend=backend)
        (out.colors.mean() + out.alphas.mean()).backward()
        sync()
        t2 = time.perf_counter()
        if i > 0:
            fwd.append(t1 - t0)
            full.append(t2 - t1)
    result = {
        "fwd_s": statistics.median(fwd),
        "fwd_bwd_s": statistics.median(full),
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base_rss,
    }
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def measure_forward(n: int, res: int, backend: str, device: str) -> dict:
    """One camera, forward only (no autograd): the bounded-memory check for huge scenes."""
    import torch

    from engine.render import render

    g, cameras = make_scene(n, res, 1, device)
    base_rss = peak_rss_mb()
    t0 = time.perf_counter()
    with torch.no_grad():
        render(g, cameras, backend=backend)
    return {
        "fwd_s": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base_rss,
    }


def measure_reference(n: int, res: int) -> dict:
    """Brute-force float64 reference, one camera, forward only."""
    import torch

    from engine.render.reference import render_reference

    g, cameras = make_scene(n, res, 1, "cpu")
    t0 = time.perf_counter()
    with torch.no_grad():
        render_reference(g, cameras)
    return {"fwd_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


def run_child(args: list[str], timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--child", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_description() -> str:
    cpu, mem = cpu_and_memory()
    import numba
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, {mem}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, numba {numba.__version__}, "
        f"torch threads {torch.get_num_threads()}, numba threads {numba.get_num_threads()}"
    )


def fmt(r: dict | None, key: str, digits: int = 3) -> str:
    if r is None or "error" in r:
        return (r or {}).get("error", "—")
    v = r.get(key)
    return "—" if v is None else f"{v:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--child", nargs="*")
    args = parser.parse_args()
    if args.child is not None:
        kind, *rest = args.child
        if kind == "ref":
            print(json.dumps(measure_reference(int(rest[0]), int(rest[1]))))
        elif kind == "fwd":
            print(json.dumps(measure_forward(int(rest[0]), int(rest[1]), rest[2], rest[3])))
        else:
            n, res, cams, backend, device, *repeats = rest
            count = int(repeats[0]) if repeats else args.repeats
            print(json.dumps(measure(int(n), int(res), int(cams), backend, device, count)))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    resolutions = [256] if args.quick else [256, 512]
    rows = []
    for device in devices:
        backends = ["gsplat", "torch"] if device == "cuda" else ["numba", "torch"]
        for backend in backends:
            for res in resolutions:
                for n in sizes:
                    for cams in (1, 4):
                        # The portable backend is the CPU's fallback: one camera is enough there.
                        if device == "cpu" and backend == "torch" and cams > 1:
                            continue
                        child = ["run", str(n), str(res), str(cams), backend, device]
                        if n >= 1_000_000:
                            child.append("1")  # one timed run after the warm-up
                        r = run_child(child, args.timeout)
                        rows.append((device, backend, res, n, cams, r))
                        print(device, backend, res, n, cams, r, flush=True)
    refs = {}
    for n in (10_000, 100_000):
        refs[n] = run_child(["ref", str(n), "256"], args.timeout * 4)
        print("reference", n, refs[n], flush=True)

    lines = [
        "# Rasteriser benchmark",
        "",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {machine_description()}",
        f"- Command: `python bench/render.py{' --quick' if args.quick else ''}`",
        f"- Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "- Scene: N random Gaussians in the unit cube, scales 0.005–0.06, SH degree 3, cameras on "
        "a ring at distance 2.5, FOV 39.6°. Median of "
        f"{args.repeats} runs (one for 1M) after a warm-up; each row in a fresh process. "
        "Peak RSS is the process's VmHWM, including the Python+torch baseline ('base').",
        "",
        "| device | backend | res | N | cams | forward s | fwd+bwd s | peak RSS MB | base MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for device, backend, res, n, cams, r in rows:
        lines.append(
            f"| {device} | {backend} | {res}² | {n:,} | {cams} | {fmt(r, 'fwd_s')} | "
            f"{fmt(r, 'fwd_bwd_s')} | {fmt(r, 'peak_rss_mb', 0)} | {fmt(r, 'base_rss_mb', 0)} |"
        )
    lines += [
        "",
        "## Against the brute-force reference (float64, every Gaussian × every pixel)",
        "",
    ]
    lines += [
        "| N | res | reference forward s | numba forward s | speed-up |",
        "|---|---|---|---|---|",
    ]
    for n, ref in refs.items():
        mine = next(
            (
                r
                for d, b, res, nn, c, r in rows
                if (d, b, res, nn, c) == ("cpu", "numba", 256, n, 1)
            ),
            None,
        )
        ratio = "—"
        if ref and "error" not in ref and mine and "error" not in mine:
            ratio = f"{ref['fwd_s'] / mine['fwd_s']:.0f}×"
        lines.append(f"| {n:,} | 256² | {fmt(ref, 'fwd_s', 2)} | {fmt(mine, 'fwd_s')} | {ratio} |")
    target = next(
        (
            r
            for d, b, res, nn, c, r in rows
            if (d, b, res, nn, c) == ("cpu", "numba", 256, 100_000, 1)
        ),
        None,
    )
    if target and "error" not in target:
        ok = (target["fwd_s"] <= 0.3, target["fwd_bwd_s"] <= 1.0, target["peak_rss_mb"] <= 2048)
        lines += [
            "",
            "## Targets (CPU, 256², 100k Gaussians, one camera)",
            "",
            f"- forward ≤ 0.3 s: {target['fwd_s']:.3f} s — {'met' if ok[0] else 'NOT met'}",
            f"- forward+backward ≤ 1.0 s: {target['fwd_bwd_s']:.3f} s — "
            f"{'met' if ok[1] else 'NOT met'}",
            f"- peak RSS ≤ 2 GB: {target['peak_rss_mb']:.0f} MB — {'met' if ok[2] else 'NOT met'}",
        ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
