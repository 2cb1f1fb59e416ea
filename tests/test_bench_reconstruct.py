"""bench/reconstruct.py: one code path for the object and the scene model (issue 18). The
scene path runs for real with scene-tiny, untrained, on the bundled sample scene (a few
seconds); the object path's results file is checked on made-up timings."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_reconstruct", ROOT / "bench" / "reconstruct.py"
)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_reconstruct"] = bench  # its dataclasses look their module up there
# The script imports bench/machine.py as `machine`; bench/ leaves the path again so its
# render.py, data.py, ... never shadow anything for other tests.
sys.path.append(str(ROOT / "bench"))
try:
    _spec.loader.exec_module(bench)
finally:
    sys.path.remove(str(ROOT / "bench"))

META = {
    "date": "2026-12-06 12:00 UTC",
    "machine": "test machine",
    "command": "python bench/reconstruct.py",
    "load_before": "before 0.00, 0.00, 0.00",
    "load_after": "after 0.00, 0.00, 0.00",
    "loaded": False,
    "repeats": 1,
    "nice": 0,
}


def test_scene_model_measured_on_the_sample_scene_and_reported_as_random():
    res = bench.measure("scene-tiny", None, True, repeats=1, threads=0)
    assert res["kind"] == "scene" and res["model"] == "scene-tiny" and res["random_init"]
    (row,) = res["rows"]
    assert row["name"] == "000000" and row["views"] == 2 and row["size"] == "256x256"
    assert 0 < row["inputs"]["near"] < row["inputs"]["far"]
    counts = row["full"]["counts"]
    assert counts["final"] == counts["coarse"] + counts["fine"] - counts["candidates"]
    assert row["coarse"]["counts"]["final"] == counts["coarse"]

    text = bench.render_markdown([res], None, META)
    assert text.startswith("# Scene reconstruction benchmark")
    assert "**random (untrained)**" in text and "sha256" not in text
    assert "model.reconstruct(images, cameras, near=near, far=far)" in text
    assert "| scene | full wall s |" in text and f"{counts['fine']:,}" in text
    assert "- total ≤ 2 s:" in text and "densification adds ≤ 100% to coarse-only" in text
    assert bench.KINDS[res["kind"]].results.name == "reconstruct_scene.md"


def _object_result() -> dict:
    mode = lambda wall: {  # noqa: E731
        "wall": wall, "wall_min": wall, "cpu": wall, "walls": [wall],
        "seconds": {"backbone": wall, "total": wall},
        "counts": {"decoded": 100, "coarse": 10, "candidates": 5, "fine": 20, "final": 25},
    }  # fmt: skip
    row = {"name": "000000", "views": 4, "size": "256x256", "inputs": {},
           "full": mode(0.3), "coarse": mode(0.2)}  # fmt: skip
    return {
        "kind": "object", "rows": [row], "peak_rss_mb": 500.0, "base_rss_mb": 200.0,
        "loaded_rss_mb": 250.0, "threads": 1, "image_size": 128, "model": "object-small",
        "weights_path": str(ROOT / "engine" / "assets" / "object-small.safetensors"),
        "sha256": "ab" * 32, "random_init": False,
    }  # fmt: skip


def test_object_results_keep_their_weights_targets_and_file():
    text = bench.render_markdown([_object_result()], None, META)
    assert text.startswith("# Reconstruction benchmark")
    assert "`engine/assets/object-small.safetensors` (object-small, sha256 `" + "ab" * 32 in text
    assert "| prop | full wall s |" in text and "+0.10 s (+50%)" in text
    assert "- total ≤ 10 s: 0.30 s wall" in text and "peak RSS ≤ 4 GB: 500 MB — met" in text
    assert bench.KINDS["object"].results.name == "reconstruct.md"


def test_missing_scene_weights_point_to_random_init(monkeypatch, tmp_path):
    import engine.weights

    monkeypatch.setattr(engine.weights, "shipped_weights", lambda name: tmp_path / "none")
    args = argparse.Namespace(weights=None, model="scene-small", random_init=False)
    assert "--random-init" in bench._check_weights(args)
    assert bench._check_weights(argparse.Namespace(**{**vars(args), "random_init": True})) is None
    assert "unknown model" in bench._check_weights(
        argparse.Namespace(weights=None, model="nope", random_init=False)
    )
