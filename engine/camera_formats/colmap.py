"""COLMAP sparse models (binary or text) <-> `Cameras`.

Only undistorted pinhole cameras are accepted; distorted ones are refused with a message
saying to undistort first (colmap image_undistorter). points3D is never read.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_atomic
from ..cameras import CameraError, Cameras, as_size
from ..rotations import matrix_to_quaternion, quaternion_to_matrix
from ._common import in_file

__all__ = ["ColmapModel", "colmap_to_cameras", "read_colmap", "write_colmap"]


# model id -> (name, number of params), as in COLMAP's src/colmap/sensor/models.h.
_COLMAP_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}  # fmt: skip
_COLMAP_NUM_PARAMS = {name: count for name, count in _COLMAP_MODELS.values()}
_COLMAP_MODEL_IDS = {name: model_id for model_id, (name, _) in _COLMAP_MODELS.items()}
# Pinhole models: indices of (fx, fy, cx, cy) in params, then of the distortion terms,
# which must be zero for the camera to be a plain pinhole.
_COLMAP_PINHOLE: dict[str, tuple[tuple[int, int, int, int], tuple[int, ...]]] = {
    "SIMPLE_PINHOLE": ((0, 0, 1, 2), ()),
    "PINHOLE": ((0, 1, 2, 3), ()),
    "SIMPLE_RADIAL": ((0, 0, 1, 2), (3,)),
    "RADIAL": ((0, 0, 1, 2), (3, 4)),
    "OPENCV": ((0, 1, 2, 3), (4, 5, 6, 7)),
    "FULL_OPENCV": ((0, 1, 2, 3), tuple(range(4, 12))),
}
# COLMAP prints its zeros exactly; this only forgives rounding noise in hand-made files.
_ZERO_DISTORTION_TOL = 1e-9


@dataclass
class ColmapModel:
    """A COLMAP sparse model's cameras and images (points are not kept).

    cameras: id -> {"model": str, "width": int, "height": int, "params": list[float]}
    images: id -> {"name": str, "camera_id": int, "qvec": list[float] (w, x, y, z),
            "tvec": list[float]}; qvec/tvec are world-to-camera, OpenCV axes.
    """

    cameras: dict[int, dict[str, Any]]
    images: dict[int, dict[str, Any]]


def _pinhole_params(camera_id: int, camera: dict[str, Any]) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a COLMAP camera; CameraError if it is not an undistorted pinhole."""
    what = f"camera {camera_id}"
    model = camera.get("model")
    if model not in _COLMAP_PINHOLE:
        raise CameraError(
            f"{what}: unsupported camera model {model!r}; undistort the images first "
            "(colmap image_undistorter gives PINHOLE)"
        )
    params = [float(p) for p in camera.get("params", ())]
    if len(params) != _COLMAP_NUM_PARAMS[model]:
        raise CameraError(
            f"{what}: {model} needs {_COLMAP_NUM_PARAMS[model]} params, got {len(params)}"
        )
    if not all(math.isfinite(p) for p in params):
        raise CameraError(f"{what}: params must be finite, got {params}")
    (ifx, ify, icx, icy), distortion = _COLMAP_PINHOLE[model]
    if any(abs(params[j]) > _ZERO_DISTORTION_TOL for j in distortion):
        raise CameraError(
            f"{what}: {model} with non-zero distortion {[params[j] for j in distortion]}; "
            "undistort the images first (colmap image_undistorter)"
        )
    as_size(camera.get("width"), f"{what} width")
    as_size(camera.get("height"), f"{what} height")
    fx, fy = params[ifx], params[ify]
    if fx <= 0 or fy <= 0:
        raise CameraError(f"{what}: focal lengths must be positive, got {fx}, {fy}")
    return fx, fy, params[icx], params[icy]


