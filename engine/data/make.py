"""Make (or resume) a props or scenes dataset with several Blender worker processes.

bpy holds one scene per process, so parallelism is processes: each worker is
`python -m engine.data.worker`, fed object (or scene) indices on stdin one at a time (so
fast and slow items balance across workers) and answering on stdout. Finished items
(done.json present) are skipped, which makes a killed run resumable with the same command.
The manifest records the kind; a folder of one kind is never resumed as the other.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cli_args import int_range, name_list, nonnegative_int, option, positive_int
from .camera_poses import INPUT_RIGS
from .layout import (
    DEFAULT_SPLIT_FRACTIONS,
    GENERATOR_VERSION,
    ITEM_DIRS,
    KIND_FORMATS,
    KINDS,
    MANIFEST_NAME,
    SCENE_GENERATOR_VERSION,
    SPLITS,
    is_finished,
    manifest_kind,
    read_manifest,
    split_indices,
    split_of,
    write_json_atomic,
)
from .worker import DONE, FAIL

# Image sides `gd data make` renders: below 8 px nothing is recognisable, above 8192 px
# one object's views alone take gigabytes.
RESOLUTIONS = int_range(8, 8192)

# Manifest keys that must match when resuming into an existing folder.
_FIXED_KEYS = ("seed", "resolution", "views", "generator_version", "render")


# Views per item when MakeConfig leaves them None: props (input ring, random targets);
# scenes (the context pair, targets on the clip).
DEFAULT_VIEWS = {"props": (4, 8), "scenes": (2, 6)}


@dataclass
class MakeConfig:
    """What to make. Object (or scene) i depends only on (seed, i) and these settings.

    `kind` is "props" (objects on a transparent film) or "scenes" (interiors with depth,
    `procedural.room_spec`); `objects` counts either. `views_in` and `views_target`
    default per kind (DEFAULT_VIEWS); scenes always have 2 context views (`views_in`).
    """

    out: Path
    objects: int
    resolution: int = option(256, "image side in pixels (8..8192)", RESOLUTIONS)
    seed: int = option(0, "object i depends on (seed, i)", nonnegative_int)
    workers: int = option(0, "Blender processes (0: one a core)", nonnegative_int)
    # None: DEFAULT_VIEWS[kind] (set in __post_init__).
    views_in: int | None = option(
        None,
        "input views on the ring (props, default 4); scenes have 2 context views",
        positive_int,
    )
    views_target: int | None = option(
        None,
        "target views (props: random poses, default 8; scenes: on the clip between and beyond "
        "the context pair, default 6)",
        positive_int,
    )
    # One of engine.data.camera_poses.INPUT_RIGS.
    input_rig: str = option(
        "ring",
        "input cameras: a ring at 20 degrees (the model's training views) or spread over the "
        "upper hemisphere",
    )
    samples: int = option(4, "Cycles samples a pixel", positive_int)
    denoise: bool = True
    progress: bool = True
    # None: all. Objects of other splits stay unrendered and a later run without the filter
    # fills them in, so the held-out split can be made first and training data grown while
    # a model trains.
    splits: tuple[str, ...] | None = option(
        None,
        "render only objects of these splits, comma-separated (e.g. test,val first; run again "
        "without it for the rest)",
        name_list(SPLITS),
    )
    kind: str = option("props", "props (transparent film) or scenes (rooms with depth)")

    def __post_init__(self) -> None:
        defaults = DEFAULT_VIEWS.get(self.kind, DEFAULT_VIEWS["props"])
        if self.views_in is None:
            self.views_in = defaults[0]
        if self.views_target is None:
            self.views_target = defaults[1]

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)


@dataclass
class MakeReport:
    """Outcome of a run: objects rendered now, skipped as already finished, failed."""

    rendered: list[int] = field(default_factory=list)
    skipped: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def objects_per_minute(self) -> float:
        return 60.0 * len(self.rendered) / self.seconds if self.seconds > 0 else 0.0


def _manifest(cfg: MakeConfig, finished: list[int], created: str | None) -> dict[str, Any]:
    splits = split_indices(cfg.seed, finished, DEFAULT_SPLIT_FRACTIONS)
    if cfg.kind == "scenes":
        head: dict[str, Any] = {"format": KIND_FORMATS["scenes"], "kind": "scenes",
                                "generator_version": SCENE_GENERATOR_VERSION}  # fmt: skip
        views: dict[str, Any] = {"context": cfg.views_in, "target": cfg.views_target}
    else:  # the props manifest as it always was (its format says the kind)
        head = {"format": KIND_FORMATS["props"], "generator_version": GENERATOR_VERSION}
        # The rig is recorded only when it is not the ring, so existing ring datasets resume.
        views = {"input": cfg.views_in, "target": cfg.views_target,
                 **({} if cfg.input_rig == "ring" else {"input_rig": cfg.input_rig})}  # fmt: skip
    return {
        **head,
        "seed": cfg.seed,
        "objects": cfg.objects,
        "finished": len(finished),
        "resolution": cfg.resolution,
        "views": views,
        "render": {"engine": "CYCLES", "samples": cfg.samples, "denoise": cfg.denoise},
        "split_fractions": DEFAULT_SPLIT_FRACTIONS,
        "splits": splits,
        "counts": {name: len(ids) for name, ids in splits.items()},
        "created": created or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
    }


def _check_resume(cfg: MakeConfig) -> str | None:
    """Refuse to resume into a folder made with other settings; return its creation time."""
    if not (cfg.out / MANIFEST_NAME).is_file():
        return None
    old = read_manifest(cfg.out)
    old_kind = manifest_kind(old)
    if old_kind != cfg.kind:
        raise ValueError(
            f"{cfg.out / MANIFEST_NAME}: this folder holds a {old_kind} dataset; it cannot be "
            f"resumed with --kind {cfg.kind} (use another folder)"
        )
    new = _manifest(cfg, [], None)
    for key in _FIXED_KEYS:
        if old.get(key) != new[key]:
            raise ValueError(
                f"{cfg.out / MANIFEST_NAME}: {key} is {old.get(key)!r} there but {new[key]!r} "
                "now; resume with the same settings or use another folder"
            )
    return old.get("created")


def _finished(cfg: MakeConfig) -> list[int]:
    """Indices of every finished object in the folder (also beyond cfg.objects, so a
    smaller --objects on resume never drops objects from the manifest)."""
    folder = cfg.out / ITEM_DIRS[cfg.kind]
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and is_finished(p))


class _Worker:
    def __init__(self, cfg: MakeConfig, number: int, threads: int) -> None:
        log_dir = cfg.out / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"worker{number}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in close())
        cmd = [
            sys.executable, "-m", "engine.data.worker", str(cfg.out),
            "--seed", str(cfg.seed), "--res", str(cfg.resolution),
            "--views-in", str(cfg.views_in), "--views-target", str(cfg.views_target),
            "--samples", str(cfg.samples), "--threads", str(threads), "--rig", cfg.input_rig,
            "--kind", cfg.kind,
        ]  # fmt: skip
        if not cfg.denoise:
            cmd.append("--no-denoise")
        # Run from the folder holding `engine` so the worker imports this same package.
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, bufsize=1, env=env,
        )  # fmt: skip
        self.current: int | None = None

    def send(self, index: int) -> None:
        self.current = index
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{index}\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _check_config(cfg: MakeConfig) -> None:
    """Refuse settings that cannot make a dataset before anything is written (a manifest
    saying `"resolution": -7` must never exist). `gd data make` checks its flags the same
    way while parsing; this covers callers from Python."""
    if cfg.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {cfg.kind!r}")
    if cfg.kind == "scenes" and cfg.views_in != 2:
        raise ValueError(f"scenes have exactly 2 context views (views_in), got {cfg.views_in!r}")
    if cfg.kind == "scenes" and cfg.input_rig != "ring":
        raise ValueError("input_rig applies to props only; scenes take their cameras from a clip")
    for name in ("objects", "resolution", "views_in", "views_target", "samples"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name in ("seed", "workers"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if cfg.input_rig not in INPUT_RIGS:
        raise ValueError(f"input_rig must be one of {INPUT_RIGS}, got {cfg.input_rig!r}")
    if cfg.splits is not None:
        unknown = set(cfg.splits) - set(SPLITS)
        if unknown or not cfg.splits:
            raise ValueError(f"unknown splits {sorted(unknown)}; choose from {SPLITS}")


def make_dataset(cfg: MakeConfig) -> MakeReport:
    """Render every unfinished object (or scene) in range(cfg.objects) and (re)write the
    manifest."""
    from tqdm import tqdm

    cfg.out = Path(cfg.out)
    _check_config(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    created = _check_resume(cfg)
    done_before = set(_finished(cfg))
    todo = [i for i in range(cfg.objects) if i not in done_before]
    if cfg.splits is not None:
        todo = [i for i in todo if split_of(cfg.seed, i, DEFAULT_SPLIT_FRACTIONS) in cfg.splits]
    write_json_atomic(cfg.out / MANIFEST_NAME, _manifest(cfg, sorted(done_before), created))
    report = MakeReport(skipped=len(done_before))
    start = time.perf_counter()
    n_workers = min(cfg.worker_count(), len(todo))
    threads = max(1, (os.cpu_count() or 1) // max(n_workers, 1))
    queue = list(reversed(todo))
    bar = tqdm(total=len(todo), unit="obj", disable=not cfg.progress, desc="rendering")
    workers = [_Worker(cfg, k, threads) for k in range(n_workers)]
    selector = selectors.DefaultSelector()
    try:
        for w in workers:
            assert w.proc.stdout is not None
            selector.register(w.proc.stdout, selectors.EVENT_READ, w)
            if queue:
                w.send(queue.pop())
        busy = sum(w.current is not None for w in workers)
        while busy:
            for key, _ in selector.select():
                w: _Worker = key.data
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if not line:  # the process died: its object failed, no more work for it
                    selector.unregister(key.fileobj)
                    if w.current is not None:
                        report.failed[w.current] = f"worker exited (see {w.log_path})"
                        w.current = None
                        busy -= 1
                    continue
                tag, _, rest = line.strip().partition(" ")
                if tag not in (DONE, FAIL):
                    continue
                index_text, _, info = rest.partition(" ")
                if tag == DONE:
                    report.rendered.append(int(index_text))
                else:
                    report.failed[int(index_text)] = f"{info} (see {w.log_path})"
                bar.update(1)
                elapsed = time.perf_counter() - start
                bar.set_postfix(per_min=f"{60 * len(report.rendered) / max(elapsed, 1e-9):.1f}")
                if queue:
                    w.send(queue.pop())
                else:
                    w.current = None
                    busy -= 1
        for index in queue:  # every worker died before these were handed out
            report.failed[index] = "not rendered: all workers exited"
    finally:
        bar.close()
        selector.close()
        for w in workers:
            w.close()
        report.seconds = time.perf_counter() - start
        write_json_atomic(cfg.out / MANIFEST_NAME, _manifest(cfg, _finished(cfg), created))
    return report
