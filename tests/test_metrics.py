"""engine.metrics: PSNR (masked), SSIM against scikit-image, SSIM and MS-SSIM against
pytorch-msssim at 256² and MS-SSIM against an independent NumPy/SciPy reference where
pytorch-msssim cannot go (odd and small sizes), gradients (gradcheck, constant and tiny
images), LPIPS detection."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from engine import metrics
from engine.metrics import (
    MS_SSIM_WEIGHTS,
    lpips_available,
    lpips_or_none,
    ms_ssim,
    ms_ssim_levels,
    ms_ssim_weights,
    mse,
    psnr,
    ssim,
)


def pair(shape, noise=0.1, seed=0, dtype=torch.float64):
    """A random image batch and a noisy copy, both in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*shape, generator=g, dtype=dtype)
    b = (a + noise * torch.randn(*shape, generator=g, dtype=dtype)).clamp(0, 1)
    return a, b


def skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return structural_similarity(
        a.double().numpy(), b.double().numpy(), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1, channel_axis=-1,
    )  # fmt: skip


# ---------------------------------------------------------------------------- PSNR
def test_psnr_known_value_and_shape():
    target = torch.full((2, 3, 8, 9, 3), 0.5)
    pred = target + 0.1  # MSE 0.01 -> 20 dB
    out = psnr(pred, target)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, torch.full((2, 3), 20.0), atol=1e-4, rtol=0)


def test_psnr_identical_is_capped_at_100_db():
    x = torch.rand(4, 5, 3)
    assert psnr(x, x).item() == pytest.approx(100.0)


def test_psnr_mask_counts_only_masked_pixels():
    target = torch.zeros(6, 6, 3)
    pred = target.clone()
    pred[:3] = 0.1  # error only in the top half
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[:3] = True
    assert psnr(pred, target, mask).item() == pytest.approx(20.0, abs=1e-4)
    assert psnr(pred, target, ~mask).item() == pytest.approx(100.0)
    # Full image: half the pixels wrong -> MSE 0.005.
    assert psnr(pred, target).item() == pytest.approx(-10 * math.log10(0.005), abs=1e-4)
    # Float weights act like the bool mask when they are 0/1.
    assert psnr(pred, target, mask.float()).item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_empty_mask_is_nan():
    x = torch.rand(2, 4, 4, 3)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[1, 0, 0] = True
    out = psnr(x, x * 0.5, mask)
    assert math.isnan(out[0].item()) and math.isfinite(out[1].item())


def test_psnr_is_differentiable():
    pred = torch.rand(3, 5, 3, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 5, 3, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.3
    assert torch.autograd.gradcheck(lambda p: psnr(p, target, mask), (pred,))


@pytest.mark.parametrize(
    "args",
    [
        (torch.zeros(4, 4, 3), torch.zeros(4, 5, 3)),
        (torch.zeros(4, 4, 4), torch.zeros(4, 4, 4)),
        (torch.zeros(4, 3), torch.zeros(4, 3)),
    ],
)
def test_shape_errors(args):
    for fn in (psnr, ssim, ms_ssim):
        with pytest.raises(ValueError):
            fn(*args)


def test_mask_shape_error():
    with pytest.raises(ValueError, match="mask"):
        mse(torch.zeros(4, 4, 3), torch.zeros(4, 4, 3), torch.ones(4, 3))


# ---------------------------------------------------------------------------- SSIM
@pytest.mark.parametrize("shape", [(11, 11, 3), (32, 48, 3), (64, 64, 3), (12, 530, 3)])
@pytest.mark.parametrize("noise", [0.02, 0.3])
def test_ssim_matches_skimage(shape, noise):
    a, b = pair(shape, noise, seed=shape[1])
    assert ssim(a, b).item() == pytest.approx(skimage_ssim(a, b), abs=1e-6)
    # float32 too, at the tolerance the issue asks for.
    assert ssim(a.float(), b.float()).item() == pytest.approx(skimage_ssim(a, b), abs=1e-4)


def test_ssim_filter_paths_agree(monkeypatch):
    """Banded matrix products (small images) and conv2d (large ones) filter alike."""
    a, b = pair((2, 40, 33, 3), 0.2, seed=9)
    fast = (ssim(a, b), ms_ssim(a, b))
    monkeypatch.setattr(metrics, "MATMUL_FILTER_MAX_SIDE", 0)
    torch.testing.assert_close(ssim(a, b), fast[0])
    torch.testing.assert_close(ms_ssim(a, b), fast[1])


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(11, 30), w=st.integers(11, 30), noise=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16), offset=st.floats(-0.3, 0.3),
)  # fmt: skip
def test_ssim_matches_skimage_property(h, w, noise, seed, offset):
    a, b = pair((h, w, 3), noise, seed)
    b = (b + offset).clamp(0, 1)  # shifts the luminance term too
    assert ssim(a, b).item() == pytest.approx(skimage_ssim(a, b), abs=1e-6)


