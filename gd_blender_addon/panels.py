"""The 3D View sidebar panel (N panel, "Splats" tab).

Buttons that cannot run are greyed out, the reason is printed under them, and their tooltip
(the operators' `description`) says the same, so nobody has to guess why.
"""

from __future__ import annotations

import bpy

from . import dependencies, jobs, operators
from .preferences import get_prefs


def _button(layout: bpy.types.UILayout, idname: str, reason: str | None, icon: str) -> None:
    col = layout.column(align=True)
    row = col.row()
    row.scale_y = 1.3
    row.enabled = reason is None
    row.operator(idname, icon=icon)
    if reason:
        for line in _wrap(reason, 42):
            col.label(text=line)


def _settings_column(layout: bpy.types.UILayout) -> bpy.types.UILayout:
    """A column of settings with their labels on the left, without animation dots."""
    col = layout.column()
    col.use_property_split = True
    col.use_property_decorate = False
    return col


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _render_box(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """How to render splats cleanly; a warning and a fix while the scene's Cycles settings
    would render them dark and smeared (render_setup.py)."""
    from .render_setup import CLEAN_RENDER_TIPS, missing_splat_render_settings

    missing = missing_splat_render_settings(context.scene)
    if not missing and not operators.any_splats(context):
        return
    box = layout.box()
    if missing:
        box.label(text="Splats will render dark and smeared:", icon="ERROR")
        for item in missing:
            box.label(text=item)
        box.operator("gd.splat_render_settings", icon="SCENE")
    for line in CLEAN_RENDER_TIPS:
        box.label(text=line)


class VIEW3D_PT_gd_splat(bpy.types.Panel):
    """Reconstruct, densify and export Gaussian splats"""

    bl_label = "Gaussian Splats"
    bl_idname = "VIEW3D_PT_gd_splat"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Splats"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        opts = context.scene.gd_splat
        prefs = get_prefs(context)

        if not dependencies.torch_available():
            box = layout.box()
            box.label(text="PyTorch is not installed", icon="ERROR")
            box.operator("gd.show_preferences", icon="PREFERENCES", text="Install in Preferences")

        job = jobs.active_job()
        if job is not None:
            box = layout.box()
            box.label(text=f"{job.name}: {job.message}", icon="TIME")
            box.label(text=f"{100 * job.fraction:.0f}% (Esc cancels)")
            box.operator("gd.cancel_job", icon="CANCEL")

        col = layout.column()
        col.label(text="Source")
        col.row().prop(opts, "source", expand=True)
        if opts.source == "PHOTOS":
            col.operator("gd.import_photos", icon="IMAGE_BACKGROUND")
            row = col.row(align=True)
            row.prop(opts, "photo_masks", text="Masks")
            row.operator("gd.preview_masks", text="", icon="HIDE_OFF")
        cameras = operators.selected_cameras(context)
        col.label(text=f"{len(cameras)} camera(s) selected", icon="CAMERA_DATA")

        col = _settings_column(layout)
        col.prop(opts, "resolution")
        if isinstance(prefs, bpy.types.AddonPreferences):
            col.prop(prefs, "device")
        col.prop(opts, "budget")
        col.prop(opts, "refine_seconds")

        _button(layout, "gd.reconstruct", operators.reconstruct_blocker(context), "MOD_PARTICLES")

        # Reconstruct Scene and Reconstruct Object: each its own setting above its button.
        for prop, idname, blocker, icon in (
            ("scene_candidates", "gd.reconstruct_scene", operators.reconstruct_scene_blocker,
             "SCENE_DATA"),
            ("rig_views", "gd.reconstruct_object", operators.reconstruct_object_blocker,
             "MESH_MONKEY"),
        ):  # fmt: skip
            layout.separator()
            _settings_column(layout).prop(opts, prop)
            _button(layout, idname, blocker(context), icon)

        layout.separator()
        col = layout.column()
        col.label(text="Densify / Refine")
        col.prop(opts, "region")
        col.prop(opts, "densify_views")
        _button(layout, "gd.densify_selected", operators.densify_blocker(context), "PARTICLES")
        _button(layout, "gd.refine", operators.refine_blocker(context), "SHADERFX")

        _render_box(layout, context)

        layout.separator()
        _button(layout, "gd.export_splats", operators.export_blocker(context), "EXPORT")


classes = (VIEW3D_PT_gd_splat,)
register, unregister = bpy.utils.register_classes_factory(classes)
