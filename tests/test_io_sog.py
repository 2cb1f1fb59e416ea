"""PlayCanvas SOG reader/writer: quantisation-bounded round trips, layout, hostile files
(sizes bounded before anything is decoded or allocated), fuzzing. splat-transform's reading
of our SOG and our reading of its SOG: tests/test_io_splat_transform.py."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from engine.gaussians import Gaussians
from engine.io import load, save
from engine.io.compressed_ply import morton_order
from engine.io.sog import SogFormatError, encode_sog, read_sog, texture_size, webp_size, write_sog

from ._rotation_helpers import rotation_angle
from .conftest import fuzz, read_fuzzed, written_bytes
from .conftest import random_gaussians as shared_random_gaussians

FUZZ = fuzz(60)

# Rotations: the three smaller components of q·sqrt(2) in 8 bits, step 2/255, so each
# component of q is within s/2, s = sqrt(2)/255; as for SPZ's smallest three
# (tests/test_io_spz.py), |q - q'| <= sqrt(3) s and the angle <= 2 asin(sqrt(3) s) (+5%).
ROT_TOL = 1.05 * 2 * math.asin(math.sqrt(3) * math.sqrt(2) / 255)
ALPHA_TOL = 0.5 / 255 + 1e-6
EPS = 1e-5  # float32 decode


def random_gaussians(n: int, degree: int = 3, seed: int = 0) -> Gaussians:
    return shared_random_gaussians(n, degree, seed, means_std=3.0, log_scale_range=(-7.0, -1.0),
                                   opacity_std=3.0, sh_std=0.4)  # fmt: skip


def nearest_entry_error(values: torch.Tensor, book: list[float]) -> torch.Tensor:
    """|value - nearest float32 codebook entry| for each value: the codebook's own bound."""
    b = torch.tensor(book, dtype=torch.float32).double()
    return (values.double().reshape(-1, 1) - b).abs().amin(dim=1).reshape(values.shape)


def check_within_quantisation(g: Gaussians, h: Gaussians, meta: dict) -> None:
    """`h` (decoded, file order) against `g` (the same order), bound by bound."""
    g, h = g.to(dtype=torch.float64), h.to(dtype=torch.float64)
    # Positions: 16 bits in the log domain l = sign(x) ln(1 + |x|); half a step in l moves
    # x by at most that times e^{|l| + step} (the slope of expm1).
    mins, maxs = torch.tensor(meta["means"]["mins"]), torch.tensor(meta["means"]["maxs"])
    step = (maxs - mins).double() / 65535
    logged = torch.sign(g.means) * torch.log1p(g.means.abs())
    bound = step / 2 * torch.exp(logged.abs() + step) + EPS
    assert bool(((h.means - g.means).abs() <= bound).all())
    # Codebooked values: each is its codebook's nearest entry (to float32 rounding).
    for name, got, want in [
        ("scales", h.log_scales, g.log_scales),
        ("sh0", h.sh[:, 0], g.sh[:, 0]),
    ]:
        best = nearest_entry_error(want, meta[name]["codebook"])
        assert bool(((got - want).abs() <= best + EPS).all()), name
    if g.sh_degree:
        best = nearest_entry_error(g.sh[:, 1:], meta["shN"]["codebook"])
        assert bool(((h.sh[:, 1:] - g.sh[:, 1:]).abs() <= best + EPS).all()), "shN"
    assert float((h.opacities - g.opacities).abs().max()) <= ALPHA_TOL
    assert float(rotation_angle(h.quats, g.quats).max()) <= ROT_TOL


def read_meta(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("meta.json"))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [1, 5, 300])
def test_bundle_round_trip_within_quantisation(tmp_path: Path, n: int, degree: int) -> None:
    g = random_gaussians(n, degree, seed=n + degree)
    path = tmp_path / "a.sog"
    write_sog(path, g, sort=False)
    data = read_sog(path)
    assert len(data.gaussians) == n and data.gaussians.sh_degree == degree
    check_within_quantisation(g, data.gaussians, read_meta(path))
    # Up to 65,536 splats the palette is exact: one entry each.
    assert data.palette_size == (n if degree else 0)


