"""The tile rasterisers against the brute-force reference, gradients, and error handling."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch

import engine.render.rasterize_numba as rn
from engine.cameras import Cameras
from engine.gaussians import Gaussians
from engine.render import RenderError, render, resolve_backend
from engine.render.gsplat_backend import gsplat_available
from engine.render.rasterize_numba import rasterize_numba
from engine.render.rasterize_torch import rasterize_torch
from engine.render.reference import render_reference
from engine.render.sh import sh_basis

PORTABLE = ("numba", "torch")


def random_gaussians(
    n: int, seed: int, sh_degree: int = 1, dtype=torch.float32, spread: float = 0.4
) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return Gaussians(
        means=torch.randn(n, 3, generator=gen, dtype=dtype) * spread,
        log_scales=torch.log(torch.rand(n, 3, generator=gen, dtype=dtype) * 0.08 + 0.01),
        quats=torch.randn(n, 4, generator=gen, dtype=dtype),
        opacity_logits=torch.randn(n, generator=gen, dtype=dtype) * 2,
        sh=torch.randn(n, k, 3, generator=gen, dtype=dtype) * 0.3,
    )


def ring_cameras(
    count: int, width: int, height: int, distance: float = 3.0, dtype=torch.float32
) -> Cameras:
    angles = torch.arange(count, dtype=torch.float64) * (2 * math.pi / count) + 0.3
    eyes = torch.stack(
        [distance * torch.cos(angles), distance * torch.sin(angles), 0.8 + 0.2 * angles], dim=-1
    )
    cams = Cameras.look_at(eyes, torch.zeros_like(eyes), fov_x_deg=40.0, width=width, height=height)
    # An off-centre principal point and non-square pixels exercise the general intrinsics.
    cams = Cameras(
        cams.world_to_camera, cams.fx, cams.fy * 1.07, cams.cx + 0.7, cams.cy - 1.3, width, height
    )
    return cams.to(dtype=dtype)


@pytest.mark.parametrize("backend", PORTABLE)
@pytest.mark.parametrize(
    ("n", "width", "height", "sh_degree", "seed"),
    [(200, 40, 30, 0, 0), (500, 37, 53, 1, 1), (300, 64, 48, 3, 2), (1, 16, 16, 2, 3)],
)
def test_tile_rasteriser_matches_brute_force(backend, n, width, height, sh_degree, seed):
    g = random_gaussians(n, seed, sh_degree)
    cams = ring_cameras(3, width, height)
    bg = torch.tensor([0.2, 0.5, 0.9])
    ref_colors, ref_alphas = render_reference(g, cams, background=bg)
    out = render(g, cams, background=bg, backend=backend)
    assert out.backend == backend
    assert out.colors.shape == (3, height, width, 3) and out.alphas.shape == (3, height, width)
    assert (out.colors.double() - ref_colors).abs().max() <= 1e-4
    assert (out.alphas.double() - ref_alphas).abs().max() <= 1e-4
    assert ref_alphas.max() > 0.05, "scene should actually cover the image"


@pytest.mark.parametrize("backend", PORTABLE)
def test_dense_opaque_scene_hits_early_termination(backend):
    # Many opaque Gaussians stacked in front of each other: most pixels stop early.
    g = random_gaussians(800, 7, spread=0.15)
    g = Gaussians(g.means, g.log_scales + 1.0, g.quats, g.opacity_logits.abs() + 3, g.sh)
    cams = ring_cameras(2, 32, 24)
    ref_colors, ref_alphas = render_reference(g, cams, background=torch.zeros(3))
    out = render(g, cams, background=torch.zeros(3), backend=backend)
    assert ref_alphas.max() > 0.999
    assert (out.colors.double() - ref_colors).abs().max() <= 1e-4
    assert (out.alphas.double() - ref_alphas).abs().max() <= 1e-4


def test_backends_agree_with_each_other_on_a_larger_scene():
    g = random_gaussians(5000, 11, sh_degree=2, spread=0.3)
    cams = ring_cameras(2, 96, 80)
    a = render(g, cams, backend="numba")
    b = render(g, cams, backend="torch")
    # Both backends decide alpha >= 1/255 (and T >= 1e-4) in float32, in different orders of
    # operations (numba with a polynomial exp): a pair within an ulp or two of a threshold may
    # fall either side, which moves that pixel by at most its alpha of 1/255 times what is
    # behind. Every other pixel agrees to float32 rounding.
    diff = (a.colors - b.colors).abs().detach()
    assert diff.max() <= 2 / 255
    assert (diff > 1e-4).float().mean() <= 1e-3
    assert diff.median() <= 1e-6
    depth_diff = (a.depths - b.depths).abs().detach()
    assert (depth_diff > 1e-3).float().mean() <= 1e-3
    assert torch.equal(a.radii, b.radii)


def test_gaussians_behind_or_beside_the_camera_are_culled_and_stay_finite():
    g = random_gaussians(50, 4)
    cams = ring_cameras(1, 24, 24)
    center = cams.centers[0]
    forward = cams.world_to_camera[0, 2, :3]
    behind = center - 0.5 * forward
    at_eye = center.clone()
    means = torch.cat([g.means[:48], behind[None], at_eye[None]])
    g = Gaussians(means, g.log_scales, g.quats, g.opacity_logits, g.sh).requires_grad_(True)
    for backend in PORTABLE:
        out = render(g, cams, backend=backend)
        assert out.radii[0, 48] == 0 and out.radii[0, 49] == 0
        (out.colors.sum() + out.depths.sum()).backward()
        for p in g.parameters():
            assert torch.isfinite(p.grad).all()
            p.grad = None


@pytest.mark.parametrize("backend", PORTABLE)
def test_gradcheck_full_render(backend):
    g = random_gaussians(6, 5, sh_degree=2, dtype=torch.float64, spread=0.25)
    g = Gaussians(g.means, g.log_scales + 1.0, g.quats, g.opacity_logits, g.sh)
    cams = ring_cameras(2, 11, 9, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    w_color = torch.randn(2, 9, 11, 3, generator=gen, dtype=torch.float64)
    w_alpha = torch.randn(2, 9, 11, generator=gen, dtype=torch.float64)
    w_depth = torch.randn(2, 9, 11, generator=gen, dtype=torch.float64)

    def loss(means, log_scales, quats, opacity_logits, sh):
        out = render(Gaussians(means, log_scales, quats, opacity_logits, sh), cams, backend=backend)
        return (
            (out.colors * w_color).sum()
            + (out.alphas * w_alpha).sum()
            + (out.depths * w_depth).sum()
        )

    params = [p.detach().clone().requires_grad_(True) for p in g.parameters()]
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5, rtol=1e-4,
                                    fast_mode=backend == "torch")  # fmt: skip


@pytest.mark.parametrize("rasterize", [rasterize_numba, rasterize_torch])
def test_gradcheck_screen_space_including_means2d(rasterize):
    gen = torch.Generator().manual_seed(3)
    n, w, h = 7, 10, 8
    means2d = torch.rand(1, n, 2, generator=gen, dtype=torch.float64) * torch.tensor([w, h])
    cov_l = torch.rand(1, n, 2, 2, generator=gen, dtype=torch.float64) * 2
    cov = cov_l @ cov_l.transpose(-1, -2) + torch.eye(2, dtype=torch.float64) * 1.5
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[..., 0, 0], inv[..., 0, 1], inv[..., 1, 1]], dim=-1)
    colors = torch.rand(1, n, 4, generator=gen, dtype=torch.float64)
    opacities = torch.rand(1, n, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    depths = torch.rand(1, n, generator=gen, dtype=torch.float64)
    extents = torch.full((1, n, 2), 100.0, dtype=torch.float64)
    w_acc = torch.randn(1, h, w, 4, generator=gen, dtype=torch.float64)
    w_alpha = torch.randn(1, h, w, generator=gen, dtype=torch.float64)

    def loss(m, c, col, op):
        acc, alpha = rasterize(m, c, col, op, extents, depths, w, h)
        return (acc * w_acc).sum() + (alpha * w_alpha).sum()

    inputs = [t.clone().requires_grad_(True) for t in (means2d, conics, colors, opacities)]
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def _screen_space_scene(n: int, w: int, h: int, n_ch: int, seed: int, dtype=torch.float64):
    """Random screen-space Gaussians covering a w x h image, and loss weights."""
    gen = torch.Generator().manual_seed(seed)
    means2d = torch.rand(1, n, 2, generator=gen, dtype=dtype) * torch.tensor([w, h])
    cov_l = torch.rand(1, n, 2, 2, generator=gen, dtype=dtype) * 2
    cov = cov_l @ cov_l.transpose(-1, -2) + torch.eye(2, dtype=dtype) * 1.5
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[..., 0, 0], inv[..., 0, 1], inv[..., 1, 1]], dim=-1)
    colors = torch.rand(1, n, n_ch, generator=gen, dtype=dtype)
    opacities = torch.rand(1, n, generator=gen, dtype=dtype) * 0.9 + 0.05
    depths = torch.rand(1, n, generator=gen, dtype=dtype)
    extents = torch.full((1, n, 2), 100.0, dtype=dtype)
    w_acc = torch.randn(1, h, w, n_ch, generator=gen, dtype=dtype)
    w_alpha = torch.randn(1, h, w, generator=gen, dtype=dtype)
    return (means2d, conics, colors, opacities), extents, depths, w_acc, w_alpha


@pytest.mark.parametrize(("n_ch", "tile"), [(6, 16), (3, 32), (5, 8), (1, 4)])
def test_numba_backward_gradcheck_beyond_the_fused_channels_and_default_tile(n_ch, tile):
    """Channels beyond the four composited in the backward's main loop take a loop of
    their own; tiles other than 16 px (above MAX_TILE they are drawn as MAX_TILE ones)."""
    w, h = 37, 21
    inputs, extents, depths, w_acc, w_alpha = _screen_space_scene(9, w, h, n_ch, seed=5)

    def loss(m, c, col, op):
        acc, alpha = rasterize_numba(m, c, col, op, extents, depths, w, h, tile_size=tile)
        return (acc * w_acc).sum() + (alpha * w_alpha).sum()

    inputs = [t.clone().requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        big = rasterize_numba(*inputs, extents, depths, w, h, tile_size=tile)
        default = rasterize_numba(*inputs, extents, depths, w, h)
    for a, b in zip(big, default, strict=True):
        assert torch.equal(a, b)  # the tile size changes no pixel


def test_float32_kernels_exp_is_within_its_stated_error():
    """The forward kernel's float32 exp(-sigma) (a polynomial, so the pixel loop
    vectorises) stays within 3.2e-6 of exp over the whole range it is used on."""
    from numba import njit

    @njit
    def exp_all(xs):
        out = np.empty_like(xs)
        for i in range(xs.size):
            out[i] = rn._exp_neg(xs[i])
        return out

    sigma = np.linspace(0.0, rn.SIGMA_CAP, 100_001, dtype=np.float32)
    got = exp_all(sigma)
    assert got.dtype == np.float32  # the float32 overload ran, not libm's exp
    rel = np.abs(got.astype(np.float64) / np.exp(-sigma.astype(np.float64)) - 1.0)
    assert rel.max() <= 3.2e-6


def test_numba_float32_gradients_follow_the_float64_ones():
    """The float32 backward (vector code, float32 state) against the float64 one."""
    w, h = 64, 48
    inputs, extents, depths, w_acc, w_alpha = _screen_space_scene(150, w, h, 4, seed=8)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        ins = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
        acc, alpha = rasterize_numba(*ins, extents.to(dtype), depths.to(dtype), w, h)
        ((acc * w_acc.to(dtype)).sum() + (alpha * w_alpha.to(dtype)).sum()).backward()
        grads[dtype] = [t.grad.double() for t in ins]
    for g64, g32 in zip(grads[torch.float64], grads[torch.float32], strict=True):
        scale = g64.abs().max()
        assert scale > 0
        assert (g32 - g64).abs().max() <= 2e-5 * scale  # measured: up to 2.5e-6


@pytest.mark.parametrize("backend", PORTABLE)
def test_gradients_match_autograd_through_the_reference(backend):
    g = random_gaussians(25, 8, sh_degree=1, dtype=torch.float64)
    cams = ring_cameras(2, 20, 16, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(2, 16, 20, 3, generator=gen, dtype=torch.float64)
    a = [p.detach().clone().requires_grad_(True) for p in g.parameters()]
    b = [p.detach().clone().requires_grad_(True) for p in g.parameters()]
    (render(Gaussians(*a), cams, backend=backend).colors * w).sum().backward()
    (render_reference(Gaussians(*b), cams)[0] * w).sum().backward()
    for pa, pb in zip(a, b, strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("backend", PORTABLE)
def test_means2d_gradient_available_for_frozen_gaussians(backend):
    g = random_gaussians(40, 9)  # parameters do not require grad
    cams = ring_cameras(2, 24, 20)
    out = render(g, cams, backend=backend)
    target = torch.rand_like(out.colors)
    ((out.colors - target) ** 2).mean().backward()
    grad = out.means2d.grad
    assert grad is not None and grad.shape == (2, 40, 2)
    assert grad[out.visible].abs().sum() > 0
    assert torch.all(grad[~out.visible] == 0)
    assert all(p.grad is None for p in g.parameters())


def test_numba_depth_order_is_the_stable_argsort():
    """The radix sort on the depths' bits gives np.argsort(kind="stable")'s order: ties in
    index order, negative depths first, for float32 and float64."""
    gen = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        depths = (gen.standard_normal(5000) * 4).astype(dtype)
        depths[::9] = depths[4]  # many ties
        visible = np.flatnonzero(gen.random(5000) > 0.2)
        expected = visible[np.argsort(depths[visible], kind="stable")]
        assert np.array_equal(rn._depth_order(depths, visible), expected)


def test_numba_forward_without_backward_keeps_no_records():
    """A render no backward follows composites the same image without recording pairs."""
    g = random_gaussians(300, 12)
    cams = ring_cameras(2, 40, 32)
    with torch.no_grad():
        plain = render(g, cams, backend="numba")
    params = [p.detach().clone().requires_grad_(True) for p in g.parameters()]
    tracked = render(Gaussians(*params), cams, backend="numba")
    assert torch.equal(plain.colors, tracked.colors)
    seen = []
    original = rn._forward_camera
    try:
        rn._forward_camera = lambda *a: seen.append(original(*a)) or seen[-1]
        with torch.no_grad():
            render(g, cams, backend="numba")
        assert seen and all(b.records[0].size == 0 for b in seen)
        seen.clear()
        render(Gaussians(*params), cams, backend="numba").colors.sum().backward()
        assert seen and all(b.records[0].size > 0 for b in seen)
    finally:
        rn._forward_camera = original
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0


def test_numba_rasteriser_refuses_a_tile_size_it_cannot_record():
    args = [torch.zeros(1, 1, 2), torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)]
    args += [torch.zeros(1, 1), torch.zeros(1, 1, 2), torch.zeros(1, 1)]
    for tile in (0, 1025):
        with pytest.raises(ValueError, match="tile_size must be 1 to 1024 pixels"):
            rasterize_numba(*args, 8, 8, tile)


def test_scratch_pool_reuses_arrays_only_once_their_owner_is_gone():
    pool = rn._ScratchPool(limit=1 << 20)
    a = pool.take(1000, np.float32)
    assert a.size >= 1000 and a.dtype == np.float32

    class Owner:
        pass

    owner = Owner()
    pool.give_when_freed(owner, a)
    assert pool.take(1000, np.float32) is not a  # still owned: a fresh array
    del owner
    gc.collect()
    assert pool.take(1010, np.float32) is a  # a similar size shares the rounded array
    big = pool.take(1 << 20, np.float64)  # 8 MB: more than the pool keeps
    pool.give(big)
    assert pool.take(1 << 20, np.float64) is not big


def test_numba_thread_parts_keep_the_gradient_rows_within_their_budget():
    assert rn._thread_parts(8, 1000, 3, np.float32) == 8
    per_part = 1_000_000 * (rn._COLOR + 3) * 4
    parts = rn._thread_parts(64, 1_000_000, 3, np.float32)
    assert 1 <= parts < 64 and parts * per_part <= rn._GRAD_BUFFER_BYTES
    assert rn._thread_parts(4, 10**9, 3, np.float64) == 1


def test_means_only_backward_gives_the_same_means2d_gradients():
    """Frozen Gaussians take numba's means-only backward; it must match the full one."""
    g = random_gaussians(300, 11, dtype=torch.float64)
    cams = ring_cameras(3, 40, 32, dtype=torch.float64)
    target = torch.rand(3, 32, 40, 3, generator=torch.Generator().manual_seed(4), dtype=g.dtype)
    grads = []
    for frozen in (True, False):
        gg = (
            g.detach()
            if frozen
            else Gaussians(*(p.detach().requires_grad_() for p in g.parameters()))
        )
        out = render(gg, cams, backend="numba", absgrad=True)
        ((out.colors - target) ** 2).mean().backward()
        grads.append((out.means2d.grad, out.means2d.absgrad))
        if not frozen:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gg.parameters())
    (plain_a, abs_a), (plain_b, abs_b) = grads
    assert plain_a.abs().sum() > 0
    assert torch.allclose(plain_a, plain_b, atol=1e-12, rtol=1e-9)
    assert torch.allclose(abs_a, abs_b, atol=1e-12, rtol=1e-9)


