"""INRIA 3DGS PLY reader and writer (DESIGN.md §6).

Layout written (binary_little_endian 1.0, one `vertex` element, float32):

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1}
    opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

Stored values are the raw `Gaussians` parameters: opacity logit, log scale and
the unnormalised w x y z quaternion. f_rest is channel-major: property
f_rest_{c*(K-1) + (k-1)} holds SH coefficient k >= 1 of colour channel c.

The reader parses the header itself so that every malformed file (including
hostile ones) ends in a `PlyFormatError` naming the file and the problem, and
maps the vertex data with one `np.frombuffer` over the exact byte range.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..atomic import write_atomic
from ..gaussians import MAX_SH_DEGREE, Gaussians, GaussiansError
from .limits import check_gaussian_count

__all__ = ["PlyData", "PlyFormatError", "read_ply", "write_ply", "standard_property_names"]

MAX_HEADER_BYTES = 64 * 1024

POSITION = ("x", "y", "z")
NORMALS = ("nx", "ny", "nz")
SH_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
OPACITY = ("opacity",)
SCALES = ("scale_0", "scale_1", "scale_2")
ROTATION = ("rot_0", "rot_1", "rot_2", "rot_3")
_GAUSSIAN_ONLY = SH_DC + OPACITY + SCALES + ROTATION
REQUIRED = POSITION + _GAUSSIAN_ONLY

# Every name the PLY spec and common tools use for the scalar types. Little-endian
# dtypes throughout: big-endian files are rejected before these are used.
_PLY_TYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for names, code in [
        (("char", "int8"), "i1"),
        (("uchar", "uint8"), "u1"),
        (("short", "int16"), "<i2"),
        (("ushort", "uint16"), "<u2"),
        (("int", "int32"), "<i4"),
        (("uint", "uint32"), "<u4"),
        (("float", "float32"), "<f4"),
        (("double", "float64"), "<f8"),
    ]
    for name in names
}
# The classic names are what every reader understands, so the writer uses them.
_WRITE_TYPE_NAMES: dict[np.dtype, str] = {
    np.dtype(code): name
    for code, name in [
        ("i1", "char"),
        ("u1", "uchar"),
        ("<i2", "short"),
        ("<u2", "ushort"),
        ("<i4", "int"),
        ("<u4", "uint"),
        ("<f4", "float"),
        ("<f8", "double"),
    ]
}
_F32 = np.dtype("<f4")
# A count with more digits than this cannot describe data in any real file; the
# cap also keeps int() away from CPython's 4300-digit conversion limit.
_MAX_COUNT_DIGITS = 24
_COUNT_RE = re.compile(r"[0-9]+", re.ASCII)
_TOKEN_RE = re.compile(r"[!-~]+", re.ASCII)


class PlyFormatError(ValueError):
    """A file is not a PLY this module can read; the message names the file and the problem."""


@dataclass
class PlyData:
    """What `read_ply` returns.

    gaussians: the N Gaussians of the vertex element.
    extra: vertex properties without a `Gaussians` field, name -> (N,) array in
        the file's dtype, in file order (nx, ny, nz are dropped: always zero).
    """

    gaussians: Gaussians
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def sh_rest_names(sh_degree: int) -> list[str]:
    """Names of the 3 * ((d+1)² - 1) f_rest properties for SH degree d."""
    return [f"f_rest_{i}" for i in range(3 * ((sh_degree + 1) ** 2 - 1))]


def standard_property_names(sh_degree: int) -> list[str]:
    """Vertex property names of an INRIA PLY of SH degree `sh_degree`, in file order."""
    return [*POSITION, *NORMALS, *SH_DC, *sh_rest_names(sh_degree), *OPACITY, *SCALES, *ROTATION]


_REST_COUNTS = {3 * ((d + 1) ** 2 - 1): d for d in range(MAX_SH_DEGREE + 1)}


# ============================================================================ reading


class PlyProblem(Exception):
    """What is wrong with a PLY file, raised by `parse_header` and the readers of this
    module and `compressed_ply`; each reader adds the path and raises its public error."""


@dataclass
class PlyElement:
    """One `element` of a PLY header: its rows and typed properties."""

    name: str
    count: int
    # dtype None marks a list property, whose per-row size is in the data itself.
    properties: list[tuple[str, np.dtype | None]] = field(default_factory=list)

    def list_property(self) -> str | None:
        return next((n for n, t in self.properties if t is None), None)

    def row_bytes(self) -> int:
        return sum(t.itemsize for _, t in self.properties if t is not None)


@dataclass
class PlyHeader:
    """A parsed PLY header (`parse_header`): the elements in file order."""

    elements: list[PlyElement]
    data_start: int  # file offset of the first byte after end_header's newline


def read_ply(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> PlyData:
    """Read an INRIA-layout Gaussian splat PLY.

    Properties may come in any order and any PLY scalar type (converted to
    float32); elements other than `vertex` are skipped. Bytes after the vertex
    data are ignored. Raises `PlyFormatError` for anything malformed and
    `OSError` if the file cannot be opened.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = parse_header(f.read(MAX_HEADER_BYTES))
            vertex, offset = _locate_vertex(header, size)
            records = _read_records(f, vertex, offset)
        return _to_ply_data(vertex, records, device)
    except PlyProblem as e:
        raise PlyFormatError(f"{path}: {e}") from None


