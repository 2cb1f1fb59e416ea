"""Seeded sampling of a prop: its parts, materials, pose and lighting, as a JSON dict.

All randomness of an object lives here and comes from `np.random.default_rng([seed,
index])`, so object i depends only on (seed, i). The Blender side (`scene.py`) turns the
dict into geometry and node trees without drawing any random number of its own, and the
dict is saved as prop.json, which makes every object inspectable and rebuildable.

A prop is a list of parts; each part is a primitive (`box`, `revolve` profile, `torus`,
`monkey`) with a (4, 4) placement matrix, a material index, and optional bevel,
subdivision and smooth shading. Templates below assemble parts into props with thin
pieces (legs, handles, rails, poles) because thin structure is what coarse models lose.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .assets import FONTS, PHOTOS
from .geometry import beam_matrix
from .textures import sample_label_spec, sample_photo_spec

Part = dict[str, Any]
Spec = dict[str, Any]

PROCEDURAL_TEXTURES = ("plain", "noise", "checker", "brick", "wave", "voronoi", "magic")
HDRIS = ("city", "courtyard", "forest", "interior", "night", "studio", "sunrise", "sunset")


# ---------------------------------------------------------------------------- helpers
def _translate(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


def _scale(x: float, y: float, z: float) -> np.ndarray:
    return np.diag([x, y, z, 1.0])


def _rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    m = np.eye(4)
    m[1:3, 1:3] = [[c, -s], [s, c]]
    return m


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def make_part(
    shape: str,
    args: dict[str, Any],
    matrix: np.ndarray,
    material: int = 0,
    *,
    bevel: float = 0.0,
    subdiv: int = 0,
    smooth: bool = True,
) -> Part:
    """One part of a prop spec: a shape with its arguments, its 4x4 matrix in the prop's
    frame (rounded so specs compare and serialise exactly), material slot and modifiers."""
    return {
        "shape": shape,
        "args": args,
        "matrix": np.asarray(matrix, dtype=float).round(6).tolist(),
        "material": int(material),
        "bevel": float(bevel),
        "subdiv": int(subdiv),
        "smooth": bool(smooth),
    }


def _cylinder_args(radius: float, height: float, segments: int = 24) -> dict[str, Any]:
    h = 0.5 * height
    return {"profile": [[radius, -h], [radius, h]], "segments": segments}


def _beam(start, end, radius: float, material: int, segments: int = 12) -> Part:
    """A thin cylinder from start to end (legs, rails, poles, rungs)."""
    return make_part(
        "revolve", _cylinder_args(radius, 1.0, segments), beam_matrix(start, end), material
    )


def _colour(rng: np.random.Generator) -> list[float]:
    """A linear-ish RGB colour with varied hue, saturation and value (sRGB floats)."""
    h = rng.random()
    s = rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.95)])
    v = rng.uniform(0.15, 0.95)
    return [round(c, 4) for c in colorsys.hsv_to_rgb(h, s, v)]


# ---------------------------------------------------------------------------- materials
def sample_material(rng: np.random.Generator, allow_decal: bool = True) -> dict[str, Any]:
    """Principled material: a base texture, maybe a printed label or photo on top, and
    glossy or matte finish."""
    kind = str(
        rng.choice(
            PROCEDURAL_TEXTURES + ("photo",), p=[0.16, 0.16, 0.12, 0.1, 0.1, 0.1, 0.08, 0.18]
        )
    )
    base: dict[str, Any] = {"kind": kind, "color1": _colour(rng), "color2": _colour(rng)}
    base["scale"] = float(rng.uniform(2.0, 12.0))
    base["detail"] = float(rng.uniform(1.0, 8.0))
    if kind == "photo":
        base["photo"] = sample_photo_spec(rng, PHOTOS)
        base["repeat"] = [int(rng.integers(1, 4)), int(rng.integers(1, 3))]
    decal = None
    if allow_decal and rng.random() < 0.45:
        if rng.random() < 0.7:
            image = {"kind": "label", "label": sample_label_spec(rng, FONTS)}
        else:
            image = {"kind": "photo", "photo": sample_photo_spec(rng, PHOTOS)}
        mode = "wrap" if rng.random() < 0.35 else "decal"
        if mode == "wrap":
            rect = [0.0, float(rng.uniform(0.15, 0.35)), 1.0, float(rng.uniform(0.65, 0.85))]
        else:
            w, h = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.25, 0.6))
            u0, v0 = float(rng.uniform(0.05, 0.95 - w)), float(rng.uniform(0.05, 0.95 - h))
            rect = [u0, v0, u0 + w, v0 + h]
        decal = {"image": image, "mode": mode, "rect": [round(x, 4) for x in rect]}
    glossy = bool(rng.random() < 0.45)
    return {
        "base": base,
        "decal": decal,
        "roughness": float(rng.uniform(0.05, 0.3) if glossy else rng.uniform(0.5, 1.0)),
        "metallic": float(rng.uniform(0.6, 1.0) if glossy and rng.random() < 0.35 else 0.0),
        "coat": float(rng.uniform(0.3, 1.0) if glossy and rng.random() < 0.3 else 0.0),
        "bump": float(rng.uniform(0.05, 0.4) if rng.random() < 0.3 else 0.0),
    }


# ---------------------------------------------------------------------------- templates
Template = Callable[[np.random.Generator], list[Part]]
TEMPLATES: dict[str, tuple[float, Template]] = {}
"""Prop templates by name: (relative weight of being drawn, the function that samples the
prop's parts). `sample_prop` draws among them in this order, which is the order they are
defined in below (`_template`): a new template goes last, or existing datasets change."""


def _template(weight: float) -> Callable[[Template], Template]:
    """Register the template `_t_<name>` in TEMPLATES as <name>, drawn with `weight`."""

    def register(fn: Template) -> Template:
        TEMPLATES[fn.__name__.removeprefix("_t_")] = (weight, fn)
        return fn

    return register


def _lathe_profile(rng: np.random.Generator, points: int, height: float) -> list[list[float]]:
    """A smooth random profile bottom to top with positive radii."""
    radii = np.clip(np.cumsum(rng.normal(0, 0.08, points)) + rng.uniform(0.15, 0.35), 0.05, 0.5)
    zs = np.linspace(-height / 2, height / 2, points)
    return [[round(float(r), 5), round(float(z), 5)] for r, z in zip(radii, zs, strict=True)]


@_template(0.11)
def _t_box(rng: np.random.Generator) -> list[Part]:
    size = rng.uniform(0.3, 1.0, 3).round(4).tolist()
    bevel = float(rng.choice([0.0, rng.uniform(0.005, 0.05)]))
    subdiv = int(rng.integers(1, 3)) if bevel > 0 and rng.random() < 0.3 else 0
    return [
        make_part(
            "box", {"size": size}, np.eye(4), 0, bevel=bevel, subdiv=subdiv, smooth=subdiv > 0
        )
    ]


@_template(0.08)
def _t_can(rng: np.random.Generator) -> list[Part]:
    r, h = rng.uniform(0.15, 0.4), rng.uniform(0.4, 1.0)
    return [
        make_part(
            "revolve", _cylinder_args(r, h, 40), np.eye(4), 0, bevel=float(rng.uniform(0.005, 0.02))
        )
    ]


@_template(0.08)
def _t_bottle(rng: np.random.Generator) -> list[Part]:
    r, body = rng.uniform(0.12, 0.25), rng.uniform(0.4, 0.7)
    neck_r, neck_h = r * rng.uniform(0.25, 0.45), rng.uniform(0.12, 0.3)
    shoulder = rng.uniform(0.08, 0.2)
    z0 = -0.5 * (body + shoulder + neck_h)
    profile = [
        [0.0, z0], [r * 0.95, z0], [r, z0 + 0.02], [r, z0 + body],
        [0.5 * (r + neck_r) * 1.1, z0 + body + 0.6 * shoulder], [neck_r, z0 + body + shoulder],
        [neck_r, z0 + body + shoulder + neck_h],
    ]  # fmt: skip
    top = z0 + body + shoulder + neck_h
    cap_h = float(rng.uniform(0.03, 0.08))
    cap = make_part(
        "revolve",
        _cylinder_args(neck_r * 1.15, cap_h, 24),
        _translate(0, 0, top + cap_h / 2 - 0.01),
        1,
    )
    return [make_part("revolve", {"profile": profile, "segments": 40}, np.eye(4), 0, subdiv=1), cap]


@_template(0.1)
def _t_lathe(rng: np.random.Generator) -> list[Part]:
    profile = _lathe_profile(rng, int(rng.integers(5, 9)), float(rng.uniform(0.5, 1.0)))
    profile = [[0.0, profile[0][1]], *profile]
    open_top = bool(rng.random() < 0.5)
    args = {"profile": profile, "segments": 40, "cap_top": not open_top}
    return [make_part("revolve", args, np.eye(4), 0, subdiv=int(rng.integers(0, 2)))]


@_template(0.06)
def _t_sphere(rng: np.random.Generator) -> list[Part]:
    n = 16
    profile = [
        [math.sin(math.pi * k / n) * 0.5, -math.cos(math.pi * k / n) * 0.5] for k in range(n + 1)
    ]
    squash = _scale(*rng.uniform(0.6, 1.0, 3))
    return [make_part("revolve", {"profile": profile, "segments": 40}, squash, 0)]


@_template(0.06)
def _t_torus(rng: np.random.Generator) -> list[Part]:
    major = rng.uniform(0.25, 0.4)
    args = {"major": major, "minor": major * rng.uniform(0.15, 0.5)}
    return [make_part("torus", args, _rot_x(rng.uniform(0, 90)), 0)]


@_template(0.06)
def _t_monkey(rng: np.random.Generator) -> list[Part]:
    return [make_part("monkey", {}, np.eye(4), 0, subdiv=int(rng.integers(0, 3)))]


@_template(0.09)
def _t_table(rng: np.random.Generator) -> list[Part]:
    w, d, h = rng.uniform(0.6, 1.0), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9)
    top_t, leg_r = rng.uniform(0.03, 0.08), rng.uniform(0.015, 0.04)
    parts = [make_part("box", {"size": [w, d, top_t]}, _translate(0, 0, h), 0, bevel=0.01)]
    ix, iy = 0.5 * w - 2 * leg_r, 0.5 * d - 2 * leg_r
    corners = [(sx * ix, sy * iy) for sx in (-1, 1) for sy in (-1, 1)]
    parts += [_beam((x, y, 0), (x, y, h), leg_r, 1) for x, y in corners]
    if rng.random() < 0.6:  # stretcher rails between the legs
        z = h * rng.uniform(0.15, 0.4)
        for (x0, y0), (x1, y1) in zip(
            corners, [corners[1], corners[3], corners[0], corners[2]], strict=True
        ):
            parts.append(_beam((x0, y0, z), (x1, y1, z), leg_r * 0.6, 1))
    return parts


@_template(0.09)
def _t_chair(rng: np.random.Generator) -> list[Part]:
    w, h, back = rng.uniform(0.4, 0.6), rng.uniform(0.35, 0.5), rng.uniform(0.35, 0.6)
    leg_r, seat_t = rng.uniform(0.012, 0.03), rng.uniform(0.03, 0.06)
    parts = [make_part("box", {"size": [w, w, seat_t]}, _translate(0, 0, h), 0, bevel=0.008)]
    i = 0.5 * w - 1.5 * leg_r
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_beam((sx * i, sy * i, 0), (sx * i, sy * i, h), leg_r, 1))
        parts.append(_beam((sx * i, -i, h), (sx * i, -i, h + back), leg_r, 1))  # back posts
    slats = int(rng.integers(2, 5))
    vertical = bool(rng.random() < 0.5)
    for k in range(slats):
        if vertical:
            x = -i + 2 * i * (k + 1) / (slats + 1)
            parts.append(_beam((x, -i, h), (x, -i, h + back), leg_r * 0.7, 1))
        else:
            z = h + back * (k + 1) / (slats + 0.5)
            parts.append(_beam((-i, -i, z), (i, -i, z), leg_r * 0.8, 1))
    return parts


@_template(0.08)
def _t_mug(rng: np.random.Generator) -> list[Part]:
    r, h = rng.uniform(0.2, 0.3), rng.uniform(0.35, 0.6)
    body = {"profile": [[0.0, -h / 2], [r, -h / 2], [r, h / 2]], "segments": 40, "cap_top": False}
    hr = h * rng.uniform(0.25, 0.35)
    handle_m = _translate(r, 0, 0) @ _rot_x(90)
    handle = make_part("torus", {"major": hr, "minor": hr * rng.uniform(0.15, 0.25)}, handle_m, 1)
    return [make_part("revolve", body, np.eye(4), 0), handle]


@_template(0.06)
def _t_lamp(rng: np.random.Generator) -> list[Part]:
    base_r, pole_h = rng.uniform(0.12, 0.25), rng.uniform(0.5, 0.9)
    shade_lo, shade_hi, shade_h = (
        rng.uniform(0.18, 0.3),
        rng.uniform(0.06, 0.15),
        rng.uniform(0.15, 0.3),
    )
    parts = [
        make_part(
            "revolve", _cylinder_args(base_r, 0.04, 32), _translate(0, 0, 0.02), 0, bevel=0.008
        ),
        _beam((0, 0, 0.04), (0, 0, pole_h), rng.uniform(0.01, 0.025), 1),
    ]
    shade = {
        "profile": [[shade_lo, 0.0], [shade_hi, shade_h]],
        "segments": 40,
        "cap_bottom": False,
        "cap_top": False,
    }
    parts.append(make_part("revolve", shade, _translate(0, 0, pole_h - 0.6 * shade_h), 2))
    return parts


@_template(0.06)
def _t_rack(rng: np.random.Generator) -> list[Part]:
    """Ladder / towel rack / fence section: two rails and thin rungs."""
    w, h = rng.uniform(0.3, 0.6), rng.uniform(0.6, 1.0)
    rail_r = rng.uniform(0.015, 0.035)
    parts = [_beam((sx * w / 2, 0, 0), (sx * w / 2, 0, h), rail_r, 0) for sx in (-1, 1)]
    rungs = int(rng.integers(3, 8))
    for k in range(rungs):
        z = h * (k + 0.5) / rungs
        parts.append(_beam((-w / 2, 0, z), (w / 2, 0, z), rail_r * rng.uniform(0.4, 0.8), 1))
    return parts


@_template(0.07)
def _t_cluster(rng: np.random.Generator) -> list[Part]:
    """2-4 primitives stacked or side by side (toys, gadgets, knick-knacks)."""
    parts = []
    for k in range(int(rng.integers(2, 5))):
        m = (
            _translate(*rng.uniform(-0.25, 0.25, 3))
            @ _rot_z(rng.uniform(0, 360))
            @ _rot_x(rng.uniform(0, 90))
        )
        kind = rng.choice(["box", "cylinder", "sphere", "cone"])
        material = int(k % 3)
        if kind == "box":
            parts.append(
                make_part(
                    "box", {"size": rng.uniform(0.15, 0.45, 3).tolist()}, m, material, bevel=0.01
                )
            )
        elif kind == "cylinder":
            parts.append(
                make_part(
                    "revolve",
                    _cylinder_args(rng.uniform(0.05, 0.2), rng.uniform(0.15, 0.5)),
                    m,
                    material,
                )
            )
        elif kind == "cone":
            cone = {"profile": [[rng.uniform(0.1, 0.25), -0.15], [0.0, 0.15]], "segments": 32}
            parts.append(make_part("revolve", cone, m, material))
        else:
            r = rng.uniform(0.08, 0.2)
            n = 12
            prof = [
                [math.sin(math.pi * j / n) * r, -math.cos(math.pi * j / n) * r]
                for j in range(n + 1)
            ]
            parts.append(make_part("revolve", {"profile": prof, "segments": 24}, m, material))
    return parts


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rotation: upright with a random yaw most of the time (props stand), else a
    uniformly random rotation (from a normalised Gaussian quaternion)."""
    if rng.random() < 0.7:
        return _rot_z(rng.uniform(0, 360))[:3, :3]
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def sample_prop(seed: int, index: int, template: str | None = None) -> Spec:
    """The full spec of object `index` of a dataset made with `seed`.

    Returns a JSON-serialisable dict: template, parts, materials, pose (`rotation` (3, 3)
    and anisotropic `stretch` applied before normalisation), `extent` (the largest side
    of the normalised bounding box, <= 1 so the prop fits [-0.5, 0.5]^3) and `world`.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    names = list(TEMPLATES)
    weights = np.array([TEMPLATES[n][0] for n in names])
    chosen = template or str(rng.choice(names, p=weights / weights.sum()))
    if chosen not in TEMPLATES:
        raise ValueError(f"unknown template {chosen!r}; choose from {names}")
    parts = TEMPLATES[chosen][1](rng)
    n_materials = max(p["material"] for p in parts) + 1
    materials = [sample_material(rng) for _ in range(n_materials)]
    return {
        "seed": int(seed),
        "index": int(index),
        "template": chosen,
        "parts": parts,
        "materials": materials,
        "rotation": _random_rotation(rng).round(6).tolist(),
        "stretch": rng.uniform(0.85, 1.15, 3).round(4).tolist(),
        "extent": float(rng.uniform(0.75, 1.0)),
        "world": {
            "hdri": str(rng.choice(HDRIS)),
            "rotation_deg": float(rng.uniform(0, 360)),
            "strength": float(rng.uniform(0.7, 1.4)),
        },
    }
