"""Rewards (spec section 2) computed by hand, and the readout's tie-breaking (spec section 1)."""

from __future__ import annotations

import math

import pytest
import torch

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.core import predict
from spikelfp.core.rewards import eq7_reward, get_reward, plusminus_reward, sequence_reward

pytestmark = pytest.mark.usefixtures("single_thread")

DT = torch.float64


def sig(a):
    return 1.0 / (1.0 + math.exp(-a))


def test_sequence_reward_literal_values():
    # T=4 (floor(T/2)=2), B=2, C=3
    Y = torch.zeros(4, 2, 3, dtype=DT)
    Y[:, 0, 0] = torch.tensor([1.0, 0, 1, 0])  # wrong neuron, count 2
    Y[:, 0, 1] = torch.tensor([0.0, 0, 0, 1])  # target (label 1), count 1
    Y[:, 0, 2] = 1.0                           # wrong neuron, count 4
    # sample 1: label 0, completely silent
    R = sequence_reward(Y, torch.tensor([1, 0]))
    assert R.shape == Y.shape
    # target: (1 - sigmoid(1 - 2)) / 4 = sigmoid(1) / 4, at every step
    assert torch.allclose(R[:, 0, 1], torch.full((4,), sig(1.0) / 4, dtype=DT))
    # wrong neuron with count 2: -Y_t (1 - sigmoid((4 - 2) - 2)) / 4 = -Y_t / 8
    assert torch.allclose(R[:, 0, 0], torch.tensor([-0.125, 0.0, -0.125, 0.0], dtype=DT))
    # wrong neuron with count 4: -Y_t (1 - sigmoid(0 - 2)) / 4 = -sigmoid(2) / 4 at every step
    assert torch.allclose(R[:, 0, 2], torch.full((4,), -sig(2.0) / 4, dtype=DT))
    # a silent target is still rewarded at every step: (1 - sigmoid(-2)) / 4 = sigmoid(2) / 4
    assert torch.allclose(R[:, 1, 0], torch.full((4,), sig(2.0) / 4, dtype=DT))
    # silent wrong neurons get nothing
    assert torch.all(R[:, 1, 1:] == 0)


@pytest.mark.parametrize("T", [1, 5, 8])
def test_sequence_reward_matches_spec_loop(T):
    g = torch.Generator().manual_seed(T)
    B, C = 6, 4
    Y = (torch.rand(T, B, C, generator=g) > 0.5).to(DT)
    labels = torch.randint(0, C, (B,), generator=g)
    R = sequence_reward(Y, labels)
    for b in range(B):
        for c in range(C):
            n = float(Y[:, b, c].sum())
            for t in range(T):
                if c == int(labels[b]):
                    expect = 1 - sig(n - T // 2)
                else:
                    expect = -float(Y[t, b, c]) * (1 - sig((T - n) - T // 2))
                assert abs(R[t, b, c].item() - expect / T) < 1e-12


def test_sequence_reward_decays_as_count_reaches_the_end():
    # the target's reward shrinks as its count grows; a wrong neuron's punishment too
    T = 10
    rewards = []
    for count in range(T + 1):
        Y = torch.zeros(T, 1, 2, dtype=DT)
        Y[:count, 0, 0] = 1.0
        Y[:count, 0, 1] = 1.0
        R = sequence_reward(Y, torch.tensor([0]))
        rewards.append((R[0, 0, 0].item(), R[:, 0, 1].sum().item()))
    target = [a for a, _ in rewards]
    assert all(a > b for a, b in zip(target, target[1:])) and target[-1] > 0
    assert rewards[0][1] == 0 and all(p < 0 for _, p in rewards[1:])


def test_eq7_reward_literal_values():
    # T=1 real-valued logits: f_c = |o_c| (onehot_c - sigmoid(o_c))
    o = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]], dtype=DT)
    f = eq7_reward(o, torch.tensor([0, 2]))
    expect = torch.tensor([[[2 * (1 - sig(2.0)), 1 * (0 - sig(-1.0)), 0.5 * (0 - sig(0.5))],
                            [0.0, 3 * (0 - sig(3.0)), 2 * (1 - sig(-2.0))]]], dtype=DT)
    assert torch.allclose(f, expect, rtol=1e-14)
    # direction-like: positive for the target (should go up), negative for the others
    assert f[0, 0, 0] > 0 and f[0, 0, 1] < 0 and f[0, 1, 2] > 0 and f[0, 1, 0] == 0


