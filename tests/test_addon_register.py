"""The add-on registers and unregisters cleanly, repeatedly, and without PyTorch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy wheel"),
]

ROOT = Path(__file__).resolve().parents[1]
OPERATORS = ("reconstruct", "densify_selected", "export_splats", "import_splats",
             "import_photos", "install_dependencies", "download_weights", "cancel_job",
             "show_preferences")  # fmt: skip


def _registered(bpy) -> dict[str, bool]:
    return {
        "panel": hasattr(bpy.types, "VIEW3D_PT_gd_splat"),
        "prefs": _prefs_registered(),
        "scene_props": hasattr(bpy.types.Scene, "gd_splat"),
        "object_props": hasattr(bpy.types.Object, "gd_splat"),
        **{op: hasattr(bpy.types, f"GD_OT_{op}") for op in OPERATORS},
    }


def _prefs_registered() -> bool:
    from gd_blender_addon.preferences import GD_AddonPreferences

    return bool(GD_AddonPreferences.is_registered)


def _operator_callable(bpy, name: str) -> bool:
    try:
        getattr(bpy.ops.gd, name).get_rna_type()
    except KeyError:
        return False
    return True


def test_register_unregister_three_times():
    import bpy

    import gd_blender_addon

    handlers = len(bpy.app.handlers.load_pre)
    for _ in range(3):
        gd_blender_addon.register()
        assert len(bpy.app.handlers.load_pre) == handlers + 1
        assert all(_registered(bpy).values()), _registered(bpy)
        assert all(_operator_callable(bpy, op) for op in OPERATORS)
        assert bpy.types.VIEW3D_PT_gd_splat.bl_category == "Splats"
        gd_blender_addon.unregister()
        assert len(bpy.app.handlers.load_pre) == handlers
        assert not any(_registered(bpy).values()), _registered(bpy)
        assert not any(_operator_callable(bpy, op) for op in OPERATORS)


def test_enable_disable_as_addon():
    import bpy

    addon_utils = importlib.import_module("addon_utils")
    for _ in range(2):
        addon_utils.enable("gd_blender_addon", default_set=True)
        prefs = bpy.context.preferences.addons["gd_blender_addon"].preferences
        assert prefs.device == "AUTO" and prefs.model == "object-small"
        assert {d[0] for d in type(prefs).bl_rna.properties["device"].enum_items.items()} == {
            "AUTO", "CPU", "CUDA", "MPS"
        }  # fmt: skip
        addon_utils.disable("gd_blender_addon", default_set=True)
        assert not hasattr(bpy.types, "VIEW3D_PT_gd_splat")


def test_install_commands_explain_cpu_and_cuda():
    import gd_blender_addon.dependencies as deps

    cpu, cuda = deps.install_commands("CPU"), deps.install_commands("CUDA")
    assert "https://download.pytorch.org/whl/cpu" in cpu[0]
    assert any("download.pytorch.org/whl/cu" in part for part in cuda[0])
    for commands in (cpu, cuda):
        flat = [part for command in commands for part in command]
        assert "--target" in flat and str(deps.site_packages_dir(create=False)) in flat
        assert any(part.startswith("torch==") for part in flat)
        assert {"pillow", "safetensors"} <= set(flat)
    with pytest.raises(ValueError, match="unknown PyTorch build"):
        deps.install_commands("ROCM")


def test_install_commands_pick_wheels_for_blenders_python(monkeypatch):
    """Blender 4.2-5.0 run Python 3.11, 5.1 and later 3.13: pip is told which, binary only,
    and the UI line names it."""
    import gd_blender_addon.dependencies as deps

    here = "{}.{}".format(*sys.version_info[:2])
    for command in deps.install_commands("CPU"):
        assert command[:4] == [sys.executable, "-m", "pip", "install"]
        assert "--only-binary=:all:" in command
        assert command[command.index("--python-version") + 1] == here
        assert command[command.index("--abi") + 1] == deps.python_tag()
    assert deps.python_tag((3, 11)) == "cp311" and deps.python_tag((3, 13)) == "cp313"
    assert deps.python_tag() == "cp{}{}".format(*sys.version_info[:2])
    summary = deps.install_summary("CUDA")
    assert f"Python {here}" in summary and deps.python_tag() in summary
    assert "CUDA build" in summary and deps.TORCH_VERSION in summary


def test_registers_and_explains_without_pytorch(tmp_path):
    """In a Blender whose Python cannot import torch, the add-on registers, the panel's
    checks say PyTorch is missing, and Reconstruct reports how to install it."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # `import torch` fails, find_spec says missing
        sys.path.insert(0, {str(ROOT)!r})
        import bpy
        import gd_blender_addon
        gd_blender_addon.register()
        from gd_blender_addon import dependencies, operators
        assert not dependencies.torch_available()
        assert "torch" in dependencies.missing_modules()
        assert operators.reconstruct_blocker(bpy.context).startswith("PyTorch is not installed")
        try:
            bpy.ops.gd.reconstruct()
        except RuntimeError as err:
            print("MESSAGE", err)
        gd_blender_addon.unregister()
        assert "engine.models" not in sys.modules
        print("OK")
        """
    )
    env = {**os.environ, "GD_ADDON_USER_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout
    assert "MESSAGE Error: PyTorch is not installed in Blender's Python" in proc.stdout


class FakeLayout:
    """Records a panel's draw calls and checks every property and operator it names."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def __getattr__(self, name: str):
        if name in ("row", "column", "box", "split"):
            return lambda *a, **k: FakeLayout(self.log)
        return lambda *a, **k: None

    def prop(self, data, name: str, **kw) -> None:
        assert name in data.bl_rna.properties, name
        self.log.append(f"prop {name}")

    def operator(self, idname: str, **kw):
        import bpy

        module, name = idname.split(".")
        getattr(getattr(bpy.ops, module), name).get_rna_type()  # raises if unknown
        self.log.append(f"operator {idname}")
        return type("Props", (), {})()

    def label(self, text: str = "", **kw) -> None:
        self.log.append(f"label {text}")


