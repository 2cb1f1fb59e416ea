"""Gaussians <-> Blender POINTCLOUD objects (vertex-only MESH objects on Blender 4.2-4.4).

Attribute layout (all on the POINT domain; raw `Gaussians` parameters, i.e. the values an
INRIA 3DGS PLY stores, so a PLY round trip is bit-exact and tools that read 3DGS
attributes see the numbers they expect):

    position   FLOAT_VECTOR  means (N, 3) (Blender's built-in point position)
    opacity    FLOAT         opacity logits (N,)            — sigmoid gives the opacity
    scale      FLOAT_VECTOR  log standard deviations (N, 3) — exp gives sigma per local axis
    rotation   QUATERNION    quaternions w, x, y, z (N, 4), stored as given (not normalised)
    f_dc       FLOAT_VECTOR  SH coefficient 0, RGB (N, 3)
    f_rest_i   FLOAT_VECTOR  SH coefficient i + 1, RGB (N, 3), i = 0 .. (d+1)² - 2
    gd_level   INT           0 = coarse input, 1..L = densification level
    gd_parent  INT           index of the coarse Gaussian each one came from (itself if coarse)
    radius     FLOAT         point preview radius: SIGMA_EXTENT · exp(mean log-scale)

`f_rest_i` is one RGB vector per SH coefficient (15 attributes at degree 3), not PLY's
45 channel-major scalars: one Attribute node per coefficient in a shader, and the same
encoding as `f_dc`. NOTE the index: PLY's scalar `f_rest_0` is coefficient 1 *red*; here
`f_rest_0` is coefficient 1 RGB. `object_to_gaussians` also reads the PLY scalar layout
(FLOAT attributes `f_rest_0 .. f_rest_{3(K-1)-1}`), and MESH objects carrying these
attributes (as other 3DGS add-ons import PLYs), so such objects can be exported.

Creation path: Blender 5.0.1's `bpy.data.pointclouds.new()` makes an empty point cloud
with no way to add points from Python (no `resize`, `points.add`); so a vertex-only mesh
is filled with `foreach_set` and converted with `bpy.ops.object.convert(target=
'POINTCLOUD')` (keeps every attribute; about 25 ms for 1M points). The operator needs the
object in the view layer, selected and active: that is arranged for the call and the
user's active object, selection and modes are restored (the new object ends up
unselected; callers that want it selected do so themselves). Empty clouds skip the
operator (`pointclouds.new()` is exactly what they need).

Blender 4.2-4.4 fallback: there `object.convert` has no POINTCLOUD target (point cloud
objects are experimental before 4.5), so the splat object stays a vertex-only MESH with
the same attributes on its POINT (vertex) domain; QUATERNION attributes exist on 4.2
meshes too (checked on bpy 4.2.23 and 4.4.0), so the layout above is unchanged. Which
representation a new object gets is decided by capability, not by version number:
`pointcloud_objects_supported()` looks for POINTCLOUD among the enum items of the convert
operator's `target` property (items on 4.2.23: CURVE MESH GPENCIL CURVES; 4.4.0: CURVE
MESH CURVES GREASEPENCIL; 4.5/5.0 add POINTCLOUD). Every reader here takes both object
types, and `replace_gaussians` keeps an object's type. A fresh fallback mesh has no vertex
selected (`vertices.add` selects them; we clear that), which is what Densify reads for a
fresh point cloud too (`has_selected_points`).

Edit-mode selection of point clouds in Blender 5.0 is the BOOLEAN POINT attribute
`.selection` (written by `bpy.ops.pointcloud.select_*`); when it does not exist every
point counts as selected (checked: `pointcloud.delete` then deletes all points). For
meshes it is `.select_vert`, and there absent means *nothing* selected: Edit Mode's
Deselect All removes the attribute (checked on 4.2.23 and 4.4.0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import bpy
import numpy as np

if TYPE_CHECKING:  # torch and engine are imported lazily (the add-on registers without torch)
    from torch import Tensor

    from engine.gaussians import Gaussians

__all__ = [
    "ATTRIBUTES",
    "SIGMA_EXTENT",
    "SELECTION_ATTRIBUTE",
    "gaussians_to_object",
    "has_selected_points",
    "is_gaussian_object",
    "object_to_gaussians",
    "pointcloud_objects_supported",
    "points_in_region",
    "remove_data",
    "replace_gaussians",
    "selected_point_mask",
]

MAX_SH_COEFFS = 16  # (3 + 1)²
REQUIRED_ATTRIBUTES = ("opacity", "scale", "rotation", "f_dc")
ATTRIBUTES: tuple[str, ...] = (
    *REQUIRED_ATTRIBUTES,
    *(f"f_rest_{i}" for i in range(MAX_SH_COEFFS - 1)),
    "gd_level",
    "gd_parent",
)
SELECTION_ATTRIBUTE = ".selection"
# Point radius / ellipsoid extent in standard deviations: exp(-0.5 * 3²) = 1.1 % of the peak
# alpha is left at the edge, so cutting the Gaussian there is invisible.
SIGMA_EXTENT = 3.0

# Blender attribute type -> (foreach property, components per point, numpy dtype)
_LAYOUT = {
    "FLOAT": ("value", 1, np.float32),
    "FLOAT_VECTOR": ("vector", 3, np.float32),
    "QUATERNION": ("value", 4, np.float32),
    "INT": ("value", 1, np.int32),
    "BOOLEAN": ("value", 1, bool),
}
_INT32_MAX = 2**31 - 1


# ============================================================================ helpers


@contextmanager
def _point_data(obj: bpy.types.Object) -> Iterator[tuple[Any, int]]:
    """(attribute collection, point count) of a POINTCLOUD or MESH object, for reading.

    A mesh in Edit Mode keeps its data in a BMesh, and while it does its RNA attributes
    have no data (`len(attr.data) == 0`, checked on 4.2.23 and 5.0.1) and its selection is
    not written back; so the edit data is flushed (`update_from_editmode`) and read from a
    temporary copy of the mesh, removed afterwards. Point clouds in Edit Mode edit their
    data directly (Blender 5.0), so they are read in place.
    """
    if obj is None or obj.type not in ("POINTCLOUD", "MESH"):
        kind = "None" if obj is None else obj.type
        raise ValueError(f"expected a POINTCLOUD (or MESH) object, got {kind}")
    data = obj.data
    if obj.type == "POINTCLOUD":
        yield data.attributes, len(data.points)
        return
    if not data.is_editmode:
        yield data.attributes, len(data.vertices)
        return
    obj.update_from_editmode()
    copy = data.copy()  # a plain Mesh: the copy has no edit data of its own
    try:
        yield copy.attributes, len(copy.vertices)
    finally:
        bpy.data.meshes.remove(copy)


def _get(attributes: Any, name: str, n: int, data_type: str | None = None) -> np.ndarray | None:
    """(N, C) array of a POINT attribute (C = 1 squeezed), or None if absent/wrong type."""
    attr = attributes.get(name)
    if attr is None or attr.domain != "POINT" or attr.data_type not in _LAYOUT:
        return None
    if data_type is not None and attr.data_type != data_type:
        return None
    prop, comps, dtype = _LAYOUT[attr.data_type]
    buf = np.empty(n * comps, dtype=dtype)
    attr.data.foreach_get(prop, buf)
    return buf if comps == 1 else buf.reshape(n, comps)


def _set(attributes: Any, name: str, data_type: str, values: np.ndarray) -> None:
    """Create (or overwrite) a POINT attribute from an (N, C) array."""
    attr = attributes.get(name)
    if attr is not None and (attr.data_type != data_type or attr.domain != "POINT"):
        attributes.remove(attr)
        attr = None
    if attr is None:
        attr = attributes.new(name, data_type, "POINT")
    prop, _, dtype = _LAYOUT[data_type]
    attr.data.foreach_set(prop, np.ascontiguousarray(values, dtype=dtype).reshape(-1))


def _int_column(values: Any, n: int, name: str, default: np.ndarray) -> np.ndarray:
    """(N,) int32 from a tensor/array/None; ValueError on a wrong shape or int32 overflow."""
    if values is None:
        return default
    arr = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(arr.shape)}")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if n and (int(arr.min()) < -(2**31) or int(arr.max()) > _INT32_MAX):
        raise ValueError(f"{name} does not fit in Blender's 32-bit INT attribute")
    return arr.astype(np.int32)


def _columns(gaussians: Gaussians, level: Any, parent: Any) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (Blender type, (N, C) array) for every attribute written (position included)."""
    import torch

    g = gaussians.detach().to("cpu", torch.float32)
    n = len(g)
    # (K, N, 3): one contiguous block per coefficient (a single transposing copy is several
    # times faster than K strided copies at 1M points).
    sh = g.sh.transpose(0, 1).contiguous().numpy()
    log_scales = g.log_scales.numpy()
    cols: dict[str, tuple[str, np.ndarray]] = {
        "position": ("FLOAT_VECTOR", g.means.numpy()),
        "opacity": ("FLOAT", g.opacity_logits.numpy()),
        "scale": ("FLOAT_VECTOR", log_scales),
        "rotation": ("QUATERNION", g.quats.numpy()),
        "f_dc": ("FLOAT_VECTOR", sh[0]),
    }
    for i in range(1, sh.shape[0]):
        cols[f"f_rest_{i - 1}"] = ("FLOAT_VECTOR", sh[i])
    cols["gd_level"] = ("INT", _int_column(level, n, "level", np.zeros(n, np.int32)))
    cols["gd_parent"] = ("INT", _int_column(parent, n, "parent", np.arange(n, dtype=np.int32)))
    # float64 mean then exp: the preview radius only, precision is not critical.
    radius = SIGMA_EXTENT * np.exp(log_scales.astype(np.float64).mean(axis=1))
    cols["radius"] = ("FLOAT", radius.astype(np.float32))
    return cols


