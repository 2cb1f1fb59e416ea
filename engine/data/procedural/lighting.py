"""World lighting from the HDRIs bundled in the bpy wheel (imports bpy)."""

from __future__ import annotations

import math
from typing import Any

import bpy

from .assets import hdri_path

# Cycles' importance map for the world is rebuilt on every render unless its resolution
# is fixed (DESIGN §5: ~0.85 s a render otherwise); 256 is plenty for these soft HDRIs.
WORLD_MAP_RESOLUTION = 256


def setup_world(scene: bpy.types.Scene, spec: dict[str, Any]) -> None:
    """Light `scene` with the HDRI named in spec["hdri"], rotated about Z by
    spec["rotation_deg"] and scaled by spec["strength"]. Reuses the world between calls."""
    world = scene.world or bpy.data.worlds.new("gd_world")
    scene.world = world
    world.cycles.sampling_method = "MANUAL"
    world.cycles.sample_map_resolution = WORLD_MAP_RESOLUTION
    nodes, links = world.node_tree.nodes, world.node_tree.links
    env = nodes.get("gd_env")
    if env is None:
        nodes.clear()
        out = nodes.new("ShaderNodeOutputWorld")
        background = nodes.new("ShaderNodeBackground")
        background.name = "gd_background"
        env = nodes.new("ShaderNodeTexEnvironment")
        env.name = "gd_env"
        mapping = nodes.new("ShaderNodeMapping")
        mapping.name = "gd_mapping"
        coords = nodes.new("ShaderNodeTexCoord")
        links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
        links.new(mapping.outputs["Vector"], env.inputs["Vector"])
        links.new(env.outputs["Color"], background.inputs["Color"])
        links.new(background.outputs["Background"], out.inputs["Surface"])
    # check_existing: the eight HDRIs load once per worker process, not once per object.
    env.image = bpy.data.images.load(str(hdri_path(spec["hdri"])), check_existing=True)
    nodes["gd_mapping"].inputs["Rotation"].default_value = (
        0.0,
        0.0,
        math.radians(spec["rotation_deg"]),
    )
    nodes["gd_background"].inputs["Strength"].default_value = float(spec["strength"])
