"""Texture images for props, drawn with PIL and numpy from a spec (no bpy).

Printed labels (several fonts and sizes, barcodes, rules) and photo crops are the
high-frequency detail a reconstruction must keep; the specs are plain JSON so the same
texture is redrawn from prop.json on any machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .assets import font_path, photo

# Words for labels: product-ish text with digits and capitals, so glyph detail varies.
WORDS: tuple[str, ...] = (
    "ORGANIC", "Fresh", "Premium", "Natural", "Classic", "Extra", "LIGHT", "Original",
    "Tomato", "Coffee", "Cocoa", "Honey", "Olive", "Garden", "Harbor", "Nordic", "Alpine",
    "Blend", "Roast", "No.", "Batch", "Serial", "Made in", "Since", "Net wt", "ml", "kg",
    "Lot", "Model", "Type", "Volt", "Caution", "Recycle", "Quality", "Studio", "Works",
)  # fmt: skip


def sample_label_spec(rng: np.random.Generator, fonts: tuple[str, ...]) -> dict[str, Any]:
    """Random label: background, ink colours, 2-4 lines of text in random fonts and sizes."""
    light = bool(rng.random() < 0.6)
    bg = rng.uniform(0.75, 1.0, 3) if light else rng.uniform(0.0, 0.35, 3)
    ink = rng.uniform(0.0, 0.25, 3) if light else rng.uniform(0.8, 1.0, 3)
    lines = []
    for _ in range(int(rng.integers(2, 5))):
        words = [str(rng.choice(WORDS)) for _ in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.4:
            words.append(str(int(rng.integers(1, 10000))))
        font, size = str(rng.choice(fonts)), int(rng.integers(18, 72))
        lines.append({"text": " ".join(words), "font": font, "size": size})
    return {
        "width": 512,
        "height": 256,
        "bg": bg.round(4).tolist(),
        "ink": ink.round(4).tolist(),
        "accent": rng.uniform(0.0, 1.0, 3).round(4).tolist(),
        "band": bool(rng.random() < 0.5),
        "barcode": bool(rng.random() < 0.4),
        "border": bool(rng.random() < 0.5),
        "lines": lines,
        "seed": int(rng.integers(0, 2**31 - 1)),
    }


def _rgb8(color: list[float]) -> tuple[int, int, int]:
    return tuple(int(round(255 * min(max(c, 0.0), 1.0))) for c in color)  # type: ignore[return-value]


def draw_label(spec: dict[str, Any]) -> np.ndarray:
    """(H, W, 4) uint8 RGBA label (sRGB, opaque) drawn from `sample_label_spec`'s dict."""
    width, height = int(spec["width"]), int(spec["height"])
    image = Image.new("RGB", (width, height), _rgb8(spec["bg"]))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(int(spec["seed"]))
    ink, accent = _rgb8(spec["ink"]), _rgb8(spec["accent"])
    if spec.get("band"):
        y0 = int(rng.uniform(0.05, 0.6) * height)
        draw.rectangle([0, y0, width, y0 + int(0.18 * height)], fill=accent)
    if spec.get("border"):
        draw.rectangle([6, 6, width - 7, height - 7], outline=ink, width=4)
    y = int(0.08 * height)
    for line in spec["lines"]:
        font = ImageFont.truetype(str(font_path(line["font"])), int(line["size"]))
        left, top, right, bottom = draw.textbbox((0, 0), line["text"], font=font)
        x = max(8, (width - (right - left)) // 2) if rng.random() < 0.6 else 16
        draw.text((x, y - top), line["text"], font=font, fill=ink)
        y += (bottom - top) + int(rng.integers(4, 16))
        if y > height:
            break
    if spec.get("barcode"):
        x, x_end = int(0.62 * width), int(0.95 * width)
        y0, y1 = int(0.62 * height), int(0.92 * height)
        while x < x_end:
            bar = int(rng.integers(1, 5))
            if rng.random() < 0.55:
                draw.rectangle([x, y0, x + bar - 1, y1], fill=ink)
            x += bar
    rgba = np.concatenate([np.asarray(image), np.full((height, width, 1), 255, np.uint8)], -1)
    return rgba


def sample_photo_spec(rng: np.random.Generator, photos: tuple[str, ...]) -> dict[str, Any]:
    """Random photo crop and tint (grey photos become duotone-ish prints)."""
    w = float(rng.uniform(0.5, 1.0))
    h = float(rng.uniform(0.5, 1.0))
    x0, y0 = float(rng.uniform(0, 1 - w)), float(rng.uniform(0, 1 - h))
    tint = rng.uniform(0.5, 1.0, 3) if rng.random() < 0.5 else np.ones(3)
    return {
        "name": str(rng.choice(photos)),
        "crop": [round(x0, 4), round(y0, 4), round(x0 + w, 4), round(y0 + h, 4)],
        "tint": tint.round(4).tolist(),
    }


def draw_photo(spec: dict[str, Any], max_size: int = 512) -> np.ndarray:
    """(H, W, 4) uint8 RGBA crop of a bundled photo, tinted, at most `max_size` a side."""
    source = photo(spec["name"])
    h, w = source.shape[:2]
    x0, y0, x1, y1 = spec["crop"]
    r0, c0 = int(y0 * h), int(x0 * w)
    crop = source[r0 : max(int(y1 * h), r0 + 2), c0 : max(int(x1 * w), c0 + 2)]
    tinted = (crop.astype(np.float32) * np.asarray(spec["tint"], np.float32)).clip(0, 255)
    image = Image.fromarray(tinted.astype(np.uint8))
    image.thumbnail((max_size, max_size))
    rgb = np.asarray(image)
    return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], -1)
