"""The engine against the 34 golden cases of ``shared/spec/vectors/lfp_vectors.json``.

The vectors were computed in float64 by an implementation of the spec written independently of
this project (see ``shared/spec/vectors/README.md``). Each case is a 4-3-2 LIF MLP, constant input
over T=5 steps, one reset mode, one rule, max-abs normalization on/off. We run the engine in
float64 and compare tightly (relative ~1e-9), and a few cases in float32 (relative ~1e-5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import spikelfp.nn as snn
from spikelfp import LFP

pytestmark = pytest.mark.usefixtures("single_thread")

VECTORS = Path(__file__).resolve().parents[2] / "shared/spec/vectors/lfp_vectors.json"
_SKIP_REASON = (f"golden vectors not found at {VECTORS} (they live in the 'shared' folder beside "
                f"the repository checkout)")


def _load_cases():
    if not VECTORS.is_file():
        return {}
    with open(VECTORS) as fh:
        return {c["name"]: c for c in json.load(fh)["cases"]}


CASES = _load_cases()
NAMES = sorted(CASES) or [pytest.param("<missing>", marks=pytest.mark.skip(reason=_SKIP_REASON))]
# One case per rule, both resets, both normalization settings, for the float32 run.
FLOAT32_NAMES = [n for n in ("seed10_subtract_epsilon_norm", "seed18_zero_epsilon_nonorm",
                             "seed10_zero_zero_norm", "seed18_subtract_zplus_zminus_norm",
                             "seed10_subtract_alphabeta_nonorm", "seed18_zero_alphabeta_norm",
                             "seed18_subtract_lfprop_nonorm") if n in CASES] \
    or [pytest.param("<missing>", marks=pytest.mark.skip(reason=_SKIP_REASON))]


def _run_case(case, dtype):
    kw = dict(beta=case["beta"], threshold=case["threshold"], reset=case["reset"], dtype=dtype)
    net = snn.Sequential(snn.LIFLinear(4, 3, **kw), snn.LIFLinear(3, 2, **kw))
    with torch.no_grad():
        for l, layer in enumerate(net):
            layer.weight.copy_(torch.tensor(case["weights"][l], dtype=dtype))
            layer.bias.copy_(torch.tensor(case["biases"][l], dtype=dtype))
    opts = dict(rule=case["rule"], normalize=case["norm_scope"] if case["normalize"] else None,
                batch_reduction=case["batch_reduction"], epsilon=case["epsilon"])
    if case["alpha"] is not None:
        opts.update(alpha=case["alpha"], beta=case["beta_ab"])
    lfp = LFP(net, **opts)
    x = torch.tensor(case["input"], dtype=dtype)
    y = torch.tensor(case["labels"])
    res = lfp.compute(x, y, steps=case["T"], keep_feedback=True)
    return net, res


def _assert_close(actual, expected, rel, what):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = actual.detach().to(torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(expected.abs().max().item(), 1e-12)
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:g} * {scale:.3g}"


def _check_case(case, net, res, rel):
    for l in range(2):
        rec = res.trace.records[l]
        assert torch.equal(rec.spikes.double(), torch.tensor(case["spikes"][l], dtype=torch.float64)), \
            f"layer {l}: spikes differ"
        _assert_close(rec.membrane, case["membranes"][l], rel, f"layer {l} membranes")
        _assert_close(res.grads[f"{l}.weight"], case["G_W"][l], rel, f"layer {l} G_W")
        _assert_close(res.grads[f"{l}.bias"], case["G_b"][l], rel, f"layer {l} G_b")
        if case["feedback_at_spikes"] is not None:
            _assert_close(res.feedback[str(l)], case["feedback_at_spikes"][l], rel,
                          f"layer {l} feedback at spikes")
    _assert_close(res.reward, case["reward"], rel, "reward")
    assert res.output.shape == (case["T"], 2, 2)
    # The exactly-zero weight never gets an update (LFP is multiplicative in |W|).
    assert net[0].weight[0, 1].item() == 0.0 and case["weights"][0][0][1] == 0.0
    assert res.grads["0.weight"][0, 1].item() == 0.0
    assert case["G_W"][0][0][1] == 0.0


def test_all_34_cases_present():
    if not CASES:
        pytest.skip(_SKIP_REASON)
    assert len(CASES) == 34
    rules = {c["rule"] for c in CASES.values()}
    assert rules == {"epsilon", "zero", "zplus_zminus", "alphabeta", "lfprop"}
    assert {c["reset"] for c in CASES.values()} == {"subtract", "zero"}


@pytest.mark.parametrize("name", NAMES)
def test_golden_case_float64(name):
    case = CASES[name]
    net, res = _run_case(case, torch.float64)
    assert res.grads["0.weight"].dtype == torch.float64
    _check_case(case, net, res, rel=1e-9)
    # The case must exercise the spiking: some spikes and some silence in the hidden layer.
    s0 = res.trace.records[0].spikes
    assert 0 < s0.sum().item() < s0.numel()


@pytest.mark.parametrize("name", FLOAT32_NAMES)
def test_golden_case_float32(name):
    case = CASES[name]
    net, res = _run_case(case, torch.float32)
    assert res.grads["0.weight"].dtype == torch.float32
    _check_case(case, net, res, rel=1e-5)
