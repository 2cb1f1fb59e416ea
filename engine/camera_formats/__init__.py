"""Converters between `engine.cameras.Cameras` and other camera formats.

    blender  Blender perspective-camera settings (pure maths, no bpy)
    nerf     NeRF / instant-ngp / nerfstudio `transforms.json`
    colmap   COLMAP sparse models, binary or text

Only pinhole cameras without lens distortion are represented; converters reject distorted
models with a message saying to undistort first. Errors are `engine.cameras.CameraError`
and name the file when one is involved.
"""

from .blender import from_blender, to_blender
from .colmap import ColmapModel, colmap_to_cameras, read_colmap, write_colmap
from .nerf import NerfFrames, read_nerf_transforms, write_nerf_transforms

__all__ = [
    "ColmapModel",
    "NerfFrames",
    "colmap_to_cameras",
    "from_blender",
    "read_colmap",
    "read_nerf_transforms",
    "to_blender",
    "write_colmap",
    "write_nerf_transforms",
]
