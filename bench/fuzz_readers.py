"""Fuzz every file reader with seeded mutations of valid files; report what escapes.

The test suites' fuzz harnesses (tests/test_io_*.py, tests/test_ply.py) run ~100 Hypothesis
examples a test on every `make test`. This reruns their idea at scale: N mutated inputs per
reader (default 10,000), each derived from valid files our writers produce by seeded
mutators (byte flips, interesting integers and floats, truncation, splicing, random bytes,
and format-aware ones: PLY header tokens, SPZ fields mutated inside a recompressed stream so
the CRC holds (version 4: its header, table of contents and zstd streams, re-assembled),
glTF / transforms.json / SOG meta.json trees, SOG images, GLB chunks re-assembled with
correct lengths).

For each input the reader must either return valid data (`Gaussians.validate()`, at most
`engine.io.limits.MAX_GAUSSIANS`; valid cameras for transforms.json) or raise its format's
documented error naming the file. Anything else "escapes" and is listed with its case
number, which reproduces it: `--readers NAME --first CASE --count 1`.

Each reader runs in its own process with its data segment capped at 3 GiB (a decompression
bomb shows as a MemoryError escape, not an exhausted machine), one torch thread, and a 20 s
alarm per input (a hang shows as an escape). Its peak resident memory is reported.

    nice .venv/bin/python bench/fuzz_readers.py                # 10,000 a reader, seed 0
    .venv/bin/python bench/fuzz_readers.py --count 500 --readers spz gltf --no-write
"""

from __future__ import annotations

import argparse
import base64
import datetime
import gzip
import json
import os
import platform
import re
import resource
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fuzz_readers.md"
READERS = ("ply", "compressed_ply", "spz", "splat", "sog", "gltf", "transforms", "images")
DATA_LIMIT = 3 << 30
CASE_SECONDS = 20
SAMPLE = ROOT / "examples" / "sample_props" / "objects" / "000000"

# Values that break parsers: zero, signs, byte / word edges, counts past every limit.
INTERESTING_INTS = [0, 1, 2, 3, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
                    2**32, 50_000_001, 10**12, 2**63 - 1, -1, -2**31]  # fmt: skip
INTERESTING_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-45, 1e-38, 3.4e38, 88.8, 1e30, float("inf"),
                      -float("inf"), float("nan")]  # fmt: skip
JSON_VALUES: list[Any] = [0, -1, 1, 2, 3, 2**31, 2**53, 10**20, 50_000_001, 1.5, -1e308,
                          True, False, None, "", "x", "\u0000", "../x.bin", "/dev/zero",
                          "data:application/octet-stream;base64,AAAA", "data:,", [], {},
                          [0, 0, 0], {"a": 1}]  # fmt: skip


# ============================================================================ mutators


def _flip(rng: np.random.Generator, data: bytearray) -> str:
    k = int(rng.integers(1, 9))
    for _ in range(k):
        if data:
            data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
    return f"flip{k}"


def _interesting(rng: np.random.Generator, data: bytearray) -> str:
    if len(data) < 8:
        return "interesting(short)"
    at = int(rng.integers(len(data) - 7))
    if rng.random() < 0.5:
        value = INTERESTING_INTS[int(rng.integers(len(INTERESTING_INTS)))]
        width = int(rng.choice([1, 2, 4, 8]))
        raw = (value % (1 << (8 * width))).to_bytes(width, "little")
    else:
        raw = struct.pack("<f", INTERESTING_FLOATS[int(rng.integers(len(INTERESTING_FLOATS)))])
        at -= at % 4  # attributes are 4-byte aligned in every format here
    data[at : at + len(raw)] = raw
    return "interesting"


def _truncate(rng: np.random.Generator, data: bytearray) -> str:
    cut = int(rng.integers(len(data) + 1))
    del data[cut:]
    return "truncate"


