"""Hostile splat files that try to exhaust memory or hang the readers (hardening issue 12).

Each test reproduces an attack and asserts the format's own clear error (for `gd export`:
one line on stderr, exit status 2, nothing written) or a bounded result; the bombs run in a
fresh process whose peak resident memory is measured and must stay below 1.5 GB.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from pathlib import Path

import pytest

from engine.gaussians import Gaussians
from engine.io import (
    CompressedPlyFormatError,
    GltfFormatError,
    PlyFormatError,
    SplatFormatError,
    SpzFormatError,
    read_compressed_ply,
    read_gltf,
    read_ply,
    read_splat,
    read_spz,
    write_gltf,
    write_spz,
)
from engine.io.limits import MAX_GAUSSIANS
from engine.io.ply import standard_property_names

from ._bomb_helpers import PEAK_LIMIT, gzip_repeated, run_measured
from .conftest import random_gaussians

SPZ_MAGIC = 0x5053474E
TOO_MANY = MAX_GAUSSIANS + 1
CAP_MESSAGE = f"above the {MAX_GAUSSIANS:,}"


def spz_header(n: int, degree: int = 0, version: int = 3) -> bytes:
    return struct.pack("<IIIBBBB", SPZ_MAGIC, version, n, degree, 12, 0, 0)


def sparse_file(path: Path, head: bytes, size: int) -> Path:
    """`head` followed by zeros up to `size` bytes, without writing (or storing) the zeros."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def small_gaussians(n: int, sh_degree: int = 0) -> Gaussians:
    return random_gaussians(n, sh_degree, sh_std=0.3)


def assert_refused_by_export(source: Path, fragment: str) -> None:
    """`gd export SOURCE out.ply` fails cleanly: exit 2, one stderr line, nothing written,
    peak memory below the limit."""
    out = source.parent / "out.ply"
    run = run_measured(gd=["export", str(source), str(out)])
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gd export: error: "), run.stderr
    assert fragment in lines[0] and str(source) in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in source.parent.iterdir()) == [source.name]
    assert run.peak_bytes < PEAK_LIMIT, f"peak {run.peak_bytes / 2**30:.2f} GiB"


# ---------------------------------------------------------------------------- SPZ


