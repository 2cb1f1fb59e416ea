"""Train the mask refiner (`engine.mask_refiner`) on the data generator's photos.

    python -m engine.data.photos datasets/props256_s1 --split train      # photos of the props
    python -m engine.mask_refiner_train datasets/props256_s1 --out runs/mask-refiner \\
        --estimate-only                                  # the estimator's own masks (resumable)
    python -m engine.mask_refiner_train datasets/props256_s1 --out runs/mask-refiner \\
        --steps 4000                                                      # resumable

Each training prop with photos (`transforms_photos.json`) gives 4 views: the photo (the
prop on a textured ground in its HDRI, no alpha) and the true mask (the alpha channel of
the same camera's transparent render). The refiner learns to correct coarse masks of two
kinds (`--own`: the share of the first): the estimator's own (`estimate_masks` without the
refiner, computed once per prop into `OUT/estimated/` by `--estimate-only`, with each
view's `standing_cue`), and masks made from the true one the ways the estimator goes
wrong: outlines moved in or out by up to three pixels, parts cut away (a colour-alike
lampshade, a ball beside the body), thin parts opened away (legs, posts), a shadow added
under the prop, and the estimator's one-pixel feather. It trains on `--crop`² windows about
the true outline, where the errors are, mirrored left-right half the time. The loss is
binary cross-entropy plus the error of the photo composited on white through the mask
(`composite_error`: what the object model reads). Props whose index is a multiple of 20
are held out for validation.

A run writes `OUT/checkpoint/model.safetensors` (+ optimizer) every `--save-every` steps
and `OUT/log.jsonl`; running the same command again resumes. New photos and estimates
finished since the last start are picked up at each start. `--init` starts a new run from
other refiner weights (one without the cue widens to one with it: `widened`).
`tools/ship_weights.py` does not apply; copy the checkpoint to
`engine/assets/mask-refiner.safetensors` (+ `.json`) once `bench/photos.py` shows it helps.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .atomic import atomic_path, write_atomic
from .data.layout import OBJECTS_DIR, transforms_path
from .data.photos import PHOTOS_TRANSFORMS, photos_transforms
from .images import read_rgba
from .mask_refiner import MaskRefiner, MaskRefinerConfig
from .train import load_optimizer_tensors, optimizer_tensors
from .views import nerf_files
from .weights import load_weights, save_weights

HOLD_OUT = 20  # props whose index is a multiple of this validate


@dataclass
class Views:
    """Photos (N, S, S, 3) and true masks (N, S, S), uint8, each view's prop index, and the
    estimator's mask of each view (N, S, S) uint8 where known (`estimated[k]` False: none)
    with its `standing_cue` (N, S, S) float16 (NaN where unknown)."""

    photos: np.ndarray
    masks: np.ndarray
    props: np.ndarray
    coarse: np.ndarray | None = None
    estimated: np.ndarray | None = None
    cue: np.ndarray | None = None


def find_photo_props(root: Path) -> list[Path]:
    """Object folders of a props dataset whose photos are finished, in index order."""
    return sorted(p.parent for p in (root / OBJECTS_DIR).glob(f"*/{PHOTOS_TRANSFORMS}"))


def load_photo_views(folders: list[Path], size: int) -> Views:
    """Every photo of the folders with the alpha of its transparent render, at size²."""
    photos, masks, props = [], [], []
    for folder in folders:
        shots = nerf_files(photos_transforms(folder)).image_paths
        alphas = nerf_files(transforms_path(folder, "input")).image_paths
        if len(shots) != len(alphas):
            continue
        for shot, alpha in zip(shots, alphas, strict=True):
            photo = read_rgba(shot, (size, size))[..., :3]
            mask = read_rgba(alpha, (size, size))[..., 3]
            photos.append(np.round(photo * 255).astype(np.uint8))
            masks.append(np.round(mask * 255).astype(np.uint8))
            props.append(int(folder.name))
    if not photos:
        raise ValueError("no props with finished photos (run python -m engine.data.photos)")
    return Views(np.stack(photos), np.stack(masks), np.asarray(props))


def estimate_all(folders: list[Path], out: Path, size: int) -> None:
    """The estimator's masks (refiner off) of every prop's photos, one `OUT/estimated/<index>
    .npz` each: masks uint8 (4, S, S) and their `standing_cue` float16 (4, S, S) (NaN where
    unknown); both empty where the estimate refused the prop."""
    from .masks import MaskConfig, MaskError, estimate_masks
    from .views import load_nerf_scene

    out.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        target = out / f"{int(folder.name)}.npz"
        if target.is_file():
            continue
        t0 = time.perf_counter()
        views = load_nerf_scene(photos_transforms(folder), masks="none", max_side=size)
        try:
            masks = estimate_masks(views.images, views.cameras, MaskConfig(refine=False))
            array = np.round(masks.alphas.numpy() * 255).astype(np.uint8)
            cue = np.full(array.shape, np.nan, np.float16)
            if masks.standing is not None and masks.standing.shape == array.shape:
                cue = masks.standing.astype(np.float16)
        except MaskError:
            array = np.zeros((0, size, size), np.uint8)
            cue = np.zeros((0, size, size), np.float16)
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            np.savez(f, masks=array, cue=cue)
        print(f"{folder.name}: {len(array)} masks in {time.perf_counter() - t0:.1f} s", flush=True)


def attach_estimates(views: Views, out: Path) -> None:
    """Fill `views.coarse`/`views.estimated`/`views.cue` from `estimate_all`'s files."""
    n, size = views.masks.shape[:2]
    views.coarse = np.zeros((n, size, size), np.uint8)
    views.estimated = np.zeros(n, bool)
    views.cue = np.full((n, size, size), np.nan, np.float16)
    for prop in np.unique(views.props):
        file = out / f"{int(prop)}.npz"
        if not file.is_file():
            continue
        with np.load(file) as data:
            masks = data["masks"]
            cue = data["cue"] if "cue" in data.files else None
        rows = np.flatnonzero(views.props == prop)
        if len(masks) == len(rows) and masks.shape[1:] == (size, size):
            views.coarse[rows], views.estimated[rows] = masks, True
            if cue is not None and cue.shape == masks.shape:
                views.cue[rows] = cue


