"""Activity diagnostics on hand-made networks with answers worked out by hand: silent and
saturated neurons, rates, and SynOps (events x fan-out) for dense and conv layers."""

import pytest
import torch

from spikelfp.diagnostics.activity import (
    ActivityAccumulator,
    dense_macs_per_step,
    fan_out_map,
    neuron_rates,
    rate_over_time,
    saturated_mask,
    silent_mask,
    spikes_per_sample,
    synops,
)
from spikelfp.nn import AvgPool2d, Flatten, LayerRecord, LIFConv2d, LIFLinear, NetworkTrace, Sequential


def _set(layer, w, b=None):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w, dtype=layer.weight.dtype))
        if b is not None:
            layer.bias.copy_(torch.tensor(b, dtype=layer.bias.dtype))


def test_pure_measures_on_a_known_pattern():
    s = torch.zeros(4, 2, 3)        # T=4, B=2, 3 neurons
    s[:, :, 0] = 1                  # neuron 0: every step of every sample
    s[1, 0, 2] = 1                  # neuron 2: one spike
    assert neuron_rates(s).tolist() == [1.0, 0.0, 1 / 8]
    assert silent_mask(s).tolist() == [False, True, False]
    assert saturated_mask(s).tolist() == [True, False, False]
    assert rate_over_time(s).tolist() == pytest.approx([1 / 3, 1.5 / 3, 1 / 3, 1 / 3])
    assert spikes_per_sample(s).tolist() == [5.0, 4.0]


def test_silent_and_saturated_neurons_in_a_real_net():
    l1, l2 = LIFLinear(3, 3), LIFLinear(3, 2)
    # neuron 0: strong input, fires at every step; neuron 1: zero weights and bias <= 0, silent;
    # neuron 2: current 0.3 -> v = .3, .57, .813, 1.0317 (spike at t=4), .2285, .5057
    _set(l1, [[5.0, 5.0, 5.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0]], [0.0, -0.5, 0.0])
    _set(l2, [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [0.0, 0.0])
    net = Sequential(l1, l2)
    acc = ActivityAccumulator(net, raster_samples=2)
    x = torch.ones(4, 3)
    trace = net.run(x, steps=6)
    acc.update(trace, net.predict(x, steps=6), torch.zeros(4, dtype=torch.long))
    res = acc.result()
    hid, out = res["layers"]
    assert hid["neuron_rates"] == pytest.approx([1.0, 0.0, 1 / 6])
    assert hid["silent_count"] == 1 and hid["silent_fraction"] == pytest.approx(1 / 3)
    assert hid["saturated_count"] == 1 and hid["saturated_fraction"] == pytest.approx(1 / 3)
    assert hid["spikes_per_sample"] == pytest.approx(7.0)
    assert hid["rate_over_time"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3])
    # output neuron 1 has zero weights and zero bias: silent
    assert out["neuron_rates"][1] == 0.0 and out["silent_count"] == 1
    assert res["network"]["hidden_silent_fraction"] == pytest.approx(1 / 3)
    assert res["accuracy"] == 1.0
    # SynOps into the output layer: 7 hidden spikes per sample x fan-out 2
    assert out["synops_per_sample"] == pytest.approx(14.0)
    assert out["ann_macs_per_step"] == 6 and out["ann_macs_per_sample"] == 36
    assert res["network"]["synops_per_sample"] == pytest.approx(14.0)
    # input layer: 3 nonzero inputs x 6 steps x fan-out 3 (constant frame counted at each step)
    assert hid["synops_per_sample"] == pytest.approx(54.0)
    assert res["network"]["input_ops_per_sample"] == pytest.approx(54.0)
    assert [r.shape for r in acc.raster()] == [(6, 2, 3), (6, 2, 2)]


def test_synops_linear_known_spike_pattern():
    net = Sequential(LIFLinear(3, 4), LIFLinear(4, 2))
    T, B = 3, 2
    x = torch.zeros(T, B, 3)
    x[0, 0, 0] = x[1, 0, 1] = x[2, 1, 2] = x[0, 1, 0] = 1          # 4 input events
    s1 = torch.zeros(T, B, 4)
    s1[0, 0, 0] = s1[1, 0, 3] = s1[2, 0, 3] = s1[0, 1, 1] = s1[2, 1, 2] = 1   # 5 hidden spikes
    s2 = torch.zeros(T, B, 2)
    s2[2, 0, 1] = 1
    trace = NetworkTrace(s2, torch.zeros(T, B, 2),
                         [LayerRecord(x, torch.zeros(T, B, 4), s1), LayerRecord(s1, torch.zeros(T, B, 2), s2)])
    acc = ActivityAccumulator(net)
    acc.update(trace)
    res = acc.result()
    l1, l2 = res["layers"]
    assert l1["input_binary"] and l1["input_events_per_sample"] == 2.0
    assert l1["synops_per_sample"] == 2.0 * 4                 # 2 events / sample x fan-out 4
    assert l2["input_source"] == "0"
    assert l2["input_events_per_sample"] == 2.5               # 5 spikes / 2 samples
    assert l2["synops_per_sample"] == 2.5 * 2                 # x fan-out 2
    assert l2["ann_macs_per_step"] == 8 and l2["ann_macs_per_sample"] == 24
    assert l2["synops_over_ann_macs"] == pytest.approx(5 / 24)
    assert res["network"]["synops_per_sample"] == 5.0         # spike-driven layers only
    assert res["network"]["input_ops_per_sample"] == 8.0
    assert "accuracy" not in res