def test_ssim_batch_and_identity():
    a, b = pair((2, 3, 20, 24, 3))
    out = ssim(a, b)
    assert out.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert out[i, j].item() == pytest.approx(skimage_ssim(a[i, j], b[i, j]), abs=1e-6)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, 3, dtype=a.dtype))


def test_ssim_constant_images_are_finite():
    a = torch.full((16, 16, 3), 0.2)
    b = torch.full((16, 16, 3), 0.7)
    assert math.isfinite(ssim(a, b).item())
    assert ssim(a, b).item() == pytest.approx(skimage_ssim(a, b), abs=1e-6)
    # Flat float32 images with a little noise: the centred moments keep float32 close.
    c, d = pair((64, 64, 3), 0.01, dtype=torch.float32)
    c, d = c * 0.01 + 0.6, d * 0.01 + 0.6
    assert ssim(c, d).item() == pytest.approx(skimage_ssim(c, d), abs=1e-5)


# ---------------------------------------------------------------------------- MS-SSIM
def reference_ms_ssim(a: np.ndarray, b: np.ndarray, levels: int) -> float:
    """Independent NumPy/SciPy MS-SSIM of (H, W, 3) images, same definition as the module:
    SciPy's Gaussian filter (radius 5) with the border cropped, 2×2 means between scales."""
    weights = np.asarray(MS_SSIM_WEIGHTS[:levels])
    if levels < 5:
        weights = weights / weights.sum()
    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        value = 1.0
        for j in range(levels):
            f = lambda z: gaussian_filter(z, 1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]  # noqa: E731
            mx, my = f(x), f(y)
            vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
            cs = (2 * cxy + c2) / (vx + vy + c2)
            lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            term = (lum * cs).mean() if j == levels - 1 else cs.mean()
            value *= max(term, 1e-6) ** weights[j]
            h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
            x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
            y = y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        per_channel.append(value)
    return float(np.mean(per_channel))


FITTING_LEVELS = [(256, 5), (176, 5), (175, 4), (128, 4), (64, 3), (32, 2), (22, 2), (21, 1),
                  (11, 1), (5, 1)]  # fmt: skip


@pytest.mark.parametrize(("size", "levels"), FITTING_LEVELS)
def test_ms_ssim_levels_that_fit(size, levels):
    assert ms_ssim_levels(size, size) == levels
    assert ms_ssim_levels(size, 1000) == levels  # the shorter side decides


def test_ms_ssim_weights_renormalised():
    assert ms_ssim_weights(5) == MS_SSIM_WEIGHTS  # as published (sum 1.0001)
    for n in range(1, 6):
        w = ms_ssim_weights(n)
        assert len(w) == n and sum(w) == pytest.approx(1.0, abs=2e-4)
        # Ratios of the standard weights are kept.
        assert w[0] / w[-1] == pytest.approx(MS_SSIM_WEIGHTS[0] / MS_SSIM_WEIGHTS[n - 1])
    with pytest.raises(ValueError):
        ms_ssim_weights(6)
    with pytest.raises(ValueError):
        ms_ssim_weights(0)


@pytest.mark.parametrize(("h", "w"), [(181, 177), (128, 128), (64, 70), (40, 33)])
def test_ms_ssim_matches_reference(h, w):
    a, b = pair((h, w, 3), 0.15, seed=h)
    levels = ms_ssim_levels(h, w)
    ref = reference_ms_ssim(a.numpy(), b.numpy(), levels)
    assert ms_ssim(a, b).item() == pytest.approx(ref, abs=1e-9)


def test_ssim_and_ms_ssim_match_pytorch_msssim_at_256():
    """The published implementation (pytorch-msssim, the test extra) at 256²: 5 scales,
    11-px window, sigma 1.5, valid filtering, the published weights. The NumPy reference
    above covers what pytorch-msssim cannot take: odd sides (it pads before pooling; we
    drop the last row/column) and images under 161 px (fewer scales)."""
    pm = pytest.importorskip("pytorch_msssim")
    # pytorch-msssim builds its window and weights in float32, so even in float64 the two
    # agree to ~1e-6 (MS-SSIM, whose powers amplify the taps' rounding) and ~1e-7 (SSIM).
    for dtype in (torch.float64, torch.float32):
        for noise in (0.02, 0.15, 0.5):
            a, b = pair((2, 256, 256, 3), noise, seed=7, dtype=dtype)
            x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
            ref_ms = pm.ms_ssim(x, y, data_range=1.0, size_average=False)
            ref_ss = pm.ssim(x, y, data_range=1.0, size_average=False)
            torch.testing.assert_close(ms_ssim(a, b), ref_ms, rtol=0, atol=5e-6)
            torch.testing.assert_close(ssim(a, b), ref_ss, rtol=0, atol=5e-7)


