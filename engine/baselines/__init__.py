"""Non-learned reference reconstructions that evaluation reports score beside the model."""

from .visual_hull import VisualHullError, visual_hull_gaussians

__all__ = ["VisualHullError", "visual_hull_gaussians"]
