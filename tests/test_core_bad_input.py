"""Bad input gets a clear error that names the offending value; requires_grad inputs are fine."""

from __future__ import annotations

import pytest
import torch

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.core import lif_scan
from spikelfp.core.feedback import synaptic_layer_feedback
from spikelfp.core.rules import make_rule
from spikelfp.core.synapse import LinearOps

pytestmark = pytest.mark.usefixtures("single_thread")


def _net(**kw):
    torch.manual_seed(0)
    return snn.Sequential(snn.LIFLinear(4, 3, **kw), snn.LIFLinear(3, 2, **kw))


# ----------------------------------------------------------------------------- shapes


def test_wrong_feature_count():
    net = _net()
    with pytest.raises(ValueError, match=r"\(5, 2, 5\).*4 features"):
        net.run(torch.randn(5, 2, 5))
    with pytest.raises(ValueError, match=r"\(2, 7\)"):
        LFP(net).compute(torch.randn(2, 7), torch.tensor([0, 1]), steps=3)


def test_sequence_needs_time_dimension():
    net = _net()
    with pytest.raises(ValueError, match=r"input shape \(4,\)"):
        net.run(torch.randn(4))
    with pytest.raises(ValueError, match=r"input shape \(2, 4\).*steps=T"):
        net.run(torch.randn(2, 4))  # a frame without steps
    with pytest.raises(ValueError, match=r"T=0"):
        net.run(torch.randn(0, 2, 4))


def test_conv_wrong_channels():
    conv = snn.LIFConv2d(2, 3, 3)
    with pytest.raises(ValueError, match=r"\(4, 1, 3, 8, 8\)"):
        conv.run(torch.randn(4, 1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"padding"):
        snn.LIFConv2d(2, 3, 3, padding="same")


def test_labels_shape_and_range():
    net = _net()
    lfp = LFP(net)
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"labels must be \[B\] with B=2, got shape \(3,\)"):
        lfp.compute(x, torch.tensor([0, 1, 1]), steps=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\], got 0\.\.5"):
        lfp.compute(x, torch.tensor([0, 5]), steps=3)


def test_per_neuron_parameter_shape():
    with pytest.raises(ValueError, match=r"beta has shape \(4,\).*\(3,\)"):
        snn.LIFLinear(4, 3, beta=torch.tensor([0.5, 0.6, 0.7, 0.8]))


# ----------------------------------------------------------------------------- LIF parameters


@pytest.mark.parametrize("beta,shown", [(0, "0.0"), (1.5, "1.5"), (-0.1, "-0.1"),
                                        (float("nan"), "nan"),
                                        (torch.tensor([0.5, 1.5, 0.9]), "1.5")])
def test_beta_out_of_range(beta, shown):
    with pytest.raises(ValueError, match=rf"beta={shown}\b.*\(0, 1\]"):
        snn.LIFLinear(4, 3, beta=beta)
    with pytest.raises(ValueError, match=rf"beta={shown}"):
        snn.LIFConv2d(1, 3, 3, beta=beta)


def test_beta_one_is_allowed():
    layer = snn.LIFLinear(4, 3, beta=1.0)
    assert layer.beta.item() == 1.0


@pytest.mark.parametrize("threshold,shown", [(0, "0.0"), (-1.0, "-1.0"),
                                             (torch.tensor([1.0, 0.0, 2.0]), "0.0")])
def test_threshold_not_positive(threshold, shown):
    with pytest.raises(ValueError, match=rf"threshold={shown}.*> 0"):
        snn.LIFLinear(4, 3, threshold=threshold)


def test_unknown_reset():
    with pytest.raises(ValueError, match=r"reset='hard'"):
        snn.LIFLinear(4, 3, reset="hard")


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_steps_must_be_positive_int(steps):
    net = _net()
    with pytest.raises(ValueError, match=rf"steps={steps!r}"):
        net.run(torch.randn(2, 4), steps=steps)
    with pytest.raises(ValueError, match=rf"steps={steps!r}"):
        LFP(net).compute(torch.randn(2, 4), torch.tensor([0, 1]), steps=steps)


