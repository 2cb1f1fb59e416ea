"""PlayCanvas SOG reader and writer, version 2 (DESIGN.md §6), with no GPU.

A SOG scene is a `meta.json` and WebP images (lossless, RGBA, W × H texels, texel i holding
splat i in row-major order; W = ceil(sqrt(N) / 4) · 4, H = ceil(N / W / 4) · 4 as
splat-transform writes them, any size >= N read). `.sog` is the same files in one ZIP
(stored, not deflated); otherwise `meta.json` names its images, which lie beside it.
Layout (splat-transform 3.7 `write-sog.ts` / `read-sog.ts`):

    meta.json  {"version": 2, "count": N, "asset": {...},
                "means":  {"mins": [3], "maxs": [3], "files": ["means_l.webp", "means_u.webp"]},
                "scales": {"codebook": [256], "files": ["scales.webp"]},
                "quats":  {"files": ["quats.webp"]},
                "sh0":    {"codebook": [256], "files": ["sh0.webp"]},
                "shN":    {"count": P, "bands": d, "codebook": [256],       (SH degree d >= 1)
                           "files": ["shN_centroids.webp", "shN_labels.webp"]}}
    means_l/_u  RGB = low / high byte of a 16-bit u per axis:
                l = mins + (maxs - mins) · u / 65535, position = sign(l) · (exp(|l|) - 1)
                (the log transform sign(x) · ln(|x| + 1) spends the bits near the centre)
    quats       RGB = the three smaller components of the unit quaternion (w x y z order,
                the largest made positive) times sqrt(2), byte = 255 · (c / 2 + 0.5);
                A = 252 + index of the largest (recomputed as sqrt(1 - Σ c²))
    scales      RGB = indices into `scales.codebook` (log-scales, shared by the 3 axes)
    sh0         RGB = indices into `sh0.codebook` (SH DC coefficients), A = opacity · 255
    shN_labels  RG = 16-bit index (low, high) into a palette of P SH-rest vectors
    shN_centroids  64 · K texels a row, one row per 64 palette entries: entry e's
                coefficient j (j < K = (d+1)² - 1) at column (e % 64) · K + j, row e // 64,
                RGB = indices into `shN.codebook` for the colour channels

Codebooks hold float32 values (readers decode into float32 tables). Quantisation: each
log-scale, DC and SH value becomes its nearest codebook entry (the codebooks are 1-D
k-means fits, 256 entries); positions 16 bits in the log domain; rotations 8 bits per
component; opacity 8 bits. SH rest vectors go through the palette: with N <= 65,536 every
splat keeps its own entry (no clustering), larger scenes are clustered by a two-level
k-means (256 coarse clusters, each split in proportion to its size) into 65,536 entries.
The writer sorts the splats along a Morton curve first, as splat-transform does, so that
neighbouring texels hold neighbouring splats and the WebP images compress; `sort=False`
keeps the input order.

Axes: the values are stored as given (the file's frame); `engine.io.save` / `load` turn
them into PLY space (engine/io/axes.py), as SOG readers assume.

The reader bounds everything before it allocates: meta.json size, the count
(`engine.io.limits`), each image's declared size in the ZIP and on disk, and each image's
pixel count (from its header, before decoding) against the count.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_open, write_atomic
from ..gaussians import Gaussians, GaussiansError
from .compressed_ply import morton_order

__all__ = ["SogFormatError", "read_sog", "write_sog", "SogData", "MAX_SOG_GAUSSIANS"]

# WebP images are at most 16383 texels a side; a SOG cannot hold more splats than that.
MAX_SOG_GAUSSIANS = 16383 * 16383
CODEBOOK_SIZE = 256
MAX_PALETTE = 1 << 16  # labels are 16 bits
CENTROIDS_PER_ROW = 64
_SH_COEFFS = {1: 3, 2: 8, 3: 15}
_META_LIMIT = 1 << 20  # meta.json: a few KiB in practice (three 256-entry codebooks)
# A lossless WebP of T RGBA texels: at most ~4 bytes a texel plus headers.
_BYTES_PER_TEXEL = 5
_FILE_SLACK = 1 << 16
_NAMES = {
    "means": ["means_l.webp", "means_u.webp"],
    "scales": ["scales.webp"],
    "quats": ["quats.webp"],
    "sh0": ["sh0.webp"],
    "shN": ["shN_centroids.webp", "shN_labels.webp"],
}


class SogFormatError(ValueError):
    """A file is not a SOG this module can read; the message names the file and the problem."""


class _Problem(Exception):
    """Internal: what is wrong with a file; `read_sog` adds the path."""


@dataclass
class SogData:
    """What `read_sog` returns: the Gaussians (file order, file axes) and the palette size."""

    gaussians: Gaussians
    palette_size: int


def texture_size(n: int) -> tuple[int, int]:
    """(width, height) splat-transform gives the per-splat images of an N-splat SOG."""
    width = max(4, math.ceil(math.sqrt(n) / 4) * 4)
    height = max(4, math.ceil(n / width / 4) * 4)
    return width, height


# ============================================================================ writing


def write_sog(
    path: str | os.PathLike[str],
    gaussians: Gaussians,
    *,
    sort: bool = True,
    iterations: int = 10,
    seed: int = 0,
) -> None:
    """Write `gaussians` as SOG: a `.sog` ZIP bundle, or `meta.json` plus images beside it.

    path: `*.sog` for the bundle; a name ending in `meta.json` for loose files (images are
        named `<prefix>means_l.webp` ... where `<prefix>` is what precedes `meta.json`).
    sort: Morton-sort the splats first (see the module doc); False keeps the input order.
    iterations: k-means iterations for the codebooks and the SH palette.
    seed: for the SH palette's k-means initialisation (only used above 65,536 splats).
    Raises ValueError for zero Gaussians or more than `MAX_SOG_GAUSSIANS`. Each file is
    written atomically; the bundle as a whole.
    """
    path = Path(path)
    bundle = path.name.lower().endswith(".sog")
    if not bundle and not path.name.lower().endswith("meta.json"):
        raise ValueError(f"{path}: a SOG is written as '*.sog' or '*meta.json'")
    gaussians.validate()
    n = len(gaussians)
    if n == 0:
        raise ValueError("SOG images need at least one texel: cannot write zero Gaussians")
    if n > MAX_SOG_GAUSSIANS:
        raise ValueError(f"{n} Gaussians do not fit SOG's 16383 x 16383 images")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    images, meta = encode_sog(gaussians, sort=sort, iterations=iterations, seed=seed)
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    if bundle:
        with atomic_open(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for name, data in images.items():
                z.writestr(_zip_info(name), data)
            z.writestr(_zip_info("meta.json"), meta_bytes)
        return
    prefix = path.name[: -len("meta.json")]
    if prefix:  # the loose images carry the meta's prefix, so scenes can share a folder
        for entry in meta.values():
            if isinstance(entry, dict) and "files" in entry:
                entry["files"] = [prefix + name for name in entry["files"]]
        meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    for name, data in images.items():
        write_atomic(path.parent / (prefix + name), data)
    write_atomic(path, meta_bytes)  # last: a reader never sees meta.json before its images


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # equal input, equal bytes
    info.compress_type = zipfile.ZIP_STORED
    return info


def encode_sog(
    gaussians: Gaussians, *, sort: bool = True, iterations: int = 10, seed: int = 0
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The WebP images (name -> bytes) and the meta.json object of a SOG of `gaussians`."""
    g = gaussians.detach().to("cpu", torch.float64)
    n, degree = len(g), g.sh_degree
    means = g.means.numpy()
    order = morton_order(means) if sort else np.arange(n)
    width, height = texture_size(n)

    def image(channels: list[np.ndarray], alpha: np.ndarray | int = 255) -> bytes:
        texels = np.zeros((width * height, 4), dtype=np.uint8)
        for c, values in enumerate(channels):
            texels[:n, c] = values
        texels[:n, 3] = alpha
        return _webp(texels.reshape(height, width, 4))

    images: dict[str, bytes] = {}
    # means: 16 bits per axis of the log-transformed positions.
    logged = np.sign(means[order]) * np.log1p(np.abs(means[order]))
    mins, maxs = logged.min(axis=0), logged.max(axis=0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    u = np.clip(np.round((logged - mins) / span * 65535.0), 0, 65535).astype(np.uint32)
    images["means_l.webp"] = image([u[:, a] & 0xFF for a in range(3)])
    images["means_u.webp"] = image([u[:, a] >> 8 for a in range(3)])
    # quats: smallest three, 8 bits each; alpha tags the largest component.
    largest, packed = _pack_quats(g.quats.numpy()[order])
    images["quats.webp"] = image([packed[:, j] for j in range(3)], 252 + largest)
    # scales and DC colour: one 256-entry codebook each, shared by the three columns.
    scale_book, scale_labels = _codebook(g.log_scales.numpy()[order], iterations)
    images["scales.webp"] = image([scale_labels[:, j] for j in range(3)])
    dc_book, dc_labels = _codebook(g.sh[:, 0, :].numpy()[order], iterations)
    alpha = np.round(torch.sigmoid(g.opacity_logits).numpy()[order] * 255.0).astype(np.uint8)
    images["sh0.webp"] = image([dc_labels[:, j] for j in range(3)], alpha)
    meta: dict[str, Any] = {
        "version": 2,
        "asset": {"generator": "engine.io.sog"},
        "count": n,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": list(_NAMES["means"])},
        "scales": {"codebook": scale_book.tolist(), "files": list(_NAMES["scales"])},
        "quats": {"files": list(_NAMES["quats"])},
        "sh0": {"codebook": dc_book.tolist(), "files": list(_NAMES["sh0"])},
    }
    if degree > 0:
        k = _SH_COEFFS[degree]
        # (N, K, 3) -> channel-major rows (N, 3K), as f_rest_* are laid out.
        rest = g.sh[:, 1:, :].numpy()[order].transpose(0, 2, 1).reshape(n, 3 * k)
        palette, labels = _palette(rest, iterations, seed)
        book, entries = _codebook(palette, iterations)  # (P, 3K) indices
        p = len(palette)
        rows = math.ceil(p / CENTROIDS_PER_ROW)
        cent = np.zeros((rows * CENTROIDS_PER_ROW, k, 4), dtype=np.uint8)
        cent[:p, :, :3] = entries.reshape(p, 3, k).transpose(0, 2, 1)
        cent[:, :, 3] = 255
        images["shN_centroids.webp"] = _webp(cent.reshape(rows, CENTROIDS_PER_ROW * k, 4))
        images["shN_labels.webp"] = image([labels & 0xFF, labels >> 8])
        meta["shN"] = {
            "count": p,
            "bands": degree,
            "codebook": book.tolist(),
            "files": list(_NAMES["shN"]),
        }
    return images, meta


def _webp(texels: np.ndarray) -> bytes:
    """(H, W, 4) uint8 -> lossless WebP bytes; `exact` keeps RGB under alpha 0 (the opacity
    channel can be 0 where the colour labels still matter)."""
    buf = io.BytesIO()
    Image.fromarray(texels, "RGBA").save(buf, "WEBP", lossless=True, exact=True, quality=75)
    return buf.getvalue()


def _pack_quats(quats_wxyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) index of the largest component and (N, 3) uint8 of the other three."""
    q = quats_wxyz / np.linalg.norm(quats_wxyz, axis=1, keepdims=True)
    rows = np.arange(len(q))
    largest = np.argmax(np.abs(q), axis=1)  # first maximum, as splat-transform
    q = np.where(q[rows, largest][:, None] < 0, -q, q) * math.sqrt(2.0)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    small = np.take_along_axis(q, others, axis=1)
    packed = np.clip(np.round(255.0 * (small * 0.5 + 0.5)), 0, 255).astype(np.uint8)
    return largest.astype(np.uint8), packed


def _codebook(values: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """A 256-entry float32 codebook for all of `values` (any shape) and each value's index
    of its nearest entry (uint8, `values`' shape): 1-D k-means (Lloyd) from quantiles."""
    flat = values.reshape(-1).astype(np.float64)
    uniq = np.unique(flat.astype(np.float32)).astype(np.float64)
    if len(uniq) <= CODEBOOK_SIZE:
        book = uniq
    else:
        s = np.sort(flat)
        book = np.unique(s[np.linspace(0, len(s) - 1, CODEBOOK_SIZE).round().astype(int)])
        csum = np.concatenate([[0.0], np.cumsum(s)])
        for _ in range(iterations):
            edges = np.searchsorted(s, (book[1:] + book[:-1]) / 2)
            lo = np.concatenate([[0], edges])
            hi = np.concatenate([edges, [len(s)]])
            count = hi - lo
            means = np.where(count > 0, (csum[hi] - csum[lo]) / np.maximum(count, 1), book)
            if np.array_equal(means, book):
                break
            book = np.unique(means)
    book = np.unique(book.astype(np.float32)).astype(np.float64)  # what readers decode
    return book.astype(np.float32), _nearest(book, flat).reshape(values.shape).astype(np.uint8)


def _nearest(book: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the sorted `book` for each value."""
    i = np.clip(np.searchsorted(book, values), 1, max(len(book) - 1, 1))
    if len(book) == 1:
        return np.zeros(len(values), dtype=np.int64)
    left = np.abs(values - book[i - 1]) <= np.abs(book[i] - values)
    return np.where(left, i - 1, i)


def _palette(rest: np.ndarray, iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, D) palette of SH-rest rows and each row's index (uint32). Up to 65,536 rows each
    keep their own entry; more are clustered by a two-level k-means (module doc)."""
    n = len(rest)
    if n <= MAX_PALETTE:
        return rest, np.arange(n, dtype=np.uint32)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(rest.astype(np.float32))
    coarse, coarse_labels = _kmeans(x, CODEBOOK_SIZE, iterations, gen)
    sizes = torch.bincount(coarse_labels, minlength=len(coarse))
    share = _shares(sizes, MAX_PALETTE)
    palette, labels = [], torch.empty(n, dtype=torch.long)
    base = 0
    order = torch.argsort(coarse_labels, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    threads = torch.get_num_threads()
    # Hundreds of small problems: worker threads only add hand-over cost (10x slower on a
    # busy two-core machine, measured), so they run on this thread.
    torch.set_num_threads(1)
    try:
        for c in range(len(coarse)):
            members = order[int(starts[c]) : int(starts[c] + sizes[c])]
            if len(members) == 0:
                continue
            centres, sub = _kmeans(x[members], int(share[c]), iterations, gen)
            palette.append(centres)
            labels[members] = sub + base
            base += len(centres)
    finally:
        torch.set_num_threads(threads)
    return torch.cat(palette).double().numpy(), labels.numpy().astype(np.uint32)


def _shares(sizes: torch.Tensor, total: int) -> torch.Tensor:
    """Entries per cluster in proportion to its size (largest remainders first), at least
    one for each non-empty cluster, never more than its members, `total` at most."""
    quota = sizes.double() / sizes.sum() * total
    share = torch.minimum(torch.floor(quota).long().clamp_min(1), sizes) * (sizes > 0)
    while int(share.sum()) > total:  # the minimum of one each overshot: trim the largest
        share[int(torch.argmax(share))] -= 1
    spare = total - int(share.sum())
    for i in torch.argsort(quota - torch.floor(quota), descending=True).tolist():
        if spare <= 0:
            break
        if share[i] < sizes[i]:
            share[i] += 1
            spare -= 1
    return share


def _kmeans(x: torch.Tensor, k: int, iterations: int, gen: torch.Generator):
    """Lloyd's k-means of rows `x` (M, D) into at most k centres (k-means++-free: a random
    subset starts it); returns centres (k', D) and labels (M,)."""
    m = len(x)
    if m <= k:
        return x.clone(), torch.arange(m)
    centres = x[torch.randperm(m, generator=gen)[:k]].clone()
    for _ in range(iterations):
        labels = _assign(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres, _assign(x, centres)


def _assign(x: torch.Tensor, centres: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    return torch.cat([torch.cdist(x[i : i + chunk], centres).argmin(dim=1)
                      for i in range(0, len(x), chunk)])  # fmt: skip


# ============================================================================ reading


def read_sog(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> SogData:
    """Read a SOG version 2: a `.sog` ZIP bundle or a `meta.json` with its images beside it.

    Returns the splats in file order, the file's axes. Raises `SogFormatError` for anything
    malformed (including SOG version 1, which is refused) and `OSError` if unreadable.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04" or path.name.lower().endswith(".sog"):
            try:
                with zipfile.ZipFile(path) as z:
                    return _decode(lambda name, cap: _zip_member(z, name, cap), device)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as e:
                raise _Problem(f"not a readable ZIP bundle ({e})") from None
        folder = path.parent
        meta = _regular_file(path, _META_LIMIT, "meta.json")

        def loose(name: str, cap: int) -> bytes:
            if name == "meta.json":
                return meta
            return _regular_file(folder / name, cap, name)

        return _decode(loose, device)
    except _Problem as e:
        raise SogFormatError(f"{path}: {e}") from None


def _zip_member(z: zipfile.ZipFile, name: str, cap: int) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise _Problem(f"the bundle has no {name!r}") from None
    if info.file_size > cap:
        raise _Problem(f"{name!r} declares {info.file_size} bytes, more than {cap} it can need")
    try:
        with z.open(info) as f:
            data = f.read(cap + 1)  # never trust the declared size: read at most cap + 1
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as e:
        raise _Problem(f"{name!r} cannot be read from the bundle ({e})") from None
    except OSError as e:
        raise _Problem(f"{name!r} cannot be read from the bundle ({e})") from None
    if len(data) > cap:
        raise _Problem(f"{name!r} holds more than the {cap} bytes it can need")
    return data


def _regular_file(path: Path, cap: int, name: str) -> bytes:
    """At most `cap` bytes of a regular file (not a FIFO or device: opened non-blocking)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _Problem(f"{name!r} is missing (it should lie beside meta.json)") from None
    except OSError as e:
        raise _Problem(f"{name!r} cannot be opened ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise _Problem(f"{name!r} is not a regular file")
        data = f.read(cap + 1)
    if len(data) > cap:
        raise _Problem(f"{name!r} is larger than the {cap} bytes it can need")
    return data


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _Problem(f"{where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Problem(f"{where}.{key} is not a valid {getattr(kind, '__name__', 'value')}")
    return value


def _numbers(obj: Any, key: str, where: str, count: int | None = None) -> np.ndarray:
    values = _field(obj, key, list, where)
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok or (count is not None and len(values) != count):
        raise _Problem(f"{where}.{key} must be a list of {count or 'some'} numbers")
    arr = np.array(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise _Problem(f"{where}.{key} holds NaN/Inf")
    return arr


def _files(obj: Any, where: str, count: int) -> list[str]:
    names = _field(obj, "files", list, where)
    if len(names) != count or not all(isinstance(s, str) and s for s in names):
        raise _Problem(f"{where}.files must name {count} image(s)")
    for name in names:
        if "/" in name or "\\" in name or name in (".", "..") or ":" in name:
            raise _Problem(f"{where}.files: {name[:80]!r} is not a plain file name")
    return names


def _codebook_field(obj: Any, where: str) -> np.ndarray:
    book = _numbers(obj, "codebook", where)
    if not 1 <= len(book) <= CODEBOOK_SIZE:
        raise _Problem(f"{where}.codebook must hold 1 to {CODEBOOK_SIZE} numbers")
    return book.astype(np.float32)  # readers decode into float32 tables


def _decode(read, device) -> SogData:
    try:
        meta = json.loads(read("meta.json", _META_LIMIT).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _Problem(f"meta.json does not parse ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise _Problem("meta.json is not a JSON object")
    version = meta.get("version")
    if version is None:
        raise _Problem("SOG version 1 (no 'version' in meta.json) is not supported")
    if version != 2:
        raise _Problem(f"unsupported SOG version {version!r} (supported: 2)")
    n = _field(meta, "count", int, "meta")
    if n < 1:
        raise _Problem(f"meta.count {n} is not a positive number of splats")
    if n > MAX_SOG_GAUSSIANS:
        raise _Problem(f"meta.count {n} is more than SOG's images can hold")
    _check_count(n)

    def texels(key: str, name: str, min_texels: int, max_texels: int) -> np.ndarray:
        data = read(name, max_texels * _BYTES_PER_TEXEL + _FILE_SLACK)
        return _decode_webp(data, f"{key} image {name!r}", min_texels, max_texels)

    # Per-splat images: at least N texels, at most splat-transform's size with room to
    # spare (4x plus a margin covers power-of-two layouts of other writers).
    most = 4 * n + 4096

    means = _field(meta, "means", dict, "meta")
    mins, maxs = _numbers(means, "mins", "means", 3), _numbers(means, "maxs", "means", 3)
    lo_name, hi_name = _files(means, "means", 2)
    lo = texels("means", lo_name, n, most)[:n, :3].astype(np.float64)
    hi = texels("means", hi_name, n, most)[:n, :3].astype(np.float64)
    span = np.where(maxs != mins, maxs - mins, 1.0)
    logged = mins + span * ((lo + 256.0 * hi) / 65535.0)
    with np.errstate(over="ignore"):  # checked just below
        positions = np.sign(logged) * np.expm1(np.abs(logged))
    if not np.isfinite(positions).all():
        raise _Problem("means mins/maxs decode to positions that overflow")

    quats_meta = _field(meta, "quats", dict, "meta")
    q = texels("quats", _files(quats_meta, "quats", 1)[0], n, most)[:n]
    tags = q[:, 3].astype(np.int64) - 252
    if ((tags < 0) | (tags > 3)).any():
        raise _Problem("quats: an alpha byte is not 252..255 (the largest component's index)")
    small = (q[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / math.sqrt(2.0)
    largest = np.sqrt(np.maximum(0.0, 1.0 - (small**2).sum(axis=1)))
    quats = np.zeros((n, 4))
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[tags]
    np.put_along_axis(quats, others, small, axis=1)
    np.put_along_axis(quats, tags[:, None], largest[:, None], axis=1)

    scales_meta = _field(meta, "scales", dict, "meta")
    scale_book = _codebook_field(scales_meta, "scales")
    s = texels("scales", _files(scales_meta, "scales", 1)[0], n, most)[:n, :3]
    log_scales = _lookup(scale_book, s, "scales")

    sh0_meta = _field(meta, "sh0", dict, "meta")
    dc_book = _codebook_field(sh0_meta, "sh0")
    c = texels("sh0", _files(sh0_meta, "sh0", 1)[0], n, most)[:n]
    dc = _lookup(dc_book, c[:, :3], "sh0")
    # Byte 0 / 255 are opacity 0 / 1, whose logits are infinite: a quarter step inside.
    alpha = np.clip(c[:, 3].astype(np.float64) / 255.0, 0.25 / 255.0, 1.0 - 0.25 / 255.0)

    sh = dc[:, None, :]
    palette_size = 0
    if "shN" in meta:
        sh_n = _field(meta, "shN", dict, "meta")
        bands = _field(sh_n, "bands", int, "shN")
        if bands not in _SH_COEFFS:
            raise _Problem(f"shN.bands {bands} is not 1, 2 or 3")
        k = _SH_COEFFS[bands]
        palette_size = _field(sh_n, "count", int, "shN")
        if not 1 <= palette_size <= MAX_PALETTE:
            raise _Problem(f"shN.count {palette_size} is not in 1..{MAX_PALETTE}")
        book = _codebook_field(sh_n, "shN")
        cent_name, label_name = _files(sh_n, "shN", 2)
        rows = math.ceil(palette_size / CENTROIDS_PER_ROW)
        cent_texels = rows * CENTROIDS_PER_ROW * k
        cent = texels("shN", cent_name, cent_texels, cent_texels)
        labels_t = texels("shN", label_name, n, most)[:n]
        labels = labels_t[:, 0].astype(np.int64) | (labels_t[:, 1].astype(np.int64) << 8)
        if (labels >= palette_size).any():
            raise _Problem(f"shN: a label is beyond the palette of {palette_size} entries")
        # cent: (rows, 64 * k) texels; entry e's coefficient j at (e // 64, (e % 64) k + j).
        entries = cent.reshape(rows * CENTROIDS_PER_ROW, k, 4)[:palette_size, :, :3]
        rest = _lookup(book, entries, "shN")[labels]  # (N, k, 3)
        sh = np.concatenate([sh, rest], axis=1)

    arrays = {
        "means": positions,
        "log_scales": log_scales,
        "quats": quats,
        "opacity_logits": np.log(alpha / (1.0 - alpha)),
        "sh": sh,
    }
    tensors = {a: torch.from_numpy(v.astype(np.float32)).to(device) for a, v in arrays.items()}
    try:
        return SogData(Gaussians(**tensors), palette_size)
    except GaussiansError as e:
        raise _Problem(str(e)) from None


def _check_count(n: int) -> None:
    from .limits import check_gaussian_count  # the shared cap on declared counts

    check_gaussian_count(n, _Problem)


def _lookup(book: np.ndarray, indices: np.ndarray, where: str) -> np.ndarray:
    if int(indices.max(initial=0)) >= len(book):
        raise _Problem(f"{where}: an index is beyond its codebook of {len(book)} entries")
    return book[indices].astype(np.float64)


def webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP's header (VP8L, VP8X or VP8 chunk), or None if the
    header is not one of those. Read before anything is decoded."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    return None


def _decode_webp(data: bytes, what: str, min_texels: int, max_texels: int) -> np.ndarray:
    """(W·H, 4) uint8 texels of a WebP whose size, read from its header before anything is
    decoded, is between `min_texels` and `max_texels`."""
    size = webp_size(data)
    if size is None:
        raise _Problem(f"{what} is not a WebP image")
    w, h = size
    if not min_texels <= w * h <= max_texels:
        raise _Problem(f"{what} is {w}x{h} texels; it must hold {min_texels} to {max_texels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["WEBP"]) as im:
                if im.size != (w, h) or getattr(im, "n_frames", 1) != 1:
                    raise _Problem(f"{what}: its header and its image disagree (animated?)")
                rgba = np.asarray(im.convert("RGBA"))
    except _Problem:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as e:
        raise _Problem(f"{what} does not decode ({type(e).__name__})") from None
    except Image.DecompressionBombWarning:
        raise _Problem(f"{what} is too large to decode") from None
    if rgba.shape != (h, w, 4):
        raise _Problem(f"{what} decodes to {rgba.shape}, not its header's {w}x{h}")
    return rgba.reshape(-1, 4)
