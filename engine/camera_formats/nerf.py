"""NeRF / instant-ngp / nerfstudio `transforms.json` <-> `Cameras`.

Only undistorted pinhole cameras are accepted; distorted ones are refused with a message
saying to undistort first.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_atomic
from ..cameras import CameraError, Cameras, check_rigid, rigid_inverse
from ..images import ImageTooLargeError, image_size
from ._common import flip_yz, in_file

__all__ = ["NerfFrames", "read_nerf_transforms", "write_nerf_transforms"]


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".exr")
_NERF_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_NERF_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
# Keys this module interprets (and writes); everything else at the top level is `extra`.
_NERF_CAMERA_KEYS = frozenset(
    {"frames", "fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
     "camera_model", *_NERF_DISTORTION_KEYS}
)  # fmt: skip


@dataclass
class NerfFrames:
    """A parsed transforms.json: cameras, their images (paths usable from the current
    directory) and the top-level keys that are not camera data (e.g. aabb_scale)."""

    cameras: Cameras
    image_paths: list[Path]
    extra: dict[str, Any] = field(default_factory=dict)
    mask_paths: list[Path | None] = field(default_factory=list)
    """Per frame, its foreground mask file (`mask_path`, as nerfstudio writes it) or None."""


def _json_number(value: Any, what: str) -> float:
    # bool is an int subclass in Python; `true` is never a valid coordinate.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CameraError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise CameraError(f"{what} must be finite, got {value!r}")
    return number


def _json_size(value: Any, what: str) -> int:
    number = _json_number(value, what)
    if number != int(number) or number <= 0:
        raise CameraError(f"{what} must be a positive integer, got {value!r}")
    return int(number)


def _nerf_matrix(value: Any, what: str) -> list[list[float]]:
    """A 4x4 (or 3x4, completed) row-major matrix of finite numbers."""
    if not isinstance(value, list) or len(value) not in (3, 4):
        raise CameraError(f"{what} must be a 4x4 list of lists")
    rows = []
    for row in value:
        if not isinstance(row, list) or len(row) != 4:
            raise CameraError(f"{what} must be a 4x4 list of lists")
        rows.append([_json_number(x, what) for x in row])
    if len(rows) == 3:
        rows.append([0.0, 0.0, 0.0, 1.0])
    return rows


def _nerf_lookup(levels: Sequence[dict], key: str, default: Any = None) -> Any:
    """`key` from the most specific level (frame before top level) that has it."""
    return next((level[key] for level in levels if key in level), default)


def _nerf_focal(
    levels: Sequence[dict], fl_key: str, angle_key: str, size: int, what: str
) -> float | None:
    """Focal length in pixels from the most specific level that has one, else None."""
    for level in levels:
        if fl_key in level:
            return _json_number(level[fl_key], f"{what} '{fl_key}'")
        if angle_key in level:
            angle = _json_number(level[angle_key], f"{what} '{angle_key}'")
            if not 0 < angle < math.pi:
                raise CameraError(f"{what} '{angle_key}' must be in (0, pi) radians, got {angle}")
            return 0.5 * size / math.tan(0.5 * angle)
    return None


def _nerf_check_pinhole(level: dict, what: str) -> None:
    model = level.get("camera_model", "OPENCV")
    if model not in _NERF_PINHOLE_MODELS:
        raise CameraError(f"{what}: camera_model {model!r} is not a pinhole model")
    for key in _NERF_DISTORTION_KEYS:
        if key in level and _json_number(level[key], f"{what} '{key}'") != 0.0:
            raise CameraError(
                f"{what}: non-zero lens distortion '{key}'; undistort the images first"
            )


def _resolve_image(folder: Path, file_path: Any, what: str) -> Path:
    if not isinstance(file_path, str) or not file_path:
        raise CameraError(f"{what} 'file_path' must be a non-empty string")
    path = folder / file_path
    if path.is_file():
        return path
    # NeRF-synthetic style paths ("./train/r_0") leave the extension out.
    for ext in IMAGE_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    raise CameraError(
        f"{what}: image {file_path!r} not found (also tried {', '.join(IMAGE_EXTENSIONS)})"
    )


def _optional_image(folder: Path, file_path: Any, index: int) -> Path:
    """A frame's image if it exists (extension found as `_resolve_image` does), else the
    path as written, or a name from the frame's index when there is no `file_path`."""
    if not isinstance(file_path, str) or not file_path:
        return folder / f"{index:03d}"
    try:
        return _resolve_image(folder, file_path, f"frame {index}")
    except CameraError:
        return folder / file_path


