"""Shared by the splat-format tests: the angle between two sets of rotations."""

from __future__ import annotations

import torch


def rotation_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in radians between quaternions a and b, (N, 4) each, any norm and sign -> (N,)."""
    a = a.double() / a.double().norm(dim=1, keepdim=True)
    b = b.double() / b.double().norm(dim=1, keepdim=True)
    return 2 * torch.acos((a * b).sum(1).abs().clamp(max=1))
