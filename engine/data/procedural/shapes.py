"""Blender objects from part specs (imports bpy: load only inside a generator process).

A part's placement matrix is baked into its vertices, so object matrices stay a clean
rotation x scale x translation (Blender cannot store shear in an object matrix, which a
stretched beam under a stretched prop would otherwise need).
"""

from __future__ import annotations

import math
from typing import Any

import bmesh
import bpy
import numpy as np
from mathutils import Matrix

from .geometry import MeshData, part_mesh_data

# Edges sharper than this stay hard under smooth shading (cylinder rims, box edges).
SHARP_ANGLE_DEG = 40.0


def _mesh_from_data(name: str, data: MeshData) -> bpy.types.Mesh:
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(data.verts.tolist(), [], data.faces)
    uv_layer = mesh.uv_layers.new(name="UVMap")
    # from_pydata keeps face and corner order, so loop i is corner i of the flattened list.
    flat = np.asarray([uv for face in data.uvs for uv in face], dtype=np.float32).ravel()
    uv_layer.data.foreach_set("uv", flat)
    mesh.validate()
    return mesh


def _monkey_mesh(name: str, matrix: np.ndarray) -> bpy.types.Mesh:
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_monkey(
        bm, matrix=Matrix(np.asarray(matrix).tolist()) @ Matrix.Scale(0.5, 4), calc_uvs=True
    )
    bm.to_mesh(mesh)
    bm.free()
    return mesh


def build_part(
    part: dict[str, Any], name: str, collection: bpy.types.Collection
) -> bpy.types.Object:
    """A mesh object for `part`, linked into `collection`, with bevel / subdivision
    modifiers and smooth shading as the spec asks. Its matrix_world is left identity."""
    data = part_mesh_data(part)
    mesh = _monkey_mesh(name, part["matrix"]) if data is None else _mesh_from_data(name, data)
    if part.get("smooth", True):
        mesh.shade_smooth()
        mesh.set_sharp_from_angle(angle=math.radians(SHARP_ANGLE_DEG))
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    if part.get("bevel", 0.0) > 0:
        bevel = obj.modifiers.new("bevel", "BEVEL")
        bevel.width = float(part["bevel"])
        bevel.segments = 2
        bevel.limit_method = "ANGLE"
    if part.get("subdiv", 0) > 0:
        sub = obj.modifiers.new("subdiv", "SUBSURF")
        sub.levels = sub.render_levels = int(part["subdiv"])
    return obj


def evaluated_vertices(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> np.ndarray:
    """(N, 3) world positions of the object's vertices after modifiers."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
        mesh.vertices.foreach_get("co", co)
    finally:
        evaluated.to_mesh_clear()
    co = co.reshape(-1, 3)
    world = np.asarray(obj.matrix_world, dtype=np.float64)
    return co @ world[:3, :3].T + world[:3, 3]


def surface_samples(
    objects: list[bpy.types.Object],
    depsgraph: bpy.types.Depsgraph,
    rng: np.random.Generator,
    count: int,
) -> np.ndarray:
    """(count, 3) world points on the evaluated surfaces, area-weighted, kept off the
    triangle edges (barycentrics pulled 20% towards the centroid) so they sit inside the
    silhouette rather than on its outline."""
    triangles = []
    for obj in objects:
        evaluated = obj.evaluated_get(depsgraph)
        mesh = evaluated.to_mesh()
        try:
            mesh.calc_loop_triangles()
            co = np.empty(len(mesh.vertices) * 3)
            mesh.vertices.foreach_get("co", co)
            tri = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
            mesh.loop_triangles.foreach_get("vertices", tri)
        finally:
            evaluated.to_mesh_clear()
        world = np.asarray(obj.matrix_world, dtype=np.float64)
        co = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
        triangles.append(co[tri.reshape(-1, 3)])
    tris = np.concatenate(triangles)  # (F, 3 corners, 3)
    area = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    pick = rng.choice(len(tris), count, p=area / area.sum())
    bary = rng.dirichlet(np.ones(3), count) * 0.8 + 0.2 / 3
    return np.einsum("nk,nkd->nd", bary, tris[pick])
