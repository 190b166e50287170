"""CUBA and recurrent LIF forward (spec ``lfp-cuba-recurrent.md`` section 1) against oracles.

snnTorch, float32, reset "subtract", bit-identical spikes: ``Synaptic(alpha, beta,
reset_delay=True)`` (no V), ``RSynaptic(alpha, beta, all_to_all=True, linear_features=N,
reset_delay=True)`` (CUBA + V) and ``RLeaky(beta, all_to_all=True, linear_features=N,
reset_delay=True)`` (alpha = 0 + V, its own summation order). Reset "zero" against a hand loop of
the spec's equations; snnTorch's "zero" of these classes is a different neuron (checked below so
the README's statement stays true). alpha = 0 without V is today's LIF exactly.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import spikelfp.nn as snn
from spikelfp.core import cuba_scan, cuba_step, lif_scan

pytestmark = pytest.mark.usefixtures("single_thread")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import snntorch


def _copy_linear(layer) -> nn.Linear:
    ref = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        ref.weight.copy_(layer.weight)
        ref.bias.copy_(layer.bias)
    return ref


def _meaningful(s):
    n = s.sum().item()
    assert 0 < n < s.numel(), f"degenerate test input: {n} spikes of {s.numel()}"


def _run_snntorch(neuron, kind, currents):
    """Drive an snnTorch neuron step by step with the given feed-forward currents [T, B, ...]."""
    spikes, mems = [], []
    with torch.no_grad():
        if kind == "synaptic":
            syn, mem = neuron.init_synaptic()
            for c in currents:
                spk, syn, mem = neuron(c, syn, mem)
                spikes.append(spk)
                mems.append(mem)
        elif kind == "rsynaptic":
            spk, syn, mem = neuron.init_rsynaptic()
            for c in currents:
                spk, syn, mem = neuron(c, spk, syn, mem)
                spikes.append(spk)
                mems.append(mem)
        else:
            spk, mem = neuron.init_rleaky()
            for c in currents:
                spk, mem = neuron(c, spk, mem)
                spikes.append(spk)
                mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)


def _with_recurrent(neuron, layer):
    with torch.no_grad():
        neuron.recurrent.weight.copy_(layer.recurrent_weight)
        neuron.recurrent.bias.copy_(layer.recurrent_bias)
    return neuron


def _hand_loop(current, alpha, beta, theta, reset, V=None, bV=None):
    """Spec section 1 written out, one neuron state at a time (reference for reset "zero")."""
    T = current.shape[0]
    i = torch.zeros_like(current[0])
    v = torch.zeros_like(current[0])
    s = torch.zeros_like(current[0])
    S, M = [], []
    for t in range(T):
        rec = s @ V.t() + bV if V is not None else 0.0
        i = alpha * i + current[t] + rec
        reset_t = theta * s if reset == "subtract" else beta * v * s
        v = beta * v + i - reset_t
        s = (v > theta).to(v.dtype)
        S.append(s)
        M.append(v)
    return torch.stack(S), torch.stack(M)


@pytest.mark.parametrize("T,B", [(1, 3), (9, 1), (23, 6)])
@pytest.mark.parametrize("per_neuron", [False, True])
def test_synaptic_matches_snntorch(T, B, per_neuron):
    torch.manual_seed(T + 10 * B + per_neuron)
    alpha = torch.tensor([0.0, 0.3, 0.6, 0.8, 0.9]) if per_neuron else 0.7
    beta = torch.tensor([0.5, 0.9, 0.8, 0.95, 1.0]) if per_neuron else 0.85
    layer = snn.CubaLIFLinear(8, 5, alpha=alpha, beta=beta)
    x = torch.randn(T, B, 8)
    with torch.no_grad():
        s, rec = layer.run(x)
        current = layer.current(x)
    ref_s, ref_v = _run_snntorch(snntorch.Synaptic(alpha=alpha, beta=beta, reset_delay=True),
                                 "synaptic", current)
    assert torch.equal(s, ref_s)
    assert torch.equal(rec.membrane, ref_v)  # the same arithmetic: even the membranes are equal
    if T > 5:
        _meaningful(s)


def test_synaptic_conv_matches_snntorch():
    torch.manual_seed(2)
    alpha = torch.tensor([0.5, 0.8, 0.2])
    layer = snn.CubaLIFConv2d(2, 3, 3, padding=1, alpha=alpha, beta=0.8, threshold=0.7)
    x = torch.randn(12, 4, 2, 6, 6)
    with torch.no_grad():
        s, rec = layer.run(x)
        current = layer.current(x)
    neuron = snntorch.Synaptic(alpha=alpha.reshape(3, 1, 1), beta=0.8, threshold=0.7, reset_delay=True)
    ref_s, ref_v = _run_snntorch(neuron, "synaptic", current)
    assert torch.equal(s, ref_s)
    assert torch.equal(rec.membrane, ref_v)
    _meaningful(s)


@pytest.mark.parametrize("T,B", [(1, 2), (23, 6)])
def test_rsynaptic_matches_snntorch(T, B):
    torch.manual_seed(30 + T)
    layer = snn.CubaLIFLinear(8, 6, alpha=0.6, beta=0.9, recurrent=True)
    with torch.no_grad():
        layer.recurrent_weight.mul_(2)
    x = torch.randn(T, B, 8)
    with torch.no_grad():
        s, rec = layer.run(x)
        current = layer.current(x)
    neuron = _with_recurrent(snntorch.RSynaptic(alpha=0.6, beta=0.9, all_to_all=True, linear_features=6,
                                                reset_delay=True), layer)
    ref_s, ref_v = _run_snntorch(neuron, "rsynaptic", current)
    assert torch.equal(s, ref_s)
    assert torch.equal(rec.membrane, ref_v)
    if T > 1:
        _meaningful(s)


@pytest.mark.parametrize("T,B", [(1, 2), (23, 6)])
def test_rleaky_matches_snntorch(T, B):
    torch.manual_seed(40 + T)
    layer = snn.CubaLIFLinear(8, 6, alpha=0.0, beta=0.8, threshold=0.9, recurrent=True)
    assert layer.synaptic_decay() is None  # alpha = 0: no current state, RLeaky's order
    x = torch.randn(T, B, 8) * 1.5
    with torch.no_grad():
        s, rec = layer.run(x)
        current = layer.current(x)
    neuron = _with_recurrent(snntorch.RLeaky(beta=0.8, threshold=0.9, all_to_all=True, linear_features=6,
                                             reset_delay=True), layer)
    ref_s, ref_v = _run_snntorch(neuron, "rleaky", current)
    assert torch.equal(s, ref_s)
    assert torch.equal(rec.membrane, ref_v)
    if T > 1:
        _meaningful(s)


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_zero_reset_matches_hand_loop(recurrent, alpha):
    torch.manual_seed(5)
    dt = torch.float64
    layer = snn.CubaLIFLinear(6, 5, alpha=alpha, beta=0.85, reset="zero", recurrent=recurrent, dtype=dt)
    x = torch.randn(20, 4, 6, dtype=dt)
    with torch.no_grad():
        s, rec = layer.run(x)
        current = layer.current(x)
    V, bV = layer.recurrent_parameters()
    ref_s, ref_v = _hand_loop(current, alpha, 0.85, 1.0, "zero",
                              V.detach() if V is not None else None, bV.detach() if bV is not None else None)
    assert torch.equal(s, ref_s)
    assert (rec.membrane - ref_v).abs().max().item() <= 1e-12
    _meaningful(s)


def test_snntorch_zero_reset_is_a_different_neuron():
    """snnTorch's Synaptic "zero": v_t = (beta v_{t-1} + i_t)(1 - s_{t-1}): the step after a spike
    the new current is dropped from v as well (one refractory step; i itself keeps filtering);
    ours drops only the decayed potential and integrates i_t. Same currents, other spikes."""
    torch.manual_seed(6)
    current = torch.rand(30, 4, 5) * 0.8
    neuron = snntorch.Synaptic(alpha=0.6, beta=0.9, reset_mechanism="zero", reset_delay=True)
    ref_s, ref_v = _run_snntorch(neuron, "synaptic", current)
    i = torch.zeros(4, 5)
    v = torch.zeros(4, 5)
    s = torch.zeros(4, 5)
    for t in range(30):  # snnTorch's rule as stated in the README
        i = 0.6 * i + current[t]
        v = (0.9 * v + i) * (1 - s)
        s = (v > 1.0).float()
        assert torch.equal(s, ref_s[t]) and (v - ref_v[t]).abs().max() <= 1e-6
    ours, _ = cuba_scan(current, 0.6, 0.9, 1.0, "zero")
    assert not torch.equal(ours, ref_s)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_alpha_zero_without_v_is_lif(reset):
    torch.manual_seed(7)
    cur = torch.randn(15, 5, 7)
    s_lif, v_lif = lif_scan(cur, 0.9, 1.0, reset)
    for alpha in (None, 0.0, torch.zeros(7)):
        s, v = cuba_scan(cur, alpha, 0.9, 1.0, reset)
        assert torch.equal(s, s_lif) and torch.equal(v, v_lif)
    lif = snn.LIFLinear(7, 4, reset=reset)
    cuba = snn.CubaLIFLinear(7, 4, reset=reset, alpha=0.0)
    cuba.load_state_dict(lif.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.equal(lif.run(cur)[0], cuba.run(cur)[0])


@pytest.mark.parametrize("alpha,recurrent", [(0.7, False), (0.0, True), (0.5, True)])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_step_and_stream_equal_run(alpha, recurrent, reset):
    torch.manual_seed(8)
    net = snn.Sequential(snn.CubaLIFLinear(6, 8, alpha=alpha, recurrent=recurrent, reset=reset),
                         snn.CubaLIFLinear(8, 3, alpha=alpha, recurrent=recurrent, reset=reset))
    with torch.no_grad():
        net[1].weight.mul_(3)
        frame = torch.randn(5, 6) * 2
        trace = net.run(frame, steps=12)
        for t, recs in enumerate(net.stream(frame, steps=12)):
            for rec, full in zip(recs, trace.records):
                assert torch.equal(rec.spikes, full.spikes[t])
                assert torch.equal(rec.membrane, full.membrane[t])
            assert torch.equal(recs[0].current, net[0].current(frame))  # W x + b, computed once
            assert torch.equal(recs[1].current, net[1].current(trace.records[0].spikes[t]))
        state = None
        cur = net[0].current(frame)
        for t in range(12):
            s, state = net[0].step(frame, state, current=cur)
            assert torch.equal(s, trace.records[0].spikes[t])
    _meaningful(trace.records[0].spikes)
    # the constant input equals the same frame repeated as a sequence
    with torch.no_grad():
        seq = net.run(frame.expand(12, *frame.shape))
    assert torch.equal(seq.output, trace.output)


def test_cuba_step_from_none():
    st = cuba_step(torch.tensor([[2.0, 0.5]]), None, 0.5, 0.9, 1.0)
    assert st.membrane.tolist() == [[2.0, 0.5]] and st.spikes.tolist() == [[1.0, 0.0]]
    st = cuba_step(torch.tensor([[0.0, 0.5]]), st, 0.5, 0.9, 1.0)
    # i = 0.5*[2, .5] + [0, .5] = [1, .75]; v = 0.9*[2, .5] + i - [1, 0] = [1.8, 1.2]
    assert torch.allclose(st.current, torch.tensor([[1.0, 0.75]]))
    assert torch.allclose(st.membrane, torch.tensor([[1.8, 1.2]]))


def test_surrogate_gradient_flows_through_v_and_alpha_path():
    torch.manual_seed(9)
    layer = snn.CubaLIFLinear(4, 3, alpha=0.6, recurrent=True)
    from spikelfp.train.surrogate import get_surrogate
    s, _ = layer.run(torch.randn(10, 2, 4) * 2, spike_fn=get_surrogate("atan", None))
    s.sum().backward()
    for p in (layer.weight, layer.bias, layer.recurrent_weight, layer.recurrent_bias):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_bad_alpha_and_shapes():
    with pytest.raises(ValueError, match="alpha=1.0 is out of range"):
        snn.CubaLIFLinear(3, 2, alpha=1.0)
    with pytest.raises(ValueError, match="alpha has shape"):
        snn.CubaLIFLinear(3, 2, alpha=torch.zeros(3))
    with pytest.raises(ValueError, match="alpha=-0.1"):
        snn.CubaLIFConv2d(1, 2, 3, alpha=-0.1)
