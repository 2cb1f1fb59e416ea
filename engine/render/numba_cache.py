"""Where the numba kernels' compiled code is cached, and warming that cache ahead of use.

Compiling the CPU kernels (`rasterize_numba`, `project_numba`) takes several seconds the
first time a process renders (7.9 s measured in a fresh clone); numba's `cache=True`
stores the machine code so that later processes load it in a fraction of that. This module
decides, once per process and before the kernels are defined, where that cache lives:

1. `NUMBA_CACHE_DIR`, when the user set it: used if it is (or can be made) a writable
   folder, otherwise caching is switched off for this process (the user asked for that
   folder; writing elsewhere behind their back would surprise more than recompiling);
2. else the `__pycache__` beside the kernels (numba's own default) when writable: a
   source checkout or a user-owned virtual environment;
3. else a per-user folder, `$XDG_CACHE_HOME/gd-splat/numba` (`~/.cache/...`): a
   read-only install, e.g. a system site-packages or a Blender extension folder the user
   cannot write;
4. else no cache: the kernels compile in every process, and nothing fails.

`warmup()` (the `gd warmup` command; `make venv` runs it) compiles every kernel variant a
render, its backward and the gradient mask use, so the first reconstruction after an
install is as fast as the second. Numba keys each cache entry to the source file's
modification time and size, so editing a kernel recompiles it once, and a cache made for
another CPU is ignored, never misused.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "NUMBA_CACHE_DIR"
KERNEL_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CacheStatus:
    """Where the kernels' machine code is cached.

    Attributes:
        enabled: kernels are compiled with `cache=True`.
        directory: the cache folder (None when disabled).
        source: "NUMBA_CACHE_DIR", "package" (`__pycache__` beside the kernels), "user"
            (the per-user folder) or "none".
        reason: why, in words (shown by `gd warmup`).
    """

    enabled: bool
    directory: Path | None
    source: str
    reason: str


def user_cache_dir() -> Path:
    """The per-user cache folder (XDG base directory rules)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gd-splat" / "numba"


def writable(folder: Path) -> bool:
    """True when `folder` exists or can be created, and a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".gd-write-test-"):
            pass
    except OSError:
        return False
    return True


def resolve(environ: dict[str, str] | None = None, kernel_dir: Path = KERNEL_DIR,
            user_dir: Path | None = None) -> CacheStatus:  # fmt: skip
    """Choose the cache folder by the rules of the module docstring (no side effects
    beyond creating the chosen folder)."""
    env = os.environ if environ is None else environ
    requested = env.get(ENV, "").strip()
    if requested:
        folder = Path(requested).expanduser()
        if writable(folder):
            return CacheStatus(True, folder, ENV, f"{ENV} is set")
        return CacheStatus(False, None, "none",
                           f"{ENV}={requested} is not a writable folder: kernels are "
                           "compiled in every process")  # fmt: skip
    package = kernel_dir / "__pycache__"
    if writable(package):
        return CacheStatus(True, package, "package", "beside the kernels (writable)")
    folder = user_dir if user_dir is not None else user_cache_dir()
    if writable(folder):
        return CacheStatus(True, folder, "user",
                           f"{package} is read-only; using the per-user cache")  # fmt: skip
    return CacheStatus(False, None, "none",
                       f"neither {package} nor {folder} is writable: kernels are compiled "
                       "in every process")  # fmt: skip


@functools.cache
def configure() -> CacheStatus:
    """Apply `resolve()` to numba (once per process, before any kernel is defined) and
    return the status; the kernel modules read `.enabled` for their `cache=` flag."""
    import numba

    status = resolve()
    if status.enabled and status.source != "package":
        # numba's user-provided locator reads the folder from its config at compile time.
        numba.config.CACHE_DIR = str(status.directory)
    return status


def warmup() -> tuple[CacheStatus, float]:
    """Compile (or load from the cache) every CPU kernel variant by rendering a tiny scene
    forward and backward in float32, with and without parameter gradients, and float64
    (the tests' gradchecks). Returns the cache status and the seconds it took."""
    import torch

    from ..cameras import Cameras
    from ..gaussians import Gaussians
    from . import render

    status = configure()
    t0 = time.perf_counter()
    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(0)
        n = 16
        g = Gaussians(
            means=(torch.rand(n, 3, generator=gen) - 0.5) * 0.5,
            log_scales=torch.full((n, 3), -2.5), quats=torch.randn(n, 4, generator=gen),
            opacity_logits=torch.zeros(n), sh=torch.rand(n, 4, 3, generator=gen) * 0.2,
        ).to(dtype=dtype)  # fmt: skip
        eye = torch.tensor([[2.0, 0.3, 0.5]], dtype=torch.float64)
        cams = Cameras.look_at(eye, torch.zeros(3), fov_x_deg=40.0, width=24,
                               height=20).to(dtype=dtype)  # fmt: skip
        for trainable in (True, False):
            gg = Gaussians(*(p.clone().requires_grad_(trainable) for p in g.parameters()))
            out = render(gg, cams, backend="numba", absgrad=True)
            (out.colors.mean() + out.alphas.mean() + out.depths.mean()).backward()
    return status, time.perf_counter() - t0
