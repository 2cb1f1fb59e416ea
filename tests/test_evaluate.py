"""engine.evaluate / `gd evaluate` / engine.plots on a tiny copy of the bundled sample props
(64², 3 objects) with a duck-typed model that returns real Gaussians."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.camera_formats import read_nerf_transforms, write_nerf_transforms
from engine.cameras import Cameras
from engine.cli import main
from engine.data.layout import object_dir, read_manifest, transforms_path, write_json_atomic
from engine.evaluate import (
    ViewPlan,
    apply_plan,
    evaluate,
    evaluate_object,
    gaussian_counts,
    object_mask,
    open_dataset,
    plan_views,
)
from engine.gaussians import Gaussians
from engine.gd.merge import merge
from engine.images import resize_views
from engine.metrics import psnr
from engine.models.config import get_model_config
from engine.plots import plot_histograms, plot_training_curves, read_metrics_jsonl
from engine.render import render

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None  # an optional extra

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample_props"
SIZE = 64


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_props(tmp_path_factory) -> Path:
    """The sample props at 64² with objects 0 and 1 in "test" and object 2 in "train"."""
    root = tmp_path_factory.mktemp("props")
    manifest = read_manifest(SAMPLE)
    for index in (0, 1, 2):
        src, dst = object_dir(SAMPLE, index), object_dir(root, index)
        dst.mkdir(parents=True)
        for name in ("done.json", "prop.json"):
            shutil.copy(src / name, dst / name)
        for split in ("input", "target"):
            frames = read_nerf_transforms(transforms_path(src, split))
            (dst / split).mkdir()
            paths = []
            for path in frames.image_paths:
                with Image.open(path) as image:
                    small = image.convert("RGBA").resize((SIZE, SIZE), Image.BOX)
                small.save(dst / split / Path(path).name)
                paths.append(dst / split / Path(path).name)
            write_nerf_transforms(
                transforms_path(dst, split), frames.cameras.scaled(SIZE, SIZE), paths
            )
    manifest["splits"] = {"train": [2], "val": [], "test": [0, 1]}
    manifest["resolution"] = SIZE
    write_json_atomic(root / "manifest.json", manifest)
    return root


class Rec:
    """What `model.reconstruct` returns (the fields evaluate reads)."""

    def __init__(self, coarse, gaussians, level, parent, stats):
        self.coarse, self.gaussians, self.level, self.parent = coarse, gaussians, level, parent
        self.stats = stats


def random_gaussians(n: int, seed: int, scale: float, opacity: float) -> Gaussians:
    """n seeded random Gaussians in the unit cube [-0.5, 0.5]³."""
    g = torch.Generator().manual_seed(seed)
    quats = torch.randn(n, 4, generator=g)
    return Gaussians.from_activated(
        (torch.rand(n, 3, generator=g) - 0.5) * 0.8,
        torch.full((n, 3), scale),
        quats / quats.norm(dim=-1, keepdim=True),
        torch.full((n,), opacity),
        colors=torch.rand(n, 3, generator=g),
    )


class FakeModel:
    """Duck-typed object model: checks what it is given, returns seeded random coarse
    Gaussians and a merged set where the first `candidates` are replaced by R children.

    `fine_colour` (index -> RGB) makes the fine Gaussians of one object a flat colour, so a
    test can make fine worse than coarse on purpose.
    """

    name = "fake-model"
    image_size = 32
    weights_path = None
    config = None

    def __init__(self, n: int = 600, candidates: int = 100, children: int = 3, fine_colour=None):
        self.n, self.k, self.r = n, candidates, children
        self.fine_colour = fine_colour or {}
        self.calls: list[tuple[tuple[int, ...], int, int]] = []
        self.recs: list[Rec] = []

    def reconstruct(self, images: torch.Tensor, cameras: Cameras, **_) -> Rec:
        self.calls.append((tuple(images.shape), cameras.width, cameras.height))
        seed = len(self.calls)
        coarse = random_gaussians(self.n, seed, 0.04, 0.7)
        selected = torch.zeros(self.n, dtype=torch.bool)
        selected[: self.k] = True
        m = self.k * self.r
        parent = torch.arange(m) // self.r
        fine = random_gaussians(m, 1000 + seed, 0.02, 0.4)
        fine.means = coarse.means[parent] + 0.01 * torch.randn(m, 3)
        colour = self.fine_colour.get(seed - 1)
        if colour is not None:
            fine.sh = fine.sh.clone()
            fine.sh[:, 0] = (torch.tensor(colour) - 0.5) / 0.28209479177387814
        merged = merge(coarse, selected, fine, torch.ones(m, dtype=torch.int64), parent)
        stats = {"seconds": {"backbone": 0.01, "densify": 0.02}, "counts": {"candidates": self.k}}
        rec = Rec(coarse, merged.gaussians, merged.level, merged.parent, stats)
        self.recs.append(rec)
        return rec


# ---------------------------------------------------------------------------- pieces
def test_object_mask_dilates_ground_truth_alpha():
    alphas = torch.zeros(2, 256, 256)
    alphas[0, 100, 100] = 0.9
    alphas[1, 50, 50] = 0.4  # below 0.5: not object
    mask = object_mask(alphas)  # radius 2 at 256²
    assert mask.shape == (2, 256, 256) and mask.dtype == torch.bool
    assert int(mask[0].sum()) == 25 and bool(mask[0, 98:103, 98:103].all())
    assert not mask[1].any()
    small = torch.zeros(1, 64, 64)
    small[0, 10, 10] = 1
    assert int(object_mask(small).sum()) == 9  # radius 1 below 192²
    assert int(object_mask(small, radius=0).sum()) == 1


def test_resize_views_area_filter_and_cameras():
    images = torch.rand(2, 8, 8, 3)
    cams = Cameras(torch.eye(4).expand(2, 4, 4), 10.0, 10.0, 4.0, 4.0, 8, 8)
    small, scaled = resize_views(images, cams, 4)
    assert small.shape == (2, 4, 4, 3)
    expected = images.reshape(2, 4, 2, 4, 2, 3).mean(dim=(2, 4))
    torch.testing.assert_close(small, expected)
    assert (scaled.width, scaled.height) == (4, 4)
    torch.testing.assert_close(scaled.fx, torch.full((2,), 5.0))
    torch.testing.assert_close(scaled.cx, torch.full((2,), 2.0))
    same, same_cams = resize_views(images, cams, 8)
    assert same is images and same_cams is cams
    big, big_cams = resize_views(images, cams, 16)
    assert big.shape == (2, 16, 16, 3) and big_cams.width == 16


def test_gaussian_counts():
    cams = Cameras(torch.eye(4), 1.0, 1.0, 16.0, 16.0, 32, 32)
    rec = FakeModel(n=50, candidates=10, children=4).reconstruct(torch.zeros(1, 32, 32, 3), cams)
    assert gaussian_counts(rec) == {
        "coarse": 50, "final": 80, "candidates": 10, "generated": 40, "added": 30,
    }  # fmt: skip
    rec.stats = {}  # no counts from the model: derived from the parents
    assert gaussian_counts(rec)["candidates"] == 10


# ---------------------------------------------------------------------------- evaluation
def test_evaluate_object_scores_coarse_and_fine_separately(tiny_props):
    dataset = open_dataset(tiny_props, "test")
    model = FakeModel()
    item = dataset[0]
    result = evaluate_object(model, item, torch.device("cpu"), keep_renders=True)
    # The model was given views at its own size, cameras scaled with them, as straight
    # RGBA (the add-on's captures are): composited on white they are the dataset's views.
    assert model.calls == [((4, 32, 32, 4), 32, 32)]
    rec = model.recs[0]
    cams = item["target_cameras"]
    with torch.no_grad():
        coarse = render(rec.coarse, cams, background=torch.ones(3)).colors
        fine = render(rec.gaussians, cams, background=torch.ones(3)).colors
    targets = item["target_images"]
    assert result.renders["coarse"].shape == (4, SIZE, SIZE, 3)  # native target size
    np.testing.assert_allclose(result.coarse["psnr"], psnr(coarse, targets).tolist(), atol=1e-4)
    np.testing.assert_allclose(result.fine["psnr"], psnr(fine, targets).tolist(), atol=1e-4)
    mask = object_mask(item["target_alphas"])
    np.testing.assert_allclose(
        result.fine["psnr_object"], psnr(fine, targets, mask).tolist(), atol=1e-4
    )
    assert set(result.coarse) >= {"psnr", "psnr_object", "ssim"}
    assert result.counts["generated"] == 300 and result.counts["added"] == 200
    assert {"backbone", "densify", "reconstruct_wall", "render_targets_wall"} <= set(result.seconds)
    assert set(result.hist) == {"coarse", "candidates", "fine"}
    assert result.hist["candidates"]["opacity"].numel() == 100


def test_evaluate_writes_report_and_never_reports_best_of_as_fine(tiny_props, tmp_path):
    dataset = open_dataset(tiny_props, "test")
    # Object 1's fine Gaussians are flat black: fine is worse than coarse there.
    model = FakeModel(fine_colour={1: (0.0, 0.0, 0.0)})
    out = tmp_path / "report"
    data = evaluate(model, dataset, out, split="test", image_objects=1, image_views=2)
    plots = ("hist_log_scale.png", "hist_opacity.png") if HAVE_MATPLOTLIB else ()
    for name in ("report.md", "metrics.json", *plots,
                 "images/000000_view00.png", "images/000000_view01.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (out / "images" / "000001_view00.png").exists()
    with Image.open(out / "images" / "000000_view00.png") as strip:
        assert strip.width == 4 * SIZE and strip.height > SIZE  # GT | hull | coarse | fine
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(data))
    s = saved["summary"]
    objs = saved["objects"]
    assert [o["index"] for o in objs] == [0, 1] and s["objects"] == 2
    fine_means = [o["fine"]["mean"]["psnr"] for o in objs]
    coarse_means = [o["coarse"]["mean"]["psnr"] for o in objs]
    assert s["fine"]["psnr"] == pytest.approx(np.mean(fine_means))
    assert s["coarse"]["psnr"] == pytest.approx(np.mean(coarse_means))
    assert s["gain"]["psnr"] == pytest.approx(s["fine"]["psnr"] - s["coarse"]["psnr"])
    assert fine_means[1] < coarse_means[1]  # the black fine set hurts
    assert s["best_of_per_object_not_headline"]["psnr"] == pytest.approx(
        np.mean(np.maximum(fine_means, coarse_means))
    )
    assert s["fine"]["psnr"] < s["best_of_per_object_not_headline"]["psnr"]
    wins = s["fine_ge_coarse"]["psnr"]
    assert wins["of"] == 2 and wins["fine_ge_coarse"] == sum(
        f >= c for f, c in zip(fine_means, coarse_means, strict=True)
    )
    assert s["white"]["psnr"] > 0 and s["white"]["psnr_object"] < s["white"]["psnr"]
    assert len(objs[0]["fine"]["per_view"]["psnr"]) == 4
    assert s["counts_mean"]["final"] == 800
    assert saved["meta"]["split"] == "test"
    assert saved["meta"]["model"]["sha256"] is None
    assert saved["meta"]["data"]["target_size"] == f"{SIZE}x{SIZE}"
    assert saved["histograms"]["opacity"]["fine (generated)"]["count"] == 600
    report = (out / "report.md").read_text()
    for text in ("fine − coarse", "object pixels", "not our headline number", "Per object",
                 "000001", "Weights: none", "all-white", "Margin over the visual hull",
                 "fine − hull", "PSNR hull"):  # fmt: skip
        assert text in report, text
    # The visual hull is scored on the same views, and the margin is fine minus hull.
    hull_means = [o["hull"]["mean"]["psnr"] for o in objs]
    assert s["visual_hull"]["psnr"] == pytest.approx(np.mean(hull_means))
    assert s["margin_over_visual_hull"]["fine"]["psnr"] == pytest.approx(
        s["fine"]["psnr"] - s["visual_hull"]["psnr"]
    )
    assert s["fine_beats_visual_hull"]["psnr"]["fine_gt_hull"] == sum(
        f > h for f, h in zip(fine_means, hull_means, strict=True)
    )
    assert objs[0]["counts"]["visual_hull"] > 0 and "visual_hull_wall" in objs[0]["seconds"]


def test_evaluate_limit(tiny_props, tmp_path):
    dataset = open_dataset(tiny_props, "all")
    model = FakeModel()
    data = evaluate(model, dataset, tmp_path / "o", limit=1, image_objects=0)
    assert data["summary"]["objects"] == 1 and len(model.calls) == 1
    assert "first 1 of 3" in (tmp_path / "o" / "report.md").read_text()
    with pytest.raises(ValueError):
        evaluate(model, dataset, tmp_path / "p", limit=0)


# ---------------------------------------------------------------------------- CLI
def test_cli_runs_with_a_model(tiny_props, tmp_path, monkeypatch, capsys):
    import engine.resolve

    seen = {}

    def fake_resolve(model, device, weights=None, pretrained=True):
        seen.update(model=model, pretrained=pretrained)
        return FakeModel()

    monkeypatch.setattr(engine.resolve, "resolve_model", fake_resolve)
    out = tmp_path / "cli"
    args = ["--limit", "1", "--device", "cpu", "--random-init", "--images", "1",
            "--image-views", "1"]  # fmt: skip
    rc = main(["evaluate", "object-tiny", str(tiny_props), "--out", str(out), *args])
    assert rc == 0
    assert seen == {"model": "object-tiny", "pretrained": False}
    assert "PSNR coarse" in capsys.readouterr().out
    assert (out / "report.md").is_file() and (out / "images" / "000000_view00.png").is_file()
    assert not (out / "images" / "000000_view01.png").exists()
    assert json.loads((out / "metrics.json").read_text())["meta"]["split"] == "test"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["MISSING", "--split", "test"], "not found"),
        (["DATA", "--split", "val"], "no finished objects"),
        (["DATA", "--split", "bogus"], "split must be"),
    ],
)
def test_cli_bad_input_exit_2_and_writes_nothing(tiny_props, tmp_path, capsys, args, message):
    args = [str(tmp_path / "nope") if a == "MISSING" else str(tiny_props) if a == "DATA" else a
            for a in args]  # fmt: skip
    out = tmp_path / "out"
    assert main(["evaluate", "object-tiny", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_unknown_model_and_missing_weights(tiny_props, tmp_path, capsys):
    from engine import models

    if not hasattr(models, "load_model"):
        pytest.skip("engine.models.load_model not available yet")
    out = tmp_path / "out"
    for model in ("no-such-model", str(tmp_path / "missing.safetensors"), str(tmp_path)):
        rc = main(["evaluate", model, str(tiny_props), "--out", str(out), "--device", "cpu"])
        assert rc == 2, model
        assert capsys.readouterr().err.startswith("gd evaluate: error:")
        assert not out.exists()


def test_gd_evaluate_end_to_end_with_the_real_model(tiny_props, tmp_path):
    """`gd evaluate object-tiny --random-init` on the tiny props: the real model's API."""
    from engine import models

    if not hasattr(models, "load_model"):
        pytest.skip("engine.models.load_model not available yet")
    out = tmp_path / "real"
    rc = main(["evaluate", "object-tiny", str(tiny_props), "--out", str(out), "--split", "test",
               "--limit", "1", "--device", "cpu", "--random-init", "--images", "1"])  # fmt: skip
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    obj = data["objects"][0]
    assert data["meta"]["model"]["name"] == "object-tiny"
    assert data["meta"]["model"]["weights_path"] is None
    for which in ("coarse", "fine"):
        assert obj[which]["mean"]["psnr"] is not None
    counts = obj["counts"]
    assert counts["final"] == counts["coarse"] + counts["added"]
    assert "reconstruct_wall" in obj["seconds"]
    assert "random initialisation" in (out / "report.md").read_text()