def test_eq7_reward_on_spike_counts_is_spread_over_time():
    Y = torch.zeros(4, 1, 2, dtype=DT)
    Y[:3, 0, 0] = 1.0  # count 3
    Y[:1, 0, 1] = 1.0  # count 1
    f = eq7_reward(Y, torch.tensor([1]))
    f0 = 3 * (0 - sig(3.0)) / 4
    f1 = 1 * (1 - sig(1.0)) / 4
    assert torch.allclose(f[:, 0, 0], torch.full((4,), f0, dtype=DT))
    assert torch.allclose(f[:, 0, 1], torch.full((4,), f1, dtype=DT))


def test_plusminus_reward():
    Y = torch.zeros(2, 3, 3, dtype=DT)
    Y[:, 0, 1] = 1.0  # sample 0 predicts 1, label 1: right -> +1 on the target
    Y[:, 1, 2] = 1.0  # sample 1 predicts 2, label 0: wrong -> -1 on the target
    Y[0, 2, 0] = 1.0  # sample 2 predicts 0, label 0: right
    f = plusminus_reward(Y, torch.tensor([1, 0, 0]))
    expect = torch.zeros(2, 3, 3, dtype=DT)
    expect[:, 0, 1] = 0.5
    expect[:, 1, 0] = -0.5
    expect[:, 2, 0] = 0.5
    assert torch.equal(f, expect)


def test_get_reward_names():
    assert get_reward("sequence") is sequence_reward
    assert get_reward("eq7") is eq7_reward and get_reward("plusminus") is plusminus_reward
    fn = lambda o, y: o  # noqa: E731
    assert get_reward(fn) is fn
    with pytest.raises(ValueError, match=r"unknown reward 'seq'"):
        get_reward("seq")


def test_reward_rejects_bad_outputs_shape():
    with pytest.raises(ValueError, match=r"outputs must be \[T, B, C\], got shape \(2, 3\)"):
        sequence_reward(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_lfp_uses_the_requested_reward():
    torch.manual_seed(2)
    net = snn.Sequential(snn.LIFLinear(5, 4), snn.LIFLinear(4, 3))
    x, y = torch.randn(4, 5) * 3, torch.tensor([0, 1, 2, 0])
    for name, fn in (("sequence", sequence_reward), ("eq7", eq7_reward),
                     ("plusminus", plusminus_reward)):
        res = LFP(net, reward=name).compute(x, y, steps=6)
        assert torch.equal(res.reward, fn(res.output, y))


# ----------------------------------------------------------------------------- readout


def test_predict_breaks_ties_by_membrane_sum():
    T, B, C = 3, 5, 3
    out = torch.zeros(T, B, C)
    mem = torch.zeros(T, B, C)
    # 0: counts [3, 3, 1], membrane favours 2 but 2 has fewer spikes -> 1 (higher mem of the tied)
    out[:, 0, :2] = 1
    out[0, 0, 2] = 1
    mem[:, 0] = torch.tensor([0.5, 2.0, 10.0])
    # 1: counts [2, 0, 2], equal membranes -> lower index 0
    out[:2, 1, 0] = 1
    out[1:, 1, 2] = 1
    mem[:, 1] = 1.0
    # 2: no tie: counts [1, 3, 2]; membrane favours 0 but the count decides -> 1
    out[0, 2, 0] = 1
    out[:, 2, 1] = 1
    out[:2, 2, 2] = 1
    mem[:, 2] = torch.tensor([9.0, 0.0, 0.0])
    # 3: all silent -> the membrane decides -> 2
    mem[:, 3] = torch.tensor([-1.0, -0.5, 0.2])
    # 4: tie [1, 1, 0]; summed over t the membrane of 0 is larger though its last step is smaller
    out[0, 4, :2] = 1
    mem[:, 4, 0] = torch.tensor([3.0, 0.0, -0.1])
    mem[:, 4, 1] = torch.tensor([1.0, 0.5, 0.4])
    assert predict(out, mem).tolist() == [1, 0, 1, 2, 0]
    # without membranes: plain argmax of the count (lowest index on ties)
    assert predict(out).tolist() == [0, 0, 1, 0, 0]


def test_network_predict_uses_membrane_tie_break():
    torch.manual_seed(4)
    net = snn.Sequential(snn.LIFLinear(6, 5), snn.LIFLinear(5, 4))
    x = torch.randn(32, 6) * 2
    trace = net.run(x, steps=4)
    expect = predict(trace.output, trace.membrane)
    assert torch.equal(net.predict(x, steps=4), expect)
    res = LFP(net).compute(x, torch.zeros(32, dtype=torch.long), steps=4)
    assert torch.equal(res.prediction, expect)
    counts = trace.output.sum(0)
    ties = (counts == counts.amax(-1, keepdim=True)).sum(-1) > 1
    assert ties.any()  # the case exercises the tie-break
