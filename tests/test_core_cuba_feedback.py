"""LFP through CUBA / recurrent LIF layers (spec ``lfp-cuba-recurrent.md`` sections 2-3).

The reference below does not use the reverse scan: it unrolls the current filter into the
explicit list of contributions to every z_{t,j} (temporal; alpha^(t-k) W_ji x_{k,i};
alpha^(t-k) V_jl s_{k-1,l}; alpha^(t-k) b_j; alpha^(t-k) b_V,j for every k <= t), applies the rule
to that list (spec ``lfp-for-lif.md`` section 3), and hands each contribution's feedback to where
it came from: the temporal one to v_{t-1}, a synaptic one to x_{k,i} (the layer below) and to
G_W, a recurrent one to s_{k-1,l} (the same layer, earlier) and to G_V. A 3-neuron layer over 4
steps, alpha > 0 and V, every rule, every normalization scope, both resets.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.core.feedback import cuba_layer_feedback, synaptic_layer_feedback
from spikelfp.core.rules import make_rule
from spikelfp.core.synapse import LinearOps

pytestmark = pytest.mark.usefixtures("single_thread")

DT = torch.float64
EPS = 1e-6
AB_A, AB_B = 2.0, 1.0


def _forward(x, W, b, V, bV, alpha, beta, theta, reset):
    """Spec section 1 by hand: v, s [T, B, N]."""
    T, B = x.shape[:2]
    N = W.shape[0]
    i = torch.zeros(B, N, dtype=DT)
    v = torch.zeros(B, N, dtype=DT)
    s = torch.zeros(B, N, dtype=DT)
    vs, ss = [], []
    for t in range(T):
        i = alpha * i + x[t] @ W.t() + b + s @ V.t() + bV
        rst = theta * s if reset == "subtract" else beta * v * s
        v = beta * v + i - rst
        s = (v > theta).to(DT)
        vs.append(v)
        ss.append(s)
    return torch.stack(vs), torch.stack(ss)


def _normalize(F, scope):
    if scope == "step":
        m = F.abs().max()
        return F / m if m > 1e-10 else F
    if scope == "sample":
        out = F.clone()
        for bb in range(F.shape[0]):
            m = F[bb].abs().max()
            if m > 1e-10:
                out[bb] = F[bb] / m
        return out
    return F


def _apply_rule(rule, vals, Fj):
    """Each contribution's feedback under the rule (lfp-for-lif.md section 3)."""
    z = vals.sum()
    if rule == "zero":
        return vals * (Fj / z.abs()) if z != 0 else torch.zeros_like(vals)
    if rule == "epsilon":
        return vals * Fj / (z.abs() + EPS)
    if rule == "zplus_zminus":
        return vals * Fj / (vals.abs().sum() + EPS)
    zp, zn = vals.clamp(min=0).sum(), vals.clamp(max=0).sum()  # alphabeta
    return torch.where(vals > 0, AB_A * vals * Fj / (zp + EPS), -AB_B * vals * Fj / (zn - EPS))


