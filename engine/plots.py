"""Plots for `gd train` and `gd evaluate`: training curves and histograms with matplotlib
(an optional extra, `pip install gd-splat[plots]`; never needed inside Blender), and
labelled image strips with Pillow.

    plot_training_curves("runs/x/metrics.jsonl", "curves.png")
    plot_histograms({"coarse": a, "fine": b}, "hist.png", title=..., xlabel=...)
    image_strip([gt, coarse, fine], ["GT", "coarse", "fine"])  -> PIL image

The training log is JSON lines, one object per logged step, e.g.
{"step": 100, "loss": 0.03, "psnr_fine": 24.1, "lr": 4e-4, "split": "train"}; every numeric
key except "step" gets a panel, with the train and val records as separate lines.
Without matplotlib the two plotters raise ImportError (`histogram_stats` still works).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .atomic import atomic_open

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Colour-blind-safe pairs (Okabe-Ito): first series blue, second vermilion, then others.
PALETTE = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0)]
SPLIT_COLOURS = {"train": PALETTE[0], "val": PALETTE[1]}
INK = (40, 40, 40)
DPI = 100
LINE_WIDTH = 2.0
"""Points: about 2.8 pixels at `DPI`, so a line's middle pixels are its exact colour."""


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # Pillow < 10.1: one fixed bitmap size
        return ImageFont.load_default()


def _figure(width: int, height: int) -> Figure:
    """A matplotlib figure of width x height pixels (no pyplot, no global backend)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "plots need matplotlib: pip install 'gd-splat[plots]' (or matplotlib)"
        ) from err
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)


def _rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255 for c in colour)


def _save(figure: Figure, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as f:
        figure.savefig(f, format="png", dpi=DPI)
    return out


# ---------------------------------------------------------------------------- curves
def read_metrics_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a training log, skipping blank and unparsable lines (a log being
    written may end in half a line). FileNotFoundError if it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training log not found")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """1st to 99th percentile, padded 5%: a few early loss spikes do not flatten the curve."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1, 99]) if values.size > 20 else (values.min(), values.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-6)
    return float(lo - pad), float(hi + pad)


def plot_training_curves(
    metrics_jsonl: str | os.PathLike,
    out_png: str | os.PathLike,
    panel_size: tuple[int, int] = (420, 260),
    columns: int = 3,
) -> list[str]:
    """Plot every numeric key of a training log against "step", train and val apart.

    Args:
        metrics_jsonl: JSON-lines log; records need "step"; "split" is "train" (default
            when absent) or "val"; other numeric keys (not bools) are plotted.
        out_png: the PNG to write (parent folders are created).
        panel_size: (width, height) of one panel in pixels.
        columns: panels per row.
    Returns:
        The plotted keys, in panel order.
    Raises:
        FileNotFoundError: no log. ValueError: no record with a numeric step and value.
    """
    records = [r for r in read_metrics_jsonl(metrics_jsonl) if _is_number(r.get("step"))]
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k != "step" and _is_number(v) and k not in keys:
                keys.append(k)
    if not keys:
        raise ValueError(f"{metrics_jsonl}: no records with a numeric 'step' and values to plot")
    found = {str(r.get("split", "train")) for r in records}
    splits = [s for s in SPLIT_COLOURS if s in found] + sorted(found - set(SPLIT_COLOURS))
    colours = {s: SPLIT_COLOURS.get(s, PALETTE[2 + i % 3]) for i, s in enumerate(splits)}
    steps_all = [float(r["step"]) for r in records]
    xlim = (min(steps_all), max(steps_all))
    if xlim[1] <= xlim[0]:
        xlim = (xlim[0] - 0.5, xlim[0] + 0.5)
    pw, ph = panel_size
    cols, rows = min(columns, len(keys)), math.ceil(len(keys) / columns)
    figure = _figure(pw * cols, ph * rows)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        ylim = _robust_range(
            np.array([float(r[key]) for r in records if _is_number(r.get(key))], dtype=np.float64)
        )
        for split in splits:
            mine = [r for r in records if str(r.get("split", "train")) == split]
            pts = sorted((float(r["step"]), float(r[key])) for r in mine if _is_number(r.get(key)))
            if pts:
                # Values outside the range are pinned to the frame, so spikes stay visible.
                ys = np.clip([p[1] for p in pts], *ylim)
                ax.plot([p[0] for p in pts], ys, color=_rgb(colours[split]), label=split,
                        linewidth=LINE_WIDTH, marker="o" if len(pts) == 1 else None)  # fmt: skip
        ax.set(title=key, xlabel="step", xlim=xlim, ylim=ylim)
        ax.grid(color="0.88")
        ax.legend(loc="upper right", fontsize="small")
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    figure.tight_layout()
    _save(figure, out_png)
    return keys