def parse_header(head: bytes) -> PlyHeader:
    """Parse the header at the start of `head` (the first MAX_HEADER_BYTES of the file)."""
    if not (head.startswith(b"ply\n") or head.startswith(b"ply\r\n")):
        raise PlyProblem("not a PLY file (it does not start with the 'ply' magic line)")
    end = re.search(rb"\nend_header[ \t\r]*\n", head)
    if end is None:
        if len(head) >= MAX_HEADER_BYTES:
            raise PlyProblem(f"no end_header line within the first {MAX_HEADER_BYTES} bytes")
        raise PlyProblem("the header has no end_header line (truncated file?)")
    elements: list[PlyElement] = []
    fmt_seen = False
    for number, raw in enumerate(head[: end.start()].split(b"\n")[1:], start=2):
        tokens = raw.split()
        # Comments may hold any text (e.g. UTF-8 author names); nothing else may.
        if not tokens or tokens[0] in (b"comment", b"obj_info"):
            continue
        try:
            words = [t.decode("ascii") for t in tokens]
        except UnicodeDecodeError:
            raise PlyProblem(f"header line {number} is not ASCII text") from None
        keyword = words[0]
        if keyword == "format":
            if fmt_seen:
                raise PlyProblem(f"header line {number}: second 'format' line")
            _check_format(words, number)
            fmt_seen = True
        elif keyword == "element":
            elements.append(_parse_element(words, number))
        elif keyword == "property":
            if not elements:
                raise PlyProblem(f"header line {number}: 'property' before any 'element'")
            elements[-1].properties.append(_parse_property(words, number))
        else:
            raise PlyProblem(f"header line {number}: unknown keyword {keyword[:40]!r}")
    if not fmt_seen:
        raise PlyProblem("the header has no 'format' line")
    return PlyHeader(elements, end.end())


def _check_format(words: list[str], number: int) -> None:
    if len(words) != 3:
        raise PlyProblem(f"header line {number}: expected 'format <type> <version>'")
    kind = words[1]
    if kind == "ascii":
        raise PlyProblem("ascii PLY is not supported, convert to binary_little_endian")
    if kind == "binary_big_endian":
        raise PlyProblem("big-endian binary PLY is not supported, convert to binary_little_endian")
    if kind != "binary_little_endian":
        raise PlyProblem(f"header line {number}: unknown format {kind[:40]!r}")


def _parse_element(words: list[str], number: int) -> PlyElement:
    if len(words) != 3:
        raise PlyProblem(f"header line {number}: expected 'element <name> <count>'")
    count = words[2]
    if not _COUNT_RE.fullmatch(count) or len(count) > _MAX_COUNT_DIGITS:
        raise PlyProblem(f"header line {number}: bad count {count[:40]!r} for element {words[1]!r}")
    return PlyElement(words[1], int(count))


