"""`gd export` (engine/io/cli.py) through `engine.cli.main`: formats, axes, clean-up, errors."""

from __future__ import annotations

import os

import pytest
import torch

from engine.cli import main
from engine.io import load, save
from engine.io.axes import GLTF_Y_UP, PLY_SPACE
from engine.transforms import rotate_gaussians

from .conftest import random_gaussians

N = 120


@pytest.fixture
def scene(tmp_path):
    g = random_gaussians(N, 3, 1, means_range=(-2.0, 2.0), log_scale_range=(-4.0, -3.0),
                         opacity_std=3.0, sh_range=(-0.3, 0.3))  # fmt: skip
    path = tmp_path / "in.ply"
    save(g, path)
    return g, path


def near(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest distance from a row of `a` to its nearest row of `b` (order-free: the
    compressed PLY writer sorts along a Morton curve)."""
    return float(torch.cdist(a.double(), b.double()).amin(dim=1).max())


def export(capsys, *args) -> tuple[int, str, str]:
    rc = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "suffix", [".ply", ".compressed.ply", ".spz", ".splat", ".sog", ".glb", ".gltf"]
)
def test_export_every_format_round_trips_to_our_world(scene, tmp_path, capsys, suffix):
    g, src = scene
    out = tmp_path / f"out{suffix}"
    rc, text, err = export(capsys, src, out)
    assert rc == 0 and err == ""
    back = load(out)  # load undoes the format's frame, as save applied it
    assert len(back) == N
    assert back.sh_degree == (0 if suffix == ".splat" else 3)
    assert near(back.means, g.means) < 5e-3
    assert f"wrote {out}: {N} of {N} Gaussians (0 dropped)" in text
    assert f"SH degree {back.sh_degree}" in text
    assert ("glTF Y-up" if suffix in (".glb", ".gltf") else "PLY space, -Y up") in text


def test_summary_reports_counts_size_and_bounds(scene, tmp_path, capsys):
    g, src = scene
    out = tmp_path / "out.ply"
    rc, text, _ = export(capsys, src, out, "--min-opacity", "0.4", "--crop=-1,-1,-1,1,1,1.5")
    assert rc == 0
    alpha = torch.sigmoid(g.opacity_logits.double())
    keep_alpha = alpha >= 0.4
    inside = (
        (g.means >= torch.tensor([-1.0, -1, -1])) & (g.means <= torch.tensor([1.0, 1, 1.5]))
    ).all(1)
    keep = keep_alpha & inside
    n = int(keep.sum())
    assert 0 < n < N
    dropped_alpha, dropped_crop = N - int(keep_alpha.sum()), int(keep_alpha.sum()) - n
    assert (
        f"{n} of {N} Gaussians ({N - n} dropped: {dropped_alpha} below opacity 0.4, "
        f"{dropped_crop} outside the crop box)" in text
    )
    size = out.stat().st_size
    assert f"{size / 1024:.1f} KiB" in text
    lo, hi = g.means[keep].amin(0), g.means[keep].amax(0)
    assert "min (" + ", ".join(f"{float(v):.4g}" for v in lo) + ")" in text
    assert "max (" + ", ".join(f"{float(v):.4g}" for v in hi) + ")" in text
    back = load(out)
    assert torch.equal(back.means, g.means[keep])


def test_sh_degree_cap(scene, tmp_path, capsys):
    _, src = scene
    for d in range(4):
        out = tmp_path / f"d{d}.spz"
        rc, text, _ = export(capsys, src, out, "--sh-degree", d)
        assert rc == 0 and f"SH degree {d}" in text
        assert load(out).sh_degree == d


@pytest.mark.parametrize("suffix", [".ply", ".compressed.ply", ".splat", ".spz", ".sog", ".glb"])
def test_axes_standard_writes_each_formats_frame_and_raw_writes_the_world(
    scene, tmp_path, capsys, suffix
):
    g, src = scene
    rc, text, _ = export(capsys, src, tmp_path / f"std{suffix}")
    assert rc == 0
    rc, raw_text, _ = export(capsys, src, tmp_path / f"raw{suffix}", "--axes", "raw")
    assert rc == 0 and "axes: raw" in raw_text
    std = load(tmp_path / f"std{suffix}", axes="raw")  # the files' own coordinates
    raw = load(tmp_path / f"raw{suffix}", axes="raw")
    m = GLTF_Y_UP if suffix == ".glb" else PLY_SPACE
    expected = rotate_gaussians(g, m)
    tol = {".compressed.ply": 5e-3, ".spz": 1e-3, ".sog": 1e-3}.get(suffix, 1e-6)
    assert near(std.means, expected.means) < tol
    # raw in, raw out: IN's own coordinates (in.ply is a standard file, in PLY space).
    assert near(raw.means, rotate_gaussians(g, PLY_SPACE).means) < tol
    assert near(std.means, g.means) > 0.5  # the turn is real
    if suffix == ".ply":  # orientations and SH turned with the positions
        assert torch.allclose(std.sh, expected.sh, atol=1e-6)
        assert torch.allclose(std.covariances, expected.covariances, atol=1e-6)

    # The printed bounds are the world's (with raw axes: IN's own coordinates).
    def lo(means):
        return "min (" + ", ".join(f"{float(v):.4g}" for v in means.amin(0)) + ")"

    assert lo(g.means) in text
    assert lo(rotate_gaussians(g, PLY_SPACE).means) in raw_text


def test_in_axes_raw_converts_an_old_raw_export_to_standard(scene, tmp_path, capsys):
    g, _ = scene
    old = tmp_path / "old.ply"
    save(g, old, axes="raw")  # what this project wrote before the convention
    new = tmp_path / "new.ply"
    assert export(capsys, old, new, "--in-axes", "raw")[0] == 0
    assert torch.equal(
        load(new, axes="raw").means, (g.means.double() @ torch.from_numpy(PLY_SPACE).T).float()
    )
    assert near(load(new).means, g.means) == 0


def test_spz_version(scene, tmp_path, capsys):
    from engine.io import read_spz

    _, src = scene
    assert export(capsys, src, tmp_path / "v4.spz")[0] == 0
    assert read_spz(tmp_path / "v4.spz").version == 4  # the default, as Niantic's and st's
    assert export(capsys, src, tmp_path / "v3.spz", "--spz-version", "3")[0] == 0
    assert read_spz(tmp_path / "v3.spz").version == 3
    rc, _, err = export(capsys, src, tmp_path / "v3.ply", "--spz-version", "3")
    assert rc == 2 and "applies to a .spz OUT" in err
    assert not (tmp_path / "v3.ply").exists()


def test_reads_every_supported_input(scene, tmp_path, capsys):
    g, src = scene
    for suffix in (".compressed.ply", ".spz", ".splat", ".sog", ".glb", ".gltf"):
        mid = tmp_path / f"mid{suffix}"
        save(g, mid)
        out = tmp_path / f"from{suffix.replace('.', '_')}.ply"
        assert export(capsys, mid, out)[0] == 0
        assert near(load(out).means, g.means) < 5e-3


# ---------------------------------------------------------------------- bad input


BAD_FLAGS = [
    ["--sh-degree", "4"],
    ["--sh-degree", "x"],
    ["--min-opacity", "1"],
    ["--min-opacity", "-0.1"],
    ["--min-opacity", "nan"],
    ["--crop", "1,2,3"],
    ["--crop", "0,0,0,1,1,inf"],
    ["--crop", "1,0,0,0,1,1"],
    ["--crop", "a,b,c,d,e,f"],
]


def check_failure(capsys, args, out, before: bytes | None, match: str) -> None:
    rc, text, err = export(capsys, *args)
    assert rc == 2, (rc, text, err)
    assert text == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gd export: error: "), err
    assert match in lines[0], lines[0]
    if before is None:
        assert not out.exists()
    else:
        assert out.read_bytes() == before
    if out.parent.is_dir():  # no temp file left behind either
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def bad_cases(tmp_path, src):
    garbage = tmp_path / "garbage.spz"
    garbage.write_bytes(b"not an spz file at all")
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(src.read_bytes()[:-100])
    cases = [
        ([tmp_path / "missing.ply"], ".ply", "missing.ply"),
        ([src], ".obj", "unsupported splat file suffix"),
        ([tmp_path / "in.xyz"], ".ply", "unsupported splat file suffix"),
        ([garbage], ".ply", "garbage.spz"),
        ([truncated], ".ply", "truncated.ply"),
        ([tmp_path], ".ply", "unsupported"),
        ([src, "--crop", "5,5,5,6,6,6"], ".glb", "kept 0 of 120"),
    ]
    cases += [([src, *flags], ".ply", flags[0]) for flags in BAD_FLAGS]
    return cases


@pytest.mark.parametrize("existing", [False, True], ids=["absent", "existing"])
def test_bad_input_exits_2_and_writes_nothing(scene, tmp_path, capsys, existing):
    _, src = scene
    for i, (args, suffix, match) in enumerate(bad_cases(tmp_path, src)):
        out = tmp_path / f"out{i}{suffix}"
        before = None
        if existing:
            before = b"precious old bytes"
            out.write_bytes(before)
            os.utime(out, (1_000_000, 1_000_000))
        check_failure(capsys, [args[0], out, *args[1:]], out, before, match)
        if existing:
            assert out.stat().st_mtime == 1_000_000


def test_missing_output_folder_is_bad_input(scene, tmp_path, capsys):
    _, src = scene
    out = tmp_path / "nope" / "out.ply"
    check_failure(capsys, [src, out], out, None, "no such folder")
    assert not out.parent.exists()
