"""Camera poses for one object: an input ring and random target views (pure numpy).

Poses are Blender/OpenGL camera-to-world matrices (camera looks down its -Z, +Y up),
which is what a Blender camera's `matrix_world` is; `engine.camera_formats.from_blender`
turns them into the engine's OpenCV cameras. Every camera looks at the origin, where the
normalised prop is centred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_INPUT_ELEVATION_DEG = 20.0
# Target elevations, as a band of the view sphere sampled uniformly by area: mostly from
# above, as artists look at props, with some views from slightly below.
TARGET_ELEVATION_RANGE_DEG = (-20.0, 70.0)
FOV_RANGE_DEG = (30.0, 50.0)
FILL_RANGE = (0.5, 0.9)
# Input rigs: "ring" (the model's training views, one elevation) or "hemisphere" (views
# spread evenly by area over the upper hemisphere, as a refinement rig would be).
INPUT_RIGS = ("ring", "hemisphere")
HEMISPHERE_ELEVATION_RANGE_DEG = (5.0, 75.0)
_GOLDEN_ANGLE_DEG = 180.0 * (3.0 - math.sqrt(5.0))


@dataclass(frozen=True)
class ViewPlan:
    """Random choices for one object's cameras, drawn before the prop's size is known.

    Attributes:
        fov_deg: horizontal field of view, shared by every view of the object.
        fill: fraction of the frame width the prop's bounding sphere spans.
        input_azimuths_deg, input_elevations_deg: (V,) the input ring.
        target_azimuths_deg, target_elevations_deg: (T,) random target poses.
    """

    fov_deg: float
    fill: float
    input_azimuths_deg: np.ndarray
    input_elevations_deg: np.ndarray
    target_azimuths_deg: np.ndarray
    target_elevations_deg: np.ndarray


def sample_view_plan(
    rng: np.random.Generator,
    n_input: int = 4,
    n_target: int = 8,
    input_elevation_deg: float = DEFAULT_INPUT_ELEVATION_DEG,
    fov_range_deg: tuple[float, float] = FOV_RANGE_DEG,
    fill_range: tuple[float, float] = FILL_RANGE,
    input_rig: str = "ring",
) -> ViewPlan:
    """Draw field of view, framing, a ring offset and the target directions.

    input_rig: "ring" (every input at `input_elevation_deg`) or "hemisphere" (a golden-angle
    spiral, even by area, over elevations HEMISPHERE_ELEVATION_RANGE_DEG). Both draw the same
    random numbers, so targets, field of view and framing do not depend on the rig.
    """
    if n_input < 1 or n_target < 0:
        raise ValueError(f"need n_input >= 1 and n_target >= 0, got {n_input}, {n_target}")
    if input_rig not in INPUT_RIGS:
        raise ValueError(f"input_rig must be one of {INPUT_RIGS}, got {input_rig!r}")
    fov = float(rng.uniform(*fov_range_deg))
    fill = float(rng.uniform(*fill_range))
    offset = float(rng.uniform(0.0, 360.0))
    in_az = (offset + 360.0 * np.arange(n_input) / n_input) % 360.0
    in_el = np.full(n_input, float(input_elevation_deg))
    if input_rig == "hemisphere":
        lo_h, hi_h = (math.sin(math.radians(e)) for e in HEMISPHERE_ELEVATION_RANGE_DEG)
        in_el = np.degrees(np.arcsin(lo_h + (hi_h - lo_h) * (np.arange(n_input) + 0.5) / n_input))
        in_az = (offset + _GOLDEN_ANGLE_DEG * np.arange(n_input)) % 360.0
    lo, hi = (math.sin(math.radians(e)) for e in TARGET_ELEVATION_RANGE_DEG)
    tgt_az = rng.uniform(0.0, 360.0, n_target)
    tgt_el = np.degrees(np.arcsin(rng.uniform(lo, hi, n_target)))
    return ViewPlan(fov, fill, in_az, in_el, tgt_az, tgt_el)


def distance_for_fill(radius: float, fov_deg: float, fill: float) -> float:
    """Camera distance at which a sphere of `radius` at the origin spans `fill` of the
    frame width: its silhouette cone has half-angle asin(r/d), and tan of that must equal
    fill * tan(fov/2)."""
    if radius <= 0 or not 0 < fill < 1:
        raise ValueError(f"need radius > 0 and 0 < fill < 1, got {radius}, {fill}")
    half = math.atan(fill * math.tan(math.radians(fov_deg) / 2))
    return radius / math.sin(half)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) OpenGL camera-to-world matrix (a Blender camera's `matrix_world`) of a camera
    at `eye` (3,) looking at `target` (3,) with world +Z up on screen."""
    eye = np.asarray(eye, dtype=np.float64)
    back = eye - np.asarray(target, dtype=np.float64)  # camera +Z points away from the target
    back /= np.linalg.norm(back)
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    if np.linalg.norm(right) < 1e-8:  # looking straight down/up: any right vector works
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
    return c2w


def look_at_origin(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    """(4, 4) OpenGL camera-to-world matrix of a camera at the given spherical position
    (azimuth from +X towards +Y, elevation above the XY plane), looking at the origin with
    world +Z up on screen."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    direction = [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
    return look_at(distance * np.array(direction), np.zeros(3))


def plan_poses(plan: ViewPlan, radius: float) -> dict[str, np.ndarray]:
    """Camera-to-world matrices {"input": (V,4,4), "target": (T,4,4)} for a prop whose
    bounding sphere about the origin has `radius`."""
    distance = distance_for_fill(radius, plan.fov_deg, plan.fill)

    def ring(az: np.ndarray, el: np.ndarray) -> np.ndarray:
        mats = [look_at_origin(a, e, distance) for a, e in zip(az, el, strict=True)]
        return np.stack(mats) if mats else np.zeros((0, 4, 4))

    return {
        "input": ring(plan.input_azimuths_deg, plan.input_elevations_deg),
        "target": ring(plan.target_azimuths_deg, plan.target_elevations_deg),
    }
