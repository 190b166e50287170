"""The forward pass against independent LIF implementations used as oracles.

snnTorch: ``snn.Leaky(beta, threshold, reset_mechanism=..., reset_delay=True)`` driven step by
step with ``nn.Linear`` / ``nn.Conv2d`` holding the same weights must give bit-identical spikes
and the same membranes (spec section 1).

Norse: ``lif_box_feed_forward_step`` is the only discrete LIF there without a current state.
Its Euler step is v' = v + a (I' - v) with a = dt * tau_mem_inv, i.e. beta = 1 - a and a current
scaled by a, and its reset is applied immediately to the stored state (not delayed). Reset to
zero maps exactly onto our "zero" reset with I' = I / (1 - beta): Norse's pre-reset voltage
v_decayed equals our v_t (up to float round-off, so we run it in float64). Norse's subtractive
reset subtracts theta *before* the next decay (beta * (v - theta)), snnTorch/our spec subtracts
it after (beta * v - theta): those differ by (1 - beta) * theta per spike and cannot be mapped,
so the Norse check covers the "zero" reset only.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import spikelfp.nn as snn
from spikelfp.core import lif_scan

pytestmark = pytest.mark.usefixtures("single_thread")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import snntorch

RESETS = ("subtract", "zero")


def _oracle_layer(x_seq, ref_map, beta, threshold, reset):
    """snnTorch Leaky driven step by step; returns spikes and membranes [T, B, ...]."""
    lif = snntorch.Leaky(beta=beta, threshold=threshold, reset_mechanism=reset, reset_delay=True)
    mem = lif.init_leaky()
    spikes, mems = [], []
    with torch.no_grad():
        for t in range(x_seq.shape[0]):
            spk, mem = lif(ref_map(x_seq[t]), mem)
            spikes.append(spk)
            mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)


def _linear_copy(layer: snn.LIFLinear) -> nn.Linear:
    ref = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        ref.weight.copy_(layer.weight)
        ref.bias.copy_(layer.bias)
    return ref


def _conv_copy(layer: snn.LIFConv2d) -> nn.Conv2d:
    ref = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                    layer.padding, layer.dilation, layer.groups)
    with torch.no_grad():
        ref.weight.copy_(layer.weight)
        ref.bias.copy_(layer.bias)
    return ref


def _assert_meaningful(spikes):
    n = spikes.sum().item()
    assert 0 < n < spikes.numel(), f"test input is degenerate: {n} spikes of {spikes.numel()}"


def _assert_match(ours_s, ours_v, ref_s, ref_v):
    assert ours_s.shape == ref_s.shape
    assert torch.equal(ours_s, ref_s.to(ours_s.dtype)), \
        f"{(ours_s != ref_s).sum().item()} spikes differ from snnTorch"
    # float32 rounding at the membranes' scale: a narrow layer's compiled current (no grad) sums
    # its products in another order than torch's nn.Linear
    assert (ours_v - ref_v).abs().max().item() <= 1e-6 * max(1.0, ref_v.abs().max().item())


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("T", [1, 5, 17])
@pytest.mark.parametrize("B", [1, 7])
def test_linear_matches_snntorch(reset, T, B):
    torch.manual_seed(100 * T + B)
    layer = snn.LIFLinear(12, 9, beta=0.85, threshold=1.0, reset=reset)
    x = torch.randn(T, B, 12) * 1.5
    with torch.no_grad():
        s, rec = layer.run(x)
    ref_s, ref_v = _oracle_layer(x, _linear_copy(layer), 0.85, 1.0, reset)
    _assert_match(s, rec.membrane, ref_s, ref_v)
    if T > 1:
        _assert_meaningful(s)


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("T", [1, 5, 17])
@pytest.mark.parametrize("B", [1, 7])
def test_conv_matches_snntorch(reset, T, B):
    torch.manual_seed(7 * T + B)
    layer = snn.LIFConv2d(2, 3, kernel_size=3, stride=1, padding=1, beta=0.8, threshold=0.7,
                          reset=reset)
    x = torch.randn(T, B, 2, 6, 6) * 1.5
    with torch.no_grad():
        s, rec = layer.run(x)
    ref_s, ref_v = _oracle_layer(x, _conv_copy(layer), 0.8, 0.7, reset)
    _assert_match(s, rec.membrane, ref_s, ref_v)
    if T > 1:
        _assert_meaningful(s)


@pytest.mark.parametrize("reset", RESETS)
def test_per_neuron_beta_threshold_linear(reset):
    torch.manual_seed(3)
    beta = torch.tensor([0.3, 0.5, 0.7, 0.9, 0.95, 1.0])
    theta = torch.tensor([0.5, 0.8, 1.0, 1.2, 1.5, 2.0])
    layer = snn.LIFLinear(10, 6, beta=beta, threshold=theta, reset=reset)
    x = torch.randn(17, 7, 10) * 1.5
    with torch.no_grad():
        s, rec = layer.run(x)
    ref_s, ref_v = _oracle_layer(x, _linear_copy(layer), beta, theta, reset)
    _assert_match(s, rec.membrane, ref_s, ref_v)
    _assert_meaningful(s)
    # Per-neuron parameters really act per neuron: the same network with scalar parameters differs.
    with torch.no_grad():
        s_scalar, _ = snn.LIFLinear(10, 6, beta=0.9, threshold=1.0, reset=reset).run(x)
    assert not torch.equal(s, s_scalar)


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("per", ["channel", "neuron"])
def test_per_channel_and_per_neuron_beta_threshold_conv(reset, per):
    torch.manual_seed(4)
    if per == "channel":  # [C_out]
        beta = torch.tensor([0.5, 0.9, 1.0])
        theta = torch.tensor([0.6, 1.0, 1.4])
        view = (3, 1, 1)
    else:  # [C_out, H_out, W_out]
        beta = torch.rand(3, 4, 4) * 0.6 + 0.4
        theta = torch.rand(3, 4, 4) + 0.5
        view = (3, 4, 4)
    layer = snn.LIFConv2d(2, 3, kernel_size=3, stride=2, padding=1, beta=beta, threshold=theta,
                          reset=reset)
    x = torch.randn(5, 7, 2, 7, 7) * 1.5
    with torch.no_grad():
        s, rec = layer.run(x)
    assert s.shape == (5, 7, 3, 4, 4)
    ref_s, ref_v = _oracle_layer(x, _conv_copy(layer), beta.reshape(view), theta.reshape(view), reset)
    _assert_match(s, rec.membrane, ref_s, ref_v)
    _assert_meaningful(s)


@pytest.mark.parametrize("reset", RESETS)
def test_two_layer_net_matches_snntorch(reset):
    torch.manual_seed(5)
    net = snn.Sequential(snn.LIFLinear(16, 12, beta=0.9, reset=reset),
                         snn.LIFLinear(12, 5, beta=0.8, threshold=0.5, reset=reset))
    with torch.no_grad():
        net[1].weight.mul_(3)  # make the second layer fire from the first layer's spikes
    x = torch.randn(17, 7, 16) * 1.5
    with torch.no_grad():
        trace = net.run(x)
    s1, v1 = _oracle_layer(x, _linear_copy(net[0]), 0.9, 1.0, reset)
    s2, v2 = _oracle_layer(s1, _linear_copy(net[1]), 0.8, 0.5, reset)
    _assert_match(trace.records[0].spikes, trace.records[0].membrane, s1, v1)
    _assert_match(trace.output, trace.membrane, s2, v2)
    _assert_meaningful(trace.records[0].spikes)
    _assert_meaningful(trace.output)


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("T", [1, 5, 17])
def test_constant_input_equals_sequence(reset, T):
    torch.manual_seed(6)
    net = snn.Sequential(snn.LIFLinear(16, 12, reset=reset), snn.LIFLinear(12, 5, reset=reset))
    with torch.no_grad():
        net[1].weight.mul_(3)
    frame = torch.randn(7, 16) * 2
    with torch.no_grad():
        const = net.run(frame, steps=T)
        seq = net.run(frame.expand(T, *frame.shape))
    assert const.output.shape == (T, 7, 5)
    for a, b in zip(const.records, seq.records):
        assert torch.equal(a.spikes, b.spikes)
        assert (a.membrane - b.membrane).abs().max().item() <= 1e-6
    # and against snnTorch fed the same frame at every step
    ref_s, ref_v = _oracle_layer(frame.expand(T, *frame.shape), _linear_copy(net[0]), 0.9, 1.0, reset)
    _assert_match(const.records[0].spikes, const.records[0].membrane, ref_s, ref_v)
    if T > 1:
        _assert_meaningful(const.records[0].spikes)


def test_constant_input_conv_equals_sequence():
    torch.manual_seed(8)
    net = snn.Sequential(snn.LIFConv2d(1, 4, 3, padding=1), snn.MaxPool2d(2), snn.Flatten(),
                         snn.LIFLinear(4 * 4 * 4, 3))
    frame = torch.randn(7, 1, 8, 8) * 2
    with torch.no_grad():
        const = net.run(frame, steps=6)
        seq = net.run(frame.expand(6, *frame.shape))
    assert torch.equal(const.output, seq.output)
    assert torch.equal(const.records[0].spikes, seq.records[0].spikes)
    _assert_meaningful(const.records[0].spikes)


def test_lif_scan_threshold_is_strict():
    # v == theta exactly does not spike (H(0) = 0), as in snnTorch.
    s, v = lif_scan(torch.ones(3, 1, 1), beta=1.0, threshold=1.0, steps=None)
    assert v[0].item() == 1.0 and s[0].item() == 0.0
    assert v[1].item() == 2.0 and s[1].item() == 1.0
    assert v[2].item() == 2.0  # 1*2 + 1 - 1 (subtract reset applied one step later)


@pytest.mark.parametrize("T", [1, 6, 17])
def test_zero_reset_matches_norse_lif_box(T):
    norse_lif = pytest.importorskip("norse.torch.functional.lif_box")
    torch.manual_seed(9)
    dt = torch.float64
    beta = torch.tensor([0.5, 0.8, 0.9, 0.95, 0.7], dtype=dt)
    layer = snn.LIFLinear(8, 5, beta=beta, threshold=1.0, reset="zero", dtype=dt)
    x = torch.randn(T, 7, 8, dtype=dt) * 1.5
    with torch.no_grad():
        s, rec = layer.run(x)
        current = layer.current(x)
    a = 1 - beta  # dt * tau_mem_inv with dt = 1
    p = norse_lif.LIFBoxParameters(tau_mem_inv=a, v_leak=torch.tensor(0.0, dtype=dt),
                                   v_th=torch.tensor(1.0, dtype=dt),
                                   v_reset=torch.tensor(0.0, dtype=dt))
    state = norse_lif.LIFBoxFeedForwardState(v=torch.zeros(7, 5, dtype=dt))
    zs, vs = [], []
    for t in range(T):
        i_t = current[t] / a
        v_decayed = state.v + a * (i_t - state.v)  # what Norse compares to v_th
        z, state = norse_lif.lif_box_feed_forward_step(i_t, state, p, dt=1.0)
        zs.append(z)
        vs.append(v_decayed)
    assert torch.equal(s, torch.stack(zs))
    assert (rec.membrane - torch.stack(vs)).abs().max().item() <= 1e-12
    if T > 1:
        _assert_meaningful(s)
