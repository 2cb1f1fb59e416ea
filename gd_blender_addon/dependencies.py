"""Where the engine and PyTorch come from, and installing PyTorch on request.

Blender's Python ships numpy and requests but not PyTorch, Pillow, safetensors or numba,
which the engine needs. They are installed with pip into the extension's own user directory
(`bpy.utils.extension_path_user(__package__, path="site-packages")`), which is *appended* to
`sys.path` so Blender's own numpy keeps priority.

The engine itself ships inside the built extension as `_vendor/engine/` and `_vendor/` is put
on `sys.path`: the engine uses absolute `from engine...` imports, and vendoring keeps the
add-on's own modules (`operators`, `panels`, ...) off the top-level module namespace. In a
development checkout (`gd_blender_addon` imported from the repository) there is no
`_vendor/` and `engine` is importable from the repository root already.

Nothing here imports torch or the engine at module import time, so the add-on registers in a
Blender without PyTorch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import bpy

PACKAGE = __package__ or "gd_blender_addon"
ADDON_DIR = Path(__file__).resolve().parent
VENDOR_DIR = ADDON_DIR / "_vendor"

# Modules the engine needs that Blender's Python lacks: (import name, pip name, required).
# numba is optional: the engine falls back to its PyTorch rasteriser (slower on the CPU).
# zstandard is optional: only SPZ version 4 (the default .spz export) needs it.
# opencv-python-headless is optional: only photos without alpha or mask files need it.
MODULES: tuple[tuple[str, str, bool], ...] = (
    ("torch", "torch", True),
    ("PIL", "pillow", True),
    ("safetensors", "safetensors", True),
    ("numba", "numba", False),
    ("zstandard", "zstandard", False),
    # optional: masks estimated for photos without alpha (GrabCut); <4.12 keeps numpy 1.x
    ("cv2", "opencv-python-headless>=4.8,<4.12", False),
)

TORCH_VERSION = "2.13.0"
# pip index of each PyTorch build. The CPU build is small (~200 MB); CUDA builds are ~2.5 GB
# and need an NVIDIA driver; on macOS the default (PyPI) build includes Apple MPS support.
TORCH_INDEXES = {
    "CPU": "https://download.pytorch.org/whl/cpu",
    "CUDA": "https://download.pytorch.org/whl/cu128",
    "DEFAULT": "https://pypi.org/simple",
}

# Overrides the user directory (tests, portable installs).
USER_DIR_ENV = "GD_ADDON_USER_DIR"


# ---------------------------------------------------------------------------- directories
def user_dir(*parts: str, create: bool = True) -> Path:
    """A writable per-user directory of the add-on (`parts` joined below it).

    An installed extension uses `bpy.utils.extension_path_user`, which Blender keeps when the
    extension is updated; a development checkout (not an extension) falls back to Blender's
    config directory. `GD_ADDON_USER_DIR` overrides both.
    """
    override = os.environ.get(USER_DIR_ENV)
    if override:
        base = Path(override)
    else:
        try:
            base = Path(bpy.utils.extension_path_user(PACKAGE, create=create))
        except ValueError:  # "package does not name an extension": a development checkout
            base = Path(bpy.utils.user_resource("CONFIG", path="gd_splat", create=create))
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def site_packages_dir(create: bool = True) -> Path:
    """Where the one-click install puts PyTorch and friends."""
    return user_dir("site-packages", create=create)


_paths_ready = False


def setup_paths() -> None:
    """Make the vendored engine and the user site-packages importable; idempotent.

    Also points numba's kernel cache at a user-writable directory: numba caches compiled
    kernels next to their sources by default, and an installed extension's directory may be
    read-only (system repositories) or replaced on update.
    """
    global _paths_ready
    if VENDOR_DIR.is_dir() and str(VENDOR_DIR) not in sys.path:
        # First, so the engine that ships with this add-on wins over any other `engine`.
        sys.path.insert(0, str(VENDOR_DIR))
    site = site_packages_dir(create=False)
    if site.is_dir() and str(site) not in sys.path:
        sys.path.append(str(site))
    if not _paths_ready:
        if VENDOR_DIR.is_dir():  # installed extension; a checkout's own folders are writable
            os.environ.setdefault("NUMBA_CACHE_DIR", str(user_dir("numba-cache")))
        importlib.invalidate_caches()
        _paths_ready = True


# ---------------------------------------------------------------------------- detection
def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules(required_only: bool = True) -> list[str]:
    """pip names of the engine's dependencies that Blender's Python cannot import."""
    setup_paths()
    return [pip for mod, pip, req in MODULES if (req or not required_only) and not _find(mod)]


def torch_available() -> bool:
    """Whether the engine can run: PyTorch and the other required modules are importable.

    Tests monkeypatch this to simulate a Blender without PyTorch.
    """
    return not missing_modules()


def engine_version() -> str | None:
    """The engine's version, or None when it cannot be imported."""
    if not torch_available():
        return None
    try:
        import engine

        return str(engine.__version__)
    except Exception:
        return None


