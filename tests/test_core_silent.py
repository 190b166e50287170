"""Silent neurons left out of the LFP backward (CPU): a neuron that never spiked in the batch
gets no feedback (its r_t is 0 at every step, so F, c and n are 0), so

- ``synapse.live_correlate`` computes only the rows of n^T x whose column of n is not all zero,
- ``fused.reverse_scan`` (kernel-made feedback) scans only the neurons whose gate ever opened.

The scan must give exactly the numbers of the whole scan (the same per-neuron arithmetic in the
same order) for every rule, scope, reset and parameter shape; the correlation the same dot
products (BLAS may sum a smaller product in another order: equal to rounding) and exact zero
rows. Both fall back to the whole computation where skipping could change a result (gradients,
non-finite input).
"""

from __future__ import annotations

import pytest
import torch

from spikelfp import LFP
import spikelfp.nn as snn
from spikelfp.core import fused, synapse
from spikelfp.core.rules import RULES, make_rule

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def small(monkeypatch):
    """Skipping switched on for this test's small products (it starts at LIVE_MIN_MACS
    multiply-adds and LIVE_MIN elements)."""
    monkeypatch.setattr(synapse, "LIVE_MIN_MACS", 0)
    monkeypatch.setattr(fused, "LIVE_MIN", 0)


def _silent_columns(g, n, cols, live_share):
    """n with all but about ``live_share`` of its columns (last dim) set to 0."""
    dead = torch.rand(cols, generator=g) > live_share
    n[..., dead] = 0
    return n, (~dead).nonzero().squeeze(1)


# --- the correlation -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("live_share", [0.0, 0.1, 0.5])
def test_live_correlate_equals_the_whole_product(dtype, live_share, small):
    g = torch.Generator().manual_seed(1)
    n, live = _silent_columns(g, torch.randn(40, 30, generator=g, dtype=dtype), 30, live_share)
    x = torch.randn(40, 17, generator=g, dtype=dtype)
    got = synapse.live_correlate(n, x)
    want = n.t() @ x
    assert got.shape == want.shape and got.dtype == dtype
    # the same dot products; BLAS may sum a product of fewer rows in another order
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    assert (got - want).abs().max() <= tol * want.abs().max()
    dead = torch.ones(30, dtype=torch.bool)
    dead[live] = False
    assert torch.count_nonzero(got[dead]) == 0
    if live.numel():
        assert torch.count_nonzero(got[live]) == live.numel() * 17


def test_live_correlate_computes_only_the_live_rows(monkeypatch, small):
    """The product it runs has as many rows as there are live columns (not all of them)."""
    g = torch.Generator().manual_seed(2)
    n, live = _silent_columns(g, torch.randn(16, 50, generator=g), 50, 0.2)
    x = torch.randn(16, 8, generator=g)
    seen = []
    real = torch.Tensor.__matmul__

    def spy(a, b):
        seen.append(tuple(a.shape))
        return real(a, b)
    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    synapse.live_correlate(n, x)
    assert seen == [(live.numel(), 16)]
    # the whole product above LIVE_MAX live columns, and below LIVE_MIN_MACS multiply-adds
    monkeypatch.setattr(synapse, "LIVE_MAX", 0.9 * live.numel() / 50)
    synapse.live_correlate(n, x)
    monkeypatch.setattr(synapse, "LIVE_MAX", 1.0)
    monkeypatch.setattr(synapse, "LIVE_MIN_MACS", 16 * 50 * 8 + 1)
    synapse.live_correlate(n, x)
    assert seen[1:] == [(50, 16), (50, 16)]


def test_live_correlate_falls_back_where_skipping_could_change_the_result(small):
    g = torch.Generator().manual_seed(3)
    n, _ = _silent_columns(g, torch.randn(12, 20, generator=g), 20, 0.3)
    x = torch.randn(12, 5, generator=g)
    # a non-finite input: 0 * inf is NaN in the whole product, so nothing is skipped
    x_bad = x.clone()
    x_bad[3, 1] = float("inf")
    assert torch.equal(synapse.live_correlate(n, x_bad).isnan(), (n.t() @ x_bad).isnan())
    assert synapse.live_correlate(n, x_bad).isnan().any()
    # a NaN in n keeps its column (a NaN row in the result, as in the product)
    n_nan = n.clone()
    col = int((n.abs().sum(0) == 0).nonzero()[0])
    n_nan[5, col] = float("nan")
    assert synapse.live_correlate(n_nan, x)[col].isnan().all()
    # with a gradient: the plain product (autograd sees it)
    w = n.clone().requires_grad_(True)
    out = synapse.live_correlate(w, x)
    out.sum().backward()
    assert torch.allclose(w.grad, x.sum(1, keepdim=True).expand(12, 20))


