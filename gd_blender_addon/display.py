"""The splat look of a Gaussian point-cloud object: a Geometry Nodes modifier + materials.

Everything is built by code (no .blend asset), idempotently, under fixed names:

    node group  "GD Splat Display"    inputs: Geometry, Ellipsoids (bool), Sigma Extent,
                                      Subdivisions
    materials   "GD Splat Ellipsoid"  (instances) and "GD Splat Point" (raw points)
    modifier    "GD Splat Display"    on the object

ELLIPSOIDS: every point gets an ico-sphere instance of radius `Sigma Extent` (3 σ by
default), rotated by the `rotation` quaternion (normalised in the tree: the stored
quaternions may have any norm) and scaled per axis by exp(`scale`) = σ. The instance's
object space is therefore the Gaussian's own frame measured in σ, and the material
computes the 3DGS footprint per ray: with p the shading point in that space and d the
(normalised) view ray there, the ray's closest approach to the centre is
r² = |p|² − (p·d)², i.e. exactly the Mahalanobis distance the splat rasteriser uses
(under an orthographic view; a close approximation in perspective). Its alpha is
min(0.99, sigmoid(opacity) · exp(−r²/2)) on front faces and 0 on back faces, mixed
between Transparent and Emission(colour), colour = max(C0 · f_dc + 0.5, 0): the DC
colour the renderer shows from every side (higher SH bands are not shaded). Because r
depends only on the ray, the coarse ico-sphere facets do not show; they only cut the
Gaussian at their in-radius (0.79 · 3 σ for subdivision 1: under 6 % of the peak alpha).

Both branches take a POINTCLOUD or a vertex-only MESH (the Blender 4.2-4.4 fallback of
`pointcloud.py`): Instance on Points uses mesh vertices as points, and the point branch
turns the mesh part of its input into points (Mesh to Points) and joins the point cloud
part back. Every node and the `tree.interface` API used here exist in
Blender 4.2 (checked on bpy 4.2.23).

POINTS: the point cloud itself (Cycles renders points natively as spheres) with radius
`Sigma Extent` · exp(mean log-scale), and the same per-ray falloff with an isotropic σ
(the geometric mean). Used by AUTO above `POINTS_THRESHOLD` points, where a million
instanced meshes are too heavy for the viewport.

Cycles blends the transparent layers front to back like the splat rasteriser, but
stops after `scene.cycles.transparent_max_bounces` layers (8 by default): dense splats
need far more. This module never touches scene settings; `render_setup.py` raises them
(visibly) whenever the add-on makes a splat object. EEVEE is not verified here (no GPU
context on the test machines); the materials use only nodes EEVEE has, with dithered
transparency.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import bpy

from . import pointcloud

__all__ = [
    "ELLIPSOID_MATERIAL",
    "MODES",
    "MODIFIER_NAME",
    "NODE_GROUP_NAME",
    "POINTS_THRESHOLD",
    "POINT_MATERIAL",
    "display_mode",
    "ensure_display",
    "ensure_materials",
    "ensure_node_group",
    "modifier_input",
    "set_modifier_input",
]

NODE_GROUP_NAME = "GD Splat Display"
MODIFIER_NAME = "GD Splat Display"
ELLIPSOID_MATERIAL = "GD Splat Ellipsoid"
POINT_MATERIAL = "GD Splat Point"
MODES = ("AUTO", "ELLIPSOIDS", "POINTS")
POINTS_THRESHOLD = 500_000
ICO_SUBDIVISIONS = 1
# Bumped whenever the generated trees change, so older files get rebuilt in place.
# 2: Mesh to Points before the point branch (vertex-only mesh splats on Blender 4.2-4.4).
VERSION = 3  # 3: Vector Transform linked by socket name (Blender 5.3)
_VERSION_KEY = "gd_display_version"
_SH_C0 = 0.28209479177387814


# ============================================================================ node helpers


class _Builder:
    """Adds nodes and links to a node tree with short calls."""

    def __init__(self, tree: Any) -> None:
        self.tree = tree
        self.x = 0

    def node(self, kind: str, inputs: dict | None = None, **props: Any) -> Any:
        n = self.tree.nodes.new(kind)
        self.x += 180
        n.location = (self.x, 0)
        for key, value in props.items():
            setattr(n, key, value)
        for key, value in (inputs or {}).items():
            self.set(n.inputs[key], value)
        return n

    def set(self, socket: Any, value: Any) -> None:
        if isinstance(value, bpy.types.NodeSocket):
            self.tree.links.new(value, socket)
        else:
            socket.default_value = value

    def math(self, op: str, a: Any, b: Any = 0.0) -> Any:
        n = self.node("ShaderNodeMath", operation=op)
        self.set(n.inputs[0], a)
        self.set(n.inputs[1], b)
        return n.outputs[0]

    def vmath(self, op: str, a: Any, b: Any = (0.0, 0.0, 0.0), c: Any = None) -> Any:
        if op not in _enum_items(bpy.types.ShaderNodeVectorMath, "operation"):
            return self._per_component(op, a, b, c)
        n = self.node("ShaderNodeVectorMath", operation=op)
        self.set(n.inputs[0], a)
        self.set(n.inputs[1], b)
        if c is not None:
            self.set(n.inputs[2], c)
        out = "Value" if op in ("DOT_PRODUCT", "LENGTH", "DISTANCE") else "Vector"
        return n.outputs[out]

    def _per_component(self, op: str, *args: Any) -> Any:
        """A component-wise vector op as Separate XYZ -> 3 Math nodes -> Combine XYZ.

        Vector Math gained POWER and SIGN only in Blender 4.5 (4.2.23 and 4.4.0 lack them);
        Math has both with the same definition, so older Blenders get the same values from
        a few more nodes, and 4.5+ keeps the single node."""
        parts = []
        for value in args:
            if value is None:
                continue
            if isinstance(value, bpy.types.NodeSocket):
                sep = self.node("ShaderNodeSeparateXYZ")
                self.set(sep.inputs[0], value)
                parts.append(list(sep.outputs))
            else:
                parts.append(list(value))
        combine = self.node("ShaderNodeCombineXYZ")
        for i in range(3):
            n = self.node("ShaderNodeMath", operation=op)
            for j, part in enumerate(parts):
                self.set(n.inputs[j], part[i])
            self.set(combine.inputs[i], n.outputs[0])
        return combine.outputs[0]


def _enum_items(node_type: Any, prop: str) -> set[str]:
    """Identifiers of an enum property of a node type (what this Blender offers)."""
    return {item.identifier for item in node_type.bl_rna.properties[prop].enum_items}


def _stale(block: Any) -> bool:
    return block.get(_VERSION_KEY) != VERSION


# ============================================================================ materials


def _srgb_to_linear(b: _Builder, c: Any) -> Any:
    """Exact sRGB decoding per channel: splat colours are display (sRGB) values, Blender
    shades in linear light and the Standard view transform encodes back to sRGB."""
    low = b.vmath("DIVIDE", c, (12.92,) * 3)
    high = b.vmath(
        "POWER", b.vmath("DIVIDE", b.vmath("ADD", c, (0.055,) * 3), (1.055,) * 3), (2.4,) * 3
    )
    # step(c - 0.04045) per channel: (sign + 1) / 2
    step = b.vmath(
        "MULTIPLY_ADD",
        b.vmath("SIGN", b.vmath("SUBTRACT", c, (0.04045,) * 3)),
        (0.5,) * 3,
        (0.5,) * 3,
    )
    mix = b.node("ShaderNodeMix", data_type="VECTOR", factor_mode="NON_UNIFORM")
    b.set(mix.inputs[1], step)  # indices: the vector-typed Factor/A/B sockets
    b.set(mix.inputs[4], low)
    b.set(mix.inputs[5], high)
    return mix.outputs[1]


def _falloff_shader(b: _Builder, dc: Any, opacity: Any, r2: Any, backfacing: Any) -> Any:
    """Mix(Transparent, Emission(colour)) with the 3DGS alpha; returns the shader socket."""
    color = b.vmath("MAXIMUM", b.vmath("MULTIPLY_ADD", dc, (_SH_C0,) * 3, (0.5,) * 3))
    # sigmoid(x) = 1 / (1 + exp(-x))
    neg_exp = b.math("EXPONENT", b.math("MULTIPLY", opacity, -1.0))
    sig = b.math("DIVIDE", 1.0, b.math("ADD", 1.0, neg_exp))
    alpha = b.math("MULTIPLY", sig, b.math("EXPONENT", b.math("MULTIPLY", r2, -0.5)))
    alpha = b.math("MINIMUM", alpha, 0.99)
    alpha = b.math("MULTIPLY", alpha, b.math("SUBTRACT", 1.0, backfacing))
    emission = b.node("ShaderNodeEmission", {"Color": _srgb_to_linear(b, color), "Strength": 1.0})
    transparent = b.node("ShaderNodeBsdfTransparent", {"Color": (1.0, 1.0, 1.0, 1.0)})
    mix = b.node("ShaderNodeMixShader")
    b.set(mix.inputs[0], alpha)
    b.set(mix.inputs[1], transparent.outputs[0])
    b.set(mix.inputs[2], emission.outputs[0])
    return mix.outputs[0]


def _reset_material(name: str) -> tuple[bpy.types.Material, _Builder]:
    mat = bpy.data.materials.get(name) or bpy.data.materials.new(name)
    if mat.node_tree is None:
        with warnings.catch_warnings():  # deprecated for 6.0; 5.0 still needs it for a tree
            warnings.simplefilter("ignore", DeprecationWarning)
            mat.use_nodes = True
    mat.node_tree.nodes.clear()
    # Dithered transparency is order independent in EEVEE (thousands of overlapping
    # instances); Cycles ignores the setting.
    mat.surface_render_method = "DITHERED"
    mat.diffuse_color = (0.8, 0.8, 0.8, 1.0)
    mat[_VERSION_KEY] = VERSION
    return mat, _Builder(mat.node_tree)


def _build_ellipsoid_material() -> bpy.types.Material:
    mat, b = _reset_material(ELLIPSOID_MATERIAL)
    # Attributes of the instancing point, propagated to the instance by Instance on Points.
    dc = b.node("ShaderNodeAttribute", attribute_type="INSTANCER", attribute_name="f_dc")
    op = b.node("ShaderNodeAttribute", attribute_type="INSTANCER", attribute_name="opacity")
    coords = b.node("ShaderNodeTexCoord")
    geometry = b.node("ShaderNodeNewGeometry")
    to_local = b.node(
        "ShaderNodeVectorTransform", vector_type="VECTOR", convert_from="WORLD", convert_to="OBJECT"
    )
    # By name: Blender 5.3 put a "LightIndex" input before "Vector".
    b.set(to_local.inputs["Vector"], geometry.outputs["Incoming"])
    p = coords.outputs["Object"]  # the instance's frame, in units of sigma
    d = b.vmath("NORMALIZE", to_local.outputs[0])
    along = b.vmath("DOT_PRODUCT", p, d)
    r2 = b.math("SUBTRACT", b.vmath("DOT_PRODUCT", p, p), b.math("MULTIPLY", along, along))
    shader = _falloff_shader(
        b, dc.outputs["Vector"], op.outputs["Fac"], r2, geometry.outputs["Backfacing"]
    )
    out = b.node("ShaderNodeOutputMaterial")
    b.set(out.inputs["Surface"], shader)
    return mat


def _build_point_material() -> bpy.types.Material:
    mat, b = _reset_material(POINT_MATERIAL)
    dc = b.node("ShaderNodeAttribute", attribute_type="GEOMETRY", attribute_name="f_dc")
    op = b.node("ShaderNodeAttribute", attribute_type="GEOMETRY", attribute_name="opacity")
    sigma = b.node("ShaderNodeAttribute", attribute_type="GEOMETRY", attribute_name="gd_sigma")
    info = b.node("ShaderNodePointInfo")
    geometry = b.node("ShaderNodeNewGeometry")

    def local(socket: Any, kind: str) -> Any:
        n = b.node(
            "ShaderNodeVectorTransform", vector_type=kind, convert_from="WORLD", convert_to="OBJECT"
        )
        b.set(n.inputs["Vector"], socket)
        return n.outputs["Vector"]

    # Object space: sigma is stored in object units.
    v = b.vmath(
        "SUBTRACT",
        local(geometry.outputs["Position"], "POINT"),
        local(info.outputs["Position"], "POINT"),
    )
    d = b.vmath("NORMALIZE", local(geometry.outputs["Incoming"], "VECTOR"))
    along = b.vmath("DOT_PRODUCT", v, d)
    dist2 = b.math("SUBTRACT", b.vmath("DOT_PRODUCT", v, v), b.math("MULTIPLY", along, along))
    # Without the modifier (no gd_sigma) fall back on the stored radius = SIGMA_EXTENT sigma.
    stored = sigma.outputs["Fac"]
    fallback = b.math("DIVIDE", info.outputs["Radius"], pointcloud.SIGMA_EXTENT)
    s = b.math("ADD", stored, b.math("MULTIPLY", b.math("LESS_THAN", stored, 1e-30), fallback))
    r2 = b.math("DIVIDE", dist2, b.math("MAXIMUM", b.math("MULTIPLY", s, s), 1e-20))
    shader = _falloff_shader(
        b, dc.outputs["Vector"], op.outputs["Fac"], r2, geometry.outputs["Backfacing"]
    )
    out = b.node("ShaderNodeOutputMaterial")
    b.set(out.inputs["Surface"], shader)
    return mat


def ensure_materials() -> tuple[bpy.types.Material, bpy.types.Material]:
    """(ellipsoid material, point material), built or rebuilt when missing or outdated."""
    ell = bpy.data.materials.get(ELLIPSOID_MATERIAL)
    if ell is None or _stale(ell) or ell.node_tree is None:
        ell = _build_ellipsoid_material()
    pts = bpy.data.materials.get(POINT_MATERIAL)
    if pts is None or _stale(pts) or pts.node_tree is None:
        pts = _build_point_material()
    return ell, pts


# ============================================================================ node group


def _socket(ng: Any, name: str, in_out: str, socket_type: str, default: Any = None, **kw: Any):
    item = ng.interface.new_socket(name, in_out=in_out, socket_type=socket_type)
    if default is not None:
        item.default_value = default
    for key, value in kw.items():
        setattr(item, key, value)
    return item


def _build_node_group(ng: Any, ellipsoid: Any, point: Any) -> None:
    ng.nodes.clear()
    ng.interface.clear()
    _socket(ng, "Geometry", "INPUT", "NodeSocketGeometry")
    _socket(
        ng,
        "Ellipsoids",
        "INPUT",
        "NodeSocketBool",
        True,
        description="Ico-sphere per Gaussian; off: the raw points (fast, for big clouds)",
    )
    _socket(
        ng,
        "Sigma Extent",
        "INPUT",
        "NodeSocketFloat",
        pointcloud.SIGMA_EXTENT,
        min_value=0.5,
        max_value=6.0,
        description="Size of each ellipsoid/point in standard deviations",
    )
    _socket(
        ng,
        "Subdivisions",
        "INPUT",
        "NodeSocketInt",
        ICO_SUBDIVISIONS,
        min_value=1,
        max_value=4,
        description="Ico-sphere subdivisions per ellipsoid",
    )
    _socket(ng, "Geometry", "OUTPUT", "NodeSocketGeometry")

    b = _Builder(ng)
    gi = b.node("NodeGroupInput")
    go = b.node("NodeGroupOutput")
    extent = gi.outputs["Sigma Extent"]
    log_scale = b.node(
        "GeometryNodeInputNamedAttribute", {"Name": "scale"}, data_type="FLOAT_VECTOR"
    ).outputs["Attribute"]

    # --- ellipsoids: ico-sphere of radius `extent` scaled by sigma, rotated by the quaternion.
    ico = b.node("GeometryNodeMeshIcoSphere", {"Radius": extent})
    b.set(ico.inputs["Subdivisions"], gi.outputs["Subdivisions"])
    ico_mat = b.node("GeometryNodeSetMaterial", {"Material": ellipsoid})
    b.set(ico_mat.inputs["Geometry"], ico.outputs["Mesh"])
    quat = b.node("GeometryNodeInputNamedAttribute", {"Name": "rotation"}, data_type="QUATERNION")
    # Stored quaternions keep their file norm; normalise before use as a rotation.
    parts = b.node("FunctionNodeRotationToQuaternion")
    b.set(parts.inputs[0], quat.outputs["Attribute"])
    comps = [parts.outputs[k] for k in ("W", "X", "Y", "Z")]
    norm2 = b.math(
        "ADD",
        b.math(
            "ADD", b.math("MULTIPLY", comps[0], comps[0]), b.math("MULTIPLY", comps[1], comps[1])
        ),
        b.math(
            "ADD", b.math("MULTIPLY", comps[2], comps[2]), b.math("MULTIPLY", comps[3], comps[3])
        ),
    )
    inv = b.math("DIVIDE", 1.0, b.math("MAXIMUM", b.math("SQRT", norm2), 1e-20))
    unit = b.node("FunctionNodeQuaternionToRotation")
    for socket, comp in zip(unit.inputs, comps, strict=True):
        b.set(socket, b.math("MULTIPLY", comp, inv))
    sigma3 = b.vmath("POWER", (math.e,) * 3, log_scale)
    inst = b.node("GeometryNodeInstanceOnPoints")
    b.set(inst.inputs["Points"], gi.outputs["Geometry"])
    b.set(inst.inputs["Instance"], ico_mat.outputs["Geometry"])
    b.set(inst.inputs["Rotation"], unit.outputs[0])
    b.set(inst.inputs["Scale"], sigma3)

    # --- points: isotropic sigma = exp(mean log-scale), stored for the point material.
    mean = b.vmath("DOT_PRODUCT", log_scale, (1 / 3,) * 3)
    sigma = b.math("EXPONENT", mean)
    store = b.node("GeometryNodeStoreNamedAttribute", data_type="FLOAT", domain="POINT")
    b.set(store.inputs["Geometry"], gi.outputs["Geometry"])
    b.set(store.inputs["Name"], "gd_sigma")
    b.set(store.inputs["Value"], sigma)
    # Vertex-only meshes (the Blender 4.2-4.4 fallback) become points first: Set Point
    # Radius and Cycles' point primitive only act on point clouds. Mesh to Points drops
    # every other component (a point cloud input comes out empty, checked on 5.0.1), so
    # only the mesh goes through it and the point cloud joins it afterwards.
    parts = b.node("GeometryNodeSeparateComponents")
    b.set(parts.inputs["Geometry"], store.outputs["Geometry"])
    to_points = b.node("GeometryNodeMeshToPoints", mode="VERTICES")
    b.set(to_points.inputs["Mesh"], parts.outputs["Mesh"])
    join = b.node("GeometryNodeJoinGeometry")
    b.set(join.inputs["Geometry"], parts.outputs["Point Cloud"])
    b.set(join.inputs["Geometry"], to_points.outputs["Points"])
    radius = b.node("GeometryNodeSetPointRadius")
    b.set(radius.inputs["Points"], join.outputs["Geometry"])
    b.set(radius.inputs["Radius"], b.math("MULTIPLY", sigma, extent))
    pts_mat = b.node("GeometryNodeSetMaterial", {"Material": point})
    b.set(pts_mat.inputs["Geometry"], radius.outputs["Points"])

    switch = b.node("GeometryNodeSwitch", input_type="GEOMETRY")
    b.set(switch.inputs["Switch"], gi.outputs["Ellipsoids"])
    b.set(switch.inputs["False"], pts_mat.outputs["Geometry"])
    b.set(switch.inputs["True"], inst.outputs["Instances"])
    b.set(go.inputs[0], switch.outputs[0])
    ng[_VERSION_KEY] = VERSION


def ensure_node_group() -> bpy.types.GeometryNodeTree:
    """The display node group (with its materials), built or rebuilt when outdated."""
    ellipsoid, point = ensure_materials()
    ng = bpy.data.node_groups.get(NODE_GROUP_NAME)
    if ng is not None and ng.bl_idname != "GeometryNodeTree":
        ng.name = NODE_GROUP_NAME + " (other)"  # never rebuild someone else's tree
        ng = None
    if ng is None:
        ng = bpy.data.node_groups.new(NODE_GROUP_NAME, "GeometryNodeTree")
    if _stale(ng) or not ng.nodes:
        _build_node_group(ng, ellipsoid, point)
    return ng


# ============================================================================ public API


def display_mode(obj: bpy.types.Object, mode: str = "AUTO") -> str:
    """ "ELLIPSOIDS" or "POINTS": `mode` resolved for `obj` (AUTO: points above the threshold)."""
    mode = str(mode).upper()
    if mode not in MODES:
        raise ValueError(f"display mode must be one of {MODES}, got {mode!r}")
    if mode != "AUTO":
        return mode
    n = len(obj.data.points) if obj.type == "POINTCLOUD" else len(obj.data.vertices)
    return "POINTS" if n > POINTS_THRESHOLD else "ELLIPSOIDS"


def _input_identifier(ng: Any, name: str) -> str:
    for item in ng.interface.items_tree:
        if getattr(item, "in_out", None) == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError(name)


def _modifier_inputs_struct(mod: Any) -> Any | None:
    """The RNA struct holding a Geometry Nodes modifier's input values, where it exists.

    Blender 5.2 moved the inputs from ID properties on the modifier (`mod[identifier]`,
    which now raises "this type doesn't support IDProperties") to RNA structs at
    `mod.properties.inputs.<identifier>.value`. We detect that API rather than compare
    version numbers, like `pointcloud.pointcloud_objects_supported()`.
    """
    props = getattr(mod, "properties", None)
    return getattr(props, "inputs", None) if props is not None else None


def modifier_input(mod: Any, identifier: str) -> Any:
    """The value of the GN modifier input `identifier` (e.g. "Socket_1"), or None if unset."""
    inputs = _modifier_inputs_struct(mod)
    if inputs is not None:
        item = getattr(inputs, identifier, None)
        return None if item is None else item.value
    return mod.get(identifier)


def set_modifier_input(mod: Any, identifier: str, value: Any) -> bool:
    """Set the GN modifier input `identifier` to `value`; True when the value changed."""
    if modifier_input(mod, identifier) == value:
        return False
    inputs = _modifier_inputs_struct(mod)
    if inputs is not None:
        item = getattr(inputs, identifier, None)
        if item is None:
            raise KeyError(f"modifier {mod.name!r} has no input {identifier!r}")
        item.value = value
    else:
        mod[identifier] = value
    return True


def ensure_display(obj: bpy.types.Object, mode: str = "AUTO") -> None:
    """Give `obj` the splat look: one "GD Splat Display" GN modifier in `mode`.

    mode: "ELLIPSOIDS", "POINTS" or "AUTO" (POINTS above POINTS_THRESHOLD points).
    Idempotent: reuses the modifier, node group and materials (rebuilt only when their
    stored version is older), only switching the mode. A new modifier is appended at the
    end of the stack; an existing one stays where the user put it. Also appends the point
    material to the point cloud's material slots (once). Raises ValueError for
    non-Gaussian objects.
    """
    if not pointcloud.is_gaussian_object(obj):
        name = getattr(obj, "name", obj)
        raise ValueError(f"{name!r} is not a Gaussian splat object (see pointcloud.ATTRIBUTES)")
    resolved = display_mode(obj, mode)
    ng = ensure_node_group()
    mods = [m for m in obj.modifiers if m.type == "NODES" and m.node_group == ng]
    mod = mods[0] if mods else obj.modifiers.get(MODIFIER_NAME)
    if mod is not None and mod.type != "NODES":
        mod = None
    for extra in mods[1:]:
        obj.modifiers.remove(extra)
    if mod is None:
        mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    if mod.node_group != ng:
        mod.node_group = ng
    key = _input_identifier(ng, "Ellipsoids")
    want = resolved == "ELLIPSOIDS"
    if set_modifier_input(mod, key, want):
        obj.update_tag()
    # A material slot too, so the viewport/other tools show the point colours without GN
    # (point clouds only: a vertex-only mesh has nothing to shade without the modifier).
    point = bpy.data.materials[POINT_MATERIAL]
    if obj.type == "POINTCLOUD" and point.name not in [m.name for m in obj.data.materials if m]:
        obj.data.materials.append(point)