class _BinaryReader:
    """Bounds-checked little-endian reads, so truncated or garbage files fail cleanly."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if size > self.remaining():
            raise CameraError(f"truncated file: needs {size} bytes at offset {self.pos}")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def count(self, min_record_bytes: int, what: str) -> int:
        """A uint64 count, checked against the bytes left before anyone allocates for it."""
        (n,) = self.read("Q")
        if n * min_record_bytes > self.remaining():
            raise CameraError(f"{what} count {n} does not fit in the {self.remaining()} bytes left")
        return n

    def skip(self, size: int) -> None:
        if size > self.remaining():
            raise CameraError(f"truncated file: needs {size} bytes at offset {self.pos}")
        self.pos += size

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise CameraError(f"unterminated string at offset {self.pos}")
        raw, self.pos = self.data[self.pos : end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CameraError(f"image name at offset {self.pos} is not UTF-8") from None

    def finish(self) -> None:
        if self.remaining():
            raise CameraError(f"{self.remaining()} unexpected bytes at the end")


def _check_unique(table: dict, key: int, what: str) -> None:
    if key in table:
        raise CameraError(f"duplicate {what} id {key}")


def _read_cameras_bin(data: bytes) -> dict[int, dict[str, Any]]:
    reader = _BinaryReader(data)
    cameras: dict[int, dict[str, Any]] = {}
    for _ in range(reader.count(24, "camera")):
        camera_id, model_id, width, height = reader.read("IiQQ")
        if model_id not in _COLMAP_MODELS:
            raise CameraError(f"camera {camera_id}: unknown camera model id {model_id}")
        name, num_params = _COLMAP_MODELS[model_id]
        _check_unique(cameras, camera_id, "camera")
        cameras[camera_id] = {
            "model": name, "width": width, "height": height,
            "params": list(reader.read(f"{num_params}d")),
        }  # fmt: skip
    reader.finish()
    return cameras


def _read_images_bin(data: bytes) -> dict[int, dict[str, Any]]:
    reader = _BinaryReader(data)
    images: dict[int, dict[str, Any]] = {}
    # id + qvec + tvec + camera id + empty name + point count
    for _ in range(reader.count(4 + 56 + 4 + 1 + 8, "image")):
        image_id, *pose, camera_id = reader.read("I7dI")
        name = reader.cstring()
        num_points = reader.count(24, f"image {image_id} point")
        reader.skip(24 * num_points)  # x, y, point3D id: not needed for cameras
        _check_unique(images, image_id, "image")
        images[image_id] = {
            "name": name, "camera_id": camera_id, "qvec": pose[:4], "tvec": pose[4:],
        }  # fmt: skip
    reader.finish()
    return images


def _text_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for every line, comments and blanks included."""
    for number, line in enumerate(text.splitlines(), start=1):
        yield number, line.strip()


def _parse_numbers(tokens: Sequence[str], kind: type, line: int) -> list:
    try:
        values = [kind(t) for t in tokens]
    except ValueError:
        raise CameraError(f"line {line}: expected numbers, got {' '.join(tokens)!r}") from None
    if kind is float and not all(math.isfinite(v) for v in values):
        raise CameraError(f"line {line}: non-finite number in {' '.join(tokens)!r}")
    return values