def coarse_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A coarse version of a true mask (H, W) in [0, 1], wrong the ways the estimate is."""
    import cv2

    hard = (mask > 0.5).astype(np.uint8)
    h, w = hard.shape
    ys, xs = np.nonzero(hard)
    if len(ys) == 0:
        return mask.astype(np.float32)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    extent = max(y1 - y0, x1 - x0, 4)
    if rng.random() < 0.3:  # thin parts opened away
        k = int(rng.integers(3, 8)) | 1
        hard = cv2.morphologyEx(hard, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.4 else 0):  # parts cut away
        i = int(rng.integers(len(ys)))
        axes = tuple(int(a) for a in rng.uniform(0.05, 0.25, 2) * extent)
        cv2.ellipse(hard, (int(xs[i]), int(ys[i])), axes, float(rng.uniform(0, 180)), 0, 360,
                    0, -1)  # fmt: skip
    if rng.random() < 0.25:  # a shadow under the prop
        cx = int(rng.uniform(x0, x1 + 1))
        axes = (int(rng.uniform(0.2, 0.5) * extent), int(rng.uniform(0.03, 0.12) * extent))
        cv2.ellipse(hard, (cx, int(y1)), axes, 0.0, 0, 360, 1, -1)
    r = int(rng.choice([0, 1, 1, 2, 2, 3]))  # outline moved, mostly inwards
    if r:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        hard = cv2.erode(hard, kernel) if rng.random() < 0.7 else cv2.dilate(hard, kernel)
    return cv2.GaussianBlur(hard.astype(np.float32), (3, 3), 0.7)


def sample_batch(
    views: Views,
    index: np.ndarray,
    batch: int,
    crop: int,
    rng: np.random.Generator,
    own: float = 0.5,
    flip_ok: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(photos (B, 3, c, c), coarse masks, true masks, cues (B, 1, c, c)) of random
    views in `index`, cropped about a random point of the true outline; the coarse mask is
    the estimator's own with probability `own` where it is known, else made (`coarse_mask`);
    each mirrored left-right with probability 1/2 when `flip_ok`."""
    import cv2

    size = views.masks.shape[1]
    photos, coarse, true, cues = [], [], [], []
    for k in rng.choice(index, batch):
        mask = views.masks[k].astype(np.float32) / 255.0
        use_own = views.estimated is not None and views.estimated[k] and rng.random() < own
        edge = cv2.morphologyEx((mask > 0.5).astype(np.uint8), cv2.MORPH_GRADIENT,
                                np.ones((3, 3), np.uint8))  # fmt: skip
        ys, xs = np.nonzero(edge)
        cy, cx = (ys[i := int(rng.integers(len(ys)))], xs[i]) if len(ys) else (size // 2,) * 2
        top = int(np.clip(cy - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, size - crop))
        left = int(
            np.clip(cx - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, size - crop)
        )
        window = (slice(top, top + crop), slice(left, left + crop))
        made = views.coarse[k].astype(np.float32) / 255.0 if use_own else coarse_mask(mask, rng)
        # Mirrored left-right half the time; never upside down: the ground is below.
        flip = slice(None, None, -1 if flip_ok and rng.random() < 0.5 else 1)
        photos.append(views.photos[k][window][:, flip].astype(np.float32) / 255.0)
        coarse.append(made[window][:, flip])
        true.append(mask[window][:, flip])
        cues.append(views.cue[k][window][:, flip].astype(np.float32) if views.cue is not None
                    else np.full((crop, crop), np.nan, np.float32))  # fmt: skip
    return (
        torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(np.stack(coarse))[:, None],
        torch.from_numpy(np.stack(true))[:, None],
        torch.from_numpy(np.stack(cues))[:, None],
    )


def loss_terms(logits: Tensor, true: Tensor, photos: Tensor) -> tuple[Tensor, Tensor]:
    """(BCE against the soft true mask, mean absolute error of the photo composited on white).

    Args:
        logits, true: (B, 1, H, W). photos: (B, 3, H, W) in [0, 1].

    The second term is what the model reads: a mask error costs |mask - true| times how far
    the photo's colour is from the white it is composited on, so a pixel of pale ground let
    in matters less than one of dark prop cut away.
    """
    bce = F.binary_cross_entropy_with_logits(logits, true)
    return bce, composite_error(torch.sigmoid(logits), true, photos)


def composite_error(masks: Tensor, true: Tensor, photos: Tensor) -> Tensor:
    """Mean |masks - true| weighted by each pixel's distance from white (see `loss_terms`).

    Args:
        masks, true: (B, 1, H, W) in [0, 1]. photos: (B, 3, H, W) in [0, 1].
    """
    return ((masks - true).abs() * (1.0 - photos).mean(1, keepdim=True)).mean()


def widened(state: dict[str, Tensor], like: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` with input channels the model `like` has beyond it zero-filled: a refiner
    trained without the cue starts one that reads it as itself."""
    out = dict(state)
    for key, value in like.items():
        old = state.get(key)
        if old is not None and old.dim() == 4 and old.shape[1] < value.shape[1]:
            pad = value.new_zeros(old.shape[0], value.shape[1] - old.shape[1], *old.shape[2:])
            out[key] = torch.cat([old, pad], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.mask_refiner_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("root", type=Path, help="props dataset with photos")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--size", type=int, default=256, help="views are decoded at size²")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--own", type=float, default=0.5)
    p.add_argument(
        "--band",
        type=int,
        default=MaskRefinerConfig.band,
        help="pixels about the coarse outline the refiner may change",
    )
    p.add_argument("--cue", action="store_true", help="the refiner reads the standing cue")
    p.add_argument(
        "--channels",
        default=",".join(str(c) for c in MaskRefinerConfig.channels),
        help="the refiner's feature channels per level, comma-separated",
    )
    p.add_argument(
        "--init", type=Path, default=None, help="start a new run from these refiner weights"
    )
    p.add_argument(
        "--estimate-only",
        action="store_true",
        help="compute the estimator's masks of the props (OUT/estimated) and stop",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    folders = find_photo_props(args.root)
    if args.estimate_only:
        estimate_all(folders, args.out / "estimated", args.size)
        return 0
    views = load_photo_views(folders, args.size)
    attach_estimates(views, args.out / "estimated")
    held = views.props % HOLD_OUT == 0
    train_index, val_index = np.flatnonzero(~held), np.flatnonzero(held)
    if args.own >= 1.0:  # only the views with the estimator's own masks
        train_index = train_index[views.estimated[train_index]]
    if not len(train_index):
        raise ValueError(f"every prop with photos is held out (index a multiple of {HOLD_OUT})")
    print(f"{len(folders)} props with photos: {len(train_index)} training views, "
          f"{len(val_index)} validation views, {int(views.estimated.sum())} with the "
          "estimator's masks", flush=True)  # fmt: skip

    channels = tuple(int(c) for c in args.channels.split(","))
    model = MaskRefiner(MaskRefinerConfig(channels=channels, cue=args.cue, band=args.band))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    ckpt = args.out / "checkpoint"
    step = 0
    if args.init is not None and not (ckpt / "model.safetensors").is_file():
        model.load_state_dict(widened(load_weights(args.init)[0], model.state_dict()))
        print(f"starting from {args.init}", flush=True)
    if (ckpt / "model.safetensors").is_file():
        state, meta = load_weights(ckpt / "model.safetensors")
        model.load_state_dict(state)
        step = int(meta["training"]["step"])
        if (ckpt / "optimizer.safetensors").is_file():
            tensors, opt_meta = load_weights(ckpt / "optimizer.safetensors")
            if opt_meta.get("step") == step:
                load_optimizer_tensors(opt, tensors, opt_meta)
        print(f"resumed at step {step}", flush=True)
        log = args.out / "log.jsonl"
        if log.is_file():  # steps a killed run logged after its last checkpoint run again
            kept = [x for x in log.read_text().splitlines() if json.loads(x)["step"] <= step]
            write_atomic(log, "".join(x + "\n" for x in kept))
    args.out.mkdir(parents=True, exist_ok=True)
    # Validation batches are the same every time (a fixed seed of their own), on the
    # estimator's own masks where the held-out props have them: what the refiner is for.
    known = val_index[views.estimated[val_index]]
    val_pick, val_own = (known, 1.0) if len(known) else (val_index, 0.0)
    val = sample_batch(views, val_pick, 64, args.crop, np.random.default_rng(12345), val_own) \
        if len(val_pick) else None  # fmt: skip

    def save() -> None:
        tensors, opt_meta = optimizer_tensors(opt)
        save_weights(tensors, ckpt / "optimizer.safetensors", {**opt_meta, "step": step})
        save_weights(model.state_dict(), ckpt / "model.safetensors", {
            "config": model.cfg.to_dict(),
            "training": {"step": step, "args": {k: str(v) for k, v in vars(args).items()},
                         "props": len(folders), "views": len(train_index)},
        })  # fmt: skip

    log = args.out / "log.jsonl"
    t0, first = time.perf_counter(), step
    while step < args.steps:
        rng = np.random.default_rng([args.seed, step])
        for group in opt.param_groups:  # cosine decay after 100 warm-up steps
            warm = min(1.0, (step + 1) / 100)
            group["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        model.train()
        photos, coarse, true, cue = sample_batch(
            views, train_index, args.batch, args.crop, rng, args.own, flip_ok=True
        )
        bce, l1 = loss_terms(model(photos, coarse, cue), true, photos)
        opt.zero_grad(set_to_none=True)
        (bce + l1).backward()
        opt.step()
        step += 1
        record = {"step": step, "bce": float(bce.detach()), "l1": float(l1.detach()),
                  "s_per_step": (time.perf_counter() - t0) / (step - first)}  # fmt: skip
        if step % args.save_every == 0 or step == args.steps:
            if val is not None:
                model.eval()
                with torch.no_grad():
                    v_bce, v_l1 = loss_terms(model(val[0], val[1], val[3]), val[2], val[0])
                    c_l1 = composite_error(val[1], val[2], val[0])
                record |= {"val_bce": float(v_bce), "val_l1": float(v_l1),
                           "val_l1_coarse": float(c_l1)}  # fmt: skip
            save()
            print(json.dumps(record), flush=True)
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    write_atomic(args.out / "done.json", json.dumps({"step": step}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