def _reference(r, x, v, s, W, b, V, bV, alpha, beta, theta, reset, rule, scope):
    """Brute force over the explicit contribution list. Returns G_W, G_b, G_V, G_bV, below."""
    T, B, N = v.shape
    n_in = x.shape[-1]
    alpha = torch.as_tensor(alpha, dtype=DT).expand(N)
    G = {k: torch.zeros_like(p) for k, p in (("W", W), ("b", b), ("V", V), ("bV", bV))}
    below = torch.zeros_like(x)
    if scope == "layer":
        m = r.abs().max()
        r = r / m if m > 1e-10 else r
    c = torch.zeros(B, N, dtype=DT)    # feedback arriving at v_t from t+1
    rho = torch.zeros(T, B, N, dtype=DT)  # feedback arriving at s_t through V (from any later step)
    for t in range(T - 1, -1, -1):
        F = r[t] + rho[t] + c
        if scope in ("step", "sample"):
            F = _normalize(F, scope)
        c = torch.zeros(B, N, dtype=DT)
        for bb, j in itertools.product(range(B), range(N)):
            contrib = []  # (value, kind, where)
            if t > 0:
                zu = beta * v[t - 1, bb, j] * (1 - s[t - 1, bb, j] if reset == "zero" else 1)
                contrib.append((zu, "u", None))
            for k in range(t + 1):
                decay = alpha[j] ** (t - k)
                for i in range(n_in):
                    contrib.append((decay * W[j, i] * x[k, bb, i], "W", (k, i)))
                for l in range(N):
                    s_prev = s[k - 1, bb, l] if k > 0 else 0.0
                    contrib.append((decay * V[j, l] * s_prev, "V", (k, l)))
                contrib.append((decay * b[j], "b", None))
                contrib.append((decay * bV[j], "bV", None))
            vals = torch.tensor([float(cv) for cv, _, _ in contrib], dtype=DT)
            z = vals.sum()
            expected_z = v[t, bb, j] + (theta * s[t - 1, bb, j] if t > 0 and reset == "subtract" else 0)
            assert abs(z - expected_z) < 1e-9  # the decomposition sums to the membrane
            f = _apply_rule(rule, vals, F[bb, j])
            for fv, (_, kind, where) in zip(f, contrib):
                if kind == "u":
                    c[bb, j] += fv
                elif kind == "W":
                    k, i = where
                    below[k, bb, i] += fv
                    G["W"][j, i] += fv * (1.0 if W[j, i] > 0 else -1.0)
                elif kind == "V":
                    k, l = where
                    if k > 0:
                        rho[k - 1, bb, l] += fv
                    G["V"][j, l] += fv * (1.0 if V[j, l] > 0 else -1.0)
                else:
                    p = b if kind == "b" else bV
                    G[kind][j] += fv * (1.0 if p[j] > 0 else -1.0)
    return {k: g / B for k, g in G.items()}, below


def _case(seed, alpha, reset):
    g = torch.Generator().manual_seed(seed)
    T, B, n_in, N = 4, 2, 2, 3
    x = torch.rand(T, B, n_in, generator=g, dtype=DT) * 2 - 0.5  # mixed signs (alphabeta's x- terms)
    W = torch.randn(N, n_in, generator=g, dtype=DT) * 0.9
    b = torch.randn(N, generator=g, dtype=DT) * 0.3
    V = torch.randn(N, N, generator=g, dtype=DT) * 0.8
    bV = torch.randn(N, generator=g, dtype=DT) * 0.2
    r = torch.randn(T, B, N, generator=g, dtype=DT)
    beta, theta = 0.8, 0.6
    v, s = _forward(x, W, b, V, bV, alpha, beta, theta, reset)
    return dict(x=x, W=W, b=b, V=V, bV=bV, r=r, v=v, s=s, alpha=alpha, beta=beta, theta=theta, reset=reset)


ALPHAS = {"scalar": 0.7, "per_neuron": torch.tensor([0.5, 0.0, 0.9], dtype=DT)}


RULE_NAMES = ("zero", "epsilon", "zplus_zminus", "alphabeta")
# every rule x every scope (scalar alpha, reset subtract); every rule x the other resets / alphas
COMBOS = ([(r, sc, "subtract", "scalar") for r in RULE_NAMES for sc in ("step", "layer", "sample", None)]
          + [(r, "step", rs, a) for r in RULE_NAMES for rs, a in (("zero", "scalar"), ("zero", "per_neuron"),
                                                                  ("subtract", "per_neuron"))])


