"""Conv2d, pooling and flatten in the LFP engine (spec section 4, "Conv2d" and "Pooling").

A convolution is a linear map: unfolding it into the equivalent dense matrix M (one row per
output neuron, one column per input pixel) and running the same LIF + LFP computation through a
dense LIFLinear must give the same spikes, feedback and, after summing the dense G over the
entries that share one kernel weight, the same G.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as Fn

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.train.lfp import layer_feedback
from spikelfp.core.rules import make_rule
from spikelfp.nn.layers import LayerRecord

pytestmark = pytest.mark.usefixtures("single_thread")

DT = torch.float64
RULES = ["zero", "epsilon", "zplus_zminus", "alphabeta", "lfprop"]


def _dense_equivalent(conv: snn.LIFConv2d, in_shape):
    """Dense LIFLinear equal to ``conv`` on inputs [C, H, W], and the kernel index of each entry."""
    C, H, W = in_shape
    n_in = C * H * W
    basis = torch.eye(n_in, dtype=DT).reshape(n_in, C, H, W)

    def conv_of(weight):
        out = Fn.conv2d(basis, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        return out.reshape(n_in, -1).t()  # [n_out, n_in]

    Wc = conv.weight.detach()
    M = conv_of(Wc)
    out_shape = Fn.conv2d(basis[:1], Wc, None, conv.stride, conv.padding, conv.dilation,
                          conv.groups).shape[1:]
    n_out = M.shape[0]
    # which kernel element each dense entry is (-1: no connection)
    index = torch.full((n_out, n_in), -1, dtype=torch.long)
    for k in range(Wc.numel()):
        onehot = torch.zeros(Wc.numel(), dtype=DT)
        onehot[k] = 1.0
        hit = conv_of(onehot.reshape(Wc.shape)) != 0
        assert torch.all(index[hit] == -1)  # each dense entry belongs to one kernel element
        index[hit] = k
    per_pos = out_shape[1] * out_shape[2]
    neuron = lambda p: p.repeat_interleave(per_pos) if p.dim() == 1 else p.reshape(-1)  # noqa: E731
    beta = neuron(conv.beta) if conv.beta.dim() else conv.beta
    theta = neuron(conv.threshold) if conv.threshold.dim() else conv.threshold
    dense = snn.LIFLinear(n_in, n_out, beta=beta, threshold=theta, reset=conv.reset, dtype=DT)
    with torch.no_grad():
        dense.weight.copy_(M)
        dense.bias.copy_(conv.bias.detach().repeat_interleave(per_pos))
    return dense, index, tuple(out_shape)


def _fold_weight_grad(G_dense, index, shape):
    out = torch.zeros(int(torch.tensor(shape).prod()), dtype=DT)
    keep = index >= 0
    out.index_add_(0, index[keep], G_dense[keep])
    assert torch.all(G_dense[~keep] == 0)  # no update for entries that are not connections
    return out.reshape(shape)


def _close(a, b, what, rtol=1e-9, atol=1e-12):
    assert a.shape == b.shape, f"{what}: {tuple(a.shape)} vs {tuple(b.shape)}"
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= atol + rtol * scale, f"{what}: error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("geometry", [dict(stride=1, padding=1), dict(stride=2, padding=0),
                                      dict(padding=2, dilation=2, groups=2, out=4)])
@pytest.mark.parametrize("constant", [False, True])
def test_conv_feedback_equals_dense_unfolding(rule, geometry, constant):
    torch.manual_seed(11)
    in_shape = (2, 6, 6)
    geometry = dict(geometry)
    c_out = geometry.pop("out", 3)
    beta = torch.tensor([0.9, 0.7, 1.0, 0.8])[:c_out]
    conv = snn.LIFConv2d(2, c_out, 3, beta=beta, threshold=0.8, dtype=DT, **geometry)
    with torch.no_grad():
        conv.weight.mul_(2.5)
        conv.weight[0, 0, 1, 1] = 0.0  # an exactly-zero kernel weight
    dense, index, out_shape = _dense_equivalent(conv, in_shape)
    T, B = 5, 3
    g = torch.Generator().manual_seed(12)
    x = torch.randn(B, *in_shape, generator=g, dtype=DT) if constant else \
        torch.randn(T, B, *in_shape, generator=g, dtype=DT)
    steps = T if constant else None
    with torch.no_grad():
        s_c, rec_c = conv.run(x, steps=steps)
        s_d, rec_d = dense.run(x.flatten(-3), steps=steps)
    assert torch.equal(s_c.flatten(-3), s_d)
    _close(rec_c.membrane.flatten(-3), rec_d.membrane, "membrane")
    assert 0 < s_c.sum() < s_c.numel()

    r = torch.randn(T, B, *out_shape, generator=g, dtype=DT)
    opts = dict(normalize=None, batch_reduction="sum") if rule == "lfprop" else dict(normalize="step")
    rule_obj = make_rule(rule)
    fc = layer_feedback(conv, r, rec_c, rule=rule_obj, details=True, **opts)
    fd = layer_feedback(dense, r.flatten(-3), rec_d, rule=rule_obj, details=True, **opts)

    _close(fc.feedback.flatten(-3), fd.feedback, "F")
    _close(fc.temporal.flatten(-3), fd.temporal, "c")
    if rule == "alphabeta":
        for a, b in zip(fc.n, fd.n):
            _close(a.flatten(-3), b, "n+/n-")
    else:
        _close(fc.n.flatten(-3), fd.n, "n")
    _close(fc.below.flatten(-3), fd.below, "feedback below")
    _close(fc.grad_weight, _fold_weight_grad(fd.grad_weight, index, conv.weight.shape), "G_W")
    _close(fc.grad_bias, fd.grad_bias.reshape(c_out, -1).sum(1), "G_b")
    assert fc.grad_weight[0, 0, 1, 1].item() == 0.0
    assert fc.grad_weight.abs().sum() > 0


# ----------------------------------------------------------------------------- pooling / flatten


def test_maxpool_routes_feedback_to_the_selected_input():
    # one frame [B=1, C=1, 4, 4], four 2x2 windows
    x = torch.tensor([[[[0.0, 1.0, 0.0, 0.0],
                        [0.0, 0.0, 0.0, 0.0],
                        [0.3, 0.9, -1.0, -2.0],
                        [0.5, 0.2, 0.0, -0.5]]]], dtype=DT)
    # windows: top-left single 1 at (0,1); top-right all zero; bottom-left max 0.9 at (2,1);
    # bottom-right max is 0 at (3,2): selected input is 0 -> nothing sent
    r = torch.tensor([[[[[2.0, 3.0], [4.0, 5.0]]]], [[[[-1.0, 0.5], [0.25, 7.0]]]]], dtype=DT)
    pool = snn.MaxPool2d(2)
    out, rec = pool.run(x)
    assert out.shape == (1, 1, 2, 2)
    res = layer_feedback(pool, r, rec)
    assert res.grad_weight is None and res.below.shape == (2, 1, 1, 4, 4)
    for t in range(2):
        expect = torch.zeros(4, 4, dtype=DT)
        expect[0, 1] = r[t, 0, 0, 0, 0]
        expect[2, 1] = r[t, 0, 0, 1, 0]
        assert torch.equal(res.below[t, 0, 0], expect)


def test_maxpool_ties_route_to_exactly_one_input():
    x = (torch.rand(3, 2, 2, 6, 6) > 0.4).to(DT)  # spikes with many ties
    r = torch.randn(3, 2, 2, 3, 3, dtype=DT)
    pool = snn.MaxPool2d(2)
    _, rec = pool.run(x)
    below = layer_feedback(pool, r, rec).below
    windows = below.unfold(-2, 2, 2).unfold(-2, 2, 2).reshape(3, 2, 2, 3, 3, 4)
    xw = x.unfold(-2, 2, 2).unfold(-2, 2, 2).reshape(3, 2, 2, 3, 3, 4)
    active = xw.amax(-1) > 0
    assert active.any() and (~active).any()
    assert torch.all((windows != 0).sum(-1) == active.to(torch.long))
    assert torch.allclose(windows.sum(-1), torch.where(active, r, 0.0))
    # feedback only lands on inputs that spiked
    assert torch.all(below[x == 0] == 0)


def test_avgpool_is_an_epsilon_linear_layer():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 2, 4, 4, generator=g, dtype=DT)
    r = torch.randn(2, 1, 2, 2, 2, generator=g, dtype=DT)
    pool = snn.AvgPool2d(2)
    out, rec = pool.run(x)
    below = layer_feedback(pool, r, rec).below
    eps = 1e-6
    for t in range(2):
        for c in range(2):
            for a in range(2):
                for b in range(2):
                    win = [(2 * a + i, 2 * b + j) for i in range(2) for j in range(2)]
                    z = sum(float(x[t, 0, c, p, q]) for p, q in win) / 4.0
                    assert abs(float(out[t, 0, c, a, b]) - z) < 1e-12
                    n = float(r[t, 0, c, a, b]) / (abs(z) + eps)
                    for p, q in win:
                        expect = float(x[t, 0, c, p, q]) * 0.25 * n
                        assert abs(float(below[t, 0, c, p, q]) - expect) <= 1e-9 * max(1, abs(expect))
    # conservation up to epsilon: each window sends sign(z) * r
    sent = below.unfold(-2, 2, 2).unfold(-2, 2, 2).sum((-1, -2))
    z = out
    assert torch.allclose(sent, torch.sign(z) * r * z.abs() / (z.abs() + eps), rtol=1e-10)


def test_pool_with_constant_frame_input():
    x = (torch.rand(2, 1, 4, 4) > 0.5).to(DT)
    r = torch.randn(3, 2, 1, 2, 2, dtype=DT)
    pool = snn.MaxPool2d(2)
    _, rec = pool.run(x)
    below = layer_feedback(pool, r, rec).below
    seq_below = layer_feedback(pool, r, LayerRecord(x.expand(3, *x.shape))).below
    assert below.shape == (3, 2, 1, 4, 4) and torch.equal(below, seq_below)


def test_flatten_feedback_is_a_reshape():
    flat = snn.Flatten()
    x = torch.randn(3, 2, 4, 5, 5, dtype=DT)
    out, rec = flat.run(x)
    assert out.shape == (3, 2, 100)
    r = torch.randn(3, 2, 100, dtype=DT)
    res = layer_feedback(flat, r, rec)
    assert torch.equal(res.below, r.reshape(3, 2, 4, 5, 5))
    assert torch.equal(res.below.flatten(-3), r)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("pool_cls", [snn.MaxPool2d, snn.AvgPool2d])
@pytest.mark.parametrize("rule", ["epsilon", {"conv": "zplus_zminus", "linear": "epsilon"},
                                  "alphabeta", "zero"])
def test_small_conv_net_end_to_end(pool_cls, rule):
    torch.manual_seed(21)
    net = snn.Sequential(snn.LIFConv2d(1, 4, 3, padding=1, beta=0.9), pool_cls(2), snn.Flatten(),
                         snn.LIFLinear(4 * 4 * 4, 5, beta=0.9))
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[3].weight.mul_(3)
    x = torch.randn(6, 1, 8, 8) * 1.5
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    lfp = LFP(net, rule=rule)
    if isinstance(rule, dict):
        assert lfp.rules["0"].name == "zplus_zminus" and lfp.rules["3"].name == "epsilon"
    res = lfp.compute(x, y, steps=8, keep_feedback=True)
    assert set(res.grads) == {n for n, _ in net.named_parameters()}
    for name, p in net.named_parameters():
        G = res.grads[name]
        assert G.shape == p.shape and G.dtype == p.dtype
        assert torch.isfinite(G).all(), name
        assert G.abs().sum() > 0, f"{name} got no update"
    conv_spikes = res.trace.records[0].spikes
    assert 0 < conv_spikes.sum() < conv_spikes.numel()
    r_conv = res.feedback["0"]  # what the pooling layer sent to the conv layer's spikes
    assert r_conv.shape == conv_spikes.shape
    if pool_cls is snn.MaxPool2d:
        assert torch.all(r_conv[conv_spikes == 0] == 0)
    # one training step through the optimizer moves every parameter tensor
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    opt.zero_grad()
    lfp.step(x, y, steps=8)
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