def test_gd_evaluate_budget_sets_the_candidates_and_is_reported(tiny_props, tmp_path):
    """`--budget K` is the K every reconstruction densifies with, and the report says so."""
    runs = {}
    for budget in (None, 7):
        out = tmp_path / f"k{budget}"
        extra = [] if budget is None else ["--budget", str(budget)]
        rc = main(["evaluate", "object-tiny", str(tiny_props), "--out", str(out), "--limit", "1",
                   "--device", "cpu", "--random-init", "--images", "0", *extra])  # fmt: skip
        assert rc == 0
        runs[budget] = json.loads((out / "metrics.json").read_text())
        assert (
            f"K = {runs[budget]['meta']['model']['candidates']} densification"
            in (out / "report.md").read_text()
        )
    default = runs[None]["meta"]["model"]["candidates"]
    assert default == get_model_config("object-tiny").candidates
    assert runs[7]["meta"]["model"]["candidates"] == 7
    assert runs[7]["objects"][0]["counts"]["candidates"] == 7
    assert runs[None]["objects"][0]["counts"]["candidates"] > 7


def test_gd_evaluate_saved_weights_records_sha256(tiny_props, tmp_path):
    """A training run folder as MODEL: its checkpoint is loaded and its sha256 reported."""
    from engine.models import load_model
    from engine.weights import save_weights

    model = load_model("object-tiny", pretrained=False, device="cpu")
    weights = tmp_path / "run" / "checkpoint" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    digest = save_weights(model.state_dict(), weights, {"config": model.config.to_dict()})
    out = tmp_path / "report"
    args = ["--split", "test", "--limit", "1", "--device", "cpu", "--images", "0"]
    assert main(["evaluate", str(tmp_path / "run"), str(tiny_props), "--out", str(out), *args]) == 0
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert meta["model"]["sha256"] == digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["model"]["weights_path"] == str(weights)
    assert digest in (out / "report.md").read_text()