def _context_parts(context_or_collection: Any) -> tuple[Any, bpy.types.Collection]:
    """(context, target collection) from a Context or a Collection."""
    if isinstance(context_or_collection, bpy.types.Collection):
        return bpy.context, context_or_collection
    context = context_or_collection if context_or_collection is not None else bpy.context
    collection = getattr(context, "collection", None) or context.scene.collection
    return context, collection


@contextmanager
def _as_only_selected_active(context: Any, obj: bpy.types.Object) -> Iterator[None]:
    """Make `obj` (temporarily linked to the scene) the selected active object; undo after.

    `object.convert`'s poll reads the view layer's active base (overriding `active_object`
    alone is not enough, and fails when another object is in edit mode), so the view
    layer's active object is switched for the call and restored, with every selection flag.
    """
    scene = context.scene
    view_layer = context.view_layer
    scene.collection.objects.link(obj)
    prev_active = view_layer.objects.active
    prev_selected = {o.name for o in view_layer.objects if o.select_get()}
    try:
        view_layer.objects.active = obj
        obj.select_set(True)
        with context.temp_override(
            scene=scene,
            view_layer=view_layer,
            active_object=obj,
            object=obj,
            selected_objects=[obj],
            selected_editable_objects=[obj],
        ):
            yield
    finally:
        if obj.name in scene.collection.objects:
            obj.select_set(False)
        view_layer.objects.active = prev_active
        for o in view_layer.objects:
            want = o.name in prev_selected
            if o.select_get() != want:
                o.select_set(want)
        if obj.name in scene.collection.objects:
            scene.collection.objects.unlink(obj)


