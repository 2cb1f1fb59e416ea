"""glTF 2.0 `.glb` / `.gltf` with `KHR_gaussian_splatting` (Khronos draft; DESIGN.md §6).

One mesh with one POINTS primitive (mode 0) whose attributes are, all float32 except COLOR_0:

    POSITION                                   VEC3  (with the min / max glTF requires)
    COLOR_0                                    VEC4 uint16 normalised: fallback colour for
                                               viewers without the extension, LINEAR as
                                               glTF defines COLOR_0: the sRGB decoding of
                                               clamp(0.5 + C0 · dc); alpha = opacity
    KHR_gaussian_splatting:ROTATION            VEC4  unit quaternion x y z w
    KHR_gaussian_splatting:SCALE               VEC3  LINEAR scales exp(log_scale) (the draft
                                               moved from log to linear, glTF issue #2563)
    KHR_gaussian_splatting:OPACITY             SCALAR sigmoid(opacity_logit) in [0, 1]
    KHR_gaussian_splatting:SH_DEGREE_l_COEF_n  VEC3  RGB of SH coefficient n of degree l,
                                               l = 0 .. degree, n = 0 .. 2l

and the primitive's extension object {kernel: ellipse, colorSpace: srgb_rec709_display
(the SH evaluate to sRGB display values, as in 3DGS), sortingMethod: cameraDistance,
projection: perspective}; `extensionsUsed` lists it.

Axes: the writer stores and the reader returns the values as given, the file's frame;
`engine.io.save` / `load` turn our Z-up world into glTF's Y-up, (x, y, z) -> (x, z, -y), and
back (engine/io/axes.py).

`.gltf` is written with its buffer in a sidecar `<name>.bin` beside it (URI percent-encoded;
the .bin is written first, each file atomically), or embedded as a base64
`data:application/octet-stream` URI with `embed=True`. The reader takes either, reads every
POINTS primitive with the extension (concatenated; node transforms are ignored) and reads
the splat attributes from float32 accessors only (no KHR_mesh_quantization, meshopt or
sparse accessors; COLOR_0 is not read).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_atomic
from ..gaussians import SH_C0, Gaussians, GaussiansError
from .limits import check_gaussian_count, gaussian_arrays, read_regular_file

__all__ = ["EXTENSION", "GltfFormatError", "read_gltf", "write_gltf", "srgb_to_linear"]

EXTENSION = "KHR_gaussian_splatting"
GLB_MAGIC = 0x46546C67
JSON_CHUNK = 0x4E4F534A
BIN_CHUNK = 0x004E4942
FLOAT, UNSIGNED_SHORT = 5126, 5123
_COMPONENTS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
_DATA_URI_PREFIXES = (
    "data:application/octet-stream;base64,",
    "data:application/gltf-buffer;base64,",
)


class GltfFormatError(ValueError):
    """A file is not a splat glTF this module can read; the message names the file."""


class _Problem(Exception):
    """Internal: what is wrong with a file; `read_gltf` adds the path."""


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function's inverse (IEC 61966-2-1), elementwise on [0, 1]."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# ============================================================================ writing


def write_gltf(path: str | os.PathLike[str], gaussians: Gaussians, *, embed: bool = False) -> None:
    """Write `gaussians` (the file's values: see the module doc on axes) as `.glb`, or as
    `.gltf` JSON with its buffer in a sidecar `<name>.bin` (`embed=True`: base64 inside
    the JSON). Each file is written atomically; the .bin before the .gltf."""
    path = Path(path)
    binary = path.suffix.lower() == ".glb"
    gaussians.validate()
    g = gaussians.detach().to("cpu", torch.float64)
    n, degree = len(g), g.sh_degree
    if n == 0:
        raise ValueError("glTF accessors need count >= 1: cannot write zero Gaussians")
    sh = g.sh.numpy()
    with np.errstate(over="ignore", under="ignore"):
        scales = np.exp(g.log_scales.numpy()).astype(np.float32)
    if not (np.isfinite(scales) & (scales > 0)).all():
        raise ValueError("a scale exp(log_scale) over/underflows float32; cannot write glTF")
    alpha = torch.sigmoid(g.opacity_logits).numpy()
    # COLOR_0 is linear in glTF; 3DGS colours (and so the SH's DC) are sRGB display values.
    rgb = srgb_to_linear(np.clip(0.5 + SH_C0 * sh[:, 0], 0.0, 1.0))
    rgba = np.concatenate([rgb, alpha[:, None]], axis=1)
    q = g.quats.numpy() / np.linalg.norm(g.quats.numpy(), axis=1, keepdims=True)
    positions = g.means.numpy().astype(np.float32)
    if not np.isfinite(positions).all():
        raise ValueError("positions overflow float32; cannot write glTF")
    attributes: list[tuple[str, np.ndarray]] = [
        ("POSITION", positions),
        ("COLOR_0", np.round(rgba * 65535.0).astype("<u2")),
        (f"{EXTENSION}:ROTATION", np.concatenate([q[:, 1:], q[:, :1]], axis=1)),
        (f"{EXTENSION}:SCALE", scales),
        (f"{EXTENSION}:OPACITY", alpha),
    ]
    for band in range(degree + 1):
        for c in range(2 * band + 1):
            attributes.append((f"{EXTENSION}:SH_DEGREE_{band}_COEF_{c}", sh[:, band * band + c]))
    blob, views, accessors, names = bytearray(), [], [], {}
    for i, (name, values) in enumerate(attributes):
        arr = np.ascontiguousarray(values.astype("<u2" if name == "COLOR_0" else "<f4"))
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": arr.nbytes})
        views[-1]["target"] = 34962  # ARRAY_BUFFER
        blob += arr.tobytes()
        blob += b"\0" * (-len(blob) % 4)
        width = 1 if arr.ndim == 1 else arr.shape[1]
        acc: dict[str, Any] = {
            "bufferView": i,
            "componentType": UNSIGNED_SHORT if name == "COLOR_0" else FLOAT,
            "count": n,
            "type": {1: "SCALAR", 3: "VEC3", 4: "VEC4"}[width],
        }
        if name == "COLOR_0":
            acc["normalized"] = True
        if name == "POSITION":
            acc["min"] = [float(v) for v in arr.min(axis=0)]
            acc["max"] = [float(v) for v in arr.max(axis=0)]
        accessors.append(acc)
        names[name] = i
    buffer: dict[str, Any] = {"byteLength": len(blob)}
    sidecar = None if binary or embed else path.with_suffix(".bin")
    if sidecar is not None:
        buffer["uri"] = urllib.parse.quote(sidecar.name)  # a URI: spaces etc. escaped
    elif not binary:
        buffer["uri"] = _DATA_URI_PREFIXES[0] + base64.b64encode(bytes(blob)).decode("ascii")
    doc = {
        "asset": {"version": "2.0", "generator": "engine.io.gltf"},
        "extensionsUsed": [EXTENSION],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [
            {
                "primitives": [
                    {
                        "attributes": names,
                        "mode": 0,
                        "extensions": {
                            EXTENSION: {
                                "kernel": "ellipse",
                                "colorSpace": "srgb_rec709_display",
                                "sortingMethod": "cameraDistance",
                                "projection": "perspective",
                            }
                        },
                    }
                ]
            }
        ],
        "buffers": [buffer],
        "bufferViews": views,
        "accessors": accessors,
    }
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    if not binary:
        if sidecar is not None:  # first: a reader never finds the .gltf without its buffer
            write_atomic(sidecar, [bytes(blob)])
        write_atomic(path, [text])
        return
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    write_atomic(
        path,
        [
            struct.pack("<III", GLB_MAGIC, 2, total),
            struct.pack("<II", len(text), JSON_CHUNK),
            text,
            struct.pack("<II", len(blob), BIN_CHUNK),
            bytes(blob),
        ],
    )


# ============================================================================ reading


def read_gltf(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Gaussians:
    """Read the `KHR_gaussian_splatting` primitives of a `.glb` or `.gltf` file, in the
    file's own axes (glTF's Y-up for files that follow the specification).

    Raises `GltfFormatError` for anything malformed and `OSError` if unreadable.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        doc, glb_bin = _split_glb(data) if data[:4] == b"glTF" else (_json(data), None)
        return _decode(doc, glb_bin, path, device)
    except _Problem as e:
        raise GltfFormatError(f"{path}: {e}") from None


