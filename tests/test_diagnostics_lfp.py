"""The LFP sparsity properties (spec section 4) as a test: after one LFP step, exactly-zero
weights and the weights of a neuron that cannot spike are unchanged, and the diagnostics report
exactly that fraction; plus the updates.jsonl summary."""

import json

import pytest
import torch

from spikelfp import LFP
from spikelfp.diagnostics.updates import lfp_update_sparsity, read_updates, summarize_updates
from spikelfp.nn import AvgPool2d, Flatten, LIFConv2d, LIFLinear, Sequential


def _net():
    l1, l2 = LIFLinear(4, 3), LIFLinear(3, 2)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[0.8, 0.6, 0.0, 0.5],        # active, one exact zero
                                      [-0.5, -0.4, -0.3, -0.2],    # cannot spike (inputs > 0)
                                      [0.4, 0.0, 0.7, 0.3]]))      # active, one exact zero
        l1.bias.copy_(torch.tensor([0.1, -0.1, 0.05]))
        l2.weight.copy_(torch.tensor([[0.9, 0.7, 0.0],             # column 1: fed by the silent neuron
                                      [-0.2, 0.5, 0.8]]))
        l2.bias.copy_(torch.tensor([0.05, -0.05]))
    return Sequential(l1, l2)


def test_one_lfp_step_leaves_zero_and_silent_weights_alone_and_diagnostics_count_them():
    net = _net()
    g = torch.Generator().manual_seed(3)
    x = 0.5 + torch.rand(8, 4, generator=g)          # strictly positive inputs
    y = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    lfp = LFP(net)
    expected_zero = {
        "0.weight": torch.tensor([[0, 0, 1, 0], [1, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool),
        "0.bias": torch.tensor([0, 1, 0], dtype=torch.bool),
        "1.weight": torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool),
        "1.bias": torch.tensor([0, 0], dtype=torch.bool),
    }
    before = {k: p.detach().clone() for k, p in net.named_parameters()}

    rep = lfp_update_sparsity(lfp, x, y, steps=6)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    opt.zero_grad()
    res = lfp.step(x, y, steps=6)
    opt.step()

    assert res.trace.records[0].spikes[:, :, 1].sum() == 0            # the neuron never spiked
    for name, p in net.named_parameters():
        zero = expected_zero[name]
        assert torch.equal(res.grads[name] == 0, zero), name          # G is zero exactly there
        assert torch.equal(p.detach()[zero], before[name][zero]), name   # ... and nothing moved
        assert (p.detach()[~zero] != before[name][~zero]).all(), name

    w1, w2 = rep["params"]["0.weight"], rep["params"]["1.weight"]
    assert w1["zero_update_fraction"] == pytest.approx(6 / 12)
    assert w1["zero_weight"] == pytest.approx(2 / 12) and w1["silent_neuron"] == pytest.approx(4 / 12)
    assert w2["zero_update_fraction"] == pytest.approx(3 / 6)
    assert w2["zero_weight"] == pytest.approx(1 / 6) and w2["silent_input"] == pytest.approx(2 / 6)
    assert rep["params"]["0.bias"]["silent_neuron"] == pytest.approx(1 / 3)
    assert w1["other"] == w2["other"] == w1["no_feedback"] == w2["no_feedback"] == 0
    a = rep["all_weights"]
    assert a["numel"] == 18 and a["zero_update_fraction"] == pytest.approx(9 / 18)
    assert (a["zero_weight"], a["silent_neuron"], a["silent_input"]) == pytest.approx((3 / 18, 4 / 18, 2 / 18))
    # the silent hidden neuron receives no feedback: 1 of 3 hidden units gets none at any step
    fb = rep["feedback_nonzero_fraction"]
    assert set(fb) == {"0", "1"} and fb["0"] <= 2 / 3 + 1e-9


def test_update_sparsity_counts_add_up_for_conv():
    torch.manual_seed(2)
    net = Sequential(LIFConv2d(1, 3, 3, padding=1), AvgPool2d(2), Flatten(), LIFLinear(12, 2))
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[0].weight[1] = 0.0                         # channel 1: zero weights ...
        net[0].bias[1] = -1.0                          # ... and negative bias: silent
    rep = lfp_update_sparsity(LFP(net), torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 0, 1]), steps=5)
    for v in rep["params"].values():
        c = v["counts"]
        assert c["zero_update"] == (c["zero_weight"] + c["silent_neuron"] + c["no_feedback"] + c["silent_input"]
                                    + c["other"])
    cw = rep["params"]["0.weight"]
    assert cw["zero_weight"] >= 9 / 27 - 1e-9 and cw["silent_neurons_in_batch"] >= 1


