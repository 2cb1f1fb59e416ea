"""The Gaussians container: validation, activations, indexing, concatenation."""

from __future__ import annotations

import math

import pytest
import torch

from engine.gaussians import SH_C0, Gaussians, GaussiansError, rgb_to_sh_dc, sh_dc_to_rgb
from engine.rotations import matrix_to_quaternion, quaternion_multiply, quaternion_to_matrix

from .conftest import random_gaussians


def make(n: int = 5, degree: int = 1, seed: int = 0) -> Gaussians:
    return random_gaussians(n, degree, seed, log_scale_normal=(0.0, 1.0))


def test_activations():
    g = make()
    assert torch.allclose(g.scales, torch.exp(g.log_scales))
    assert torch.allclose(g.opacities, torch.sigmoid(g.opacity_logits))
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(5))
    r = g.rotation_matrices
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5)
    cov = g.covariances
    assert torch.allclose(cov, cov.transpose(1, 2), atol=1e-6)
    assert (torch.linalg.eigvalsh(cov) > 0).all()
    # Eigenvalues of R S² Rᵀ are the squared scales.
    expected = torch.sort(g.scales**2, dim=-1).values
    assert torch.allclose(torch.linalg.eigvalsh(cov.double()), expected.double(), rtol=1e-4)
    assert g.sh_degree == 1 and len(g) == 5


def test_color_dc_round_trip_and_constant():
    rgb = torch.rand(10, 3)
    assert torch.allclose(sh_dc_to_rgb(rgb_to_sh_dc(rgb)), rgb, atol=1e-6)
    assert math.isclose(SH_C0, 0.5 / math.sqrt(math.pi))


def test_from_activated_round_trip():
    g = Gaussians.from_activated(
        means=torch.zeros(2, 3),
        scales=torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]]),
        quats=torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]),
        opacities=torch.tensor([0.25, 0.75]),
        colors=torch.tensor([[0.1, 0.5, 0.9], [0.0, 1.0, 0.5]]),
    )
    assert torch.allclose(g.scales, torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]]))
    assert torch.allclose(g.opacities, torch.tensor([0.25, 0.75]))
    assert torch.allclose(
        g.base_colors, torch.tensor([[0.1, 0.5, 0.9], [0.0, 1.0, 0.5]]), atol=1e-6
    )


def test_indexing_cat_device_detach():
    g = make(6, degree=2)
    mask = torch.tensor([True, False, True, False, False, True])
    sub = g[mask]
    assert len(sub) == 3 and torch.equal(sub.means, g.means[mask])
    assert torch.equal(g[torch.tensor([5, 0])].sh, g.sh[[5, 0]])
    assert torch.equal(g[1:3].quats, g.quats[1:3])
    assert len(g[2]) == 1 and torch.equal(g[2].means, g.means[2:3])
    both = Gaussians.cat([g, make(2, degree=0, seed=1)])
    assert len(both) == 8 and both.sh_degree == 2
    assert torch.all(both.sh[6:, 1:] == 0)  # lower degree zero-padded
    assert torch.equal(both.sh[6:, 0], make(2, degree=0, seed=1).sh[:, 0])
    g64 = g.to(dtype=torch.float64)
    assert g64.dtype == torch.float64 and g64.means.dtype == torch.float64
    g.requires_grad_(True)
    assert all(p.requires_grad for p in g.parameters())
    assert not any(p.requires_grad for p in g.detach().parameters())
    assert g.with_sh_degree(0).sh.shape == (6, 1, 3)
    assert g.with_sh_degree(3).sh.shape == (6, 16, 3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("means", torch.full((3, 3), float("nan")), "means has 3 Gaussian"),
        ("log_scales", torch.tensor([[0.0, float("inf"), 0.0]] * 3), "log_scales has"),
        ("quats", torch.zeros(3, 4), "zero norm"),
        ("opacity_logits", torch.zeros(4), r"opacity_logits must have shape \(3,\)"),
        ("sh", torch.zeros(3, 5, 3), "not \\(d\\+1\\)\\^2"),
        ("sh", torch.zeros(3, 25, 3), "not \\(d\\+1\\)\\^2"),
        ("means", torch.zeros(3, 2), r"means must have shape \(N, 3\)"),
        ("means", torch.zeros(3, 3, dtype=torch.int64), "floating point"),
        ("quats", torch.zeros(3, 4, dtype=torch.float64) + 1, "share device and dtype"),
    ],
)
def test_validation_rejects_bad_values(field, value, message):
    fields = dict(
        means=torch.zeros(3, 3),
        log_scales=torch.zeros(3, 3),
        quats=torch.tensor([[1.0, 0, 0, 0]] * 3),
        opacity_logits=torch.zeros(3),
        sh=torch.zeros(3, 1, 3),
    )
    fields[field] = value
    with pytest.raises(GaussiansError, match=message):
        Gaussians(**fields)


def test_bad_mask_and_empty_cat():
    g = make(4)
    with pytest.raises(GaussiansError, match="boolean mask"):
        g[torch.tensor([True, False])]
    with pytest.raises(GaussiansError, match="empty list"):
        Gaussians.cat([])
    assert len(Gaussians.empty(sh_degree=3)) == 0


def test_quaternion_matrix_round_trip_and_product():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(200, 4, generator=gen, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    r = quaternion_to_matrix(q)
    assert torch.allclose(torch.linalg.det(r), torch.ones(200, dtype=torch.float64))
    assert torch.allclose(matrix_to_quaternion(r), q, atol=1e-10)
    p = torch.randn(200, 4, generator=gen, dtype=torch.float64)
    assert torch.allclose(
        quaternion_to_matrix(quaternion_multiply(p, q)),
        quaternion_to_matrix(p) @ quaternion_to_matrix(q),
        atol=1e-10,
    )
    # 90° about z maps x to y.
    qz = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=torch.float64)
    v = quaternion_to_matrix(qz) @ torch.tensor([1.0, 0, 0], dtype=torch.float64)
    assert torch.allclose(v, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