@pytest.mark.parametrize("points", [20_000_000, 5_000_000])
def test_spz_zero_point_bomb_is_refused_before_allocating(tmp_path: Path, points: int) -> None:
    """389 KB declaring 20M zero points (was 7 GB resident) and 97 KB for 5M (was 1.9 GB)."""
    payload = points * 20  # degree 0, version 3: 20 attribute bytes a point
    bomb = gzip_repeated(spz_header(points), bytes(4_000_000), payload // 4_000_000)
    assert len(bomb) < 400_000
    path = tmp_path / "bomb.spz"
    path.write_bytes(bomb)
    assert_refused_by_export(path, "decompression bomb")


@pytest.mark.slow  # decodes 3.3M Gaussians: ~1.5 s of CPU
def test_spz_most_compressible_file_accepted_reads_bounded(tmp_path: Path) -> None:
    """Below 64 MiB of attributes any ratio is accepted: 3.3M zero points from a 65 KB file
    decode into float32 Gaussians within the memory limit (a bounded result)."""
    points = (64 << 20) // 20 // 1000 * 1000  # 3,355,000 points, 67.1 MB of attributes
    path = tmp_path / "dense.spz"
    path.write_bytes(gzip_repeated(spz_header(points), bytes(671_000), 100))
    assert path.stat().st_size < 100_000
    code = f"from engine.io import read_spz; print(len(read_spz({str(path)!r}).gaussians))"
    run = run_measured(python=code)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == points
    assert run.peak_bytes < PEAK_LIMIT, f"peak {run.peak_bytes / 2**30:.2f} GiB"


def test_spz_count_above_the_limit(tmp_path: Path) -> None:
    # A file large enough for its count at a plausible ratio (sparse: nothing is written).
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = deflate.compress(spz_header(TOO_MANY)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    head += b"\x00" + struct.pack("<HH", 0xFFFF, 0x0000)  # a stored block: the zeros after
    path = sparse_file(tmp_path / "many.spz", head, TOO_MANY * 20 // 32)
    with pytest.raises(SpzFormatError, match=CAP_MESSAGE):
        read_spz(path)


def test_spz_more_data_than_the_header_declares(tmp_path: Path) -> None:
    write_spz(tmp_path / "ok.spz", small_gaussians(3))
    ok = read_spz(tmp_path / "ok.spz")
    assert len(ok.gaussians) == 3
    # Two points declared, 2 MiB of attribute-like bytes after them: refused, read bounded.
    path = tmp_path / "long.spz"
    path.write_bytes(gzip_repeated(spz_header(2) + bytes(40), bytes(1 << 20), 2))
    with pytest.raises(SpzFormatError, match="more than 1048576 bytes beyond the 40 bytes"):
        read_spz(path)
    # A little trailing data (extensions) is still skipped.
    path.write_bytes(gzip_repeated(spz_header(2) + bytes(40), bytes(1000), 1))
    assert len(read_spz(path).gaussians) == 2


# ---------------------------------------------------------------------------- glTF


def glb(doc: dict, blob: bytes) -> bytes:
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    return (
        struct.pack("<IIIII", 0x46546C67, 2, 28 + len(text) + len(blob), len(text), 0x4E4F534A)
        + text
        + struct.pack("<II", len(blob), 0x004E4942)
        + blob
    )


def split_glb(data: bytes) -> tuple[dict, bytes]:
    json_len = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20 : 20 + json_len]), data[28 + json_len :]


def written_glb(tmp_path: Path, n: int, sh_degree: int = 0) -> tuple[dict, bytes]:
    write_gltf(tmp_path / "src.glb", small_gaussians(n, sh_degree))
    data = (tmp_path / "src.glb").read_bytes()
    (tmp_path / "src.glb").unlink()
    return split_glb(data)


@pytest.mark.parametrize(("primitives", "points"), [(2000, 2000), (2000, 4000)])
def test_glb_primitives_sharing_accessors_are_refused(
    tmp_path: Path, primitives: int, points: int
) -> None:
    """A valid glb whose primitives all reuse one accessor set: 835 KB named 4M Gaussians
    (1.7 GB); 1.2 MB named 8M (a bare torch RuntimeError)."""
    doc, blob = written_glb(tmp_path, points)
    doc["meshes"][0]["primitives"] *= primitives
    path = tmp_path / "shared.glb"
    path.write_bytes(glb(doc, blob))
    assert path.stat().st_size < 1_300_000
    assert_refused_by_export(path, "accessors are reused")


def test_glb_one_primitive_per_accessor_set_still_reads(tmp_path: Path) -> None:
    # Two primitives over two halves of the data: every Gaussian has its own bytes.
    doc, blob = written_glb(tmp_path, 10)
    first = doc["meshes"][0]["primitives"][0]
    second = json.loads(json.dumps(first))
    element_bytes = {"SCALAR": 4, "VEC3": 12, "VEC4": 16}
    for name, index in list(second["attributes"].items()):
        doc["accessors"][index]["count"] = 5
        acc = dict(doc["accessors"][index])
        acc["byteOffset"] = 5 * (4 if name == "COLOR_0" else element_bytes[acc["type"]])
        doc["accessors"].append(acc)
        second["attributes"][name] = len(doc["accessors"]) - 1
    doc["meshes"][0]["primitives"].append(second)
    (tmp_path / "two.glb").write_bytes(glb(doc, blob))
    assert len(read_gltf(tmp_path / "two.glb")) == 10


def test_glb_count_above_the_limit(tmp_path: Path) -> None:
    doc, blob = written_glb(tmp_path, 4)
    for acc in doc["accessors"]:
        acc["count"] = TOO_MANY
    for view in doc["bufferViews"]:
        view["byteOffset"] = 0
        view["byteLength"] = TOO_MANY * 16
    doc["buffers"][0]["byteLength"] = TOO_MANY * 16
    (tmp_path / "many.glb").write_bytes(glb(doc, blob))
    with pytest.raises(GltfFormatError, match=CAP_MESSAGE):
        read_gltf(tmp_path / "many.glb")


def test_gltf_sh_accessors_of_different_counts(tmp_path: Path) -> None:
    """Was a ValueError from np.stack; now the format's error, naming the attribute."""
    doc, blob = written_glb(tmp_path, 10, sh_degree=1)
    name = "KHR_gaussian_splatting:SH_DEGREE_1_COEF_2"
    doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"][name]]["count"] = 7
    (tmp_path / "sh.glb").write_bytes(glb(doc, blob))
    with pytest.raises(GltfFormatError, match="SH_DEGREE_1_COEF_2 has 7 elements for 10"):
        read_gltf(tmp_path / "sh.glb")


def sidecar_gltf(tmp_path: Path, uri: str) -> tuple[Path, bytes]:
    """A .gltf naming `uri` for its buffer, and the bytes that buffer must hold."""
    doc, blob = written_glb(tmp_path, 6)
    doc["buffers"][0]["uri"] = uri
    path = tmp_path / "scene.gltf"
    path.write_text(json.dumps(doc))
    return path, blob


def test_gltf_buffer_uri_with_a_nul_byte(tmp_path: Path) -> None:
    path, _ = sidecar_gltf(tmp_path, "data\0.bin")
    with pytest.raises(GltfFormatError, match="NUL byte"):
        read_gltf(path)


def test_gltf_sidecar_regular_file_reads_only_its_byte_length(tmp_path: Path) -> None:
    path, blob = sidecar_gltf(tmp_path, "data.bin")
    (tmp_path / "data.bin").write_bytes(blob + bytes(1000))  # extra bytes are not read
    assert len(read_gltf(path)) == 6
    (tmp_path / "link.bin").symlink_to("data.bin")  # a symlink staying in the folder is fine
    path, _ = sidecar_gltf(tmp_path, "link.bin")
    assert len(read_gltf(path)) == 6
    (tmp_path / "data.bin").write_bytes(blob[:-4])
    with pytest.raises(GltfFormatError, match="fewer than"):
        read_gltf(path)


def test_gltf_sidecar_symlink_out_of_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    folder = tmp_path / "scene"
    folder.mkdir()
    path, blob = sidecar_gltf(folder, "data.bin")
    outside.write_bytes(blob)
    (folder / "data.bin").symlink_to(outside)
    with pytest.raises(GltfFormatError, match="outside the file's folder"):
        read_gltf(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_gltf_sidecar_fifo_does_not_hang(tmp_path: Path) -> None:
    path, _ = sidecar_gltf(tmp_path, "data.bin")
    fifo = tmp_path / "data.bin"
    os.mkfifo(fifo)
    # Should the reader block on the FIFO, this writer frees it after 10 s, so the test
    # fails instead of hanging.
    done = threading.Event()

    def unblock() -> None:
        if not done.wait(10):
            with open(fifo, "wb"):
                pass

    guard = threading.Thread(target=unblock, daemon=True)
    guard.start()
    try:
        with pytest.raises(GltfFormatError, match="not a regular file"):
            read_gltf(path)
    finally:
        done.set()
        guard.join()


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_gltf_sidecar_symlink_to_dev_zero(tmp_path: Path) -> None:
    """Was read until memory ran out; run in a measured, memory-capped process."""
    path, _ = sidecar_gltf(tmp_path, "data.bin")
    (tmp_path / "data.bin").symlink_to("/dev/zero")
    code = f"from engine.io import read_gltf; read_gltf({str(path)!r})"
    run = run_measured(python=code, timeout=30)
    assert "GltfFormatError" in run.stderr and "outside the file's folder" in run.stderr
    assert run.peak_bytes < PEAK_LIMIT


# ---------------------------------------------------------------------------- counts


def test_ply_count_above_the_limit(tmp_path: Path) -> None:
    names = standard_property_names(0)
    header = "\n".join(
        ["ply", "format binary_little_endian 1.0", f"element vertex {TOO_MANY}"]
        + [f"property float {n}" for n in names]
        + ["end_header", ""]
    ).encode()
    path = sparse_file(tmp_path / "many.ply", header, len(header) + TOO_MANY * 4 * len(names))
    with pytest.raises(PlyFormatError, match=CAP_MESSAGE):
        read_ply(path)


def test_compressed_ply_count_above_the_limit(tmp_path: Path) -> None:
    chunks = -(-TOO_MANY // 256)
    header = "\n".join(
        ["ply", "format binary_little_endian 1.0", f"element chunk {chunks}"]
        + [
            f"property float {n}"
            for n in ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z"]
            + [f"{e}_scale_{a}" for e in ("min", "max") for a in "xyz"]
        ]
        + [f"element vertex {TOO_MANY}"]
        + [f"property uint packed_{n}" for n in ("position", "rotation", "scale", "color")]
        + ["end_header", ""]
    ).encode()
    size = len(header) + chunks * 48 + TOO_MANY * 16
    path = sparse_file(tmp_path / "many.compressed.ply", header, size)
    with pytest.raises(CompressedPlyFormatError, match=CAP_MESSAGE):
        read_compressed_ply(path)


def test_splat_count_above_the_limit(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "many.splat", b"", TOO_MANY * 32)
    with pytest.raises(SplatFormatError, match=CAP_MESSAGE):
        read_splat(path)
