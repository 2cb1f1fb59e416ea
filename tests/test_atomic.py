"""engine.atomic: the one atomic writer (modes, short temporary names, clean-up, stale
temporary files) and the writers that use it."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import atomic
from engine.atomic import atomic_open, atomic_path, sweep_stale, temp_name, write_atomic
from engine.gaussians import Gaussians

from .conftest import random_gaussians

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _gaussians(n: int = 4) -> Gaussians:
    """Unit quaternions (drawn first), log-scales ~ N(-3, 1), SH degree 0."""
    gen = torch.Generator().manual_seed(0)
    quats = torch.randn(n, 4, generator=gen)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    return random_gaussians(n, gen=gen, quats=quats, log_scale_normal=(-3.0, 1.0))


def _write_ply(path: Path) -> None:
    from engine.io import save

    save(_gaussians(), path)


def _write_png(path: Path) -> None:
    from engine.images import save_png

    save_png(torch.rand(4, 4, 3), path)


def _write_json(path: Path) -> None:
    from engine.data.layout import write_json_atomic

    write_json_atomic(path, {"a": 1})


def _write_nerf(path: Path) -> None:
    from engine.camera_formats import write_nerf_transforms
    from engine.cameras import Cameras

    cams = Cameras.look_at(
        torch.tensor([[0.0, -3.0, 0.0]]), torch.zeros(1, 3), fov_x_deg=50.0, width=8, height=8
    )
    write_nerf_transforms(path, cams, ["a.png"])


def _write_weights(path: Path) -> None:
    from engine.weights import save_weights

    save_weights({"w": torch.ones(2)}, path, {"config": {}})


def _write_montage(path: Path) -> None:
    from engine.data.montage import make_montage

    make_montage(Path(__file__).resolve().parents[1] / "examples" / "sample_props", path,
                 count=1, tile=16)  # fmt: skip


WRITERS = {
    "write_atomic": lambda p: write_atomic(p, b"new"),
    "ply": _write_ply,
    "png": _write_png,
    "json": _write_json,
    "nerf": _write_nerf,
    "weights": _write_weights,
    "montage": _write_montage,
}
SUFFIX = {"ply": ".ply", "png": ".png", "json": ".json", "nerf": ".json", "weights": ".st",
          "montage": ".png"}  # fmt: skip


# ---------------------------------------------------------------------------- modes


@posix_only
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_new_file_is_0644_under_umask_022(tmp_path: Path, umask_022: None, writer: str) -> None:
    path = tmp_path / f"out{SUFFIX.get(writer, '.bin')}"
    WRITERS[writer](path)
    assert _mode(path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@posix_only
@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_replacing_keeps_the_destination_mode(
    tmp_path: Path, umask_022: None, writer: str, mode: int
) -> None:
    path = tmp_path / f"out{SUFFIX.get(writer, '.bin')}"
    path.write_bytes(b"old")
    path.chmod(mode)
    WRITERS[writer](path)
    assert path.read_bytes() != b"old"
    assert _mode(path) == mode


@posix_only
def test_atomic_path_keeps_mode_and_replaces(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")
    path.chmod(0o600)
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.exists()
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # nothing visible before the commit
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


# ---------------------------------------------------------------------------- names


def test_temp_names_are_short_and_recognisable() -> None:
    names = {temp_name() for _ in range(50)}
    assert len(names) == 50
    assert all(len(n) == 16 and atomic._TEMP_NAME.fullmatch(n) for n in names)


@pytest.mark.parametrize("length", [236, 250, 255])
def test_long_destination_names_work(tmp_path: Path, length: int) -> None:
    # The old writers added 19+ characters to the name and failed from 236 characters on.
    name = "p" * (length - len(".ply")) + ".ply"
    _write_ply(tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    name = "j" * (length - len(".json")) + ".json"
    _write_json(tmp_path / name)
    assert json.loads((tmp_path / name).read_text()) == {"a": 1}


# ---------------------------------------------------------------------------- clean-up


class _Boom(Exception):
    pass


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("how", ["open", "path", "chunks"])
def test_exception_leaves_no_temp_file_and_keeps_the_old_one(
    tmp_path: Path, error: type[BaseException], how: str
) -> None:
    path = tmp_path / "keep.bin"
    path.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"half"
        raise error()

    with pytest.raises(error):
        if how == "open":
            with atomic_open(path) as f:
                f.write(b"half")
                raise error()
        elif how == "path":
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"half")
                raise error()
        else:
            write_atomic(path, chunks())
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.bin"]


def test_missing_folder_is_an_oserror_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "x.bin", b"x")
    assert list(tmp_path.iterdir()) == []


def test_chunks_text_and_arrays(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_atomic(tmp_path / "a.bin", (c for c in [b"h", "é", array]))
    assert (tmp_path / "a.bin").read_bytes() == b"h" + "é".encode() + array.tobytes()
    write_atomic(tmp_path / "b.bin", array)  # one array is one chunk, not rows
    assert (tmp_path / "b.bin").read_bytes() == array.tobytes()
    with atomic_open(tmp_path / "c.txt", "w") as f:
        f.write("line\n")
    assert (tmp_path / "c.txt").read_bytes() == b"line\n"
    with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "d.txt", "a"):
        pass


# ---------------------------------------------------------------------------- stale files


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_sweep_removes_only_old_unheld_temp_files_of_ours(tmp_path: Path) -> None:
    stale = tmp_path / ".gd-0123abcd.tmp"
    fresh = tmp_path / ".gd-89abcdef.tmp"
    foreign = tmp_path / ".prop.ply.12345.tmp"  # not our pattern: never touched
    for p in (stale, fresh, foreign):
        p.write_bytes(b"x" * 100)
    for p in (stale, foreign):
        _age(p, 2 * atomic.STALE_SECONDS)
    assert sweep_stale(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, foreign.name])


@pytest.mark.skipif(atomic.fcntl is None, reason="advisory locks are POSIX")
def test_sweep_spares_a_live_writers_old_temp_file(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "slow.bin") as f:
        f.write(b"x")
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".gd-")]
        _age(tmp, 2 * atomic.STALE_SECONDS)  # a writer stalled for hours still holds it
        assert sweep_stale(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["slow.bin"]


def test_first_write_into_a_folder_sweeps_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(atomic, "_swept", set())
    stale = tmp_path / ".gd-0badf00d.tmp"
    stale.write_bytes(b"left by a killed writer")
    _age(stale, 2 * atomic.STALE_SECONDS)
    write_atomic(tmp_path / "x.bin", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_montage_with_an_unknown_suffix_writes_nothing(tmp_path: Path) -> None:
    from engine.data.montage import make_montage

    with pytest.raises(ValueError, match="not an image file suffix"):
        make_montage(Path(__file__).resolve().parents[1] / "examples" / "sample_props",
                     tmp_path / "sheet.xyz", count=1, tile=16)  # fmt: skip
    assert list(tmp_path.iterdir()) == []
