"""F3 math (spikelfp.core.f3) and the F3 step against hand-computed tiny cases (spec f3-for-lif.md).

Every expected number below is worked out by hand from the spec's formulas (section 3):
G_W = (1/(B T)) sum_t (delta * phi_t)^T a_t, G_b = (1/(B T)) sum_t sum_b delta * phi_t.
"""

import math

import pytest
import torch

import spikelfp.nn as slnn
from spikelfp.core import f3
from spikelfp.core.synapse import LinearOps
from spikelfp.train.config import resolve
from spikelfp.train.f3 import F3Trainer
from spikelfp.train.protocol import Batch, TrainContext

D = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=D)


# ----------------------------------------------------------------------------- pure functions

def test_feedback_matrix_inits():
    g = torch.Generator().manual_seed(1)
    b = f3.feedback_matrix(10, 400, "kaiming_uniform", g)
    assert b.shape == (10, 400) and b.dtype == torch.float32
    assert b.abs().max() <= 1 / math.sqrt(400) and b.abs().max() > 0.9 / math.sqrt(400)
    assert abs(float(b.mean())) < 0.01 / math.sqrt(400) * 10
    tri = f3.feedback_matrix(10, 400, "trinomial", torch.Generator().manual_seed(1))
    assert set(tri.unique().tolist()) == {-1.0, 0.0, 1.0}
    bi = f3.feedback_matrix(10, 400, "binomial", torch.Generator().manual_seed(1))
    assert set(bi.unique().tolist()) == {0.0, 1.0}
    # same generator seed -> same matrix; the global RNG is not used
    state = torch.random.get_rng_state()
    again = f3.feedback_matrix(10, 400, "kaiming_uniform", torch.Generator().manual_seed(1))
    assert torch.equal(b, again) and torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(ValueError, match="feedback init"):
        f3.feedback_matrix(2, 2, "gauss")


def test_store_kinds_by_hand():
    y, yhat = t([0, 1, 0]), t([0.2, 0.6, 0.0])
    assert torch.allclose(f3.centered_target(torch.tensor([1]), 3, D), t([-1 / 3, 2 / 3, -1 / 3]))
    assert torch.allclose(f3.error_to_store("delayed", y, yhat), t([-0.2, 0.4, 0.0]))
    assert torch.allclose(f3.error_to_store("delayed_onehot", y, yhat), t([0.0, 0.4, 0.0]))
    # softmax(yhat / 0.5) = exp([0.4, 1.2, 0]) / sum
    z = [math.exp(0.4), math.exp(1.2), 1.0]
    p = [v / sum(z) for v in z]
    assert torch.allclose(f3.error_to_store("delayed_softmax", y, yhat, tau=0.5),
                          t([-p[0], 1 - p[1], -p[2]]))
    with pytest.raises(ValueError, match="stores nothing"):
        f3.error_to_store("target", y, yhat)


def test_read_store_lazy_rows():
    store = t([9, 9], [1, 2], [3, 4])
    seen = torch.tensor([False, True, False])
    init = t([-0.5, 0.5], [0.5, -0.5])
    got = f3.read_store(store, seen, torch.tensor([0, 1]), init)
    assert torch.equal(got, t([-0.5, 0.5], [1, 2]))


# One dense layer, B = 1, T = 3, 2 inputs, 2 neurons:
# a_t = [1,0], [0,1], [1,1] -> A = [2, 2];  s_t = [1,0], [0,1], [1,0] -> S = [2, 1];
# r = [2/3, 1/3]; delta = [0.5, -1].
A_T = t([[1, 0]], [[0, 1]], [[1, 1]])
S_T = t([[1, 0]], [[0, 1]], [[1, 0]])
DELTA = t([0.5, -1])


@pytest.mark.parametrize("local, gw, gb", [
    # (1/3) delta^T A ; G_b = delta
    ("none", [[1 / 3, 1 / 3], [-2 / 3, -2 / 3]], [0.5, -1]),
    # n = delta * r = [1/3, -1/3]; (1/3) n^T A ; G_b = n
    ("rate", [[2 / 9, 2 / 9], [-2 / 9, -2 / 9]], [1 / 3, -1 / 3]),
    # phi = 4 r (1 - r) = [8/9, 8/9]; n = [4/9, -8/9]
    ("ratevar", [[8 / 27, 8 / 27], [-16 / 27, -16 / 27]], [4 / 9, -8 / 9]),
])
def test_direction_from_sums_by_hand(local, gw, gb):
    ops = LinearOps()
    phi = f3.local_factor(local, S_T.sum(0), 3)
    g_w, g_b = f3.direction_from_sums(DELTA, phi, A_T.sum(0), 3, ops, (2, 2))
    assert torch.allclose(g_w, t(*gw)) and torch.allclose(g_b, t(*gb))


