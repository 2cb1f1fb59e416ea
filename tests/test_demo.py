"""`gd demo`: the README's main job, with the tiny random model standing in for the shipped
weights (hidden `--random-init`), and its refusal to run without the shipped weights."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from engine.cli import main
from engine.demo import SAMPLE
from engine.io import load
from engine.metrics import psnr
from engine.render import render
from engine.views import load_nerf_scene

TINY = ["--model", "object-tiny", "--random-init", "--device", "cpu"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("demo") / "out"
    import contextlib
    import io

    buffer = io.StringIO()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(buffer):
        assert main(["demo", "--out", str(out), *TINY]) == 0
    return out, buffer.getvalue()


def _printed_psnr(text: str, label: str) -> tuple[float, float]:
    line = next(x for x in text.splitlines() if x.strip().startswith(label))
    full, obj = re.findall(r"(-?[\d.]+) dB", line)[:2]
    return float(full), float(obj)


def test_demo_writes_the_prop_and_the_comparison(demo):
    out, text = demo
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png", "prop.ply"]
    g = load(out / "prop.ply")
    assert f"wrote {out / 'prop.ply'} ({len(g):,} Gaussians)" in text
    sheet = Image.open(out / "comparison.png")
    # 4 held-out views as rows (256² each + a 16 px label bar), GT | coarse | fine columns.
    assert sheet.size == (3 * 256, 4 * (256 + 16))
    assert "RANDOM INIT" in text
    for stage in ("backbone", "select", "densify", "total"):
        assert f"{stage} " in text


def test_demo_prints_fine_scored_on_its_own(demo):
    """The printed fine PSNR is the written prop's own score on the held-out views (never
    the better of coarse and fine), full image and object pixels."""
    out, text = demo
    assert "not best-of" in text
    targets = load_nerf_scene(SAMPLE / "transforms_target.json")
    g = load(out / "prop.ply")
    with torch.no_grad():
        img = render(g, targets.cameras, background=torch.ones(3)).colors.clamp(0, 1)
    from engine.evaluate import object_mask

    mask = object_mask(targets.alphas)
    full, obj = _printed_psnr(text, "fine")
    assert abs(float(psnr(img, targets.images).mean()) - full) < 0.02
    assert abs(float(torch.nanmean(psnr(img, targets.images, mask))) - obj) < 0.02
    coarse_full, _ = _printed_psnr(text, "coarse")
    gain = float(re.search(r"gain ([-+][\d.]+) dB", text).group(1))
    assert abs(gain - (full - coarse_full)) < 0.02


def test_demo_without_shipped_weights_says_what_to_do(tmp_path, capsys, monkeypatch):
    import engine.weights

    monkeypatch.setattr(engine.weights, "ASSETS", tmp_path / "no_assets")
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "object-small.safetensors" in err and "gd train" in err and "--model" in err
    assert not out.exists()