@pytest.mark.parametrize("rule,scope,reset,alpha", COMBOS)
def test_matches_brute_force(rule, scope, reset, alpha):
    cs = _case(11, ALPHAS[alpha], reset)
    s = cs["s"]
    assert 0 < s.sum() < s.numel() and s[:-1].sum() > 0  # spikes feed V at some steps
    res = cuba_layer_feedback(
        cs["r"], cs["x"], cs["v"], cs["s"], cs["W"], cs["b"], LinearOps(), alpha=cs["alpha"],
        recurrent_weight=cs["V"], recurrent_bias=cs["bV"], beta=cs["beta"], threshold=cs["theta"],
        reset=reset, rule=make_rule(rule, EPS, AB_A, AB_B), normalize=scope)
    G, below = _reference(cs["r"], cs["x"], cs["v"], cs["s"], cs["W"], cs["b"], cs["V"], cs["bV"],
                          cs["alpha"], cs["beta"], cs["theta"], reset, rule, scope)
    for got, want in ((res.grad_weight, G["W"]), (res.grad_bias, G["b"]),
                      (res.grad_recurrent_weight, G["V"]), (res.grad_recurrent_bias, G["bV"]),
                      (res.below, below)):
        scale = want.abs().max().item()
        assert scale > 0
        assert (got - want).abs().max().item() <= 1e-10 * max(scale, 1.0)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_lfp0_conserves(reset):
    """LFP-0: sum_t sign(z_t) F_t equals everything handed on: temporal c, recurrent rho, the
    feedback below and the bias contributions' feedback (b + b_V) m_t."""
    cs = _case(12, 0.6, reset)
    res = cuba_layer_feedback(
        cs["r"], cs["x"], cs["v"], cs["s"], cs["W"], cs["b"], LinearOps(), alpha=cs["alpha"],
        recurrent_weight=cs["V"], recurrent_bias=cs["bV"], beta=cs["beta"], threshold=cs["theta"],
        reset=reset, rule=make_rule("zero"), normalize=None, details=True)
    v, s = cs["v"], cs["s"]
    z = v.clone()
    if reset == "subtract":
        z[1:] += cs["theta"] * s[:-1]
    lhs = (torch.sign(z) * res.feedback).sum()
    handed = res.temporal.sum() + res.recurrent.sum() + res.below.sum() + ((cs["b"] + cs["bV"]) * res.m).sum()
    assert abs(lhs - handed) <= 1e-10 * res.feedback.abs().sum()
    assert res.recurrent.abs().sum() > 0 and res.temporal.abs().sum() > 0


@pytest.mark.parametrize("rule", ["zero", "epsilon", "zplus_zminus", "alphabeta", "lfprop"])
@pytest.mark.parametrize("scope", ["step", "layer", "sample", None])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("const", [False, True])
def test_alpha_zero_no_v_equals_lif_feedback(rule, scope, reset, const):
    """m = n and rho = 0: the LIF feedback of lfp-for-lif.md, with the filter path taken
    (alpha = 0 given explicitly) and without it (alpha None)."""
    g = torch.Generator().manual_seed(3)
    T, B = 6, 3
    x = torch.rand(B, 5, generator=g, dtype=DT) if const else torch.rand(T, B, 5, generator=g, dtype=DT)
    W = torch.randn(4, 5, generator=g, dtype=DT)
    b = torch.randn(4, generator=g, dtype=DT) * 0.3
    r = torch.randn(T, B, 4, generator=g, dtype=DT)
    layer = snn.LIFLinear(5, 4, reset=reset, dtype=DT)
    with torch.no_grad():
        layer.weight.copy_(W)
        layer.bias.copy_(b)
        _, rec = layer.run(x, steps=T if const else None)
    kw = dict(beta=0.9, threshold=1.0, reset=reset, rule=make_rule(rule), normalize=scope, details=True)
    ref = synaptic_layer_feedback(r, x, rec.membrane, rec.spikes, W, b, LinearOps(), **kw)
    for alpha in (None, 0.0):
        got = cuba_layer_feedback(r, x, rec.membrane, rec.spikes, W, b, LinearOps(), alpha=alpha, **kw)
        for a, e in ((got.grad_weight, ref.grad_weight), (got.grad_bias, ref.grad_bias),
                     (got.below, ref.below), (got.feedback, ref.feedback)):
            assert torch.allclose(a, e, rtol=1e-12, atol=1e-14)
        assert got.grad_recurrent_weight is None


