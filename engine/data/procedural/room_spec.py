"""Seeded sampling of an interior scene and its camera clip, as a JSON dict (no bpy).

A scene is a room box (floor, four walls, ceiling) with one or two openings (windows or a
doorway) through which the HDRI world shows, furniture and shelves made from the prop
generator's part templates (`spec.TEMPLATES`, scaled to furniture size, small props on
shelf boards and table tops), ceiling area lights, and a camera path like a RealEstate10K
clip: a short smooth walk with a pan at eye height. Two context views are picked on the
path 20-60 degrees apart in viewing direction with 40-70 % frustum overlap, and target
views on the path between them and slightly beyond.

World: Blender's, Z up, metres. The room's interior is x in [-W/2, W/2], y in [-D/2, D/2],
z in [0, H]; walls, floor and ceiling are boxes outside it, so the interior faces lie
exactly on those planes (`ray_box_exit` gives the depth of a ray that hits them). Cameras
are (4, 4) camera-to-world matrices in the OpenGL/Blender convention (camera looks down
its -Z, +Y up), square images, one horizontal field of view per scene.

All randomness comes from `np.random.default_rng([seed, index, SCENE_STREAM])`, so scene
i depends only on (seed, i); the Blender side (`room.py`) draws no random numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .geometry import part_mesh_data
from .spec import TEMPLATES, Part, make_part, sample_material
from .textures import sample_photo_spec

Spec = dict[str, Any]

# Salt of the scene stream: scene i of seed s never shares draws with prop i of seed s.
SCENE_STREAM = 101
WALL_THICKNESS = 0.1  # metres
CONTEXT_ANGLE_DEG = (20.0, 60.0)  # angle between the two context views' optical axes
CONTEXT_OVERLAP = (0.4, 0.7)  # symmetric frustum overlap of the context pair
TARGET_BEYOND = (0.1, 0.25)  # how far past each context view the outer targets sit
PATH_FRAMES = 48  # the clip's frames; context and targets are chosen on this path
OVERLAP_GRID = 16  # rays a side for the overlap estimate
CAMERA_CLEARANCE = 0.5  # metres from the camera path to walls and furniture
# Photos that make plausible floors and walls (scikit-image's bundled data).
SURFACE_PHOTOS = ("brick", "grass", "gravel", "page", "coffee", "text", "checkerboard")
# Templates small enough for a shelf board or a table top; and furniture.
SMALL_TEMPLATES = ("box", "can", "bottle", "lathe", "sphere", "torus", "mug", "cluster")
FREE_FURNITURE = ("table", "chair", "lamp", "lathe", "cluster")
WALL_FURNITURE = ("shelf", "box", "rack", "table")
_WALLS = ("south", "east", "north", "west")  # -y, +x, +y, -x


# ---------------------------------------------------------------------------- geometry
def look_matrix(position: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """(4, 4) camera-to-world (OpenGL/Blender camera: looks down -Z, +Y up, no roll) at
    `position` (3,) metres, looking along azimuth `yaw_deg` (from +X towards +Y) and
    elevation `pitch_deg`."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw),
                        math.sin(pitch)])  # fmt: skip
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -forward, position
    return m