def test_fan_out_conv_counts_kernel_positions():
    conv = LIFConv2d(1, 2, 3)                       # 4x4 -> 2x2, 2 channels
    cov = torch.tensor([[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]], dtype=torch.float64)
    assert torch.equal(fan_out_map(conv, (1, 4, 4))[0], 2 * cov)
    assert dense_macs_per_step(conv, (1, 4, 4)) == 2 * 2 * 2 * 9
    padded = LIFConv2d(1, 1, 3, padding=1)          # 4x4 -> 4x4: corners 4, edges 6, inside 9
    f = fan_out_map(padded, (1, 4, 4))[0]
    assert f[0, 0] == 4 and f[0, 1] == 6 and f[1, 1] == 9 and f.sum() == 4 * 4 + 8 * 6 + 4 * 9
    strided = LIFConv2d(2, 3, 3, stride=2)          # 5x5 -> 2x2
    line = torch.tensor([1, 1, 2, 1, 1], dtype=torch.float64)
    f = fan_out_map(strided, (2, 5, 5))
    assert torch.equal(f[1], 3 * torch.outer(line, line))
    assert synops(torch.ones(2, 5, 5), f) == f.sum().item() == 2 * 2 * 3 * 2 * 9


def test_synops_conv_known_spike_pattern():
    net = Sequential(LIFConv2d(1, 2, 3, padding=1), LIFConv2d(2, 3, 3), Flatten(), LIFLinear(12, 2))
    T, B = 2, 1
    x = torch.zeros(T, B, 1, 4, 4)
    x[:, :, 0, 1, 1] = 1                       # one input pixel on at both steps: fan-out 9 x 2
    s0 = torch.zeros(T, B, 2, 4, 4)
    s0[0, 0, 0, 0, 0] = 1                      # corner: one kernel position x 3 channels = 3
    s0[1, 0, 1, 1, 1] = 1                      # (1,1): four positions x 3 channels = 12
    s1 = torch.zeros(T, B, 3, 2, 2)
    s1[1, 0, 2, 1, 0] = 1
    s2 = torch.zeros(T, B, 2)
    recs = [LayerRecord(x, torch.zeros_like(s0), s0), LayerRecord(s0, torch.zeros_like(s1), s1),
            LayerRecord(s1), LayerRecord(s1.flatten(2), torch.zeros_like(s2), s2)]
    acc = ActivityAccumulator(net)
    acc.update(NetworkTrace(s2, torch.zeros_like(s2), recs))
    l0, l1, l2 = acc.result()["layers"]
    assert l0["synops_per_sample"] == 2 * 9 * 2
    assert l1["synops_per_sample"] == 3 + 12
    assert l1["ann_macs_per_step"] == 3 * 2 * 2 * 2 * 9
    assert l2["synops_per_sample"] == 1 * 2 and l2["input_source"] == "1"
    assert [d["neurons"] for d in (l0, l1, l2)] == [32, 12, 2]


def test_conv_net_with_pooling_counts_pooled_events():
    torch.manual_seed(1)
    net = Sequential(LIFConv2d(1, 2, 3, padding=1), AvgPool2d(2), Flatten(), LIFLinear(8, 3))
    with torch.no_grad():
        net[0].weight.mul_(4)
    x = torch.rand(5, 1, 4, 4)
    trace = net.run(x, steps=4)
    acc = ActivityAccumulator(net)
    acc.update(trace)
    res = acc.result()
    pooled = trace.records[3].x               # what the dense layer sees
    expect = (pooled != 0).sum().item() * 3 / 5
    assert res["layers"][1]["synops_per_sample"] == pytest.approx(expect)
    assert res["layers"][0]["spikes_per_sample"] == pytest.approx(trace.records[0].spikes.sum().item() / 5)
