"""Hand-computed LFP cases: tiny dense LIF layers over 3 steps, every rule.

The expected numbers are computed here in plain Python floats with explicit loops over t, b, j,
i, written straight from the spec formulas (``shared/spec/lfp-for-lif.md`` sections 1, 3, 3b, 4),
per contribution: f = z * n for every synaptic, temporal and bias term, G_W = (1/B) sum f *
sign(W), r^below_i = sum_j f_ij, c_{t-1} = f of the temporal term. Nothing from ``spikelfp`` is
used for the expectations; the engine under test is
``spikelfp.core.feedback.synaptic_layer_feedback(..., details=True)``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.core.feedback import synaptic_layer_feedback
from spikelfp.core.rules import make_rule
from spikelfp.core.synapse import LinearOps

pytestmark = pytest.mark.usefixtures("single_thread")

DT = torch.float64
EPS = 1e-6


def sign(a):
    return (a > 0) - (a < 0)


# ----------------------------------------------------------------------------- plain-Python spec


def hand_forward(xs, W, b, beta, theta, reset):
    """Spec section 1 for one dense LIF layer. xs[t][b][i] -> v, s, zu, z as [t][b][j] lists."""
    T, B, N = len(xs), len(xs[0]), len(W)
    v = [[[0.0] * N for _ in range(B)] for _ in range(T)]
    s = [[[0.0] * N for _ in range(B)] for _ in range(T)]
    zu = [[[0.0] * N for _ in range(B)] for _ in range(T)]
    z = [[[0.0] * N for _ in range(B)] for _ in range(T)]
    for bb in range(B):
        for j in range(N):
            v_prev, s_prev = 0.0, 0.0
            for t in range(T):
                current = sum(W[j][i] * xs[t][bb][i] for i in range(len(W[j]))) + b[j]
                if reset == "subtract":
                    temporal = beta * v_prev                      # reset term carries no feedback
                    v_t = beta * v_prev + current - theta * s_prev
                else:
                    temporal = beta * v_prev * (1 - s_prev)
                    v_t = temporal + current
                zu[t][bb][j] = temporal
                z[t][bb][j] = temporal + current
                v[t][bb][j] = v_t
                s[t][bb][j] = 1.0 if v_t - theta > 0 else 0.0
                v_prev, s_prev = v_t, s[t][bb][j]
    return v, s, zu, z


def hand_feedback(r, xs, W, b, v, s, zu, z, *, rule, beta, theta, normalize=None,
                  temporal="relevance", alpha=2.0, beta_ab=1.0, reduction="mean"):
    """Spec section 3 (and 3b for lfprop) in plain floats.

    Returns dict with F, c (temporal feedback arriving at v_t), n (or (n+, n-)), G_W, G_b, below.
    """
    T, B, N, M = len(r), len(r[0]), len(W), len(W[0])
    F_out = [[[0.0] * N for _ in range(B)] for _ in range(T)]
    c_out = [[[0.0] * N for _ in range(B)] for _ in range(T)]
    n_out = [[[0.0] * N for _ in range(B)] for _ in range(T)]
    np_out = [[[0.0] * N for _ in range(B)] for _ in range(T)]
    nn_out = [[[0.0] * N for _ in range(B)] for _ in range(T)]
    below = [[[0.0] * M for _ in range(B)] for _ in range(T)]
    G_W = [[0.0] * M for _ in range(N)]
    G_b = [0.0] * N
    c = [[0.0] * N for _ in range(B)]  # c_T = 0
    for t in range(T - 1, -1, -1):
        F = [[r[t][bb][j] + c[bb][j] for j in range(N)] for bb in range(B)]
        if normalize == "step":
            m = max(abs(F[bb][j]) for bb in range(B) for j in range(N))
            if m > 1e-10:
                F = [[F[bb][j] / m for j in range(N)] for bb in range(B)]
        c_new = [[0.0] * N for _ in range(B)]
        for bb in range(B):
            for j in range(N):
                F_out[t][bb][j] = F[bb][j]
                c_out[t][bb][j] = c[bb][j]
                syn = [W[j][i] * xs[t][bb][i] for i in range(M)]
                tz = zu[t][bb][j]
                if rule == "lfprop":
                    v_prev = v[t - 1][bb][j] if t > 0 else 0.0
                    s_prev = s[t - 1][bb][j] if t > 0 else 0.0
                    tz = beta * v_prev
                    d = abs(v_prev) + abs(v[t][bb][j] + theta * s_prev - v_prev)
                # n for each contribution (the same n for all, except alphabeta)
                if rule == "zero":
                    D = abs(z[t][bb][j])
                    n = F[bb][j] / D if D > 0 else 0.0
                    n_pos = n_neg = n
                elif rule == "epsilon":
                    n = F[bb][j] / (abs(z[t][bb][j]) + EPS)
                    n_pos = n_neg = n
                elif rule == "zplus_zminus":
                    D = abs(tz) + sum(abs(a) for a in syn) + abs(b[j]) + EPS
                    n = F[bb][j] / D
                    n_pos = n_neg = n
                elif rule == "lfprop":
                    n = F[bb][j] / (d + EPS)
                    n_pos = n_neg = n
                elif rule == "alphabeta":
                    terms = syn + [tz, b[j]]
                    Zp = sum(a for a in terms if a > 0)
                    Zn = sum(a for a in terms if a < 0)
                    n_pos = alpha * F[bb][j] / (Zp + EPS)
                    n_neg = beta_ab * F[bb][j] / (abs(Zn) + EPS)
                    n = None
                else:
                    raise AssertionError(rule)
                n_out[t][bb][j] = n if n is not None else float("nan")
                np_out[t][bb][j], nn_out[t][bb][j] = n_pos, n_neg

                def share(a):  # feedback of one contribution a
                    return a * (n_pos if a > 0 else n_neg)  # noqa: B023  (used in this iteration)

                for i in range(M):
                    f = share(syn[i])
                    below[t][bb][i] += f
                    G_W[j][i] += f * sign(W[j][i])
                G_b[j] += share(b[j]) * sign(b[j])
                c_new[bb][j] = abs(tz) * (n_pos if tz > 0 else n_neg) if temporal == "direction" \
                    else share(tz)
        c = c_new
    k = 1.0 / B if reduction == "mean" else 1.0
    G_W = [[g * k for g in row] for row in G_W]
    G_b = [g * k for g in G_b]
    return dict(F=F_out, c=c_out, n=n_out, n_pos=np_out, n_neg=nn_out, G_W=G_W, G_b=G_b,
                below=below)


# ----------------------------------------------------------------------------- helpers


def t64(a):
    return torch.tensor(a, dtype=DT)


def assert_close(actual, expected, what, rel=1e-10, atol=1e-12):
    expected = t64(expected) if not torch.is_tensor(expected) else expected
    assert actual.shape == expected.shape, f"{what}: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = (actual - expected).abs()
    bound = atol + rel * expected.abs()
    assert bool((err <= bound).all()), f"{what}: max error {err.max().item():.3g}\n{actual}\n{expected}"


def engine_layer(W, b, beta, theta, reset):
    layer = snn.LIFLinear(len(W[0]), len(W), beta=beta, threshold=theta, reset=reset, dtype=DT)
    with torch.no_grad():
        layer.weight.copy_(t64(W))
        layer.bias.copy_(t64(b))
    return layer


def engine_feedback(layer, r, x, rec, rule, **kw):
    return synaptic_layer_feedback(
        t64(r) if not torch.is_tensor(r) else r, x, rec.membrane, rec.spikes, layer.weight,
        layer.bias, LinearOps(), beta=layer.beta, threshold=layer.threshold, reset=layer.reset,
        rule=rule, details=True, **kw)


# ----------------------------------------------------------------------------- the cases

# Layer A: 3 inputs -> 3 neurons. W_A[0][1] is exactly zero; neuron 2 (all weights and the bias
# negative) never spikes. Layer B: A's 3 spikes -> 2 neurons, W_B[1][0] exactly zero.
X = [  # [t][b][i], signed input (first layer), T=3, B=2
    [[1.0, 0.5, 0.8], [-0.5, 1.5, 0.2]],
    [[0.6, -0.4, 1.2], [1.2, 0.3, 0.4]],
    [[0.9, 1.1, -0.3], [0.2, -0.8, 1.0]],
]
W_A = [[0.8, 0.0, 0.5], [-0.4, 0.9, 0.6], [-0.5, -0.3, -0.7]]
B_A = [0.1, -0.05, -0.2]
W_B = [[1.1, 0.6, 0.8], [0.0, 1.3, -0.9]]
B_B = [0.05, 0.3]
BETA, THETA_A, THETA_B = 0.9, 1.0, 0.9
R_TOP = [  # reward arriving at layer B's spikes, [t][b][j]
    [[0.3, -0.2], [0.1, 0.25]],
    [[-0.15, 0.4], [0.2, -0.1]],
    [[0.5, -0.35], [-0.3, 0.45]],
]
RULES = ["zero", "epsilon", "zplus_zminus", "alphabeta", "lfprop"]


def _rule_opts(rule):
    # lfprop is spec 3b: no normalization, G summed over the batch
    if rule == "lfprop":
        return dict(normalize=None, batch_reduction="sum"), dict(normalize=None, reduction="sum")
    return dict(normalize="step"), dict(normalize="step")


# lfprop is defined for the snnTorch subtract convention only (spec 3b)
@pytest.mark.parametrize("rule,reset", [(rule, reset) for rule in RULES
                                        for reset in ("subtract", "zero")
                                        if not (rule == "lfprop" and reset == "zero")])
def test_two_layer_hand_case(rule, reset):
    eng_opts, hand_opts = _rule_opts(rule)
    rule_obj = make_rule(rule)
    layer_a = engine_layer(W_A, B_A, BETA, THETA_A, reset)
    layer_b = engine_layer(W_B, B_B, BETA, THETA_B, reset)

    # forward by hand, and the engine's forward must agree
    v_a, s_a, zu_a, z_a = hand_forward(X, W_A, B_A, BETA, THETA_A, reset)
    v_b, s_b, zu_b, z_b = hand_forward(s_a, W_B, B_B, BETA, THETA_B, reset)
    x = t64(X)
    with torch.no_grad():
        out_a, rec_a = layer_a.run(x)
        out_b, rec_b = layer_b.run(out_a)
    assert torch.equal(out_a, t64(s_a)) and torch.equal(out_b, t64(s_b))
    assert_close(rec_a.membrane, v_a, "v_A")
    assert_close(rec_b.membrane, v_b, "v_B")
    # the case is meaningful: A's neurons 0 and 1 spike sometimes, neuron 2 never; B spikes
    sa = t64(s_a)
    assert sa[..., 0].sum() > 0 and sa[..., 1].sum() > 0 and sa[..., 2].sum() == 0
    assert 0 < t64(s_b).sum() < t64(s_b).numel()

    # layer B (top), then layer A with what B sent below
    hb = hand_feedback(R_TOP, s_a, W_B, B_B, v_b, s_b, zu_b, z_b, rule=rule, beta=BETA,
                       theta=THETA_B, **hand_opts)
    eb = engine_feedback(layer_b, R_TOP, out_a, rec_b, rule_obj, **eng_opts)
    ha = hand_feedback(hb["below"], X, W_A, B_A, v_a, s_a, zu_a, z_a, rule=rule, beta=BETA,
                       theta=THETA_A, **hand_opts)
    ea = engine_feedback(layer_a, eb.below, x, rec_a, rule_obj, **eng_opts)

    for name, h, e in (("B", hb, eb), ("A", ha, ea)):
        assert_close(e.feedback, h["F"], f"{name}: F_t")
        assert_close(e.temporal, h["c"], f"{name}: c_t")
        if rule == "alphabeta":
            assert_close(e.n[0], h["n_pos"], f"{name}: n+")
            assert_close(e.n[1], h["n_neg"], f"{name}: n-")
        else:
            assert_close(e.n, h["n"], f"{name}: n_t")
        assert_close(e.grad_weight, h["G_W"], f"{name}: G_W")
        assert_close(e.grad_bias, h["G_b"], f"{name}: G_b")
        assert_close(e.below, h["below"], f"{name}: feedback sent below")
        assert torch.all(e.temporal[-1] == 0)  # c_T = 0

    # The silent neuron A2: the layer above sends it exactly nothing (its spikes are all 0),
    # so it has no feedback, no update, and sends nothing below.
    assert torch.all(eb.below[..., 2] == 0)
    assert torch.all(ea.feedback[..., 2] == 0)
    ns = ea.n if rule != "alphabeta" else torch.stack(ea.n)
    assert torch.all(ns[..., 2] == 0)
    assert torch.all(ea.grad_weight[2] == 0) and ea.grad_bias[2] == 0
    assert torch.all(eb.grad_weight[:, 2] == 0)  # B's weights from the silent neuron: x = 0
    # ... while the spiking neurons do get feedback
    assert ea.grad_weight[:2].abs().sum() > 0 and eb.below[..., :2].abs().sum() > 0
    # The exactly-zero weights get G exactly 0.
    assert ea.grad_weight[0, 1].item() == 0.0 and eb.grad_weight[1, 0].item() == 0.0
    assert ha["G_W"][0][1] == 0.0 and hb["G_W"][1][0] == 0.0


@pytest.mark.parametrize("rule", ["zero", "epsilon", "zplus_zminus", "alphabeta"])
def test_hand_case_direction_temporal(rule):
    # temporal="direction": c_{t-1} = |z^u_t| * n_t, by hand, on a layer with negative membranes
    layer = engine_layer(W_A, B_A, BETA, THETA_A, "subtract")
    v, s, zu, z = hand_forward(X, W_A, B_A, BETA, THETA_A, "subtract")
    assert any(zu[t][b][j] < 0 for t in range(3) for b in range(2) for j in range(3))
    r = [[[0.2, -0.4, 0.3], [0.5, 0.1, -0.2]], [[-0.3, 0.2, 0.6], [0.1, -0.5, 0.4]],
         [[0.4, 0.3, -0.1], [-0.2, 0.6, 0.3]]]
    h = hand_feedback(r, X, W_A, B_A, v, s, zu, z, rule=rule, beta=BETA, theta=THETA_A,
                      normalize=None, temporal="direction")
    with torch.no_grad():
        _, rec = layer.run(t64(X))
    e = engine_feedback(layer, r, t64(X), rec, make_rule(rule), normalize=None, temporal="direction")
    assert_close(e.temporal, h["c"], "c_t (direction)")
    assert_close(e.grad_weight, h["G_W"], "G_W (direction)")
    assert_close(e.below, h["below"], "below (direction)")


def test_literal_lfp0_single_neuron():
    """One neuron, 2 inputs, T=2, LFP-0, no normalization; every number worked out in fractions.

    W = [1/2, -1/4], b = 1/4, beta = 1/2, theta = 1, x_1 = [1, 2], x_2 = [2, 0], r = [1/2, -1].
    Forward: I_1 = 1/4, v_1 = 1/4 (no spike); I_2 = 5/4, v_2 = 1/8 + 5/4 = 11/8 (spike).
    Backward: F_2 = -1, z_2 = 11/8, n_2 = -8/11, c_1 = z^u_2 n_2 = 1/8 * -8/11 = -1/11;
    F_1 = 1/2 - 1/11 = 9/22, z_1 = 1/4, n_1 = 18/11.
    G_W = |W| * sum_t n_t x_t = [1/2 (18/11 - 16/11), 1/4 (36/11)] = [1/11, 9/11];
    G_b = 1/4 (18/11 - 8/11) = 5/22; below_1 = x_1 * n_1 W = [9/11, -9/11], below_2 = [-8/11, 0].
    """
    Fr = Fraction
    layer = engine_layer([[0.5, -0.25]], [0.25], 0.5, 1.0, "subtract")
    x = t64([[[1.0, 2.0]], [[2.0, 0.0]]])
    r = t64([[[0.5]], [[-1.0]]])
    with torch.no_grad():
        s, rec = layer.run(x)
    assert rec.membrane.flatten().tolist() == [0.25, 1.375] and s.flatten().tolist() == [0.0, 1.0]
    e = engine_feedback(layer, r, x, rec, make_rule("zero"), normalize=None)

    def f(q):
        return float(q)

    assert_close(e.n.flatten(), [f(Fr(18, 11)), f(Fr(-8, 11))], "n")
    assert_close(e.temporal.flatten(), [f(Fr(-1, 11)), 0.0], "c")
    assert_close(e.feedback.flatten(), [f(Fr(9, 22)), -1.0], "F")
    assert_close(e.grad_weight, [[f(Fr(1, 11)), f(Fr(9, 11))]], "G_W")
    assert_close(e.grad_bias, [f(Fr(5, 22))], "G_b")
    assert_close(e.below.reshape(2, 2), [[f(Fr(9, 11)), f(Fr(-9, 11))], [f(Fr(-8, 11)), 0.0]], "below")
    # conservation (LFP-0): at every step, all contributions' feedback sums to sign(z) F
    # t=2: below (-8/11) + temporal (-1/11) + bias (1/4 * -8/11 = -2/11) = -1
    assert math.isclose(e.below[1].sum().item() + e.temporal[0].item() + 0.25 * e.n[1].item(), -1.0)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adam"])
def test_zero_weight_stays_zero_after_optimizer_steps(rule, opt_name):
    torch.manual_seed(1)
    net = snn.Sequential(snn.LIFLinear(6, 5), snn.LIFLinear(5, 3))
    with torch.no_grad():
        net[0].weight[1, 2] = 0.0
        net[1].weight[0, 4] = 0.0
        net[0].weight.mul_(2.0)
    before = [p.detach().clone() for p in net.parameters()]
    lfp = LFP(net, rule=rule)
    opt = (torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9) if opt_name == "sgd_momentum"
           else torch.optim.Adam(net.parameters(), lr=1e-2))
    x = torch.randn(8, 6) * 2
    y = torch.arange(8) % 3
    for _ in range(4):
        opt.zero_grad()
        res = lfp.step(x, y, steps=6)
        assert res.grads["0.weight"][1, 2].item() == 0.0
        assert res.grads["1.weight"][0, 4].item() == 0.0
        opt.step()
    assert net[0].weight[1, 2].item() == 0.0 and net[1].weight[0, 4].item() == 0.0
    # ... while the network as a whole did learn something
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, net.parameters()))