def pointcloud_objects_supported() -> bool:
    """True when `object.convert` can make POINTCLOUD objects (Blender 4.5+).

    Capability, not version: the convert operator's `target` enum is read from its RNA
    (cheap, no operator call), so a build that has the target works whatever its number.
    """
    target = bpy.ops.object.convert.get_rna_type().properties["target"]
    return any(item.identifier == "POINTCLOUD" for item in target.enum_items)


def remove_data(data: Any) -> None:
    """Remove a splat datablock (PointCloud or the 4.2-4.4 fallback Mesh) from bpy.data."""
    if isinstance(data, bpy.types.Mesh):
        bpy.data.meshes.remove(data)
    else:
        bpy.data.pointclouds.remove(data)


def _new_mesh_data(name: str, cols: dict[str, tuple[str, np.ndarray]]) -> bpy.types.Mesh:
    """A new vertex-only Mesh holding `cols`: the splat datablock where POINTCLOUD objects
    cannot be made (Blender 4.2-4.4), and for MESH objects that get new points."""
    n = len(cols["position"][1])
    mesh = bpy.data.meshes.new(name)
    try:
        if n:
            mesh.vertices.add(n)
            # `vertices.add` also selects the new vertices (`.select_vert` all True). New
            # points start unselected instead, as Densify reads them (`has_selected_points`):
            # a fresh or just densified cloud is no selection, so a second Densify in a row
            # cannot quietly take the whole object (Blender 4.2-4.4, where splats are meshes).
            mesh.vertices.foreach_set("select", np.zeros(n, dtype=bool))
        for key, (data_type, values) in cols.items():
            if key != "position" or n:  # an empty mesh has no position layer to fill
                _set(mesh.attributes, key, data_type, values)
        mesh.update()  # bounds (bound_box, framing) follow the new positions
    except BaseException:
        bpy.data.meshes.remove(mesh)
        raise
    return mesh


