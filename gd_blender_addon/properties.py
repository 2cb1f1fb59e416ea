"""Scene settings (the sidebar panel's values) and the data kept on a splat object.

A reconstructed object remembers the views it was made from, so Densify can reuse them
later (also after saving and reopening the .blend): `Object.gd_splat.views` holds, per view,
a pointer to an image datablock and the camera as JSON (the keyword arguments of
`engine.camera_formats.from_blender`, in the object's local frame, for that image's size).
Rendered views are PNGs packed into the .blend with a fake user; photo views point at the
photo's image datablock. Pointers rather than names survive renaming.
"""

from __future__ import annotations

import bpy
from bpy.props import (
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)


class GD_View(bpy.types.PropertyGroup):
    """One input view stored on a splat object."""

    image: PointerProperty(type=bpy.types.Image, name="Image")  # type: ignore[valid-type]
    camera: StringProperty(  # type: ignore[valid-type]
        name="Camera", description="from_blender() settings as JSON, object-local frame"
    )


class GD_ObjectData(bpy.types.PropertyGroup):
    """What the add-on keeps on a splat object."""

    views: CollectionProperty(type=GD_View)  # type: ignore[valid-type]
    source: StringProperty(name="Source", description="How the views were made")  # type: ignore[valid-type]


def _not_camera(_self: GD_SceneSettings, obj: bpy.types.Object) -> bool:
    return obj.type in {"EMPTY", "MESH"}


# (identifier, label, tooltip) rows of the enum settings.
SOURCES = (
    ("CAMERAS", "Cameras", "Render each selected camera with the scene's render engine"),
    ("PHOTOS", "Photos", "Use the background image (photo) of each selected camera"),
)
PHOTO_MASKS = (
    ("AUTO", "Auto", "The photos' alpha if they have it, else mask files, else estimated from "
     "the photos (where the cameras look, cut out by colour and checked across views)"),
    ("ALPHA", "Alpha", "The photos' own alpha channel"),
    ("FILES", "Mask Files", "A mask per photo: mask_path in transforms.json, or a masks/ "
     "folder beside the photos with files of the photos' names"),
    ("NONE", "None", "Use the photos as they are (only for photos on white)"),
)  # fmt: skip
DENSIFY_VIEWS = (
    ("AUTO", "Auto", "The views stored on the object, else the selected cameras"),
    ("STORED", "Stored", "The views the object was reconstructed from"),
    ("CAMERAS", "Selected Cameras", "Render (or use the photos of) the selected cameras"),
)


class GD_SceneSettings(bpy.types.PropertyGroup):
    """The values the sidebar panel edits."""

    source: EnumProperty(  # type: ignore[valid-type]
        name="Source", description="Where the input views come from", items=SOURCES,
        default="CAMERAS",
    )  # fmt: skip
    photo_masks: EnumProperty(  # type: ignore[valid-type]
        name="Masks", description="Which pixels of each photo are the prop (the rest becomes "
        "white)", items=PHOTO_MASKS, default="AUTO",
    )  # fmt: skip
    resolution: IntProperty(  # type: ignore[valid-type]
        name="Resolution",
        description="Side of the square views rendered for the engine, in pixels; 0 uses the "
        "size the model reads in full (larger views are resized down to it anyway)",
        default=0, min=0, soft_max=1024, max=4096, subtype="PIXEL",
    )  # fmt: skip
    budget: IntProperty(  # type: ignore[valid-type]
        name="Detail Budget", description="Most Gaussians Densify may add to the selected region",
        default=20000, min=1, soft_max=200000, max=10_000_000,
    )  # fmt: skip
    scene_candidates: IntProperty(  # type: ignore[valid-type]
        name="Scene Candidates",
        description="Reconstruct Scene: Gaussians per view the scene model densifies (each "
        "becomes about 4.6 finer ones); 0 uses the model's own number",
        default=0, min=0, soft_max=20000, max=1_000_000,
    )  # fmt: skip
    rig_views: IntProperty(  # type: ignore[valid-type]
        name="Rig Views",
        description="Reconstruct Object: how many cameras the temporary rig renders the "
        "selected meshes from (the model reads a spread subset, refinement uses all)",
        default=16, min=4, max=64,
    )  # fmt: skip
    refine_seconds: FloatProperty(  # type: ignore[valid-type]
        name="Refine Seconds",
        description="Reconstruct, Reconstruct Object and Refine: seconds of refinement against "
        "all views after the model (0: none for Reconstruct; Refine needs more than 0)",
        default=30.0, min=0.0, soft_max=300.0, max=3600.0, step=100, precision=0,
    )  # fmt: skip
    densify_views: EnumProperty(  # type: ignore[valid-type]
        name="Views", description="Which views Densify compares the splats against",
        items=DENSIFY_VIEWS, default="AUTO",
    )  # fmt: skip
    region: PointerProperty(  # type: ignore[valid-type]
        type=bpy.types.Object,
        name="Region",
        description=(
            "Densify the Gaussians inside this box or empty; leave empty to use the points "
            "selected in Edit Mode"
        ),
        poll=_not_camera,
    )


classes = (GD_View, GD_ObjectData, GD_SceneSettings)
_register, _unregister = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register()
    bpy.types.Scene.gd_splat = PointerProperty(type=GD_SceneSettings)
    bpy.types.Object.gd_splat = PointerProperty(type=GD_ObjectData)


def unregister() -> None:
    del bpy.types.Object.gd_splat
    del bpy.types.Scene.gd_splat
    _unregister()