def test_linear_ops_correlate_skips_silent_rows_for_sequences(small):
    """``LinearOps.correlate`` over [T, B, N] rows: the same numbers as the flat product."""
    g = torch.Generator().manual_seed(4)
    n, _ = _silent_columns(g, torch.randn(5, 3, 40, generator=g), 40, 0.25)
    x = torch.randn(5, 3, 9, generator=g)
    got = synapse.LinearOps().correlate(n, x, (40, 9))
    want = n.reshape(-1, 40).t() @ x.reshape(-1, 9)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()
    assert torch.count_nonzero(got[n.reshape(-1, 40).abs().sum(0) == 0]) == 0


# --- the reverse scan ------------------------------------------------------------------------

def _scan_inputs(g, T, B, out_shape, K, live_share, dtype=torch.float64):
    Nn = 1
    for d in out_shape:
        Nn *= d
    v = torch.randn(T, B, *out_shape, generator=g, dtype=dtype) + 0.3
    s = (v > 0.8).to(torch.uint8)
    dead = torch.rand(Nn, generator=g) > live_share
    s.view(T, B, Nn)[..., dead] = 0  # silent neurons: their spikes (the gate above) are all 0
    n_up = torch.randn(T, B, K, generator=g, dtype=dtype)
    W_up = torch.randn(K, Nn, generator=g, dtype=dtype)
    return v, s, n_up, W_up, dead


def _both(monkeypatch, r_args, kw):
    """The scan with silent neurons left out (forced on at this size) and the whole scan."""
    monkeypatch.setattr(fused, "LIVE_MIN", 0)
    monkeypatch.setattr(fused, "LIVE_GATHER_MAX", 1.0)
    taken = []
    real = fused._live_scan

    def spy(live, *a, **k):
        taken.append(live.index.numel())
        return real(live, *a, **k)
    monkeypatch.setattr(fused, "_live_scan", spy)
    skip = fused.reverse_scan(*r_args, **kw)
    whole = fused.reverse_scan(*r_args, **kw, skip_silent=False)
    return skip, whole, taken


