"""Lazy feedback between two synaptic layers: the layer above sends ``LazyFeedback`` (its n and
weights), the layer below scans it in chunks of steps with c carried across chunks, so the whole
``[T, B, N]`` feedback never exists. The updates must equal those of the whole-tensor path
(which LFP takes with ``keep_feedback=True``) for every rule, reset, scope and chunk size, on
the compiled and the torch-loop path, and no chunk may hold more steps than LAZY_CHUNK allows.
"""

from __future__ import annotations

import pytest
import torch

import spikelfp.core.feedback as fb
import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.core import fused
from spikelfp.core.feedback import LazyFeedback, synaptic_layer_feedback
from spikelfp.core.rules import RULES, make_rule

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def path():
    """``path(on)``: the compiled kernels on or off for this test (restored afterwards)."""
    saved = []

    def switch(on):
        saved.append(fused.set_enabled(on))
    yield switch
    if saved:
        fused.set_enabled(saved[0])


def _close(a, b, rel, what):
    scale = max(b.abs().max().item(), 1e-300)
    err = (a - b).abs().max().item()
    assert err <= rel * scale, f"{what}: {err:.3g} > {rel:g} * {scale:.3g}"


def _mlp(reset, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    net = snn.Sequential(snn.LIFLinear(12, 9, reset=reset, dtype=dtype),
                         snn.LIFLinear(9, 8, reset=reset, dtype=dtype),
                         snn.LIFLinear(8, 3, reset=reset, dtype=dtype))
    with torch.no_grad():
        for _, m in net.synaptic_layers():
            m.weight.mul_(3.0)
    return net


def _grads(net, x, y, steps, rule, normalize, keep_feedback):
    lfp = LFP(net, rule=rule, normalize=normalize)
    return lfp.compute(x, y, steps=steps, keep_feedback=keep_feedback).grads


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("normalize", ["step", "sample", "layer", None])
@pytest.mark.parametrize("fused_on", [True, False])
def test_lazy_chunks_equal_whole_feedback(rule, normalize, fused_on, path, monkeypatch):
    """Constant and sequence input, both resets, chunks of 1, 2 and 4 steps (and one chunk):
    G of every parameter equals the whole-tensor path's (float64, 1e-12)."""
    if fused_on and not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    path(fused_on)
    B = 6
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for reset in ("subtract", "zero"):
        net = _mlp(reset)
        cases = [(torch.rand(B, 12, dtype=torch.float64) * 2 - 1, 7),
                 ((torch.rand(7, B, 12) > 0.5).double(), None)]
        for x, steps in cases:
            whole = _grads(net, x, y, steps, rule, normalize, keep_feedback=True)
            for per_chunk in (1, 2, 4, 100):
                monkeypatch.setattr(fb, "LAZY_CHUNK", per_chunk * B * 9)
                lazy = _grads(net, x, y, steps, rule, normalize, keep_feedback=False)
                assert lazy.keys() == whole.keys()
                for k in whole:
                    _close(lazy[k], whole[k], 1e-12, f"{reset}/{per_chunk}/{k}")


def test_lazy_feedback_details_equal_whole(monkeypatch):
    """One layer, r given lazily: F, c, n and the feedback below equal those from the tensor."""
    torch.manual_seed(1)
    dt = torch.float64
    layer = snn.LIFLinear(5, 7, dtype=dt)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    x = (torch.rand(9, 4, 5) > 0.4).to(dt)
    with torch.no_grad():
        _, rec = layer.run(x)
    r = torch.randn(9, 4, 7, dtype=dt)
    p = layer.neuron_parameters()
    kw = dict(beta=p.beta, threshold=p.threshold, reset=p.reset, rule=make_rule("epsilon"),
              details=True)
    monkeypatch.setattr(fb, "LAZY_CHUNK", 2 * 4 * 7)
    for normalize in ("step", "layer"):
        a = synaptic_layer_feedback(r, x, rec.membrane, rec.spikes, layer.weight, layer.bias,
                                    layer.ops, normalize=normalize, **kw)
        lazy = LazyFeedback(lambda lo, hi, out=None: r[lo:hi].clone() if out is None
                            else out.copy_(r[lo:hi]), tuple(r.shape))
        b = synaptic_layer_feedback(lazy, x, rec.membrane, rec.spikes, layer.weight, layer.bias,
                                    layer.ops, normalize=normalize, lazy_below=True, **kw)
        assert isinstance(b.below, LazyFeedback) and b.below.shape == tuple(x.shape)
        _close(b.below.materialize(), a.below, 1e-12, "below")
        for field in ("grad_weight", "grad_bias", "feedback", "temporal", "n"):
            _close(getattr(b, field), getattr(a, field), 1e-12, field)


@pytest.mark.parametrize("fused_on", [False, True])
def test_chunks_never_exceed_the_limit(fused_on, path, monkeypatch):
    """The layer below reads the feedback in slices of at most LAZY_CHUNK // (B N) steps (each
    step once); the CPU kernel makes a linear layer's feedback itself from n, W and the spikes
    (no rows at all); and LFP sends it lazily only where the layer below scans lazily (not
    into a pooling layer)."""
    if fused_on and not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    path(fused_on)
    sizes = []
    orig = fb._below_linear

    def spy(ops, n, W, x, const):
        rows = orig(ops, n, W, x, const)

        def counted(a, b, out=None):
            sizes.append(b - a)
            return rows(a, b, out)
        return counted
    monkeypatch.setattr(fb, "_below_linear", spy)
    monkeypatch.setattr(fb, "LAZY_CHUNK", 3 * 6 * 9)
    net = _mlp("subtract")
    LFP(net).compute(torch.rand(6, 12, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]), steps=10)
    # two lazy boundaries; chunks of 3 steps: steps 7-9, 4-6, 1-3 and 0 -> 3 + 3 + 3 + 1 rows
    assert sizes == ([] if fused_on else [3, 3, 3, 1] * 2)
    conv = snn.Sequential(snn.LIFConv2d(1, 2, 3, padding=1), snn.MaxPool2d(2), snn.Flatten(),
                          snn.LIFLinear(2 * 4 * 4, 3))
    walk = {w[1]: w[-1] for w in LFP(conv)._walk}
    assert walk == {"3": True, "2": False, "1": False, "0": False}  # flatten -> maxpool: whole


