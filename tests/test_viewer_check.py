"""Our exports in real viewers (bench/viewer_check.py): the tall test object written in every
format stands upright, unmirrored, in splat-transform's SuperSplat viewer (.ply,
.compressed.ply, .splat, .spz, .sog) and in Babylon.js (.glb), rendered by headless Chromium
with SwiftShader. Skipped unless node, Chromium and both tools' node_modules are there
(`.ci/run` installs them); about a minute."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("viewer_check", ROOT / "bench" / "viewer_check.py")
viewer_check = importlib.util.module_from_spec(_spec)
sys.modules["viewer_check"] = viewer_check  # its dataclasses look their module up there
_spec.loader.exec_module(viewer_check)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(viewer_check.missing_tools()),
        reason="needs " + ", ".join(viewer_check.missing_tools() or ["nothing"]),
    ),
]


def test_every_format_stands_upright_in_its_viewer(tmp_path):
    shots = viewer_check.render_formats(viewer_check.test_object(), tmp_path, size=240)
    assert [s.fmt for s in shots] == list(viewer_check.FORMATS)
    for shot in shots:
        up = viewer_check.check_upright(shot.png)
        assert up.height > 1.5 * up.width, (shot.fmt, up)  # tall, as the object is
        assert up.marker_pixels > 20 and up.marker_y < 0.25, (shot.fmt, up)  # top is up
        assert up.side_pixels > 5 and up.side_x > 0.5, (shot.fmt, up)  # +X right: unmirrored


def test_the_old_raw_files_lie_on_their_side(tmp_path):
    """The check has teeth: the same object written raw (Z-up world coordinates, what
    this project wrote before) is seen end-on, not upright."""
    shots = viewer_check.render_formats(
        viewer_check.test_object(), tmp_path, formats=("ply",), size=240, axes="raw"
    )
    up = viewer_check.check_upright(shots[0].png)
    assert not up.ok and up.height < 1.5 * up.width, up