def _parse_property(words: list[str], number: int) -> tuple[str, np.dtype | None]:
    if len(words) >= 2 and words[1] == "list":
        if len(words) != 5:
            raise PlyProblem(f"header line {number}: expected 'property list <type> <type> <name>'")
        for t in words[2:4]:
            _scalar_type(t, number)
        return words[4], None
    if len(words) != 3:
        raise PlyProblem(f"header line {number}: expected 'property <type> <name>'")
    return words[2], _scalar_type(words[1], number)


def _scalar_type(name: str, number: int) -> np.dtype:
    try:
        return _PLY_TYPES[name]
    except KeyError:
        raise PlyProblem(f"header line {number}: unknown property type {name[:40]!r}") from None


def _locate_vertex(header: PlyHeader, file_size: int) -> tuple[PlyElement, int]:
    """The vertex element and the file offset of its data, after checking that it fits.

    The check uses the file size, so a header declaring absurd counts fails
    here, before anything is allocated.
    """
    vertices = [e for e in header.elements if e.name == "vertex"]
    if any(e.name == "chunk" for e in header.elements) or (
        vertices and any(n.startswith("packed_") for n, _ in vertices[0].properties)
    ):
        raise PlyProblem(
            "PlayCanvas compressed PLY is not supported, decompress it first "
            "(e.g. with @playcanvas/splat-transform)"
        )
    if len(vertices) != 1:
        raise PlyProblem("more than one 'vertex' element" if vertices else "no 'vertex' element")
    vertex = vertices[0]
    offset = header.data_start
    for element in header.elements:
        if element is vertex:
            break
        listed = element.list_property()
        if listed is not None and element.count > 0:
            raise PlyProblem(
                f"element {element.name!r} before 'vertex' has list property {listed!r}; "
                "list properties are unsupported"
            )
        offset += element.count * element.row_bytes()
    _check_vertex_properties(vertex)
    needed = vertex.count * vertex.row_bytes()
    skipped = offset - header.data_start
    available = file_size - header.data_start
    if skipped + needed > available:
        others = f" after {skipped} bytes of other elements" if skipped else ""
        raise PlyProblem(
            f"the header declares {vertex.count} vertices ({needed} bytes{others}) but only "
            f"{available} bytes of data follow the header (truncated file?)"
        )
    check_gaussian_count(vertex.count, PlyProblem)
    return vertex, offset


def _check_vertex_properties(vertex: PlyElement) -> None:
    names = [n for n, _ in vertex.properties]
    listed = vertex.list_property()
    if listed is not None:
        raise PlyProblem(f"vertex list property {listed!r} is unsupported")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise PlyProblem(f"duplicate vertex property {n!r}")
        seen.add(n)
    missing = [n for n in REQUIRED if n not in seen]
    if missing and all(n in missing for n in _GAUSSIAN_ONLY):
        found = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise PlyProblem(
            "not a Gaussian splat PLY (a plain point cloud or mesh?): the vertex element has "
            f"no Gaussian properties; missing {', '.join(missing)} (found: {found or 'none'})"
        )
    if missing:
        raise PlyProblem(f"missing required vertex properties: {', '.join(missing)}")
    _sh_degree(names)


def _sh_degree(names: Sequence[str]) -> int:
    """SH degree from the f_rest_* properties, which must be exactly f_rest_0..f_rest_{M-1}."""
    rest = {n for n in names if n.startswith("f_rest_")}
    if len(rest) not in _REST_COUNTS:
        raise PlyProblem(
            f"found {len(rest)} f_rest_* properties; expected 0, 9, 24 or 45 (SH degree 0..3)"
        )
    degree = _REST_COUNTS[len(rest)]
    expected = sh_rest_names(degree)
    odd = sorted(rest - set(expected))
    if odd:
        raise PlyProblem(
            f"f_rest properties must be named f_rest_0..f_rest_{len(rest) - 1}; "
            f"unexpected {', '.join(odd[:5])}"
        )
    return degree