def test_conv_through_flatten_lazy_equals_whole(monkeypatch):
    """Conv -> Flatten -> Linear: the feedback goes through Flatten lazily; same G."""
    torch.manual_seed(2)
    dt = torch.float64
    net = snn.Sequential(snn.LIFConv2d(1, 3, 3, padding=1, dtype=dt), snn.Flatten(),
                         snn.LIFLinear(3 * 6 * 6, 4, dtype=dt))
    with torch.no_grad():
        for _, m in net.synaptic_layers():
            m.weight.mul_(3.0)
    x, y = torch.rand(5, 1, 6, 6, dtype=dt), torch.tensor([0, 1, 2, 3, 0])
    assert [w[-1] for w in LFP(net)._walk] == [True, True, False]
    whole = _grads(net, x, y, 8, "epsilon", "step", keep_feedback=True)
    monkeypatch.setattr(fb, "LAZY_CHUNK", 3 * 5 * 3 * 36)
    lazy = _grads(net, x, y, 8, "epsilon", "step", keep_feedback=False)
    for k in whole:
        _close(lazy[k], whole[k], 1e-12, k)


def test_statistics_count_lazy_feedback_like_the_tensor():
    """The trainer's statistics keep the feedback lazy ("lazy"): the nonzero fractions they count
    equal those of the whole tensors (``keep_feedback=True``)."""
    from spikelfp.train.stats import nonzero_fraction

    net = _mlp("subtract")
    x, y = torch.rand(6, 12, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    whole = LFP(net).compute(x, y, steps=9, keep_feedback=True).feedback
    lazy = LFP(net).compute(x, y, steps=9, keep_feedback="lazy").feedback
    assert whole.keys() == lazy.keys() == {"0", "1", "2"}
    assert isinstance(lazy["1"], LazyFeedback) and isinstance(lazy["0"], LazyFeedback)
    for k in whole:
        assert 0 < nonzero_fraction(whole[k]) < 1
        assert nonzero_fraction(lazy[k]) == nonzero_fraction(whole[k])
        if isinstance(lazy[k], LazyFeedback):  # n above made from kernel-made rows: rounding
            _close(lazy[k].materialize(), whole[k], 1e-13, k)


@pytest.mark.parametrize("normalize", ["step", "layer"])
def test_float32_kernel_made_feedback_agrees_with_the_matrix_product(normalize, path):
    """float32, the CPU kernel making x_t (n_t W) itself (ten rows of W at a time) against the
    whole tensor from torch's matrix product: the same G up to float32 rounding."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    path(True)
    net = _mlp("zero", dtype=torch.float32, seed=3)
    x, y = torch.rand(6, 12), torch.tensor([0, 1, 2, 0, 1, 2])
    whole = _grads(net, x, y, 11, "epsilon", normalize, keep_feedback=True)
    lazy = _grads(net, x, y, 11, "epsilon", normalize, keep_feedback=False)
    for k in whole:
        assert whole[k].abs().max() > 0, k
        _close(lazy[k], whole[k], 1e-5, k)


@pytest.mark.parametrize("K", [3, 10, 13, 25])
@pytest.mark.parametrize("normalize", ["step", "sample"])
def test_kernel_made_rows_for_any_width_of_the_layer_above(K, normalize, path):
    """The kernel sums ten rows of W at a time, the last group padded with zero rows: for K
    outputs above (fewer than ten, ten, and two or three groups with padding) the scan fed
    r_t = x_t (n_t W) by the kernel equals the scan fed the whole tensor (float64)."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    path(True)
    g = torch.Generator().manual_seed(K)
    T, B, N = 6, 3, 37
    v = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    s = (v > 0.5).to(torch.uint8)
    n = torch.randn(T, B, K, generator=g, dtype=torch.float64)
    W = torch.randn(K, N, generator=g, dtype=torch.float64)
    x = (torch.rand(T, B, N, generator=g) > 0.4).to(torch.uint8)
    r = (n @ W) * x
    kw = dict(reset="subtract", spiking=True, rule=make_rule("epsilon"), normalize=normalize,
              direction=False, keep=True, details=True)
    whole = fused.reverse_scan(r, v, s, 0.9, 1.0, **kw)
    made = fused.reverse_scan(None, v, s, 0.9, 1.0, lowrank=(n, W, x, None), **kw)
    for a, b, what in ((made[0][0], whole[0][0], "n"), (made[2], whole[2], "F"), (made[3], whole[3], "c")):
        assert b.abs().max() > 0
        _close(a, b, 1e-13, what)