def test_sorted_and_loose_files(tmp_path: Path) -> None:
    g = random_gaussians(700, 3)
    save(g, tmp_path / "a.sog", axes="raw")  # Morton-sorted by default
    order = torch.from_numpy(morton_order(g.means))
    h = load(tmp_path / "a.sog", axes="raw")
    check_within_quantisation(g[order], h, read_meta(tmp_path / "a.sog"))
    # Loose files: meta.json with its images beside it; a prefix keeps scenes apart.
    (tmp_path / "loose").mkdir()
    save(g, tmp_path / "loose" / "meta.json", axes="raw")
    save(g, tmp_path / "loose" / "chair.meta.json", axes="raw")
    names = sorted(os.listdir(tmp_path / "loose"))
    assert "means_l.webp" in names and "chair.means_l.webp" in names and len(names) == 16
    for meta in ("meta.json", "chair.meta.json"):
        assert torch.equal(load(tmp_path / "loose" / meta, axes="raw").means, h.means)
    assert json.loads((tmp_path / "loose" / "chair.meta.json").read_text())["sh0"]["files"] == [
        "chair.sh0.webp"
    ]


def test_layout_is_splat_transforms(tmp_path: Path) -> None:
    """What splat-transform writes: stored ZIP entries, its image sizes, meta fields."""
    for n in (1, 17, 1000, 4097):
        w, h = texture_size(n)
        assert w % 4 == 0 and h % 4 == 0 and w * h >= n
    g = random_gaussians(1000, 2)
    path = tmp_path / "a.sog"
    write_sog(path, g)
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos.values())
        meta = json.loads(z.read("meta.json"))
        assert webp_size(z.read("means_l.webp")) == texture_size(1000) == (32, 32)
        # 1000 palette entries of 8 coefficients: 64 entries a row.
        assert webp_size(z.read("shN_centroids.webp")) == (64 * 8, 16)
        for name in ("quats.webp", "sh0.webp"):
            image = Image.open(io.BytesIO(z.read(name)))
            assert image.format == "WEBP" and image.mode == "RGBA"
    assert meta["version"] == 2 and meta["count"] == 1000
    assert sorted(infos) == sorted(["meta.json", *(
        f"{s}.webp" for s in ("means_l", "means_u", "quats", "scales", "sh0",
                              "shN_centroids", "shN_labels"))])  # fmt: skip
    assert meta["shN"]["bands"] == 2 and meta["shN"]["count"] == 1000
    assert len(meta["scales"]["codebook"]) == 256 == len(meta["sh0"]["codebook"])
    # Equal input, equal bytes (no time stamps).
    write_sog(tmp_path / "b.sog", g)
    assert path.read_bytes() == (tmp_path / "b.sog").read_bytes()


def test_opacity_zero_keeps_its_colour(tmp_path: Path) -> None:
    """sh0's alpha is the opacity; a splat of opacity 0 keeps its colour labels (lossless
    WebP is asked to keep RGB under alpha 0)."""
    g = random_gaussians(64, 0)
    g.opacity_logits[:] = -30.0
    write_sog(tmp_path / "a.sog", g, sort=False)
    h = read_sog(tmp_path / "a.sog").gaussians
    best = nearest_entry_error(g.sh[:, 0], read_meta(tmp_path / "a.sog")["sh0"]["codebook"])
    assert bool(((h.sh[:, 0] - g.sh[:, 0]).abs() <= best + EPS).all())


@pytest.mark.slow
def test_large_scene_clusters_the_sh_palette(tmp_path: Path) -> None:
    """Above 65,536 splats the SH rest vectors share a clustered palette of 65,536."""
    n = 66_000
    g = random_gaussians(n, 1, seed=3)
    write_sog(tmp_path / "big.sog", g, sort=False, iterations=3)
    assert read_meta(tmp_path / "big.sog")["shN"]["count"] == 65_536
    h = read_sog(tmp_path / "big.sog").gaussians
    assert len(h) == n
    # Clustering costs accuracy only in the SH rest; each entry is a cluster mean, so the
    # error stays well below the spread of the values (0.4).
    err = (h.sh[:, 1:] - g.sh[:, 1:]).abs()
    assert float(err.mean()) < 0.05 and float(err.max()) < 1.0