def _read_records(f: BinaryIO, vertex: PlyElement, offset: int) -> np.ndarray:
    """(N,) structured array of the vertex rows, read from exactly their byte range."""
    dtype = np.dtype([(n, t) for n, t in vertex.properties])
    nbytes = vertex.count * dtype.itemsize
    f.seek(offset)
    raw = f.read(nbytes)
    if len(raw) != nbytes:  # only if the file shrank since its size was checked
        raise PlyProblem(f"the file ended after {len(raw)} of {nbytes} bytes of vertex data")
    return np.frombuffer(raw, dtype=dtype, count=vertex.count)


class _Columns:
    """Gathers named vertex properties into contiguous float32 (N, M) arrays."""

    def __init__(self, records: np.ndarray) -> None:
        self.records = records
        names = records.dtype.names or ()
        self.index = {n: i for i, n in enumerate(names)}
        # INRIA files are all float32: slicing a (N, P) view of them is much
        # faster than P strided field copies.
        self.matrix: np.ndarray | None = None
        if all(records.dtype.fields[n][0] == _F32 for n in names):
            self.matrix = records.view(_F32).reshape(len(records), len(names))

    def get(self, names: Sequence[str]) -> np.ndarray:
        """(N, len(names)) float32; raises `PlyProblem` on NaN/Inf (or doubles beyond float32)."""
        if self.matrix is not None:
            out = self._from_matrix(self.matrix, [self.index[n] for n in names])
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                cols = [self.records[n].astype(np.float32) for n in names]
            out = np.stack(cols, axis=1) if cols else np.empty((len(self.records), 0), _F32)
        _check_finite(out, names)
        return out

    @staticmethod
    def _from_matrix(matrix: np.ndarray, columns: list[int]) -> np.ndarray:
        # Standard files keep each group in consecutive columns, and a block copy
        # is several times faster than numpy's per-element fancy indexing.
        if columns and columns == list(range(columns[0], columns[0] + len(columns))):
            return matrix[:, columns[0] : columns[0] + len(columns)].copy()
        return matrix[:, columns]


def _check_finite(values: np.ndarray, names: Sequence[str]) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise PlyProblem(
            f"property {names[col]!r} is NaN/Inf (or beyond float32 range) in vertex {row} "
            f"({int(bad.any(axis=1).sum())} bad vertices in all)"
        )


def _to_ply_data(vertex: PlyElement, records: np.ndarray, device: torch.device | str) -> PlyData:
    names = [n for n, _ in vertex.properties]
    degree = _sh_degree(names)
    k = (degree + 1) ** 2
    n = vertex.count
    cols = _Columns(records)
    rest_names = sh_rest_names(degree)
    quats = cols.get(ROTATION)
    _check_quaternions(quats)
    # f_rest is channel-major (N, 3, K-1); Gaussians.sh wants (N, K, 3), DC first.
    rest = cols.get(rest_names).reshape(n, 3, k - 1).transpose(0, 2, 1)
    sh = np.concatenate([cols.get(SH_DC).reshape(n, 1, 3), rest], axis=1)
    arrays = {
        "means": cols.get(POSITION),
        "log_scales": cols.get(SCALES),
        "quats": quats,
        "opacity_logits": cols.get(OPACITY).reshape(n),
        "sh": sh,
    }
    try:
        gaussians = Gaussians(**{a: torch.from_numpy(v).to(device) for a, v in arrays.items()})
    except GaussiansError as e:  # validation beyond the checks above, e.g. float32 underflow
        raise PlyProblem(str(e)) from None
    mapped = set(REQUIRED) | set(rest_names) | set(NORMALS)
    extra = {
        name: records[name].astype(records.dtype.fields[name][0].newbyteorder("="))
        for name in names
        if name not in mapped
    }
    return PlyData(gaussians, extra)