def test_float64_layer_keeps_exact_parameters():
    # regression: beta/threshold of a dtype=float64 layer must not be rounded through float32
    layer = snn.LIFLinear(4, 3, beta=0.9, threshold=0.7, dtype=torch.float64)
    assert layer.beta.dtype == torch.float64 and layer.beta.item() == 0.9
    assert layer.threshold.item() == 0.7
    conv = snn.LIFConv2d(1, 2, 3, beta=0.9, dtype=torch.float64)
    assert conv.beta.item() == 0.9
    assert snn.LIFLinear(4, 3, beta=0.9).beta.dtype == torch.get_default_dtype()


# ----------------------------------------------------------------------------- LFP options


@pytest.mark.parametrize("rule", ["foo", "lfp-1", ""])
def test_unknown_rule(rule):
    with pytest.raises(ValueError, match=rf"unknown LFP rule {rule!r}"):
        LFP(_net(), rule=rule)


def test_unknown_rule_in_composite():
    with pytest.raises(ValueError, match=r"unknown LFP rule 'bogus'"):
        LFP(_net(), rule={"linear": "bogus"})
    with pytest.raises(ValueError, match=r"\['nolayer'\]"):
        LFP(_net(), rule={"nolayer": "epsilon"})


def test_rule_aliases():
    assert make_rule("LFP-0").name == "zero" and make_rule("z+z-").name == "zplus_zminus"
    assert make_rule("alpha-beta").name == "alphabeta"
    assert make_rule("zero", epsilon=0.5).epsilon == 0.0


def test_unknown_reward():
    with pytest.raises(ValueError, match=r"unknown reward 'bar'"):
        LFP(_net(), reward="bar")


@pytest.mark.parametrize("alpha,beta", [(3.0, 1.0), (1.0, 1.0), (2.0, 0.5)])
def test_alphabeta_needs_alpha_minus_beta_one(alpha, beta):
    with pytest.raises(ValueError, match=rf"alpha - beta = {alpha - beta:g}"):
        LFP(_net(), rule="alphabeta", alpha=alpha, beta=beta)
    LFP(_net(), rule="alphabeta", alpha=beta + 1.0, beta=beta)  # fine


@pytest.mark.parametrize("scope", ["batch", "global", 3])
def test_bad_normalize_scope(scope):
    with pytest.raises(ValueError, match=rf"normalize={scope!r}"):
        LFP(_net(), normalize=scope)


def test_other_bad_options():
    with pytest.raises(ValueError, match=r"temporal='sideways'"):
        LFP(_net(), temporal="sideways")
    with pytest.raises(ValueError, match=r"batch_reduction='max'"):
        LFP(_net(), batch_reduction="max")
    with pytest.raises(ValueError, match=r"clip_norm=0"):
        LFP(_net(), clip_norm=0)
    with pytest.raises(ValueError, match=r"agc=-1"):
        LFP(_net(), agc=-1)
    with pytest.raises(ValueError, match=r"epsilon=-1"):
        LFP(_net(), epsilon=-1.0)


# ----------------------------------------------------------------------------- non-finite values


def test_nan_input_raises_non_finite():
    lfp = LFP(_net())
    x = torch.randn(5, 2, 4) * 2
    x[2, 1, 3] = float("nan")
    with pytest.raises(RuntimeError, match=r"non-finite"):
        lfp.compute(x, torch.tensor([0, 1]))


def test_inf_weight_raises_non_finite():
    net = _net()
    with torch.no_grad():
        net[0].weight[0, 0] = float("inf")
    with pytest.raises(RuntimeError, match=r"non-finite"):
        LFP(net).compute(torch.randn(2, 4), torch.tensor([0, 1]), steps=4)