def test_panel_and_preferences_draw(monkeypatch):
    """Draw the sidebar panel and the preferences with a recording layout: every property
    and operator exists, reasons for disabled buttons are shown, with and without torch."""
    import bpy

    addon_utils = importlib.import_module("addon_utils")
    addon_utils.enable("gd_blender_addon", default_set=True)
    try:
        from gd_blender_addon import dependencies
        from gd_blender_addon.panels import VIEW3D_PT_gd_splat

        prefs = bpy.context.preferences.addons["gd_blender_addon"].preferences
        # The panel's hints follow the selection: start from none, whatever earlier tests
        # in this Blender session left selected.
        for obj in bpy.context.view_layer.objects:
            obj.select_set(False)
        for torch_ok in (True, False):
            monkeypatch.setattr(dependencies, "torch_available", lambda ok=torch_ok: ok)
            log: list[str] = []
            panel = type("P", (), {"layout": FakeLayout(log)})()
            VIEW3D_PT_gd_splat.draw(panel, bpy.context)
            for needed in ("prop source", "prop resolution", "prop device", "prop budget",
                           "operator gd.reconstruct", "operator gd.densify_selected",
                           "operator gd.export_splats"):  # fmt: skip
                assert needed in log, (needed, log)
            text = " ".join(log)
            if torch_ok:
                assert "Select at least one camera" in text
            else:
                assert "PyTorch is not installed" in text and "gd.show_preferences" in text
            log.clear()
            type(prefs).draw(_with_layout(prefs, log), bpy.context)
            text = " ".join(log)
            assert "prop device" in text and "operator gd.download_weights" in text
            if not torch_ok:
                assert "operator gd.install_dependencies" in text
    finally:
        addon_utils.disable("gd_blender_addon", default_set=True)


def _with_layout(prefs, log):
    """A stand-in `self` for AddonPreferences.draw: the real properties, a fake layout."""

    class Self:
        layout = FakeLayout(log)

        def __getattr__(self, name):
            return getattr(prefs, name)

    return Self()
