"""Properties of the LFP rules on random nets (spec section 3 table), and max-abs normalization.

For every neuron j and step t the per-contribution feedback is reconstructed from the engine's
``details.n`` and the contributions z (synaptic W_ji x_i, temporal z^u, bias b_j), which the
test recomputes from the forward trace itself. Besides the per-neuron properties, the
contributions are tied back to what the engine actually sends: sum_i r^below_{t,i} is the sum
of all synaptic feedback at step t, and the engine's c_{t-1} is the temporal feedback.
"""

from __future__ import annotations

import pytest
import torch

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.train.lfp import layer_feedback
from spikelfp.core.feedback import synaptic_layer_feedback
from spikelfp.core.rules import make_rule, maxabs_normalize
from spikelfp.core.synapse import LinearOps

pytestmark = pytest.mark.usefixtures("single_thread")

DT = torch.float64
SEEDS = [0, 1, 2, 3]


def _random_layer(seed, reset, n_in=7, n_out=6, T=6, B=5, signed_input=True):
    g = torch.Generator().manual_seed(seed)
    layer = snn.LIFLinear(n_in, n_out, beta=0.85, threshold=1.0, reset=reset, dtype=DT)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=g, dtype=DT) * 0.8)
        layer.bias.copy_(torch.randn(n_out, generator=g, dtype=DT) * 0.3)
        # neuron 0: only positive contributions; neuron 1: only negative (spiking inputs x >= 0)
        layer.weight[0].abs_()
        layer.bias[0] = 0.2
        layer.weight[1] = -layer.weight[1].abs()
        layer.bias[1] = -0.2
    x = torch.randn(T, B, n_in, generator=g, dtype=DT) * 1.2
    x = x if signed_input else (x > 0.3).to(DT)  # spikes from a layer below
    r = torch.randn(T, B, n_out, generator=g, dtype=DT)
    with torch.no_grad():
        _, rec = layer.run(x)
    assert 0 < rec.spikes.sum() < rec.spikes.numel()
    return layer, x, r, rec


def _contributions(layer, x, rec):
    """Synaptic z [T,B,out,in], temporal z^u [T,B,out], bias [out], independent of the engine."""
    W, b, beta, th = layer.weight.detach(), layer.bias.detach(), layer.beta, layer.threshold
    syn = W[None, None] * x[:, :, None, :]
    v, s = rec.membrane, rec.spikes
    prev_v = torch.cat([torch.zeros_like(v[:1]), v[:-1]])
    prev_s = torch.cat([torch.zeros_like(s[:1]), s[:-1]])
    zu = beta * prev_v * (1 - prev_s) if layer.reset == "zero" else beta * prev_v
    z = zu + syn.sum(-1) + b
    # the contributions add up to the membrane (plus the reset term that carries no feedback)
    reset_term = th * prev_s if layer.reset == "subtract" else 0.0
    assert torch.allclose(z - reset_term, v, atol=1e-12)
    return syn, zu, b


def _feedback(layer, x, r, rec, rule, **kw):
    kw.setdefault("normalize", None)
    return synaptic_layer_feedback(
        r, x, rec.membrane, rec.spikes, layer.weight, layer.bias, LinearOps(), beta=layer.beta,
        threshold=layer.threshold, reset=layer.reset, rule=make_rule(rule), details=True, **kw)