def _json(data: bytes) -> dict:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _Problem(f"the glTF JSON does not parse ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise _Problem("the glTF JSON is not an object")
    return doc


def _split_glb(data: bytes) -> tuple[dict, memoryview | None]:
    if len(data) < 20:
        raise _Problem("too short for a GLB header (truncated file?)")
    magic, version, length = struct.unpack_from("<III", data)
    if magic != GLB_MAGIC or version != 2:
        raise _Problem(f"not a GLB version 2 (magic {magic:#x}, version {version})")
    if length > len(data):
        raise _Problem(f"the GLB header declares {length} bytes but the file has {len(data)}")
    json_len, json_type = struct.unpack_from("<II", data, 12)
    if json_type != JSON_CHUNK or 20 + json_len > length:
        raise _Problem("the first GLB chunk is not a JSON chunk that fits the file")
    doc = _json(data[20 : 20 + json_len])
    offset = 20 + json_len + (-json_len % 4)
    if offset + 8 > length:
        return doc, None
    bin_len, bin_type = struct.unpack_from("<II", data, offset)
    if bin_type != BIN_CHUNK or offset + 8 + bin_len > length:
        raise _Problem("the second GLB chunk is not a BIN chunk that fits the file")
    return doc, memoryview(data)[offset + 8 : offset + 8 + bin_len]


def _field(obj: Any, key: str, kind: type, where: str, default: Any = None) -> Any:
    if not isinstance(obj, dict):
        raise _Problem(f"{where} is not a JSON object")
    value = obj.get(key, default)
    if value is None and default is None:
        raise _Problem(f"{where} has no {key!r}")
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok or (kind is int and value < 0):
        raise _Problem(f"{where}.{key} is not a valid {kind.__name__}")
    return value


def _item(doc: dict, key: str, index: int) -> dict:
    items = _field(doc, key, list, "the glTF", [])
    if index >= len(items) or not isinstance(items[index], dict):
        raise _Problem(f"{key}[{index}] does not exist")
    return items[index]


def _buffer(
    doc: dict, index: int, glb_bin: memoryview | None, path: Path, cache: dict
) -> memoryview:
    if index in cache:
        return cache[index]
    buf = _item(doc, "buffers", index)
    length = _buffer_length(doc, index)
    uri = buf.get("uri")
    if uri is None:
        if glb_bin is None or index != 0:
            raise _Problem(f"buffers[{index}] has no uri and there is no GLB BIN chunk")
        data = glb_bin
    elif not isinstance(uri, str):
        raise _Problem(f"buffers[{index}].uri is not a string")
    elif uri.startswith("data:"):
        prefix = next((p for p in _DATA_URI_PREFIXES if uri.startswith(p)), None)
        if prefix is None:
            raise _Problem(f"buffers[{index}] has an unsupported data URI")
        try:
            data = base64.b64decode(uri[len(prefix) :], validate=True)
        except (binascii.Error, ValueError):
            raise _Problem(f"buffers[{index}] has invalid base64") from None
    else:
        data = _sidecar(uri, index, length, path)
    if len(data) < length:
        raise _Problem(f"buffers[{index}] declares {length} bytes but has {len(data)}")
    cache[index] = memoryview(data)[:length]  # a view: the file's bytes are held once
    return cache[index]


def _sidecar(uri: str, index: int, length: int, path: Path) -> bytes:
    """The first `length` bytes of the buffer file `uri` names, beside `path`."""
    shown = repr(uri[:80])
    uri = urllib.parse.unquote(uri)  # a URI: "my%20prop.bin" names "my prop.bin"
    if "\0" in uri:
        raise _Problem(f"buffers[{index}].uri {shown} holds a NUL byte")
    name = Path(uri)
    if ":" in uri or name.is_absolute() or ".." in name.parts:
        raise _Problem(f"buffers[{index}].uri {shown} is not a relative file name")
    # Only a regular file inside the glTF's folder, and only the bytes declared: a FIFO,
    # /dev/zero or a symlink leading elsewhere must not hang, exhaust memory or leak data.
    try:
        return read_regular_file(path.parent / name, length, path.parent)
    except ValueError as e:
        raise _Problem(f"buffer file {shown}: {e}") from None
    except OSError as e:
        raise _Problem(f"cannot read buffer file {shown}: {e.strerror or e}") from None


def _buffer_length(doc: dict, index: int) -> int:
    """A buffer's declared byteLength (checked against its data when the buffer is read)."""
    return _field(_item(doc, "buffers", index), "byteLength", int, f"buffers[{index}]")


@dataclass
class _Layout:
    """Where an accessor's `count` elements of `width` float32 lie in buffer `buffer`."""

    count: int
    width: int
    buffer: int
    offset: int
    stride: int


def _layout(doc: dict, index: Any, kind: str) -> _Layout:
    """An accessor's layout, checked to fit its view and its buffer's declared byteLength."""
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise _Problem(f"attribute accessor index {index!r} is invalid")
    where = f"accessors[{index}]"
    acc = _item(doc, "accessors", index)
    if acc.get("type") != kind or acc.get("componentType") != FLOAT or "sparse" in acc:
        raise _Problem(f"{where} must be a non-sparse float {kind} accessor")
    count = _field(acc, "count", int, where)
    view_index = _field(acc, "bufferView", int, where)
    view = _item(doc, "bufferViews", view_index)
    vwhere = f"bufferViews[{view_index}]"
    buffer = _field(view, "buffer", int, vwhere)
    buffer_length = _buffer_length(doc, buffer)
    v_off = _field(view, "byteOffset", int, vwhere, 0)
    v_len = _field(view, "byteLength", int, vwhere)
    width = _COMPONENTS[kind]
    stride = _field(view, "byteStride", int, vwhere, 4 * width)
    a_off = _field(acc, "byteOffset", int, where, 0)
    if count == 0:
        raise _Problem(f"{where} has count 0")
    if v_off + v_len > buffer_length:
        raise _Problem(f"{vwhere} runs past the end of its buffer")
    if stride < 4 * width or stride % 4 or a_off % 4 or v_off % 4:
        raise _Problem(f"{vwhere} / {where} have a bad stride or misaligned offset")
    if a_off + stride * (count - 1) + 4 * width > v_len:
        raise _Problem(f"{where}: {count} elements do not fit its buffer view")
    return _Layout(count, width, buffer, v_off + a_off, stride)


def _read(layout: _Layout, data: memoryview) -> np.ndarray:
    """(count, width) float64 values of an accessor whose buffer holds `data`."""
    return np.ndarray(
        (layout.count, layout.width),
        dtype="<f4",
        buffer=data,
        offset=layout.offset,
        strides=(layout.stride, 4),
    ).astype(np.float64)


def _attribute_kinds(attrs: dict) -> dict[str, str]:
    """Attribute name -> accessor type a splat primitive with `attrs` must have, SH last."""
    degree = 0
    while degree < 3 and f"{EXTENSION}:SH_DEGREE_{degree + 1}_COEF_0" in attrs:
        degree += 1
    kinds = {
        "POSITION": "VEC3",
        f"{EXTENSION}:ROTATION": "VEC4",
        f"{EXTENSION}:SCALE": "VEC3",
        f"{EXTENSION}:OPACITY": "SCALAR",
    }
    for band in range(degree + 1):
        for c in range(2 * band + 1):
            kinds[f"{EXTENSION}:SH_DEGREE_{band}_COEF_{c}"] = "VEC3"
    return kinds


def _plan(doc: dict, prim: dict) -> dict[str, _Layout]:
    """A splat primitive's attribute layouts (POSITION first), all of one count."""
    attrs = _field(prim, "attributes", dict, "a primitive")
    layouts = {}
    for name, kind in _attribute_kinds(attrs).items():
        if name not in attrs:
            raise _Problem(f"a splat primitive has no {name} attribute")
        layouts[name] = _layout(doc, attrs[name], kind)
    n = layouts["POSITION"].count
    for name, layout in layouts.items():
        if layout.count != n:
            short = name.removeprefix(f"{EXTENSION}:")
            raise _Problem(f"{EXTENSION}:{short} has {layout.count} elements for {n} positions")
    return layouts


def _decode(doc: dict, glb_bin, path: Path, device) -> Gaussians:
    plans: list[dict[str, _Layout]] = []
    for mi, mesh in enumerate(_field(doc, "meshes", list, "the glTF", [])):
        for pi, prim in enumerate(_field(mesh, "primitives", list, f"meshes[{mi}]")):
            ext = _field(prim, "extensions", dict, f"meshes[{mi}].primitives[{pi}]", {})
            if EXTENSION not in ext:
                continue
            if prim.get("mode") != 0:
                raise _Problem(f"meshes[{mi}].primitives[{pi}] is not POINTS (mode 0)")
            plans.append(_plan(doc, prim))
    if not plans:
        raise _Problem(f"no POINTS primitive with the {EXTENSION} extension")
    if len({len(p) for p in plans}) != 1:
        raise _Problem("primitives have different SH degrees")
    _check_totals(doc, plans)
    n = sum(p["POSITION"].count for p in plans)
    k = len(plans[0]) - 4  # SH coefficients: the attributes after the first four
    out = gaussian_arrays(n, k)
    cache: dict[int, memoryview] = {}
    lo = 0
    for layouts in plans:  # one primitive's float64 temporaries at a time
        part = _decode_primitive(layouts, doc, glb_bin, path, cache)
        s = slice(lo, lo + len(part["means"]))
        out["means"][s] = part["means"]
        out["log_scales"][s] = part["log_scales"]
        out["quats"][s] = part["quats"]
        out["opacity_logits"][s] = part["opacity_logits"]
        out["sh"][s] = part["sh"]
        lo = s.stop
    tensors = {a: torch.from_numpy(v).to(device) for a, v in out.items()}
    try:
        return Gaussians(**tensors)
    except GaussiansError as e:
        raise _Problem(str(e)) from None


def _check_totals(doc: dict, plans: list[dict[str, _Layout]]) -> None:
    """Refuse, before any buffer is read, more Gaussians than the limit or than the file holds.

    Primitives may share accessors, so a small file can name the same bytes thousands of
    times (2,000 primitives of one 2,000-point set: 4M Gaussians from 835 KB). Every decoded
    Gaussian must have its own bytes: the accessor bytes all primitives read may not exceed
    the byteLength of the buffers they use (each checked against the data when it is read).
    """
    n = sum(p["POSITION"].count for p in plans)
    check_gaussian_count(n, _Problem)
    used = {layout.buffer for p in plans for layout in p.values()}
    present = sum(_buffer_length(doc, b) for b in used)
    needed = sum(4 * layout.width * layout.count for p in plans for layout in p.values())
    if needed > present:
        raise _Problem(
            f"its {len(plans)} splat primitives read {needed:,} bytes of accessor data "
            f"({n:,} Gaussians) but its buffers hold {present:,} bytes: accessors are reused "
            "to decode more Gaussians than the file stores"
        )


def _decode_primitive(
    layouts: dict[str, _Layout], doc: dict, glb_bin, path: Path, cache: dict
) -> dict[str, np.ndarray]:
    """float64 means (N, 3), log_scales (N, 3), quats (N, 4) wxyz, opacity_logits (N,),
    sh (N, K, 3), in the file's axes."""

    def get(name: str) -> np.ndarray:
        layout = layouts[name]
        values = _read(layout, _buffer(doc, layout.buffer, glb_bin, path, cache))
        if not np.isfinite(values).all():
            raise _Problem(f"{name} holds NaN/Inf")
        return values

    means = get("POSITION")
    xyzw = get(f"{EXTENSION}:ROTATION")
    scales = get(f"{EXTENSION}:SCALE")
    alpha = get(f"{EXTENSION}:OPACITY")[:, 0]
    sh = np.stack([get(name) for name in layouts if "SH_DEGREE" in name], axis=1)
    if (np.linalg.norm(xyzw, axis=1) == 0).any():
        raise _Problem("a ROTATION is a zero quaternion")
    if (scales <= 0).any():
        raise _Problem("a SCALE is <= 0")
    if ((alpha < 0) | (alpha > 1)).any():
        raise _Problem("an OPACITY is outside [0, 1]")
    alpha = np.clip(alpha, 1e-12, 1 - 1e-12)
    return {
        "means": means,
        "log_scales": np.log(scales),
        "quats": np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1),
        "opacity_logits": np.log(alpha / (1 - alpha)),
        "sh": sh,
    }
