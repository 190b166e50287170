"""Weight diagnostics and pruning on weight sets with known answers."""

import pytest
import torch

from spikelfp.diagnostics.pruning import (
    global_magnitude_masks,
    max_prunable,
    prune_count,
    pruned_state,
    pruning_curve,
)
from spikelfp.diagnostics.weights import (
    checkpoint_series,
    magnitude_histogram,
    near_zero_fraction,
    sign_changes,
    sign_changes_between,
    weight_stats,
    zero_fraction,
)
from spikelfp.nn import LIFLinear, Sequential


def test_known_fraction_of_zeros_and_near_zeros():
    w = torch.linspace(0.1, 1.0, 100)
    w[:30] = 0.0                     # 30 % exact zeros
    w[30:40] = 1e-4                  # 10 % more below the tolerance
    w[40:45] = -5e-4
    assert zero_fraction(w) == pytest.approx(0.30)
    assert near_zero_fraction(w, 1e-3) == pytest.approx(0.45)
    state = {"1.weight": w.reshape(10, 10), "1.bias": torch.zeros(10), "1.beta": torch.tensor(0.9),
             "2.weight": torch.ones(4, 25)}
    st = weight_stats(state, tolerance=1e-3)
    assert set(st["params"]) == {"1.weight", "1.bias", "2.weight"}        # buffers skipped
    assert st["params"]["1.weight"]["zero_fraction"] == pytest.approx(0.30)
    assert st["params"]["1.bias"]["zero_fraction"] == 1.0
    assert st["all_weights"]["numel"] == 200                              # biases not pooled
    assert st["all_weights"]["zero_fraction"] == pytest.approx(30 / 200)
    assert st["all_weights"]["near_zero_fraction"] == pytest.approx(45 / 200)
    h = st["params"]["1.weight"]["log_hist"]
    assert h["zeros"] == 30 and sum(h["counts"]) == 70 and h["total"] == 100


def test_magnitude_histogram_bins():
    h = magnitude_histogram(torch.tensor([0.0, 1e-3, 1e-3, 0.1, 1e-9]), bins=7, lo=-6, hi=1)
    # bins of one decade: [-6,-5) ... [0,1); 1e-9 is clamped into the first bin
    assert h["counts"] == [1, 0, 0, 2, 0, 1, 0] and h["zeros"] == 1


def test_sign_changes_between_two_known_sets():
    a = torch.tensor([1.0, -1.0, 2.0, 0.0, -3.0, 0.5])
    b = torch.tensor([1.0, 1.0, -2.0, 1.0, 0.0, 0.7])
    s = sign_changes(a, b)
    assert s["flip_fraction"] == pytest.approx(2 / 6)          # -1 -> 1, 2 -> -2
    assert s["changed_fraction"] == pytest.approx(4 / 6)       # + 0 -> 1, -3 -> 0
    assert s["to_zero_fraction"] == pytest.approx(1 / 6)
    assert s["from_zero_fraction"] == pytest.approx(1 / 6)
    both = sign_changes_between({"0.weight": a, "1.weight": -torch.ones(4), "1.bias": torch.ones(2)},
                                {"0.weight": b, "1.weight": torch.ones(4), "1.bias": -torch.ones(2)})
    assert both["all_weights"]["numel"] == 10                  # biases not pooled
    assert both["all_weights"]["flip_fraction"] == pytest.approx((2 + 4) / 10)
    with pytest.raises(ValueError):
        sign_changes(a, b[:3])


def test_checkpoint_series_vs_init_and_previous():
    init = {"w.weight": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    s1 = {"w.weight": torch.tensor([-1.0, 1.0, 1.0, 1.0])}
    s2 = {"w.weight": torch.tensor([1.0, -1.0, -1.0, 1.0])}
    rows = checkpoint_series(init, [{"epoch": 1, "state": s1}, {"epoch": 2, "state": s2}])
    assert [r["vs_init"]["flip_fraction"] for r in rows] == [0.25, 0.5]
    assert [r["vs_previous"]["flip_fraction"] for r in rows] == [0.25, 0.75]
    assert rows[1]["epoch"] == 2 and "state" not in rows[1]


def test_global_magnitude_masks_across_tensors():
    w = {"a.weight": torch.tensor([[0.5, -0.1], [0.3, 0.0]]), "b.weight": torch.tensor([-0.2, 0.9, 0.05, 0.4])}
    m = global_magnitude_masks(w, 0.5)                          # 4 of 8 smallest: 0, .05, .1, .2
    assert m["a.weight"].tolist() == [[True, False], [True, False]]
    assert m["b.weight"].tolist() == [False, True, False, True]
    st = pruned_state({**w, "a.bias": torch.tensor([0.01, 0.02])}, 0.5)
    assert st["a.bias"].tolist() == pytest.approx([0.01, 0.02])   # biases are never pruned
    assert (st["b.weight"] == 0).sum() == 2
    assert prune_count(0.15, 20) == 3 and prune_count(0.95, 20) == 19 and prune_count(0.0, 7) == 0
    with pytest.raises(ValueError):
        prune_count(1.5, 10)


def _diagonal_net():
    """4 classes, input e_c; output neuron c fires iff W[c, c] (the diagonal d) is kept. 20 weights:
    16 small off-diagonal ones (pruned first, 80 %), then d = [5, 2, 3, 4] from the smallest."""
    layer = LIFLinear(5, 4, bias=False)
    W = torch.zeros(4, 5)
    small = -0.001 * torch.arange(1, 17, dtype=torch.float32)
    W[~torch.eye(4, 5, dtype=torch.bool)] = small
    W[range(4), range(4)] = torch.tensor([5.0, 2.0, 3.0, 4.0])
    with torch.no_grad():
        layer.weight.copy_(W)
    return Sequential(layer)


def test_pruning_curve_of_a_net_computable_by_hand():
    net = _diagonal_net()
    x, y = torch.eye(4, 5), torch.arange(4)

    def acc(n):
        return (n.predict(x, steps=5) == y).float().mean().item()

    before = net[0].weight.detach().clone()
    curve = pruning_curve(net, acc)
    assert torch.equal(net[0].weight, before)                    # restored
    got = {round(r["fraction"], 2): r["accuracy"] for r in curve}
    assert len(curve) == 20 and curve[0]["fraction"] == 0.0 and curve[-1]["fraction"] == 0.95
    for f in [round(0.05 * i, 2) for i in range(17)]:           # 0 .. 80 %: only off-diagonal weights go
        assert got[f] == 1.0, f
    # 85 %: d=2 (class 1) gone, sample 1 is silent and ties to class 0; 90 %: class 2; 95 %: class 3
    assert got[0.85] == 0.75 and got[0.9] == 0.5 and got[0.95] == 0.25
    assert [r["zero_fraction"] for r in curve][-1] == pytest.approx(0.95)
    best = max_prunable(curve, tolerance=0.01)
    assert best["reference_accuracy"] == 1.0 and best["contiguous"] == 0.8 and best["any"] == 0.8


def test_max_prunable_contiguous_vs_any():
    curve = [{"fraction": f, "accuracy": a} for f, a in
             [(0.0, 0.90), (0.1, 0.895), (0.2, 0.87), (0.3, 0.892), (0.4, 0.5)]]
    best = max_prunable(curve, tolerance=0.01)
    assert best["contiguous"] == 0.1 and best["any"] == 0.3
    assert max_prunable([])["contiguous"] is None