def _check_quaternions(quats: np.ndarray) -> None:
    # float64 so that small but valid quaternions do not underflow to zero here.
    zero = (quats.astype(np.float64) ** 2).sum(axis=1) < 1e-24
    if zero.any():
        row = int(np.argmax(zero))
        raise PlyProblem(
            f"rot_0..rot_3 is a zero quaternion in vertex {row} "
            f"({int(zero.sum())} zero quaternions in all)"
        )


# ============================================================================ writing


def write_ply(
    path: str | os.PathLike[str],
    gaussians: Gaussians,
    extra: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write `gaussians` as an INRIA PLY (float32), atomically.

    extra: name -> (N,) array written as an additional vertex property after the
        standard ones, in its own PLY type (float32, int32, uint8, ... ; bool as
        uchar). Names must be single printable-ASCII tokens that are not standard names.

    Everything is checked before the file is touched; the data goes to a temp
    file in the same folder that replaces `path` only once complete.
    """
    path = Path(path)
    gaussians.validate()
    standard = _standard_matrix(gaussians)
    extras = _check_extra(extra, len(gaussians))
    names = standard_property_names(gaussians.sh_degree)
    header = _header_bytes(len(gaussians), names, extras)
    if not extras:  # (N, P) C-contiguous float32 already is the byte layout
        write_atomic(path, [header, standard])
        return
    dtype = np.dtype([(n, _F32) for n in names] + [(n, a.dtype) for n, a in extras])
    records = np.empty(len(gaussians), dtype=dtype)
    # The standard properties are a packed float32 prefix of every row.
    prefix = np.ndarray(
        shape=standard.shape,
        dtype=_F32,
        buffer=records,
        strides=(dtype.itemsize, _F32.itemsize),
    )
    prefix[...] = standard
    for name, values in extras:
        records[name] = values
    write_atomic(path, [header, records])


def _standard_matrix(gaussians: Gaussians) -> np.ndarray:
    """(N, P) float32 rows in `standard_property_names` order."""
    g = gaussians.detach().to("cpu", torch.float32)
    n, k = len(g), g.sh.shape[1]
    # (N, K-1, 3) -> (N, 3, K-1): channel-major f_rest.
    rest = g.sh[:, 1:, :].transpose(1, 2).reshape(n, 3 * (k - 1))
    parts = [
        g.means,
        torch.zeros(n, 3),
        g.sh[:, 0, :],
        rest,
        g.opacity_logits.reshape(n, 1),
        g.log_scales,
        g.quats,
    ]
    matrix = torch.cat(parts, dim=1).numpy()
    # validate() has checked finiteness; only a cast from a wider dtype can overflow.
    if gaussians.dtype != torch.float32 and not np.isfinite(matrix).all():
        raise GaussiansError("Gaussian parameters overflow float32; cannot write them to PLY")
    return matrix


def _check_extra(extra: Mapping[str, np.ndarray] | None, n: int) -> list[tuple[str, np.ndarray]]:
    """Validated (name, (N,) little-endian array) pairs; ValueError on any problem."""
    if not extra:
        return []
    reserved = set(standard_property_names(MAX_SH_DEGREE))
    out = []
    for name, values in extra.items():
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"extra property name {name!r} must be printable ASCII, no spaces")
        if name in reserved:
            raise ValueError(f"extra property {name!r} clashes with a standard property name")
        arr = np.asarray(values)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        dtype = arr.dtype.newbyteorder("<")
        if dtype not in _WRITE_TYPE_NAMES:
            raise ValueError(
                f"extra property {name!r} has dtype {arr.dtype}; supported: "
                "int8, uint8, int16, uint16, int32, uint32, float32, float64, bool"
            )
        if arr.shape != (n,):
            raise ValueError(f"extra property {name!r} must have shape ({n},), got {arr.shape}")
        out.append((name, arr.astype(dtype, copy=False)))
    return out


def _header_bytes(n: int, names: Sequence[str], extras: Sequence[tuple[str, np.ndarray]]) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in names]
    lines += [f"property {_WRITE_TYPE_NAMES[a.dtype]} {name}" for name, a in extras]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")