def test_spike_direction_by_hand():
    # M = [.5,0](x)[1,0] + [0,-1](x)[0,1] + [.5,0](x)[1,1] = [[1, .5], [0, -1]]
    ops = LinearOps()
    m = sum(f3.spike_correlation(DELTA, S_T[i], A_T[i], ops, (2, 2)) for i in range(3))
    assert torch.allclose(m, t([1, 0.5], [0, -1]))
    # all T*B rows at once gives the same M
    assert torch.allclose(f3.spike_correlation(DELTA, S_T, A_T, ops, (2, 2)), m)
    g_w, g_b = f3.spike_direction(DELTA, S_T.sum(0), m, 3, ops)
    assert torch.allclose(g_w, t([1 / 3, 1 / 6], [0, -1 / 3]))
    assert torch.allclose(g_b, t([1 / 3, -1 / 3]))  # (1/3) delta * S = (1/3) [1, -1]


def test_local_factor_spike_has_no_time_independent_form():
    with pytest.raises(ValueError, match="spike"):
        f3.local_factor("spike", S_T.sum(0), 3)


# ----------------------------------------------------------------------------- the F3 step by hand
#
# Net: LIFLinear(2, 2) -> LIFLinear(2, 2), beta 1, theta 1, reset subtract, no bias effect (0).
# W1 = 2 I; x_t = [1,0], [0,1], [1,0] (a sequence, B = 1, T = 3):
#   v = [2,0] s=[1,0];  v = [2-1+0, 0+2] = [1,2] s=[0,1];  v = [1+2, 2+0-1] = [3,1] s=[1,0]
#   hidden S = [2, 1], r = [2/3, 1/3], input sum A1 = [2, 1]
# W2 = [[2,0],[0,0]]: output currents [2,0],[0,0],[2,0]:
#   v = [2,0] o=[1,0];  v = [2-1, 0] = [1,0] o=[0,0];  v = [1+2, 0] = [3,0] o=[1,0]
#   O = [2, 0], yhat = [2/3, 0]; label 1: y = [0, 1], y - 1/C = [-1/2, 1/2], y - yhat = [-2/3, 1]
#   output-layer input sum A2 = hidden S = [2, 1]
# B_1 = [[1, 2], [-1, 1]]:
#   e = y - 1/C  -> delta_1 = [-1/2 - 1/2, -1 + 1/2] = [-1, -1/2]
#   e = y - yhat -> delta_1 = [-2/3 - 1, -4/3 + 1] = [-5/3, -1/3]

def _tiny(**cfg):
    net = slnn.Sequential(slnn.LIFLinear(2, 2, beta=1.0, dtype=D), slnn.LIFLinear(2, 2, beta=1.0, dtype=D))
    with torch.no_grad():
        net[0].weight.copy_(2 * torch.eye(2, dtype=D))
        net[1].weight.copy_(t([2, 0], [0, 0]))
        net[0].bias.zero_()
        net[1].bias.zero_()
    full = resolve(None, dict(trainer="f3", **cfg))
    tr = F3Trainer(full, net, TrainContext(3, 2, (2,), True, dtype=D))
    tr.feedback[0] = t([1, 2], [-1, 1])
    x = t([[1, 0]], [[0, 1]], [[1, 0]])
    return tr, Batch(x, torch.tensor([1]), torch.tensor([2]), None)


HIDDEN = {  # delta_1 = [-1, -1/2] (target / first epoch of delayed)
    "none": ([[-2 / 3, -1 / 3], [-1 / 3, -1 / 6]], [-1, -0.5]),
    "rate": ([[-4 / 9, -2 / 9], [-1 / 9, -1 / 18]], [-2 / 3, -1 / 6]),      # n = [-2/3, -1/6]
    "ratevar": ([[-16 / 27, -8 / 27], [-8 / 27, -4 / 27]], [-8 / 9, -4 / 9]),  # n = [-8/9, -4/9]
    # M = [-1,0](x)[1,0] + [0,-1/2](x)[0,1] + [-1,0](x)[1,0] = [[-2,0],[0,-1/2]]
    "spike": ([[-2 / 3, 0], [0, -1 / 6]], [-2 / 3, -1 / 6]),
}
# output layer, local_output none: delta_L = [-2/3, 1], A2 = [2, 1]
OUT_NONE = ([[-4 / 9, -2 / 9], [2 / 3, 1 / 3]], [-2 / 3, 1])


