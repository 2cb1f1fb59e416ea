"""Signals during `gd export`: SIGINT / SIGTERM are one line and exit 130 / 143 with no
temporary file left and the old output intact; after SIGKILL the next write into the
folder removes the stale temporary file.

The export runs in a subprocess whose script slows the PLY writer down (its data becomes
a generator that keeps writing until the process is signalled), so the signal lands in
the middle of the write every time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import atomic
from engine.io import save

from .conftest import random_gaussians

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

ROOT = Path(__file__).resolve().parents[1]

# Runs `gd export IN OUT` through engine.cli.main with a writer that never finishes on
# its own: it prints WRITING once the temporary file holds data, then keeps appending.
SLOW_EXPORT = """
import sys, time
import engine.io.ply as ply
from engine import cli

real = ply.write_atomic

def slow(path, chunks):
    def endless():
        yield from chunks
        yield b"x" * 65536  # more than the file object buffers: on disk once we resume
        print("WRITING", flush=True)
        while True:
            time.sleep(0.01)
            yield b"x" * 65536
    real(path, endless())

ply.write_atomic = slow
sys.exit(cli.main(["export", sys.argv[1], sys.argv[2]]))
"""


def _scene(path: Path) -> None:
    """50 Gaussians: unit quaternions (drawn first), log-scales ~ N(-3, 1), SH degree 0."""
    gen = torch.Generator().manual_seed(0)
    quats = torch.randn(50, 4, generator=gen)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    save(random_gaussians(50, gen=gen, quats=quats, log_scale_normal=(-3.0, 1.0)), path)


def _start_slow_export(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    src, out_dir = tmp_path / "in.ply", tmp_path / "out"
    out_dir.mkdir()
    _scene(src)
    out = out_dir / "scene.ply"
    out.write_bytes(b"the previous export")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A shell starts background jobs with SIGINT ignored and children inherit that (Python
    # then installs no KeyboardInterrupt handler): give the child the default disposition,
    # as a terminal's Ctrl+C would find it, whatever ran this test suite.
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXPORT, str(src), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the writer is mid-write
    assert line.strip() == "WRITING", proc.stderr.read() if proc.stderr else line
    temps = [p for p in out_dir.iterdir() if p.name.startswith(atomic.TEMP_PREFIX)]
    assert len(temps) == 1 and temps[0].stat().st_size > 0
    return proc, out_dir, out


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_signal_mid_export_is_one_line_and_leaves_no_temp_file(
    tmp_path: Path, sig: signal.Signals, code: int, word: str
) -> None:
    proc, out_dir, out = _start_slow_export(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.splitlines() == [f"gd export: {word}"]
    assert [p.name for p in out_dir.iterdir()] == ["scene.ply"]
    assert out.read_bytes() == b"the previous export"


def test_sigkill_leaves_a_temp_file_the_next_write_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, out_dir, out = _start_slow_export(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (stale,) = [p for p in out_dir.iterdir() if p.name.startswith(atomic.TEMP_PREFIX)]
    assert out.read_bytes() == b"the previous export"

    # Young, it might still be a live writer's: kept. Once old, the dead writer's lock is
    # gone and the first write into the folder (in a new process) removes it.
    monkeypatch.setattr(atomic, "_swept", set())
    atomic.write_atomic(out_dir / "other.bin", b"x")
    assert stale.exists()
    then = time.time() - 2 * atomic.STALE_SECONDS
    os.utime(stale, (then, then))
    monkeypatch.setattr(atomic, "_swept", set())
    _scene(out)
    assert sorted(p.name for p in out_dir.iterdir()) == ["other.bin", "scene.ply"]
