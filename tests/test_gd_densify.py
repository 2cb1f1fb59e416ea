"""UP / SPLIT / HEAD and the whole densifier (engine/gd/densify.py, config.py)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.gaussians import Gaussians
from engine.gd.config import OBJECT, SCENE, SMALL, DensifyConfig, fine_count, level_counts
from engine.gd.densify import GenerativeDensifier, SplitMask, split_top_k

from .conftest import random_gaussians

# Narrow and shallow, with the object model's structure (R = [2, 4], c = 0.8).
TINY = SMALL.with_(channels=(8, 16), heads=(2, 2), depths=(1, 1), patch_size=16, drop_path=0.0)


def _inputs(n: int, c: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=gen) - 0.5, torch.randn(n, c, generator=gen)


def _parents(n: int, degree: int = 0, seed: int = 0) -> Gaussians:
    return random_gaussians(n, degree, seed, means_range=(-0.5, 0.5),
                            log_scale_normal=(-4.0, 0.1))  # fmt: skip


def test_official_object_count_formula() -> None:
    # 12k candidates x2 = 24k; 80% (19.2k) continue, 4.8k leaves; 19.2k x4 = 76.8k.
    assert level_counts(12_000, OBJECT) == [(24_000, 4_800), (76_800, 76_800)]
    assert fine_count(12_000, OBJECT) == 81_600
    # Scene: 30k candidates per view, R = [2, 2, 2], c = 0.6 at both splits.
    assert level_counts(30_000, SCENE) == [(60_000, 24_000), (72_000, 28_800), (86_400, 86_400)]
    assert fine_count(1, OBJECT) == 2 * 1 - 2 + 4 * 2  # ceil keeps both children of 1


def test_object_structure_produces_exactly_the_configured_counts() -> None:
    torch.manual_seed(0)
    model = GenerativeDensifier(TINY, in_channels=12).eval()
    means, feats = _inputs(12_000)
    with torch.no_grad():
        out = model(means, feats)
    assert len(out.gaussians) == 81_600 == fine_count(12_000, TINY)
    assert torch.equal(out.level.bincount(), torch.tensor([0, 4_800, 76_800]))
    # Every candidate's children: 2 at level 1 split into leaves + continuing, 4 per continuing.
    per_parent = out.parent.bincount(minlength=12_000)
    lv1 = (out.level == 1).long()
    leaves1 = torch.zeros(12_000, dtype=torch.long).index_add_(0, out.parent, lv1)
    assert torch.equal(per_parent, leaves1 + 4 * (2 - leaves1))


@pytest.mark.parametrize("n0,n1", [(37, 50), (1, 5)])
def test_counts_are_per_batch_element(n0: int, n1: int) -> None:
    torch.manual_seed(1)
    cfg = TINY.with_(upsample=(2, 2, 3), channels=(8, 8, 8), heads=(2, 2, 2), depths=(1, 0, 1),
                     continue_ratio=(0.7, 0.5))  # fmt: skip
    model = GenerativeDensifier(cfg, in_channels=12).eval()
    means, feats = _inputs(n0 + n1)
    batch = torch.tensor([0] * n0 + [1] * n1)[torch.randperm(n0 + n1)]
    with torch.no_grad():
        out = model(means, feats, batch=batch)
    for b, n in ((0, n0), (1, n1)):
        sel = out.batch == b
        assert int(sel.sum()) == fine_count(n, cfg)
        assert torch.equal(
            out.level[sel].bincount(minlength=4)[1:],
            torch.tensor([leaves for _, leaves in level_counts(n, cfg)]),
        )
        assert (batch[out.parent[sel]] == b).all()


def test_a_continue_ratio_of_one_disables_the_mask_of_that_level() -> None:
    torch.manual_seed(12)
    cfg = TINY.with_(upsample=(2, 2, 2), channels=(8, 8, 8), heads=(2, 2, 2), depths=(1, 1, 1),
                     continue_ratio=(1.0, 0.5))  # fmt: skip
    assert level_counts(10, cfg) == [(20, 0), (40, 20), (40, 40)]
    model = GenerativeDensifier(cfg, in_channels=12).train()
    assert model.levels[0].split is None and model.levels[0].head is None
    means, feats = _inputs(10)
    out = model(means, feats)
    assert len(out.gaussians) == fine_count(10, cfg) == 60
    assert torch.equal(out.level.bincount(minlength=4), torch.tensor([0, 0, 20, 40]))
    out.gaussians.sh.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_split_top_k_keeps_ceil_ratio_per_batch_element() -> None:
    gen = torch.Generator().manual_seed(0)
    prob = torch.rand(103, generator=gen)
    batch = torch.randint(0, 3, (103,), generator=gen)
    keep = split_top_k(prob, 0.8, batch)
    for b in range(3):
        sel = batch == b
        n = int(sel.sum())
        assert int(keep[sel].sum()) == math.ceil(0.8 * n - 1e-9)
        # Everything kept scores at least as high as everything dropped.
        if (~keep[sel]).any():
            assert prob[sel][keep[sel]].min() >= prob[sel][~keep[sel]].max()


def test_children_stay_within_the_offset_bound() -> None:
    torch.manual_seed(2)
    model = GenerativeDensifier(TINY, in_channels=12).eval()
    means, feats = _inputs(200)
    g = TINY.grid_size
    with torch.no_grad():
        out = model(means, feats)
    dist = (out.gaussians.means - means[out.parent]).abs().amax(dim=1)
    bound = torch.where(out.level == 1, 0.5 * g, 0.5 * g + 0.25 * g)
    assert (dist <= bound + 1e-6).all()
    assert dist.max() > 0.05 * g  # they do move


def test_output_is_invariant_to_input_order() -> None:
    torch.manual_seed(3)
    cfg = TINY.with_(depths=(2, 2), drop_path=0.3)  # drop-path is off in eval
    model = GenerativeDensifier(cfg, in_channels=12).eval()
    means, feats = _inputs(300)
    perm = torch.randperm(300)
    with torch.no_grad():
        a = model(means, feats)
        b = model(means[perm], feats[perm])

    def canonical(out, parent_map):
        g = out.gaussians
        cols = [
            out.level[:, None],
            parent_map[out.parent][:, None],
            g.means,
            g.log_scales,
            g.quats,
            g.opacity_logits[:, None],
            g.sh.flatten(1),
        ]
        rows = torch.cat([c.double() for c in cols], dim=1)
        # Sort by (level, parent, x, y, z): unique for distinct children.
        key = rows[:, :5]
        order = torch.arange(len(rows))
        for col in reversed(range(key.shape[1])):
            order = order[torch.sort(key[order, col], stable=True).indices]
        return rows[order]

    ra, rb = canonical(a, torch.arange(300)), canonical(b, perm)
    assert ra.shape == rb.shape
    torch.testing.assert_close(ra, rb, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter_and_the_mask_through_the_ste() -> None:
    torch.manual_seed(4)
    model = GenerativeDensifier(TINY, in_channels=12).train()
    means, feats = _inputs(150)
    out = model(means, feats.requires_grad_())
    g = out.gaussians
    gen = torch.Generator().manual_seed(0)
    loss = sum(
        (t * torch.randn(t.shape, generator=gen)).sum()
        for t in (g.means, g.log_scales, g.quats, g.opacity_logits, g.sh)
    )
    loss.backward()
    missing = [
        name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert model.levels[0].split.net[-1].weight.grad.abs().sum() > 0


def test_straight_through_estimator_keeps_values_and_passes_gradient_to_p() -> None:
    torch.manual_seed(5)
    split = SplitMask(6)
    feats = torch.randn(20, 6, requires_grad=True)
    out, keep, prob = split(feats, 0.5, torch.zeros(20, dtype=torch.long))
    torch.testing.assert_close(out, feats)  # forward value is f
    assert int(keep.sum()) == 10
    assert torch.equal(keep, prob >= prob.sort(descending=True).values[9])
    out.sum().backward()
    assert split.net[0].weight.grad.abs().sum() > 0


def test_zero_head_gives_the_priors() -> None:
    torch.manual_seed(6)
    model = GenerativeDensifier(TINY, in_channels=12).eval()
    for level in model.levels:
        torch.nn.init.zeros_(level.head.net[-1].weight)
        torch.nn.init.zeros_(level.head.net[-1].bias)
    means, feats = _inputs(40)
    with torch.no_grad():
        out = model(means, feats)
    g = out.gaussians
    assert torch.allclose(g.opacity_logits, torch.tensor(-2.18))
    assert torch.allclose(g.log_scales, torch.tensor(math.log(TINY.grid_size / 24)))
    assert torch.equal(g.quats, torch.tensor([[1.0, 0, 0, 0]]).expand(len(g), 4))
    assert torch.equal(g.sh, torch.zeros(len(g), 1, 3))


def test_residual_head_starts_from_the_parent_parameters() -> None:
    torch.manual_seed(7)
    cfg = TINY.with_(residual=True, sh_degree=1)
    model = GenerativeDensifier(cfg, in_channels=12).eval()
    for level in model.levels:
        torch.nn.init.zeros_(level.head.net[-1].weight)
        torch.nn.init.zeros_(level.head.net[-1].bias)
    parents = _parents(30, degree=0)
    with torch.no_grad():
        out = model(parents.means, torch.randn(30, 12), parents=parents)
    g, p = out.gaussians, parents[out.parent]
    assert torch.equal(g.sh[:, :1], p.sh) and torch.equal(g.sh[:, 1:], torch.zeros(len(g), 3, 3))
    assert torch.equal(g.opacity_logits, p.opacity_logits)
    torch.testing.assert_close(g.log_scales, p.log_scales - math.log(2) * out.level[:, None])
    torch.testing.assert_close(g.quats, p.rotations)
    with pytest.raises(ValueError):
        model(parents.means, torch.randn(30, 12))


def test_chunked_inference_equals_the_one_piece_forward(monkeypatch) -> None:
    import engine.gd.attention as attention_mod

    torch.manual_seed(11)
    model = GenerativeDensifier(TINY.with_(residual=True), in_channels=12).eval()
    parents = _parents(90)
    feats = torch.randn(90, 12)
    with torch.enable_grad():
        whole = model(parents.means, feats, parents=parents)
    monkeypatch.setattr(attention_mod, "ROWWISE_CHUNK", 7)  # ragged chunks everywhere
    with torch.no_grad():
        chunked = model(parents.means, feats, parents=parents)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        torch.testing.assert_close(
            getattr(chunked.gaussians, name), getattr(whole.gaussians, name).detach()
        )
    assert torch.equal(chunked.parent, whole.parent) and torch.equal(chunked.level, whole.level)


def test_child_sampler_feeds_the_head() -> None:
    torch.manual_seed(10)
    cfg = TINY.with_(child_samples=2)
    model = GenerativeDensifier(cfg, in_channels=12).eval()
    means, feats = _inputs(30)
    seen = []

    def sampler(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return torch.stack([x[:, 0], x[:, 1] * 0 + 1], dim=1)

    with torch.no_grad():
        out = model(means, feats, child_sampler=sampler)
    assert sum(seen) == len(out.gaussians) == fine_count(30, cfg)
    with pytest.raises(ValueError):
        model(means, feats)


def test_colour_gate_mixes_the_sampled_colour_into_the_dc_term() -> None:
    """With the gate shut a child keeps its own colour; fully open it takes the colour the
    views show where it is; at initialisation it is mostly shut (GATE_BIAS)."""
    from engine.gaussians import rgb_to_sh_dc
    from engine.gd.densify import GATE_BIAS

    torch.manual_seed(12)
    cfg = TINY.with_(residual=True, sh_degree=1, child_samples=8, color_gate=True)
    parents = _parents(30, degree=1)
    feats = torch.randn(30, 12)

    def sampler(x: torch.Tensor) -> torch.Tensor:  # the views show (x, 0.25, 0.75) at x
        rgb = torch.stack([x[:, 0] + 0.5, x[:, 0] * 0 + 0.25, x[:, 0] * 0 + 0.75], dim=1)
        return torch.cat([rgb, torch.zeros(len(x), 5)], dim=1)

    model = GenerativeDensifier(cfg, in_channels=12).eval()
    plain = GenerativeDensifier(cfg.with_(color_gate=False), in_channels=12).eval()
    plain.load_state_dict(model.state_dict(), strict=False)  # same weights but the gates
    heads = [lvl.head for lvl in model.levels]
    assert all(float(h.gate.bias.detach()) == GATE_BIAS and not h.gate.weight.any() for h in heads)
    with torch.no_grad():
        start = model(parents.means, feats, parents=parents, child_sampler=sampler)
        own = plain(parents.means, feats, parents=parents, child_sampler=sampler)
        for h in heads:
            h.gate.bias.fill_(40.0)  # fully open
        opened = model(parents.means, feats, parents=parents, child_sampler=sampler)
    seen = rgb_to_sh_dc(sampler(opened.gaussians.means)[:, :3])
    torch.testing.assert_close(opened.gaussians.sh[:, 0], seen)
    torch.testing.assert_close(opened.gaussians.sh[:, 1:], own.gaussians.sh[:, 1:])
    g0 = torch.sigmoid(torch.tensor(GATE_BIAS))
    mixed = torch.lerp(own.gaussians.sh[:, 0], seen, g0)
    torch.testing.assert_close(start.gaussians.sh[:, 0], mixed)
    with pytest.raises(ValueError, match="color_gate"):
        TINY.with_(color_gate=True, child_samples=0)


def test_grid_size_from_parents_when_config_has_none() -> None:
    torch.manual_seed(8)
    cfg = TINY.with_(grid_size=None)
    model = GenerativeDensifier(cfg, in_channels=12).eval()
    parents = _parents(50)
    with torch.no_grad():
        out = model(parents.means, torch.randn(50, 12), parents=parents)
    g = float(parents.log_scales.amax(dim=1).exp().median())
    dist = (out.gaussians.means - parents.means[out.parent]).abs().amax(dim=1)
    assert (dist <= 0.75 * g + 1e-6).all()
    with pytest.raises(ValueError):
        model(parents.means, torch.randn(50, 12))


def test_batch_elements_do_not_interact() -> None:
    torch.manual_seed(9)
    model = GenerativeDensifier(TINY, in_channels=12).eval()
    means, feats = _inputs(120)
    batch = (torch.arange(120) >= 70).long()
    other_feats = feats.clone()
    other_feats[70:] = torch.randn(50, 12)
    with torch.no_grad():
        a = model(means, feats, batch=batch)
        b = model(means, other_feats, batch=batch)
    sa, sb = a.batch == 0, b.batch == 0
    torch.testing.assert_close(a.gaussians.means[sa], b.gaussians.means[sb], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.gaussians.sh[sa], b.gaussians.sh[sb], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a.gaussians.sh[~sa], b.gaussians.sh[~sb])


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        DensifyConfig(upsample=(2, 4), channels=(8,))
    with pytest.raises(ValueError):
        DensifyConfig(continue_ratio=(0.8, 0.8))
    with pytest.raises(ValueError):
        DensifyConfig(channels=(10, 16), heads=(4, 4))
    with pytest.raises(ValueError):
        DensifyConfig(orders=("peano",))
    assert OBJECT.levels == 2 and SCENE.levels == 3
    assert OBJECT.channels == (160, 256) and OBJECT.heads == (20, 32) and OBJECT.patch_size == 48
    assert math.isclose(
        math.log(OBJECT.grid_size / OBJECT.scale_divisor), math.log(0.5 * OBJECT.voxel_size / 24)
    )


def _train_step(model, parents, feats, seed):
    torch.manual_seed(seed)
    out = model(parents.means, feats, parents=parents)
    g = out.gaussians
    loss = sum(t.square().mean() for t in (g.means, g.log_scales, g.sh, g.opacity_logits))
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return [getattr(g, k).detach() for k in ("means", "log_scales", "sh")], grads


def test_chunked_checkpointed_training_equals_the_one_piece_step(monkeypatch) -> None:
    import engine.gd.attention as attention_mod

    torch.manual_seed(12)
    model = GenerativeDensifier(TINY.with_(residual=True, drop_path=0.5), in_channels=12).train()
    parents = _parents(90)
    feats = torch.randn(90, 12)
    monkeypatch.setattr(attention_mod, "ROWWISE_CHUNK", 10**9)
    monkeypatch.setattr(attention_mod, "CHECKPOINT", False)  # one piece, activations kept
    whole, whole_grads = _train_step(model, parents, feats, seed=3)
    # Ragged chunks everywhere, each recomputed in the backward: same drop-path masks,
    # same outputs, same gradients.
    monkeypatch.setattr(attention_mod, "ROWWISE_CHUNK", 7)
    monkeypatch.setattr(attention_mod, "CHECKPOINT", True)
    chunked, chunked_grads = _train_step(model, parents, feats, seed=3)
    for a, b in zip(chunked, whole, strict=True):
        torch.testing.assert_close(a, b)
    for name, grad in whole_grads.items():  # equal up to the order of float sums over rows
        err = float((chunked_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12))
        assert err < 1e-4, (name, err)


def test_checkpointing_does_not_depend_on_the_number_of_points(monkeypatch) -> None:
    """Every chunk of every stage is checkpointed in training, whether N is 1 chunk or many.

    A size threshold made the backward recompute the forward only above it, so cost
    per point jumped there (10k -> 100k candidates: 15x the time).
    """
    import engine.gd.attention as attention_mod

    calls: list[int] = []
    real = attention_mod.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(next(a for a in args if a is not None).shape[0])
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(attention_mod, "checkpoint", counting)
    monkeypatch.setattr(attention_mod, "ROWWISE_CHUNK", 64)
    torch.manual_seed(14)
    model = GenerativeDensifier(TINY, in_channels=12).train()
    rows_per_candidate = []
    for n in (20, 200):  # below one chunk at every stage; several chunks at most stages
        means, feats = _inputs(n)
        calls.clear()
        out = model(means, feats)
        out.gaussians.means.sum().backward()
        assert calls and max(calls) <= 64
        rows_per_candidate.append(sum(calls) / n)
    # Blocks run on padded patches, so the checkpointed rows per candidate differ a
    # little; UP and HEAD rows are exact multiples of N.
    assert rows_per_candidate[0] == pytest.approx(rows_per_candidate[1], rel=0.1)
    calls.clear()
    with torch.no_grad():
        model(*_inputs(200))
    assert not calls  # inference keeps nothing, so nothing to recompute


def test_upsample_delta_f_input_equals_layer_norm_then_linear() -> None:
    from engine.gd.densify import Upsample

    torch.manual_seed(13)
    up = Upsample(16, 24, factor=3)
    pe = torch.rand(30, 90) * 2 - 1
    feats = torch.randn(10, 16) * 3 + 1
    reference = up.delta_f[1](up.delta_f[0](torch.cat([pe, feats.repeat_interleave(3, 0)], -1)))
    torch.testing.assert_close(up.delta_f_input(pe, feats), reference, rtol=1e-5, atol=1e-5)