def _read_cameras_txt(text: str) -> dict[int, dict[str, Any]]:
    cameras: dict[int, dict[str, Any]] = {}
    for line, content in _text_lines(text):
        if not content or content.startswith("#"):
            continue
        tokens = content.split()
        if len(tokens) < 4:
            raise CameraError(f"line {line}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        model = tokens[1]
        if model not in _COLMAP_NUM_PARAMS:
            raise CameraError(f"line {line}: unknown camera model {model!r}")
        if len(tokens) != 4 + _COLMAP_NUM_PARAMS[model]:
            raise CameraError(
                f"line {line}: {model} needs {_COLMAP_NUM_PARAMS[model]} params, "
                f"got {len(tokens) - 4}"
            )
        camera_id, width, height = _parse_numbers([tokens[0], *tokens[2:4]], int, line)
        _check_unique(cameras, camera_id, "camera")
        cameras[camera_id] = {
            "model": model, "width": width, "height": height,
            "params": _parse_numbers(tokens[4:], float, line),
        }  # fmt: skip
    return cameras


def _read_images_txt(text: str) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    lines = _text_lines(text)
    for line, content in lines:
        if not content or content.startswith("#"):
            continue
        # NAME is the rest of the line; the next line (points, maybe empty) belongs to this
        # image and is skipped whatever it holds, as COLMAP's own reader does.
        tokens = content.split(maxsplit=9)
        if len(tokens) != 10:
            raise CameraError(f"line {line}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        image_id, camera_id = _parse_numbers([tokens[0], tokens[8]], int, line)
        pose = _parse_numbers(tokens[1:8], float, line)
        _check_unique(images, image_id, "image")
        images[image_id] = {
            "name": tokens[9], "camera_id": camera_id, "qvec": pose[:4], "tvec": pose[4:],
        }  # fmt: skip
        next(lines, None)
    return images


def _find_colmap_model(folder: Path) -> tuple[Path, str]:
    """The folder holding cameras/images files and their extension (binary preferred, as
    COLMAP does)."""
    for candidate in (folder, folder / "sparse" / "0", folder / "sparse"):
        for ext in (".bin", ".txt"):
            if (candidate / f"cameras{ext}").is_file() and (candidate / f"images{ext}").is_file():
                return candidate, ext
    raise CameraError(
        f"{folder}: no COLMAP model (cameras.bin + images.bin or cameras.txt + images.txt) "
        "in this folder, sparse/0 or sparse"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CameraError(f"cannot read file: {err}") from None


def read_colmap(folder: str | os.PathLike) -> ColmapModel:
    """Read a COLMAP sparse model (binary or text) from `folder`, `folder/sparse/0` or
    `folder/sparse`. points3D is not read, so a missing or damaged one does not matter.

    Every camera must be an undistorted pinhole (see `_COLMAP_PINHOLE`) and every image must
    refer to a camera in the model.
    """
    model_dir, ext = _find_colmap_model(Path(folder))
    cameras_path, images_path = model_dir / f"cameras{ext}", model_dir / f"images{ext}"
    binary = ext == ".bin"
    with in_file(cameras_path):
        data = _read_bytes(cameras_path)
        cameras = _read_cameras_bin(data) if binary else _read_cameras_txt(_decode(data))
        for camera_id, camera in cameras.items():
            _pinhole_params(camera_id, camera)
    with in_file(images_path):
        data = _read_bytes(images_path)
        images = _read_images_bin(data) if binary else _read_images_txt(_decode(data))
        for image_id, image in images.items():
            if image["camera_id"] not in cameras:
                raise CameraError(
                    f"image {image_id} ({image['name']}) refers to camera {image['camera_id']}, "
                    f"which is not in {cameras_path.name}"
                )
            if not all(math.isfinite(v) for v in (*image["qvec"], *image["tvec"])):
                raise CameraError(f"image {image_id}: non-finite pose")
            if math.hypot(*image["qvec"]) < 1e-8:
                raise CameraError(f"image {image_id}: zero quaternion")
    return ColmapModel(cameras, images)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CameraError(f"not a UTF-8 text file: {err}") from None


def colmap_to_cameras(
    model: ColmapModel,
    image_names: Sequence[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Cameras, list[str]]:
    """Cameras for the model's images, sorted by name, or in the order of `image_names`.

    COLMAP puts the upper-left pixel's centre at (0.5, 0.5), our convention, so principal
    points are used unchanged.
    """
    by_name: dict[str, dict[str, Any]] = {}
    for image in model.images.values():
        if image["name"] in by_name:
            raise CameraError(f"image name {image['name']!r} appears twice")
        by_name[image["name"]] = image
    names = sorted(by_name) if image_names is None else list(image_names)
    if not names:
        raise CameraError("the COLMAP model has no images")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CameraError(f"images not in the COLMAP model: {missing[:5]}")
    quats, trans, intrinsics, size = [], [], [], None
    for name in names:
        image = by_name[name]
        camera_id = image["camera_id"]
        if camera_id not in model.cameras:
            raise CameraError(f"image {name!r} refers to missing camera {camera_id}")
        camera = model.cameras[camera_id]
        intrinsics.append(_pinhole_params(camera_id, camera))
        image_size = (int(camera["width"]), int(camera["height"]))
        if size is None:
            size = (image_size, name)
        elif image_size != size[0]:
            raise CameraError(
                f"image {name!r} is {image_size[0]}x{image_size[1]} but {size[1]!r} is "
                f"{size[0][0]}x{size[0][1]}; all images must share one size"
            )
        quats.append([float(q) for q in image["qvec"]])
        trans.append([float(t) for t in image["tvec"]])
    count = len(names)
    w2c = torch.zeros(count, 4, 4, dtype=torch.float64)
    w2c[:, :3, :3] = quaternion_to_matrix(torch.tensor(quats, dtype=torch.float64))
    w2c[:, :3, 3] = torch.tensor(trans, dtype=torch.float64)
    w2c[:, 3, 3] = 1.0
    k = torch.tensor(intrinsics, dtype=torch.float64)
    cameras = Cameras(w2c, k[:, 0], k[:, 1], k[:, 2], k[:, 3], *size[0]).to(dtype=dtype)
    # Finite doubles beyond float32's range (a focal of 1e300) become inf when cast.
    cameras.validate()
    return cameras, names


def _check_colmap_names(names: Sequence[str], count: int) -> list[str]:
    names = list(names)
    if len(names) != count:
        raise CameraError(f"{len(names)} names for {count} cameras")
    if not names:
        raise CameraError("no cameras to write")
    for name in names:
        # COLMAP's text reader splits on spaces and its binary one stops at NUL.
        if not isinstance(name, str) or not name or any(c.isspace() or c == "\0" for c in name):
            raise CameraError(f"image name {name!r} must be a non-empty string without whitespace")
    if len(set(names)) != len(names):
        raise CameraError("image names must be unique")
    return names


def _colmap_payloads(cameras: Cameras, names: list[str], binary: bool) -> dict[str, bytes]:
    """File name -> content of a PINHOLE model, one COLMAP camera per image."""
    cams = cameras.to(device="cpu", dtype=torch.float64)
    quats = matrix_to_quaternion(cams.world_to_camera[:, :3, :3]).tolist()
    trans = cams.world_to_camera[:, :3, 3].tolist()
    intrinsics = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], dim=-1).tolist()
    width, height = cams.width, cams.height
    pinhole = _COLMAP_MODEL_IDS["PINHOLE"]
    if binary:
        cam_bytes = [struct.pack("<Q", len(names))]
        img_bytes = [struct.pack("<Q", len(names))]
        for i, name in enumerate(names):
            cam_bytes.append(struct.pack("<IiQQ4d", i + 1, pinhole, width, height, *intrinsics[i]))
            img_bytes.append(struct.pack("<I7dI", i + 1, *quats[i], *trans[i], i + 1))
            img_bytes.append(name.encode("utf-8") + b"\0" + struct.pack("<Q", 0))
        return {
            "cameras.bin": b"".join(cam_bytes),
            "images.bin": b"".join(img_bytes),
            "points3D.bin": struct.pack("<Q", 0),  # COLMAP refuses a model without one
        }
    fmt = lambda values: " ".join(repr(float(v)) for v in values)  # noqa: E731
    cam_lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(names)}",
    ]
    img_lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(names)}, mean observations per image: 0",
    ]
    for i, name in enumerate(names):
        cam_lines.append(f"{i + 1} PINHOLE {width} {height} {fmt(intrinsics[i])}")
        img_lines.append(f"{i + 1} {fmt(quats[i])} {fmt(trans[i])} {i + 1} {name}")
        img_lines.append("")  # no 2D points
    points = "# 3D point list with one line of data per point:\n# Number of points: 0\n"
    return {
        "cameras.txt": ("\n".join(cam_lines) + "\n").encode("utf-8"),
        "images.txt": ("\n".join(img_lines) + "\n").encode("utf-8"),
        "points3D.txt": points.encode("utf-8"),
    }


def write_colmap(
    folder: str | os.PathLike, cameras: Cameras, names: Sequence[str], binary: bool
) -> None:
    """Write `cameras`, `images` and an empty `points3D` (PINHOLE, one camera per image).

    Refuses (before writing anything) bad cameras or names, and a folder that already holds
    a model in the other format, since readers would pick the stale binary one.
    """
    folder = Path(folder)
    with in_file(folder):
        if not isinstance(cameras, Cameras):
            raise CameraError(f"expected Cameras, got {type(cameras).__name__}")
        cameras.validate()
        names = _check_colmap_names(names, len(cameras))
        other = ".txt" if binary else ".bin"
        stale = [f"{s}{other}" for s in ("cameras", "images") if (folder / f"{s}{other}").exists()]
        if stale:
            raise CameraError(f"already holds {stale}; remove them or write the same format")
        payloads = _colmap_payloads(cameras, names, binary)
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, data in payloads.items():
        write_atomic(folder / file_name, data)
