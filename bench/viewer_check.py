"""Our exports in real viewers: each format rendered by headless Chromium, checked upright.

    python bench/viewer_check.py --out out/viewer_check [--input PROP] [--montage PNG]
                                 [--formats ply,compressed.ply,splat,spz,sog,glb] [--size 360]

Each format is written with `engine.io.save` (standard axes, engine/io/axes.py), then:

* .ply, .compressed.ply, .splat, .spz, .sog: splat-transform (tools/splat-transform,
  pinned) turns the file into its self-contained SuperSplat viewer (`-g cpu`, no GPU), with a
  camera from viewer settings; the page is opened as `?noui&noanim&webgl`.
* .glb: tools/viewer/babylon.html loads it with Babylon.js's KHR_gaussian_splatting loader.

Both pages are served from a local HTTP server (127.0.0.1, a free port) and opened by
tools/viewer/screenshot.mjs: puppeteer-core drives Debian's Chromium (`apt-get install -y
chromium`) with SwiftShader WebGL (`--use-angle=swiftshader --enable-unsafe-swiftshader
--no-sandbox --headless --disable-background-networking --disable-component-update
--no-first-run`), waits until the viewer says it has drawn and two screenshots agree, and
saves one. The camera looks at the prop's front (Blender's Front view: along +Y, Z up).

Without --input the prop is a test object: a grey column much taller than wide (in
Blender's world, Z up) with a red marker on top and a blue one on its +X side. `check_upright`
then asserts, per screenshot, that the drawn silhouette is taller than wide, the red marker's
centroid is in its top quarter and the blue one right of the middle (Front view has +X on
the right: a mirrored viewer fails). With --input (any file engine.io.load reads, in the
standard frame: `gd demo` writes out/demo/prop.ply) the screenshots are only collected;
--montage writes them as one labelled image (docs/viewer_montage.png: the demo chair).

tests/test_viewer_check.py runs this on the test object when Chromium, node and both
tools' node_modules are there (`.ci/run` installs them), and skips otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPLAT_TRANSFORM = ROOT / "tools" / "splat-transform" / "node_modules" / ".bin" / "splat-transform"
VIEWER = ROOT / "tools" / "viewer"
SCREENSHOT = VIEWER / "screenshot.mjs"
FORMATS = ("ply", "compressed.ply", "splat", "spz", "sog", "glb")
VIEWER_NAMES = {"glb": "Babylon.js"}  # every other format: SuperSplat (splat-transform HTML)
FOV_DEG = 30.0
BACKGROUND = (214, 214, 214)  # light grey: pale splats show against it, unlike white


class ViewerCheckError(RuntimeError):
    """A tool is missing, a conversion failed or a page did not render."""


def chromium() -> str | None:
    """Path of the Chromium to drive ($CHROMIUM, else chromium / chromium-browser on PATH)."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def missing_tools() -> list[str]:
    """What is missing to run the check (empty when everything is there)."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node")
    if chromium() is None:
        missing.append("chromium (apt-get install -y chromium)")
    if not SPLAT_TRANSFORM.exists():
        missing.append("splat-transform (npm ci --prefix tools/splat-transform)")
    if not (VIEWER / "node_modules" / "puppeteer-core").is_dir():
        missing.append("puppeteer-core (npm ci --prefix tools/viewer)")
    return missing


def test_object():
    """The tall test object (Blender's world, Z up): a grey column 0.3 wide and 2 tall, a
    red disc on top, a blue patch on its +X side. Gaussians, SH degree 0."""
    import torch

    from engine.gaussians import Gaussians, rgb_to_sh_dc

    points, colours = [], []
    for z in np.linspace(-1.0, 1.0, 60):
        for a in range(10):
            t = a / 10 * 2 * math.pi
            points.append((0.15 * math.cos(t), 0.15 * math.sin(t), z))
            colours.append((0.55, 0.55, 0.55))
    for r in (0.0, 0.1, 0.2):
        for a in range(12):
            t = a / 12 * 2 * math.pi
            points.append((r * math.cos(t), r * math.sin(t), 1.12))
            colours.append((1.0, 0.0, 0.0))
    for z in np.linspace(-0.3, 0.3, 7):
        for y in (-0.04, 0.0, 0.04):
            points.append((0.17, y, z))
            colours.append((0.0, 0.0, 1.0))
    means = torch.tensor(points, dtype=torch.float32)
    sh = rgb_to_sh_dc(torch.tensor(colours))[:, None, :]
    return Gaussians.isotropic(means, math.log(0.045), 4.0, sh)


def camera(
    gaussians, direction=(0.0, -1.0, 0.0), zoom: float = 1.0
) -> tuple[list[float], list[float]]:
    """(eye, target) in the viewers' Y-up frame (glTF's; SuperSplat turns PLY space into it)
    for a camera framing `gaussians` from `direction` (Blender's world, from the prop's
    centre towards the eye; the default is Blender's Front view, from -Y); `zoom` > 1 moves
    the camera closer."""
    from engine.io.axes import GLTF_Y_UP

    means = gaussians.means.detach().double().numpy()
    lo, hi = np.percentile(means, 1, axis=0), np.percentile(means, 99, axis=0)
    centre = (lo + hi) / 2
    radius = float(np.linalg.norm(hi - lo)) / 2
    direction = np.asarray(direction, dtype=np.float64)
    direction /= np.linalg.norm(direction)
    distance = 1.25 * radius / math.sin(math.radians(FOV_DEG) / 2) / zoom
    eye = centre + distance * direction
    return (GLTF_Y_UP @ eye).tolist(), (GLTF_Y_UP @ centre).tolist()


def _viewer_settings(eye: list[float], target: list[float]) -> dict:
    """SuperSplat viewer settings (version 2): white background, no effects, one camera."""
    off = {"enabled": False}
    return {
        "version": 2,
        "tonemapping": "linear",
        "highPrecisionRendering": False,
        "background": {"color": [c / 255 for c in BACKGROUND]},
        "postEffectSettings": {
            "sharpness": {**off, "amount": 0},
            "bloom": {**off, "intensity": 0.1, "blurLevel": 2},
            "grading": {
                **off,
                "brightness": 1,
                "contrast": 1,
                "saturation": 1,
                "tint": [1, 1, 1],
            },
            "vignette": {**off, "intensity": 0.5, "inner": 0.3, "outer": 0.75, "curvature": 1},
            "fringing": {**off, "intensity": 0.5},
        },
        "animTracks": [],
        "cameras": [{"initial": {"position": eye, "target": target, "fov": FOV_DEG}}],
        "annotations": [],
        "startMode": "default",
    }


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the check prints its own summary
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """A local HTTP server for `root` on a free port of 127.0.0.1; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run(cmd: list[str], timeout: float, what: str) -> None:
    env = {**os.environ, "CHROMIUM": chromium() or "chromium"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ViewerCheckError(f"{what}: no result in {timeout:.0f} s") from None
    if done.returncode:
        tail = (done.stdout + done.stderr).strip().splitlines()[-12:]
        raise ViewerCheckError(f"{what} failed ({done.returncode}):\n" + "\n".join(tail))


@dataclass
class Shot:
    """One format's screenshot and how long it took."""

    fmt: str
    viewer: str
    png: Path
    seconds: float


def render_formats(
    gaussians,
    out: Path,
    formats: tuple[str, ...] = FORMATS,
    size: int = 360,
    direction=(0.0, -1.0, 0.0),
    zoom: float = 1.0,
    timeout: float = 120.0,
    axes: str = "standard",
) -> list[Shot]:
    """Write `gaussians` (our world) in each format under `out` (with `axes`, see
    engine.io.save), open each in its viewer and screenshot it (`out/<format>.png`) from
    `direction` (see `camera`). Raises ViewerCheckError (tools missing, a conversion or a
    page failing)."""
    from engine.io import save

    missing = missing_tools()
    if missing:
        raise ViewerCheckError("missing: " + ", ".join(missing))
    out.mkdir(parents=True, exist_ok=True)
    eye, target = camera(gaussians, direction, zoom)
    settings = out / "viewer_settings.json"
    settings.write_text(json.dumps(_viewer_settings(eye, target)))
    shots = []
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        (site / "viewer").symlink_to(VIEWER, target_is_directory=True)
        (site / "out").symlink_to(out.resolve(), target_is_directory=True)
        with serve(site) as base:
            for fmt in formats:
                start = time.perf_counter()
                path = out / f"prop.{fmt}"
                save(gaussians, path, axes=axes)
                png = out / f"{fmt.replace('.', '_')}.png"
                if fmt in ("glb", "gltf"):
                    query = "&".join([
                        f"file=../out/{path.name}",
                        "eye=" + ",".join(f"{v:.6g}" for v in eye),
                        "target=" + ",".join(f"{v:.6g}" for v in target),
                        f"fov={FOV_DEG}",
                        "bg=" + ",".join(str(c / 255) for c in BACKGROUND),
                    ])  # fmt: skip
                    url = f"{base}/viewer/babylon.html?{query}"
                else:
                    html = out / f"{fmt.replace('.', '_')}.html"
                    _run([str(SPLAT_TRANSFORM), "-q", "-w", "-g", "cpu", str(path),
                          "--viewer-settings", str(settings), str(html)],
                         timeout, f"splat-transform {path.name} -> {html.name}")  # fmt: skip
                    url = f"{base}/out/{html.name}?noui&noanim&webgl"
                _run(["node", str(SCREENSHOT), url, str(png), str(size), str(size),
                      str(int(timeout * 1000))], timeout + 30, f"screenshot of {fmt}")  # fmt: skip
                viewer = VIEWER_NAMES.get(fmt, "SuperSplat")
                shots.append(Shot(fmt, viewer, png, time.perf_counter() - start))
    return shots


@dataclass
class Upright:
    """What `check_upright` measured in one screenshot (pixels)."""

    width: int
    height: int
    marker_y: float  # red marker's centroid, 0 = silhouette top, 1 = bottom
    marker_pixels: int
    side_x: float  # blue marker's centroid, 0 = silhouette left, 1 = right
    side_pixels: int

    @property
    def ok(self) -> bool:
        tall = self.height > 1.5 * self.width
        top = self.marker_pixels > 20 and self.marker_y < 0.25
        right = self.side_pixels > 5 and self.side_x > 0.5
        return tall and top and right


def check_upright(png: Path) -> Upright:
    """Silhouette (pixels away from the background) and markers of a screenshot."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int32)
    drawn = np.abs(rgb - np.array(BACKGROUND)).sum(axis=2) > 60
    ys, xs = np.nonzero(drawn)
    if len(ys) == 0:
        return Upright(0, 0, 1.0, 0, 0.0, 0)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 100) & (rgb[..., 1] < 100)
    ry, _ = np.nonzero(red)
    _, bx = np.nonzero(blue)
    marker = float((ry.mean() - top) / max(bottom - top, 1)) if len(ry) else 1.0
    side = float((bx.mean() - left) / max(right - left, 1)) if len(bx) else 0.0
    return Upright(int(right - left + 1), int(bottom - top + 1), marker, int(len(ry)), side,
                   int(len(bx)))  # fmt: skip


def montage(shots: list[Shot], path: Path, columns: int = 3) -> None:
    """The screenshots side by side, each labelled with its format and viewer."""
    from PIL import Image, ImageDraw

    tiles = [Image.open(s.png).convert("RGB") for s in shots]
    w, h = tiles[0].size
    label = 26
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * w, rows * (h + label)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (shot, tile) in enumerate(zip(shots, tiles, strict=True)):
        x, y = (i % columns) * w, (i // columns) * (h + label)
        sheet.paste(tile, (x, y + label))
        draw.text((x + 8, y + 6), f".{shot.fmt}  ({shot.viewer})", fill=(20, 20, 20))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for files and PNGs")
    parser.add_argument("--input", type=Path, default=None,
                        help="splat file to show (default: the checked test object)")  # fmt: skip
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--size", type=int, default=360, help="screenshot size in pixels")
    parser.add_argument("--montage", type=Path, default=None, help="write the montage here")
    parser.add_argument(
        "--direction",
        default="0,-1,0",
        help="camera direction from the prop, Blender's world (default: front)",
    )
    parser.add_argument("--zoom", type=float, default=1.0, help="> 1: closer")
    parser.add_argument(
        "--axes",
        choices=("standard", "raw"),
        default="standard",
        help="how files are written (raw: the old Z-up files, for contrast)",
    )
    args = parser.parse_args(argv)
    formats = tuple(f.strip().lstrip(".") for f in args.formats.split(",") if f.strip())
    if args.input is None:
        gaussians, check = test_object(), True
    else:
        from engine.io import load

        gaussians, check = load(args.input), False
    direction = tuple(float(v) for v in args.direction.split(","))
    try:
        shots = render_formats(gaussians, args.out, formats, args.size, direction, args.zoom,
                               axes=args.axes)  # fmt: skip
    except ViewerCheckError as e:
        print(f"viewer check: {e}", file=sys.stderr)
        return 2
    failed = 0
    for shot in shots:
        line = f"{shot.fmt:>15}  {shot.viewer:<10}  {shot.seconds:5.1f} s  {shot.png}"
        if check:
            up = check_upright(shot.png)
            failed += not up.ok
            line += (f"  {up.width}x{up.height} px, top marker at {up.marker_y:.2f} of the "
                     f"height, +X marker at {up.side_x:.2f} of the width: "
                     + ("upright" if up.ok else "NOT UPRIGHT"))  # fmt: skip
        print(line)
    if args.montage:
        montage(shots, args.montage)
        print(f"montage: {args.montage}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
