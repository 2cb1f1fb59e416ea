"""The extension .zip: built by `tools/build_extension.py` with Blender's own tool, passes
its validator, and installs and enables in a fresh headless Blender whose add-on can import
the vendored engine and run the tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel"),
]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    import build_extension

    out = tmp_path_factory.mktemp("dist")
    return build_extension.build(out)  # raises SystemExit if build or validate fails


def test_manifest_fields():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, like every bpy wheel here
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text())
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["type"] == "add-on" and manifest["id"] == "gd_splat"
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(manifest["permissions"]) == {"files", "network"}
    assert all(len(reason) <= 64 for reason in manifest["permissions"].values())
    assert {"windows-x64", "linux-x64", "macos-arm64"} <= set(manifest["platforms"])


def test_package_layout(package):
    assert package.name == "gd_splat-0.1.0.zip"
    names = zipfile.ZipFile(package).namelist()
    required = ["blender_manifest.toml", "_vendor/engine/__init__.py",
                "_vendor/engine/models/__init__.py", "_vendor/engine/download.py"]  # fmt: skip
    required += [f"{m}.py" for m in ("__init__", "operators", "panels", "preferences",
                                     "properties", "dependencies", "jobs", "camera_capture",
                                     "photos", "pointcloud", "display", "splat_files")]  # fmt: skip
    for name in required:
        assert name in names, name
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.startswith(("tests/", "engine/")) for n in names)
    shipped = ROOT / "engine" / "assets" / "object-small.safetensors"
    if shipped.is_file():
        assert "_vendor/engine/assets/object-small.safetensors" in names


def test_validate_rejects_a_broken_manifest(tmp_path, package):
    """The validator the build relies on is real: a zip with a bad manifest fails."""
    import build_extension

    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "blender_manifest.toml":
                data = data.replace(b'schema_version = "1.0.0"', b"")
            dst.writestr(item, data)
    with pytest.raises(SystemExit, match="validate failed"):
        build_extension.run_tool(build_extension.find_blender_ext(), "validate", str(broken))


INSTALL_SCRIPT = textwrap.dedent(
    """
    import importlib, json, os, sys
    import bpy
    zip_path = sys.argv[-1]
    result = bpy.ops.extensions.package_install_files(
        filepath=zip_path, repo="user_default", enable_on_install=True)
    out = {"install": sorted(result)}
    name = "bl_ext.user_default.gd_splat"
    out["enabled"] = name in bpy.context.preferences.addons
    out["panel"] = hasattr(bpy.types, "VIEW3D_PT_gd_splat")
    out["operator"] = hasattr(bpy.types, "GD_OT_reconstruct")
    addon = sys.modules[name]
    deps = importlib.import_module(name + ".dependencies")
    out["user_dir"] = str(deps.user_dir())
    out["numba_cache"] = os.environ.get("NUMBA_CACHE_DIR")
    import engine
    deps.check_engine_origin()  # the vendored engine, not another top-level `engine`
    from engine.models import load_model
    out["engine"] = engine.__file__
    model = load_model("object-tiny", device="cpu", pretrained=False)
    out["image_size"] = model.image_size
    out["addon_file"] = addon.__file__
    import addon_utils
    addon_utils.disable(name, default_set=True)
    out["panel_after_disable"] = hasattr(bpy.types, "VIEW3D_PT_gd_splat")
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_installs_and_enables_in_fresh_blender(package, tmp_path):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("GD_", "NUMBA_"))}  # fmt: skip
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender")  # a fresh user profile
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(package)],
                          capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    ext_dir = tmp_path / "blender" / "extensions" / "user_default" / "gd_splat"
    assert out["install"] == ["FINISHED"] and out["enabled"]
    assert out["panel"] and out["operator"] and not out["panel_after_disable"]
    assert Path(out["addon_file"]) == ext_dir / "__init__.py"
    # The engine imported is the one inside the extension, not the repository's.
    assert Path(out["engine"]) == ext_dir / "_vendor" / "engine" / "__init__.py"
    assert out["image_size"] > 0
    user = tmp_path / "blender" / "extensions" / ".user" / "user_default" / "gd_splat"
    assert Path(out["user_dir"]) == user
    assert out["numba_cache"] == str(user / "numba-cache")
