"""engine.download against a local HTTP server (no internet): success, progress, checksum
mismatch, HTTP errors, cancel (also while the server stalls or drips), size caps, and the
verified weights + config pair; nothing is left on disk after a failure."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from engine.download import (
    DownloadCancelled,
    DownloadError,
    DownloadTooLarge,
    config_url_for,
    download,
    download_weights,
)
from engine.hashing import sha256_file

PAYLOAD = bytes(range(256)) * 2000  # 512 kB: several chunks
SHA = hashlib.sha256(PAYLOAD).hexdigest()
CONFIG = json.dumps({"config": {}, "sha256": SHA}).encode()
OTHER_CONFIG = json.dumps({"config": {}, "sha256": "0" * 64}).encode()
_STOP = threading.Event()  # set at teardown: the stalling handlers give up


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/weights.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/short.bin":  # promises more than it sends
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) + 10))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path in _FILES:
            self.send_response(200)
            self.send_header("Content-Length", str(len(_FILES[self.path])))
            self.end_headers()
            self._send_slowly([_FILES[self.path]], pause=0.0)
        elif self.path == "/drip.bin":  # one byte a second, a minute long
            self.send_response(200)
            self.send_header("Content-Length", "60")
            self.end_headers()
            self._send_slowly([b"x"] * 60, pause=1.0)
        elif self.path == "/silent.bin":  # accepts, then never answers
            _STOP.wait(60)
        elif self.path == "/endless.bin":  # no Content-Length, and far more than allowed
            self.send_response(200)
            self.end_headers()
            self._send_slowly([PAYLOAD] * 200, pause=0.0)
        elif self.path == "/huge.bin":  # announces 1 TB, then stalls
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            _STOP.wait(60)
        else:
            self.send_error(404)

    def _send_slowly(self, parts: list[bytes], pause: float) -> None:
        try:
            for part in parts:
                self.wfile.write(part)
                if _STOP.wait(pause):
                    return
        except OSError:  # the client hung up: what a cancel or a size cap does
            return

    def log_message(self, *args) -> None:
        pass


_FILES = {
    "/w.safetensors": PAYLOAD,
    "/w.json": CONFIG,
    "/other.json": OTHER_CONFIG,
    "/list.json": b"[1, 2]",
    "/f.json": json.dumps({"config": {}, "sha256": "f" * 64}).encode(),
    "/big.json": b" " * (2 << 20) + CONFIG,
}


@pytest.fixture(scope="module")
def server():
    _STOP.clear()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _STOP.set()
    httpd.shutdown()
    httpd.server_close()


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_download_verifies_and_reports_progress(server, tmp_path):
    seen = []
    dest = tmp_path / "sub" / "model.safetensors"
    out = download(f"{server}/weights.bin", dest, SHA, progress=lambda f, m: seen.append(f))
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert sha256_file(dest) == SHA
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 3
    assert _left(dest.parent) == ["model.safetensors"]  # no temporary file left


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    dest = tmp_path / "model.safetensors"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{server}/weights.bin", dest, "0" * 64)
    assert _left(tmp_path) == []


def test_mismatch_keeps_an_existing_file_untouched(server, tmp_path):
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError, match="checksum"):
        download(f"{server}/weights.bin", dest, "f" * 64)
    assert dest.read_bytes() == b"old" and _left(tmp_path) == ["model.safetensors"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_downloaded_file_mode_is_the_common_one(server, tmp_path):
    """engine.atomic's rule: new files 0666 minus the umask (not mkstemp's 0600), a
    replaced file keeps its mode."""
    old = os.umask(0o022)
    try:
        download(f"{server}/weights.bin", tmp_path / "new.safetensors", SHA)
        kept = tmp_path / "kept.safetensors"
        kept.write_bytes(b"old")
        kept.chmod(0o600)
        download(f"{server}/weights.bin", kept, SHA)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.safetensors").stat().st_mode) == 0o644
    assert kept.read_bytes() == PAYLOAD and stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_http_error_and_truncation(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server}/missing.bin", tmp_path / "a", SHA)
    with pytest.raises(DownloadError):
        download(f"{server}/short.bin", tmp_path / "b", SHA, timeout=2)
    assert _left(tmp_path) == []


def test_connection_refused(tmp_path):
    with pytest.raises(DownloadError, match="download failed"):
        download("http://127.0.0.1:9/x", tmp_path / "a", SHA, timeout=2)
    assert _left(tmp_path) == []


def test_cancel_stops_and_cleans_up(server, tmp_path):
    cancel = threading.Event()

    def progress(fraction: float, message: str) -> None:
        if fraction > 0.2:
            cancel.set()

    with pytest.raises(DownloadCancelled):
        download(f"{server}/weights.bin", tmp_path / "a", SHA, progress=progress, cancel=cancel)
    assert _left(tmp_path) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="64 hex"):
        download("http://127.0.0.1/x", tmp_path / "a", "abc")
    with pytest.raises(ValueError, match="http"):
        download("file:///etc/passwd", tmp_path / "a", SHA)


def _network_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gd-download"]


def _cancel_after(seconds: float) -> threading.Event:
    cancel = threading.Event()
    threading.Timer(seconds, cancel.set).start()
    return cancel


@pytest.mark.parametrize("path", ["/drip.bin", "/silent.bin"])
def test_cancel_is_prompt_while_the_server_stalls(server, tmp_path, path):
    """A server dripping a byte a second (or sending nothing at all) cannot hold a cancel
    back: download returns within a second, the old file untouched, no temporary left."""
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"old")
    cancel = _cancel_after(0.5)
    start = time.monotonic()
    with pytest.raises(DownloadCancelled):
        download(f"{server}{path}", dest, SHA, cancel=cancel)
    assert time.monotonic() - start < 1.5
    assert dest.read_bytes() == b"old" and _left(tmp_path) == ["model.safetensors"]


def test_cancel_releases_the_connection_of_a_dripping_server(server, tmp_path):
    """After a cancel the network thread does not linger until the drip ends (a minute)."""
    before = set(_network_threads())  # e.g. one still waiting on the silent server
    with pytest.raises(DownloadCancelled):
        download(f"{server}/drip.bin", tmp_path / "a", SHA, cancel=_cancel_after(0.3))
    deadline = time.monotonic() + 2.0
    while set(_network_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(_network_threads()) - before


def test_body_without_content_length_is_capped(server, tmp_path):
    """A body without Content-Length stops at the cap (100 MB were on offer)."""
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadTooLarge, match="more than the 1000000 bytes"):
        download(f"{server}/endless.bin", dest, SHA, max_bytes=1_000_000)
    assert dest.read_bytes() == b"old" and _left(tmp_path) == ["model.safetensors"]


def test_too_large_content_length_is_refused_up_front(server, tmp_path):
    """A Content-Length over the cap (here the default's 4 GiB) is refused at once, before
    any byte is written; the server would stall otherwise."""
    start = time.monotonic()
    with pytest.raises(DownloadTooLarge, match="announces 1000000000000 bytes"):
        download(f"{server}/huge.bin", tmp_path / "a", SHA)
    assert time.monotonic() - start < 5 and _left(tmp_path) == []
    with pytest.raises(ValueError, match="max_bytes"):
        download(f"{server}/weights.bin", tmp_path / "a", SHA, max_bytes=0)


def test_config_url_for():
    assert config_url_for("https://h/a/w.safetensors") == "https://h/a/w.json"
    assert config_url_for("https://h/w.v2.safetensors?dl=1") == "https://h/w.v2.json?dl=1"
    with pytest.raises(ValueError, match="names no file"):
        config_url_for("https://h/")


def test_download_weights_saves_the_verified_pair(server, tmp_path):
    dest = tmp_path / "weights" / "m.safetensors"
    seen = []
    out = download_weights(
        f"{server}/w.safetensors", dest, SHA, _sha(CONFIG), progress=lambda f, m: seen.append(f)
    )
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert dest.with_suffix(".json").read_bytes() == CONFIG
    assert _left(dest.parent) == ["m.json", "m.safetensors"] and seen[-1] == 1.0


def test_download_weights_keeps_the_modes_of_the_files_it_replaces(server, tmp_path):
    dest = tmp_path / "m.safetensors"
    dest.write_bytes(b"old weights")
    dest.chmod(0o600)
    dest.with_suffix(".json").write_bytes(b"{}")
    dest.with_suffix(".json").chmod(0o640)
    download_weights(f"{server}/w.safetensors", dest, SHA, _sha(CONFIG))
    assert dest.read_bytes() == PAYLOAD and stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert stat.S_IMODE(dest.with_suffix(".json").stat().st_mode) == 0o640
    fresh = tmp_path / "new" / "m.safetensors"
    old_umask = os.umask(0o022)
    try:
        download_weights(f"{server}/w.safetensors", fresh, SHA, _sha(CONFIG))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("config", "config_sha", "error", "match"),
    [
        ("/w.json", "0" * 64, DownloadError, "checksum mismatch"),  # the config's own hash
        ("/other.json", _sha(OTHER_CONFIG), DownloadError, "describes other weights"),
        ("/list.json", _sha(b"[1, 2]"), DownloadError, "not a weights config"),
        ("/big.json", _sha(_FILES["/big.json"]), DownloadTooLarge, "announces .* 1048576 allowed"),
        ("/missing.json", "0" * 64, DownloadError, "HTTP 404"),
    ],
)
def test_download_weights_refuses_a_bad_config(server, tmp_path, config, config_sha, error, match):
    """The config is checked against its own SHA-256, its size, its shape and the weights'
    digest it names; on failure the existing pair is untouched and no staging is left."""
    dest = tmp_path / "m.safetensors"
    dest.write_bytes(b"old weights")
    dest.with_suffix(".json").write_bytes(b"old config")
    with pytest.raises(error, match=match):
        download_weights(
            f"{server}/w.safetensors", dest, SHA, config_sha, config_url=f"{server}{config}"
        )
    assert dest.read_bytes() == b"old weights"
    assert dest.with_suffix(".json").read_bytes() == b"old config"
    assert _left(tmp_path) == ["m.json", "m.safetensors"]


def test_download_weights_refuses_weights_of_another_digest(server, tmp_path):
    """Config and expected digest agree, the served weights do not: nothing is saved."""
    dest = tmp_path / "m.safetensors"
    config = _FILES["/f.json"]
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_weights(
            f"{server}/w.safetensors", dest, "f" * 64, _sha(config), config_url=f"{server}/f.json"
        )
    assert _left(tmp_path) == []