def test_neurons_below_a_silent_layer_get_no_feedback():
    l1, l2, l3 = LIFLinear(3, 2), LIFLinear(2, 2), LIFLinear(2, 2)
    with torch.no_grad():
        l1.weight.fill_(2.0)                           # both fire
        l1.bias.zero_()
        l2.weight.fill_(-1.0)                          # nobody fires here
        l2.bias.fill_(-0.5)
        l3.weight.fill_(1.0)
        l3.bias.fill_(0.1)
    rep = lfp_update_sparsity(LFP(Sequential(l1, l2, l3)), torch.ones(4, 3), torch.tensor([0, 1, 0, 1]), steps=4)
    p1 = rep["params"]["0.weight"]
    assert p1["zero_update_fraction"] == 1.0 and p1["no_feedback"] == 1.0 and p1["other"] == 0
    assert rep["params"]["1.weight"]["silent_neuron"] == 1.0
    assert rep["params"]["2.weight"]["silent_input"] == 1.0
    assert rep["feedback_nonzero_fraction"]["0"] == 0.0


def test_summarize_updates_file(tmp_path):
    p = tmp_path / "updates.jsonl"
    recs = [{"step": 0, "epoch": 0, "trainer": "lfp",
             "1.weight": {"zero_fraction": 0.2, "mean_abs": 1.0, "median_abs": 0.5, "p90_abs": 1, "p99_abs": 2, "max_abs": 3},
             "2.weight": {"zero_fraction": 0.4, "mean_abs": 1.0, "median_abs": 0.5, "p90_abs": 1, "p99_abs": 2, "max_abs": 3},
             "feedback_nonzero_fraction": {"2": 0.5, "1": 0.25}},
            {"step": 50, "epoch": 1, "trainer": "lfp",
             "1.weight": {"zero_fraction": 0.4, "mean_abs": 1.0, "median_abs": 0.25, "p90_abs": 1, "p99_abs": 2, "max_abs": 3},
             "2.weight": {"zero_fraction": 0.6, "mean_abs": 1.0, "median_abs": 0.5, "p90_abs": 1, "p99_abs": 2, "max_abs": 3},
             "feedback_nonzero_fraction": {"2": 0.7, "1": 0.35}}]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n{\"step\": 100, \"trunc")
    rows = read_updates(p)
    assert len(rows) == 2                               # the cut-off line is skipped
    s = summarize_updates(rows)
    assert s["steps"] == [0, 50] and s["trainers"] == ["lfp"]
    assert s["summary"]["1.weight"]["zero_fraction_mean"] == pytest.approx(0.3)
    assert s["summary"]["1.weight"]["median_abs_last"] == 0.25
    assert s["weights_zero_fraction_mean"] == pytest.approx(0.4)
    pooled = summarize_updates(rows, sizes={"1.weight": 300, "2.weight": 100})
    assert pooled["weights_zero_fraction_mean"] == pytest.approx((0.3 * 300 + 0.5 * 100) / 400)
    assert s["feedback_summary"]["1"] == pytest.approx({"mean": 0.3, "last": 0.35})
    assert read_updates(tmp_path / "missing.jsonl") == []
