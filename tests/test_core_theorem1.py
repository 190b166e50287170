"""Theorem 1 of the paper (spec section 5) as a test.

For a ReLU network with non-negative logits (last layer ReLU), T = 1, LFP-0 with the Eq. 7
feedback f_c = |o_c| (onehot_c - sigmoid(o_c)) and no normalization, every weight where both the
LFP update G and the gradient are nonzero gets an update with the sign of the negative gradient
of the binary cross-entropy-with-logits loss on one-hot targets. The gradient is computed with
torch autograd here, in the test only (the engine never uses autograd).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as Fn

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.core import eq7_reward

pytestmark = pytest.mark.usefixtures("single_thread")

DT = torch.float64


def _net(seed, widths):
    torch.manual_seed(seed)
    layers = [snn.ReLULinear(a, b, dtype=DT) for a, b in zip(widths[:-1], widths[1:])]
    with torch.no_grad():
        for layer in layers:
            layer.bias.uniform_(-0.1, 0.3)  # keep most units alive
    return snn.Sequential(*layers)


def _autograd_direction(net, x, y):
    """-dBCE/dW for every parameter, with a plain torch forward of the same ReLU net."""
    params = [p for layer in net for p in (layer.weight, layer.bias)]
    h = x
    for layer in net:
        h = torch.relu(Fn.linear(h, layer.weight, layer.bias))
    target = Fn.one_hot(y, h.shape[-1]).to(DT)
    loss = Fn.binary_cross_entropy_with_logits(h, target, reduction="sum")
    grads = torch.autograd.grad(loss, params)
    names = [f"{i}.{k}" for i in range(len(net)) for k in ("weight", "bias")]
    return {n: -g for n, g in zip(names, grads)}, h


@pytest.mark.parametrize("seed,widths", [
    (0, [8, 16, 12, 5]),
    (1, [10, 20, 16, 12, 4]),
    (2, [6, 24, 24, 3]),
    (3, [12, 16, 16, 16, 6]),
])
def test_lfp0_eq7_has_the_sign_of_the_negative_bce_gradient(seed, widths):
    net = _net(seed, widths)
    g = torch.Generator().manual_seed(100 + seed)
    B = 16
    x = torch.randn(B, widths[0], generator=g, dtype=DT)
    y = torch.randint(0, widths[-1], (B,), generator=g)
    lfp = LFP(net, rule="zero", reward="eq7", normalize=None)
    res = lfp.compute(x, y, steps=1)
    neg_grad, logits = _autograd_direction(net, x, y)
    # same forward, non-negative logits
    assert torch.allclose(res.output[0], logits) and (logits >= 0).all()
    compared = agree = 0
    for name, G in res.grads.items():
        d = neg_grad[name]
        assert G.shape == d.shape and not G.requires_grad
        # "nonzero" with a float64 round-off margin (the two sums are formed differently)
        nz = (G.abs() > 1e-12 * G.abs().max()) & (d.abs() > 1e-12 * d.abs().max())
        compared += int(nz.sum())
        agree += int((torch.sign(G) == torch.sign(d))[nz].sum())
        # where the gradient is exactly zero because a unit is dead, LFP-0 gives 0 as well
        assert torch.all(G[d == 0] == 0)
    assert agree == compared, f"{compared - agree} of {compared} weights disagree in sign"
    n_params = sum(p.numel() for p in net.parameters())
    assert compared >= 0.3 * n_params, f"only {compared} of {n_params} parameters compared"


def test_sign_check_detects_a_flipped_reward():
    # The comparison above can fail: with the reward negated every compared sign is flipped.
    net = _net(5, [8, 16, 12, 5])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 8, generator=g, dtype=DT)
    y = torch.randint(0, 5, (16,), generator=g)
    res = LFP(net, rule="zero", normalize=None,
              reward=lambda o, t: -eq7_reward(o, t)).compute(x, y, steps=1)
    neg_grad, _ = _autograd_direction(net, x, y)
    G, d = res.grads["1.weight"], neg_grad["1.weight"]
    nz = (G != 0) & (d != 0)
    assert nz.sum() > 20 and torch.all(torch.sign(G[nz]) == -torch.sign(d[nz]))


def test_lfp0_n_equals_negative_loss_gradient_at_every_layer():
    # The mechanism behind Theorem 1: with LFP-0 and Eq. 7, n = -dBCE/dz at every pre-activation
    # z of an active unit, so G = |W| * (-dBCE/dW) / B exactly.
    net = _net(7, [8, 16, 12, 5])
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 8, generator=g, dtype=DT)
    y = torch.randint(0, 5, (16,), generator=g)
    res = LFP(net, rule="zero", reward="eq7", normalize=None).compute(x, y, steps=1)
    neg_grad, _ = _autograd_direction(net, x, y)
    for i, layer in enumerate(net):
        expect = layer.weight.detach().abs() * neg_grad[f"{i}.weight"] / x.shape[0]
        assert torch.allclose(res.grads[f"{i}.weight"], expect, rtol=1e-9, atol=1e-14)