def test_ms_ssim_levels_1_is_ssim():
    a, b = pair((2, 30, 30, 3), 0.1)
    torch.testing.assert_close(ms_ssim(a, b, levels=1), ssim(a, b))


def test_ms_ssim_identity_range_and_monotone():
    a, _ = pair((64, 64, 3))
    assert ms_ssim(a, a).item() == pytest.approx(1.0)
    values = [ms_ssim(a, pair((64, 64, 3), n, seed=0)[1]).item() for n in (0.05, 0.2, 0.5)]
    assert 1 > values[0] > values[1] > values[2] >= 0


def test_ms_ssim_gradcheck_tiny_double():
    a, b = pair((1, 24, 26, 3), 0.2, seed=3)  # 2 scales, 11-px window
    a.requires_grad_(True)
    # fast_mode checks random directional derivatives: the full Jacobian would take
    # ~1900 forward passes.
    assert torch.autograd.gradcheck(lambda x: ms_ssim(x, b), (a,), fast_mode=True)
    c, d = pair((7, 6, 3), 0.2, seed=4)  # 1 scale, window shrunk to 5 px
    c.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ms_ssim(x, d), (c,))


@pytest.mark.parametrize("size", [1, 2, 3, 8, 11, 16, 64])
def test_ms_ssim_constant_and_tiny_images_have_finite_gradients(size):
    pred = torch.full((2, size, size, 3), 0.3, requires_grad=True)
    target = torch.full((2, size, size, 3), 0.8)
    value = ms_ssim(pred, target)
    (1 - value).sum().backward()
    assert torch.isfinite(value).all()
    assert torch.isfinite(pred.grad).all()
    noisy, target2 = pair((2, size, size, 3), 0.3, seed=size, dtype=torch.float32)
    noisy.requires_grad_(True)
    (1 - ms_ssim(noisy, target2)).sum().backward()
    assert torch.isfinite(noisy.grad).all()


def test_ms_ssim_anticorrelated_images_clamp_not_nan():
    a, _ = pair((64, 64, 3))
    b = (1 - a).requires_grad_(True)  # negative cs at every scale
    value = ms_ssim(b, a)
    value.backward()
    assert 0 <= value.item() < 1e-3
    assert torch.isfinite(b.grad).all()


def test_ms_ssim_too_many_levels():
    x = torch.rand(8, 8, 3)
    with pytest.raises(ValueError):
        ms_ssim(x, x, levels=6)
    with pytest.raises(ValueError, match="scales"):
        ms_ssim(x, x, levels=5)  # 8 / 16 < 1 px
    assert ms_ssim(x, x, levels=4).item() == pytest.approx(1.0)  # 1 px at the last scale


# ---------------------------------------------------------------------------- LPIPS
def test_lpips_none_without_package_or_weights():
    a, b = pair((32, 32, 3), dtype=torch.float32)
    if lpips_available():
        out = lpips_or_none(a, b)
        assert out is not None and out.shape == () and out.item() > 0
        assert lpips_or_none(a, a).item() == pytest.approx(0.0, abs=1e-5)
    else:
        assert lpips_or_none(a, b) is None
    with pytest.raises(ValueError):
        lpips_available("resnet")


def test_lpips_detection_needs_both_weight_files(tmp_path, monkeypatch):
    """With lpips and torchvision faked, LPIPS counts as available only when the package's
    linear weights AND torch.hub's backbone checkpoint are on disk (no download ever)."""
    package = tmp_path / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    url = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    models = types.ModuleType("torchvision.models")
    models.AlexNet_Weights = types.SimpleNamespace(IMAGENET1K_V1=types.SimpleNamespace(url=url))
    tv = types.ModuleType("torchvision")
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "lpips":
            origin = str(package / "__init__.py")
            return importlib.machinery.ModuleSpec("lpips", None, origin=origin)
        if name == "torchvision":
            return importlib.machinery.ModuleSpec("torchvision", None)
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert not metrics._lpips_weights_present("alex")
    (package / "weights" / "v0.1" / "alex.pth").write_bytes(b"")
    assert not metrics._lpips_weights_present("alex")  # backbone would be downloaded
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    assert metrics._lpips_weights_present("alex")
    assert not metrics._lpips_weights_present("vgg")
