"""Add-on preferences: PyTorch status and install, model weights, compute device."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import bpy
from bpy.props import EnumProperty, StringProperty

from . import dependencies

DEVICES = (
    ("AUTO", "Auto", "CUDA if PyTorch sees an NVIDIA GPU, else Apple MPS, else the CPU"),
    ("CPU", "CPU", "Always the CPU (slowest, works everywhere)"),
    ("CUDA", "CUDA", "An NVIDIA GPU (needs the CUDA build of PyTorch)"),
    ("MPS", "MPS", "Apple Silicon GPU (macOS)"),
)
TORCH_BUILDS = (
    ("CPU", "CPU", "CPU-only build, about 200 MB; works on every computer"),
    ("CUDA", "CUDA", "NVIDIA GPUs (CUDA 12.8), about 2.5 GB; needs a recent driver"),
    ("DEFAULT", "Default (PyPI)",
     "PyPI's build: CUDA on Linux, CPU on Windows, Apple MPS on macOS"),
)  # fmt: skip
DEFAULT_MODEL = "object-small"
SCENE_MODEL = "scene-small"
"""The model Reconstruct Scene loads (engine/models/gd_scene.py)."""

MISSING_TORCH = (
    "PyTorch is not installed in Blender's Python. Open Edit > Preferences > Add-ons > "
    "Generative Densification Splats and press Install (CPU or CUDA build)"
)


class GD_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = dependencies.PACKAGE

    device: EnumProperty(  # type: ignore[valid-type]
        name="Device", description="Where the engine runs", items=DEVICES, default="AUTO"
    )
    model: StringProperty(  # type: ignore[valid-type]
        name="Model",
        description="Engine model name (engine.load_model); object-small ships with the add-on",
        default=DEFAULT_MODEL,
    )
    weights_path: StringProperty(  # type: ignore[valid-type]
        name="Weights File",
        description="A .safetensors weights file to use instead of the shipped or downloaded "
        "one (leave empty for the default)",
        subtype="FILE_PATH", default="",
    )  # fmt: skip
    scene_weights_path: StringProperty(  # type: ignore[valid-type]
        name="Scene Weights File",
        description=f"Reconstruct Scene: a .safetensors weights file of the scene model "
        f"({SCENE_MODEL}) to use instead of the shipped or downloaded one",
        subtype="FILE_PATH", default="",
    )  # fmt: skip
    weights_url: StringProperty(  # type: ignore[valid-type]
        name="Weights URL", description="Where Download Weights fetches the model's weights from",
        default="",
    )  # fmt: skip
    weights_sha256: StringProperty(  # type: ignore[valid-type]
        name="SHA-256",
        description="Expected SHA-256 of the weights file; downloads that differ are discarded",
        default="",
    )
    weights_config_sha256: StringProperty(  # type: ignore[valid-type]
        name="Config SHA-256",
        description="Expected SHA-256 of the weights' JSON config (the URL with .json for its "
        "suffix); downloads that differ are discarded",
        default="",
    )  # fmt: skip
    torch_build: EnumProperty(  # type: ignore[valid-type]
        name="PyTorch Build", description="Which PyTorch to install", items=TORCH_BUILDS,
        default="CPU",
    )  # fmt: skip

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        box = layout.box()
        box.label(text="PyTorch", icon="SCRIPTPLUGINS")
        missing = dependencies.missing_modules(required_only=False)
        if not dependencies.torch_available():
            optional = {pip for _, pip, req in dependencies.MODULES if not req}
            required = [m for m in missing if m not in optional] or ["torch"]
            col = box.column(align=True)
            col.label(text=f"Missing in Blender's Python: {', '.join(required)}", icon="ERROR")
            col.label(text="The engine needs PyTorch. Install it into this add-on's own folder:")
            col.label(text="  CPU: works everywhere, ~200 MB.  CUDA: NVIDIA GPUs, ~2.5 GB.")
            col.label(text="  macOS (Apple Silicon): choose Default for GPU (MPS) support.")
            box.prop(self, "torch_build", expand=True)
            box.label(text=dependencies.install_summary(self.torch_build))
            row = box.row()
            row.enabled = bpy.app.online_access
            row.operator("gd.install_dependencies", icon="IMPORT").build = self.torch_build
            if not bpy.app.online_access:
                box.label(
                    text="Online access is off (Preferences > System > Network); or run:",
                    icon="INFO",
                )
            else:
                box.label(text="Or run these commands yourself:", icon="INFO")
            for line in dependencies.install_command_text(self.torch_build).splitlines():
                box.label(text=line)
        else:
            box.label(text=dependencies.torch_summary(), icon="CHECKMARK")
            if "numba" in missing:
                box.label(text="numba missing: CPU rendering uses the slower PyTorch fallback")
            if "zstandard" in missing:
                box.label(text="zstandard missing: .spz reads and writes version 3 only")
        box.label(text=f"Install folder: {dependencies.site_packages_dir(create=False)}")

        box = layout.box()
        box.label(text="Model", icon="MOD_PARTICLES")
        box.prop(self, "device")
        box.prop(self, "model")
        box.prop(self, "weights_path")
        path = downloaded_weights_path(self.model)
        box.label(text=f"Downloaded weights: {path if path.is_file() else 'none'}")
        box.prop(self, "scene_weights_path")
        col = box.column()
        col.prop(self, "weights_url")
        col.prop(self, "weights_sha256")
        col.prop(self, "weights_config_sha256")
        row = box.row()
        row.enabled = bpy.app.online_access and bool(
            self.weights_url and self.weights_sha256 and self.weights_config_sha256
        )
        row.operator("gd.download_weights", icon="IMPORT")
        if not bpy.app.online_access:
            box.label(text="Downloads need Online Access (Preferences > System > Network)")


def downloaded_weights_path(model: str) -> Path:
    """Where Download Weights saves `model`'s weights (the user directory survives updates)."""
    return dependencies.user_dir("weights", create=False) / f"{model}.safetensors"


def get_prefs(context: bpy.types.Context | None = None) -> Any:
    """The add-on's preferences, or their defaults when it is registered without being
    enabled as an add-on (scripts, tests calling register() directly)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(dependencies.PACKAGE)
    if addon is not None and addon.preferences is not None:
        return addon.preferences
    return types.SimpleNamespace(
        device="AUTO",
        model=DEFAULT_MODEL,
        weights_path="",
        scene_weights_path="",
        weights_url="",
        weights_sha256="",
        weights_config_sha256="",
        torch_build="CPU",
    )


def weights_for(prefs: Any) -> str | None:
    """The weights file to load: the user's file, else a downloaded one, else None (the
    engine's shipped default)."""
    if prefs.weights_path:
        return bpy.path.abspath(prefs.weights_path)
    downloaded = downloaded_weights_path(prefs.model)
    return str(downloaded) if downloaded.is_file() else None


def scene_weights_for(prefs: Any) -> str | None:
    """The scene model's weights file: the user's Scene Weights File, else a downloaded
    one, else None (the engine's shipped default)."""
    if prefs.scene_weights_path:
        return bpy.path.abspath(prefs.scene_weights_path)
    downloaded = downloaded_weights_path(SCENE_MODEL)
    return str(downloaded) if downloaded.is_file() else None


classes = (GD_AddonPreferences,)
register, unregister = bpy.utils.register_classes_factory(classes)
