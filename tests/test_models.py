"""The object model's public face: load_model, reconstruct, densify, normalisation, weights."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from engine.cameras import CameraError, Cameras
from engine.gaussians import Gaussians
from engine.models import Cancelled, UnsafeConfigError, WeightsNotFoundError, load_model
from engine.models.config import OBJECT_SMALL, OBJECT_TINY, ObjectModelConfig
from engine.models.normalization import (
    ASSUMED_FILL,
    CANONICAL_RADIUS,
    estimate_normalization,
    look_at_point,
    normalization_from_bbox,
)
from engine.views import load_nerf_scene
from engine.weights import save_weights

SAMPLE = "examples/sample_props/objects/000000/transforms_input.json"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("object-tiny", device="cpu", pretrained=False)


@pytest.fixture(scope="module")
def views():
    vs = load_nerf_scene(SAMPLE)
    small = torch.nn.functional.interpolate(
        vs.images.permute(0, 3, 1, 2), size=(64, 64), mode="area"
    )
    return small.permute(0, 2, 3, 1).contiguous(), vs.cameras.scaled(64, 64)


def ring(center, distance, fov_deg=40.0, n=4, size=64, elevation=20.0) -> Cameras:
    """n cameras on a ring around `center`, looking at it."""
    az = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    el = math.radians(elevation)
    offsets = torch.stack(
        [az.cos() * math.cos(el), az.sin() * math.cos(el), torch.full_like(az, math.sin(el))], -1
    )
    c = torch.tensor(center, dtype=torch.float64)
    return Cameras.look_at(c + distance * offsets, c, fov_x_deg=fov_deg, width=size, height=size)


# ---------------------------------------------------------------------------- normalisation
def test_look_at_point_finds_the_common_target():
    cams = ring([3.0, -2.0, 5.0], 4.0)
    assert torch.allclose(look_at_point(cams), torch.tensor([3.0, -2.0, 5.0]), atol=1e-4)


@pytest.mark.parametrize("distance,fov", [(2.0, 30.0), (40.0, 50.0), (400.0, 8.0)])
def test_estimated_scale_follows_what_the_views_frame(distance, fov):
    cams = ring([1.0, 2.0, -3.0], distance, fov)
    norm = estimate_normalization(cams)
    framed = distance * math.sin(math.atan(ASSUMED_FILL * math.tan(math.radians(fov) / 2)))
    assert norm.scale == pytest.approx(framed / CANONICAL_RADIUS, rel=1e-3)
    # In model space every camera sees the centre at the same pixel as in the world.
    model = norm.cameras_to_model(cams)
    pix_w, _ = cams.project(norm.center[None])
    pix_m, depth_m = model.project(torch.zeros(1, 3))
    assert torch.allclose(pix_w, pix_m, atol=1e-3)
    assert bool((depth_m > 0).all())


def test_model_space_round_trip_keeps_projections():
    cams = ring([0.5, 0.0, 1.0], 7.0)
    norm = estimate_normalization(cams)
    g = Gaussians.from_activated(
        torch.rand(50, 3) - 0.5, torch.full((50, 3), 0.02), torch.randn(50, 4),
        torch.full((50,), 0.5), torch.rand(50, 3),
    )  # fmt: skip
    world = norm.gaussians_to_world(g)
    back = norm.gaussians_to_model(world)
    assert torch.allclose(back.means, g.means, atol=1e-5)
    assert torch.allclose(back.log_scales, g.log_scales, atol=1e-5)
    pix_m = norm.cameras_to_model(cams).project(g.means)[0]
    pix_w = cams.project(world.means)[0]
    assert torch.allclose(pix_m, pix_w, atol=1e-2)


def test_bbox_normalisation_and_bad_boxes():
    norm = normalization_from_bbox(torch.tensor([[0.0, 0, 0], [2.0, 2, 2]]))
    assert torch.allclose(norm.center, torch.ones(3))
    assert norm.scale == pytest.approx(math.sqrt(12) / 2 / CANONICAL_RADIUS)
    with pytest.raises(ValueError, match="bbox"):
        normalization_from_bbox(torch.tensor([[0.0, 0, 0], [0.0, 1, 1]]))
    with pytest.raises(ValueError, match="bbox"):
        normalization_from_bbox(torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------------------- reconstruct
def test_reconstruct_counts_levels_and_parents(tiny, views):
    images, cams = views
    seen = []
    rec = tiny.reconstruct(images, cams, progress=lambda f, m: seen.append((f, m)))
    counts = rec.stats["counts"]
    assert counts["final"] == len(rec.gaussians) == len(rec.level) == len(rec.parent)
    assert counts["coarse"] == len(rec.coarse)
    fine = rec.level > 0
    assert int(fine.sum()) == counts["fine"]
    assert counts["final"] == counts["coarse"] - counts["candidates"] + counts["fine"]
    # Untouched coarse Gaussians come first, bit for bit, and point at themselves.
    kept = rec.parent[~fine]
    assert torch.equal(rec.gaussians.means[~fine], rec.coarse.means[kept])
    assert rec.parent.max() < len(rec.coarse)
    assert seen[0][0] == 0.0 and seen[-1][0] == 1.0
    assert set(rec.stats["seconds"]) >= {"backbone", "select", "densify", "total"}
    rec.gaussians.validate()


def test_reconstruct_places_gaussians_where_the_cameras_look(tiny, views):
    images, cams = views
    shift = torch.tensor([10.0, -4.0, 2.0])
    moved = cams.world_to_camera.clone()
    moved[:, :3, 3] -= moved[:, :3, :3] @ shift  # the same rig around a prop at `shift`
    far = Cameras(moved, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height)
    a = tiny.reconstruct(images, cams, densify=False)
    b = tiny.reconstruct(images, far, densify=False)
    assert torch.allclose(b.coarse.means, a.coarse.means + shift, atol=1e-3)


def test_reconstruct_without_densify_is_the_coarse_set(tiny, views):
    rec = tiny.reconstruct(*views, densify=False)
    assert rec.gaussians is rec.coarse
    assert bool((rec.level == 0).all())


def test_rgba_input_is_composited_on_white(tiny, views):
    images, cams = views
    rgba = torch.cat([images, torch.ones_like(images[..., :1])], -1)
    a = tiny.reconstruct(images, cams, densify=False)
    b = tiny.reconstruct(rgba, cams, densify=False)
    assert torch.equal(a.coarse.means, b.coarse.means)


def test_cancel_stops_with_cancelled(tiny, views):
    event = threading.Event()

    def progress(fraction, message):
        if fraction >= 0.1:
            event.set()

    with pytest.raises(Cancelled):
        tiny.reconstruct(*views, progress=progress, cancel=event)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda im, c: (im[:0], c[:0]), "1 to"),
        (lambda im, c: (im.repeat(3, 1, 1, 1), Cameras.cat([c, c, c])), "1 to"),
        (lambda im, c: (im[:, :32], c), "images are"),
        (lambda im, c: (im[..., :2], c), "images must be"),
        (lambda im, c: (im.index_fill(0, torch.tensor([1]), float("nan")), c), "NaN"),
        (lambda im, c: (im[:3], c), "images for"),
    ],
)
def test_bad_views_are_clear_errors(tiny, views, mutate, match):
    images, cams = views
    images, cams = mutate(images, cams)
    with pytest.raises(ValueError, match=match):
        tiny.reconstruct(images, cams)


def _with_translations(cams: Cameras, w2c: torch.Tensor) -> Cameras:
    return Cameras(w2c, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height)


@pytest.mark.parametrize(
    "case,match",
    [
        ("four copies of one pose", "all 4 cameras are at the same position"),
        ("copies with float noise", "all 4 cameras are at the same position"),
        ("one frame duplicated", "views 0 and 3 have the same camera pose"),
        ("one spot, four directions", "all 4 cameras are at the same position"),
    ],
)
def test_views_without_baseline_are_refused(tiny, views, case, match):
    images, cams = views
    if case == "four copies of one pose":
        cams = cams[[0, 0, 0, 0]]
    elif case == "copies with float noise":
        w2c = cams.world_to_camera[[0, 0, 0, 0]].clone()
        w2c[:, :3, 3] *= 1 + 1e-7 * torch.arange(4.0)[:, None]
        cams = _with_translations(cams, w2c)
    elif case == "one frame duplicated":
        cams = cams[[0, 1, 2, 0]]
    else:  # a camera turning on the spot: no parallax either
        centre = cams.centers[0]
        w2c = cams.world_to_camera.clone()
        w2c[:, :3, 3] = -(w2c[:, :3, :3] @ centre)
        cams = _with_translations(cams, w2c)
    with pytest.raises(ValueError, match=match):
        tiny.reconstruct(images, cams, densify=False)


def test_a_small_real_baseline_is_accepted(tiny, views):
    images, cams = views
    w2c = cams.world_to_camera[[0, 1, 2, 0]].clone()
    # The fourth camera is the first one moved sideways by 1% of its distance.
    step = 0.01 * float(cams.centers[0].norm())
    w2c[3, :3, 3] -= w2c[3, :3, :3] @ torch.tensor([step, 0.0, 0.0])
    rec = tiny.reconstruct(images, _with_translations(cams, w2c), densify=False)
    assert len(rec.coarse) > 0


def test_camera_looking_away_is_a_clear_error(tiny, views):
    images, cams = views
    w2c = cams.world_to_camera.clone()
    # Turn camera 1 half a turn about its own y axis: it now looks away from the prop.
    centre = cams.centers[1]
    w2c[1, :3, :3] = torch.diag(torch.tensor([-1.0, 1.0, -1.0])) @ w2c[1, :3, :3]
    w2c[1, :3, 3] = -w2c[1, :3, :3] @ centre
    away = Cameras(w2c, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height)
    with pytest.raises(CameraError, match="camera 1"):
        tiny.reconstruct(images, away)


# ---------------------------------------------------------------------------- densify
def test_densify_a_selection_keeps_the_rest_bit_for_bit(tiny, views):
    images, cams = views
    g = tiny.reconstruct(images, cams, densify=False).coarse
    select = torch.zeros(len(g), dtype=torch.bool)
    select[: len(g) // 3] = True
    res = tiny.densify(g, images, cams, select=select)
    n_kept = int((~select).sum())
    out = res.gaussians
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.equal(getattr(out, name)[:n_kept], getattr(g, name)[~select])
    assert bool(select[res.parent[res.level > 0]].all())
    assert len(out) == n_kept + res.stats["counts"]["fine"]


def test_inference_merges_once_in_world_space(tiny, views, monkeypatch):
    import engine.gd.pipeline as pipeline
    import engine.models.gd_object as gd_object

    calls = []
    for module, name in ((pipeline, "merge_fine"), (gd_object, "merge")):
        original = getattr(module, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    tiny.reconstruct(*views)
    assert calls == ["merge"]


def test_densify_budget_limits_added_gaussians(tiny, views):
    images, cams = views
    g = tiny.reconstruct(images, cams, densify=False).coarse
    select = torch.ones(len(g), dtype=torch.bool)
    res = tiny.densify(g, images, cams, select=select, budget=300)
    added = len(res.gaussians) - len(g)
    assert 0 < added <= 300


def test_densify_bad_selection(tiny, views):
    images, cams = views
    g = tiny.reconstruct(images, cams, densify=False).coarse
    with pytest.raises(ValueError, match="empty"):
        tiny.densify(g, images, cams, select=torch.zeros(len(g), dtype=torch.bool))
    with pytest.raises(ValueError, match="bool mask"):
        tiny.densify(g, images, cams, select=torch.zeros(3, dtype=torch.bool))


# ---------------------------------------------------------------------------- weights
def test_backbone_and_densifier_read_the_views_at_their_own_sizes(monkeypatch):
    from engine.gd.pipeline import DensifyPipeline
    from engine.images import resize_views
    from engine.models.config import OBJECT_TINY
    from engine.models.gd_object import GDObjectModel
    from engine.models.object_backbone import ObjectBackbone

    torch.manual_seed(0)
    model = GDObjectModel(OBJECT_TINY.with_(detail_size=96)).eval()
    assert (model.image_size, model.detail_size, model.view_size) == (64, 96, 96)
    seen: dict[str, list[int]] = {"backbone": [], "densifier": []}
    for name, cls in (("backbone", ObjectBackbone), ("densifier", DensifyPipeline)):
        forward = cls.forward

        def recording(self, *args, _forward=forward, _name=name, **kwargs):
            images = args[1] if _name == "densifier" else args[0]
            seen[_name].append(images.shape[-2])
            return _forward(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", recording)
    scene = load_nerf_scene(SAMPLE)  # 256² views: larger than view_size
    for size in (256, 96, 80):
        images, cams = resize_views(scene.images, scene.cameras, size)
        model.reconstruct(images, cams)
        model.densify(model.reconstruct(images, cams, densify=False).gaussians, images, cams)
    # The backbone always reads 64²; the densifier 96², enlarged from smaller views.
    assert set(seen["backbone"]) == {64}
    assert seen["densifier"] and set(seen["densifier"]) == {96}
    # Training's forward takes views at any size and resizes them the same way.
    seen["backbone"].clear()
    seen["densifier"].clear()
    images, cams = resize_views(scene.images, scene.cameras, 128)
    model(images[None], [cams], budget=32)
    assert seen == {"backbone": [64], "densifier": [96]}


def test_weights_round_trip_and_errors(tiny, tmp_path, views):
    path = tmp_path / "w.safetensors"
    save_weights(tiny.state_dict(), path, {"config": tiny.cfg.to_dict()})
    again = load_model(path, device="cpu")
    assert again.weights_sha256 and again.cfg == tiny.cfg
    for (name, a), b in zip(tiny.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    a = tiny.reconstruct(*views, densify=False)
    b = again.reconstruct(*views, densify=False)
    assert torch.equal(a.coarse.means, b.coarse.means)
    # Corruption is caught by the checksum; a missing file names what to do.
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="checksum"):
        load_model(path, device="cpu")
    with pytest.raises(WeightsNotFoundError, match="gd train"):
        load_model("object-tiny", device="cpu", weights=None)
    with pytest.raises(ValueError, match="unknown model"):
        load_model("object-huge", device="cpu", pretrained=False)


def test_weights_saved_before_the_densifier_rename_still_load(tiny, tmp_path):
    """`Densifier.densifier` became `DensifyPipeline.generative`: old `densifier.densifier.*`
    keys (object-small v1 shipped them) load into `densifier.generative.*`; the shipped file,
    old keys or new, loads tensor for tensor."""
    from engine.weights import load_weights, shipped_weights

    old = {k.replace("densifier.generative.", "densifier.densifier.", 1): v
           for k, v in tiny.state_dict().items()}  # fmt: skip
    assert any(k.startswith("densifier.densifier.") for k in old)
    path = tmp_path / "old.safetensors"
    save_weights(old, path, {"config": tiny.cfg.to_dict()})
    again = load_model(path, device="cpu")
    for (name, a), b in zip(tiny.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    shipped = shipped_weights("object-small")
    if shipped.is_file():
        model = load_model("object-small", device="cpu")  # raises on missing/unexpected keys
        state, _ = load_weights(shipped)
        loaded = model.state_dict()
        assert len(state) == len(loaded)
        for key, value in state.items():
            new = key.replace("densifier.densifier.", "densifier.generative.", 1)
            assert torch.equal(value, loaded[new]), key


def test_config_json_round_trip():
    for cfg in (OBJECT_SMALL,):
        assert ObjectModelConfig.from_dict(cfg.to_dict()) == cfg


_FAKE_DINO = (
    "import torch\n"
    "class ViT(torch.nn.Module):\n"
    "    patch_size, embed_dim = 8, 24\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.patch = torch.nn.Conv2d(3, 24, 8, stride=8)\n"
    "    def forward_features(self, x):\n"
    "        t = self.patch(x).flatten(2).transpose(1, 2)\n"
    "        return {'x_norm_patchtokens': t}\n"
    "def dinov2_vits14(pretrained=True):\n"
    "    # The real hubconf downloads its weights when pretrained is True: log each call.\n"
    "    with open(__file__ + '.calls', 'a') as log:\n"
    "        log.write(f'{pretrained}\\n')\n"
    "    return ViT()\n"
)


def _dino_tiny(repo: str = "") -> ObjectModelConfig:
    backbone = {**OBJECT_TINY.to_dict()["backbone"], "encoder": "dino", "dino_repo": repo}
    return OBJECT_TINY.with_(backbone=OBJECT_TINY.backbone.__class__(**backbone))


def test_dino_encoder_option_loads_a_local_hub_checkout(tmp_path):
    """The "dino" encoder reads a torch hub checkout on disk (never the network); here a
    stand-in repo with DINOv2's interface (patch tokens from `forward_features`). Its
    weights load again only with the checkout passed explicitly: the file never names it."""
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(_FAKE_DINO)
    from engine.models.gd_object import GDObjectModel

    model = GDObjectModel(_dino_tiny(str(hub))).eval()
    vs = load_nerf_scene(SAMPLE)
    rec = model.reconstruct(vs.images, vs.cameras, densify=False)
    assert len(rec.coarse) > 0
    rec.coarse.validate()

    path = tmp_path / "dino.safetensors"
    save_weights(model.state_dict(), path, {"config": model.cfg.to_dict()})
    assert (
        json.loads(path.with_suffix(".json").read_text())["config"]["backbone"]["dino_repo"] == ""
    )
    with pytest.raises(ValueError, match=r"DINO encoder .* dino_repo=DIR"):
        load_model(path, device="cpu")
    with pytest.raises(ValueError, match="no hubconf.py"):
        load_model(path, device="cpu", dino_repo=tmp_path)
    again = load_model(path, device="cpu", dino_repo=hub)
    assert again.cfg == model.cfg
    # Neither building the model nor loading its weights asked the hub code for weights.
    assert (hub / "hubconf.py.calls").read_text().split() == ["False", "False"]
    GDObjectModel(_dino_tiny(str(hub)), pretrained_encoder=True)  # what gd train asks for
    assert (hub / "hubconf.py.calls").read_text().split()[-1] == "True"
    with pytest.raises(ValueError, match="dino_repo given"):
        load_model("object-tiny", device="cpu", pretrained=False, dino_repo=hub)


@pytest.mark.parametrize(
    ("backbone", "dino_repo", "match"),
    [
        ({"encoder": "dino", "dino_repo": "HUB"}, None, r"names a torch hub checkout"),
        # The file names the hub checkout, the caller passes one too: still refused.
        ({"encoder": "dino", "dino_repo": "HUB"}, "HUB", r"names a torch hub checkout"),
        # The caller's own checkout, but an entry point the file chose: refused.
        ({"encoder": "dino", "dino_model": "evil"}, "HUB", r"dino_model = 'evil'"),
        ({"encoder": "dino", "dino_model": ["x"]}, "HUB", r"unknown torch hub entry"),
    ],
)
def test_weights_config_cannot_run_code(tiny, tmp_path, backbone, dino_repo, match):
    """A weights JSON naming a hub checkout (whose hubconf.py would run on import) or an
    entry point of its choice is refused with a clear error, and nothing is imported."""
    hub = tmp_path / "hub"
    hub.mkdir()
    marker = tmp_path / "pwned"
    # Importing this checkout leaves a marker: proof that code from it ran.
    (hub / "hubconf.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n" + _FAKE_DINO + "evil = dinov2_vits14\n"
    )
    path = tmp_path / "w.safetensors"
    save_weights(tiny.state_dict(), path, {"config": tiny.cfg.to_dict()})
    meta = json.loads(path.with_suffix(".json").read_text())
    for key, value in backbone.items():
        meta["config"]["backbone"][key] = str(hub) if value == "HUB" else value
    path.with_suffix(".json").write_text(json.dumps(meta))
    repo = hub if dino_repo == "HUB" else None
    with pytest.raises(UnsafeConfigError, match=match) as err:
        load_model(path, device="cpu", dino_repo=repo)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert not marker.exists()
    # Control: the marker does appear when the person running the code chooses the checkout.
    from engine.models.gd_object import GDObjectModel

    GDObjectModel(_dino_tiny(str(hub)))
    assert marker.exists()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.__setitem__("config", [1]), "must be a JSON object"),
        (lambda m: m["config"].__setitem__("backbone", 3), "malformed object model config"),
        (lambda m: m["config"]["backbone"].__setitem__("heads2", 3), "malformed"),
        (lambda m: m["config"].pop("densify"), "malformed"),
    ],
)
def test_malformed_weights_config_is_one_clear_error(tiny, tmp_path, edit, match):
    path = tmp_path / "w.safetensors"
    save_weights(tiny.state_dict(), path, {"config": tiny.cfg.to_dict()})
    meta = json.loads(path.with_suffix(".json").read_text())
    edit(meta)
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        load_model(path, device="cpu")
    path.with_suffix(".json").write_text("[]")
    with pytest.raises(ValueError, match="not a weights config"):
        load_model(path, device="cpu")


def test_oversized_weights_config_is_refused_unread(tiny, tmp_path, monkeypatch):
    """The JSON beside weights is size-checked before it is read into memory."""
    import engine.weights

    path = tmp_path / "w.safetensors"
    save_weights(tiny.state_dict(), path, {"config": tiny.cfg.to_dict()})
    monkeypatch.setattr(engine.weights, "MAX_METADATA_BYTES", 100)
    with pytest.raises(ValueError, match="more than a weights config may have"):
        load_model(path, device="cpu")
