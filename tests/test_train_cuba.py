"""CUBA / recurrent layers through config, CLI, model zoo, training, checkpoints, resume and eval."""

from __future__ import annotations

import json

import pytest
import torch

import spikelfp.nn as snn
from spikelfp.cli import main
from spikelfp.nn.zoo import build_model
from spikelfp.train.checkpoint import load_model
from spikelfp.train.config import ConfigError, resolve
from spikelfp.train.loop import train

BASE = {"epochs": 1, "limit": 96, "test_limit": 64, "steps": 8, "hidden": [16], "batch_size": 32,
        "progress": "off", "log_updates_every": 0, "schedule": None}


def test_cli_train_cuba_recurrent_surrogate_then_eval(tmp_path, capsys):
    rc = main(["train", "--trainer", "surrogate", "--neuron", "cuba", "--alpha", "0.5", "--recurrent",
               "--steps", "8", "--epochs", "1",
               "--limit", "96", "--test-limit", "64", "--hidden", "16", "--out", str(tmp_path),
               "--run-name", "r", "--progress", "off"])
    assert rc == 0
    run = tmp_path / "r"
    net, _ = load_model(run / "last.pt")
    assert isinstance(net[1], snn.CubaLIFLinear) and net[1].recurrent and net[1].alpha.item() == 0.5
    assert isinstance(net[2], snn.CubaLIFLinear) and not net[2].recurrent
    init = torch.load(run / "init.pt", weights_only=False)["model"]
    trained = net.state_dict()
    assert not torch.equal(init["1.recurrent_weight"], trained["1.recurrent_weight"])  # V learned
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json", "--test-limit", "64"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert abs(ev["acc"] - row["test_acc"]) < 1e-9


@pytest.mark.parametrize("trainer", ["lfp"])  # the surrogate trainer runs in the CLI test above
def test_resume_equals_uninterrupted_cuba(tmp_path, trainer):
    cfg = dict(BASE, trainer=trainer, out=str(tmp_path), neuron="cuba", alpha=0.6, recurrent=True, epochs=2)
    full = train(dict(cfg, run_name="full"), echo=lambda s: None)
    part = train(dict(cfg, run_name="part", epochs=1), echo=lambda s: None)
    resumed = train(resume=str(part["run_dir"]), overrides={"epochs": 2}, echo=lambda s: None)
    a, _ = load_model(full["run_dir"] / "last.pt")
    b, _ = load_model(resumed["run_dir"] / "last.pt")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    init = torch.load(full["run_dir"] / "init.pt", weights_only=False)["model"]
    assert not torch.equal(init["1.recurrent_weight"], a.state_dict()["1.recurrent_weight"])


def test_convnet_cuba_trains_with_lfp(tmp_path):
    res = train(dict(BASE, model="convnet", channels=[4], neuron="cuba", alpha=0.3, recurrent=True,
                     out=str(tmp_path), run_name="c"), echo=lambda s: None)
    net, _ = load_model(res["run_dir"] / "last.pt")
    assert isinstance(net[0], snn.CubaLIFConv2d) and isinstance(net[3], snn.CubaLIFLinear)
    assert net[3].recurrent


def test_default_model_is_unchanged():
    spec = dict(model="mlp", input_shape=[1, 8, 8], num_classes=10, hidden=[16])
    net = build_model(spec)
    assert [type(m) for m in net] == [snn.Flatten, snn.LIFLinear, snn.LIFLinear]
    net = build_model(dict(spec, neuron="lif", alpha=0.0, recurrent=False))
    assert [type(m) for m in net] == [snn.Flatten, snn.LIFLinear, snn.LIFLinear]


def test_bias_false_drops_b_and_b_v():
    """``bias: false`` gives a recurrent CUBA layer without b and b_V (what netx needs with alpha > 0)."""
    spec = dict(model="mlp", input_shape=[1, 8, 8], num_classes=10, hidden=[16], neuron="cuba", alpha=0.5,
                recurrent=True)
    with_bias = build_model(spec)
    assert with_bias[1].bias is not None and with_bias[1].recurrent_parameters()[1] is not None
    net = build_model(dict(spec, bias=False))
    V, bV = net[1].recurrent_parameters()
    assert net[1].bias is None and V is not None and bV is None and net[2].bias is None


def test_cuba_init_is_scaled_by_one_minus_alpha():
    torch.manual_seed(0)
    lif = build_model(dict(model="mlp", input_shape=[4], num_classes=2, hidden=[3]))
    torch.manual_seed(0)
    cuba = build_model(dict(model="mlp", input_shape=[4], num_classes=2, hidden=[3], neuron="cuba", alpha=0.75))
    assert torch.allclose(cuba[1].weight, 0.25 * lif[1].weight)
    assert torch.allclose(cuba[2].bias, 0.25 * lif[2].bias)


@pytest.mark.parametrize("over, needle", [
    ({"alpha": 1.0, "neuron": "cuba"}, "alpha"),
    ({"alpha": 0.5}, "needs neuron: cuba"),
    ({"neuron": "izhikevich"}, "neuron"),
    ({"recurrent": True, "model": "lenet"}, "recurrent"),
    ({"recurrent": True, "hidden": []}, "recurrent"),
    ({"recurrent": "yes"}, "recurrent"),
])
def test_bad_config(over, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        resolve(None, over)
    assert len(str(e.value).splitlines()) == 1


def test_cli_bad_alpha_exit_2(tmp_path, capsys):
    rc = main(["train", "--alpha", "0.5", "--out", str(tmp_path), "--epochs", "1", "--limit", "10"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "alpha" in err
    assert not any(tmp_path.iterdir())


def test_synops_count_recurrent_synapses():
    from spikelfp.diagnostics.activity import ActivityAccumulator

    layer = snn.CubaLIFLinear(2, 3, alpha=0.0, recurrent=True)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor([5.0, -1.0, -1.0]))  # neuron 0 spikes at every step, 1 and 2 never
        layer.recurrent_weight.zero_()
        layer.recurrent_bias.zero_()
    net = snn.Sequential(layer)
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # 1 and 2 input events per step
    acc = ActivityAccumulator(net)
    with torch.no_grad():
        acc.update(net.run(x, steps=6))
    d = acc.result()["layers"][0]
    # spikes at steps 1..5 reach V: 5 per sample, each through 3 synapses
    assert d["recurrent_synops_per_sample"] == 15.0
    assert d["synops_per_sample"] == 15.0 + 1.5 * 6 * 3  # + input events * fan-out
    assert d["ann_macs_per_step"] == 2 * 3 + 3 * 3
    assert acc.result()["network"]["recurrent_synops_per_sample"] == 15.0
