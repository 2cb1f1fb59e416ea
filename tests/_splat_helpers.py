"""Shared by the add-on tests: the two splat object representations.

Blender 4.5+ makes POINTCLOUD objects; 4.2-4.4 (no POINTCLOUD target for `object.convert`)
get vertex-only MESH objects with the same attributes (`gd_blender_addon.pointcloud`).
These helpers let one test body check either, and `use_representation` forces the mesh
fallback on a Blender that has point clouds, so CI on 5.0 covers both code paths.
bpy is imported lazily: test modules import this before they know whether bpy exists.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

# Parametrize a test with this and call `use_representation(monkeypatch, as_mesh)` first.
REPRESENTATIONS = pytest.mark.parametrize("as_mesh", [False, True], ids=["native", "mesh"])


def use_representation(monkeypatch: Any, as_mesh: bool) -> None:
    """Force the 4.2-4.4 mesh fallback when `as_mesh`; skip that case where it is already
    what this Blender makes (it would run the native case twice)."""
    from gd_blender_addon import pointcloud

    if not as_mesh:
        return
    if not pointcloud.pointcloud_objects_supported():
        pytest.skip("this Blender makes mesh splats natively (the 'native' case covers it)")
    monkeypatch.setattr(pointcloud, "pointcloud_objects_supported", lambda: False)


def splat_type() -> str:
    """The object type new splat objects get now ("POINTCLOUD" or "MESH")."""
    from gd_blender_addon import pointcloud

    return "POINTCLOUD" if pointcloud.pointcloud_objects_supported() else "MESH"


def splat_datablocks() -> Any:
    """The bpy.data collection new splat datablocks go to (pointclouds or meshes)."""
    import bpy

    return bpy.data.pointclouds if splat_type() == "POINTCLOUD" else bpy.data.meshes


def point_count(obj: Any) -> int:
    """Points of a POINTCLOUD object, vertices of a MESH object."""
    return len(obj.data.points) if obj.type == "POINTCLOUD" else len(obj.data.vertices)


def set_selection(obj: Any, mask: np.ndarray) -> None:
    """Select exactly the points in `mask`, as Edit Mode would (either object type, either
    mode: a mesh in Edit Mode keeps its selection in the BMesh)."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    if obj.type == "POINTCLOUD":
        attrs = obj.data.attributes
        selection = attrs.get(".selection") or attrs.new(".selection", "BOOLEAN", "POINT")
        selection.data.foreach_set("value", mask)
    elif obj.mode == "EDIT":
        import bmesh

        bm = bmesh.from_edit_mesh(obj.data)
        bm.verts.ensure_lookup_table()
        for vert, flag in zip(bm.verts, mask.tolist(), strict=True):
            vert.select_set(flag)
        bmesh.update_edit_mesh(obj.data)
    else:
        obj.data.vertices.foreach_set("select", mask)


def edit_select_all(obj: Any, action: str) -> None:
    """Edit Mode select_all (SELECT/DESELECT/...) with the object type's own operator."""
    import bpy

    module = bpy.ops.pointcloud if obj.type == "POINTCLOUD" else bpy.ops.mesh
    assert module.select_all(action=action) == {"FINISHED"}
