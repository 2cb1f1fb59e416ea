"""Generative-densification Gaussian splatting engine (PyTorch, no bpy)."""

from .gaussians import Gaussians, GaussiansError

__all__ = ["Gaussians", "GaussiansError"]
__version__ = "0.1.0"