def _new_data(
    context: Any, name: str, cols: dict[str, tuple[str, np.ndarray]], kind: str | None = None
) -> Any:
    """A new datablock holding `cols`: PointCloud when `kind` is "POINTCLOUD" (default:
    when this Blender supports it), else the fallback vertex-only Mesh."""
    if kind is None:
        kind = "POINTCLOUD" if pointcloud_objects_supported() else "MESH"
    if kind == "MESH":
        return _new_mesh_data(name, cols)
    return _new_pointcloud_data(context, name, cols)


def _new_pointcloud_data(
    context: Any, name: str, cols: dict[str, tuple[str, np.ndarray]]
) -> bpy.types.PointCloud:
    """A new PointCloud datablock holding `cols` (see `_columns`)."""
    n = len(cols["position"][1])
    if n == 0:
        data = bpy.data.pointclouds.new(name)
        for key, (data_type, values) in cols.items():
            if key != "position":
                _set(data.attributes, key, data_type, values)
        return data
    mesh = bpy.data.meshes.new(name)
    carrier = None
    try:
        mesh.vertices.add(n)
        for key, (data_type, values) in cols.items():
            _set(mesh.attributes, key, data_type, values)
        carrier = bpy.data.objects.new(name, mesh)
        with _as_only_selected_active(context, carrier):
            result = bpy.ops.object.convert(target="POINTCLOUD")
        if "FINISHED" not in result or carrier.type != "POINTCLOUD":
            raise RuntimeError(f"Blender could not convert the points to a point cloud: {result}")
        data = carrier.data
        try:
            # The mesh's vertex selection is carried over, under its mesh name (5.0) or as
            # `.selection` (5.3, all True). A new cloud starts with nothing selected, and
            # says so explicitly: an absent `.selection` means *all* selected to Blender
            # (drawn and acted on so), which is what Select All leaves behind.
            for junk in (
                ".select_vert",
                ".select_edge",
                ".select_poly",
                ".hide_vert",
                SELECTION_ATTRIBUTE,
            ):
                attr = data.attributes.get(junk)
                if attr is not None:
                    data.attributes.remove(attr)
            _set(data.attributes, SELECTION_ATTRIBUTE, "BOOLEAN", np.zeros(n, dtype=bool))
            data.name = name
        except BaseException:
            bpy.data.objects.remove(carrier)
            carrier = None
            bpy.data.pointclouds.remove(data)
            raise
        return data
    finally:
        if carrier is not None:
            bpy.data.objects.remove(carrier)
        if mesh.name in bpy.data.meshes:
            bpy.data.meshes.remove(mesh)


# ============================================================================ public API