def _assert_same(skip, whole):
    for part in (0, 1):
        if whole[part] is None:
            assert skip[part] is None
            continue
        for a, b in zip(skip[part], whole[part]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("normalize", ["step", "sample", None])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("chunk", ["whole", "one step", "three steps"])
def test_scan_without_silent_neurons_equals_the_whole_scan(rule, normalize, keep, chunk,
                                                            monkeypatch):
    """Also in chunks of steps (c carried across them, as the lazy chunks do)."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(len(rule) + 7 * keep)
    T, B, Nn, K = 7, 4, 60, 10
    v, s, n_up, W_up, dead = _scan_inputs(g, T, B, (Nn,), K, 0.4)
    per_step = B * int((~dead).sum()) * 8  # bytes of gathered float64 v per step
    monkeypatch.setattr(fused, "LIVE_CHUNK", {"whole": 1 << 30, "one step": 1,
                                              "three steps": 3 * per_step}[chunk])
    extra = {}
    if rule == "zplus_zminus":
        extra["base"] = torch.rand(T, B, Nn, generator=g, dtype=torch.float64) + 0.1
    if rule == "alphabeta":  # a constant input: P, N per sample and neuron
        extra["P"] = torch.rand(B, Nn, generator=g, dtype=torch.float64)
        extra["N"] = -torch.rand(B, Nn, generator=g, dtype=torch.float64)
    beta = torch.rand(Nn, generator=g, dtype=torch.float64) * 0.5 + 0.4  # one per neuron
    kw = dict(reset="zero", spiking=True, rule=make_rule(rule), normalize=normalize,
              direction=False, keep=keep, details=False, lowrank=(n_up, W_up, s, None), **extra)
    skip, whole, taken = _both(monkeypatch, (None, v, s, beta, 1.0), kw)
    assert taken == [int((~dead).sum())]
    _assert_same(skip, whole)
    res = whole[0][0] if keep else whole[1][0]
    assert res.abs().max() > 0
    assert torch.count_nonzero(res[..., dead]) == 0


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("chunk", [1 << 30, 1])
def test_scan_without_silent_neurons_for_a_layer_of_several_dims(reset, chunk, monkeypatch):
    """A layer with [C, H, W] neurons under a linear layer (through a flatten), float32, one
    threshold per neuron, the "layer" max passed in, and a gate that is not the spikes."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(11)
    T, B, shape, K = 5, 3, (2, 4, 5), 13
    v, s, n_up, W_up, dead = _scan_inputs(g, T, B, shape, K, 0.3, dtype=torch.float32)
    x_up = s.reshape(T, B, -1).clone()
    x_up[2, 1, ~dead] = 0  # a different tensor with the same silent neurons
    theta = torch.rand(shape, generator=g) + 0.5
    monkeypatch.setattr(fused, "LIVE_CHUNK", chunk)
    kw = dict(reset=reset, spiking=True, rule=make_rule("epsilon"), normalize=None,
              direction=False, keep=True, details=False, lowrank=(n_up, W_up, x_up, 2.5))
    skip, whole, taken = _both(monkeypatch, (None, v, s, 0.85, theta), kw)
    assert taken == [int((~dead).sum())]
    _assert_same(skip, whole)


def test_a_silent_layer_gets_zero_feedback(monkeypatch):
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(5)
    v, s, n_up, W_up, _ = _scan_inputs(g, 4, 2, (30,), 10, 0.0)
    assert s.sum() == 0
    for keep in (True, False):
        kw = dict(reset="zero", spiking=True, rule=make_rule("epsilon"), normalize="step",
                  direction=False, keep=keep, details=False, lowrank=(n_up, W_up, s, None))
        skip, whole, taken = _both(monkeypatch, (None, v, s, 0.9, 1.0), kw)
        assert taken[-1] == 0
        _assert_same(skip, whole)


def test_no_skipping_above_the_share_or_for_small_layers(monkeypatch):
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(6)
    x = torch.zeros(4, 3, 100, dtype=torch.uint8)
    x[..., :30] = (torch.rand(4, 3, 30, generator=g) > 0.5).to(torch.uint8)
    x[0, 0, :30] = 1
    monkeypatch.setattr(fused, "LIVE_MIN", 0)
    assert torch.equal(fused.live_columns(x, 100, 0.4), torch.arange(30))
    assert fused.live_columns(x, 100, 0.25) is None  # 30 % live: above the share
    # float input: nonzero columns, NaN counted; other dtypes are not looked at
    xf = x.double()
    xf[1, 2, 50] = float("nan")
    assert torch.equal(fused.live_columns(xf, 100, 0.4), torch.tensor(list(range(30)) + [50]))
    assert fused.live_columns(x.long(), 100, 0.4) is None
    monkeypatch.setattr(fused, "LIVE_MIN", x.numel() + 1)
    assert fused.live_columns(x, 100, 0.4) is None  # too small to gain


def _silent_net():
    torch.manual_seed(0)
    net = snn.Sequential(snn.LIFLinear(20, 40, dtype=torch.float64),
                         snn.LIFLinear(40, 30, dtype=torch.float64),
                         snn.LIFLinear(30, 4, dtype=torch.float64))
    with torch.no_grad():
        for _, m in net.synaptic_layers():
            m.weight.mul_(2.5)
        net[0].weight[:25].mul_(-1).sub_(1.0)  # 25 of 40 neurons of the first layer silent
        net[1].weight[:12].mul_(-1).sub_(1.0)  # 12 of 30 of the second
    return net, torch.rand(6, 20, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1, 0])