# ---------------------------------------------------------------------------- plots
def test_plot_training_curves(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(0, 100, 10):
        record = {"step": step, "loss": 1 / (step + 1), "psnr_fine": 20 + step / 10, "lr": 4e-4,
                  "split": "train", "flag": True, "note": "x"}  # fmt: skip
        lines.append(json.dumps(record))
        if step % 50 == 0:
            lines.append(json.dumps({"step": step, "loss": 1.2 / (step + 1), "split": "val"}))
    lines += ["", "not json", json.dumps([1, 2]), json.dumps({"loss": 3.0}), '{"step": 9']
    log.write_text("\n".join(lines))
    assert len(read_metrics_jsonl(log)) == 13  # 10 train + 2 val + the step-less dict
    out = tmp_path / "sub" / "curves.png"
    keys = plot_training_curves(log, out, panel_size=(300, 200), columns=2)
    assert keys == ["loss", "psnr_fine", "lr"]  # bools and strings are not plotted
    with Image.open(out) as image:
        assert image.size == (600, 400)
        pixels = np.asarray(image.convert("RGB"))
    # Both split colours are drawn (train blue, val vermilion).
    assert ((pixels == (0, 114, 178)).all(-1)).any() and ((pixels == (213, 94, 0)).all(-1)).any()
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "none.jsonl", out)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"step": 1, "split": "train"}) + "\n")
    with pytest.raises(ValueError):
        plot_training_curves(empty, out)