def gaussians_to_object(
    context_or_collection: Any,
    gaussians: Gaussians,
    name: str,
    level: Any = None,
    parent: Any = None,
    matrix_world: Any = None,
) -> bpy.types.Object:
    """One new splat object holding `gaussians`, linked to the given collection.

    POINTCLOUD where `pointcloud_objects_supported()`, else (Blender 4.2-4.4) a vertex-only
    MESH with the same attributes.

    Args:
        context_or_collection: a Collection, or a Context (its `collection`, else the
            scene's master collection).
        gaussians: N Gaussians (any device/dtype; stored as float32).
        name: object (and its data) name; Blender may add a .001 suffix.
        level: (N,) integer densification level, default 0 (coarse).
        parent: (N,) integer parent index, default arange(N) (every Gaussian its own parent).
        matrix_world: optional 4x4 (nested sequences, numpy or mathutils.Matrix).
    Returns:
        The new object; nothing is left behind in bpy.data if this raises.
    """
    context, collection = _context_parts(context_or_collection)
    cols = _columns(gaussians, level, parent)
    data = _new_data(context, name, cols)
    try:
        obj = bpy.data.objects.new(name, data)
    except BaseException:
        remove_data(data)
        raise
    try:
        if matrix_world is not None:
            import mathutils

            obj.matrix_world = mathutils.Matrix(np.asarray(matrix_world, dtype=np.float64).tolist())
        collection.objects.link(obj)
    except BaseException:
        bpy.data.objects.remove(obj)
        remove_data(data)
        raise
    return obj


def is_gaussian_object(obj: Any) -> bool:
    """True for a POINTCLOUD (or MESH) object with the required Gaussian attributes."""
    if not isinstance(obj, bpy.types.Object) or obj.type not in ("POINTCLOUD", "MESH"):
        return False
    attributes = obj.data.attributes
    want = {"opacity": "FLOAT", "scale": "FLOAT_VECTOR", "rotation": "QUATERNION"}
    for key, data_type in want.items():
        attr = attributes.get(key)
        if attr is None or attr.domain != "POINT" or attr.data_type != data_type:
            return False
    dc = attributes.get("f_dc")
    return dc is not None and dc.domain == "POINT" and dc.data_type in ("FLOAT_VECTOR",)


def _vector_sh(attributes: Any, n: int) -> Tensor:
    """(N, K, 3) from `f_dc` and FLOAT_VECTOR `f_rest_*`, read straight into a (K, N, 3)
    buffer and transposed once (stacking K strided arrays is several times slower)."""
    import torch

    names = ["f_dc"]
    for i in range(MAX_SH_COEFFS - 1):
        attr = attributes.get(f"f_rest_{i}")
        if attr is None or attr.domain != "POINT" or attr.data_type != "FLOAT_VECTOR":
            break
        names.append(attr.name)
    k = math.isqrt(len(names)) ** 2  # the largest complete degree present
    buf = np.empty((k, n, 3), dtype=np.float32)
    for i, name in enumerate(names[:k]):
        attributes[name].data.foreach_get("vector", buf[i].reshape(-1))
    return torch.from_numpy(buf).transpose(0, 1).contiguous()


def _sh_from_attributes(attributes: Any, n: int) -> Tensor:
    """(N, K, 3) float32 SH coefficients from `f_dc` and the `f_rest_*` attributes."""
    import torch

    first = attributes.get("f_rest_0")
    if first is None or first.domain != "POINT" or first.data_type == "FLOAT_VECTOR":
        return _vector_sh(attributes, n)  # ours: one RGB vector per coefficient
    if first.data_type != "FLOAT":
        raise ValueError(f"attribute f_rest_0 has unsupported type {first.data_type}")
    # PLY layout (other tools): channel-major scalars f_rest_{c*(K-1) + (k-1)}.
    dc = _get(attributes, "f_dc", n, "FLOAT_VECTOR")
    scalars = []
    while (col := _get(attributes, f"f_rest_{len(scalars)}", n, "FLOAT")) is not None:
        scalars.append(col)
    if len(scalars) not in (9, 24, 45):
        raise ValueError(f"found {len(scalars)} scalar f_rest attributes; expected 9, 24 or 45")
    k = len(scalars) // 3 + 1
    rest = np.stack(scalars, axis=1).reshape(n, 3, k - 1).transpose(0, 2, 1)
    return torch.from_numpy(np.concatenate([dc[:, None, :], rest], axis=1))