def test_write_refuses(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="zero Gaussians"):
        write_sog(tmp_path / "a.sog", random_gaussians(3)[:0])
    with pytest.raises(ValueError, match="meta.json"):
        write_sog(tmp_path / "a.webp", random_gaussians(3))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- hostile files


def vp8l(width: int, height: int) -> bytes:
    """A WebP (lossless) header declaring width x height, with no image data behind it."""
    bits = (width - 1) | ((height - 1) << 14) | (1 << 28)
    payload = b"\x2f" + struct.pack("<I", bits) + bytes(16)
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def valid_parts(n: int = 20, degree: int = 1) -> tuple[dict[str, bytes], dict]:
    images, meta = encode_sog(random_gaussians(n, degree), sort=False)
    return images, meta


def bundle(path: Path, images: dict[str, bytes], meta: dict | bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in images.items():
            z.writestr(name, data)
        z.writestr("meta.json", meta if isinstance(meta, bytes) else json.dumps(meta))
    return path


def _set(meta: dict, dotted: str, value) -> dict:
    meta = json.loads(json.dumps(meta))
    *keys, last = dotted.split(".")
    obj = meta
    for k in keys:
        obj = obj[k]
    if value is _DELETE:
        del obj[last]
    else:
        obj[last] = value
    return meta


_DELETE = object()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("version", _DELETE, "version 1"),
        ("version", 3, "unsupported SOG version 3"),
        ("count", 0, "positive"),
        ("count", -5, "count"),
        ("count", True, "count"),
        ("count", 60_000_000, "MAX_GAUSSIANS|more than SOG"),
        ("count", 200, "must hold 200"),
        ("means.mins", [0, 0], "3 numbers"),
        ("means.maxs", [1e308, 1e308, 1e308], "overflow"),
        ("means.files", ["../../etc/passwd", "means_u.webp"], "plain file name"),
        ("means.files", ["missing.webp", "means_u.webp"], "no 'missing.webp'"),
        ("scales.codebook", [], "1 to 256"),
        ("scales.codebook", [0.0] * 257, "1 to 256"),
        ("scales.codebook", [0.0] * 3, "beyond its codebook"),
        ("sh0.codebook", ["x"], "numbers"),
        ("shN.bands", 4, "bands"),
        ("shN.count", 70_000, "shN.count"),
        ("shN.count", 5, "must hold|beyond the palette"),
        ("quats.files", ["sh0.webp"], "alpha byte"),
        ("sh0.files", ["meta.json"], "not a WebP"),
        ("shN.files", ["shN_labels.webp", "shN_labels.webp"], "must hold"),
    ],
)
def test_hostile_meta(tmp_path: Path, field: str, value, match: str) -> None:
    images, meta = valid_parts()
    path = bundle(tmp_path / "bad.sog", images, _set(meta, field, value))
    with pytest.raises(SogFormatError, match=match) as info:
        read_sog(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda images, meta: b"", "not a readable ZIP"),
        (lambda images, meta: b"PK\x03\x04" + bytes(40), "not a readable ZIP"),
        (lambda images, meta: {**images, "meta.json": b"{not json"}, "does not parse"),
        (lambda images, meta: {**images, "meta.json": b"[]"}, "not a JSON object"),
        (lambda images, meta: {**images, "meta.json": b" " * (2 << 20)}, "more than"),
        (lambda images, meta: {k: v for k, v in images.items() if k != "quats.webp"},
         "no 'quats.webp'"),
        # A header declaring 16000 x 16000 texels: refused from the header, never decoded.
        (lambda images, meta: {**images, "scales.webp": vp8l(16000, 16000)}, "16000x16000"),
        (lambda images, meta: {**images, "scales.webp": vp8l(8, 4)[:-10] + b"junk"},
         "does not decode"),
    ],
)  # fmt: skip
def test_hostile_bundles(tmp_path: Path, make, match: str) -> None:
    images, meta = valid_parts()
    made = make(images, meta)
    path = tmp_path / "bad.sog"
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        meta_bytes = made.pop("meta.json", json.dumps(meta).encode())
        bundle(path, made, meta_bytes)
    with pytest.raises(SogFormatError, match=match):
        read_sog(path)


