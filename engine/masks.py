"""Foreground masks for posed views: exact alpha, mask files, or estimated from the views.

The object model was trained on props composited on white with exact alpha; a photo with a
background reconstructs as grey fog. This module is the one place that decides which pixels
of a view are the prop:

- ``alpha``: the images' own alpha channel (renders on a transparent film).
- ``files``: a mask image per view (`mask_path` in transforms.json, a `masks/` folder
  beside COLMAP images); white (or opaque alpha) is the prop.
- ``estimated``: no usable alpha and no files. The prop is where the cameras' optical axes
  meet (least squares) and it is kept inside every frame, so the largest sphere about that
  point that every view holds in frame bounds it. That sphere, projected into each view,
  seeds a GrabCut colour segmentation (OpenCV, no download, wheels for every platform):
  outside it is background, inside probably prop. Each view's mask is then refined by the
  others, twice (`MaskConfig.rounds`): a pixel stays prop only if its ray meets the visual
  hull carved from the *other* views' masks (a coarse voxel grid), and GrabCut runs again
  seeded by that hull, with the pixels the surroundings' colours explain better seeded as
  background (what is seen through holes in the prop). Props stand on the ground: when a
  horizontal plane under the subject makes the views repeat each other's background
  (`find_ground`: ground and the prop's shadow look the same from every view), the hulls
  are carved down to it only and the pixels that repeat it start those rounds as probable
  background, so a dark shadow under the prop that the hull cannot carve away is not kept.
  Last, a small learned refiner (`engine.mask_refiner`, shipped weights trained on our own
  generated photos) corrects each mask near its outline from the photo, the mask and how
  clearly each pixel stands above that ground (`standing_cue`); it may add only pixels
  that stand above the ground (`MaskConfig.refine_standing`).
- ``none``: use the images as they are.

Implausible masks stop the run with `MaskError` instead of reconstructing fog: an empty
mask, one covering (nearly) the whole frame, one running along the frame border (the prop
is kept in frame), or a view whose mask disagrees with the hull the views carve together
(low IoU: the cameras do not share one subject). Since every view carves that hull, one
view that lost part of the prop makes the others read as inconsistent too; the error names
the view without which the others agree (`odd_view_out`) and whether its mask lost part of
their shape or reaches outside it. Masks that are plausible but probably
lost part of the prop (what stands above the ground lies outside them: `lost_parts`) are
used, with a warning in `Masks.warnings` and its summary, which the CLI and the add-on
print, so the artist checks the mask preview or gives mask files.

`mode="auto"` picks alpha when every view has a usable alpha channel, else files when
given, else the estimate.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.cameras import Cameras

MASK_MODES = ("auto", "alpha", "files", "none")
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class MaskError(ValueError):
    """The foreground masks are implausible (empty, whole frame, inconsistent across views),
    or cannot be made (no alpha, no files); the message says which view and why."""


@dataclass
class MaskConfig:
    """Settings of the mask estimate and of the plausibility checks."""

    work_side: int = 256
    """Longer side the segmentation runs at (masks are resized back to the views)."""
    grid: int = 48
    """Voxels a side of the carving grid over the subject's sphere."""
    iterations: int = 5
    """GrabCut iterations per round."""
    min_fraction: float = 0.002
    """A mask covering less of its frame than this is empty."""
    max_fraction: float = 0.85
    """An estimated mask covering more of its frame than this is background, not a prop."""
    whole_frame: float = 0.98
    """An alpha channel or mask file covering more of its frame than this is no mask."""
    max_border: float = 0.3
    """Largest fraction of the frame's border pixels an estimated mask may cover."""
    min_consistency: float = 0.5
    """Smallest IoU between a view's mask and the re-projected hull of all the masks."""
    rounds: int = 3
    """GrabCut rounds: the first seeded by the subject's sphere, the others by the hull
    the other views' masks carve."""
    reseed_background: bool = True
    """Before each later round, seed the prop-labelled pixels whose colour the
    surroundings explain better as background (holes through the prop)."""
    background_margin: float = 0.0
    """Log-likelihood margin for that test."""
    colour_space: str = "rgb"
    """What GrabCut's colour models see: "rgb" or "lab" (CIELAB). Measured on 21 photo props
    (bench/results/photos.md): RGB keeps more of the props it accepts (mask IoU 0.945 vs
    0.915) and refuses the one CIELAB cut wrong in every view alike."""
    luma_weight: float = 1.0
    """Weight of lightness against chroma (CIELAB) in the colour models: below 1, a
    shadow on the ground (darker, same hue) looks more like the ground around it."""
    ground_plane: bool = True
    """Look for a horizontal ground plane (world Z up) under the subject (`find_ground`)
    and use it: nothing of the prop is below it, so the sphere that seeds the first round
    and the hulls that seed the later ones are cut (a ray that meets the ground before
    them sees ground or shadow), and in the later rounds the pixels the other views repeat
    where that plane lands in them (`ground_errors`: the ground, and the prop's shadow on
    it, look the same from every view) start as probable background. On the photo bench's
    prop 162 (a box over its own dark shadow) view 0's mask IoU goes 0.78 -> 0.98."""
    ground_steps: int = 33
    """Heights tried, from the subject sphere's bottom to its centre, for the plane."""
    ground_side: int = 96
    """Longer side of the views the plane is searched at."""
    ground_gain: float = 0.75
    """The plane is used only when its best height's median error on the background is
    below this fraction of the median over all the heights tried (a plane explains the
    background better than any other height; no plane, no gain)."""
    ground_threshold: float = 1.0
    """A pixel repeats the ground when its `ground_errors` is below this multiple of the
    background's median error at the plane's height."""
    ground_tolerance: float = 0.05
    """How far below the plane found (a fraction of the subject's radius) the carving
    stops: the search's step is 1/32 of the radius."""
    lost_error: float = 5.0
    """A pixel stands above the ground when its `ground_errors` exceed this multiple of
    the background's median error at the plane: no other view repeats it as ground."""
    lost_fraction: float = 0.15
    """Warn (`Masks.warnings`) about a view when the pixels that stand above the ground
    inside the subject's disk but away from its mask (`lost_parts`) add up to more than
    this fraction of the mask's area: the estimate has probably lost part of the prop.
    Chosen on the 21 props of `bench/photos.py` as first rendered, where it warned about
    the four props whose masks lost a visible part (mask IoU 0.24-0.82 in the worst view)
    and none of the others; on those props re-rendered without the generator's stale
    textures it warns about two of them (181, 246), once falsely (312, IoU 0.97-0.99) and
    misses a table top one view loses (313, IoU 0.49). A mask that loses a part seen
    against ground that no other view frames (a lamp shade against the far bricks) cannot
    be told from this."""
    refine: bool = True
    """Correct the estimated masks with the learned refiner (`engine.mask_refiner`) at the
    segmentation's resolution, when its weights ship (or `refiner_weights` names them);
    without weights the masks stay as GrabCut and the hulls leave them."""
    refiner_weights: str | None = None
    """A refiner weights file to use instead of the shipped one."""
    refined_floor: float = 0.5
    """Refined coverage below this is background (0). The refiner leaves faint coverage
    (0.1-0.3) on ground it is unsure of, far out in its band; composited on white it is a
    grey haze around the prop. 0.5 is where the checks already count a pixel as background.
    Chosen on held-out data, the refiner's validation props (training split, index % 20
    == 0): on the 18 of 19 it accepts the photo gap goes 3.03 -> 2.93 / 2.91 dB at floors
    0.25 / 0.5, and their composite mask error falls steadily up to 0.5 (0.0153 -> 0.0128)."""
    refine_standing: float = 0.5
    """Where a ground plane is found, the refiner may add a pixel to a mask only if its
    `standing_cue` is at least this (or unknown): 0.5 is the error `lost_parts` counts as
    standing above the ground. Without it the refiner grows masks into shadows the colour
    of the prop (a synthetic box's blue face and its blue shadow: view IoU 1.0 -> 0.77);
    with it the photo bench's mean gap is 1.42 dB instead of 1.36 (`bench/results/photos.md`)."""