def object_to_gaussians(
    obj: bpy.types.Object, apply_transform: bool = False
) -> tuple[Gaussians, Tensor, Tensor]:
    """Read the Gaussians stored on `obj` (object space unless `apply_transform`).

    Returns:
        gaussians: N float32 Gaussians; level: (N,) int64 (0 if absent); parent: (N,)
        int64 (arange(N) if absent).

    apply_transform=True bakes `obj.matrix_world` = [A t; 0 1] in, so the result is in
    world space:
      * means -> A·μ + t (float64 arithmetic, then float32);
      * A = s·R with one uniform scale s > 0 and a proper rotation R (the usual object
        transform): log-scales + log s, quaternions R·q and SH rotated by R with
        `engine.transforms` — exactly what `rotate_gaussians` does;
      * any other invertible A (per-axis scale, shear, mirror): every covariance becomes
        A Σ Aᵀ exactly, via an SVD of A·R_g·diag(σ) giving new axes and sigmas; SH are
        rotated by the rotation part of A's polar decomposition (view-dependent colour
        has no exact image under a non-rigid map; the DC colour is unaffected).
    Raises ValueError for objects without the attributes or with non-finite values.
    """
    import torch

    from engine.gaussians import Gaussians

    with _point_data(obj) as (attributes, n):
        if not is_gaussian_object(obj):
            raise ValueError(
                f"object {obj.name!r} has no Gaussian splat attributes "
                f"(needs {', '.join(REQUIRED_ATTRIBUTES)} on the POINT domain)"
            )
        means = _get(attributes, "position", n, "FLOAT_VECTOR")
        if means is None:  # an empty point cloud (or mesh) has no position layer yet
            means = np.zeros((n, 3), np.float32)
        g = Gaussians(
            means=torch.from_numpy(means),
            log_scales=torch.from_numpy(_get(attributes, "scale", n, "FLOAT_VECTOR")),
            quats=torch.from_numpy(_get(attributes, "rotation", n, "QUATERNION")),
            opacity_logits=torch.from_numpy(_get(attributes, "opacity", n, "FLOAT")),
            sh=_sh_from_attributes(attributes, n),
        )
        level = _get(attributes, "gd_level", n, "INT")
        parent = _get(attributes, "gd_parent", n, "INT")
    level_t = torch.zeros(n, dtype=torch.int64) if level is None else torch.from_numpy(level)
    parent_t = torch.arange(n) if parent is None else torch.from_numpy(parent)
    matrix = np.array(obj.matrix_world, dtype=np.float64)
    if apply_transform and not np.array_equal(matrix, np.eye(4)):  # identity: skip the copies
        g = transform_gaussians(g, matrix)
    return g, level_t.to(torch.int64), parent_t.to(torch.int64)


