"""Build the Blender extension .zip: `python tools/build_extension.py [--out DIR]`.

Stages a directory laid out as Blender wants an extension (`make extension` runs this):

    blender_manifest.toml        from the repository root
    __init__.py, operators.py... the code of gd_blender_addon/ (the extension's root package)
    _vendor/engine/              the engine (with shipped weights, if any are under engine/);
                                 the add-on puts _vendor/ on sys.path, see dependencies.py

then runs Blender's own extension tool (`blender_ext.py build`, then `validate` on the zip).
The tool is found in the installed `bpy` wheel (or given with --blender-ext); plain Python
runs it, no Blender binary needed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.data.procedural.assets import bpy_wheel_path  # the engine is installed in the venv

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", "*.egg-info")
# Engine parts the add-on never uses: training data generation needs Blender *as a worker*
# and scikit-image, and is not part of the extension.
ENGINE_EXCLUDE = ("data/procedural",)


def find_blender_ext() -> Path:
    """blender_ext.py from the bpy wheel's bundled scripts."""
    try:
        return bpy_wheel_path("*/scripts/addons_core/bl_pkg/cli/blender_ext.py")
    except FileNotFoundError as err:
        raise SystemExit(f"{err}; pass --blender-ext PATH/blender_ext.py") from None


def stage(dest: Path) -> Path:
    """Lay out the extension's files in `dest` (created); returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "blender_manifest.toml", dest / "blender_manifest.toml")
    addon = ROOT / "gd_blender_addon"
    for path in sorted(addon.iterdir()):
        if path.name in {"__pycache__", "_vendor"} or path.suffix in {".pyc", ".zip"}:
            continue
        if path.is_dir():
            shutil.copytree(path, dest / path.name, ignore=IGNORE)
        else:
            shutil.copy2(path, dest / path.name)
    engine_dest = dest / "_vendor" / "engine"
    shutil.copytree(ROOT / "engine", engine_dest, ignore=IGNORE)
    for sub in ENGINE_EXCLUDE:
        shutil.rmtree(engine_dest / sub, ignore_errors=True)
    for license_name in ("LICENSE", "COPYING"):
        if (ROOT / license_name).is_file():
            shutil.copy2(ROOT / license_name, dest / license_name)
    return dest


def run_tool(blender_ext: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(blender_ext), *args], capture_output=True,
                          text=True)  # fmt: skip
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise SystemExit(f"blender_ext.py {args[0]} failed:\n{output}")
    return output


def build(out: Path, blender_ext: Path | None = None, keep_stage: Path | None = None) -> Path:
    """Stage, build and validate; returns the path of the .zip in `out`."""
    blender_ext = blender_ext or find_blender_ext()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gd_ext_") as tmp:
        source = stage(keep_stage or Path(tmp) / "gd_splat")
        before = set(out.glob("*.zip"))
        run_tool(blender_ext, "build", "--source-dir", str(source), "--output-dir", str(out))
        built = sorted(set(out.glob("*.zip")) - before) or sorted(out.glob("gd_splat-*.zip"))
        if not built:
            raise SystemExit(f"blender_ext.py build wrote no .zip into {out}")
        package = max(built, key=lambda p: p.stat().st_mtime)
    run_tool(blender_ext, "validate", str(package))
    return package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder")
    parser.add_argument("--blender-ext", type=Path, help="path to Blender's blender_ext.py")
    parser.add_argument("--stage", type=Path, help="keep the staged folder here")
    args = parser.parse_args(argv)
    package = build(args.out, args.blender_ext, args.stage)
    print(f"built and validated {package} ({package.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