def test_nan_feedback_raises_non_finite():
    net = _net()
    lfp = LFP(net, reward=lambda out, y: torch.full_like(out, float("nan")))
    with pytest.raises(RuntimeError, match=r"non-finite.*'1\.weight'"):
        lfp.compute(torch.randn(2, 4), torch.tensor([0, 1]), steps=4)
    # and step() fails before touching any .grad
    with pytest.raises(RuntimeError, match=r"non-finite"):
        lfp.step(torch.randn(2, 4), torch.tensor([0, 1]), steps=4)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("bad", [lambda o, y: o[0], lambda o, y: o.sum(), lambda o, y: [0.0],
                                 lambda o, y: torch.zeros(o.shape[0], o.shape[1], 3)])
def test_reward_callable_wrong_shape(bad):
    lfp = LFP(_net(), reward=bad)
    with pytest.raises(ValueError, match=r"reward returned .*shaped like the outputs \(4, 2, 2\)"):
        lfp.compute(torch.randn(2, 4), torch.tensor([0, 1]), steps=4)


def test_reward_callable_right_shape_is_used():
    net = _net()
    seen = {}

    def reward(out, y):
        seen["shape"] = tuple(out.shape)
        return torch.ones_like(out)

    res = LFP(net, reward=reward).compute(torch.randn(2, 4) * 3, torch.tensor([0, 1]), steps=4)
    assert seen["shape"] == (4, 2, 2) and torch.equal(res.reward, torch.ones(4, 2, 2))


# ----------------------------------------------------------------------------- autograd


def test_requires_grad_inputs_build_no_graph():
    net = _net()
    assert all(p.requires_grad for p in net.parameters())
    x = (torch.randn(2, 4) * 2).requires_grad_(True)
    lfp = LFP(net)
    res = lfp.compute(x, torch.tensor([0, 1]), steps=6)
    for name, G in res.grads.items():
        assert not G.requires_grad and G.grad_fn is None, name
    assert res.output.grad_fn is None and res.reward.grad_fn is None
    assert all(r.membrane.grad_fn is None for r in res.trace.records)
    lfp.step(x, torch.tensor([0, 1]), steps=6)
    for p in net.parameters():
        assert p.grad is not None and not p.grad.requires_grad and p.grad.grad_fn is None
    assert x.grad is None  # nothing flowed back into the input
    assert torch.is_grad_enabled()  # the no_grad region did not leak out


def test_layer_feedback_on_a_graph_carrying_record_builds_no_graph():
    # A forward run with grad enabled (parameters require grad) leaves a graph on the membrane;
    # calling the per-layer feedback on that record, with a feedback r that requires grad, must
    # still give plain tensors (regression: G used to carry a grad_fn here).
    layer = snn.LIFLinear(4, 3)
    x = (torch.randn(5, 2, 4) * 2).requires_grad_(True)
    _, rec = layer.run(x)
    assert rec.membrane.requires_grad  # the record really carries a graph
    r = torch.randn(5, 2, 3, requires_grad=True)
    for rule in ("epsilon", "zero", "zplus_zminus", "alphabeta", "lfprop"):
        res = synaptic_layer_feedback(r, x, rec.membrane, rec.spikes, layer.weight, layer.bias,
                                      LinearOps(), rule=make_rule(rule), details=True)
        for t in (res.grad_weight, res.grad_bias, res.below, res.feedback, res.temporal):
            assert not t.requires_grad and t.grad_fn is None, rule
        assert torch.isfinite(res.grad_weight).all()


def test_lif_scan_constant_vs_sequence_argument():
    cur = torch.randn(3, 4)
    s1, v1 = lif_scan(cur, 0.9, 1.0, steps=5)
    s2, v2 = lif_scan(cur.expand(5, 3, 4), 0.9, 1.0)
    assert torch.equal(s1, s2) and torch.equal(v1, v2)
