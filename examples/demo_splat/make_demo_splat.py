"""Regenerate `demo.ply`: a procedural splat (a checkered torus knot on a plinth).

    python examples/demo_splat/make_demo_splat.py

Until the object model ships, `make demo` renders this file; it is built from
geometry, not reconstructed, so it exercises the renderer and the PLY path only.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from engine.gaussians import Gaussians, rgb_to_sh_dc
from engine.io import save
from engine.rotations import matrix_to_quaternion


def torus_knot(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points on a (2, 3) torus-knot tube: means (n, 3), frames (n, 3, 3), colours (n, 3)."""
    t = torch.rand(n, generator=gen, dtype=torch.float64) * 2 * math.pi
    a = torch.rand(n, generator=gen, dtype=torch.float64) * 2 * math.pi

    def curve(s: torch.Tensor) -> torch.Tensor:
        r = 0.25 + 0.1 * torch.cos(3 * s)
        return torch.stack([r * torch.cos(2 * s), r * torch.sin(2 * s), 0.1 * torch.sin(3 * s)], -1)

    c = curve(t)
    tangent = curve(t + 1e-4) - curve(t - 1e-4)
    tangent = tangent / tangent.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(tangent)
    normal = torch.linalg.cross(tangent, up)
    normal = normal / normal.norm(dim=-1, keepdim=True)
    binormal = torch.linalg.cross(tangent, normal)
    radial = torch.cos(a)[:, None] * normal + torch.sin(a)[:, None] * binormal
    means = c + 0.06 * radial
    # Flat discs tangent to the tube: local z along the surface normal.
    frame = torch.stack([tangent, torch.linalg.cross(radial, tangent), radial], dim=-1)
    checker = ((torch.floor(t * 12 / math.pi) + torch.floor(a * 4 / math.pi)) % 2)[:, None]
    hue = torch.stack([0.5 + 0.5 * torch.cos(t), 0.5 + 0.5 * torch.cos(t + 2.1),
                       0.5 + 0.5 * torch.cos(t + 4.2)], -1)  # fmt: skip
    colors = checker * hue + (1 - checker) * 0.15
    return means, frame, colors


def plinth(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A flat grey disc under the knot."""
    r = 0.4 * torch.sqrt(torch.rand(n, generator=gen, dtype=torch.float64))
    phi = torch.rand(n, generator=gen, dtype=torch.float64) * 2 * math.pi
    means = torch.stack([r * torch.cos(phi), r * torch.sin(phi), torch.full_like(r, -0.2)], -1)
    frame = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    ring = (torch.floor(r * 25) % 2)[:, None]
    colors = 0.55 + 0.25 * ring.expand(n, 3)
    return means, frame, colors


def make(n_knot: int = 12000, n_plinth: int = 4000, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    parts = [torus_knot(n_knot, gen), plinth(n_plinth, gen)]
    means = torch.cat([p[0] for p in parts])
    frames = torch.cat([p[1] for p in parts])
    colors = torch.cat([p[2] for p in parts])
    n = means.shape[0]
    scales = torch.tensor([0.012, 0.012, 0.002], dtype=torch.float64).expand(n, 3)
    return Gaussians(
        means=means.float(),
        log_scales=torch.log(scales).float(),
        quats=matrix_to_quaternion(frames).float(),
        opacity_logits=torch.full((n,), 3.0),
        sh=rgb_to_sh_dc(colors).float()[:, None, :],
    )


if __name__ == "__main__":
    out = Path(__file__).with_name("demo.ply")
    save(make(), out)
    print(f"wrote {out}")
