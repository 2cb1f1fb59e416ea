"""Image quality metrics in pure PyTorch: PSNR (full image and object pixels), SSIM,
MS-SSIM (also a training loss) and LPIPS when it is installed with its weights.

Every function takes images shaped (..., H, W, 3), float RGB in [0, 1] (data range 1,
DESIGN §4), and returns one value per image, shaped (...). Everything except
`lpips_or_none` is differentiable.

SSIM follows Wang et al. (2004): an 11×11 Gaussian window with σ = 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) statistics, the mean taken over the pixels where the
whole window fits ("valid" filtering) and over the three channels. That is exactly
`skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=-1)` (checked in the tests).

MS-SSIM follows Wang et al. (2003) as implemented by pytorch_msssim:
    MS-SSIM = ∏_{j<M-1} cs_j^{w_j} · ssim_{M-1}^{w_{M-1}}   (per channel, then averaged)
with 2×2 average-pool downsampling between scales and the standard five weights.
Small images: five scales need the coarsest scale (H / 16) to hold the 11-px window,
i.e. images of at least 176 px. For smaller ones `levels=None` uses as many scales as
fit (256² → 5, 128² → 4, 64² → 3, 32² → 2, below 22 px → 1) and renormalises the first
(finest) weights to sum to one, so the kept scales keep their relative importance. Below
11 px the window itself shrinks to the largest odd size that fits (σ stays 1.5), so tiny
images still give finite values and gradients. Differences from pytorch_msssim: odd
sizes drop their last row/column when halved (it pads instead), and cs/ssim are clamped
at 1e-6 rather than 0 (`nonnegative_ssim`) so that the powers keep finite gradients.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
C1, C2 = K1**2, K2**2  # data range 1
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Where the PSNR of a perfect match would be infinite, the MSE is floored here (100 dB):
# a finite value keeps means over a test set and gradients meaningful.
MSE_FLOOR = 1e-10
# cs and ssim are clamped at this (not 0) before the fractional powers of MS-SSIM:
# x**w has an infinite derivative at 0 for w < 1, which turns into NaN gradients.
CS_FLOOR = 1e-6


def _check_images(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs "
                         f"{tuple(target.shape)}")  # fmt: skip
    if pred.ndim < 3 or pred.shape[-1] != 3:
        raise ValueError(f"images must have shape (..., H, W, 3), got {tuple(pred.shape)}")


# ---------------------------------------------------------------------------- PSNR
def mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error per image.

    Args:
        pred, target: (..., H, W, 3).
        mask: optional (..., H, W) bool or float weights; the mean runs over the masked
            pixels only (weighted by the mask, all three channels).
    Returns:
        (...) MSE; NaN for an image whose mask is empty (no pixels to average).
    """
    _check_images(pred, target)
    err = (pred - target).square()
    if mask is None:
        return err.mean(dim=(-3, -2, -1))
    if mask.shape != pred.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(pred.shape[:-1])}, "
                         f"got {tuple(mask.shape)}")  # fmt: skip
    weights = mask.to(err.dtype)
    total = (err.sum(dim=-1) * weights).sum(dim=(-2, -1))
    count = weights.sum(dim=(-2, -1)) * 3.0
    return total / count  # 0/0 -> NaN on purpose: an empty mask has no PSNR


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB, for data range 1.

    Args:
        pred, target: (..., H, W, 3) in [0, 1].
        mask: optional (..., H, W); PSNR over the masked pixels only ("object-pixel
            PSNR" when the mask covers the object).
    Returns:
        (...) PSNR = 10·log10(1 / max(MSE, 1e-10)), so at most 100 dB; NaN for an
        empty mask.
    """
    return -10.0 * torch.log10(mse(pred, target, mask).clamp_min(MSE_FLOOR))


# ---------------------------------------------------------------------------- SSIM
def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(size,) normalised Gaussian taps centred on the middle tap (size odd)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _window_size(height: int, width: int) -> int:
    """The 11-px window, or the largest odd size that fits a smaller image."""
    side = min(height, width, WINDOW_SIZE)
    return side if side % 2 == 1 else side - 1


# Up to this image side the separable filter runs as two matrix products with banded
# matrices, faster than grouped conv2d on a CPU for MS-SSIM forward+backward, which sits
# in the training loss (best of 6 on 2 loaded cores: 24 vs 108 ms at 8×64², 155 vs 221 ms
# at 8×128², 273 vs 309 ms at 4×256²). The matrix product's cost grows with the side, so
# larger images use conv2d.
MATMUL_FILTER_MAX_SIDE = 512


def _band(n: int, taps: Tensor) -> Tensor:
    """(n, n - k + 1) matrix M with M[i + j, i] = taps[j]: `x @ M` is valid filtering
    along the last axis."""
    k = taps.numel()
    out = n - k + 1
    rows = (
        torch.arange(out, device=taps.device)[None, :]
        + torch.arange(k, device=taps.device)[:, None]
    )
    cols = torch.arange(out, device=taps.device).expand(k, out)
    band = taps.new_zeros(n, out)
    band[rows, cols] = taps[:, None].expand(k, out)
    return band


def _filter(x: Tensor, taps: Tensor) -> Tensor:
    """Separable valid filtering of (B, C, H, W) with the (k,) taps along H and W."""
    c, k = x.shape[1], taps.numel()
    h, w = x.shape[-2:]
    if max(h, w) <= MATMUL_FILTER_MAX_SIDE:
        return _band(h, taps).transpose(0, 1) @ (x @ _band(w, taps))
    x = F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _ssim_cs(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel SSIM and contrast-structure term cs, averaged over valid pixels.

    Args:
        x, y: (B, C, H, W).
    Returns:
        ssim (B, C) = mean(l · cs) and cs (B, C) = mean(cs) with
        l = (2 μx μy + C1) / (μx² + μy² + C1), cs = (2 σxy + C2) / (σx² + σy² + C2).
    """
    taps = _gaussian_1d(_window_size(*x.shape[-2:]), WINDOW_SIGMA, x.dtype, x.device)
    # (Co)variances are shift-invariant: take them of the images minus their global means,
    # so E[x²] - E[x]² cancels far less in float32 (flat regions otherwise lose ~1e-5).
    mean_x = x.mean(dim=(-2, -1), keepdim=True)
    mean_y = y.mean(dim=(-2, -1), keepdim=True)
    xc, yc = x - mean_x, y - mean_y
    # One filtering pass over the five moments, stacked along the batch.
    b = x.shape[0]
    moments = _filter(torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], dim=0), taps)
    mu_xc, mu_yc, xx, yy, xy = moments.split(b, dim=0)
    var_x = xx - mu_xc * mu_xc
    var_y = yy - mu_yc * mu_yc
    cov = xy - mu_xc * mu_yc
    mu_x, mu_y = mu_xc + mean_x, mu_yc + mean_y  # the filter's taps sum to one
    cs_map = (2 * cov + C2) / (var_x + var_y + C2)
    lum_map = (2 * mu_x * mu_y + C1) / (mu_x * mu_x + mu_y * mu_y + C1)
    return (lum_map * cs_map).mean(dim=(-2, -1)), cs_map.mean(dim=(-2, -1))


