"""FFzero math (spikelfp.core.ffzero): prototypes, margin loss, directions, the estimator."""

import math

import pytest
import torch
import torch.nn.functional as Fn

from spikelfp.core.ffzero import (
    combine_directions,
    cosine_scores,
    direction_coefficients,
    direction_currents,
    direction_seed,
    estimate_improvement,
    haar_frame,
    haar_orthogonal,
    layer_prototypes,
    lif_step_,
    margin_loss,
    sample_directions,
    simplex_prototypes,
)
from spikelfp.core.lif import lif_step
from spikelfp.core.synapse import Conv2dOps, LinearOps


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- prototypes

def test_simplex_prototypes_hand_values():
    P = simplex_prototypes(3, 4, dtype=torch.float64)
    r6 = math.sqrt(6)
    expected = torch.tensor([[2 / r6, -1 / r6, -1 / r6, 0.0],
                             [-1 / r6, 2 / r6, -1 / r6, 0.0],
                             [-1 / r6, -1 / r6, 2 / r6, 0.0]], dtype=torch.float64)
    assert torch.allclose(P, expected, atol=1e-15)


@pytest.mark.parametrize("C,N", [(2, 2), (3, 7), (10, 10), (10, 128)])
def test_prototypes_unit_and_equiangular(C, N):
    for rotate in (False, True):
        P = layer_prototypes(C, N, rotate=rotate, generator=_gen(5), dtype=torch.float64)
        assert P.shape == (C, N)
        gram = P @ P.t()
        expected = torch.full((C, C), -1.0 / (C - 1), dtype=torch.float64)
        expected.fill_diagonal_(1.0)
        assert torch.allclose(gram, expected, atol=1e-12)
        assert torch.allclose(P.sum(0), torch.zeros(N, dtype=torch.float64), atol=1e-12)  # centered


def test_output_prototypes_unrotated_hidden_rotated():
    out = layer_prototypes(10, 10, rotate=False, dtype=torch.float64)
    assert torch.equal(out, simplex_prototypes(10, 10, dtype=torch.float64))
    assert torch.equal(out.argmax(1), torch.arange(10))  # neuron c stands for class c
    a = layer_prototypes(10, 32, rotate=True, generator=_gen(1), dtype=torch.float64)
    b = layer_prototypes(10, 32, rotate=True, generator=_gen(1), dtype=torch.float64)
    c = layer_prototypes(10, 32, rotate=True, generator=_gen(2), dtype=torch.float64)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a[:, 10:].abs().sum() > 1.0  # the rotation spreads them over all N neurons


def test_haar_frame_is_first_columns_and_orthogonal():
    Q = haar_orthogonal(9, _gen(3))
    assert torch.allclose(Q.t() @ Q, torch.eye(9, dtype=torch.float64), atol=1e-12)
    F = haar_frame(9, 4, _gen(3))
    assert torch.allclose(F, Q[:, :4], atol=1e-12)


def test_haar_sign_fix():
    # Haar: every entry has mean 0. Plain Householder QR (no sign fix) gives Q[0, 0] < 0 always.
    g = _gen(0)
    q00 = torch.stack([haar_orthogonal(3, g)[0, 0] for _ in range(400)])
    assert abs(q00.mean().item()) < 0.1
    assert 0.3 < (q00 > 0).double().mean().item() < 0.7


# ----------------------------------------------------------------------------- loss

def test_margin_loss_hand_case():
    # C = 3 in N = 4; prototypes above. z = e_1: cos = (2, -1, -1)/sqrt(6) = (.8165, -.4082, -.4082)
    P = simplex_prototypes(3, 4, dtype=torch.float64)
    z = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0.0, 0, 0, 0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    s = cosine_scores(z, P)
    r6 = math.sqrt(6)
    assert torch.allclose(s[0], torch.tensor([2 / r6, -1 / r6, -1 / r6], dtype=torch.float64))
    assert torch.equal(s[2], torch.zeros(3, dtype=torch.float64))  # cos(0, P) := 0
    # sample 0 (y=0): max(0, .3 - .4082 - .8165) twice = 0
    # sample 1 (y=1): k=0: .3 + .8165 + .4082 = 1.5247; k=2: .3 + 0 = .3  -> 1.824745
    # sample 2 (zero z, y=2): 2 * .3 = .6
    per_sample = [0.0, 0.6 + 3 / r6, 0.6]
    assert margin_loss(s, y, 0.3).item() == pytest.approx(sum(per_sample) / 3, abs=1e-12)
    assert margin_loss(s, y, 0.3).item() == pytest.approx(0.808248, abs=1e-6)
    # leading dims: one loss per copy
    stacked = torch.stack([s, s * 0])
    out = margin_loss(stacked, y, 0.3)
    assert out.shape == (2,) and out[1].item() == pytest.approx(0.6)


# ----------------------------------------------------------------------------- directions

