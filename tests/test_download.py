"""engine.download against a local HTTP server (no internet): success, progress, checksum
mismatch, HTTP errors, cancel; nothing is left on disk after a failure."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from engine.download import DownloadCancelled, DownloadError, download, sha256_file

PAYLOAD = bytes(range(256)) * 2000  # 512 kB: several chunks


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
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


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