def _to_bchw(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
    """(..., H, W, 3) pair -> (B, 3, H, W) pair and the leading shape (...)."""
    _check_images(pred, target)
    lead = pred.shape[:-3]
    h, w = pred.shape[-3:-1]
    x = pred.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    y = target.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    return x, y, lead


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Structural similarity per image (Wang et al. 2004; see the module docstring).

    Args:
        pred, target: (..., H, W, 3) in [0, 1]. Images under 11 px use a smaller window
            (skimage refuses them).
    Returns:
        (...) SSIM in [-1, 1], averaged over valid pixels and channels.
    """
    x, y, lead = _to_bchw(pred, target)
    value, _ = _ssim_cs(x, y)
    return value.mean(dim=1).reshape(lead)


# ---------------------------------------------------------------------------- MS-SSIM
def ms_ssim_levels(height: int, width: int) -> int:
    """How many scales (1..5) fit: the coarsest one must still hold the 11-px window."""
    side = min(height, width)
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and side // 2**levels >= WINDOW_SIZE:
        levels += 1
    return levels


def ms_ssim_weights(levels: int) -> tuple[float, ...]:
    """The first `levels` standard weights (finest first), renormalised to sum to one.

    All five are returned as published (they sum to 1.0001), as pytorch_msssim uses them.
    """
    if not 1 <= levels <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"levels must be in 1..{len(MS_SSIM_WEIGHTS)}, got {levels}")
    if levels == len(MS_SSIM_WEIGHTS):
        return MS_SSIM_WEIGHTS
    kept = MS_SSIM_WEIGHTS[:levels]
    total = sum(kept)
    return tuple(w / total for w in kept)


def ms_ssim(pred: Tensor, target: Tensor, levels: int | None = None) -> Tensor:
    """Multi-scale SSIM per image, differentiable (the object loss uses 1 - ms_ssim).

    Args:
        pred, target: (..., H, W, 3) in [0, 1].
        levels: number of scales; None picks as many as fit (`ms_ssim_levels`). An explicit
            value may exceed that as long as the coarsest scale keeps at least 1 px; the
            window then shrinks there (see the module docstring).
    Returns:
        (...) MS-SSIM in [0, 1]: per channel ∏_j cs_j^{w_j} over the finer scales times
        ssim^{w} at the coarsest, each term clamped below at 1e-6 (negative values would
        give NaN powers), then averaged over channels. With levels=1 this is SSIM with
        each channel's value clamped at 1e-6, i.e. `ssim` whenever every channel is
        positive.
    """
    x, y, lead = _to_bchw(pred, target)
    h, w = x.shape[-2:]
    if levels is None:
        levels = ms_ssim_levels(h, w)
    weights = ms_ssim_weights(levels)
    if min(h, w) // 2 ** (levels - 1) < 1:
        raise ValueError(f"{levels} scales do not fit a {w}x{h} image")
    log_terms = []
    for level, weight in enumerate(weights):
        value, cs = _ssim_cs(x, y)
        term = value if level == levels - 1 else cs
        # Sum of w·log(term) == log of the product of powers, without pow's 0**w issue.
        log_terms.append(weight * torch.log(term.clamp_min(CS_FLOOR)))
        if level < levels - 1:
            # 2×2 box average; an odd last row/column is dropped.
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    result = torch.exp(torch.stack(log_terms).sum(dim=0))  # (B, C)
    return result.mean(dim=1).reshape(lead)


# ---------------------------------------------------------------------------- LPIPS
# torchvision classes and lpips weight files for each LPIPS backbone.
_LPIPS_NETS = {
    "alex": "AlexNet_Weights",
    "vgg": "VGG16_Weights",
    "squeeze": "SqueezeNet1_1_Weights",
}


def _lpips_weights_present(net: str) -> bool:
    """True when both weight files LPIPS needs are on disk, so building it downloads nothing.

    lpips.LPIPS(pretrained=True) reads its linear layers from the package folder
    (lpips/weights/v0.1/<net>.pth) and the backbone through torchvision, which downloads
    into torch.hub's checkpoint folder when the file is not there yet.
    """
    for module in ("lpips", "torchvision"):
        if importlib.util.find_spec(module) is None:
            return False
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return False
    if not (Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth").is_file():
        return False
    try:
        import torchvision.models as tvm

        url = getattr(tvm, _LPIPS_NETS[net]).IMAGENET1K_V1.url
    except (ImportError, AttributeError):
        return False
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return checkpoint.is_file()


@functools.lru_cache(maxsize=4)
def _lpips_model(net: str, device: str):
    import lpips

    model = lpips.LPIPS(net=net, pretrained=True, verbose=False).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def lpips_available(net: str = "alex") -> bool:
    """Whether `lpips_or_none` can score with this backbone without any download."""
    if net not in _LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {tuple(_LPIPS_NETS)}, got {net!r}")
    return _lpips_weights_present(net)


def lpips_or_none(pred: Tensor, target: Tensor, net: str = "alex") -> Tensor | None:
    """LPIPS per image when the `lpips` package and all its weights are already local.

    Never downloads: returns None when lpips, torchvision or a weight file is missing.
    Not meant for gradients (the network's parameters are frozen; no_grad is not forced).

    Args:
        pred, target: (..., H, W, 3) in [0, 1].
        net: LPIPS backbone, "alex" (the usual one for reporting), "vgg" or "squeeze".
    Returns:
        (...) LPIPS distances (lower is better), or None.
    """
    if not lpips_available(net):
        return None
    x, y, lead = _to_bchw(pred, target)
    model = _lpips_model(net, str(x.device))
    # LPIPS expects [-1, 1] inputs.
    dist = model(x.float() * 2 - 1, y.float() * 2 - 1)  # (B, 1, 1, 1)
    return dist.reshape(lead).to(pred.dtype)


__all__ = [
    "MS_SSIM_WEIGHTS",
    "lpips_available",
    "lpips_or_none",
    "ms_ssim",
    "ms_ssim_levels",
    "ms_ssim_weights",
    "mse",
    "psnr",
    "ssim",
]
