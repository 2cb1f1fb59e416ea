"""On-disk layout of a generated props dataset, its manifest and its object splits.

One folder per object; everything a loader needs is inside it::

    OUT/manifest.json                 seed, counts, resolution, splits, generator version
    OUT/objects/000017/
        input/000.png ...             RGBA renders on the input ring (transparent film)
        target/000.png ...            RGBA renders at random poses
        transforms_input.json         NeRF form: OpenGL camera-to-world, camera_angle_x,
        transforms_target.json        fl_x fl_y cx cy w h
                                      (engine.camera_formats.write_nerf_transforms)
        prop.json                     the sampled prop spec, normalisation, surface points
        done.json                     completion marker, written last

A scenes dataset (`gd data make --kind scenes`) keeps one folder a scene under
`OUT/scenes/` (context and target RGB views, 16-bit depth PNGs, transforms with near/far,
room.json); engine/data/README.md describes it.

An object counts as finished only when `done.json` exists, so a run killed half-way
through an object redoes that object and nothing else. Object i's content depends only on
(seed, i), and its split only on (seed, i) too, so growing a dataset keeps every existing
object and its split.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_open

# Bump when the content of objects changes for the same (seed, index): a resumed run
# refuses to mix objects made by different generator versions.
GENERATOR_VERSION = "1"
# The same for scenes (`gd data make --kind scenes`).
SCENE_GENERATOR_VERSION = "1"

MANIFEST_NAME = "manifest.json"
OBJECTS_DIR = "objects"
# Dataset kinds: what `gd data make --kind` renders, the manifest `format` recording it and
# the folder holding one sub-folder per item. A props manifest predates the "kind" key;
# its format says the kind.
KINDS = ("props", "scenes")
KIND_FORMATS = {"props": "gd-props", "scenes": "gd-scenes"}
ITEM_DIRS = {"props": OBJECTS_DIR, "scenes": "scenes"}
# Scenes: two context views and targets on an RE10K-like clip, RGB and 16-bit depth PNGs.
SCENE_VIEW_SPLITS = ("context", "target")
ROOM_NAME = "room.json"
# Depth PNGs hold round(depth / DEPTH_SCALE) as uint16 (metres = value * DEPTH_SCALE, up to
# 65.5 m); 0 where no surface was hit.
DEPTH_SCALE = 0.001
DONE_NAME = "done.json"
PROP_NAME = "prop.json"
VIEW_SPLITS = ("input", "target")
SPLITS = ("train", "val", "test")
# Fractions of objects in val and test; the rest train. Per-object hashing rather than a
# shuffled list, so adding objects never moves an existing object to another split.
DEFAULT_SPLIT_FRACTIONS = {"val": 0.05, "test": 0.05}
# Salt for the split stream so it never coincides with the prop or view streams.
_SPLIT_STREAM = 7


def object_dir(root: str | os.PathLike, index: int) -> Path:
    """Folder of object `index` (zero-padded so listings sort numerically)."""
    return Path(root) / OBJECTS_DIR / f"{index:06d}"


def scene_dir(root: str | os.PathLike, index: int) -> Path:
    """Folder of scene `index` of a scenes dataset."""
    return Path(root) / ITEM_DIRS["scenes"] / f"{index:06d}"


def transforms_path(obj_dir: str | os.PathLike, split: str) -> Path:
    """`transforms_<split>.json` of one object ("input" or "target") or scene ("context"
    or "target")."""
    if split not in VIEW_SPLITS + SCENE_VIEW_SPLITS:
        raise ValueError(
            f"view split must be one of {VIEW_SPLITS + SCENE_VIEW_SPLITS}, got {split!r}"
        )
    return Path(obj_dir) / f"transforms_{split}.json"


def manifest_kind(manifest: dict[str, Any]) -> str:
    """The kind ("props" or "scenes") of a dataset manifest: its "kind" key, else its
    format (props manifests have no "kind"); ValueError for an unknown one."""
    kind = manifest.get("kind")
    if kind is None:
        kinds = {fmt: name for name, fmt in KIND_FORMATS.items()}
        kind = kinds.get(manifest.get("format", "gd-props"))
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind (kind {manifest.get('kind')!r}, "
                         f"format {manifest.get('format')!r})")  # fmt: skip
    return kind


def is_finished(obj_dir: str | os.PathLike) -> bool:
    """True when the object's completion marker exists (it is written last)."""
    return (Path(obj_dir) / DONE_NAME).is_file()