def _splice(rng: np.random.Generator, data: bytearray) -> str:
    if not data:
        return "splice(empty)"
    at = int(rng.integers(len(data)))
    n = int(rng.integers(1, max(2, min(256, len(data) // 4))))
    op = int(rng.integers(3))
    if op == 0:
        del data[at : at + n]
        return "delete"
    if op == 1:
        data[at:at] = data[at : at + n]
        return "duplicate"
    data[at:at] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return "insert"


BYTE_MUTATORS: list[Callable[[np.random.Generator, bytearray], str]] = [
    _flip, _flip, _interesting, _interesting, _truncate, _splice,
]  # fmt: skip


def havoc(rng: np.random.Generator, data: bytes, rounds: int | None = None) -> tuple[bytes, str]:
    """1-3 byte mutations of `data`; the mutated bytes and what was done."""
    out = bytearray(data)
    done = []
    for _ in range(rounds or int(rng.integers(1, 4))):
        done.append(BYTE_MUTATORS[int(rng.integers(len(BYTE_MUTATORS)))](rng, out))
    return bytes(out), "+".join(done)


def random_bytes(rng: np.random.Generator, prefix: bytes = b"") -> bytes:
    return prefix + rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes()


def _json_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _json_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node[:64]):
            paths += _json_paths(value, (*prefix, i))
    return paths


def mutate_json(rng: np.random.Generator, doc: Any) -> tuple[Any, str]:
    """One tree mutation of a deep copy of `doc`: replace, delete, duplicate, nest or grow."""
    doc = json.loads(json.dumps(doc))
    paths = [p for p in _json_paths(doc) if p]
    if not paths:
        return JSON_VALUES[int(rng.integers(len(JSON_VALUES)))], "root"
    path = paths[int(rng.integers(len(paths)))]
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    op = int(rng.integers(6))
    if op <= 1:
        parent[key] = json.loads(json.dumps(JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]))
        return doc, f"set {'/'.join(map(str, path))}"
    if op == 2:
        del parent[key]
        return doc, f"delete {'/'.join(map(str, path))}"
    if op == 3 and isinstance(parent[key], list) and parent[key]:
        parent[key] = parent[key] * int(rng.integers(2, 200))
        return doc, f"repeat {'/'.join(map(str, path))}"
    if op == 4 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
        parent[key] = INTERESTING_INTS[int(rng.integers(len(INTERESTING_INTS)))]
        return doc, f"number {'/'.join(map(str, path))}"
    depth = int(rng.choice([1, 3, 50]))  # deeper: `deep_nest` works on the text
    value = parent[key]
    for _ in range(depth):
        value = [value]
    parent[key] = value
    return doc, f"nest{depth} {'/'.join(map(str, path))}"


_NUMBER = re.compile(rb"(?<=[:\[,] )-?[0-9][0-9.eE+-]*")


def deep_nest(rng: np.random.Generator, text: bytes) -> tuple[bytes, str]:
    """Wrap one number of a JSON text in thousands of lists (json.dumps cannot write that)."""
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return text, "deep nest (no number)"
    m = numbers[int(rng.integers(len(numbers)))]
    depth = int(rng.choice([2_000, 100_000]))
    return text[: m.start()] + b"[" * depth + m.group() + b"]" * depth + text[m.end() :], (
        f"deep nest {depth}"
    )


# ============================================================================ readers


class Reader:
    """Seeds (valid files), a mutator, the call under test and its documented error."""

    suffix = ""
    error: type[Exception] = ValueError

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seeds = self.make_seeds()

    def make_seeds(self) -> list[bytes]:
        raise NotImplementedError

    def mutate(self, rng: np.random.Generator) -> tuple[bytes, str]:
        seed = self.seeds[int(rng.integers(len(self.seeds)))]
        if rng.random() < 0.05:
            return random_bytes(rng, seed[: int(rng.integers(0, 16))]), "random bytes"
        return havoc(rng, seed)

    def read(self, path: Path) -> Any:
        raise NotImplementedError

    def check(self, result: Any) -> None:
        from engine.io.limits import MAX_GAUSSIANS

        result.validate()
        if len(result) > MAX_GAUSSIANS:
            raise AssertionError(f"{len(result)} Gaussians, above MAX_GAUSSIANS")


def _gaussians(n: int, degree: int, seed: int):
    import torch

    from engine.gaussians import Gaussians

    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 3,
        log_scales=torch.rand(n, 3, generator=gen) * 6 - 5,
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen) * 2,
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=gen) * 0.3,
    )