@dataclass
class Masks:
    """Foreground masks of V views and where they came from.

    Attributes:
        alphas: (V, H, W) float coverage in [0, 1].
        source: "alpha", "files", "estimated" or "none".
        fractions: per view, the fraction of the frame that is prop.
        consistency: per view, IoU of its mask with the re-projected hull carved from all
            the masks (empty when not computed).
        ground_height: world z of the ground plane the estimate found under the prop
            (`find_ground`), or None.
        warnings: what an artist should check before reconstructing (views whose mask
            probably lost part of the prop); the masks are still used.
        standing: (V, h, w) float32 `standing_cue` of the estimate at its working size
            (`MaskConfig.work_side`), NaN where unknown; None without a ground plane or an
            estimate.
    """

    alphas: Tensor
    source: str
    fractions: list[float] = field(default_factory=list)
    consistency: list[float] = field(default_factory=list)
    ground_height: float | None = None
    warnings: list[str] = field(default_factory=list)
    standing: np.ndarray | None = None

    def summary(self) -> str:
        """One line for logs and reports."""
        text = f"masks: {self.source}"
        if self.fractions:
            text += ", prop covers " + "/".join(f"{f:.0%}" for f in self.fractions)
        if self.consistency:
            text += f", cross-view IoU >= {min(self.consistency):.2f}"
        if self.ground_height is not None:
            text += f", ground plane at z = {self.ground_height:.3f}"
        for warning in self.warnings:
            text += f"; warning: {warning}"
        return text


def _cv2():
    try:
        import cv2
    except ImportError as err:  # the `masks` extra
        raise MaskError(
            "estimating foreground masks needs OpenCV: pip install opencv-python-headless "
            "(or give views with alpha, or mask files)"
        ) from err
    return cv2


# ------------------------------------------------------------------------ inputs
def alpha_usable(alphas: Tensor | np.ndarray) -> bool:
    """True when the views (V, H, W) have an alpha channel: some pixel of some view is not
    fully opaque (images without a channel read as alpha 1 everywhere). A view that is
    opaque all over is then a prop filling its frame; one transparent all over is empty
    and refused by `check_masks`."""
    a = torch.as_tensor(np.asarray(alphas))
    return a.ndim == 3 and a.numel() > 0 and bool((a < 0.999).any())


