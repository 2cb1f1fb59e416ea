"""Where the numba kernels cache their machine code (engine/render/numba_cache.py): the
folder rules, a writable NUMBA_CACHE_DIR filled by `gd warmup` and read by the next
process without compiling, and an unwritable one falling back to no cache while renders
still work. The subprocess cases run a fresh Python, as a new install would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.render.numba_cache import ENV, resolve, writable

pytest.importorskip("numba")
ROOT = Path(__file__).resolve().parents[1]

# Render once in a fresh process and report whether the kernels came from the cache.
PROBE = """
import json, torch
from engine.render import render, rasterize_numba, project_numba
from engine.render.numba_cache import configure
from engine.refine import random_gaussians
from engine.cameras import Cameras
g = random_gaussians(20, half_size=0.3, opacity=0.5)
g = type(g)(*(p.requires_grad_() for p in g.parameters()))
cams = Cameras.look_at(torch.tensor([[2.0, 0.2, 0.4]]), torch.zeros(3), fov_x_deg=40.0,
                       width=16, height=16)
out = render(g, cams, backend="numba", absgrad=True)
out.colors.mean().backward()
kernels = [rasterize_numba._forward_kernel, rasterize_numba._backward_kernel,
           project_numba._project_forward, project_numba._project_backward]
status = configure()
print(json.dumps({
    "enabled": status.enabled, "source": status.source,
    "directory": None if status.directory is None else str(status.directory),
    "hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
    "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels),
    "finite": bool(torch.isfinite(g.means.grad).all()),
}))
"""


def run_python(code: str, cache_dir: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{ENV: cache_dir})
    return subprocess.run([sys.executable, *args] if args else [sys.executable, "-c", code],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def probe(cache_dir: str) -> dict:
    proc = run_python(PROBE, cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_resolve_follows_the_folder_rules(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = blocker / "sub"  # below a regular file: can never be created, even as root
    assert not writable(unwritable) and writable(tmp_path / "new" / "dir")

    s = resolve({ENV: str(tmp_path / "mine")}, kernel_dir=tmp_path / "pkg")
    assert (s.enabled, s.source, s.directory) == (True, ENV, tmp_path / "mine")
    s = resolve({ENV: str(unwritable)}, kernel_dir=tmp_path / "pkg")
    assert not s.enabled and s.directory is None and "not a writable" in s.reason
    s = resolve({}, kernel_dir=tmp_path / "pkg")
    assert (s.source, s.directory) == ("package", tmp_path / "pkg" / "__pycache__")
    s = resolve({}, kernel_dir=unwritable, user_dir=tmp_path / "user")
    assert (s.source, s.directory) == ("user", tmp_path / "user")
    s = resolve({}, kernel_dir=unwritable, user_dir=unwritable / "user")
    assert not s.enabled and s.source == "none"


def test_warmup_fills_the_cache_and_the_next_process_does_not_compile(tmp_path):
    cache = tmp_path / "numba-cache"
    proc = run_python("", str(cache), "-m", "engine.cli", "warmup")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "numba kernels ready" in proc.stdout and str(cache) in proc.stdout
    # Compiling every kernel says nothing else: no numba warning reaches the user.
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]
    assert any(cache.rglob("*.nbi")) and any(cache.rglob("*.nbc"))
    second = probe(str(cache))
    assert second["enabled"] and second["source"] == ENV and second["finite"]
    assert second["hits"] >= 4 and second["misses"] == 0


def test_an_unwritable_cache_dir_falls_back_to_compiling(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = probe(str(blocker / "numba"))
    assert not result["enabled"] and result["source"] == "none" and result["finite"]
    assert result["hits"] == 0