@pytest.mark.parametrize("error", ["delayed", "target"])
@pytest.mark.parametrize("local", sorted(HIDDEN))
def test_step_hand_case_hidden(error, local):
    tr, batch = _tiny(f3_error=error, f3_local=local)
    grads, res = tr.compute(batch)
    gw, gb = HIDDEN[local]
    assert torch.allclose(grads["0.weight"], t(*gw)) and torch.allclose(grads["0.bias"], t(*gb))
    assert torch.allclose(grads["1.weight"], t(*OUT_NONE[0]))
    assert torch.allclose(grads["1.bias"], t(*OUT_NONE[1]))
    assert res.prediction.tolist() == [0]
    assert torch.allclose(res.rates, torch.tensor([0.5, 1 / 3]))  # mean(S)/T: 1.5/3, 1/3
    assert torch.allclose(res.objective, torch.tensor(13 / 9, dtype=D))  # 4/9 + 1


@pytest.mark.parametrize("local, gw, gb", [
    ("none", [[-10 / 9, -5 / 9], [-2 / 9, -1 / 9]], [-5 / 3, -1 / 3]),
    # the trace path: M = [-5/3,0](x)[1,0] + [0,-1/3](x)[0,1] + [-5/3,0](x)[1,0]
    ("spike", [[-10 / 9, 0], [0, -1 / 9]], [-10 / 9, -1 / 9]),
])
def test_step_hand_case_current_error_dfa(local, gw, gb):
    tr, batch = _tiny(f3_error="current", f3_local=local)
    grads, _ = tr.compute(batch)
    assert torch.allclose(grads["0.weight"], t(*gw)) and torch.allclose(grads["0.bias"], t(*gb))


@pytest.mark.parametrize("local_output, gw, gb", [
    # M = [-2/3,0](x)[1,0] (t=1) + 0 (t=2) + [-2/3,0](x)[1,0] (t=3); G_b = (1/3) dL * O
    ("spike", [[-4 / 9, 0], [0, 0]], [-4 / 9, 0]),
    ("rate", [[-8 / 27, -4 / 27], [0, 0]], [-4 / 9, 0]),       # r = [2/3, 0], n = [-4/9, 0]
    ("ratevar", [[-32 / 81, -16 / 81], [0, 0]], [-16 / 27, 0]),  # phi = [8/9, 0]
])
def test_step_hand_case_output_local(local_output, gw, gb):
    tr, batch = _tiny(f3_local_output=local_output)
    grads, _ = tr.compute(batch)
    assert torch.allclose(grads["1.weight"], t(*gw)) and torch.allclose(grads["1.bias"], t(*gb))


@pytest.mark.parametrize("error, stored, hidden_w", [
    # second pass reads y - yhat = [-2/3, 1]: delta_1 = [-5/3, -1/3] (= the DFA case)
    ("delayed", [-2 / 3, 1], [[-10 / 9, -5 / 9], [-2 / 9, -1 / 9]]),
    # y * (y - yhat) = [0, 1]: delta_1 = [-1, 1]; (1/3) delta^T [2, 1]
    ("delayed_onehot", [0, 1], [[-2 / 3, -1 / 3], [2 / 3, 1 / 3]]),
])
def test_store_written_after_forward_and_read_next_time(error, stored, hidden_w):
    tr, batch = _tiny(f3_error=error, f3_local="none")
    first, _ = tr.compute(batch)
    # this forward used the initial row y - 1/C (DRTP) ...
    assert torch.allclose(first["0.weight"], t(*HIDDEN["none"][0]))
    # ... and wrote its own error into row 2 only
    assert tr.seen.tolist() == [False, False, True]
    assert torch.allclose(tr.store[2], t(*stored)) and not tr.store[:2].any()
    second, _ = tr.compute(batch)  # the next epoch (same weights) reads it
    assert torch.allclose(second["0.weight"], t(*hidden_w))


def test_store_softmax_by_hand():
    tr, batch = _tiny(f3_error="delayed_softmax", f3_tau=0.1)
    tr.compute(batch)
    p0 = 1 / (1 + math.exp(-20 / 3))  # softmax([2/3, 0] / 0.1)[0]
    assert torch.allclose(tr.store[2], t(-p0, p0))


def test_store_index_out_of_range_is_one_line():
    from spikelfp.train.errors import ConfigError

    tr, batch = _tiny()
    with pytest.raises(ConfigError, match="out of range") as e:
        tr.compute(batch._replace(index=torch.tensor([3])))
    assert len(str(e.value).splitlines()) == 1
