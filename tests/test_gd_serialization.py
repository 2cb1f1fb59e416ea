"""Space-filling-curve codes and serialization order (engine/gd/serialization.py)."""

from __future__ import annotations

import pytest
import torch

from engine.gd.serialization import (
    MAX_DEPTH,
    ORDERS,
    depth_for,
    encode,
    grid_coordinates,
    hilbert_encode,
    inverse_permutation,
    serialize,
    z_order_encode,
)

hilbertcurve = pytest.importorskip("hilbertcurve.hilbertcurve")


def _z_order_reference(point: list[int], depth: int) -> int:
    """Bit-interleave loop, x in the most significant position of each group."""
    code = 0
    for bit in range(depth - 1, -1, -1):
        for axis in range(3):
            code = (code << 1) | ((point[axis] >> bit) & 1)
    return code


def _full_grid(depth: int) -> torch.Tensor:
    a = torch.arange(2**depth)
    return torch.stack(torch.meshgrid(a, a, a, indexing="ij"), dim=-1).reshape(-1, 3)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8, 11, 16])
def test_hilbert_matches_hilbertcurve_package(depth: int) -> None:
    gen = torch.Generator().manual_seed(depth)
    grid = torch.randint(0, 2**depth, (300, 3), generator=gen)
    # hilbertcurve takes points (x, y, z) with x as the first (most significant) axis,
    # the same convention as ours; the "-trans" order swaps x and y first.
    curve = hilbertcurve.HilbertCurve(depth, 3)
    expected = torch.tensor([curve.distance_from_point(p) for p in grid.tolist()])
    assert torch.equal(hilbert_encode(grid, depth), expected)
    swapped = [[p[1], p[0], p[2]] for p in grid.tolist()]
    expected_t = torch.tensor([curve.distance_from_point(p) for p in swapped])
    assert torch.equal(encode(grid, "hilbert-trans", depth), expected_t)


@pytest.mark.parametrize("depth", [1, 3, 7, 16])
def test_z_order_matches_bit_interleave_loop(depth: int) -> None:
    gen = torch.Generator().manual_seed(100 + depth)
    grid = torch.randint(0, 2**depth, (300, 3), generator=gen)
    expected = torch.tensor([_z_order_reference(p, depth) for p in grid.tolist()])
    assert torch.equal(z_order_encode(grid, depth), expected)
    swapped = torch.tensor([_z_order_reference([p[1], p[0], p[2]], depth) for p in grid.tolist()])
    assert torch.equal(encode(grid, "z-trans", depth), swapped)


def test_max_depth_codes_fit_in_48_bits() -> None:
    top = torch.full((1, 3), 2**MAX_DEPTH - 1)
    for order in ORDERS:
        code = encode(top, order, MAX_DEPTH)
        assert 0 <= int(code) < 2**48
    assert int(z_order_encode(top, MAX_DEPTH)) == 2**48 - 1


@pytest.mark.parametrize("order", ["hilbert", "hilbert-trans"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_hilbert_consecutive_codes_are_one_grid_step_apart(order: str, depth: int) -> None:
    grid = _full_grid(depth)
    code = encode(grid, order, depth)
    assert torch.equal(code.sort().values, torch.arange(8**depth))  # a bijection
    walk = grid[code.argsort()]
    steps = (walk[1:] - walk[:-1]).abs()
    assert torch.equal(steps.sum(dim=1), torch.ones(len(walk) - 1, dtype=torch.int64))


@pytest.mark.parametrize("order", ["z", "z-trans"])
def test_z_order_aligned_blocks_are_contiguous_code_ranges(order: str) -> None:
    # Z-order locality: every aligned 2^k cube is one contiguous run of codes, so
    # consecutive codes stay inside ever smaller cubes; within a 2x2x2 cube
    # consecutive cells are face neighbours or within a cube diagonal.
    depth = 3
    grid = _full_grid(depth)
    code = encode(grid, order, depth)
    assert torch.equal(code.sort().values, torch.arange(8**depth))
    for k in range(1, depth + 1):
        block = grid >> k
        block_id = (block[:, 0] * 2**depth + block[:, 1]) * 2**depth + block[:, 2]
        for b in block_id.unique():
            c = code[block_id == b]
            assert int(c.max() - c.min()) + 1 == c.numel() == 8**k
    walk = grid[code.argsort()]
    inside = (walk[1:] >> 1 == walk[:-1] >> 1).all(dim=1)
    assert ((walk[1:] - walk[:-1]).abs()[inside].max(dim=1).values == 1).all()


def test_batch_index_goes_in_the_high_bits_and_sorts_first() -> None:
    gen = torch.Generator().manual_seed(0)
    grid = torch.randint(0, 16, (200, 3), generator=gen)
    batch = torch.randint(0, 5, (200,), generator=gen)
    for order in ORDERS:
        code = encode(grid, order, 4, batch)
        assert torch.equal(code >> 12, batch)
        assert torch.equal(code & (2**12 - 1), encode(grid, order, 4))
        assert (batch[code.argsort()].diff() >= 0).all()
    with pytest.raises(ValueError):
        encode(grid[:1], "z", 16, torch.tensor([2**15]))


def test_grids_wider_than_16_bits_are_coarsened_for_ordering() -> None:
    gen = torch.Generator().manual_seed(3)
    pts = torch.rand(300, 3, generator=gen)
    pts[:5] *= 1e4  # a far-flung background at a tiny grid size
    ser = serialize(pts, 1e-3, "hilbert")
    assert torch.equal(ser.perm[ser.inverse], torch.arange(300))
    # Same order as serializing on the 16-bit coarsened grid explicitly.
    grid = grid_coordinates(pts, 1e-3)
    shift = int(grid.max()).bit_length() - MAX_DEPTH
    code = encode(grid >> shift, "hilbert", MAX_DEPTH)
    assert torch.equal(ser.code, code)


def test_inverse_permutation_round_trip() -> None:
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(100, generator=gen)
    x = torch.randn(100, generator=gen)
    inv = inverse_permutation(perm)
    assert torch.equal(x[perm][inv], x)
    assert torch.equal(perm[inv], torch.arange(100))


def test_grid_coordinates_and_depth() -> None:
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.5, 0.99], [1.0, 0.1, 0.3]])
    grid = grid_coordinates(pts, 0.25)
    assert torch.equal(grid, torch.tensor([[0, 0, 0], [1, 2, 3], [4, 0, 1]]))
    assert depth_for(grid) == 3
    with pytest.raises(ValueError):
        depth_for(torch.tensor([[2**16, 0, 0]]))
    with pytest.raises(ValueError):
        grid_coordinates(pts, 0.0)


@pytest.mark.parametrize("order", ORDERS)
def test_serialize_order_depends_on_the_point_set_only(order: str) -> None:
    gen = torch.Generator().manual_seed(2)
    # A coarse grid makes many points share a cell: ties must not follow input order.
    pts = torch.rand(500, 3, generator=gen)
    batch = torch.randint(0, 3, (500,), generator=gen)
    ser = serialize(pts, 0.3, order, batch)
    shuffle = torch.randperm(500, generator=gen)
    ser2 = serialize(pts[shuffle], 0.3, order, batch[shuffle])
    assert torch.equal(pts[ser.perm], pts[shuffle][ser2.perm])
    assert (ser.code[ser.perm].diff() >= 0).all()
    assert torch.equal(ser.perm[ser.inverse], torch.arange(500))