def find_mask_file(image: str | os.PathLike, folder: str | os.PathLike) -> Path | None:
    """The mask of `image` in `folder`: same name, same stem with an image suffix, or COLMAP's
    `name.ext.png`; None when there is none."""
    image, folder = Path(image), Path(folder)
    candidates = [folder / image.name, folder / f"{image.name}.png"]
    candidates += [folder / f"{image.stem}{s}" for s in MASK_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def read_mask(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 coverage in [0, 1] of a mask image resized to `size` (width, height):
    its alpha channel when that varies, else its brightness."""
    from .images import read_rgba

    rgba = read_rgba(path, size)
    if float(rgba[..., 3].min()) < 0.99:
        return np.ascontiguousarray(rgba[..., 3])
    return np.ascontiguousarray(rgba[..., :3].mean(-1))


# ------------------------------------------------------------------------ geometry
def subject_sphere(cameras: Cameras) -> tuple[Tensor, float]:
    """The sphere every view keeps in frame about the point the optical axes meet.

    Returns:
        centre (3,) and radius: the least-squares nearest point to every optical axis, and
        the largest radius whose sphere about it fits inside every frame.
    Raises:
        MaskError: the cameras do not look at a common point (it is behind or outside a
            view).
    """
    from engine.models.normalization import framed_radius, look_at_point

    center = look_at_point(cameras)
    pix, depth = cameras.project(center[None].to(cameras.dtype))
    pix, depth = pix[:, 0], depth[:, 0]
    inside = (
        (depth > 0)
        & (pix[:, 0] > 0.1 * cameras.width)
        & (pix[:, 0] < 0.9 * cameras.width)
        & (pix[:, 1] > 0.1 * cameras.height)
        & (pix[:, 1] < 0.9 * cameras.height)
    )
    if not bool(inside.all()):
        bad = int(torch.nonzero(~inside).flatten()[0])
        raise MaskError(
            f"view {bad} does not look at the point the other cameras' axes meet: the cameras "
            "do not share one subject, so no prop can be found (give masks, or views of one prop)"
        )
    radius = float(framed_radius(cameras, center, fill=0.999).min())
    if not radius > 0:
        raise MaskError("the cameras frame no common region (no prop can be found)")
    return center, radius


def _sphere_disks(cameras: Cameras, center: Tensor, radius: float) -> np.ndarray:
    """(V, H, W) bool: pixels whose ray meets the sphere (its projected disk, approximated
    by a circle about the projected centre)."""
    pix, depth = cameras.project(center[None].to(cameras.dtype))
    h, w = cameras.height, cameras.width
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    disks = []
    for k in range(len(cameras)):
        d = float(depth[k, 0])
        f = float(min(cameras.fx[k], cameras.fy[k]))
        r_px = f * radius / max(np.sqrt(max(d * d - radius * radius, 1e-12)), 1e-9)
        u0, v0 = (float(x) for x in pix[k, 0])
        disks.append((uu - u0) ** 2 + (vv - v0) ** 2 <= r_px**2)
    return np.stack(disks)


def carve(
    masks: np.ndarray, cameras: Cameras, center: Tensor, radius: float, grid: int
) -> tuple[Tensor, Tensor]:
    """Voxels of a grid over the subject's cube that project inside every mask.

    Args:
        masks: (V, H, W) bool.
    Returns:
        points (N, 3) centres of the voxels inside the subject's sphere, kept (N,) bool.
    """
    axis = torch.linspace(-radius, radius, grid + 1, dtype=torch.float32)
    axis = 0.5 * (axis[1:] + axis[:-1])
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    # Only the subject's sphere: it is inside every frame, the cube's corners need not be.
    pts = pts[pts.norm(dim=-1) <= radius] + center.to(torch.float32)
    kept = torch.ones(len(pts), dtype=torch.bool)
    pix, depth = cameras.to(dtype=torch.float32).project(pts)
    h, w = masks.shape[1:]
    m = torch.from_numpy(np.ascontiguousarray(masks))
    for k in range(len(cameras)):
        u = pix[k, :, 0].floor().long()
        v = pix[k, :, 1].floor().long()
        inframe = (depth[k] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        hit = torch.zeros(len(pts), dtype=torch.bool)
        hit[inframe] = m[k][v[inframe], u[inframe]]
        kept &= hit | ~inframe  # outside a frame a view knows nothing
    return pts, kept


def reproject(
    points: Tensor, kept: Tensor, cameras: Cameras, voxel: float, only: int | None = None
) -> np.ndarray:
    """(V, H, W) bool silhouettes of the kept voxels (each drawn as a disk of its projected
    size); with `only`, the silhouette in that view alone, shape (1, H, W)."""
    cv2 = _cv2()
    views = range(len(cameras)) if only is None else [only]
    h, w = cameras.height, cameras.width
    out = []
    sel = points[kept]
    pix, depth = cameras.to(dtype=torch.float32).project(sel) if len(sel) else (None, None)
    for k in views:
        image = np.zeros((h, w), np.uint8)
        if sel.shape[0]:
            u = pix[k, :, 0].floor().long().numpy()
            v = pix[k, :, 1].floor().long().numpy()
            ok = (depth[k] > 0).numpy() & (u >= 0) & (u < w) & (v >= 0) & (v < h)
            image[v[ok], u[ok]] = 1
            d = float(depth[k][depth[k] > 0].median()) if bool((depth[k] > 0).any()) else 1.0
            size = int(np.ceil(float(cameras.fx[k]) * voxel / d)) | 1
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size + 2, size + 2))
            image = cv2.dilate(image, kernel)
        out.append(image.astype(bool))
    return np.stack(out)


def pixel_rays(cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """World ray origins and unit directions (V, H, W, 3) float64 through pixel centres."""
    cams = cameras.to(dtype=torch.float64)
    h, w = cams.height, cams.width
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5,
        torch.arange(w, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    x = (u[None] - cams.cx[:, None, None]) / cams.fx[:, None, None]
    y = (v[None] - cams.cy[:, None, None]) / cams.fy[:, None, None]
    c2w = cams.camera_to_world
    d = torch.stack([x, y, torch.ones_like(x)], -1) @ c2w[:, None, :3, :3].transpose(-1, -2)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:, None, None, :3, 3].expand_as(d)
    return o.numpy(), d.numpy()


def ground_errors(
    images: np.ndarray,
    cameras: Cameras,
    height: float,
    rays: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """How well the other views repeat each pixel if it shows the plane z = `height`.

    A pixel's ray meets the horizontal plane (or, above the horizon, the environment at
    infinity); that point is looked up in every other view that frames it (bilinear), and
    the colours compared (mean absolute difference over RGB, averaged over 3 x 3 pixels).
    Ground and the shadows cast on it look the same from every view; a prop above the
    plane hides a different point of it in each.

    Args:
        images: (V, H, W, 3) float32 RGB in [0, 1] (lightly blurred by the caller).
        cameras: V cameras of W x H.
        rays: `pixel_rays(cameras)` when already computed.
    Returns:
        errors (V, H, W) float32: the smallest difference over the other views (inf where
        no other view frames the point), and below (V, H, W) bool: rays that meet the plane.
    """
    cv2 = _cv2()
    v_count, h, w = images.shape[:3]
    o, d = rays if rays is not None else pixel_rays(cameras)
    dz = np.where(d[..., 2] < -1e-6, d[..., 2], -1e-6)
    t = (height - o[..., 2]) / dz
    below = (d[..., 2] < -1e-6) & (t > 0)
    points = np.where(below[..., None], o + t[..., None] * d, o + 1e4 * d)
    cams = cameras.to(dtype=torch.float64)
    errors = np.full((v_count, h, w), np.inf, np.float32)
    for k in range(v_count):
        pix, depth = cams.project(torch.from_numpy(points[k].reshape(-1, 3)))
        for j in range(v_count):
            if j == k:
                continue
            mu = pix[j, :, 0].reshape(h, w).numpy().astype(np.float32) - 0.5
            mv = pix[j, :, 1].reshape(h, w).numpy().astype(np.float32) - 0.5
            framed = (depth[j].reshape(h, w).numpy() > 0) & (mu >= 0) & (mu <= w - 1)
            framed &= (mv >= 0) & (mv <= h - 1)
            seen = cv2.remap(images[j], mu, mv, cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
            diff = cv2.blur(np.abs(seen - images[k]).mean(-1), (3, 3))
            errors[k] = np.where(framed, np.minimum(errors[k], diff), errors[k])
    return errors, below


def find_ground(
    images: np.ndarray, cameras: Cameras, center: Tensor, radius: float, cfg: MaskConfig
) -> tuple[float, float] | None:
    """The height of a horizontal ground plane under the subject, or None.

    Heights from the subject sphere's bottom to its centre are tried on views reduced to
    `cfg.ground_side`; each is scored by the median `ground_errors` of the rays that meet
    it outside every subject disk (background). Returns (height, that median) when the
    best height explains the background clearly better than the heights around it do
    (`cfg.ground_gain`), else None (no ground plane: a backdrop, a turntable, the sky).
    """
    cv2 = _cv2()
    h, w = images.shape[1:3]
    scale = min(1.0, cfg.ground_side / max(h, w))
    sw, sh = max(8, round(w * scale)), max(8, round(h * scale))
    cams = cameras.scaled(sw, sh) if (sw, sh) != (w, h) else cameras
    small = np.stack([cv2.resize(x, (sw, sh), interpolation=cv2.INTER_AREA) for x in images])
    disks = _sphere_disks(cams, center, radius)
    rays = pixel_rays(cams)
    c = float(center[2])
    scores = []
    for z in np.linspace(c - radius, c, cfg.ground_steps):
        errors, below = ground_errors(small, cams, float(z), rays)
        sel = below & ~disks & np.isfinite(errors)
        scores.append(float(np.median(errors[sel])) if sel.sum() > 50 else np.inf)
    scores_a = np.asarray(scores)
    if not np.isfinite(scores_a).any():
        return None
    best = int(np.argmin(scores_a))
    typical = float(np.median(scores_a[np.isfinite(scores_a)]))
    if not scores_a[best] < cfg.ground_gain * typical:
        return None
    return float(np.linspace(c - radius, c, cfg.ground_steps)[best]), float(scores_a[best])


# ------------------------------------------------------------------------ segmentation
def _features(rgb: np.ndarray, luma_weight: float) -> np.ndarray:
    """(H, W, 3) uint8 image GrabCut models: CIELAB with lightness scaled by
    `luma_weight` about mid-grey (1: plain Lab)."""
    cv2 = _cv2()
    lab = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] = 128.0 + (lab[..., 0] - 128.0) * luma_weight
    return np.ascontiguousarray(lab.clip(0, 255).astype(np.uint8))


def _gmm(samples: np.ndarray, components: int, rng: np.random.Generator):
    """An OpenCV EM Gaussian mixture fitted to (N, 3) samples (at most 4000 of them)."""
    cv2 = _cv2()
    if len(samples) > 4000:
        samples = samples[rng.choice(len(samples), 4000, replace=False)]
    em = cv2.ml.EM_create()
    em.setClustersNumber(components)
    em.setCovarianceMatrixType(cv2.ml.EM_COV_MAT_DIAGONAL)
    em.setTermCriteria((cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 50, 1e-3))
    em.trainEM(samples.astype(np.float32))
    return em


def _background_like(
    image: np.ndarray, inside: np.ndarray, outside: np.ndarray, margin: float
) -> np.ndarray:
    """(H, W) bool: pixels of `inside` whose colour the background (`outside`) explains
    better, by `margin` in log-likelihood, than `inside` itself does (5-component GMMs)."""
    if inside.sum() < 50 or outside.sum() < 50:
        return np.zeros(inside.shape, bool)
    rng = np.random.default_rng(0)
    pixels = image.reshape(-1, 3).astype(np.float32)
    fg = _gmm(pixels[inside.ravel()], 5, rng)
    bg = _gmm(pixels[outside.ravel()], 5, rng)
    query = pixels[inside.ravel()]
    log_fg = _log_likelihood(fg, query)
    log_bg = _log_likelihood(bg, query)
    out = np.zeros(inside.size, bool)
    out[np.flatnonzero(inside.ravel())] = log_bg > log_fg + margin
    return out.reshape(inside.shape)


def _log_likelihood(em, samples: np.ndarray) -> np.ndarray:
    """(N,) log-likelihood of samples under an OpenCV EM model (vectorised from its
    means, diagonal covariances and weights)."""
    means = em.getMeans()  # (K, 3)
    covs = np.stack([np.diag(c) for c in em.getCovs()])  # (K, 3)
    weights = em.getWeights().ravel()  # (K,)
    covs = np.maximum(covs, 1e-3)
    diff = samples[:, None, :].astype(np.float64) - means[None]
    log_n = -0.5 * ((diff**2) / covs[None]).sum(-1) - 0.5 * np.log(
        (2 * np.pi) ** 3 * covs.prod(-1)
    )[None]  # fmt: skip
    log_w = np.log(np.maximum(weights, 1e-12))[None]
    top = (log_n + log_w).max(-1, keepdims=True)
    return (top + np.log(np.exp(log_n + log_w - top).sum(-1, keepdims=True)))[:, 0]


def _grabcut(rgb: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
    """(H, W) bool foreground of GrabCut seeded with OpenCV labels (GC_BGD, GC_PR_FGD, ...)."""
    cv2 = _cv2()
    labels = labels.astype(np.uint8).copy()
    if not (labels == cv2.GC_BGD).any() and not (labels == cv2.GC_PR_BGD).any():
        return labels != cv2.GC_BGD
    if not ((labels == cv2.GC_PR_FGD) | (labels == cv2.GC_FGD)).any():
        return np.zeros(labels.shape, bool)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # Fixed seed: OpenCV's GMM initialisation (k-means) is random.
    cv2.setRNGSeed(0)
    cv2.grabCut(rgb, labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def _clean(mask: np.ndarray) -> np.ndarray:
    """Drop specks: keep connected components of at least 5% of the largest one's area."""
    cv2 = _cv2()
    count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= 0.05 * areas.max()) + 1
    return np.isin(comp, keep)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _border_fraction(mask: np.ndarray) -> float:
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    return float(border.mean())