def check_engine_origin() -> None:
    """Raise ImportError if `engine` is some other package than the one this add-on ships
    (another add-on could have put its own top-level `engine` in sys.modules first)."""
    import engine

    if VENDOR_DIR.is_dir():
        found = Path(engine.__file__).resolve()
        if VENDOR_DIR.resolve() not in found.parents:
            raise ImportError(
                f"another module named 'engine' is loaded ({found}), so the add-on cannot "
                "use its own; disable the add-on that brings it and restart Blender"
            )


def torch_summary() -> str:
    """One line about the installed PyTorch and its devices, for the preferences."""
    if not torch_available():
        return "PyTorch is not installed"
    import torch

    devices = ["CPU"]
    if torch.cuda.is_available():
        devices.append(f"CUDA ({torch.cuda.get_device_name(0)})")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("MPS")
    return f"PyTorch {torch.__version__}: {', '.join(devices)}"


# ---------------------------------------------------------------------------- install
def python_tag(version: tuple[int, int] | None = None) -> str:
    """The CPython wheel tag of Blender's Python ("cp311" for Blender 4.2-5.0, "cp313" for
    5.1 and later), or of `version` (major, minor)."""
    major, minor = version or sys.version_info[:2]
    return f"cp{major}{minor}"


def install_summary(kind: str) -> str:
    """One line saying which wheels "Install PyTorch" picks, for the UI and the log."""
    if kind not in TORCH_INDEXES:
        raise ValueError(f"unknown PyTorch build {kind!r}; choose from {sorted(TORCH_INDEXES)}")
    build = {"CPU": "CPU build", "CUDA": "CUDA build", "DEFAULT": "PyPI build"}[kind]
    py = "{}.{}".format(*sys.version_info[:2])
    return f"PyTorch {TORCH_VERSION} ({build}) for Blender's Python {py} ({python_tag()} wheels)"


def install_commands(kind: str) -> list[list[str]]:
    """pip command lines that install the engine's dependencies into the user directory.

    kind: "CPU" (CPU-only PyTorch, ~200 MB), "CUDA" (NVIDIA GPUs, ~2.5 GB) or "DEFAULT"
    (PyPI's build: CUDA on Linux, CPU on Windows, MPS on macOS).

    The wheels are pinned to the Python that runs Blender (3.11 up to Blender 5.0, 3.13 from
    5.1): `--target` installs outside any environment, so pip is told the interpreter
    version and ABI explicitly and takes binary wheels only (a source build inside Blender
    would need a compiler and Python headers that Blender does not ship).
    """
    if kind not in TORCH_INDEXES:
        raise ValueError(f"unknown PyTorch build {kind!r}; choose from {sorted(TORCH_INDEXES)}")
    target = str(site_packages_dir())
    tag = python_tag()
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--upgrade",
        "--only-binary=:all:",
        "--python-version",
        "{}.{}".format(*sys.version_info[:2]),
        "--implementation",
        "cp",
        "--abi",
        tag,
        "--target",
        target,
    ]
    torch_spec = f"torch=={TORCH_VERSION}"
    return [
        [*pip, "--index-url", TORCH_INDEXES[kind], torch_spec],
        # numpy is left out on purpose (--no-deps would break llvmlite): Blender's own numpy
        # stays first on sys.path because the target directory is appended.
        [*pip, *(pip_name for _, pip_name, _ in MODULES if pip_name != "torch")],
    ]


def install_command_text(kind: str) -> str:
    """The install commands as text a user can paste into a terminal."""
    lines = []
    for command in install_commands(kind):
        lines.append(" ".join(f'"{c}"' if " " in c else c for c in command))
    return "\n".join(lines)


def install(
    kind: str,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    commands: list[list[str]] | None = None,
) -> None:
    """Run the pip commands of `install_commands(kind)`; call from a worker thread.

    commands: `install_commands(kind)` made beforehand on the main thread (the target folder
    comes from `bpy.utils.extension_path_user`, which is bpy); made here when None.
    The caller runs `setup_paths()` on the main thread afterwards, so the new packages can
    be imported. Raises RuntimeError with pip's last output lines when a command fails, and
    InterruptedError when `cancel` is set (pip is terminated).
    """
    if commands is None:
        commands = install_commands(kind)
    if progress is not None:
        progress(0.0, install_summary(kind))
    for i, command in enumerate(commands):
        if progress is not None:
            progress(i / len(commands), f"pip install {' '.join(command[-3:])}")
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-15:]
            if progress is not None:
                progress(i / len(commands), line.strip()[:120])
            if cancel is not None and cancel.is_set():
                proc.terminate()
                proc.wait()
                raise InterruptedError("installation cancelled")
        if proc.wait() != 0:
            raise RuntimeError(f"pip failed (exit {proc.returncode}):\n" + "\n".join(tail))
    importlib.invalidate_caches()
    if progress is not None:
        progress(1.0, "installed")
