"""Principled materials from material specs: procedural textures, photo wraps, printed
label decals, glossy or matte finishes (imports bpy)."""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np

from .textures import draw_label, draw_photo


def _socket(sockets, name: str, kind: str):
    """The socket called `name` of type `kind` (Mix nodes have one per data type)."""
    for socket in sockets:
        if socket.name == name and socket.type == kind:
            return socket
    raise KeyError(f"no {kind} socket {name!r}")


def image_from_array(name: str, rgba: np.ndarray) -> bpy.types.Image:
    """A byte (sRGB) Blender image from an (H, W, 4) uint8 array in top-to-bottom row
    order (Blender's pixel rows run bottom to top, hence the flip)."""
    height, width = rgba.shape[:2]
    image = bpy.data.images.new(name, width, height, alpha=True)
    pixels = np.ascontiguousarray(rgba[::-1], dtype=np.float32).ravel() / 255.0
    image.pixels.foreach_set(pixels)
    image.update()
    return image


def _draw(image_spec: dict[str, Any]) -> np.ndarray:
    if image_spec["kind"] == "label":
        return draw_label(image_spec["label"])
    return draw_photo(image_spec["photo"])


def _procedural(nodes, links, base: dict[str, Any], coords):
    """Colour output socket of a procedural texture in object space."""
    kind = base["kind"]
    c1, c2 = (*base["color1"], 1.0), (*base["color2"], 1.0)
    if kind == "plain":
        rgb = nodes.new("ShaderNodeRGB")
        rgb.outputs[0].default_value = c1
        return rgb.outputs[0]
    mapping = nodes.new("ShaderNodeMapping")
    mapping.inputs["Scale"].default_value = (base["scale"],) * 3
    links.new(coords.outputs["Object"], mapping.inputs["Vector"])
    if kind == "checker":
        tex = nodes.new("ShaderNodeTexChecker")
        tex.inputs["Color1"].default_value, tex.inputs["Color2"].default_value = c1, c2
        tex.inputs["Scale"].default_value = 1.0
        links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
        return tex.outputs["Color"]
    if kind == "brick":
        tex = nodes.new("ShaderNodeTexBrick")
        tex.inputs["Color1"].default_value, tex.inputs["Color2"].default_value = c1, c2
        tex.inputs["Mortar"].default_value = (0.9, 0.9, 0.88, 1.0)
        tex.inputs["Scale"].default_value = 1.0
        links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
        return tex.outputs["Color"]
    if kind == "noise":
        tex = nodes.new("ShaderNodeTexNoise")
        tex.inputs["Detail"].default_value = base["detail"]
        factor = tex.outputs["Fac"]
    elif kind == "wave":
        tex = nodes.new("ShaderNodeTexWave")
        tex.inputs["Distortion"].default_value = base["detail"]
        factor = tex.outputs["Fac"]
    elif kind == "voronoi":
        tex = nodes.new("ShaderNodeTexVoronoi")
        factor = tex.outputs["Distance"]
    elif kind == "magic":
        tex = nodes.new("ShaderNodeTexMagic")
        tex.inputs["Distortion"].default_value = base["detail"]
        factor = tex.outputs["Fac"]
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    tex.inputs["Scale"].default_value = 1.0
    links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
    ramp = nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].color, ramp.color_ramp.elements[1].color = c1, c2
    links.new(factor, ramp.inputs["Fac"])
    return ramp.outputs["Color"]


def _uv_image(nodes, links, coords, image, scale, offset, extension: str):
    mapping = nodes.new("ShaderNodeMapping")
    mapping.inputs["Scale"].default_value = (*scale, 1.0)
    mapping.inputs["Location"].default_value = (*offset, 0.0)
    links.new(coords.outputs["UV"], mapping.inputs["Vector"])
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.extension = extension
    tex.interpolation = "Cubic"  # keeps small print crisp when magnified
    links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
    return tex


def build_material(spec: dict[str, Any], name: str) -> bpy.types.Material:
    """A material for `spec` (see `spec.sample_material`)."""
    material = bpy.data.materials.new(name)
    tree = material.node_tree
    nodes, links = tree.nodes, tree.links
    bsdf = nodes["Principled BSDF"]
    coords = nodes.new("ShaderNodeTexCoord")
    base = spec["base"]
    if base["kind"] == "photo":
        image = image_from_array(f"{name}_photo", draw_photo(base["photo"]))
        tex = _uv_image(nodes, links, coords, image, base["repeat"], (0.0, 0.0), "REPEAT")
        colour = tex.outputs["Color"]
    else:
        colour = _procedural(nodes, links, base, coords)
    decal = spec.get("decal")
    if decal:
        u0, v0, u1, v1 = decal["rect"]
        w, h = u1 - u0, v1 - v0
        # Mapping (POINT) computes scale * uv + location: send the rect onto [0, 1]^2.
        image = image_from_array(f"{name}_decal", _draw(decal["image"]))
        tex = _uv_image(nodes, links, coords, image, (1 / w, 1 / h), (-u0 / w, -v0 / h), "CLIP")
        mix = nodes.new("ShaderNodeMix")
        mix.data_type = "RGBA"
        links.new(tex.outputs["Alpha"], _socket(mix.inputs, "Factor", "VALUE"))
        links.new(colour, _socket(mix.inputs, "A", "RGBA"))
        links.new(tex.outputs["Color"], _socket(mix.inputs, "B", "RGBA"))
        colour = _socket(mix.outputs, "Result", "RGBA")
    links.new(colour, bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = spec["roughness"]
    bsdf.inputs["Metallic"].default_value = spec["metallic"]
    bsdf.inputs["Coat Weight"].default_value = spec["coat"]
    if spec["bump"] > 0:
        noise = nodes.new("ShaderNodeTexNoise")
        noise.inputs["Scale"].default_value = 40.0
        links.new(coords.outputs["Object"], noise.inputs["Vector"])
        bump = nodes.new("ShaderNodeBump")
        bump.inputs["Strength"].default_value = spec["bump"]
        bump.inputs["Distance"].default_value = 0.01
        links.new(noise.outputs["Fac"], bump.inputs["Height"])
        links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    return material
