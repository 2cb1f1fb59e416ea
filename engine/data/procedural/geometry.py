"""Primitive meshes as numpy arrays with per-corner UVs (no bpy).

Shapes are built here rather than with bpy.ops so they are deterministic, fast, and come
with UVs laid out for labels and photo wraps: u runs around surfaces of revolution and
tori, each box face gets the whole [0, 1]^2. Rings share their seam vertex (UVs are per
face corner), so subdivision surfaces do not crack open along the seam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MeshData:
    """A polygon mesh.

    Attributes:
        verts: (N, 3) float positions.
        faces: polygons as vertex-index lists (3 or 4 corners, fans may be triangles).
        uvs: per face, one (u, v) per corner, same order as `faces`.
    """

    verts: np.ndarray
    faces: list[list[int]] = field(default_factory=list)
    uvs: list[list[tuple[float, float]]] = field(default_factory=list)

    def transformed(self, matrix: np.ndarray) -> MeshData:
        """Copy with vertices mapped by a (4, 4) affine matrix."""
        homo = np.c_[self.verts, np.ones(len(self.verts))]
        return MeshData((homo @ np.asarray(matrix).T)[:, :3], self.faces, self.uvs)


def box(size: tuple[float, float, float]) -> MeshData:
    """Axis-aligned box centred at the origin; each face's UVs span [0, 1]^2."""
    sx, sy, sz = (0.5 * s for s in size)
    verts = np.array(
        [[x, y, z] for z in (-sz, sz) for y in (-sy, sy) for x in (-sx, sx)], dtype=np.float64
    )
    # Index = 4*zi + 2*yi + xi; each face listed counter-clockwise seen from outside.
    faces = [[0, 2, 3, 1], [4, 5, 7, 6], [0, 1, 5, 4], [2, 6, 7, 3], [0, 4, 6, 2], [1, 3, 7, 5]]
    square = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    return MeshData(verts, faces, [list(square) for _ in faces])


def revolve(
    profile: list[tuple[float, float]],
    segments: int = 32,
    cap_bottom: bool = True,
    cap_top: bool = True,
) -> MeshData:
    """Surface of revolution about Z of a profile [(radius, z), ...] listed bottom to top.

    A radius of 0 makes a pole (one vertex, triangle fan); a closed end with a positive
    radius gets a flat triangle-fan cap. u = angle / 2pi, v = arc length along the profile.
    """
    if len(profile) < 2:
        raise ValueError("a profile needs at least two points")
    prof = np.asarray(profile, dtype=np.float64)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(prof, axis=0), axis=1))]
    arc = arc / max(arc[-1], 1e-12)
    angles = 2 * math.pi * np.arange(segments) / segments
    verts: list[np.ndarray] = []
    rings: list[list[int]] = []  # vertex ids of each profile point (1 for a pole)
    for r, z in prof:
        start = sum(len(ring) for ring in rings)
        if r < 1e-9:
            verts.append(np.array([[0.0, 0.0, z]]))
            rings.append([start])
        else:
            verts.append(np.c_[r * np.cos(angles), r * np.sin(angles), np.full(segments, z)])
            rings.append(list(range(start, start + segments)))
    faces: list[list[int]] = []
    uvs: list[list[tuple[float, float]]] = []
    for k in range(len(prof) - 1):
        lo, hi = rings[k], rings[k + 1]
        v0, v1 = float(arc[k]), float(arc[k + 1])
        for j in range(segments):
            j1 = (j + 1) % segments
            u0, u1 = j / segments, (j + 1) / segments
            if len(lo) == 1 and len(hi) == 1:
                continue
            if len(lo) == 1:
                faces.append([lo[0], hi[j1], hi[j]])  # winding keeps the normal outward
                uvs.append([(0.5 * (u0 + u1), v0), (u1, v1), (u0, v1)])
            elif len(hi) == 1:
                faces.append([lo[j], lo[j1], hi[0]])
                uvs.append([(u0, v0), (u1, v0), (0.5 * (u0 + u1), v1)])
            else:
                faces.append([lo[j], lo[j1], hi[j1], hi[j]])
                uvs.append([(u0, v0), (u1, v0), (u1, v1), (u0, v1)])
    all_verts = np.concatenate(verts)
    extra: list[np.ndarray] = []
    caps = ((rings[0], prof[0, 1], True, cap_bottom), (rings[-1], prof[-1, 1], False, cap_top))
    for ring, z, bottom, wanted in caps:
        if not wanted or len(ring) == 1:
            continue
        centre = len(all_verts) + sum(len(e) for e in extra)
        extra.append(np.array([[0.0, 0.0, z]]))
        for j in range(segments):
            a, b = ((j + 1) % segments, j) if bottom else (j, (j + 1) % segments)
            faces.append([centre, ring[a], ring[b]])
            # Planar UVs on the cap: the disc maps into the unit square.
            uvs.append(
                [(0.5, 0.5)]
                + [
                    (0.5 + 0.5 * math.cos(angles[i]), 0.5 + 0.5 * math.sin(angles[i]))
                    for i in (a, b)
                ]
            )
    if extra:
        all_verts = np.concatenate([all_verts, *extra])
    return MeshData(all_verts, faces, uvs)


def torus(major: float, minor: float, segments: int = 32, sides: int = 12) -> MeshData:
    """Torus about Z; u around the ring, v around the tube."""
    verts = []
    for i in range(segments):
        a = 2 * math.pi * i / segments
        for j in range(sides):
            b = 2 * math.pi * j / sides
            r = major + minor * math.cos(b)
            verts.append([r * math.cos(a), r * math.sin(a), minor * math.sin(b)])
    faces, uvs = [], []
    for i in range(segments):
        i1 = (i + 1) % segments
        for j in range(sides):
            j1 = (j + 1) % sides
            faces.append([i * sides + j, i1 * sides + j, i1 * sides + j1, i * sides + j1])
            u0, u1, v0, v1 = i / segments, (i + 1) / segments, j / sides, (j + 1) / sides
            uvs.append([(u0, v0), (u1, v0), (u1, v1), (u0, v1)])
    return MeshData(np.asarray(verts, dtype=np.float64), faces, uvs)


def cylinder(radius: float, height: float, segments: int = 24) -> MeshData:
    """Capped cylinder from z = -height/2 to +height/2."""
    h = 0.5 * height
    return revolve([(radius, -h), (radius, h)], segments)


def beam_matrix(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(4, 4) matrix taking a unit-length Z-axis part centred at the origin onto the
    segment start -> end (uniform in x, y; stretched along z to the segment's length)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    length = float(np.linalg.norm(axis))
    z = axis / max(length, 1e-12)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z * length, 0.5 * (start + end)
    return m


def part_mesh_data(part: dict[str, Any]) -> MeshData | None:
    """Numpy mesh of a part spec (`spec.make_part`) in its parent's frame, or None for
    `monkey` (made by bmesh in `shapes.build_part`)."""
    shape, args = part["shape"], part["args"]
    if shape == "box":
        mesh = box(tuple(args["size"]))
    elif shape == "revolve":
        mesh = revolve(
            [tuple(p) for p in args["profile"]],
            int(args.get("segments", 32)),
            cap_bottom=bool(args.get("cap_bottom", True)),
            cap_top=bool(args.get("cap_top", True)),
        )
    elif shape == "torus":
        mesh = torus(float(args["major"]), float(args["minor"]))
    elif shape == "monkey":
        return None
    else:
        raise ValueError(f"unknown part shape {shape!r}")
    return mesh.transformed(np.asarray(part["matrix"]))