def pixel_rays(c2w: np.ndarray, fov_deg: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rays through the centres of an n x n pixel grid of a square camera.

    Returns (origin (3,), directions (n*n, 3)) in world units, each direction scaled so its
    component along the optical axis is 1 (a ray parameter t is then the planar depth).
    Rows run top to bottom, columns left to right.
    """
    half = math.tan(math.radians(fov_deg) / 2)
    s = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(s * half, -s * half)  # y: up is +, first row is the top
    d_cam = np.stack([x.ravel(), y.ravel(), -np.ones(n * n)], axis=1)
    return c2w[:3, 3].copy(), d_cam @ c2w[:3, :3].T


def ray_box_exit(
    origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """(N,) ray parameter where rays from `origin` (3,) inside the box [lo, hi] along
    `dirs` (N, 3) leave it (the first interior face they hit)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(dirs > 0, (hi - origin) / dirs, (lo - origin) / dirs)
    t = np.where(np.abs(dirs) < 1e-12, np.inf, t)
    return t.min(axis=1)


def in_frustum(points: np.ndarray, c2w: np.ndarray, fov_deg: float) -> np.ndarray:
    """(N,) bool: world points (N, 3) in front of the square camera and inside its image."""
    rel = (points - c2w[:3, 3]) @ c2w[:3, :3]  # camera frame
    depth = -rel[:, 2]
    half = math.tan(math.radians(fov_deg) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = (np.abs(rel[:, 0]) <= half * depth) & (np.abs(rel[:, 1]) <= half * depth)
    return (depth > 1e-6) & inside


def frustum_overlap(
    c2w_a: np.ndarray, c2w_b: np.ndarray, fov_deg: float, room: tuple[float, float, float],
    n: int = OVERLAP_GRID,
) -> float:  # fmt: skip
    """Symmetric overlap of two views of an empty room in [0, 1]: the mean over both
    directions of the fraction of one view's pixels (an n x n grid, each ray cast to the
    room box's interior faces) that land inside the other view's frame. The room box is
    convex, so nothing occludes; furniture and openings are ignored (a geometric estimate)."""
    w, d, h = room
    lo, hi = np.array([-w / 2, -d / 2, 0.0]), np.array([w / 2, d / 2, h])
    fractions = []
    for src, dst in ((c2w_a, c2w_b), (c2w_b, c2w_a)):
        origin, dirs = pixel_rays(src, fov_deg, n)
        points = origin + dirs * ray_box_exit(origin, dirs, lo, hi)[:, None]
        fractions.append(float(in_frustum(points, dst, fov_deg).mean()))
    return 0.5 * (fractions[0] + fractions[1])


def view_angle_deg(c2w_a: np.ndarray, c2w_b: np.ndarray) -> float:
    """Angle in degrees between two cameras' optical axes."""
    cos = float(np.clip(np.dot(-c2w_a[:3, 2], -c2w_b[:3, 2]), -1.0, 1.0))
    return math.degrees(math.acos(cos))


# ---------------------------------------------------------------------------- camera path
def path_pose(path: dict[str, Any], t: float) -> np.ndarray:
    """(4, 4) camera-to-world on the clip `path` at parameter t (0 and 1 are its ends;
    slightly outside extrapolates the same smooth motion)."""
    start, end = np.asarray(path["start"]), np.asarray(path["end"])
    bow = np.asarray(path["bow"])
    position = start + t * (end - start) + math.sin(math.pi * t) * bow
    ease = t + path["ease"] * math.sin(2 * math.pi * t) / (2 * math.pi)  # uneven pan speed
    yaw = path["yaw0"] + ease * path["yaw_sweep"]
    pitch = path["pitch0"] + t * path["pitch_sweep"]
    return look_matrix(position, yaw, pitch)


def _sample_path(rng: np.random.Generator, room: tuple[float, float, float]) -> dict[str, Any]:
    w, d, _ = room
    margin = 0.9
    half = np.array([w / 2 - margin, d / 2 - margin])
    eye = float(rng.uniform(1.2, 1.7))
    start = rng.uniform(-half, half)
    heading = rng.uniform(0, 2 * math.pi)
    length = float(rng.uniform(0.3, 1.5))
    end = np.clip(start + length * np.array([math.cos(heading), math.sin(heading)]), -half, half)
    # Look roughly across the room: towards a random point on the far side of the centre.
    target = -np.sign(start) * rng.uniform(0.0, 1.0, 2) * half
    yaw0 = math.degrees(math.atan2(*(target - start)[::-1])) + float(rng.uniform(-30, 30))
    sweep = float(rng.uniform(35, 75)) * float(rng.choice([-1.0, 1.0]))
    bow = rng.normal(0, 0.1, 2)
    return {
        "start": [*start.round(4).tolist(), round(eye, 4)],
        "end": [*end.round(4).tolist(), round(eye + float(rng.uniform(-0.1, 0.1)), 4)],
        "bow": [*bow.round(4).tolist(), 0.0],
        "yaw0": round(yaw0 - 0.5 * sweep, 3),
        "yaw_sweep": round(sweep, 3),
        "ease": round(float(rng.uniform(-0.5, 0.5)), 4),
        "pitch0": round(float(rng.uniform(-20, 5)), 3),
        "pitch_sweep": round(float(rng.uniform(-8, 8)), 3),
        "fov_deg": round(float(rng.uniform(55, 75)), 3),
    }


def _path_inside(path: dict[str, Any], room: tuple[float, float, float], lo_t: float,
                 hi_t: float) -> bool:  # fmt: skip
    w, d, h = room
    for t in np.linspace(lo_t, hi_t, 9):
        p = path_pose(path, float(t))[:3, 3]
        if abs(p[0]) > w / 2 - CAMERA_CLEARANCE or abs(p[1]) > d / 2 - CAMERA_CLEARANCE:
            return False
        if not 0.5 < p[2] < h - 0.3:
            return False
    return True


def target_offsets(rng: np.random.Generator, count: int) -> list[float]:
    """Target positions s along the context pair (0: first context view, 1: second):
    with 4 or more targets one sits before the first and one after the second view
    (s in -TARGET_BEYOND and 1 + TARGET_BEYOND), the rest spread strictly between."""
    beyond = count >= 4
    inner = count - 2 if beyond else count
    edges = np.linspace(0.0, 1.0, inner + 1)
    s = [float(rng.uniform(a + 0.15 * (b - a), b - 0.15 * (b - a)))
         for a, b in zip(edges[:-1], edges[1:], strict=True)]  # fmt: skip
    if beyond:
        s = [-float(rng.uniform(*TARGET_BEYOND)), *s, 1.0 + float(rng.uniform(*TARGET_BEYOND))]
    return [round(x, 4) for x in s]


def sample_clip(
    rng: np.random.Generator, room: tuple[float, float, float], n_target: int,
    tries: int = 200,
) -> dict[str, Any]:  # fmt: skip
    """A camera path with a context pair and targets meeting CONTEXT_ANGLE_DEG and
    CONTEXT_OVERLAP; paths are redrawn until one has such a pair (RuntimeError after
    `tries`)."""
    for _ in range(tries):
        path = _sample_path(rng, room)
        fov = path["fov_deg"]
        ts = np.linspace(0.0, 1.0, PATH_FRAMES)
        poses = [path_pose(path, float(t)) for t in ts]
        pairs = []
        for i in range(PATH_FRAMES):
            for j in range(i + 6, PATH_FRAMES):
                angle = view_angle_deg(poses[i], poses[j])
                if CONTEXT_ANGLE_DEG[0] <= angle <= CONTEXT_ANGLE_DEG[1]:
                    pairs.append((i, j, angle))
        if not pairs:
            continue
        # Try the pairs nearest a random angle first, so wide pairs are picked where the
        # overlap allows them rather than the (more numerous) narrow ones.
        wanted = rng.uniform(*CONTEXT_ANGLE_DEG)
        noise = rng.uniform(0.0, 2.0, len(pairs))
        order = np.argsort([abs(p[2] - wanted) + e for p, e in zip(pairs, noise, strict=True)])
        for k in order[:40]:
            i, j, angle = pairs[k]
            overlap = frustum_overlap(poses[i], poses[j], fov, room)
            if not CONTEXT_OVERLAP[0] <= overlap <= CONTEXT_OVERLAP[1]:
                continue
            offsets = target_offsets(rng, n_target)
            t_i, t_j = float(ts[i]), float(ts[j])
            t_target = [t_i + s * (t_j - t_i) for s in offsets]
            if not _path_inside(path, room, min(t_target + [t_i]), max(t_target + [t_j])):
                continue
            return {
                "path": path,
                "fov_deg": fov,
                "context_t": [round(t_i, 6), round(t_j, 6)],
                "target_s": offsets,
                "target_t": [round(t, 6) for t in t_target],
                "context_angle_deg": round(angle, 4),
                "context_overlap": round(overlap, 4),
            }
    raise RuntimeError(f"no camera clip met the context constraints in {tries} paths")


# ---------------------------------------------------------------------------- room shell
def _box_part(lo: np.ndarray, hi: np.ndarray, material: int) -> Part:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    m = np.eye(4)
    m[:3, 3] = 0.5 * (lo + hi)
    return make_part("box", {"size": (hi - lo).round(5).tolist()}, m, material, smooth=False)


def _wall_parts(
    wall: str, room: tuple[float, float, float], openings: list[dict[str, Any]], material: int
) -> list[Part]:
    """Boxes of one wall with rectangular holes: solid columns between the openings and
    pieces below and above each. Walls run along u (x for south/north, y for east/west)
    and extend over the corners by the wall thickness so the shell is closed."""
    w, d, h = room
    t = WALL_THICKNESS
    along_x = wall in ("south", "north")
    length = w if along_x else d
    u_lo, u_hi = -length / 2 - t, length / 2 + t
    offset = {"south": -d / 2 - t / 2, "north": d / 2 + t / 2,
              "west": -w / 2 - t / 2, "east": w / 2 + t / 2}[wall]  # fmt: skip

    def piece(u0: float, u1: float, z0: float, z1: float) -> Part:
        if along_x:
            return _box_part([u0, offset - t / 2, z0], [u1, offset + t / 2, z1], material)
        return _box_part([offset - t / 2, u0, z0], [offset + t / 2, u1, z1], material)

    holes = sorted((o for o in openings if o["wall"] == wall), key=lambda o: o["center"])
    parts, u = [], u_lo
    for o in holes:
        a, b = o["center"] - o["width"] / 2, o["center"] + o["width"] / 2
        parts.append(piece(u, a, 0.0, h))
        if o["bottom"] > 0:
            parts.append(piece(a, b, 0.0, o["bottom"]))
        parts.append(piece(a, b, o["top"], h))
        u = b
    parts.append(piece(u, u_hi, 0.0, h))
    return parts


def _surface_material(rng: np.random.Generator, role: str, photo_ok: bool) -> dict[str, Any]:
    """A room-surface material: procedural textures in object space (world metres here,
    so `scale` is cycles a metre) or a tiled photo; matte, no decals."""
    material = sample_material(rng, allow_decal=False)
    base = material["base"]
    if role == "ceiling":
        base["kind"] = str(rng.choice(["plain", "noise"]))
        base["color1"] = rng.uniform(0.75, 0.95, 3).round(4).tolist()
        base["color2"] = rng.uniform(0.65, 0.9, 3).round(4).tolist()
    elif (base["kind"] == "photo" and not photo_ok) or (role == "walls" and rng.random() < 0.4):
        base["kind"] = "plain"  # photos only on unbroken surfaces; many walls plain
    if role in ("floor", "accent") and rng.random() < 0.5:
        base["kind"] = "photo"
    if base["kind"] == "photo":
        photo = sample_photo_spec(rng, SURFACE_PHOTOS)
        photo["crop"] = [0.0, 0.0, 1.0, 1.0]
        base["photo"] = photo
        base["repeat"] = [int(rng.integers(2, 6))] * 2
    base["scale"] = float(rng.uniform(1.0, 4.0))
    material["roughness"] = float(rng.uniform(0.4, 0.95))
    material["metallic"] = material["coat"] = 0.0
    return material


def _sample_openings(rng: np.random.Generator, room: tuple[float, float, float]) -> list[dict]:
    w, d, h = room
    count = 1 if rng.random() < 0.5 else 2
    walls = rng.permutation(len(_WALLS))[:count]
    openings = []
    for k, wall_index in enumerate(walls):
        wall = _WALLS[int(wall_index)]
        length = w if wall in ("south", "north") else d
        door = k == 1 or (count == 1 and rng.random() < 0.25)
        if door:
            width, bottom, top = rng.uniform(0.8, 1.1), 0.0, rng.uniform(2.0, min(2.3, h - 0.2))
        else:
            width = rng.uniform(0.8, min(2.0, length - 1.0))
            bottom = rng.uniform(0.6, 1.0)
            top = min(bottom + rng.uniform(0.9, 1.5), h - 0.25)
        span = length / 2 - width / 2 - 0.3
        openings.append({
            "wall": wall, "kind": "door" if door else "window",
            "center": round(float(rng.uniform(-span, span)), 4), "width": round(float(width), 4),
            "bottom": round(float(bottom), 4), "top": round(float(top), 4),
        })  # fmt: skip
    return openings


# ---------------------------------------------------------------------------- furniture
def _parts_bbox(parts: list[Part], scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local bounding box (lo, hi) of parts (control meshes; bevels and subdivision stay
    inside) after a per-axis scale (3,)."""
    verts = np.concatenate([part_mesh_data(p).verts for p in parts]) * scale
    return verts.min(0), verts.max(0)


def _shelf_parts(rng: np.random.Generator) -> tuple[list[Part], list[float]]:
    """A bookshelf in its own frame: open front towards -y, back panel at +y, standing
    on z = 0, centred in x; returns its parts and the heights of its boards' tops."""
    w, dd, h = rng.uniform(0.8, 1.6), rng.uniform(0.28, 0.4), rng.uniform(1.1, 2.0)
    th = float(rng.uniform(0.02, 0.04))
    boards = int(rng.integers(3, 6))
    parts = [_box_part([sx * w / 2 - (th if sx > 0 else 0), -dd / 2, 0],
                       [sx * w / 2 + (0 if sx > 0 else th), dd / 2, h], 0)
             for sx in (-1, 1)]  # fmt: skip
    if rng.random() < 0.7:
        parts.append(_box_part([-w / 2, dd / 2 - 0.01, 0], [w / 2, dd / 2, h], 1))
    tops = []
    for k in range(boards):
        z = (h - th) * k / (boards - 1)
        parts.append(_box_part([-w / 2 + th, -dd / 2, z], [w / 2 - th, dd / 2, z + th], 0))
        tops.append(float(z + th))
    return parts, tops


def _item(
    rng: np.random.Generator, kind: str, parts: list[Part], size: float, fit: str,
    yaw_deg: float, stretch: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Furniture or a small prop: parts scaled so its height (fit="height") or largest
    side (fit="max") is `size` metres, yawed; placed later (`_place`)."""
    n_materials = max(p["material"] for p in parts) + 1
    materials = [sample_material(rng) for _ in range(n_materials)]
    stretch = np.ones(3) if stretch is None else stretch
    lo, hi = _parts_bbox(parts, stretch)
    extent = hi[2] - lo[2] if fit == "height" else float((hi - lo).max())
    scale = stretch * size / max(float(extent), 1e-6)
    return {"kind": kind, "parts": parts, "materials": materials,
            "scale": scale.round(5).tolist(), "yaw_deg": round(float(yaw_deg), 3)}  # fmt: skip


def _footprint(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """World-aligned (lo, hi) (3,) of the item's yawed, scaled parts about its origin."""
    lo, hi = _parts_bbox(item["parts"], np.asarray(item["scale"]))
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])  # fmt: skip
    c, s = math.cos(math.radians(item["yaw_deg"])), math.sin(math.radians(item["yaw_deg"]))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    corners = corners @ rot.T
    return corners.min(0), corners.max(0)


def _place(item: dict[str, Any], centre_xy: np.ndarray, base_z: float) -> dict[str, Any]:
    """Set the item's (4, 4) `matrix` (translation @ yaw @ scale) so its footprint is
    centred at `centre_xy` and its lowest point at `base_z`; record its world bbox."""
    lo, hi = _footprint(item)
    shift = np.array([centre_xy[0] - 0.5 * (lo[0] + hi[0]), centre_xy[1] - 0.5 * (lo[1] + hi[1]),
                      base_z - lo[2]])  # fmt: skip
    c, s = math.cos(math.radians(item["yaw_deg"])), math.sin(math.radians(item["yaw_deg"]))
    m = np.diag([*item["scale"], 1.0])
    rot = np.eye(4)
    rot[:2, :2] = [[c, -s], [s, c]]
    m = rot @ m
    m[:3, 3] = shift
    item["matrix"] = m.round(6).tolist()
    return item


def item_bbox(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """World (lo, hi) (3,) of a placed item's parts (control meshes) under its matrix."""
    verts = np.concatenate([part_mesh_data(p).verts for p in item["parts"]])
    m = np.asarray(item["matrix"])
    verts = verts @ m[:3, :3].T + m[:3, 3]
    return verts.min(0), verts.max(0)


def _rects_clear(lo: np.ndarray, hi: np.ndarray, others: list[tuple[np.ndarray, np.ndarray]],
                 gap: float = 0.05) -> bool:  # fmt: skip
    return all(
        lo[0] >= ohi[0] + gap or hi[0] <= olo[0] - gap or lo[1] >= ohi[1] + gap
        or hi[1] <= olo[1] - gap
        for olo, ohi in others
    )  # fmt: skip


def _rect_point_distance(lo: np.ndarray, hi: np.ndarray, points: np.ndarray) -> float:
    dx = np.maximum(np.maximum(lo[0] - points[:, 0], points[:, 0] - hi[0]), 0)
    dy = np.maximum(np.maximum(lo[1] - points[:, 1], points[:, 1] - hi[1]), 0)
    return float(np.hypot(dx, dy).min())


def _small_props(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, z: float,
                 max_height: float, count: int) -> list[dict[str, Any]]:  # fmt: skip
    """Up to `count` small props standing side by side on the surface [lo, hi] (x, y) at
    height z, each at most `max_height` tall."""
    out: list[dict[str, Any]] = []
    taken: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(count * 3):
        if len(out) >= count:
            break
        template = str(rng.choice(SMALL_TEMPLATES))
        parts = TEMPLATES[template][1](rng)
        size = float(rng.uniform(0.5, 0.9)) * min(max_height, 0.35)
        item = _item(rng, template, parts, size, "max", float(rng.uniform(0, 360)))
        flo, fhi = _footprint(item)
        half = 0.5 * (fhi - flo)
        if fhi[2] - flo[2] > max_height or np.any(2 * half[:2] > hi[:2] - lo[:2]):
            continue
        centre = rng.uniform(lo[:2] + half[:2], hi[:2] - half[:2])
        if not _rects_clear(centre - half[:2], centre + half[:2], taken, 0.01):
            continue
        taken.append((centre - half[:2], centre + half[:2]))
        out.append(_place(item, centre, z))
    return out


def _sample_furniture(
    rng: np.random.Generator, room: tuple[float, float, float], openings: list[dict],
    path_points: np.ndarray,
) -> list[dict[str, Any]]:  # fmt: skip
    """3-6 pieces against the walls or free-standing, clear of each other, of the openings
    (their floor strip, 0.6 m deep) and of the camera path; small props on shelf boards
    and table tops."""
    w, d, h = room
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    for o in openings:  # keep the openings visible and the doorway free
        a, b = o["center"] - o["width"] / 2 - 0.1, o["center"] + o["width"] / 2 + 0.1
        if o["wall"] in ("south", "north"):
            y0 = -d / 2 if o["wall"] == "south" else d / 2 - 0.6
            placed.append((np.array([a, y0]), np.array([b, y0 + 0.6])))
        else:
            x0 = -w / 2 if o["wall"] == "west" else w / 2 - 0.6
            placed.append((np.array([x0, a]), np.array([x0 + 0.6, b])))
    items: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(3, 7))):
        against_wall = rng.random() < 0.6
        kind = str(rng.choice(WALL_FURNITURE if against_wall else FREE_FURNITURE))
        tops: list[float] = []
        if kind == "shelf":
            parts, tops = _shelf_parts(rng)
            item = _item(rng, kind, parts, 1.0, "height", 0.0)
            item["scale"] = [1.0, 1.0, 1.0]  # built at its real size
        else:
            parts = TEMPLATES[kind][1](rng)
            size = {"table": rng.uniform(0.65, 0.8), "chair": rng.uniform(0.8, 1.0),
                    "lamp": rng.uniform(1.3, 1.8), "rack": rng.uniform(1.2, 1.8),
                    "box": rng.uniform(0.5, 1.1), "lathe": rng.uniform(0.4, 0.8),
                    "cluster": rng.uniform(0.4, 0.8)}[kind]  # fmt: skip
            item = _item(rng, kind, parts, float(size), "height", 0.0,
                         rng.uniform(0.85, 1.15, 3))  # fmt: skip
        for _attempt in range(20):
            if against_wall:
                wall = int(rng.integers(0, 4))
                out_dir = [(0, -1), (1, 0), (0, 1), (-1, 0)][wall]
                item["yaw_deg"] = math.degrees(math.atan2(out_dir[1], out_dir[0])) - 90.0
                lo, hi = _footprint(item)
                half = 0.5 * (hi - lo)
                if out_dir[0] == 0:
                    x = rng.uniform(-w / 2 + half[0], max(w / 2 - half[0], -w / 2 + half[0]))
                    centre = np.array([x, out_dir[1] * (d / 2 - half[1] - 0.01)])
                else:
                    y = rng.uniform(-d / 2 + half[1], max(d / 2 - half[1], -d / 2 + half[1]))
                    centre = np.array([out_dir[0] * (w / 2 - half[0] - 0.01), y])
            else:
                item["yaw_deg"] = round(float(rng.uniform(0, 360)), 3)
                lo, hi = _footprint(item)
                half = 0.5 * (hi - lo)
                centre = rng.uniform([-w / 2 + half[0], -d / 2 + half[1]],
                                     [w / 2 - half[0], d / 2 - half[1]])  # fmt: skip
            rlo, rhi = centre - half[:2], centre + half[:2]
            if np.any(rlo < [-w / 2, -d / 2]) or np.any(rhi > [w / 2, d / 2]):
                continue
            if hi[2] - lo[2] > h - 0.1 or not _rects_clear(rlo, rhi, placed):
                continue
            if _rect_point_distance(rlo, rhi, path_points) < CAMERA_CLEARANCE:
                continue
            placed.append((rlo, rhi))
            items.append(_place(item, centre, 0.0))
            break
        else:
            continue
        if kind == "shelf":  # props on each board but the top one if the shelf is tall
            m = np.asarray(item["matrix"])
            board_lo, board_hi = np.array([-0.45, -0.15]), np.array([0.45, 0.15])
            w_shelf = _parts_bbox(item["parts"], np.ones(3))
            board_lo[0], board_hi[0] = w_shelf[0][0] + 0.05, w_shelf[1][0] - 0.05
            board_lo[1], board_hi[1] = w_shelf[0][1] + 0.03, w_shelf[1][1] - 0.05
            for z0, z1 in zip(tops[:-1], tops[1:], strict=True):
                for prop in _small_props(rng, board_lo, board_hi, z0, 0.8 * (z1 - z0),
                                         int(rng.integers(1, 4))):  # fmt: skip
                    # Props were placed in the shelf's frame: carry them into the room.
                    pm = m @ np.asarray(prop["matrix"])
                    prop["matrix"] = pm.round(6).tolist()
                    prop["yaw_deg"] = round(prop["yaw_deg"] + item["yaw_deg"], 3)
                    items.append(prop)
        elif kind == "table":
            lo3, hi3 = item_bbox(item)
            inset = 0.25 * (hi3 - lo3)
            items += _small_props(rng, lo3 + inset, hi3 - inset, float(hi3[2]), 0.35,
                                  int(rng.integers(0, 3)))  # fmt: skip
    return items


# ---------------------------------------------------------------------------- scene
def sample_lights(rng: np.random.Generator, room: tuple[float, float, float]) -> list[dict]:
    """1-3 rectangular area lights just below the ceiling, facing down; power in watts
    grows with the floor area."""
    w, d, h = room
    lights = []
    count = int(rng.integers(1, 4))
    for _ in range(count):
        warm = float(rng.random())
        colour = np.array([1.0, 0.86, 0.72]) * warm + np.array([0.88, 0.93, 1.0]) * (1 - warm)
        lights.append({
            "position": [round(float(rng.uniform(-0.35, 0.35) * w), 4),
                         round(float(rng.uniform(-0.35, 0.35) * d), 4), round(h - 0.02, 4)],
            "size": rng.uniform(0.4, 1.2, 2).round(4).tolist(),
            "power": round(float(rng.uniform(2.5, 7) * w * d / count), 2),
            "color": colour.round(4).tolist(),
        })  # fmt: skip
    return lights


def sample_room(seed: int, index: int, n_target: int = 6) -> Spec:
    """The full spec of scene `index` of a dataset made with `seed`.

    Returns a JSON-serialisable dict: `room` [W, D, H] metres, `materials` (floor, walls,
    ceiling, accent wall), `openings`, `accent_wall` (an unbroken wall with the accent
    material, or None), `shell` (box parts of floor, walls and ceiling, material index
    into `materials`), `furniture` (items with parts, materials, a (4, 4) `matrix`),
    `lights`, `world` (HDRI), and `clip` (camera path, fov, context and target path
    parameters, the context pair's angle and overlap) plus `cameras` {"context": 2,
    "target": n_target (4, 4) camera-to-world matrices}.
    """
    rng = np.random.default_rng([int(seed), int(index), SCENE_STREAM])
    room = (float(rng.uniform(3.5, 6.5)), float(rng.uniform(3.5, 6.5)),
            float(rng.uniform(2.5, 3.2)))  # fmt: skip
    room = tuple(round(x, 4) for x in room)  # type: ignore[assignment]
    clip = sample_clip(rng, room, n_target)
    openings = _sample_openings(rng, room)
    walls_with_holes = {o["wall"] for o in openings}
    materials = [
        _surface_material(rng, "floor", True),
        _surface_material(rng, "walls", False),  # walls cut into pieces: no photos
        _surface_material(rng, "ceiling", False),
        _surface_material(rng, "accent", True),  # one unbroken wall, maybe a photo
    ]
    solid = [wall for wall in _WALLS if wall not in walls_with_holes]
    accent = str(rng.choice(solid)) if rng.random() < 0.5 else None
    w, d, h = room
    t = WALL_THICKNESS
    shell = [
        _box_part([-w / 2 - t, -d / 2 - t, -t], [w / 2 + t, d / 2 + t, 0.0], 0),
        _box_part([-w / 2 - t, -d / 2 - t, h], [w / 2 + t, d / 2 + t, h + t], 2),
    ]
    for wall in _WALLS:
        shell += _wall_parts(wall, room, openings, 3 if wall == accent else 1)
    path_points = np.array([
        path_pose(clip["path"], float(s))[:3, 3][:2]
        for s in np.linspace(min(clip["target_t"] + clip["context_t"]),
                             max(clip["target_t"] + clip["context_t"]), 24)
    ])  # fmt: skip
    furniture = _sample_furniture(rng, room, openings, path_points)
    cameras = {
        "context": [path_pose(clip["path"], t).round(6).tolist() for t in clip["context_t"]],
        "target": [path_pose(clip["path"], t).round(6).tolist() for t in clip["target_t"]],
    }
    return {
        "seed": int(seed),
        "index": int(index),
        "room": list(room),
        "materials": materials,
        "openings": openings,
        "accent_wall": accent,
        "shell": shell,
        "furniture": furniture,
        "lights": sample_lights(rng, room),
        "world": {
            "hdri": str(rng.choice(["city", "courtyard", "forest", "sunrise", "sunset"])),
            "rotation_deg": round(float(rng.uniform(0, 360)), 3),
            "strength": round(float(rng.uniform(1.0, 2.5)), 4),
        },
        "clip": clip,
        "cameras": cameras,
    }
