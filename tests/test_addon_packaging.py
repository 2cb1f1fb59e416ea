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
    required += [f"{m}.py" for m in ("__init__", "operators", "modal", "panels", "preferences",
                                     "properties", "dependencies", "jobs", "setup_jobs",
                                     "camera_capture", "photos", "pointcloud", "display",
                                     "splat_files")]  # fmt: skip
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
    out = json.loads(line[len("RESULT ") :])
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


# What an artist does with the installed extension, on a textured prop: Reconstruct from
# the selected cameras (shipped weights), Densify a region, Export, Import. Runs in a fresh
# process and user profile so nothing of the repository's checkout is imported.
END_TO_END_SCRIPT = textwrap.dedent(
    """
    import json, math, sys
    import numpy as np
    import bpy
    from mathutils import Matrix
    zip_path, out_dir = sys.argv[-2], sys.argv[-1]
    assert bpy.ops.extensions.package_install_files(
        filepath=zip_path, repo="user_default", enable_on_install=True) == {"FINISHED"}
    name = "bl_ext.user_default.gd_splat"
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.device = "CPU"
    scene = bpy.context.scene
    for obj in list(scene.objects):
        bpy.data.objects.remove(obj)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    bpy.ops.mesh.primitive_cube_add(size=0.6, location=(0.2, -0.1, 0.3))
    prop = bpy.context.active_object
    image = bpy.data.images.new("grid", 64, 64)
    image.generated_type = "COLOR_GRID"
    material = bpy.data.materials.new("grid")
    if material.node_tree is None:
        material.use_nodes = True
    nodes = material.node_tree.nodes
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    material.node_tree.links.new(texture.outputs["Color"],
                                 nodes["Principled BSDF"].inputs["Base Color"])
    prop.data.materials.append(material)
    centre = np.array([0.2, -0.1, 0.3])
    for i in range(4):
        angle = math.radians(45 + 90 * i)
        eye = centre + 2.2 * np.array([math.cos(angle), math.sin(angle), 0.45])
        forward = (centre - eye) / np.linalg.norm(centre - eye)
        right = np.cross(forward, [0.0, 0.0, 1.0]); right /= np.linalg.norm(right)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(right, forward), -forward, eye
        cam = bpy.data.objects.new(f"Cam{i}", bpy.data.cameras.new(f"Cam{i}"))
        cam.matrix_world = Matrix(m.tolist())
        scene.collection.objects.link(cam)
        cam.select_set(True)
    scene.camera = bpy.data.objects["Cam0"]
    prop.select_set(True)
    bpy.context.view_layer.update()
    out = {"blender": bpy.app.version_string}

    before = set(bpy.data.objects.keys())
    out["reconstruct"] = sorted(bpy.ops.gd.reconstruct())
    (splat_name,) = set(bpy.data.objects.keys()) - before
    splat = bpy.data.objects[splat_name]
    out["reconstructed"] = len(splat.data.points)
    out["modifiers"] = [m.type for m in splat.modifiers]

    bpy.ops.object.empty_add(type="CUBE", location=(0.2, -0.1, 0.3))
    region = bpy.context.active_object
    region.scale = (0.2, 0.2, 0.2)
    bpy.context.view_layer.update()
    scene.gd_splat.region = region
    scene.gd_splat.budget = 2000
    for obj in bpy.context.selected_objects:
        obj.select_set(False)
    splat.select_set(True)
    bpy.context.view_layer.objects.active = splat
    out["densify"] = sorted(bpy.ops.gd.densify_selected())
    splat = bpy.data.objects[splat_name]
    out["densified"] = len(splat.data.points)

    path = out_dir + "/prop.ply"
    out["export"] = sorted(bpy.ops.gd.export_splats(filepath=path))
    before = set(bpy.data.objects.keys())
    out["import"] = sorted(bpy.ops.gd.import_splats(filepath=path))
    (imported,) = set(bpy.data.objects.keys()) - before
    out["imported"] = len(bpy.data.objects[imported].data.points)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_installed_extension_end_to_end(package, tmp_path):
    """Reconstruct, Densify, Export and Import in the installed extension, with the weights
    it ships (the README's version table lists the Blenders this ran on)."""
    if "_vendor/engine/assets/object-small.safetensors" not in zipfile.ZipFile(package).namelist():
        pytest.skip("the extension was built without the shipped weights")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("GD_", "NUMBA_"))}  # fmt: skip
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", END_TO_END_SCRIPT, str(package), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out["reconstruct"] == out["densify"] == ["FINISHED"]
    assert out["export"] == out["import"] == ["FINISHED"]
    assert out["modifiers"] == ["NODES"]  # the splat display
    assert out["reconstructed"] > 1000
    assert out["densified"] > out["reconstructed"]
    assert out["imported"] == out["densified"]
    from engine.io import load

    assert len(load(tmp_path / "prop.ply").means) == out["densified"]