@functools.cache
def _refiner(weights: str | None) -> Any:
    """The mask refiner (loaded once per process), or None when no weights ship."""
    from .mask_refiner import load_mask_refiner

    return load_mask_refiner(weights)


def estimate_masks(images: Tensor, cameras: Cameras, config: MaskConfig | None = None) -> Masks:
    """Foreground masks of views without alpha (see the module docstring).

    Args:
        images: (V, H, W, 3) float RGB in [0, 1].
        cameras: V cameras of W x H pixels.
    Returns:
        `Masks` with alphas (V, H, W) and per-view consistency.
    Raises:
        MaskError: no common subject, or implausible masks (see `check_masks`).
    """
    cv2 = _cv2()
    cfg = config or MaskConfig()
    v_count, h, w = images.shape[:3]
    if len(cameras) < 2:
        raise MaskError("estimating masks needs at least 2 views of the prop")
    scale = min(1.0, cfg.work_side / max(h, w))
    sw, sh = max(8, round(w * scale)), max(8, round(h * scale))
    cams = cameras.scaled(sw, sh) if (sw, sh) != (w, h) else cameras
    rgb8, small = [], []
    for k in range(v_count):
        image = (images[k].clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
        if (sw, sh) != (w, h):
            image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
        small.append(image)
        if cfg.colour_space == "rgb":
            rgb8.append(np.ascontiguousarray(image[..., ::-1]))  # OpenCV's BGR
        else:
            rgb8.append(_features(image, cfg.luma_weight))
    center, radius = subject_sphere(cams)
    disks = _sphere_disks(cams, center, radius)
    floor, ground_height = None, None
    ground = np.zeros((v_count, sh, sw), bool)
    if cfg.ground_plane:
        work = np.stack([cv2.GaussianBlur(x.astype(np.float32) / 255.0, (0, 0), 1.0)
                         for x in small])  # fmt: skip
        plane = find_ground(work, cams, center, radius, cfg)
        if plane is not None:
            ground_height = plane[0]
            floor = ground_height - cfg.ground_tolerance * radius
            # Round 1 too: a ray that meets the ground before the subject sphere's part
            # above it sees background.
            pts, kept = carve(np.ones((v_count, sh, sw), bool), cams, center, radius, cfg.grid)
            disks &= reproject(pts, kept & (pts[:, 2] > floor), cams, 2.0 * radius / cfg.grid)
            # Specks that happen to repeat (a texture that repeats, the part of the prop
            # that touches the plane) are opened away: ground and shadows come in areas.
            errors, _ = ground_errors(work, cams, ground_height)
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
            ground = np.stack([cv2.morphologyEx(
                (e < cfg.ground_threshold * plane[1]).astype(np.uint8), cv2.MORPH_OPEN, kernel
            ) > 0 for e in errors])  # fmt: skip
    # Round 1: outside the subject's sphere is background; inside, probably prop.
    first = []
    for k in range(v_count):
        labels = np.where(disks[k], cv2.GC_PR_FGD, cv2.GC_BGD)
        first.append(_clean(_grabcut(rgb8[k], labels, cfg.iterations)))
    first_masks = np.stack(first)
    voxel = 2.0 * radius / cfg.grid
    # Later rounds: each view re-seeded by the hull the *other* views carve: outside it
    # (dilated, for the coarse grid) is background, inside it the previous mask is probably
    # prop and the rest probably background. A hole one view finds (background between a
    # stool's legs) carves the hull the others are seeded with in the next round.
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    previous = first_masks
    for _ in range(max(1, cfg.rounds - 1)):
        final = []
        for k in range(v_count):
            others = [j for j in range(v_count) if j != k]
            dilated = [cv2.dilate(previous[j].astype(np.uint8), kernel) > 0 for j in others]
            pts, kept = carve(np.stack(dilated), cams[others], center, radius, cfg.grid)
            if floor is not None:
                kept &= pts[:, 2] > floor  # nothing of the prop is below the ground
            hull = reproject(pts, kept, cams, voxel, only=k)[0]
            hull = cv2.dilate(hull.astype(np.uint8), kernel) > 0
            labels = np.full((sh, sw), cv2.GC_BGD, np.uint8)
            labels[hull] = cv2.GC_PR_BGD
            labels[hull & previous[k]] = cv2.GC_PR_FGD
            # Probable, not sure, background: a flat part of the prop lying on the plane
            # repeats too, and sure labels would teach the background model its colours.
            labels[ground[k] & (labels == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
            if cfg.reseed_background:
                # Background seen through holes sits inside every view's hull and, labelled
                # prop, teaches GrabCut's prop model its colours; seed the pixels that the
                # surroundings explain better as background instead.
                labels[(labels == cv2.GC_PR_FGD) & _background_like(
                    rgb8[k], previous[k], ~hull, cfg.background_margin
                )] = cv2.GC_PR_BGD  # fmt: skip
            final.append(_clean(_grabcut(rgb8[k], labels, cfg.iterations) & hull))
        previous = np.stack(final)
    # A one-pixel feather: GrabCut's hard edge would leave a halo of background colour.
    soft = np.stack([cv2.GaussianBlur(m.astype(np.float32), (3, 3), 0.7) for m in previous])
    masks = previous
    standing = None
    if ground_height is not None:
        standing = standing_cue(errors, plane[1], cfg.lost_error)
    refiner = _refiner(cfg.refiner_weights) if cfg.refine else None
    if refiner is not None:
        from .mask_refiner import refine_masks

        photos = torch.from_numpy(np.stack(small).astype(np.float32) / 255.0)
        cue = None if standing is None else torch.from_numpy(standing)
        refined = refine_masks(refiner, photos, torch.from_numpy(soft), cue).numpy()
        # It restores what the estimate cut, but only what stands above the ground: where
        # the other views repeat a pixel as the plane (ground, a shadow the colour of the
        # prop's face) it keeps the estimate.
        if standing is not None:
            with np.errstate(invalid="ignore"):
                explained = standing < cfg.refine_standing
            soft = np.where(explained & (refined > soft), soft, refined)
        else:
            soft = refined
        soft = np.where(soft < cfg.refined_floor, 0.0, soft).astype(np.float32)
        # The checks, consistency and warnings judge the masks the views are cut with.
        masks = soft > 0.5
    check_masks(masks, "estimated", cfg, border=True)
    consistency = consistency_iou(masks, cams, center, radius, cfg.grid)
    odd = None
    if min(consistency) < cfg.min_consistency:
        odd = odd_view_out(masks, cams, center, radius, cfg.grid, cfg.min_consistency)
    check_consistency(consistency, cfg, odd)
    warnings = []
    if ground_height is not None:
        lost = lost_parts(masks, errors, plane[1], disks, cfg)
        warnings = [
            f"view {k}: {f:.0%} of its mask's area stands above the ground outside the mask, "
            "so it has probably lost part of the prop (check the masks; mask files fix it)"
            for k, f in enumerate(lost) if f > cfg.lost_fraction
        ]  # fmt: skip
    alphas = [cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) if (sw, sh) != (w, h)
              else m for m in soft]  # fmt: skip
    fractions = [float(m.mean()) for m in masks]
    alpha = torch.from_numpy(np.stack(alphas)).clamp(0, 1)
    return Masks(alpha, "estimated", fractions, consistency, ground_height, warnings, standing)


def standing_cue(errors: np.ndarray, background_error: float, lost_error: float) -> np.ndarray:
    """How clearly each pixel stands above the ground, for the mask refiner.

    Args:
        errors: (V, H, W) `ground_errors` at the plane found (inf: no other view frames it).
        background_error: the background's median error there (`find_ground`).
        lost_error: `MaskConfig.lost_error`.
    Returns:
        (V, H, W) float32: x / (x + lost_error) with x the error over the background's:
        near 0 where the other views repeat the pixel as ground or shadow, 1/2 at the
        error `lost_parts` counts as standing, towards 1 above; NaN where unknown.
    """
    x = errors / max(background_error, 1e-12)
    with np.errstate(invalid="ignore"):
        cue = x / (x + lost_error)
    return np.where(np.isfinite(errors), cue, np.nan).astype(np.float32)


def lost_parts(
    masks: np.ndarray,
    errors: np.ndarray,
    background_error: float,
    disks: np.ndarray,
    config: MaskConfig | None = None,
) -> list[float]:
    """Per view, how much that stands above the ground the mask leaves out.

    A pixel stands above the ground when no other view repeats it where the plane lands
    (`ground_errors` above `lost_error` times the background's median, in areas: opened
    by a 5-pixel disk). Those inside the subject's disk and more than 4 pixels from the
    mask are counted, as a fraction of the mask's area: part of the prop the estimate cut
    away (a wheel the ground's colour, a ball beside the main body).

    Args:
        masks: (V, H, W) bool. errors: (V, H, W) `ground_errors` at the plane.
        background_error: the background's median error there (`find_ground`).
        disks: (V, H, W) bool, where the subject's sphere (above the plane) projects.
    """
    cv2 = _cv2()
    cfg = config or MaskConfig()
    opening = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    margin = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    out = []
    for k in range(len(masks)):
        standing = np.isfinite(errors[k]) & (errors[k] > cfg.lost_error * background_error)
        standing = cv2.morphologyEx(standing.astype(np.uint8), cv2.MORPH_OPEN, opening) > 0
        near = cv2.dilate(masks[k].astype(np.uint8), margin) > 0
        out.append(float((standing & disks[k] & ~near).sum()) / max(float(masks[k].sum()), 1.0))
    return out


def consistency_iou(
    masks: np.ndarray, cameras: Cameras, center: Tensor, radius: float, grid: int = 64
) -> list[float]:
    """Per view, IoU of its mask (V, H, W) bool with the hull carved from all the masks,
    re-projected into it."""
    pts, kept = carve(masks, cameras, center, radius, grid)
    hulls = reproject(pts, kept, cameras, 2.0 * radius / grid)
    return [_iou(masks[k], hulls[k]) for k in range(len(masks))]


# ------------------------------------------------------------------------ checks
def check_masks(
    masks: np.ndarray, source: str, config: MaskConfig | None = None, border: bool = False
) -> None:
    """Refuse empty and whole-frame masks, and (with `border`) masks along the frame edge.

    Args:
        masks: (V, H, W) bool or coverage in [0, 1].
    Raises:
        MaskError: naming the first such view.
    """
    cfg = config or MaskConfig()
    what = {
        "alpha": "its alpha channel", "files": "its mask file",
        "estimated": "the estimated mask", "render": "its render",
    }.get(source, source)  # fmt: skip
    for k, mask in enumerate(np.asarray(masks) > 0.5):
        fraction = float(mask.mean())
        if fraction < cfg.min_fraction:
            raise MaskError(
                f"view {k} shows no prop: {what} is empty ({fraction:.2%} of the frame); "
                + ("nothing stood out from the background" if source == "estimated"
                   else "the prop is hidden, clipped or out of frame")
            )  # fmt: skip
        # An exact alpha may cover the frame (a close-up); a mask file or an estimate not.
        if source != "alpha" and fraction > (
            cfg.max_fraction if source == "estimated" else cfg.whole_frame
        ):
            raise MaskError(
                f"view {k}: {what} covers {fraction:.0%} of the frame, not a prop in front "
                "of a background; give mask files or views with alpha"
            )
        if border and _border_fraction(mask) > cfg.max_border:
            raise MaskError(
                f"view {k}: the estimated mask runs along {_border_fraction(mask):.0%} of the "
                "frame's edge, so it is background, not a prop kept in frame; give mask files"
            )


@dataclass
class OddView:
    """The one view whose mask the others disagree with (`odd_view_out`).

    Attributes:
        view: its index.
        others: the lowest IoU of the other views' masks with the hull they carve
            without it (they agree with one another).
        covered: the fraction of its own mask inside that hull, re-projected into it:
            near 1, its mask is part of the shape the others show (it lost part of the
            prop); lower, it reaches outside it (it shows something else).
        recall: the fraction of that hull's re-projection its mask covers.
    """

    view: int
    others: float
    covered: float
    recall: float


def odd_view_out(
    masks: np.ndarray,
    cameras: Cameras,
    center: Tensor,
    radius: float,
    grid: int,
    threshold: float,
) -> OddView | None:
    """The view without which the other views' masks agree, or None.

    Every view carves the hull the consistency check compares all the masks with, so one
    view that lost part of the prop (a stool's legs the colour of the ground) carves
    that part from every view's hull and the views that kept it read as inconsistent.
    Leaving each view out in turn finds the one whose absence makes the others agree
    (every IoU of theirs at least `threshold`, the best such minimum wins). Needs at least
    three views: with two, neither can be told from the other.

    Args:
        masks: (V, H, W) bool.
    """
    v_count = len(masks)
    if v_count < 3:
        return None
    voxel = 2.0 * radius / grid
    best: OddView | None = None
    for j in range(v_count):
        rest = [k for k in range(v_count) if k != j]
        pts, kept = carve(masks[rest], cameras[rest], center, radius, grid)
        hulls = reproject(pts, kept, cameras, voxel)
        others = min(_iou(masks[k], hulls[k]) for k in rest)
        if others < threshold or (best is not None and others <= best.others):
            continue
        own, hull = masks[j], hulls[j]
        covered = float((own & hull).sum()) / max(float(own.sum()), 1.0)
        recall = float((own & hull).sum()) / max(float(hull.sum()), 1.0)
        best = OddView(j, others, covered, recall)
    return best


def check_consistency(
    consistency: Sequence[float], config: MaskConfig | None = None, odd: OddView | None = None
) -> None:
    """Refuse views whose mask disagrees with the hull all the masks carve together;
    with `odd` (`odd_view_out`), name the view the others disagree with and say how."""
    cfg = config or MaskConfig()
    if odd is not None and min(consistency) < cfg.min_consistency:
        # The others agreeing is no proof they are right (three views can lose the same
        # part), so the message names the view and what differs, not who is wrong.
        what = (
            f"its mask covers only {odd.recall:.0%} of the shape the other views carve, so "
            "it has probably lost part of the prop"
            if odd.covered >= 0.9
            else f"{1.0 - odd.covered:.0%} of its mask lies outside the shape the other views "
            "carve: it shows something else, or they lost part of the prop"
        )  # fmt: skip
        raise MaskError(
            f"view {odd.view}: {what} (they agree with one another without it, IoU >= "
            f"{odd.others:.2f}); check the mask preview, give mask files, or leave that view "
            "out"
        )
    for k, iou in enumerate(consistency):
        if iou < cfg.min_consistency:
            raise MaskError(
                f"view {k}: its mask and the other views disagree (IoU {iou:.2f} with the "
                f"shape they carve together, below {cfg.min_consistency}); the cameras do not "
                "show one prop, or the prop was not found; give mask files"
            )


# ------------------------------------------------------------------------ the entry point
def resolve_masks(
    rgba: Tensor,
    cameras: Cameras,
    mode: str = "auto",
    mask_paths: Sequence[str | os.PathLike | None] | None = None,
    config: MaskConfig | None = None,
) -> Masks:
    """The foreground of each view by `mode` (auto, alpha, files, none).

    Args:
        rgba: (V, H, W, 4) float straight-alpha RGBA in [0, 1] (alpha 1 without a channel).
        cameras: V cameras of W x H.
        mask_paths: V mask files (None for a view without one), or None.
    Returns:
        `Masks` whose alphas (V, H, W) replace the images' alpha before compositing.
    Raises:
        MaskError: the mode's source is missing (alpha mode without alpha, files mode
            without files) or its masks are implausible.
    """
    if mode not in MASK_MODES:
        raise MaskError(f"masks must be one of {MASK_MODES}, got {mode!r}")
    cfg = config or MaskConfig()
    alpha = rgba[..., 3]
    if mode == "none":
        return Masks(alpha, "none")
    have_files = mask_paths is not None and all(p is not None for p in mask_paths)
    if mode == "auto":
        mode = "alpha" if alpha_usable(alpha) else "files" if have_files else "estimate"
    if mode == "alpha":
        if not alpha_usable(alpha):
            raise MaskError(
                "the views have no alpha channel (or it is opaque everywhere); use masks "
                "'auto' to estimate them, or give mask files"
            )
        check_masks(alpha.numpy(), "alpha", cfg)
        return Masks(alpha, "alpha", [float((a > 0.5).float().mean()) for a in alpha])
    if mode == "files":
        if not have_files:
            missing = 0 if mask_paths is None else [p is None for p in mask_paths].index(True)
            raise MaskError(f"view {missing} has no mask file (mask_path / masks folder)")
        size = (cameras.width, cameras.height)
        files = np.stack([read_mask(p, size) for p in mask_paths])  # type: ignore[misc]
        check_masks(files, "files", cfg)
        return Masks(torch.from_numpy(files), "files", [float((m > 0.5).mean()) for m in files])
    return estimate_masks(rgba[..., :3], cameras, cfg)


def composite_masked(
    rgba: Tensor, masks: Masks, background: Sequence[float] = (1.0, 1.0, 1.0)
) -> Tensor:
    """(V, H, W, 3) the views' colour composited on `background` through the masks.

    Where the masks are the images' own alpha the colour is already straight alpha; for
    estimated or file masks the photo's colour is used as it is.
    """
    a = masks.alphas.to(rgba)[..., None]
    bg = torch.as_tensor(background, dtype=rgba.dtype)
    return rgba[..., :3] * a + bg * (1.0 - a)