def transform_gaussians(gaussians: Gaussians, matrix: Any) -> Gaussians:
    """Gaussians mapped by the affine 4x4 `matrix` (see `object_to_gaussians`)."""
    import torch

    from engine.gaussians import Gaussians
    from engine.rotations import matrix_to_quaternion, quaternion_to_matrix
    from engine.transforms import rotate_quaternions, rotate_sh

    m = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
    if m.shape != (4, 4) or not bool(torch.isfinite(m).all()):
        raise ValueError(f"matrix must be a finite 4x4 matrix, got shape {tuple(m.shape)}")
    a, t = m[:3, :3], m[:3, 3]
    det = float(torch.linalg.det(a))
    if abs(det) < 1e-12:
        raise ValueError("the object's transform is degenerate (a zero scale axis)")
    g = gaussians
    dtype = g.dtype
    if bool((a == torch.eye(3, dtype=torch.float64)).all()):
        # Identity or a pure translation: leave everything else bit-exact (quaternions
        # unnormalised), so exporting an untransformed object reproduces its file.
        means = g.means if not bool(t.any()) else (g.means.to(torch.float64) + t).to(dtype)
        # Inputs were validated and a float64 translation of finite float32 stays finite.
        return Gaussians.unchecked(means.clone(), g.log_scales.clone(), g.quats.clone(),
                                   g.opacity_logits.clone(), g.sh.clone())  # fmt: skip
    means = (g.means.to(torch.float64) @ a.T + t).to(dtype)
    u, s, vh = torch.linalg.svd(a)
    polar = u @ vh  # rotation part of A (a reflection too when det < 0)
    uniform = det > 0 and float(s.max() - s.min()) <= 1e-6 * float(s.max())
    if uniform:
        scale = float(s.mean())
        return Gaussians(
            means=means,
            log_scales=(g.log_scales.to(torch.float64) + math.log(scale)).to(dtype),
            quats=rotate_quaternions(g.quats, polar),
            opacity_logits=g.opacity_logits.clone(),
            sh=rotate_sh(g.sh, polar),
        )
    # General linear map: the square root A·R·diag(σ) of the new covariance, then its SVD.
    root = (
        a @ quaternion_to_matrix(g.quats.to(torch.float64)) * g.scales.to(torch.float64)[:, None, :]
    )
    axes, sigmas, _ = torch.linalg.svd(root)
    # Quaternions need det +1; flipping one axis leaves the covariance unchanged.
    flip = torch.linalg.det(axes) < 0
    axes[flip, :, 2] = -axes[flip, :, 2]
    return Gaussians(
        means=means,
        log_scales=torch.log(sigmas.clamp_min(1e-30)).to(dtype),
        quats=matrix_to_quaternion(axes).to(dtype),
        opacity_logits=g.opacity_logits.clone(),
        sh=rotate_sh(g.sh, polar),
    )


def replace_gaussians(obj: bpy.types.Object, gaussians: Gaussians, level: Any, parent: Any) -> None:
    """Replace the points of `obj` in place (same object, name, modifiers, materials).

    A new datablock of the object's own type (PointCloud, or vertex-only Mesh: an object
    cannot change type) is built and swapped in; the old one's name and material slots are
    carried over and it is removed if nothing else uses it. Edit-mode selection is reset
    (a new set of points: none selected on purpose, see `has_selected_points`).
    `level`/`parent`: (N,) integers or None.
    """
    if obj is None or obj.type not in ("POINTCLOUD", "MESH"):
        raise ValueError("replace_gaussians needs a POINTCLOUD (or MESH) object")
    if obj.mode != "OBJECT":
        raise ValueError(f"object {obj.name!r} is in {obj.mode} mode; leave it first")
    if obj.type == "POINTCLOUD" and not pointcloud_objects_supported():
        # A point cloud from a newer Blender: this one cannot fill a new one from Python.
        raise ValueError(
            f"object {obj.name!r} is a point cloud, which this Blender cannot rebuild; "
            "convert it to a mesh (Object > Convert > Mesh) first"
        )
    old = obj.data
    cols = _columns(gaussians, level, parent)
    new = _new_data(bpy.context, old.name + "_new", cols, kind=obj.type)
    for material in old.materials:
        new.materials.append(material)
    obj.data = new
    old_name = old.name
    if old.users == 0:
        remove_data(old)
    new.name = old_name


