"""Render one interior scene of a scenes dataset with real Blender (Cycles on the CPU).

Like `generator.Generator` for props, bpy is imported only when a `SceneGenerator` is
created (by `engine.data.worker --kind scenes`), so `import engine.data` never loads
Blender. Scene i depends only on (seed, i) (`procedural.room_spec.sample_room`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..atomic import atomic_open
from .layout import (
    DEPTH_SCALE,
    ROOM_NAME,
    SCENE_GENERATOR_VERSION,
    SCENE_VIEW_SPLITS,
    ItemGenerator,
    scene_dir,
    transforms_path,
    write_json_atomic,
)
from .procedural.room_spec import sample_room

if TYPE_CHECKING:
    from .procedural.scene import RenderSettings


def write_depth_png(path: Path, depth: np.ndarray) -> None:
    """Save (H, W) depth in metres (NaN: no surface) as a 16-bit PNG of
    round(depth / DEPTH_SCALE), 0 where there is no surface or the depth is out of range."""
    value = np.round(np.nan_to_num(depth, nan=0.0) / DEPTH_SCALE)
    value[(value < 1) | (value > 65535)] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic like every other file of a scene: a killed worker never leaves half a PNG that
    # the finished-marker check would not notice on a re-render with overwrite.
    with atomic_open(path) as f:
        Image.fromarray(value.astype(np.uint16)).save(f, format="PNG", optimize=True)


class SceneGenerator(ItemGenerator):
    """Renders scenes into a dataset folder; holds the Blender scene of this process.
    `generate(index)` renders scene `index` unless it is finished and returns its done
    marker (`ItemGenerator.generate`)."""

    item_dir = staticmethod(scene_dir)

    def __init__(
        self, root: str | Path, seed: int, settings: RenderSettings, n_target: int = 6
    ) -> None:
        from .procedural import room  # imports bpy

        super().__init__(root, seed)
        self.n_target = int(n_target)
        self._room = room
        self.rs = room.configure_rooms(settings)

    def _render(self, out: Path, index: int) -> dict[str, Any]:
        """Scene `index`'s views, depths and room.json into `out`; what its done marker adds."""
        from engine.camera_formats import write_nerf_transforms

        from .procedural.scene import rendered_cameras

        spec = sample_room(self.seed, index, self.n_target)
        self._room.build_room(self.rs, spec)
        fov = spec["clip"]["fov_deg"]
        scene = self.rs.scene
        recorded: dict[str, tuple[list[Path], list[np.ndarray]]] = {}
        valid: list[np.ndarray] = []
        for split in SCENE_VIEW_SPLITS:
            paths, matrices = [], []
            for k, c2w in enumerate(spec["cameras"][split]):
                path = out / split / f"{k:03d}.png"
                camera, depth = self._room.render_view(self.rs, np.asarray(c2w), fov, path)
                write_depth_png(out / f"{split}_depth" / f"{k:03d}.png", depth)
                valid.append(depth[np.isfinite(depth)])
                paths.append(path)
                # Record the matrix Blender actually rendered with, not the one we asked for.
                matrices.append(np.asarray(camera.matrix_world, dtype=np.float64))
            recorded[split] = (paths, matrices)
        depths = np.concatenate(valid)
        if depths.size == 0:
            raise RuntimeError(f"scene {index}: no view hit a surface")
        # One near/far for the whole scene (context and targets), from the rendered depth.
        near = round(max(0.05, 0.9 * float(depths.min())), 4)
        far = round(1.1 * float(depths.max()), 4)
        for split, (paths, matrices) in recorded.items():
            cameras = rendered_cameras(scene, matrices)
            extra = {
                "near": near,
                "far": far,
                "depth_folder": f"{split}_depth",
                "depth_scale": DEPTH_SCALE,
                "depth_kind": "planar",
            }
            write_nerf_transforms(transforms_path(out, split), cameras, paths, extra)
        write_json_atomic(out / ROOM_NAME, {"generator_version": SCENE_GENERATOR_VERSION,
                                            "spec": spec, "near": near, "far": far})  # fmt: skip
        return {
            "views": {"context": 2, "target": self.n_target},
            "furniture": len(spec["furniture"]),
        }
