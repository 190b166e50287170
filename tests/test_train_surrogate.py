"""The surrogate trainer's gradient equals a hand-written BPTT, and its forward equals LFP's."""

import math

import pytest
import torch

import spikelfp.nn as snn
from spikelfp.train.surrogate import atan, ce_count_loss, fast_sigmoid, mse_count_loss


def _dsg(name, x, slope):
    if name == "atan":
        return slope / 2 / (1 + (math.pi / 2 * slope * x) ** 2)
    return 1 / (slope * x.abs() + 1) ** 2


def _hand_bptt(x, y, W1, b1, W2, b2, beta, theta, T, sg, slope):
    """Explicit forward and reverse recursion for a 2-layer LIF net, subtract reset (detached)."""
    B = x.shape[1]
    layers = [(W1, b1), (W2, b2)]
    acts, vs = [x], []
    inp = x
    for W, b in layers:
        v_prev = torch.zeros(B, W.shape[0], dtype=x.dtype)
        s_prev = torch.zeros_like(v_prev)
        v_seq, s_seq = [], []
        for t in range(T):
            v = beta * v_prev + inp[t] @ W.T + b - theta * s_prev
            s = (v > theta).to(x.dtype)
            v_seq.append(v)
            s_seq.append(s)
            v_prev, s_prev = v, s
        vs.append(torch.stack(v_seq))
        inp = torch.stack(s_seq)
        acts.append(inp)
    count = acts[-1].sum(0)
    p = torch.softmax(count, -1)
    dcount = (p - torch.nn.functional.one_hot(y, count.shape[1]).to(x.dtype)) / B
    ds = [dcount] * T  # dL/ds_t of the output layer
    grads = []
    for li in (1, 0):
        W, b = layers[li]
        v = vs[li]
        dv = [None] * T
        carry = torch.zeros_like(v[0])
        for t in range(T - 1, -1, -1):
            dv[t] = ds[t] * _dsg(sg, v[t] - theta, slope) + beta * carry
            carry = dv[t]
        dv = torch.stack(dv)
        xin = acts[li]
        grads.append((torch.einsum("tbo,tbi->oi", dv, xin), dv.sum((0, 1))))
        ds = [dv[t] @ W for t in range(T)]
    return grads[::-1]


@pytest.mark.parametrize("sg,slope", [("atan", 2.0), ("fast_sigmoid", 25.0), ("atan", 5.0)])
def test_surrogate_gradient_equals_hand_bptt(sg, slope):
    torch.manual_seed(3)
    T, B = 3, 4
    net = snn.Sequential(snn.LIFLinear(5, 4, beta=0.8, dtype=torch.float64),
                         snn.LIFLinear(4, 3, beta=0.8, dtype=torch.float64))
    with torch.no_grad():
        net[0].weight.mul_(6)
        net[1].weight.mul_(6)
    x = torch.rand(T, B, 5, dtype=torch.float64) * 2
    y = torch.tensor([0, 1, 2, 1])
    fn = atan(slope) if sg == "atan" else fast_sigmoid(slope)
    trace = net.run(x, spike_fn=fn)
    assert 0 < trace.records[0].spikes.mean() < 1, "test needs some hidden spikes"
    ce_count_loss(trace.output, y).backward()
    hand = _hand_bptt(x, y, net[0].weight.detach(), net[0].bias.detach(), net[1].weight.detach(),
                      net[1].bias.detach(), 0.8, 1.0, T, sg, slope)
    for layer, (gW, gb) in zip(net, hand):
        assert torch.allclose(layer.weight.grad, gW, atol=1e-12, rtol=1e-10)
        assert torch.allclose(layer.bias.grad, gb, atol=1e-12, rtol=1e-10)
    assert net[0].weight.grad.abs().sum() > 0


def test_surrogate_forward_equals_lfp_forward():
    torch.manual_seed(0)
    net = snn.Sequential(snn.Flatten(1), snn.LIFLinear(20, 16), snn.LIFLinear(16, 5))
    x = torch.randn(7, 20)
    a = net.run(x, steps=12)
    b = net.run(x, steps=12, spike_fn=atan())
    for ra, rb in zip(a.records[1:], b.records[1:]):
        assert torch.equal(ra.spikes, rb.spikes.detach())
        assert torch.equal(ra.membrane, rb.membrane.detach())


def test_count_losses():
    spikes = torch.zeros(4, 2, 3)
    spikes[:, 0, 1] = 1  # sample 0: class 1 fires every step
    y = torch.tensor([1, 0])
    ce = ce_count_loss(spikes, y)
    exp = (-torch.log_softmax(torch.tensor([0.0, 4, 0]), 0)[1] - torch.log_softmax(torch.zeros(3), 0)[0]) / 2
    assert torch.allclose(ce, exp)
    mse = mse_count_loss(spikes, y)
    target = torch.tensor([[0.8, 3.2, 0.8], [3.2, 0.8, 0.8]])
    assert torch.allclose(mse, ((spikes.sum(0) - target) ** 2).mean())
