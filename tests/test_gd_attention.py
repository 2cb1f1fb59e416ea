"""Serialized patch attention (engine/gd/attention.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.gd.attention import Block, DropPath, SerializedAttention, patch_layout
from engine.gd.serialization import serialize


def _full_attention(attn: SerializedAttention, feats: torch.Tensor) -> torch.Tensor:
    """Reference: every point attends to every point, written out by hand."""
    n, c = feats.shape
    h = attn.num_heads
    q, k, v = attn.qkv(feats).view(n, 3, h, c // h).permute(1, 2, 0, 3)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (c // h) ** 0.5, dim=-1)
    return attn.proj((weights @ v).transpose(0, 1).reshape(n, c))


def _setup(n: int, c: int = 16, heads: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=gen)
    feats = torch.randn(n, c, generator=gen)
    return pts, feats, SerializedAttention(c, heads)


@pytest.mark.parametrize("order", ["z", "hilbert-trans"])
def test_one_patch_covering_all_points_equals_full_attention(order: str) -> None:
    pts, feats, attn = _setup(37)
    layout = patch_layout(serialize(pts, 0.1, order), patch_size=64)  # 37 real + 27 padding
    assert layout.num_patches == 1 and layout.has_padding
    torch.testing.assert_close(attn(feats, layout), _full_attention(attn, feats))


def test_patches_never_mix_batch_elements() -> None:
    pts, feats, attn = _setup(90)
    batch = torch.cat([torch.zeros(40), torch.ones(50)]).long()[torch.randperm(90)]
    layout = patch_layout(serialize(pts, 0.1, "hilbert", batch), 64, batch)
    # 40 -> one patch of 64, 50 -> one patch of 64: each batch element is its own patch.
    assert layout.num_patches == 2
    slot_batch = batch[layout.gather].view(-1, 64)
    assert (slot_batch == slot_batch[:, :1]).all()
    out = attn(feats, layout)
    for b in (0, 1):
        sel = batch == b
        torch.testing.assert_close(out[sel], _full_attention(attn, feats[sel]))


def test_real_points_are_independent_of_padding() -> None:
    pts, feats, attn = _setup(50)
    layout = patch_layout(serialize(pts, 0.05, "z"), patch_size=16)
    assert layout.num_patches == 4 and int(layout.valid.sum()) == 50
    reference = attn(feats, layout)
    # Point the padding slots somewhere else entirely: nothing real may change.
    junk = torch.where(layout.valid, layout.gather, torch.randint(0, 50, layout.gather.shape))
    changed = attn(feats, dataclasses.replace(layout, gather=junk))
    torch.testing.assert_close(changed, reference, rtol=0, atol=0)
    # And each patch equals full attention over its own real points.
    for p in range(layout.num_patches):
        sl = slice(16 * p, 16 * (p + 1))
        idx = layout.gather[sl][layout.valid[sl]]
        torch.testing.assert_close(reference[idx], _full_attention(attn, feats[idx]))


def test_layout_slots_cover_every_point_once() -> None:
    pts, _, _ = _setup(101)
    batch = torch.randint(0, 3, (101,), generator=torch.Generator().manual_seed(5))
    layout = patch_layout(serialize(pts, 0.1, "z-trans", batch), 48, batch)
    assert torch.equal(layout.gather[layout.slot], torch.arange(101))
    assert int(layout.valid.sum()) == 101
    assert torch.equal(layout.valid[layout.slot], torch.ones(101, dtype=torch.bool))


def test_drop_path_is_identity_in_eval_and_drops_rows_in_train() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000, 8)
    dp = DropPath(0.5)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    dropped = (y == 0).all(dim=1)
    assert 350 < int(dropped.sum()) < 650
    torch.testing.assert_close(y[~dropped], 2 * x[~dropped])


def test_block_with_drop_path_in_eval_is_deterministic_and_patch_local() -> None:
    pts, feats, _ = _setup(60)
    block = Block(16, 4, patch_size=16, drop_path=0.3).eval()
    layout = patch_layout(serialize(pts, 0.05, "hilbert"), 16)
    out = block(feats, pts, 0.05, layout)
    assert out.shape == feats.shape and torch.isfinite(out).all()
    torch.testing.assert_close(block(feats, pts, 0.05, layout), out, rtol=0, atol=0)
    # Changing one patch's points leaves the other patches untouched.
    first = layout.gather[:16][layout.valid[:16]]
    feats2 = feats.clone()
    feats2[first] += 1.0
    out2 = block(feats2, pts, 0.05, layout)
    others = torch.ones(60, dtype=torch.bool)
    others[first] = False
    torch.testing.assert_close(out2[others], out[others], rtol=0, atol=0)
    assert not torch.allclose(out2[first], out[first])