def test_absgrad_is_the_sum_of_per_pixel_absolute_gradients():
    g = random_gaussians(12, 10, dtype=torch.float64, spread=0.2)
    g = Gaussians(g.means, g.log_scales + 0.8, g.quats, g.opacity_logits, g.sh)
    cams = ring_cameras(1, 8, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(1, 6, 8, 3, generator=gen, dtype=torch.float64)
    out = render(g, cams, backend="numba", absgrad=True)
    (out.colors * w).sum().backward()
    # Brute force: one backward per pixel through the autograd-only backend.
    expected = torch.zeros(1, 12, 2, dtype=torch.float64)
    for y in range(6):
        for x in range(8):
            ref = render(g, cams, backend="torch")
            (ref.colors[0, y, x] * w[0, y, x]).sum().backward()
            expected += ref.means2d.grad.abs()
    assert torch.allclose(out.means2d.absgrad, expected, atol=1e-10)
    assert torch.all(out.means2d.absgrad >= out.means2d.grad.abs() - 1e-12)


@pytest.mark.parametrize("backend", PORTABLE)
def test_depth_false_changes_nothing_but_the_depths(backend):
    g = random_gaussians(60, 12, dtype=torch.float64)
    cams = ring_cameras(2, 20, 16, dtype=torch.float64)
    w = torch.randn(2, 16, 20, 3, generator=torch.Generator().manual_seed(5), dtype=g.dtype)
    outs, grads = [], []
    for depth in (True, False):
        gg = Gaussians(*(p.detach().clone().requires_grad_() for p in g.parameters()))
        out = render(gg, cams, backend=backend, depth=depth)
        ((out.colors * w).sum() + out.alphas.sum()).backward()
        outs.append(out)
        grads.append([p.grad for p in gg.parameters()])
    assert torch.equal(outs[1].depths, torch.zeros_like(outs[1].depths))
    assert outs[0].depths.abs().sum() > 0
    assert torch.allclose(outs[0].colors, outs[1].colors, atol=1e-12)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_expected_depth_of_a_single_opaque_gaussian():
    cams = ring_cameras(1, 32, 32)
    center = cams.centers[0]
    forward = cams.world_to_camera[0, 2, :3]
    point = center + 2.0 * forward
    g = Gaussians.from_activated(
        means=point[None], scales=torch.full((1, 3), 0.2), quats=torch.tensor([[1.0, 0, 0, 0]]),
        opacities=torch.tensor([0.9]), colors=torch.tensor([[0.2, 0.4, 0.6]]),
    )  # fmt: skip
    for backend in PORTABLE:
        out = render(g, cams, backend=backend)
        hit = out.alphas > 0
        assert hit.any()
        assert torch.allclose(out.depths[hit], torch.tensor(2.0), atol=1e-4)
        assert torch.all(out.depths[~hit] == 0)


def test_empty_gaussians_render_the_background():
    cams = ring_cameras(2, 10, 7)
    for backend in PORTABLE:
        out = render(Gaussians.empty(), cams, background=[0.1, 0.2, 0.3], backend=backend)
        assert torch.allclose(out.colors, torch.tensor([0.1, 0.2, 0.3]).expand(2, 7, 10, 3))
        assert torch.all(out.alphas == 0)


def test_sh_basis_is_orthonormal_on_the_sphere():
    # Fibonacci-sphere quadrature: the 16 real SH functions must be orthonormal.
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)
    basis = sh_basis(dirs, 3)
    gram = basis.T @ basis * (4 * math.pi / n)
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-3)


