"""Small plots drawn with Pillow (no matplotlib dependency): training curves, histograms
and labelled image strips for the evaluation report.

    plot_training_curves("runs/x/metrics.jsonl", "curves.png")
    plot_histograms({"coarse": a, "fine": b}, "hist.png", title=..., xlabel=...)
    image_strip([gt, coarse, fine], ["GT", "coarse", "fine"])  -> PIL image

The training log is JSON lines, one object per logged step, e.g.
{"step": 100, "loss": 0.03, "psnr_fine": 24.1, "lr": 4e-4, "split": "train"}; every numeric
key except "step" gets a panel, with the train and val records as separate lines.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .atomic import atomic_open

# Colour-blind-safe pairs (Okabe-Ito): first series blue, second vermilion, then others.
PALETTE = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0)]
SPLIT_COLOURS = {"train": PALETTE[0], "val": PALETTE[1]}
GRID = (225, 225, 225)
INK = (40, 40, 40)


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # Pillow < 10.1: one fixed bitmap size
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 × 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.4g}"


class Panel:
    """One plot area inside an image: data coordinates -> pixels, frame, ticks, labels."""

    def __init__(
        self,
        image: Image.Image,
        box: tuple[int, int, int, int],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        title: str = "",
        xlabel: str = "",
    ) -> None:
        self.draw = ImageDraw.Draw(image)
        self.font, self.small = _font(13), _font(11)
        left, top, right, bottom = box
        # Room for tick labels on the left and below, the title above.
        self.x0, self.y0, self.x1, self.y1 = left + 58, top + 24, right - 10, bottom - 34
        lo, hi = xlim
        self.xlim = (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)
        lo, hi = ylim
        self.ylim = (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)
        self._frame(title, xlabel)

    def px(self, x: float, y: float) -> tuple[float, float]:
        (xa, xb), (ya, yb) = self.xlim, self.ylim
        u = self.x0 + (x - xa) / (xb - xa) * (self.x1 - self.x0)
        v = self.y1 - (y - ya) / (yb - ya) * (self.y1 - self.y0)
        return u, v

    def _frame(self, title: str, xlabel: str) -> None:
        d = self.draw
        for t in nice_ticks(*self.ylim):
            _, v = self.px(self.xlim[0], t)
            d.line([(self.x0, v), (self.x1, v)], fill=GRID)
            d.text((self.x0 - 4, v), _fmt(t), fill=INK, font=self.small, anchor="rm")
        for t in nice_ticks(*self.xlim):
            u, _ = self.px(t, self.ylim[0])
            d.line([(u, self.y0), (u, self.y1)], fill=GRID)
            d.text((u, self.y1 + 4), _fmt(t), fill=INK, font=self.small, anchor="mt")
        d.rectangle([self.x0, self.y0, self.x1, self.y1], outline=INK)
        d.text(((self.x0 + self.x1) / 2, self.y0 - 6), title, fill=INK, font=self.font,
               anchor="mb")  # fmt: skip
        d.text(((self.x0 + self.x1) / 2, self.y1 + 18), xlabel, fill=INK, font=self.small,
               anchor="mt")  # fmt: skip

    def line(self, xs: Sequence[float], ys: Sequence[float], colour, width: int = 2) -> None:
        """A polyline clipped to the y range (values outside are pinned to the frame)."""
        ya, yb = self.ylim
        points = [
            self.px(x, min(max(y, ya), yb)) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)
        ]
        if len(points) == 1:
            u, v = points[0]
            self.draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=colour)
        elif points:
            self.draw.line(points, fill=colour, width=width, joint="curve")

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
        x, y = self.x1 - 8, self.y0 + 6
        if entries:  # a white box so the text stays readable over the lines
            width = max(self.draw.textlength(label, font=self.small) for label, _ in entries)
            self.draw.rectangle([x - width - 4, y - 2, x + 3, y + 15 * len(entries)],
                                fill="white", outline=GRID)  # fmt: skip
        for label, colour in entries:
            self.draw.text((x, y), label, fill=colour, font=self.small, anchor="ra")
            y += 15


def _save(image: Image.Image, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as f:
        image.save(f, format="PNG")
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
    pw, ph = panel_size
    rows = math.ceil(len(keys) / columns)
    image = Image.new("RGB", (pw * min(columns, len(keys)), ph * rows), "white")
    for n, key in enumerate(keys):
        series = {}
        for split in splits:
            mine = [r for r in records if str(r.get("split", "train")) == split]
            pts = sorted((float(r["step"]), float(r[key])) for r in mine if _is_number(r.get(key)))
            if pts:
                series[split] = pts
        values = np.array([y for pts in series.values() for _, y in pts], dtype=np.float64)
        left, top = (n % columns) * pw, (n // columns) * ph
        panel = Panel(image, (left, top, left + pw, top + ph), xlim, _robust_range(values),
                      title=key, xlabel="step")  # fmt: skip
        for split, pts in series.items():
            panel.line([p[0] for p in pts], [p[1] for p in pts], colours[split])
        panel.legend([(s, colours[s]) for s in series])
    _save(image, out_png)
    return keys


# ---------------------------------------------------------------------------- histograms
def plot_histograms(
    series: Mapping[str, np.ndarray | Tensor],
    out_png: str | os.PathLike,
    title: str = "",
    xlabel: str = "",
    bins: int = 60,
    value_range: tuple[float, float] | None = None,
    size: tuple[int, int] = (520, 320),
) -> dict[str, dict]:
    """Overlaid step histograms, each normalised to a density so sets of different sizes
    compare (as in the paper's Fig. 8).

    Args:
        series: label -> 1-D values (numpy or torch); non-finite values are dropped.
        value_range: (lo, hi) of the bins; default the 0.5–99.5 percentile range of all
            values, padded by 5% each side.
            Values outside are not drawn but still count in the normalisation.
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
    stats, densities = {}, {}
    for label, values in arrays.items():
        inside = values[(values >= edges[0]) & (values <= edges[-1])]
        # Density of all values (not only those inside), so tails cut off lower the curve.
        counts = np.histogram(inside, edges)[0].astype(np.float64)
        density = counts / max(values.size, 1) / np.diff(edges)
        densities[label] = density
        stats[label] = {
            "count": int(values.size),
            "outside_range": int(values.size - inside.size),
            "mean": float(values.mean()) if values.size else None,
            "median": float(np.median(values)) if values.size else None,
            "edges": [float(e) for e in edges],
            "density": [float(d) for d in density],
        }
    top = max([float(d.max()) for d in densities.values()] + [1e-9]) * 1.08
    image = Image.new("RGB", size, "white")
    panel = Panel(image, (0, 0, *size), (edges[0], edges[-1]), (0.0, top), title, xlabel)
    entries = []
    xs = np.repeat(edges, 2)[1:-1].tolist()
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(densities)}
    # Drawn last to first so the first series stays visible where curves coincide; the
    # later ones are thinner for the same reason.
    for i, label in reversed(list(enumerate(densities))):
        panel.line(
            xs, np.repeat(densities[label], 2).tolist(), colours[label], width=3 if i == 0 else 2
        )
        entries.append((f"{label} (n={stats[label]['count']})", colours[label]))
    panel.legend(entries[::-1])
    _save(image, out_png)
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