def test_lfp_names_recurrent_grads_and_trains():
    torch.manual_seed(4)
    net = snn.Sequential(snn.Flatten(1), snn.CubaLIFLinear(6, 5, alpha=0.5, recurrent=True),
                         snn.CubaLIFLinear(5, 3, alpha=0.3))
    x = torch.rand(10, 8, 6) * 2
    y = torch.randint(0, 3, (8,))
    res = LFP(net).compute(x, y)
    assert set(res.grads) == {"1.weight", "1.bias", "1.recurrent_weight", "1.recurrent_bias",
                              "2.weight", "2.bias"}
    LFP(net).apply(res.grads)
    assert net[1].recurrent_weight.grad is not None


def test_conv_cuba_feedback_equals_dense_equivalent():
    """A 1x1-input conv is a dense layer: the conv path (per-channel alpha) equals the dense one."""
    torch.manual_seed(5)
    conv = snn.CubaLIFConv2d(3, 4, 1, alpha=torch.tensor([0.2, 0.5, 0.0, 0.8]), dtype=DT)
    dense = snn.CubaLIFLinear(3, 4, alpha=conv.alpha.clone(), dtype=DT)
    with torch.no_grad():
        dense.weight.copy_(conv.weight.reshape(4, 3) * 3)
        conv.weight.mul_(3)
        dense.bias.copy_(conv.bias)
    x = torch.rand(7, 2, 3, dtype=DT)
    y = torch.tensor([0, 2])
    for rule in ("epsilon", "alphabeta", "zplus_zminus"):
        gc = LFP(snn.Sequential(conv, snn.Flatten()), rule=rule).compute(x[..., None, None], y).grads
        gd = LFP(snn.Sequential(dense), rule=rule).compute(x, y).grads
        assert torch.allclose(gc["0.weight"].reshape(4, 3), gd["0.weight"], rtol=1e-10, atol=1e-14)
        assert torch.allclose(gc["0.bias"], gd["0.bias"], rtol=1e-10, atol=1e-14)
        assert gd["0.weight"].abs().sum() > 0


# ----------------------------------------------------------------------------- golden vectors

from test_core_vectors import _SKIP_REASON, CASES, FLOAT32_NAMES, _check_case  # noqa: E402

_VECTOR_PARAMS = ([(n, False) for n in sorted(CASES)] + [(n, True) for n in FLOAT32_NAMES if isinstance(n, str) and n in CASES]
                  or [pytest.param("<missing>", False, marks=pytest.mark.skip(reason=_SKIP_REASON))])


@pytest.mark.parametrize("name,recurrent", _VECTOR_PARAMS)
def test_golden_vectors_through_cuba_layers(name, recurrent):
    """The 34 LIF cases through CubaLIFLinear with alpha = 0 (and, with ``recurrent``, V = 0 and
    b_V = 0, so the recurrent path runs but adds nothing): the same spikes, membranes, G and
    feedback, to 1e-9 relative."""
    case = CASES[name]
    kw = dict(beta=case["beta"], threshold=case["threshold"], reset=case["reset"], dtype=DT,
              alpha=0.0, recurrent=recurrent)
    net = snn.Sequential(snn.CubaLIFLinear(4, 3, **kw), snn.CubaLIFLinear(3, 2, **kw))
    with torch.no_grad():
        for l, layer in enumerate(net):
            layer.weight.copy_(torch.tensor(case["weights"][l], dtype=DT))
            layer.bias.copy_(torch.tensor(case["biases"][l], dtype=DT))
            if recurrent:
                layer.recurrent_weight.zero_()
                layer.recurrent_bias.zero_()
    opts = dict(rule=case["rule"], normalize=case["norm_scope"] if case["normalize"] else None,
                batch_reduction=case["batch_reduction"], epsilon=case["epsilon"])
    if case["alpha"] is not None:
        opts.update(alpha=case["alpha"], beta=case["beta_ab"])
    res = LFP(net, **opts).compute(torch.tensor(case["input"], dtype=DT), torch.tensor(case["labels"]),
                                   steps=case["T"], keep_feedback=True)
    _check_case(case, net, res, rel=1e-9)
    if recurrent:
        assert torch.equal(res.grads["0.recurrent_weight"], torch.zeros(3, 3, dtype=DT))  # |V| = 0