def _check_sent(res, syn, zu, n_syn, n_zu):
    """The engine's below and temporal feedback are made of these per-contribution shares."""
    f_syn = syn * n_syn[..., None]
    assert torch.allclose(res.below, f_syn.sum(2), rtol=1e-10, atol=1e-10)
    f_zu = zu * n_zu
    assert torch.allclose(res.temporal[:-1], f_zu[1:], rtol=1e-10, atol=1e-10)
    assert torch.all(zu[0] == 0)
    return f_syn, f_zu


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("normalize", [None, "step"])
def test_lfp0_conserves_up_to_sign(seed, reset, normalize):
    layer, x, r, rec = _random_layer(seed, reset)
    res = _feedback(layer, x, r, rec, "zero", normalize=normalize)
    syn, zu, b = _contributions(layer, x, rec)
    n = res.n
    f_syn, f_zu = _check_sent(res, syn, zu, n, n)
    total = f_syn.sum(-1) + f_zu + b * n
    z = syn.sum(-1) + zu + b
    assert torch.allclose(total, torch.sign(z) * res.feedback, rtol=1e-10, atol=1e-12)
    assert res.feedback.abs().sum() > 0
    # and the layer as a whole: everything sent below + back in time + to the bias
    sent = res.below.sum(-1) + f_zu.sum(-1) + (b * n).sum(-1)
    assert torch.allclose(sent, (torch.sign(z) * res.feedback).sum(-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("seed", SEEDS)
def test_epsilon_conserves_up_to_epsilon(seed, reset):
    layer, x, r, rec = _random_layer(seed, reset)
    res = _feedback(layer, x, r, rec, "epsilon", normalize="step")
    syn, zu, b = _contributions(layer, x, rec)
    n = res.n
    f_syn, f_zu = _check_sent(res, syn, zu, n, n)
    total = f_syn.sum(-1) + f_zu + b * n
    z = syn.sum(-1) + zu + b
    # sign(z) F - z n = sign(z) eps n exactly: the error is epsilon-sized (relative to n)
    err = (total - torch.sign(z) * res.feedback).abs()
    assert torch.all(err <= 1e-6 * n.abs() * (1 + 1e-8) + 1e-12)
    big = z.abs() > 1e-2  # there the relative error eps / (|z| + eps) is below 1e-4
    assert big.float().mean() > 0.9
    assert torch.allclose(total[big], (torch.sign(z) * res.feedback)[big], rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("signed_input", [True, False])
def test_zplus_zminus_is_bounded(seed, reset, signed_input):
    layer, x, r, rec = _random_layer(seed, reset, signed_input=signed_input)
    res = _feedback(layer, x, r, rec, "zplus_zminus")
    syn, zu, b = _contributions(layer, x, rec)
    n = res.n
    f_syn, f_zu = _check_sent(res, syn, zu, n, n)
    abs_sum = f_syn.abs().sum(-1) + f_zu.abs() + (b * n).abs()
    F = res.feedback
    assert torch.all(abs_sum <= F.abs() * (1 + 1e-12))
    # the bound is tight up to epsilon: sum |f| = |F| (D - eps) / D with D = sum |z| + eps
    D = syn.abs().sum(-1) + zu.abs() + b.abs() + 1e-6
    assert torch.allclose(abs_sum, F.abs() * (D - 1e-6) / D, rtol=1e-10, atol=1e-14)
    assert torch.allclose(res.n.abs(), F.abs() / D, rtol=1e-10, atol=1e-14)
    # so what is sent below never exceeds what arrived: sum_i |r_below| <= sum_j |F|
    assert torch.all(res.below.abs().sum(-1) <= F.abs().sum(-1) * (1 + 1e-12))


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("signed_input", [True, False])
def test_alphabeta_sums(seed, reset, signed_input):
    layer, x, r, rec = _random_layer(seed, reset, signed_input=signed_input)
    res = _feedback(layer, x, r, rec, "alphabeta")
    syn, zu, b = _contributions(layer, x, rec)
    n_p, n_n = res.n
    share_syn = torch.where(syn > 0, n_p[..., None], n_n[..., None]) * syn
    f_zu = torch.where(zu > 0, n_p, n_n) * zu
    f_b = torch.where(b > 0, n_p, n_n) * b
    assert torch.allclose(res.below, share_syn.sum(2), rtol=1e-10, atol=1e-10)
    assert torch.allclose(res.temporal[:-1], f_zu[1:], rtol=1e-10, atol=1e-10)
    total = share_syn.sum(-1) + f_zu + f_b
    F = res.feedback
    terms = torch.cat([syn, zu[..., None], b.expand_as(zu)[..., None]], -1)
    Zp = terms.clamp(min=0).sum(-1)
    Zn = terms.clamp(max=0).sum(-1)
    has_p, has_n = Zp > 0, Zn < 0
    both, only_p, only_n = has_p & has_n, has_p & ~has_n, has_n & ~has_p
    # exact epsilon slack: sum f = alpha F Zp / (Zp + eps) - beta F |Zn| / (|Zn| + eps)
    eps, A = 1e-6, F.abs()
    slack_p, slack_n = 2 * A * eps / (Zp + eps), A * eps / (Zn.abs() + eps)
    tol = 1e-10 * A + 1e-14
    assert torch.all(((total - F).abs() <= slack_p + slack_n + tol)[both])
    assert torch.all(((total - 2 * F).abs() <= slack_p + tol)[only_p])
    assert torch.all(((total + F).abs() <= slack_n + tol)[only_n])
    # the slack is small where the sums are not tiny
    big = (Zp > 0.05) | ~has_p
    big &= (Zn < -0.05) | ~has_n
    assert big.float().mean() > 0.8
    slack = torch.where(has_p, slack_p, 0.0) + torch.where(has_n, slack_n, 0.0)
    assert torch.all(slack[big] <= 1e-4 * A[big] + 1e-14)
    # every category must actually occur for the test to mean something
    assert both.sum() > 10
    if not signed_input:
        assert only_p.sum() > 0 and only_n.sum() > 0
    # G_W = |W| * sum over b,t of (n+ or n- by the sign of the term) * x, averaged over B
    G_ref = (share_syn * torch.sign(layer.weight.detach())).sum((0, 1)) / x.shape[1]
    assert torch.allclose(res.grad_weight, G_ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- normalization


def test_maxabs_normalize_function():
    g = torch.Generator().manual_seed(0)
    F = torch.randn(4, 5, 3, generator=g, dtype=DT) * 7
    out = maxabs_normalize(F)
    assert out.abs().max().item() == pytest.approx(1.0, abs=1e-15)
    assert torch.allclose(out * F.abs().max(), F)
    per = maxabs_normalize(F, per_sample=True, sample_dim=0)
    assert torch.allclose(per.abs().amax(dim=(1, 2)), torch.ones(4, dtype=DT))
    per1 = maxabs_normalize(F, per_sample=True, sample_dim=1)
    assert torch.allclose(per1.abs().amax(dim=(0, 2)), torch.ones(5, dtype=DT))
    # all-zero (and below the 1e-10 floor) is left untouched
    z = torch.zeros(3, 4, dtype=DT)
    assert torch.equal(maxabs_normalize(z), z)
    tiny = torch.full((3, 4), 1e-12, dtype=DT)
    assert torch.equal(maxabs_normalize(tiny), tiny)
    mixed = F.clone()
    mixed[2] = 0
    pm = maxabs_normalize(mixed, per_sample=True)
    assert torch.equal(pm[2], mixed[2]) and pm[0].abs().max().item() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_step_scope_normalizes_each_step(seed):
    layer, x, r, rec = _random_layer(seed, "subtract")
    r = r.clone()
    r[2] = 0  # a step with no reward: F_2 = c_2 only
    res = _feedback(layer, x, r, rec, "epsilon", normalize="step")
    m = res.feedback.abs().amax(dim=(1, 2))
    assert torch.allclose(m, torch.ones_like(m), atol=1e-12)
    # the normalized F_T is r_T / max|r_T| (no temporal feedback at the last step)
    assert torch.allclose(res.feedback[-1], r[-1] / r[-1].abs().max(), rtol=1e-12)


def test_step_scope_keeps_all_zero_steps():
    layer, x, r, rec = _random_layer(0, "subtract")
    r = torch.zeros_like(r)
    r[1] = torch.randn_like(r[1])  # feedback only from step 1 down: F_t = 0 for t >= 2
    res = _feedback(layer, x, r, rec, "epsilon", normalize="step")
    assert torch.all(res.feedback[2:] == 0)
    assert torch.all(res.grad_weight.isfinite())
    assert torch.allclose(res.feedback[1].abs().max(), torch.tensor(1.0, dtype=DT))


def test_sample_scope_normalizes_each_sample_and_step():
    layer, x, r, rec = _random_layer(1, "subtract")
    r = r.clone()
    r[:, 3] = 0  # sample 3 gets nothing: it must stay all zero
    res = _feedback(layer, x, r, rec, "epsilon", normalize="sample")
    m = res.feedback.abs().amax(dim=2)  # [T, B]
    keep = torch.ones_like(m, dtype=torch.bool)
    keep[:, 3] = False
    assert torch.allclose(m[keep], torch.ones_like(m[keep]), atol=1e-12)
    assert torch.all(res.feedback[:, 3] == 0)
    # the normalized F_T is r_T / max|r_T| per sample
    m_T = r[-1].abs().amax(-1, keepdim=True)
    expect = torch.where(m_T > 0, r[-1] / torch.where(m_T > 0, m_T, 1.0), r[-1])
    assert torch.allclose(res.feedback[-1], expect, rtol=1e-12)
    # and it differs from the step scope (one max over the whole batch)
    step = _feedback(layer, x, r, rec, "epsilon", normalize="step")
    assert not torch.allclose(step.feedback, res.feedback)


def test_layer_scope_is_one_max_before_the_scan():
    layer, x, r, rec = _random_layer(2, "subtract")
    res = _feedback(layer, x, r, rec, "epsilon", normalize="layer")
    manual = _feedback(layer, x, r / r.abs().max(), rec, "epsilon", normalize=None)
    assert torch.allclose(res.grad_weight, manual.grad_weight, rtol=1e-12, atol=1e-15)
    assert torch.allclose(res.feedback, manual.feedback, rtol=1e-12, atol=1e-15)
    # the incoming feedback (r alone, at the last step: F_T = r_T) has max 1 over the whole layer
    assert res.feedback[-1].abs().max() <= 1 + 1e-12
    step = _feedback(layer, x, r, rec, "epsilon", normalize="step")
    assert not torch.allclose(step.grad_weight, res.grad_weight)
    zeros = _feedback(layer, x, torch.zeros_like(r), rec, "epsilon", normalize="layer")
    assert torch.all(zeros.grad_weight == 0) and torch.all(zeros.feedback == 0)


@pytest.mark.parametrize("scope", ["step", "layer", "sample", None])
def test_lfp_object_normalize_scopes(scope):
    torch.manual_seed(3)
    net = snn.Sequential(snn.LIFLinear(10, 8, dtype=DT), snn.LIFLinear(8, 4, dtype=DT))
    x = torch.randn(6, 10, dtype=DT) * 2
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    lfp = LFP(net, normalize=scope)
    assert lfp.normalize == scope
    res = lfp.compute(x, y, steps=8)
    trace = res.trace
    # the engine's own per-layer pass with the same options gives the same G for the top layer
    top = layer_feedback(net[1], res.reward, trace.records[1], rule=make_rule("epsilon"), details=True,
                          normalize=scope)
    assert torch.allclose(top.grad_weight, res.grads["1.weight"], rtol=1e-12)
    F = top.feedback
    if scope == "step":
        m = F.abs().amax(dim=(1, 2))
        assert torch.all(((m - 1).abs() < 1e-12) | (m == 0))
    elif scope == "sample":
        m = F.abs().amax(dim=2)
        assert torch.all(((m - 1).abs() < 1e-12) | (m == 0))
    elif scope is None:
        assert torch.allclose(F[-1], res.reward[-1])  # F_T = r_T untouched


def test_temporal_direction_differs_only_where_zu_negative():
    layer, x, r, rec = _random_layer(0, "subtract")
    syn, zu, b = _contributions(layer, x, rec)
    assert (zu < 0).any() and (zu > 0).any()
    for rule in ("epsilon", "zero", "zplus_zminus", "alphabeta"):
        rel = _feedback(layer, x, r, rec, rule, temporal="relevance")
        dr = _feedback(layer, x, r, rec, rule, temporal="direction")
        # the last step's n is the same in both modes (F_T = r_T); c_{T-1} = z^u_T n_T differs
        # from |z^u_T| n_T exactly where z^u_T < 0 (and n_T != 0)
        c_rel, c_dir = rel.temporal[-2], dr.temporal[-2]
        neg = zu[-1] < 0
        assert torch.equal(c_rel[~neg], c_dir[~neg])
        assert torch.allclose(c_dir[neg], -c_rel[neg])
        assert (c_rel[neg] != 0).any()
        assert not torch.allclose(rel.grad_weight, dr.grad_weight)


def test_temporal_direction_identical_when_zu_nonnegative():
    # positive weights and inputs: every membrane (and z^u) is >= 0, so both modes agree exactly
    g = torch.Generator().manual_seed(5)
    layer = snn.LIFLinear(5, 4, dtype=DT)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(4, 5, generator=g, dtype=DT))
        layer.bias.zero_()
    x = torch.rand(6, 3, 5, generator=g, dtype=DT)
    r = torch.randn(6, 3, 4, generator=g, dtype=DT)
    with torch.no_grad():
        _, rec = layer.run(x)
    assert (rec.membrane >= 0).all() and rec.spikes.sum() > 0
    for rule in ("epsilon", "zero", "zplus_zminus", "alphabeta", "lfprop"):
        a = _feedback(layer, x, r, rec, rule, temporal="relevance")
        d = _feedback(layer, x, r, rec, rule, temporal="direction")
        assert torch.equal(a.grad_weight, d.grad_weight) and torch.equal(a.below, d.below)


def test_lfp0_gives_zero_n_where_z_is_zero():
    # a neuron with no weights and no bias has z = 0 at every step: LFP-0 shares nothing (n = 0,
    # not NaN); LFP-epsilon divides by epsilon alone but stays finite
    layer, x, r, rec = _random_layer(0, "subtract")
    with torch.no_grad():
        layer.weight[3] = 0.0
        layer.bias[3] = 0.0
        _, rec = layer.run(x)
    assert torch.all(rec.membrane[..., 3] == 0)
    res = _feedback(layer, x, r, rec, "zero")
    assert torch.all(res.n[..., 3] == 0) and torch.isfinite(res.n).all()
    assert torch.all(res.grad_weight[3] == 0) and res.grad_bias[3] == 0
    assert (res.feedback[..., 3] != 0).any()  # it did receive feedback
    eps_res = _feedback(layer, x, r, rec, "epsilon")
    assert torch.isfinite(eps_res.n).all()
    assert torch.allclose(eps_res.n[..., 3], eps_res.feedback[..., 3] / 1e-6)
