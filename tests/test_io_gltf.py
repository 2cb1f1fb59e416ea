"""glTF KHR_gaussian_splatting: round trips, Y-up at the save/load boundary, linear COLOR_0,
.gltf with a sidecar .bin, pygltflib validity, hostile files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from engine.gaussians import SH_C0, Gaussians
from engine.io import GltfFormatError, load, read_gltf, save, write_gltf
from engine.io.axes import GLTF_Y_UP
from engine.io.gltf import EXTENSION, srgb_to_linear
from engine.render.sh import sh_basis
from engine.rotations import quaternion_to_matrix

from .conftest import FUZZ, read_fuzzed, written_bytes
from .conftest import random_gaussians as shared_random_gaussians

# Tolerances: every attribute is float32, so the only loss is float32 rounding of values
# computed in float64 (relative 2^-24 ≈ 6e-8), the sigmoid/logit and exp/log round trips
# (opacity compared as opacity, |Δ| <= 2^-24) and the SH band rotation (an exact
# least-squares fit, ~1e-12) -> absolute 1e-5 on values of magnitude <= ~10.
TOL = 1e-5


def random_gaussians(n: int, sh_degree: int = 3, seed: int = 0) -> Gaussians:
    return shared_random_gaussians(n, sh_degree, seed, means_std=5.0,
                                   log_scale_range=(-6.0, 2.0), opacity_std=3.0)  # fmt: skip


def covariance(g: Gaussians) -> torch.Tensor:
    r = quaternion_to_matrix(g.quats / g.quats.norm(dim=1, keepdim=True)).double()
    s = torch.diag_embed(torch.exp(2 * g.log_scales.double()))
    return r @ s @ r.transpose(1, 2)


def check_close(g: Gaussians, h: Gaussians) -> None:
    assert len(g) == len(h) and g.sh.shape == h.sh.shape
    assert torch.allclose(g.means, h.means, atol=TOL)
    assert torch.allclose(g.log_scales, h.log_scales, atol=TOL)
    assert torch.allclose(
        torch.sigmoid(g.opacity_logits), torch.sigmoid(h.opacity_logits), atol=TOL
    )
    assert torch.allclose(g.sh, h.sh, atol=TOL)
    assert torch.allclose(covariance(g), covariance(h), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("suffix", [".glb", ".gltf", "embedded.gltf"])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip(tmp_path: Path, suffix: str, degree: int) -> None:
    g = random_gaussians(50, degree, seed=degree)
    path = tmp_path / f"a.{suffix.lstrip('.')}"
    write_gltf(path, g, embed=suffix.startswith("embedded"))
    check_close(g, read_gltf(path))  # the file's own values
    save(g, path, embed=suffix.startswith("embedded"))
    check_close(g, load(path))  # turned into glTF's Y-up and back


def test_gltf_writes_a_sidecar_bin_and_embeds_on_request(tmp_path: Path) -> None:
    g = random_gaussians(30, 1)
    path = tmp_path / "my prop.gltf"  # a space: the URI is percent-encoded
    save(g, path)
    doc = json.loads(path.read_text())
    assert doc["buffers"][0]["uri"] == "my%20prop.bin"
    assert (tmp_path / "my prop.bin").stat().st_size == doc["buffers"][0]["byteLength"]
    assert sorted(os.listdir(tmp_path)) == ["my prop.bin", "my prop.gltf"]
    check_close(g, load(path))
    # pygltflib (an independent reader) finds the same buffer beside the file.
    gltf = pygltflib.GLTF2().load(str(path))
    assert gltf.buffers[0].uri == "my%20prop.bin"
    save(g, tmp_path / "one.gltf", embed=True)
    assert sorted(os.listdir(tmp_path))[-1] == "one.gltf"
    assert "one.bin" not in os.listdir(tmp_path)
    assert json.loads((tmp_path / "one.gltf").read_text())["buffers"][0]["uri"].startswith(
        "data:application/octet-stream;base64,"
    )
    # The .bin missing: a clear error naming it.
    (tmp_path / "my prop.bin").unlink()
    with pytest.raises(GltfFormatError, match="my%20prop.bin"):
        load(path)


def test_color_0_is_linear(tmp_path: Path) -> None:
    """glTF defines COLOR_0 as linear; the fallback colour is the sRGB decoding of the DC
    colour 0.5 + C0 · dc (3DGS colours are sRGB display values), 16 bits, alpha = opacity."""
    g = random_gaussians(64, 0)
    g.sh[:, 0] = (torch.rand(64, 3, generator=torch.Generator().manual_seed(3)) - 0.5) / SH_C0
    path = tmp_path / "c.glb"
    write_gltf(path, g)
    data = path.read_bytes()
    doc = json.loads(data[20 : 20 + struct.unpack_from("<I", data, 12)[0]])
    blob = data[20 + struct.unpack_from("<I", data, 12)[0] + 8 :]
    acc = doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]]
    assert acc["componentType"] == 5123 and acc["normalized"] is True and acc["type"] == "VEC4"
    view = doc["bufferViews"][acc["bufferView"]]
    rgba = np.frombuffer(blob, "<u2", 64 * 4, view["byteOffset"]).reshape(64, 4) / 65535.0
    srgb = (0.5 + SH_C0 * g.sh[:, 0].double()).clamp(0, 1).numpy()
    assert np.abs(rgba[:, :3] - srgb_to_linear(srgb)).max() <= 0.5 / 65535 + 1e-9
    assert np.abs(rgba[:, 3] - g.opacities.double().numpy()).max() <= 0.5 / 65535 + 1e-7
    # The sRGB decoding itself: its two branches meet, and mid grey is about 0.214.
    assert abs(float(srgb_to_linear(np.array(0.5))) - 0.21404) < 1e-4
    assert srgb_to_linear(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]


def test_y_up_is_a_consistent_rotation(tmp_path: Path) -> None:
    """Read raw, the file holds M p, M Σ Mᵀ and SH whose colour at M d equals ours at d."""
    g = random_gaussians(40, 3)
    save(g, tmp_path / "a.glb")
    raw = read_gltf(tmp_path / "a.glb").to("cpu").detach()
    m = torch.from_numpy(GLTF_Y_UP)
    assert torch.allclose(raw.means.double(), g.means.double() @ m.T, atol=TOL)
    assert torch.allclose(covariance(raw), m @ covariance(g) @ m.T, atol=TOL, rtol=TOL)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, dtype=torch.float64), dim=1)
    ours = torch.einsum("dk,nkc->ndc", sh_basis(dirs, 3), g.sh.double())
    theirs = torch.einsum("dk,nkc->ndc", sh_basis(dirs @ m.T, 3), raw.sh.double())
    assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("suffix", [".glb", ".gltf"])
def test_pygltflib_sees_a_valid_file(tmp_path: Path, suffix: str) -> None:
    g = random_gaussians(33, 2)
    path = tmp_path / f"a{suffix}"
    save(g, path)
    doc = pygltflib.GLTF2().load(str(path))
    assert doc.extensionsUsed == [EXTENSION]
    prim = doc.meshes[0].primitives[0]
    assert prim.mode == pygltflib.POINTS and EXTENSION in prim.extensions
    data = path.read_bytes()
    if suffix == ".glb":
        doc_json = json.loads(data[20 : 20 + struct.unpack_from("<I", data, 12)[0]])
    else:
        doc_json = json.loads(data)
    names = doc_json["meshes"][0]["primitives"][0]["attributes"]
    expected = {"POSITION": "VEC3", f"{EXTENSION}:ROTATION": "VEC4"}
    expected |= {f"{EXTENSION}:SCALE": "VEC3", f"{EXTENSION}:OPACITY": "SCALAR"}
    blob = doc.binary_blob() if suffix == ".glb" else (tmp_path / "a.bin").read_bytes()
    for acc in doc.accessors:
        assert acc.count == 33
        view = doc.bufferViews[acc.bufferView]
        size = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc.type] * (
            4 if acc.componentType == 5126 else 2
        )
        assert view.byteOffset + view.byteLength <= len(blob) and view.byteLength == 33 * size
    pos = doc.accessors[names["POSITION"]]
    assert pos.type == "VEC3" and pos.componentType == pygltflib.FLOAT
    stored = np.frombuffer(blob, "<f4", 99, doc.bufferViews[pos.bufferView].byteOffset).reshape(
        33, 3
    )
    assert pos.min == stored.min(0).tolist() and pos.max == stored.max(0).tolist()
    assert len(doc.accessors) == 5 + 9  # POSITION COLOR_0 ROTATION SCALE OPACITY + 9 SH
    attributes = doc_json["meshes"][0]["primitives"][0]["attributes"]
    for name, kind in expected.items():
        assert doc_json["accessors"][attributes[name]]["type"] == kind
    assert f"{EXTENSION}:SH_DEGREE_2_COEF_4" in attributes
    assert doc_json["accessors"][attributes["COLOR_0"]]["normalized"] is True


def test_empty_and_bad_values_rejected_by_writer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="zero"):
        save(Gaussians.empty(), tmp_path / "e.glb")
    g = random_gaussians(2, 0)
    g.log_scales[0, 0] = 200.0
    with pytest.raises(ValueError, match="float32"):
        save(g, tmp_path / "o.glb")
    assert not (tmp_path / "o.glb").exists()


def _valid(suffix: str, n: int = 20) -> bytes:
    # one file, for byte surgery
    return written_bytes(write_gltf, f"v{suffix}", random_gaussians(n, 1), embed=True)


GLB = _valid(".glb")
GLTF = _valid(".gltf")
JSON_LEN = struct.unpack_from("<I", GLB, 12)[0]
DOC = json.loads(GLB[20 : 20 + JSON_LEN])


def _glb_with(doc: dict) -> bytes:
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    blob = GLB[20 + JSON_LEN + 8 :]
    total = 20 + len(text) + 8 + len(blob)
    return (
        struct.pack("<IIIII", 0x46546C67, 2, total, len(text), 0x4E4F534A)
        + text
        + struct.pack("<II", len(blob), 0x004E4942)
        + blob
    )


def _doc(**changes) -> dict:
    doc = json.loads(json.dumps(DOC))
    for fn in changes.values():
        fn(doc)
    return doc


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (GLB[:10], "too short"),
        (b"glTF" + b"\0" * 30, "not a GLB"),
        (GLB[:-4], "declares"),
        (GLB[:12] + GLB[12:16] + b"XXXX" + GLB[20:], "JSON chunk"),
        (GLB[:20] + b"{]" + GLB[22:], "does not parse"),
        (b"[" * 100000 + b"]" * 100000, "does not parse"),
        (b"[1, 2]", "not an object"),
        (_glb_with(_doc(a=lambda d: d["accessors"][0].update(count=10**12))), "do not fit"),
        (_glb_with(_doc(a=lambda d: d["bufferViews"][0].update(byteLength=10**9))), "past the end"),
        (_glb_with(_doc(a=lambda d: d["accessors"][0].update(type="VEC2"))), "float VEC3"),
        (_glb_with(_doc(a=lambda d: d["meshes"][0]["primitives"][0].update(mode=4))), "POINTS"),
        (
            _glb_with(_doc(a=lambda d: d["meshes"][0]["primitives"][0].pop("extensions"))),
            "no POINTS",
        ),
        (_glb_with(_doc(a=lambda d: d["accessors"][0].update(bufferView=99))), "does not exist"),
        (_glb_with(_doc(a=lambda d: d["accessors"][0].update(count=-1))), "count"),
        (_glb_with(_doc(a=lambda d: d["buffers"][0].update(uri="../../etc/passwd"))), "relative"),
        (GLTF.replace(b";base64,", b";base64,!!"), "base64"),
        (GLTF[: len(GLTF) // 2], "does not parse"),
    ],
)
def test_hostile_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "h.glb"
    path.write_bytes(content)
    with pytest.raises(GltfFormatError, match=match) as info:
        read_gltf(path)
    assert str(path) in str(info.value)


def _read_bytes(content: bytes, suffix: str = ".glb") -> None:
    read_fuzzed(content, read_gltf, GltfFormatError, f"f{suffix}", names_the_file=False)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(content: bytes) -> None:
    _read_bytes(content)
    _read_bytes(b"glTF" + content)


@FUZZ
@given(st.data())
def test_fuzz_truncations_and_flips(data: st.DataObject) -> None:
    for valid, suffix in ((GLB, ".glb"), (GLTF, ".gltf")):
        content = bytearray(valid[: data.draw(st.integers(0, len(valid)))])
        for _ in range(data.draw(st.integers(0, 5))):
            if content:
                i = data.draw(st.integers(0, len(content) - 1))
                content[i] = data.draw(st.integers(0, 255))
        _read_bytes(bytes(content), suffix)