def test_lfp_updates_equal_with_and_without_skipping(monkeypatch):
    """End to end: the LFP backward of a 3-layer net whose hidden layers have silent neurons
    gives the same updates with silent neurons skipped (forced on at this size) and without:
    the scans and the correlations of the layers above them."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    net, x, y = _silent_net()
    lfp = LFP(net)
    monkeypatch.setattr(fused, "LIVE_MIN", 0)
    monkeypatch.setattr(fused, "LIVE_GATHER_MAX", 1.0)
    with torch.no_grad():
        trace = net.run(x, 8, compact=True)
    assert [r.live is not None for r in trace.records] == [False, False, True]  # the narrow one
    calls = []
    real = fused._live_scan
    monkeypatch.setattr(fused, "_live_scan", lambda live, *a, **k: calls.append(
        (live.index.numel(), live.x is not None)) or real(live, *a, **k))
    skip = lfp.backward(trace, y).grads
    # both hidden layers scanned on their live neurons, with the gate gathered by the forward or
    # the layer above (whose correlation then ran over those columns only)
    live = [int((r.spikes.reshape(-1, r.spikes.shape[-1]).amax(0) > 0).sum())
            for r in trace.records[:2]]
    assert live[0] <= 15 and live[1] <= 18
    assert sorted(calls) == sorted((n, True) for n in live)
    monkeypatch.setattr(fused, "LIVE_GATHER_MAX", 0.0)
    plain = trace._replace(records=[r._replace(live=None) for r in trace.records])
    whole = lfp.backward(plain, y).grads
    assert len(calls) == 2 and skip.keys() == whole.keys()
    for k in whole:
        if k == "1.weight":  # 30 outputs: BLAS's product over the live columns, equal to rounding
            assert (skip[k] - whole[k]).abs().max() <= 1e-13 * whole[k].abs().max(), k
        else:  # the scans, the narrow kernel, the lowest layer's whole product: bit for bit
            assert torch.equal(skip[k], whole[k]), k
    assert torch.count_nonzero(whole["0.weight"][:25]) == 0
    assert whole["0.weight"][25:].abs().max() > 0


def test_forward_over_live_columns(monkeypatch):
    """A narrow layer's no-grad forward over the live columns of its input: the current agrees
    with the whole product to rounding, the spikes are equal, compact and float records give
    the same numbers bit for bit, and nothing is left out with a gradient or non-finite weights."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    net, x, _ = _silent_net()
    monkeypatch.setattr(fused, "LIVE_MIN", 0)
    monkeypatch.setattr(fused, "LIVE_GATHER_MAX", 1.0)
    with torch.no_grad():
        live_c = net.run(x, 8, compact=True)
        live_f = net.run(x, 8)
        h = live_c.records[2].x
        monkeypatch.setattr(fused, "LIVE_GATHER_MAX", 0.0)
        whole = net.run(x, 8, compact=True)
    h_live = int((h.reshape(-1, 30).amax(0) > 0).sum())
    assert h_live <= 18 and live_c.records[2].live.index.numel() == h_live
    assert whole.records[2].live is fused.NOT_SPARSE  # looked: too many live at share 0
    assert torch.equal(live_c.records[2].live.x, h[..., live_c.records[2].live.index])
    for a, b in zip(live_c.records, whole.records):
        assert torch.equal(a.spikes, b.spikes)
        assert (a.membrane - b.membrane).abs().max() <= 1e-14 * b.membrane.abs().max()
    for a, b in zip(live_c.records, live_f.records):
        assert torch.equal(a.membrane, b.membrane)
        assert torch.equal(a.spikes.to(b.spikes.dtype), b.spikes)
    layer = net[2]
    monkeypatch.setattr(fused, "LIVE_GATHER_MAX", 1.0)
    assert layer.live_input(h) is None  # a gradient may be taken: the plain product
    with torch.no_grad():
        assert layer.live_input(h) is not None
        layer.weight[0, 0] = float("inf")
        assert layer.live_input(h) is fused.NOT_SPARSE


def test_the_switch_turns_skipping_off(monkeypatch, small):
    """``set_skip_silent(False)`` (or ``SPIKELFP_SKIP_SILENT=0``): no live columns anywhere, the
    whole products and scans."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(fused, "LIVE_MIN", 0)
    x = torch.zeros(3, 2, 10, dtype=torch.uint8)
    x[..., 1] = 1
    assert fused.live_columns(x, 10, 0.5) is not None
    prev = fused.set_skip_silent(False)
    try:
        assert prev is True and not fused.skip_silent()
        assert fused.live_columns(x, 10, 0.5) is None
        n = torch.zeros(4, 30)
        n[:, 3] = 1.0
        seen = []
        real = torch.Tensor.__matmul__
        monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: seen.append(a.shape) or real(a, b))
        synapse.live_correlate(n, torch.ones(4, 5))
        assert seen == [torch.Size([30, 4])]
    finally:
        fused.set_skip_silent(prev)


def test_non_finite_input_is_still_reported_with_skipping(monkeypatch, small):
    """A NaN in the input makes every first-layer neuron silent (NaN > theta is false); the
    skipped scan gives them n = 0, and the lowest layer's correlation still sees the NaN input
    (it falls back to the whole product), so LFP reports non-finite feedback as before."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(fused, "LIVE_MIN", 0)
    net, x, y = _silent_net()
    x[2, 5] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite feedback"):
        LFP(net).compute(x, y, steps=8)


