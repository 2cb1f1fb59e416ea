"""Render one object of a props dataset with real Blender (Cycles on the CPU).

This is the only engine module that imports bpy, and it does so when `Generator` is
created, so `import engine.data` never loads Blender. One process holds one Blender scene;
`engine.data.worker` runs a Generator per process and `engine.data.make` runs several.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .camera_poses import distance_for_fill, plan_poses, sample_view_plan
from .layout import (
    GENERATOR_VERSION,
    PROP_NAME,
    VIEW_SPLITS,
    ItemGenerator,
    object_dir,
    transforms_path,
    write_json_atomic,
)
from .procedural.spec import sample_prop

if TYPE_CHECKING:
    from .procedural.scene import RenderSettings

# Surface points recorded per object (world coordinates) for checks such as re-projecting
# them into the renders: they must land on the silhouette.
SURFACE_POINTS = 64
_VIEW_STREAM, _POINT_STREAM = 1, 2


class Generator(ItemGenerator):
    """Renders objects into a dataset folder; holds the Blender scene of this process.
    `generate(index)` renders object `index` unless it is finished and returns its done
    marker (`ItemGenerator.generate`)."""

    item_dir = staticmethod(object_dir)

    def __init__(
        self,
        root: str | Path,
        seed: int,
        settings: RenderSettings,
        n_input: int = 4,
        n_target: int = 8,
        input_rig: str = "ring",
    ) -> None:
        from .procedural import scene as blender_scene  # imports bpy

        super().__init__(root, seed)
        self.n_input, self.n_target = int(n_input), int(n_target)
        self.input_rig = input_rig  # engine.data.camera_poses.INPUT_RIGS
        self._scene_mod = blender_scene
        self.settings = settings
        self.scene = blender_scene.configure(settings)

    def _render(self, out: Path, index: int) -> dict[str, Any]:
        """Object `index`'s views and prop.json into `out`; what its done marker adds."""
        from engine.camera_formats import write_nerf_transforms

        bs = self._scene_mod
        spec = sample_prop(self.seed, index)
        plan = sample_view_plan(
            np.random.default_rng([self.seed, index, _VIEW_STREAM]),
            self.n_input,
            self.n_target,
            input_rig=self.input_rig,
        )
        built = bs.build_prop(self.scene, spec)
        poses = plan_poses(plan, built.radius)
        camera = self.scene.camera
        for split in VIEW_SPLITS:
            paths, matrices = [], []
            for k, c2w in enumerate(poses[split]):
                bs.set_camera(self.scene, c2w, plan.fov_deg)
                path = out / split / f"{k:03d}.png"
                bs.render_to(self.scene, path)
                paths.append(path)
                # Record the matrix Blender actually rendered with, not the one we asked for.
                matrices.append(np.asarray(camera.matrix_world, dtype=np.float64))
            if not paths:
                continue
            cameras = bs.rendered_cameras(self.scene, matrices)
            write_nerf_transforms(transforms_path(out, split), cameras, paths)
        point_rng = np.random.default_rng([self.seed, index, _POINT_STREAM])
        points = bs.surface_points(built, point_rng, SURFACE_POINTS)
        prop = {
            "generator_version": GENERATOR_VERSION,
            "spec": spec,
            "views": {
                "fov_deg": plan.fov_deg,
                "fill": plan.fill,
                "distance": distance_for_fill(built.radius, plan.fov_deg, plan.fill),
                "input_azimuths_deg": plan.input_azimuths_deg.tolist(),
                "input_elevations_deg": plan.input_elevations_deg.tolist(),
                "target_azimuths_deg": plan.target_azimuths_deg.tolist(),
                "target_elevations_deg": plan.target_elevations_deg.tolist(),
            },
            "bbox_min": built.bbox_min.tolist(),
            "bbox_max": built.bbox_max.tolist(),
            "radius": built.radius,
            "normalisation": built.normalisation.tolist(),
            "surface_points": points.round(6).tolist(),
            "vertex_count": len(built.vertices),
        }
        write_json_atomic(out / PROP_NAME, prop)
        return {
            "template": spec["template"],
            "views": {"input": self.n_input, "target": self.n_target},
        }