SEED_SHAPES = [(1, 0), (7, 1), (40, 3), (300, 0), (5, 2)]


def _written(folder: Path, name: str, write: Callable[[Path], None]) -> bytes:
    path = folder / name
    write(path)
    data = path.read_bytes()
    path.unlink()
    return data


def _ply_header_mutation(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    end = data.find(b"end_header\n")
    if end < 0:
        return havoc(rng, data)
    lines = data[:end].decode("ascii", "replace").split("\n")[:-1]
    body = data[end + len(b"end_header\n") :]
    i = int(rng.integers(len(lines)))
    words = lines[i].split()
    op = int(rng.integers(5))
    if op == 0 and words:
        j = int(rng.integers(len(words)))
        words[j] = str(INTERESTING_INTS[int(rng.integers(len(INTERESTING_INTS)))])
        what = f"header number l{i}"
    elif op == 1 and words:
        j = int(rng.integers(len(words)))
        words[j] = str(rng.choice(["float", "double", "uchar", "char", "int", "uint", "short",
                                   "list", "vertex", "chunk", "sh", "ascii", "x", "f_rest_9",
                                   "binary_big_endian", "packed_color", ""]))  # fmt: skip
        what = f"header word l{i}"
    elif op == 2:
        del lines[i]
        what = f"header drop l{i}"
    elif op == 3:
        lines.insert(i, lines[int(rng.integers(len(lines)))])
        what = f"header dup l{i}"
    else:
        j = int(rng.integers(len(lines)))
        lines[i], lines[j] = lines[j], lines[i]
        what = f"header swap l{i}/{j}"
    if op <= 1:
        lines[i] = " ".join(words)
    head = ("\n".join(lines) + "\nend_header\n").encode("ascii", "replace")
    if rng.random() < 0.3:
        body, more = havoc(rng, body)
        what += "+" + more
    return head + body, what


class SplatFormatReader(Reader):
    """One of engine.io's splat formats, `fmt`: seeds are what `write_<fmt>` makes of each
    of SEED_SHAPES (n Gaussians of SH degree d) under each of `seed_names`; `read_<fmt>` is
    the call under test and `error_name` its documented error. Looked up by name in the
    worker, the one process that imports torch."""

    fmt = ""
    error_name = ""
    seed_names: tuple[str, ...] = ()  # default: ("s" + suffix,)
    record = False  # read_<fmt> returns a record holding `.gaussians`

    def write_seed(self, write: Callable[..., Any], path: Path, n: int, degree: int) -> None:
        write(path, _gaussians(n, degree, n))

    def make_seeds(self) -> list[bytes]:
        import engine.io

        write = getattr(engine.io, f"write_{self.fmt}")
        return [
            _written(self.folder, name, lambda p, n=n, d=d: self.write_seed(write, p, n, d))
            for n, d in SEED_SHAPES
            for name in self.seed_names or ("s" + self.suffix,)
        ]

    def read(self, path: Path) -> Any:
        import engine.io

        self.error = getattr(engine.io, self.error_name)
        result = getattr(engine.io, f"read_{self.fmt}")(path)
        return result.gaussians if self.record else result


class _PlyHeaders:
    """Mixin for the PLY-based formats: 40% of the mutations edit the header's tokens."""

    seeds: list[bytes]

    def mutate(self, rng: np.random.Generator) -> tuple[bytes, str]:
        if rng.random() < 0.4:
            return _ply_header_mutation(rng, self.seeds[int(rng.integers(len(self.seeds)))])
        return super().mutate(rng)  # type: ignore[misc]


class PlyReader(_PlyHeaders, SplatFormatReader):
    suffix = ".ply"
    fmt, error_name, record = "ply", "PlyFormatError", True

    def make_seeds(self) -> list[bytes]:
        from engine.io import write_ply

        extra = {"level": np.arange(7, dtype=np.int32), "flag": np.ones(7, bool)}
        return [
            *super().make_seeds(),
            _written(self.folder, "s.ply", lambda p: write_ply(p, _gaussians(7, 1, 1), extra)),
        ]


class CompressedPlyReader(_PlyHeaders, SplatFormatReader):
    suffix = ".compressed.ply"
    fmt, error_name = "compressed_ply", "CompressedPlyFormatError"

    def write_seed(self, write: Callable[..., Any], path: Path, n: int, degree: int) -> None:
        write(path, _gaussians(n, degree, n), sort=n % 2 == 0)


class SpzReader(SplatFormatReader):
    suffix = ".spz"
    fmt, error_name, record = "spz", "SpzFormatError", True

    def make_seeds(self) -> list[bytes]:
        from engine.io import write_spz

        return [
            _written(
                self.folder,
                "s.spz",
                lambda p, n=n, d=d, v=v: write_spz(p, _gaussians(n, d, n), version=v),
            )
            for n, d in SEED_SHAPES
            for v in (2 + n % 2, 4)
        ]

    def mutate(self, rng: np.random.Generator) -> tuple[bytes, str]:
        seed = self.seeds[int(rng.integers(len(self.seeds)))]
        roll = rng.random()
        if seed[:4] == b"NGSP":
            return self._mutate_ngsp(rng, seed) if roll < 0.7 else havoc(rng, seed)
        if roll < 0.6:  # inside the stream, recompressed: the CRC holds, the decoder is reached
            raw = bytearray(gzip.decompress(seed))
            what = "inner"
            if rng.random() < 0.5:
                field = int(rng.choice([4, 8, 12, 13, 14, 15]))
                width = 4 if field < 12 else 1
                value = INTERESTING_INTS[int(rng.integers(len(INTERESTING_INTS)))]
                raw[field : field + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
                what += f" header@{field}"
            if rng.random() < 0.6:
                mutated, more = havoc(rng, bytes(raw))
                raw, what = bytearray(mutated), what + "+" + more
            c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            return c.compress(bytes(raw)) + c.flush(), what
        if roll < 0.65:
            return random_bytes(rng, b"\x1f\x8b\x08"), "random gzip-like"
        return havoc(rng, seed)

    def _mutate_ngsp(self, rng: np.random.Generator, seed: bytes) -> tuple[bytes, str]:
        """Version 4: header fields, a stream's content or its declared sizes, re-assembled
        with a consistent table of contents unless the sizes themselves are the target."""
        import zstandard

        head = bytearray(seed[:32])
        count = head[15]
        toc = [struct.unpack_from("<QQ", seed, 32 + 16 * i) for i in range(count)]
        at, streams = 32 + 16 * count, []
        for packed, _ in toc:
            streams.append(zstandard.ZstdDecompressor().decompress(seed[at : at + packed]))
            at += packed
        what = "ngsp"
        if rng.random() < 0.5:
            field = int(rng.choice([4, 8, 12, 13, 14, 15, 16]))
            width = 4 if field in (4, 8, 16) else 1
            value = INTERESTING_INTS[int(rng.integers(len(INTERESTING_INTS)))]
            head[field : field + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
            what += f" header@{field}"
        if streams and rng.random() < 0.6:
            i = int(rng.integers(len(streams)))
            streams[i], more = havoc(rng, streams[i])
            what += f" stream{i} {more}"
        packed = [zstandard.ZstdCompressor(level=1).compress(x) for x in streams]
        sizes = [len(x) for x in streams]
        if sizes and rng.random() < 0.2:
            i = int(rng.integers(len(sizes)))
            sizes[i] = INTERESTING_INTS[int(rng.integers(len(INTERESTING_INTS)))] % (1 << 64)
            what += f" size{i}"
        table = b"".join(struct.pack("<QQ", len(c), u) for c, u in zip(packed, sizes, strict=True))
        return bytes(head) + table + b"".join(packed), what


class SplatReader(SplatFormatReader):
    suffix = ".splat"
    fmt, error_name = "splat", "SplatFormatError"

    def write_seed(self, write: Callable[..., Any], path: Path, n: int, degree: int) -> None:
        write(path, _gaussians(n, 0, n))  # .splat holds SH degree 0 only


class SogReader(SplatFormatReader):
    """The .sog bundle: meta.json trees, images replaced or mutated, the ZIP itself."""

    suffix = ".sog"
    fmt, error_name, record = "sog", "SogFormatError", True

    def mutate(self, rng: np.random.Generator) -> tuple[bytes, str]:
        import io
        import zipfile

        seed = self.seeds[int(rng.integers(len(self.seeds)))]
        if rng.random() < 0.25:
            return havoc(rng, seed)
        with zipfile.ZipFile(io.BytesIO(seed)) as z:
            members = {name: z.read(name) for name in z.namelist()}
        roll, what = rng.random(), "sog"
        if roll < 0.5:
            doc = json.loads(members["meta.json"])
            for _ in range(int(rng.integers(1, 4))):
                doc, done = mutate_json(rng, doc)
                what += f" meta {done}"
            members["meta.json"] = json.dumps(doc).encode()[: 1 << 22]
        else:
            names = sorted(n for n in members if n.endswith(".webp"))
            name = names[int(rng.integers(len(names)))]
            if rng.random() < 0.5:
                members[name], done = havoc(rng, members[name])
            else:  # a valid image of another size and content
                from PIL import Image

                w, h = (int(v) for v in rng.integers(1, 90, 2))
                pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
                out = io.BytesIO()
                Image.fromarray(pixels, "RGBA").save(out, "WEBP", lossless=True, exact=True)
                members[name], done = out.getvalue(), f"image {w}x{h}"
            what += f" {name} {done}"
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return out.getvalue(), what


def _glb(doc: dict, blob: bytes) -> bytes:
    return _glb_text(json.dumps(doc).encode(), blob)


def _glb_text(text: bytes, blob: bytes) -> bytes:
    """A GLB container of JSON `text` and a BIN chunk, with consistent lengths."""
    text += b" " * (-len(text) % 4)
    blob += b"\0" * (-len(blob) % 4)
    header = struct.pack("<IIIII", 0x46546C67, 2, 28 + len(text) + len(blob), len(text),
                         0x4E4F534A)  # fmt: skip
    return header + text + struct.pack("<II", len(blob), 0x004E4942) + blob


class GltfReader(SplatFormatReader):
    """Both containers: .glb (binary chunk) and .gltf (base64 data URI: one file to
    mutate, rather than the sidecar .bin the writer makes by default), picked per case."""

    suffix = ".glb"
    fmt, error_name, seed_names = "gltf", "GltfFormatError", ("s.glb", "s.gltf")

    def write_seed(self, write: Callable[..., Any], path: Path, n: int, degree: int) -> None:
        write(path, _gaussians(n, degree, n), embed=True)

    def mutate(self, rng: np.random.Generator) -> tuple[bytes, str]:
        seed = self.seeds[int(rng.integers(len(self.seeds)))]
        binary = seed[:4] == b"glTF"
        self.suffix = ".glb" if binary else ".gltf"
        if rng.random() < 0.3:
            return havoc(rng, seed)
        if binary:
            json_len = struct.unpack_from("<I", seed, 12)[0]
            doc, blob = json.loads(seed[20 : 20 + json_len]), seed[28 + json_len :]
        else:
            doc, blob = json.loads(seed), b""
        what = []
        for _ in range(int(rng.integers(1, 4))):
            doc, done = mutate_json(rng, doc)
            what.append(done)
        if binary and rng.random() < 0.3:
            blob, done = havoc(rng, blob)
            what.append("bin " + done)
        if not isinstance(doc, dict):
            return json.dumps(doc).encode(), "; ".join(what)
        if rng.random() < 0.05 and isinstance(doc.get("buffers"), list) and doc["buffers"]:
            uri = rng.choice(["x.bin", "sub/x.bin", "/dev/zero", "x\0.bin", "data:,",
                              "data:application/octet-stream;base64," + base64.b64encode(
                                  bytes(64)).decode()])  # fmt: skip
            if isinstance(doc["buffers"][0], dict):
                doc["buffers"][0]["uri"] = str(uri)
                what.append(f"uri {uri!r}")
        if rng.random() < 0.03:
            text, done = deep_nest(rng, json.dumps(doc, indent=0).encode())
            return (_glb_text(text, blob) if binary else text), "; ".join([*what, done])
        text = json.dumps(doc).encode()
        if len(text) > 1 << 22:  # repeated lists can grow past what is useful to test
            return text[: 1 << 22], "; ".join(what) + " (cut)"
        return (_glb(doc, blob) if binary else text), "; ".join(what)


class TransformsReader(Reader):
    """read_nerf_transforms on transforms.json files whose frames show one 8x8 PNG."""

    suffix = ".json"

    def make_seeds(self) -> list[bytes]:
        from PIL import Image

        Image.new("RGBA", (8, 8), (200, 100, 50, 255)).save(self.folder / "img.png")
        base = json.loads((SAMPLE / "transforms_input.json").read_text())
        scale = 8 / base["w"]
        for key in ("fl_x", "fl_y", "cx", "cy"):
            base[key] *= scale
        base["w"] = base["h"] = 8
        for frame in base["frames"]:
            frame["file_path"] = "img.png"
        angle = {k: v for k, v in base.items() if k not in ("fl_x", "fl_y", "cx", "cy")}
        angle["camera_angle_x"] = 0.69
        sizeless = {k: v for k, v in base.items() if k not in ("w", "h")}
        per_frame = json.loads(json.dumps(base))
        for frame in per_frame["frames"]:
            frame["fl_x"], frame["file_path"] = 9.0, "img"  # no extension: found by search
        return [json.dumps(d, indent=1).encode() for d in (base, angle, sizeless, per_frame)]

    def mutate(self, rng: np.random.Generator) -> tuple[bytes, str]:
        if rng.random() < 0.25:
            return super().mutate(rng)
        doc = json.loads(self.seeds[int(rng.integers(len(self.seeds)))])
        what = []
        for _ in range(int(rng.integers(1, 4))):
            doc, done = mutate_json(rng, doc)
            what.append(done)
        if rng.random() < 0.05:
            text, done = deep_nest(rng, json.dumps(doc, indent=0).encode())
            return text, "; ".join([*what, done])
        return json.dumps(doc).encode()[: 1 << 22], "; ".join(what)

    def read(self, path: Path) -> Any:
        from engine.camera_formats import read_nerf_transforms
        from engine.cameras import CameraError

        self.error = CameraError
        return read_nerf_transforms(path)

    def check(self, result: Any) -> None:
        result.cameras.validate()
        if len(result.image_paths) != len(result.cameras):
            raise AssertionError("image paths and cameras differ in number")


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        chunks.append((kind, data[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def _png_mutation(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """Mutate inside a PNG with valid CRCs: IHDR fields, or the inflated scanlines of IDAT
    (recompressed), so the mutation reaches the decoder instead of the checksum test."""
    chunks = _png_chunks(data)
    out = []
    what = "png"
    for kind, body in chunks:
        if kind == b"IHDR" and rng.random() < 0.5:
            fields = bytearray(body)
            at = int(rng.choice([0, 4, 8, 9, 10, 11, 12]))
            width = 4 if at < 8 else 1
            value = INTERESTING_INTS[int(rng.integers(len(INTERESTING_INTS)))]
            value = int(rng.integers(0, 70_000)) if rng.random() < 0.3 else value
            fields[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
            body, what = bytes(fields), f"png IHDR@{at}={value}"
        elif kind == b"IDAT" and rng.random() < 0.7:
            try:
                raw = zlib.decompress(body)
            except zlib.error:
                raw = body
            raw, done = havoc(rng, raw)
            body, what = zlib.compress(raw), "png IDAT " + done
        out.append(struct.pack(">I", len(body)) + kind + body)
        out[-1] += struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + b"".join(out), what


class ImageReader(Reader):
    """read_rgba, the one decoder of view images, at full size or reduced to 4x4."""

    suffix = ".png"

    def make_seeds(self) -> list[bytes]:
        import io

        from PIL import Image

        y, x = np.mgrid[0:16, 0:16]
        rgba = np.stack([x * 16, y * 16, (x + y) * 8, 255 - x * 8], -1).astype(np.uint8)
        base = Image.fromarray(rgba)
        seeds = []
        for image, fmt, options in [
            (base, "PNG", {}),
            (base.convert("RGB"), "JPEG", {"quality": 90}),
            (base, "WEBP", {"lossless": True}),
            (base.convert("P"), "PNG", {}),
            (Image.fromarray(rgba[..., 0].astype(np.uint16) * 257), "PNG", {}),  # 16-bit
            (base.convert("LA"), "PNG", {}),
        ]:
            buffer = io.BytesIO()
            image.save(buffer, format=fmt, **options)
            seeds.append(buffer.getvalue())
        return seeds

    def mutate(self, rng: np.random.Generator) -> tuple[bytes, str]:
        seed = self.seeds[int(rng.integers(len(self.seeds)))]
        if seed[:8] == b"\x89PNG\r\n\x1a\n" and rng.random() < 0.6:
            return _png_mutation(rng, seed)
        return super().mutate(rng)

    def read(self, path: Path) -> Any:
        from engine.images import read_rgba

        self.error = ValueError  # ImageTooLargeError is one
        # Both paths: full decoding, and reduced decoding (draft / reduce / resize).
        return read_rgba(path, None if path.stat().st_size % 2 else (4, 4))

    def check(self, result: Any) -> None:
        if result.ndim != 3 or result.shape[2] != 4 or result.dtype != np.float32:
            raise AssertionError(f"got an array of shape {result.shape} and {result.dtype}")
        if not (np.isfinite(result).all() and result.min() >= 0 and result.max() <= 1):
            raise AssertionError("values outside [0, 1]")


READER_CLASSES: dict[str, type[Reader]] = {
    "ply": PlyReader,
    "compressed_ply": CompressedPlyReader,
    "spz": SpzReader,
    "splat": SplatReader,
    "sog": SogReader,
    "gltf": GltfReader,
    "transforms": TransformsReader,
    "images": ImageReader,
}


# ============================================================================ worker


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout(f"no answer within {CASE_SECONDS} s")


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame in this repository."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if str(ROOT) in f.filename]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{Path(f.filename).relative_to(ROOT)}:{f.lineno}"


def run_worker(name: str, seed: int, first: int, count: int) -> dict:
    """Fuzz one reader in this process; a summary dict (printed as JSON by the caller)."""
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    index = READERS.index(name)
    with tempfile.TemporaryDirectory(prefix="gd-fuzz-") as tmp:
        folder = Path(tmp)
        reader = READER_CLASSES[name](folder)
        for seed_bytes in reader.seeds:  # unmutated, every seed must read
            suffix = ".glb" if seed_bytes[:4] == b"glTF" else reader.suffix
            if name == "gltf" and seed_bytes[:1] == b"{":
                suffix = ".gltf"
            (folder / f"seed{suffix}").write_bytes(seed_bytes)
            reader.check(reader.read(folder / f"seed{suffix}"))
        counts = {"ok": 0, "error": 0, "escape": 0}
        escapes: list[dict] = []
        slowest = (0.0, -1)
        start = time.perf_counter()
        for case in range(first, first + count):
            rng = np.random.default_rng([seed, index, case])
            data, what = reader.mutate(rng)
            path = folder / f"case{reader.suffix}"
            path.write_bytes(data)
            t0 = time.perf_counter()
            signal.alarm(CASE_SECONDS)
            try:
                result = reader.read(path)
                reader.check(result)
                outcome = "ok"
            except _Timeout as exc:
                outcome, problem = "escape", exc
            except MemoryError as exc:
                outcome, problem = "escape", exc
            except Exception as exc:  # noqa: BLE001 - classifying every exception is the point
                documented = isinstance(exc, reader.error) and str(path) in str(exc)
                outcome, problem = ("error", None) if documented else ("escape", exc)
            finally:
                signal.alarm(0)
            elapsed = time.perf_counter() - t0
            slowest = max(slowest, (elapsed, case))
            counts[outcome] += 1
            if outcome == "escape":
                escapes.append({
                    "case": case,
                    "mutation": what[:120],
                    "type": type(problem).__name__,
                    "message": str(problem).replace(str(folder), "TMP")[:200],
                    "where": _where(problem),
                })  # fmt: skip
            path.unlink(missing_ok=True)
        seconds = time.perf_counter() - start
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    return {"reader": name, "count": count, "seconds": seconds, "slowest_s": slowest[0],
            "slowest_case": slowest[1], "peak_bytes": peak, **counts,
            "escapes": escapes}  # fmt: skip


# ============================================================================ driver


def _machine() -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from machine import cpu_and_memory

    cpu, mem = cpu_and_memory()
    parts = [cpu, f"{os.cpu_count()} logical CPUs", mem, f"torch {torch.__version__}",
             f"Python {platform.python_version()}"]  # fmt: skip
    return ", ".join(p for p in parts if p)


def _report(args: argparse.Namespace, results: list[dict], load: tuple[str, str]) -> str:
    lines = [
        "# Reader fuzzing (`bench/fuzz_readers.py`)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- command: `{shlex.join(['python', 'bench/fuzz_readers.py', *sys.argv[1:]])}`",
        f"- machine: {_machine()}",
        f"- load: 1/5/15-min load average {load[0]} before, {load[1]} after",
        f"- inputs: {args.count:,} per reader from seed {args.seed} (case numbers "
        f"{args.first}..{args.first + args.count - 1}); each reader in its own process, one "
        f"torch thread, data segment capped at {DATA_LIMIT >> 30} GiB, {CASE_SECONDS} s alarm "
        "per input",
        "- outcome: `ok` = valid data returned; `error` = the format's documented error naming "
        "the file; `escape` = anything else (listed below)",
        "",
        "| reader | inputs | ok | documented error | escaped | time (s) | per input (ms) "
        "| slowest input (ms) | peak memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['reader']} | {r['count']:,} | {r['ok']:,} | {r['error']:,} | {r['escape']:,} "
            f"| {r['seconds']:.1f} | {1000 * r['seconds'] / max(1, r['count']):.2f} "
            f"| {1000 * r['slowest_s']:.0f} | {r['peak_bytes'] / 2**20:.0f} |"
        )
    lines += ["", "## What escaped", ""]
    escaped = [(r["reader"], e) for r in results for e in r["escapes"]]
    if not escaped:
        lines.append("Nothing: every input gave valid data or the format's documented error.")
    groups: dict[tuple, list] = {}
    for reader, e in escaped:
        groups.setdefault((reader, e["type"], e["where"], e["message"][:60]), []).append(e)
    for (reader, kind, where, _), items in groups.items():
        e = items[0]
        lines.append(
            f"- {reader}: {len(items)} x `{kind}` at {where}: {e['message']} "
            f"(e.g. case {e['case']}: {e['mutation']})"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="inputs per reader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="first case number")
    parser.add_argument("--readers", nargs="+", choices=READERS, default=list(READERS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    parser.add_argument("--worker", choices=READERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.seed, args.first, args.count)))
        return 0
    before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    for name in args.readers:
        cmd = [sys.executable, __file__, "--worker", name, "--seed", str(args.seed),
               "--first", str(args.first), "--count", str(args.count)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name}: {r['count']:,} inputs in {r['seconds']:.1f} s: ok {r['ok']:,}, "
              f"documented errors {r['error']:,}, escaped {r['escape']:,}", flush=True)  # fmt: skip
    after = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    report = _report(args, results, (before, after))
    if args.no_write:
        print(report)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"wrote {args.out}")
    return 1 if any(r["escape"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