def test_a_silent_hidden_layer_runs_forward_and_backward(monkeypatch, small):
    """No hidden neuron spikes: the narrow layer's forward takes the plain product (its current
    is the bias), and the backward gives zero updates below the output layer."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(fused, "LIVE_MIN", 0)
    net, x, y = _silent_net()
    with torch.no_grad():
        net[1].weight.fill_(-1.0)
        trace = net.run(x, 8, compact=True)
    live = trace.records[2].live
    assert trace.records[1].spikes.sum() == 0 and live.index.numel() == 0 and not live.gathered()
    assert torch.equal(trace.records[2].membrane[0], net[2].bias.detach().expand(6, 4))
    grads = LFP(net).backward(trace, y).grads
    assert torch.count_nonzero(grads["1.weight"]) == 0 and torch.count_nonzero(grads["0.weight"]) == 0
    assert torch.count_nonzero(grads["2.weight"]) == 0  # its input is all 0


def test_gathers_give_the_same_numbers_on_any_number_of_threads(monkeypatch):
    """With torch's thread count above 1 the gathers split their rows over numba's threads (a
    copy: the same bits); with 2 and 3 threads the split kernels are taken."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    import numba
    g = torch.Generator().manual_seed(9)
    R, N = 3 * fused.SPLIT_GATHER // 40 + 7, 100
    v = torch.randn(R, N, generator=g)
    s = (torch.rand(R, N, generator=g) > 0.5).to(torch.uint8)
    idx = torch.arange(3, N, 3).numpy()  # 33 columns
    calls, runs = [], []
    for name in ("_gather_par_compiled", "_gather_two_par_compiled"):
        real = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, _r=real, _n=name: (calls.append(_n), _r(*a))[1])
    saved = torch.get_num_threads()
    try:
        for k in (1, 2, 3):
            torch.set_num_threads(k)
            out = torch.empty(R, idx.size)
            fused._gather(v.numpy(), idx, out.numpy())
            vo, so = torch.empty(R, idx.size), torch.empty(R, idx.size, dtype=torch.uint8)
            fused._gather2(v.numpy(), s.numpy(), idx, vo.numpy(), so.numpy())
            runs.append((out, vo, so))
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(runs[0][0], v[:, idx]) and torch.equal(runs[0][2], s[:, idx])
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert torch.equal(a, c)
    if numba.config.NUMBA_NUM_THREADS > 1:
        assert sorted(calls) == ["_gather_par_compiled"] * 2 + ["_gather_two_par_compiled"] * 2


def test_one_look_per_step_where_too_many_neurons_are_live(monkeypatch):
    """Where the forward looked and found too many live columns (``NOT_SPARSE`` in the record),
    neither the backward nor the scan below looks again: one pass over the spikes per step."""
    if not fused.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    net, x, y = _silent_net()
    monkeypatch.setattr(fused, "LIVE_MIN", 0)
    monkeypatch.setattr(fused, "LIVE_GATHER_MAX", 0.05)
    looks = []
    real = fused.live_columns
    monkeypatch.setattr(fused, "live_columns", lambda a, *r: looks.append(a.shape) or real(a, *r))
    with torch.no_grad():
        trace = net.run(x, 8, compact=True)
    assert trace.records[2].live is fused.NOT_SPARSE and len(looks) == 1
    grads = LFP(net).backward(trace, y).grads
    # one more look: the (40 -> 30) layer's input, which no forward looked at (not narrow);
    # none at the output layer's input or in either scan
    assert looks == [(8, 6, 30), (8, 6, 40)]
    monkeypatch.setattr(fused, "LIVE_GATHER_MAX", 0.0)
    plain = trace._replace(records=[r._replace(live=None) for r in trace.records])
    again = LFP(net).backward(plain, y).grads  # no record: the backward looks once per input
    assert looks[2:] == [(8, 6, 30), (8, 6, 40)]
    for k in grads:
        assert torch.equal(grads[k], again[k]), k