def _image_size(path: Path) -> tuple[int, int]:
    try:
        return image_size(path)  # the header only, with the views' pixel limit
    except ImageTooLargeError as err:
        raise CameraError(str(err)) from None
    except (OSError, ValueError) as err:
        raise CameraError(
            f"cannot read the size of {path} ({err}); add 'w' and 'h' to the json"
        ) from None


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CameraError(f"cannot read file: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CameraError(f"invalid JSON: {err}") from None
    except RecursionError:  # e.g. 100,000 nested '[': the parser recurses once a level
        raise CameraError("invalid JSON: nested too deeply") from None


def read_nerf_transforms(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, require_images: bool = True
) -> NerfFrames:
    """Read a NeRF/instant-ngp/nerfstudio `transforms.json` (OpenGL camera-to-world).

    Intrinsics come from `fl_x`/`fl_y` or `camera_angle_x`/`camera_angle_y` (focal = 0.5 *
    size / tan(0.5 * angle)), `cx`/`cy` (default W/2, H/2, already in the pixel-centre-at-0.5
    convention), `w`/`h` (default: the first image's size); a frame's own keys override the
    top-level ones. A frame's `mask_path` (a foreground mask image, nerfstudio's key) must
    exist and is returned in `mask_paths`. Per-frame keys other than these are dropped.

    require_images=False reads a camera path: frames need no image file (nor `file_path`;
    `image_paths` then holds the path as written, or "000", "001", ... without one), and
    `w`/`h` must be given wherever an image to take the size from is missing.
    """
    path = Path(path)
    with in_file(path):
        data = _load_json(path)
        if not isinstance(data, dict):
            raise CameraError("top level must be a JSON object")
        frames = data.get("frames")
        if not isinstance(frames, list):
            raise CameraError("missing 'frames' list")
        if not frames:
            raise CameraError("no frames")
        _nerf_check_pinhole(data, "top level")
        matrices, images, intrinsics, sizes = [], [], [], []
        masks: list[Path | None] = []
        default_size = None
        for i, frame in enumerate(frames):
            what = f"frame {i}"
            if not isinstance(frame, dict):
                raise CameraError(f"{what} must be a JSON object")
            if "transform_matrix" not in frame or (require_images and "file_path" not in frame):
                raise CameraError(f"{what} is missing 'transform_matrix' or 'file_path'")
            _nerf_check_pinhole(frame, what)
            matrices.append(_nerf_matrix(frame["transform_matrix"], f"{what} 'transform_matrix'"))
            if "mask_path" in frame:
                masks.append(_resolve_image(path.parent, frame["mask_path"], f"{what} mask"))
            else:
                masks.append(None)
            if require_images:
                images.append(_resolve_image(path.parent, frame["file_path"], what))
            else:
                images.append(_optional_image(path.parent, frame.get("file_path"), i))
            levels = (frame, data)
            size = [_nerf_lookup(levels, "w"), _nerf_lookup(levels, "h")]
            if None in size:
                if default_size is None:
                    if not images[0].is_file():
                        raise CameraError(
                            f"{what} has no 'w'/'h' and frame 0's image {images[0].name!r} "
                            "is not there to take the size from; add 'w' and 'h' to the json"
                        )
                    default_size = _image_size(images[0])
                size = [s if s is not None else d for s, d in zip(size, default_size, strict=True)]
            w, h = _json_size(size[0], f"{what} 'w'"), _json_size(size[1], f"{what} 'h'")
            if sizes and (w, h) != sizes[0]:
                raise CameraError(
                    f"{what} is {w}x{h} pixels but frame 0 is {sizes[0][0]}x{sizes[0][1]}; "
                    "all frames must share one image size"
                )
            sizes.append((w, h))
            fx = _nerf_focal(levels, "fl_x", "camera_angle_x", w, what)
            if fx is None:
                raise CameraError(f"{what}: missing 'fl_x' or 'camera_angle_x'")
            fy = _nerf_focal(levels, "fl_y", "camera_angle_y", h, what)
            fy = fx if fy is None else fy
            cx = _json_number(_nerf_lookup(levels, "cx", w / 2), f"{what} 'cx'")
            cy = _json_number(_nerf_lookup(levels, "cy", h / 2), f"{what} 'cy'")
            if fx <= 0 or fy <= 0:
                raise CameraError(f"{what}: focal lengths must be positive")
            intrinsics.append((fx, fy, cx, cy))
        c2w_gl = torch.tensor(matrices, dtype=torch.float64)
        check_rigid(c2w_gl, "transform_matrix of frame")
        w2c = rigid_inverse(c2w_gl @ flip_yz())
        k = torch.tensor(intrinsics, dtype=torch.float64)
        cameras = Cameras(w2c, k[:, 0], k[:, 1], k[:, 2], k[:, 3], *sizes[0]).to(dtype=dtype)
        # Finite float64 values beyond float32's range (cy = -1e308) become inf when cast.
        cameras.validate()
    extra = {key: value for key, value in data.items() if key not in _NERF_CAMERA_KEYS}
    return NerfFrames(cameras, images, extra, masks)


def _relative_posix(target: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(os.path.abspath(target), os.path.abspath(start))).as_posix()
    except ValueError:  # different drives on Windows: no relative path exists
        return Path(os.path.abspath(target)).as_posix()


def write_nerf_transforms(
    path: str | os.PathLike,
    cameras: Cameras,
    image_paths: Sequence[str | os.PathLike],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `transforms.json` in the fl_x/fl_y/cx/cy/w/h form plus camera_angle_x/y.

    Shared intrinsics go to the top level, differing ones into each frame. Image paths
    (relative ones are taken from the current directory, like any path) are stored relative
    to the json's folder. `extra` keys are added at the top level and may not clash with
    camera keys. Everything is checked before anything is written.
    """
    path = Path(path)
    with in_file(path):
        if not isinstance(cameras, Cameras):
            raise CameraError(f"expected Cameras, got {type(cameras).__name__}")
        cameras.validate()
        image_paths = list(image_paths)
        if len(image_paths) != len(cameras):
            raise CameraError(f"{len(image_paths)} image paths for {len(cameras)} cameras")
        if not image_paths:
            raise CameraError("no cameras to write")
        extra = dict(extra or {})
        clash = sorted(set(extra) & _NERF_CAMERA_KEYS)
        if clash:
            raise CameraError(f"extra keys clash with camera keys: {clash}")
        cams = cameras.to(device="cpu", dtype=torch.float64)
        width, height = cams.width, cams.height
        c2w_gl = cams.camera_to_world @ flip_yz()
        per_camera = [
            {"fl_x": float(fx), "fl_y": float(fy), "cx": float(cx), "cy": float(cy)}
            for fx, fy, cx, cy in zip(cams.fx, cams.fy, cams.cx, cams.cy, strict=True)
        ]
        shared = all(k == per_camera[0] for k in per_camera)
        top: dict[str, Any] = {}
        if shared:
            fx, fy = per_camera[0]["fl_x"], per_camera[0]["fl_y"]
            top["camera_angle_x"] = 2.0 * math.atan(0.5 * width / fx)
            top["camera_angle_y"] = 2.0 * math.atan(0.5 * height / fy)
            top.update(per_camera[0])
        top.update({"w": width, "h": height, **extra})
        top["frames"] = [
            {
                "file_path": _relative_posix(Path(image), path.parent),
                "transform_matrix": c2w_gl[i].tolist(),
                **({} if shared else per_camera[i]),
            }
            for i, image in enumerate(image_paths)
        ]
        try:
            text = json.dumps(top, indent=2, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise CameraError(f"extra is not JSON-serialisable: {err}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8") + b"\n")