def test_bad_inputs_give_clear_errors():
    g = random_gaussians(5, 0)
    cams = ring_cameras(1, 8, 8)
    with pytest.raises(RenderError, match="unknown render backend"):
        render(g, cams, backend="vulkan")
    with pytest.raises(RenderError, match="background"):
        render(g, cams, background=[1.0, float("nan"), 0.0])
    with pytest.raises(RenderError, match="background"):
        render(g, cams, background=[1.0, 0.0])
    with pytest.raises(RenderError, match="at least one camera"):
        render(g, cams[torch.zeros(1, dtype=torch.bool)])
    with pytest.raises(RenderError, match="absgrad"):
        render(g, cams, backend="torch", absgrad=True)
    assert resolve_backend("auto", torch.device("cpu")) == "numba"


@pytest.mark.cuda
@pytest.mark.skipif(not gsplat_available(), reason="needs CUDA and gsplat")
def test_gsplat_parity():
    # gsplat clamps alpha at 0.999 (we use 3DGS's 0.99) and cuts splats at 3.33σ, so
    # Gaussians are kept below opacity 0.9 and images compared at 2e-3.
    g = random_gaussians(2000, 12, sh_degree=3, spread=0.3).to("cuda")
    g = Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits.clamp(max=2.0), g.sh)
    cams = ring_cameras(3, 128, 96).to("cuda")
    a = [p.detach().clone().requires_grad_(True) for p in g.parameters()]
    b = [p.detach().clone().requires_grad_(True) for p in g.parameters()]
    out_g = render(Gaussians(*a), cams, backend="gsplat")
    out_t = render(Gaussians(*b), cams, backend="torch")
    assert (out_g.colors - out_t.colors).abs().max() < 2e-3
    assert (out_g.alphas - out_t.alphas).abs().max() < 2e-3
    w = torch.randn_like(out_g.colors)
    (out_g.colors * w).sum().backward()
    (out_t.colors * w).sum().backward()
    for pa, pb in zip(a, b, strict=True):
        scale = pb.grad.abs().max().clamp_min(1e-6)
        assert (pa.grad - pb.grad).abs().max() / scale < 2e-2
    assert torch.allclose(out_g.means2d.grad, out_t.means2d.grad, atol=1e-3 * scale.item())