def start_item(item_dir: str | os.PathLike, overwrite: bool = False) -> bool:
    """Make an empty folder for one object or scene about to be rendered.

    False (and nothing touched) when it is finished and `overwrite` is off, so a resumed
    run skips it; otherwise the leftovers of an interrupted run are removed first, so an
    item is always rendered from scratch into a fresh folder.
    """
    item = Path(item_dir)
    if is_finished(item) and not overwrite:
        return False
    if item.exists():
        shutil.rmtree(item)
    item.mkdir(parents=True)
    return True


class ItemGenerator:
    """Base of the Blender generators (props: `generator.Generator`, scenes:
    `scene_generator.SceneGenerator`): item i of the dataset at `root` made with `seed` is
    rendered into `item_dir(root, i)` by the subclass's `_render`."""

    item_dir: Callable[[str | os.PathLike, int], Path]
    """The folder of item i (`object_dir` or `scene_dir`)."""

    def __init__(self, root: str | os.PathLike, seed: int) -> None:
        self.root, self.seed = Path(root), int(seed)

    def generate(self, index: int, overwrite: bool = False) -> dict[str, Any]:
        """Render item `index` unless it is finished (`start_item`). Returns its done marker,
        written last: the index, the seconds taken and what `_render` returns ({"index":
        index, "skipped": True} for a finished item, untouched)."""
        out = self.item_dir(self.root, index)
        if not start_item(out, overwrite):
            return {"index": index, "skipped": True}
        start = time.perf_counter()
        facts = self._render(out, index)
        done = {"index": index, "seconds": round(time.perf_counter() - start, 3), **facts}
        write_json_atomic(out / DONE_NAME, done)  # last: marks the item finished
        return done

    def _render(self, out: Path, index: int) -> dict[str, Any]:
        """Write item `index`'s files into the fresh folder `out`; returns what its done
        marker records besides the index and the seconds."""
        raise NotImplementedError


def split_of(seed: int, index: int, fractions: dict[str, float] | None = None) -> str:
    """The split ("train", "val" or "test") of object `index`, fixed by (seed, index)."""
    fractions = DEFAULT_SPLIT_FRACTIONS if fractions is None else fractions
    u = float(np.random.default_rng([seed, index, _SPLIT_STREAM]).random())
    edge = 0.0
    for name in ("val", "test"):
        edge += float(fractions.get(name, 0.0))
        if u < edge:
            return name
    return "train"


def split_indices(
    seed: int, indices: Iterable[int], fractions: dict[str, float] | None = None
) -> dict[str, list[int]]:
    """Group object indices by split, each list sorted."""
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for index in sorted(indices):
        out[split_of(seed, index, fractions)].append(index)
    return out


def finished_in_split(
    manifest: dict[str, Any], split: str, item_dir: Callable[[int], Path]
) -> list[int]:
    """Indices of the finished objects (or scenes) of `split` ("train", "val", "test" or
    "all") listed in a dataset's manifest; `item_dir(i)` is item i's folder.

    The manifest is rewritten only at the end of a run, so the completion markers on disk,
    not its counts, say what is finished; and while a dataset is still being made (it has
    fewer finished items than `objects`), items finished since the manifest was written
    count too, in the split their (seed, index) puts them in (`split_of`), so training can
    start on a dataset that is still growing.
    """
    if split == "all":
        names: tuple[str, ...] = SPLITS
    elif split in SPLITS:
        names = (split,)
    else:
        raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
    ids = {i for name in names for i in manifest["splits"].get(name, [])}
    total, seed = manifest.get("objects"), manifest.get("seed")
    growing = isinstance(total, int) and manifest.get("finished", total) < total
    if growing and isinstance(seed, int):
        fractions = manifest.get("split_fractions")
        ids |= {i for i in range(total) if split_of(seed, i, fractions) in names}
    return [i for i in sorted(ids) if is_finished(item_dir(i))]


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON (creating the folder) with `engine.atomic`, so readers (and resumed
    runs) never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=1, allow_nan=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file; errors name the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read JSON ({err})") from None
    except RecursionError:  # the parser recurses once a nesting level
        raise ValueError(f"{path}: cannot read JSON (nested too deeply)") from None


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The dataset's manifest.json (ValueError naming the file if it is not a dataset)."""
    path = Path(root) / MANIFEST_NAME
    manifest = read_json(path)
    if not isinstance(manifest, dict) or "seed" not in manifest or "splits" not in manifest:
        raise ValueError(f"{path}: not a props dataset manifest (needs 'seed' and 'splits')")
    return manifest
