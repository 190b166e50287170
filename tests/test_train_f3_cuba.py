"""F3 on CUBA and recurrent layers: W as for LIF, the recurrent V like W with input s_{t-1}."""

import pytest
import torch

from spikelfp.cli import main
from spikelfp.nn import CubaLIFLinear, Flatten, Sequential
from spikelfp.train import train
from spikelfp.train.config import resolve
from spikelfp.train.f3 import F3Trainer, check_network
from spikelfp.train.protocol import Batch, TrainContext

DT = torch.float64


def _net():
    torch.manual_seed(0)
    net = Sequential(Flatten(), CubaLIFLinear(64, 20, alpha=0.5, recurrent=True, dtype=DT),
                     CubaLIFLinear(20, 10, alpha=0.5, dtype=DT))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)
    return net


@pytest.mark.parametrize("local", ["none", "rate", "ratevar"])
def test_recurrent_direction_against_the_full_trace(local):
    """G_V = (1/(B T)) sum_t (delta * phi)^T s_{t-1}, G_bV = (1/B) sum_b delta * phi, with the
    DRTP error (known before the forward) and the spikes of an independent full-trace run."""
    net = _net()
    cfg = resolve(None, {"trainer": "f3", "f3_error": "target", "f3_local": local})
    check_network(cfg, net)
    tr = F3Trainer(cfg, net, TrainContext(100, 10, (1, 8, 8), False, dtype=DT))
    x, y, T = torch.rand(5, 1, 8, 8, dtype=DT), torch.tensor([0, 1, 2, 3, 4]), 7
    grads, _ = tr.compute(Batch(x, y, torch.arange(5), T))
    s = net.run(x, T).records[1].spikes.to(DT)  # [T, B, N]
    r = s.sum(0) / T
    phi = {"none": torch.ones_like(r), "rate": r, "ratevar": 4 * r * (1 - r)}[local]
    delta = (torch.nn.functional.one_hot(y, 10).to(DT) - 0.1) @ tr.feedback[0].reshape(10, -1)
    n = delta * phi
    prev = torch.cat([torch.zeros_like(s[:1]), s[:-1]]).sum(0)
    assert torch.allclose(grads["1.recurrent_weight"], n.T @ prev / (5 * T), rtol=1e-12, atol=1e-15)
    assert torch.allclose(grads["1.recurrent_bias"], n.sum(0) / 5, rtol=1e-12, atol=1e-15)
    assert grads["1.recurrent_weight"].abs().sum() > 0


def test_f3_trains_a_recurrent_cuba_net(tmp_path):
    res = train({"trainer": "f3", "neuron": "cuba", "alpha": 0.5, "recurrent": True, "epochs": 1,
                 "limit": 96, "steps": 8, "hidden": [24], "progress": "off", "log_updates_every": 0,
                 "out": str(tmp_path), "run_name": "r"}, echo=lambda s: None)
    init = torch.load(res["run_dir"] / "init.pt", weights_only=False)["model"]
    last = torch.load(res["run_dir"] / "last.pt", weights_only=False)["model"]
    assert not torch.equal(init["1.recurrent_weight"], last["1.recurrent_weight"])
    assert not torch.equal(init["1.weight"], last["1.weight"])


def test_spike_factor_with_recurrence_is_one_line(tmp_path, capsys):
    rc = main(["train", "--trainer", "f3", "--f3-local", "spike", "--neuron", "cuba", "--recurrent",
               "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "spike" in err
    assert not (tmp_path / "runs").exists()