def test_zip_bomb_member_is_read_no_further_than_it_can_need(tmp_path: Path) -> None:
    """A deflated member expanding to 200 MB (a few hundred KB in the file), and one whose
    declared size is honest but huge: both refused by size, the bomb after reading at most
    its cap (so memory stays bounded by the count, not by what the member declares)."""
    images, meta = valid_parts()
    path = tmp_path / "bomb.sog"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in images.items():
            z.writestr(name, data if name != "scales.webp" else data + bytes(200 << 20))
        z.writestr("meta.json", json.dumps(meta))
    assert path.stat().st_size < 2 << 20
    with pytest.raises(SogFormatError, match="scales.webp.*bytes"):
        read_sog(path)
    # The same bomb with its declared size patched small (in the central directory, which
    # zipfile trusts): the read still stops at the cap and the member is refused.
    data = bytearray(path.read_bytes())
    for pos in (i for i in range(len(data)) if data.startswith(b"PK\x01\x02", i)):
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + name_len] == b"scales.webp":
            struct.pack_into("<I", data, pos + 24, 100)  # uncompressed size
    path.write_bytes(bytes(data))
    with pytest.raises(SogFormatError, match="scales.webp"):
        read_sog(path)


def test_loose_files_must_be_regular_files_beside_meta(tmp_path: Path) -> None:
    g = random_gaussians(20, 0)
    write_sog(tmp_path / "meta.json", g)
    (tmp_path / "quats.webp").unlink()
    os.mkfifo(tmp_path / "quats.webp")  # would block a plain open() forever
    with pytest.raises(SogFormatError, match="not a regular file"):
        read_sog(tmp_path / "meta.json")
    (tmp_path / "quats.webp").unlink()
    with pytest.raises(SogFormatError, match="'quats.webp' is missing"):
        read_sog(tmp_path / "meta.json")


# ---------------------------------------------------------------------------- fuzzing

_SAMPLE: bytes | None = None


def _sample() -> bytes:
    global _SAMPLE
    if _SAMPLE is None:
        _SAMPLE = written_bytes(write_sog, "a.sog", random_gaussians(9, 1))
    return _SAMPLE


def _read_only_documented_errors(content: bytes) -> None:
    read_fuzzed(content, lambda path: read_sog(path).gaussians, SogFormatError, "f.sog")


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(content: bytes) -> None:
    _read_only_documented_errors(content)


@FUZZ
@given(st.data())
def test_fuzz_flips_and_truncations(data: st.DataObject) -> None:
    content = bytearray(_sample())
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(content) - 1))
        content[i] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(len(content) // 2, len(content)))
    _read_only_documented_errors(bytes(content[:cut]))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
_FIELDS = ["version", "count", "means", "means.mins", "means.maxs", "means.files", "scales",
           "scales.codebook", "quats.files", "sh0.codebook", "shN", "shN.count", "shN.bands",
           "shN.codebook", "shN.files"]  # fmt: skip


@FUZZ
@given(st.sampled_from(_FIELDS), _JSON)
def test_fuzz_meta_fields(field: str, value) -> None:
    images, meta = valid_parts(9, 1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in images.items():
            z.writestr(name, data)
        z.writestr("meta.json", json.dumps(_set(meta, field, value)))
    _read_only_documented_errors(buf.getvalue())


@FUZZ
@given(st.sampled_from(["means_l.webp", "quats.webp", "scales.webp", "sh0.webp",
                        "shN_labels.webp", "shN_centroids.webp"]),
       st.integers(1, 70), st.integers(1, 70), st.binary(min_size=0, max_size=64))  # fmt: skip
def test_fuzz_images(name: str, w: int, h: int, pixels: bytes) -> None:
    """Images of any size and content in place of a valid one."""
    images, meta = valid_parts(9, 1)
    texels = np.resize(np.frombuffer(pixels or b"\0", np.uint8), (h, w, 4))
    out = io.BytesIO()
    Image.fromarray(texels, "RGBA").save(out, "WEBP", lossless=True, exact=True)
    images[name] = out.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, data in images.items():
            z.writestr(n, data)
        z.writestr("meta.json", json.dumps(meta))
    _read_only_documented_errors(buf.getvalue())