def selected_point_mask(obj: bpy.types.Object) -> Tensor:
    """(N,) bool: the points selected in edit mode.

    Point clouds: attribute `.selection` (absent = all). Meshes (the 4.2-4.4 fallback, other
    add-ons' imports): `.select_vert` (absent = none, as Blender shows it: Deselect All
    removes the attribute). Works in object mode (reads the stored attribute). In edit mode
    Blender 5.0 point clouds edit the original data directly, so the attribute is current
    there too; a mesh in edit mode keeps its selection in the BMesh, which is written back
    to the mesh first (see `_point_data`).
    """
    import torch

    with _point_data(obj) as (attributes, n):
        if obj.type == "MESH":
            sel = _get(attributes, ".select_vert", n, "BOOLEAN")
            if sel is None:
                return torch.zeros(n, dtype=torch.bool)
        else:
            attr = attributes.get(SELECTION_ATTRIBUTE)
            sel = None
            if attr is not None and attr.domain == "POINT":
                if attr.data_type == "BOOLEAN":
                    sel = _get(attributes, SELECTION_ATTRIBUTE, n, "BOOLEAN")
                elif attr.data_type == "FLOAT":  # soft selection (sculpt-style), > 0 counts
                    sel = _get(attributes, SELECTION_ATTRIBUTE, n, "FLOAT") > 0
    if sel is None:
        return torch.ones(n, dtype=torch.bool)
    return torch.from_numpy(np.ascontiguousarray(sel, dtype=bool))


def has_selected_points(obj: bpy.types.Object | None) -> bool:
    """Whether some points of `obj` are selected, as Blender shows them (cheap: panels call
    this); the same answer as `selected_point_mask(obj).any()`.

    The add-on makes every new cloud with nothing selected (an explicit all-False
    `.selection`, or `.select_vert` on the 4.2-4.4 mesh fallback), so a fresh or just
    densified cloud asks for a selection, while Select All (which removes `.selection`,
    checked on 5.0.1 and 5.3.0; absent means all) counts as everything selected on purpose.
    A mesh in Edit Mode answers from its BMesh count (`total_vert_sel`) without flushing.
    """
    if obj is None or obj.type not in ("POINTCLOUD", "MESH"):
        return False
    data = obj.data
    if obj.type == "MESH":
        if data.is_editmode:
            return data.total_vert_sel > 0
        selection = _get(data.attributes, ".select_vert", len(data.vertices), "BOOLEAN")
        return selection is not None and bool(selection.any())
    n = len(data.points)
    attr = data.attributes.get(SELECTION_ATTRIBUTE)
    if attr is None or attr.domain != "POINT" or attr.data_type not in ("BOOLEAN", "FLOAT"):
        return n > 0  # absent: Blender's "all selected"
    values = _get(data.attributes, SELECTION_ATTRIBUTE, n, attr.data_type)
    return values is not None and bool((values > 0).any())


def _region_local_box(region_obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the region in its own object space."""
    if region_obj.type == "EMPTY":
        # Every empty display type spans ±size along its local axes (a cube for CUBE).
        size = float(region_obj.empty_display_size)
        return np.full(3, -size), np.full(3, size)
    corners = np.array([tuple(c) for c in region_obj.bound_box], dtype=np.float64)
    if corners.size == 0:
        raise ValueError(f"region object {region_obj.name!r} has no bounds")
    return corners.min(axis=0), corners.max(axis=0)


def points_in_region(obj: bpy.types.Object, region_obj: bpy.types.Object) -> Tensor:
    """(N,) bool: points of `obj` inside `region_obj`'s box, in world space.

    The box is the region's local bounds (an empty: ±empty_display_size; a mesh or any
    object with geometry: its local bounding box) under its full `matrix_world`, so a
    rotated or scaled empty/box selects an oriented box. Boundary points count as inside.
    """
    import torch

    if region_obj is None:
        raise ValueError("no region object given")
    with _point_data(obj) as (attributes, n):
        pos = _get(attributes, "position", n, "FLOAT_VECTOR")
    if pos is None:
        return torch.zeros(n, dtype=torch.bool)
    pos = pos.astype(np.float64)
    to_region = np.linalg.inv(np.array(region_obj.matrix_world, dtype=np.float64))
    full = to_region @ np.array(obj.matrix_world, dtype=np.float64)
    local = pos @ full[:3, :3].T + full[:3, 3]
    lo, hi = _region_local_box(region_obj)
    tol = 1e-6 * max(1.0, float(np.abs(np.concatenate([lo, hi])).max()))
    inside = np.all((local >= lo - tol) & (local <= hi + tol), axis=1)
    return torch.from_numpy(inside)