def test_plot_histograms_density(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    stats = plot_histograms(
        {"a": rng.normal(size=1000), "b": torch.randn(300), "empty": np.zeros(0)},
        tmp_path / "h.png", bins=20, value_range=(-10.0, 10.0),
    )  # fmt: skip
    assert (tmp_path / "h.png").is_file()
    for name in ("a", "b"):
        density, edges = np.asarray(stats[name]["density"]), np.asarray(stats[name]["edges"])
        assert (density * np.diff(edges)).sum() == pytest.approx(1.0)
        assert stats[name]["outside_range"] == 0
    assert stats["b"]["count"] == 300 and stats["empty"]["count"] == 0
    clipped = plot_histograms({"a": np.array([0.0, 0.5, 5.0])}, tmp_path / "c.png",
                              value_range=(0.0, 1.0))  # fmt: skip
    assert clipped["a"]["outside_range"] == 1


# ---------------------------------------------------------------------------- --views
def test_plan_views():
    # The whole ring by default; every target scored.
    assert plan_views(4, 8) == ViewPlan((0, 1, 2, 3), (), tuple(range(8)))
    # Fewer views: evenly spaced on the ring.
    assert plan_views(4, 8, views=2).inputs == (0, 2)
    assert plan_views(4, 8, views=1).inputs == (0,)
    assert plan_views(8, 8, views=3).inputs == (0, 2, 5)
    # More views: the ring plus the last target views, which are never scored.
    plan = plan_views(4, 8, views=8, max_views=8)
    assert plan == ViewPlan((0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 2, 3)) and plan.views == 8
    assert not set(plan.borrowed) & set(plan.scored)
    assert "target 4–7 (borrowed as inputs, never scored)" in plan.describe()
    # --targets scores the same first views whatever --views is.
    assert plan_views(4, 8, views=4, targets=4).scored == plan.scored
    with pytest.raises(ValueError, match="reads 1 to 8 views"):
        plan_views(4, 8, views=9, max_views=8)
    with pytest.raises(ValueError, match="at least 1"):
        plan_views(4, 8, views=0)
    with pytest.raises(ValueError, match="would leave none to score"):
        plan_views(4, 4, views=8)
    with pytest.raises(ValueError, match="4 target view"):
        plan_views(4, 8, views=8, targets=5)


def test_apply_plan_moves_borrowed_targets_into_the_inputs(tiny_props):
    item = open_dataset(tiny_props, "test")[0]
    plan = plan_views(4, 4, views=6)
    out = apply_plan(item, plan)
    assert out["input_images"].shape[0] == 6 and len(out["input_cameras"]) == 6
    assert out["target_images"].shape[0] == 2 and len(out["target_cameras"]) == 2
    torch.testing.assert_close(out["input_images"][4:], item["target_images"][2:])
    torch.testing.assert_close(out["input_alphas"][4:], item["target_alphas"][2:])
    torch.testing.assert_close(
        out["input_cameras"].world_to_camera[4:], item["target_cameras"].world_to_camera[2:]
    )
    torch.testing.assert_close(out["target_images"], item["target_images"][:2])
    torch.testing.assert_close(
        out["target_cameras"].world_to_camera, item["target_cameras"].world_to_camera[:2]
    )


def test_evaluate_with_more_views_than_the_ring(tiny_props, tmp_path):
    dataset = open_dataset(tiny_props, "test")
    model = FakeModel()
    model.max_views = 8
    data = evaluate(model, dataset, tmp_path / "v6", views=6, image_objects=0)
    # The model read 6 views; only the 2 targets it did not read were scored.
    assert [c[0][0] for c in model.calls] == [6, 6]
    assert all(len(o["fine"]["per_view"]["psnr"]) == 2 for o in data["objects"])
    assert all(len(o["hull"]["per_view"]["psnr"]) == 2 for o in data["objects"])
    meta = data["meta"]["data"]
    assert meta["input_views"] == 6 and meta["target_views"] == 2
    assert meta["view_plan"] == {"inputs": [0, 1, 2, 3], "borrowed_targets": [2, 3],
                                 "scored_targets": [0, 1]}  # fmt: skip
    assert "borrowed as inputs, never scored" in (tmp_path / "v6" / "report.md").read_text()
    # Fewer views than the ring, scored on the same two targets.
    data = evaluate(model, dataset, tmp_path / "v2", views=2, targets=2, image_objects=0)
    assert [c[0][0] for c in model.calls[2:]] == [2, 2]
    assert data["meta"]["data"]["view_plan"]["scored_targets"] == [0, 1]
    # A plan that cannot be met fails before anything is written.
    with pytest.raises(ValueError, match="reads 1 to 8 views"):
        evaluate(model, dataset, tmp_path / "v9", views=9)
    assert not (tmp_path / "v9").exists()


def test_evaluate_without_the_visual_hull(tiny_props, tmp_path):
    data = evaluate(FakeModel(), open_dataset(tiny_props, "test"), tmp_path / "o",
                    image_objects=0, visual_hull=False)  # fmt: skip
    assert "visual_hull" not in data["summary"] and "hull" not in data["objects"][0]
    assert "Margin over the visual hull" not in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--views", "0"], "--views: must be a positive integer"),
        (["--views", "8"], "would leave none to score"),
        (["--views", "4", "--targets", "5"], "--targets 5"),
    ],
)
def test_cli_views_errors_exit_2_and_write_nothing(tiny_props, tmp_path, monkeypatch, capsys,
                                                   args, message):  # fmt: skip
    import engine.resolve

    monkeypatch.setattr(engine.resolve, "resolve_model", lambda *a, **k: FakeModel())
    out = tmp_path / "out"
    argv = ["evaluate", "object-tiny", str(tiny_props), "--out", str(out), *args]
    if args[1] == "0":  # refused while the command line is parsed
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    else:  # refused by the view plan, before the output folder is made
        assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