def test_sample_directions_unit_and_reproducible():
    shapes = [(5, 3), (5,)]
    u = sample_directions(7, shapes, _gen(direction_seed(0, 12, 1)), dtype=torch.float64)
    norms = (u[0].reshape(7, -1).pow(2).sum(1) + u[1].pow(2).sum(1)).sqrt()
    assert torch.allclose(norms, torch.ones(7, dtype=torch.float64), atol=1e-12)
    again = sample_directions(7, shapes, _gen(direction_seed(0, 12, 1)), dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(u, again))
    seeds = {direction_seed(s, t, l) for s in (0, 1) for t in (0, 1, 2) for l in (1, 2)}
    assert len(seeds) == 12


def test_direction_coefficients_hand_case():
    # K = 2, eps = 0.5, d = 10: c_k = -(10 / 2) (L+ - L-) / (2 * 0.5) = -5 (L+ - L-)
    losses = torch.tensor([1.0, 2.0, 0.0, 4.0])
    c = direction_coefficients(losses, 0.5, 10)
    assert torch.allclose(c, torch.tensor([-5.0, 10.0]))
    u = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    assert torch.allclose(combine_directions(c, u)[0], torch.tensor([-5.0, 10.0]))


def test_estimator_unbiased_on_smooth_standin():
    """Same margin loss on a linear layer z = x W^T + b (smooth): the mean of the estimate over
    many directions approaches the autograd gradient in direction and size (the d factor)."""
    torch.manual_seed(0)
    B, n_in, n_out, C, K, eps = 16, 6, 12, 4, 3000, 1e-4
    x = torch.randn(B, n_in, dtype=torch.float64)
    y = torch.arange(B) % C
    W = torch.randn(n_out, n_in, dtype=torch.float64) * 0.5
    b = torch.randn(n_out, dtype=torch.float64) * 0.1
    P = layer_prototypes(C, n_out, rotate=True, generator=_gen(4), dtype=torch.float64)

    Wr, br = W.clone().requires_grad_(), b.clone().requires_grad_()
    ref = margin_loss(cosine_scores(Fn.linear(x, Wr, br), P), y, 0.3)
    assert ref.item() > 0.1  # hinge terms are active
    ref.backward()
    true = torch.cat([Wr.grad.flatten(), br.grad])

    U = sample_directions(K, [W.shape, b.shape], _gen(7), dtype=torch.float64)
    I = Fn.linear(x, W, b)
    dI = direction_currents(LinearOps(), x, U[0], U[1])
    z = torch.cat([I + eps * dI, I - eps * dI])                # [2K, B, N]
    losses = margin_loss(cosine_scores(z, P), y, 0.3)
    G = estimate_improvement(losses, U, eps)
    est = -torch.cat([G[0].flatten(), G[1]])
    cos = torch.dot(est, true) / (est.norm() * true.norm())
    assert cos > 0.9, cos
    assert 0.8 < (est.norm() / true.norm()).item() < 1.25


# ----------------------------------------------------------------------------- batched currents

def test_direction_currents_linear_equals_loop():
    g = _gen(0)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64)
    U = sample_directions(4, [(3, 7), (3,)], g, dtype=torch.float64)
    out = direction_currents(LinearOps(), x, U[0], U[1])
    ref = torch.stack([x @ U[0][k].t() + U[1][k] for k in range(4)])
    assert out.shape == (4, 5, 3) and torch.allclose(out, ref, atol=1e-12)
    out_nb = direction_currents(LinearOps(), x, U[0], None)
    assert torch.allclose(out_nb, torch.stack([x @ U[0][k].t() for k in range(4)]), atol=1e-12)


@pytest.mark.parametrize("groups,stride,padding", [(1, 1, 1), (2, 2, 0)])
def test_direction_currents_conv_equals_loop(groups, stride, padding):
    g = _gen(1)
    c_in, c_out, K = 4, 6, 3
    x = torch.randn(2, c_in, 7, 7, generator=g, dtype=torch.float64)
    U = sample_directions(K, [(c_out, c_in // groups, 3, 3), (c_out,)], g, dtype=torch.float64)
    ops = Conv2dOps((stride, stride), (padding, padding), (1, 1), groups)
    out = direction_currents(ops, x, U[0], U[1])
    ref = torch.stack([Fn.conv2d(x, U[0][k], U[1][k], stride, padding, 1, groups) for k in range(K)])
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-12)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_inplace_lif_step_equals_lif_step(reset):
    g = _gen(2)
    cur = torch.randn(6, 3, 5, generator=g) * 1.5
    beta, theta = torch.tensor(0.9), torch.tensor(1.0)
    v, s = torch.empty_like(cur[0]), torch.empty_like(cur[0])
    st = None
    for t in range(6):
        st = lif_step(cur[t], st, beta, theta, reset)
        lif_step_(cur[t], v, s, beta, theta, reset, first=t == 0)
        assert torch.equal(v, st.membrane) and torch.equal(s, st.spikes)
    assert s.sum() > 0
