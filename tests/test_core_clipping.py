"""Stabilizers (global-norm clipping, adaptive gradient clipping) and how LFP writes .grad."""

from __future__ import annotations

import pytest
import torch

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.core import adaptive_clip, clip_global_norm

pytestmark = pytest.mark.usefixtures("single_thread")


def _global_norm(grads):
    return torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()


def test_clip_global_norm_scales_down_to_max():
    g = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(5, 4, generator=g) * 3, "b": torch.randn(7, generator=g) * 3}
    before = _global_norm(grads)
    assert before > 2.0
    out = clip_global_norm(grads, 2.0)
    after = _global_norm(out)
    assert after <= 2.0 and after == pytest.approx(2.0, rel=1e-5)
    # one common factor for all tensors: the direction is kept
    k = before / after
    for name in grads:
        assert torch.allclose(out[name] * k, grads[name], rtol=1e-5)


def test_clip_global_norm_leaves_small_grads_alone():
    grads = {"a": torch.tensor([0.3, -0.4]), "b": torch.tensor([[0.1]])}
    out = clip_global_norm(grads, 1.0)
    assert all(torch.equal(out[k], grads[k]) for k in grads)
    zeros = {"a": torch.zeros(3)}
    assert torch.equal(clip_global_norm(zeros, 1.0)["a"], zeros["a"])


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 3, 3), (6,)])
def test_adaptive_clip_unit_bound(shape):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(*shape, generator=g)
    W[0] = 0.0  # a unit with zero weights: bounded by clip * eps
    G = torch.randn(*shape, generator=g) * 5
    G[1] = W[1] * 1e-3  # a unit whose update is already small: untouched
    clip, eps = 0.1, 1e-3
    out = adaptive_clip(G, W, clip, eps)

    def unit_norm(t):
        return t.abs() if t.dim() == 1 else t.flatten(1).norm(dim=1)

    bound = clip * unit_norm(W).clamp(min=eps)
    assert torch.all(unit_norm(out) <= bound * (1 + 1e-5))
    assert torch.equal(out[1], G[1])
    clipped = unit_norm(G) > bound
    assert clipped.sum() >= 2  # the test exercises the clipping
    # clipped units keep their direction and sit on the bound
    assert torch.allclose(unit_norm(out)[clipped], bound[clipped], rtol=1e-5)
    cos = (out.flatten(1) * G.flatten(1)).sum(1) if G.dim() > 1 else out * G
    assert torch.all(cos >= 0)


def test_adaptive_clip_unchanged_when_small():
    W = torch.randn(4, 5)
    G = W * 0.01
    assert torch.equal(adaptive_clip(G, W, 0.1), G)


def _setup(**kw):
    torch.manual_seed(3)
    net = snn.Sequential(snn.LIFLinear(8, 6), snn.LIFLinear(6, 4))
    with torch.no_grad():
        net[0].weight.mul_(2)
    x = torch.randn(10, 8) * 2
    y = torch.arange(10) % 4
    return net, LFP(net, **kw), x, y


def test_step_writes_negative_G():
    net, lfp, x, y = _setup()
    res = lfp.compute(x, y, steps=7)
    step_res = lfp.step(x, y, steps=7)
    params = dict(net.named_parameters())
    assert set(res.grads) == set(params)
    for name, G in res.grads.items():
        assert torch.equal(step_res.grads[name], G)
        assert torch.equal(params[name].grad, -G), name
        assert params[name].grad.dtype == params[name].dtype
    assert any(G.abs().sum() > 0 for G in res.grads.values())
    # step() does not accumulate: calling it again overwrites .grad
    lfp.step(x, y, steps=7)
    for name, G in res.grads.items():
        assert torch.equal(params[name].grad, -G)


def test_step_with_clip_norm_writes_clipped_negative_G():
    net, lfp, x, y = _setup(clip_norm=0.05)
    res = lfp.compute(x, y, steps=7)
    assert _global_norm(res.grads) > 0.05  # compute() returns G before clipping
    lfp.step(x, y, steps=7)
    clipped = clip_global_norm(res.grads, 0.05)
    params = dict(net.named_parameters())
    for name in res.grads:
        assert torch.allclose(params[name].grad, -clipped[name], rtol=1e-6, atol=1e-12)
    assert _global_norm({n: p.grad for n, p in params.items()}) <= 0.05 * (1 + 1e-5)


def test_step_with_agc_writes_unitwise_clipped_negative_G():
    net, lfp, x, y = _setup(agc=0.01)
    res = lfp.compute(x, y, steps=7)
    lfp.step(x, y, steps=7)
    params = dict(net.named_parameters())
    changed = 0
    for name, G in res.grads.items():
        expect = adaptive_clip(G, params[name], 0.01)
        assert torch.allclose(params[name].grad, -expect, rtol=1e-6, atol=1e-12)
        changed += int(not torch.equal(expect, G))
    assert changed > 0


def test_agc_and_clip_norm_on_a_conv_net():
    # regression: adaptive_clip crashed on 4-D conv weights (Tensor.norm over 3 dims)
    torch.manual_seed(5)
    net = snn.Sequential(snn.LIFConv2d(1, 3, 3, padding=1), snn.MaxPool2d(2), snn.Flatten(),
                         snn.LIFLinear(3 * 4 * 4, 4))
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[3].weight.mul_(3)
    lfp = LFP(net, agc=0.02, clip_norm=0.5)
    x, y = torch.randn(6, 1, 8, 8) * 2, torch.tensor([0, 1, 2, 3, 0, 1])
    res = lfp.step(x, y, steps=5)
    params = dict(net.named_parameters())
    W = params["0.weight"].detach()
    gn = params["0.weight"].grad.flatten(1).norm(dim=1)
    assert torch.all(gn <= 0.02 * W.flatten(1).norm(dim=1).clamp(min=1e-3) * (1 + 1e-5))
    assert _global_norm({n: p.grad for n, p in params.items()}) <= 0.5 * (1 + 1e-5)
    assert res.grads["0.weight"].abs().sum() > 0
