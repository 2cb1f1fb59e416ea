"""Decompression bombs built in milliseconds, and commands run with their peak memory measured.

`gzip_repeated` / `zlib_repeated` write streams that expand to hundreds of megabytes without
compressing them: after a full flush deflate starts afresh, so every copy of a repeated
piece compresses to the same bytes and is compressed once. Only the checksum needs the whole
expanded data, and that is computed piece by piece without holding it.

`run_measured` runs a `gd` command or Python code in a fresh process and reports its peak
resident memory, `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` read by a parent whose only
child is that process. The processes are forked from one that imported the engine once, so
each bomb costs its own work, not a 2-5 s torch import. The data segment is capped
(RLIMIT_DATA) and a timeout set, so a reader that regresses fails with MemoryError or a
signal instead of exhausting the machine or hanging.
"""

from __future__ import annotations

import atexit
import json
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass

GIB = 1 << 30
# The peak a bomb may drive a reader to (the hardening issue's bound).
PEAK_LIMIT = 1.5 * GIB


def _deflate_repeated(prefix: bytes, piece: bytes, count: int, wbits: int) -> bytes:
    """Raw compressor output for prefix + piece * count, without the trailer."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    body = c.compress(piece) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush(zlib.Z_FINISH)
    return head + body * count + end


def gzip_repeated(prefix: bytes, piece: bytes, count: int) -> bytes:
    """A valid gzip member holding prefix + piece * count (CRC32 and size corrected)."""
    data = _deflate_repeated(prefix, piece, count, 16 + zlib.MAX_WBITS)[:-8]
    crc = zlib.crc32(prefix)
    for _ in range(count):
        crc = zlib.crc32(piece, crc)
    size = (len(prefix) + len(piece) * count) & 0xFFFFFFFF
    return data + struct.pack("<II", crc, size)


def zlib_repeated(prefix: bytes, piece: bytes, count: int) -> bytes:
    """A valid zlib stream holding prefix + piece * count (Adler-32 corrected)."""
    data = _deflate_repeated(prefix, piece, count, zlib.MAX_WBITS)[:-4]
    adler = zlib.adler32(prefix)
    for _ in range(count):
        adler = zlib.adler32(piece, adler)
    return data + struct.pack(">I", adler)


def png_uniform(width: int, height: int, rgba: bool = False) -> bytes:
    """A valid PNG of one colour (grey, or RGBA), however large, in milliseconds."""
    channels, colour_type = (4, 6) if rgba else (1, 0)
    row = b"\x00" + bytes([200]) * (width * channels)  # filter 0, then the pixels

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = zlib_repeated(b"", row, height)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@dataclass
class Measured:
    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str
    peak_bytes: int


# A process that imports the engine once, then runs each request in a fresh fork: a measurer
# child M forks the worker W, waits for it and reads getrusage(RUSAGE_CHILDREN).ru_maxrss,
# whose only child is W. W starts with the interpreter and torch already resident, as a
# fresh `gd` process would have them, so the peak compares with a fresh process's while a
# test pays the ~2 s import once per session instead of once per bomb.
_ZYGOTE = r"""
import json, os, resource, signal, sys, tempfile, traceback
import engine.cli, engine.io, engine.data.datasets

UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


def worker(req, out, err):
    os.dup2(out, 1)
    os.dup2(err, 2)
    resource.setrlimit(resource.RLIMIT_DATA, (req["data_limit"], req["data_limit"]))
    signal.alarm(int(req["timeout"]))  # SIGALRM ends a hung reader
    try:
        if req["gd"] is not None:
            code = engine.cli.main(req["gd"])
        else:
            exec(req["python"], {"__name__": "__main__"})
            code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def measurer(req, out, err, report):
    pid = os.fork()
    if pid == 0:
        worker(req, out, err)
    _, status = os.waitpid(pid, 0)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * UNIT
    os.write(report, json.dumps([os.waitstatus_to_exitcode(status), peak]).encode())
    os._exit(0)


for line in sys.stdin:
    req = json.loads(line)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        r, w = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            measurer(req, out.fileno(), err.fileno(), w)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            code, peak = json.loads(f.read())
        os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        text = [f.read().decode("utf-8", "replace") for f in (out, err)]
    reply = {"returncode": code, "stdout": text[0], "stderr": text[1], "peak_bytes": peak}
    print(json.dumps(reply), flush=True)
"""

_zygote: subprocess.Popen | None = None


def _start() -> subprocess.Popen:
    global _zygote
    if _zygote is None or _zygote.poll() is not None:
        _zygote = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        atexit.register(_zygote.kill)
    return _zygote


def run_measured(
    *, gd: list[str] | None = None, python: str | None = None, timeout: float = 60.0,
    data_limit: int = 3 * GIB,
) -> Measured:  # fmt: skip
    """Run `gd` arguments (as `gd ARGS...`) or `python` code in a fresh process forked from
    one that has the engine imported; its exit status, output and peak resident bytes.
    The process's data segment is capped at `data_limit` and it is killed after `timeout` s.
    """
    zygote = _start()
    assert zygote.stdin is not None and zygote.stdout is not None
    request = {"gd": gd, "python": python, "timeout": timeout, "data_limit": data_limit}
    zygote.stdin.write(json.dumps(request) + "\n")
    zygote.stdin.flush()
    line = zygote.stdout.readline()
    assert line, "the measuring process died"
    return Measured(**json.loads(line))