# ---------------------------------------------------------------------------- histograms
def histogram_stats(
    series: Mapping[str, np.ndarray | Tensor],
    bins: int = 60,
    value_range: tuple[float, float] | None = None,
) -> dict[str, dict]:
    """Histograms normalised to a density, so sets of different sizes compare.

    Args:
        series: label -> 1-D values (numpy or torch); non-finite values are dropped.
        value_range: (lo, hi) of the bins; default the 0.5–99.5 percentile range of all
            values, padded by 5% each side.
            Values outside are not counted in a bin but still count in the normalisation.
    Returns:
        label -> {"count", "outside_range", "mean", "median", "edges", "density"}, for
        metrics.json.
    """
    arrays = {}
    for label, values in series.items():
        if isinstance(values, Tensor):
            values = values.detach().float().cpu().numpy()
        values = np.asarray(values, dtype=np.float64).ravel()
        arrays[label] = values[np.isfinite(values)]
    everything = np.concatenate([a for a in arrays.values()] or [np.zeros(0)])
    if value_range is None:
        if everything.size:
            lo, hi = np.percentile(everything, [0.5, 99.5])
        else:
            lo, hi = 0.0, 1.0
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.05 * (hi - lo)  # spikes at the extremes stay visible inside the frame
        value_range = (float(lo - pad), float(hi + pad))
    edges = np.linspace(value_range[0], value_range[1], bins + 1)
    stats = {}
    for label, values in arrays.items():
        inside = values[(values >= edges[0]) & (values <= edges[-1])]
        # Density of all values (not only those inside), so tails cut off lower the curve.
        counts = np.histogram(inside, edges)[0].astype(np.float64)
        density = counts / max(values.size, 1) / np.diff(edges)
        stats[label] = {
            "count": int(values.size),
            "outside_range": int(values.size - inside.size),
            "mean": float(values.mean()) if values.size else None,
            "median": float(np.median(values)) if values.size else None,
            "edges": [float(e) for e in edges],
            "density": [float(d) for d in density],
        }
    return stats


def plot_histograms(
    series: Mapping[str, np.ndarray | Tensor],
    out_png: str | os.PathLike,
    title: str = "",
    xlabel: str = "",
    bins: int = 60,
    value_range: tuple[float, float] | None = None,
    size: tuple[int, int] = (520, 320),
) -> dict[str, Any]:
    """Overlaid step histograms of `histogram_stats` (as in the paper's Fig. 8), written to
    `out_png` (size in pixels); returns the stats."""
    stats = histogram_stats(series, bins, value_range)
    figure = _figure(*size)
    ax = figure.subplots()
    densities = {label: np.asarray(s["density"]) for label, s in stats.items()}
    top = max([float(d.max()) for d in densities.values() if d.size] + [1e-9]) * 1.08
    # Drawn last to first so the first series stays visible where curves coincide; the
    # later ones are thinner for the same reason.
    for i, label in reversed(list(enumerate(stats))):
        colour = _rgb(PALETTE[i % len(PALETTE)])
        ax.stairs(densities[label], stats[label]["edges"], color=colour, zorder=len(stats) - i,
                  linewidth=1.5 * LINE_WIDTH if i == 0 else LINE_WIDTH,
                  label=f"{label} (n={stats[label]['count']})")  # fmt: skip
    edges = next(iter(stats.values()))["edges"] if stats else [0.0, 1.0]
    ax.set(title=title, xlabel=xlabel, xlim=(edges[0], edges[-1]), ylim=(0.0, top))
    ax.grid(color="0.88")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper right", fontsize="small")
    figure.tight_layout()
    _save(figure, out_png)
    return stats


# ---------------------------------------------------------------------------- image strips
def image_strip(images: Sequence[Tensor], labels: Sequence[str] | None = None) -> Image.Image:
    """Images side by side (left to right) with an optional label bar above each.

    Args:
        images: (H, W, 3) floats in [0, 1], all the same height.
        labels: one caption per image, or None for no label bar.
    """
    arrays = [(img.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
              for img in images]  # fmt: skip
    body = Image.fromarray(np.concatenate(arrays, axis=1))
    if not labels:
        return body
    bar = 16
    out = Image.new("RGB", (body.width, body.height + bar), "white")
    out.paste(body, (0, bar))
    d, font, x = ImageDraw.Draw(out), _font(12), 0
    for array, label in zip(arrays, labels, strict=True):
        d.text((x + array.shape[1] / 2, bar / 2), label, fill=INK, font=font, anchor="mm")
        x += array.shape[1]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m engine.plots LOG.jsonl OUT.png`: plot a training log's curves."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m engine.plots", description=main.__doc__)
    p.add_argument("log", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    keys = plot_training_curves(args.log, args.out)
    print(f"plotted {len(keys)} curves to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
