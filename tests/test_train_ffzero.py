"""The ffzero trainer: its batched perturbed forwards against explicit per-direction runs,
schedules, exact resume, memory flat in T, bad input, and the CLI end to end."""

import copy
import json

import pytest
import torch

from spikelfp.cli import main
from spikelfp.core.ffzero import cosine_scores, estimate_improvement, margin_loss, simplex_prototypes
from spikelfp.core.readout import predict
from spikelfp.diagnostics.memory import peak_memory
from spikelfp.nn import Sequential
from spikelfp.nn.layers import AvgPool2d, Flatten, LIFConv2d, LIFLinear
from spikelfp.train.checkpoint import load_model
from spikelfp.train.config import resolve
from spikelfp.train.ffzero import FFzeroTrainer
from spikelfp.train.loop import train
from spikelfp.train.protocol import Batch, TrainContext

BASE = {"trainer": "ffzero", "limit": 160, "steps": 8, "hidden": [16], "batch_size": 32,
        "progress": "off", "log_updates_every": 0, "ff_directions": 4, "lr": 0.01}


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def _mlp():
    torch.manual_seed(1)
    net = Sequential(Flatten(1), LIFLinear(12, 16, dtype=torch.float64),
                     LIFLinear(16, 10, dtype=torch.float64))
    with torch.no_grad():
        for m in net:
            if hasattr(m, "weight"):
                m.weight.mul_(3.0)  # enough spikes in every layer
    return net, (12,)


def _convnet():
    torch.manual_seed(2)
    net = Sequential(LIFConv2d(1, 4, 3, padding=1, dtype=torch.float64), AvgPool2d(2), Flatten(),
                     LIFLinear(64, 10, dtype=torch.float64))
    with torch.no_grad():
        net[0].weight.mul_(4.0)
        net[3].weight.mul_(3.0)
    return net, (1, 8, 8)


def _trainer(net, shape, **over):
    cfg = resolve(None, {"trainer": "ffzero", "ff_directions": 3, "ff_eps": 0.5, **over})
    return FFzeroTrainer(cfg, net, TrainContext(100, 10, shape, False, dtype=torch.float64))


def _reference_losses(tr, net, x, steps, y, j, dirs):
    """Layer j's 2K losses from explicit runs: a copy of the network with only layer j's
    parameters moved to theta +/- eps u_k, the whole trace kept (one run per direction)."""
    s = tr.layers[j - 1]
    out = []
    for sign in (1.0, -1.0):
        for k in range(tr.K):
            pert = copy.deepcopy(net)
            layer = pert[s.index]
            with torch.no_grad():
                layer.weight.add_(sign * tr.eps * dirs[0][k])
                layer.bias.add_(sign * tr.eps * dirs[1][k])
                rec = pert.run(x, steps).records[s.index]
            membrane = tr.representation == "membrane" and j < len(tr.layers)
            z = (rec.membrane if membrane else rec.spikes).mean(0).reshape(len(y), -1)
            out.append(margin_loss(cosine_scores(z, tr.prototypes[j - 1]), y, tr.margin))
    return torch.stack(out)


@pytest.mark.parametrize("make", [_mlp, _convnet])
@pytest.mark.parametrize("representation", ["rate", "membrane"])
@pytest.mark.parametrize("sequence", [False, True])
def test_batched_perturbed_forwards_equal_explicit_runs(make, representation, sequence):
    net, shape = make()
    tr = _trainer(net, shape, ff_representation=representation)
    g = torch.Generator().manual_seed(3)
    B, T = 5, 6
    frame = torch.rand(B, *shape, generator=g, dtype=torch.float64)
    x, steps = ((frame.unsqueeze(0) * torch.rand(T, B, *shape, generator=g, dtype=torch.float64), None)
                if sequence else (frame, T))
    y = torch.tensor([0, 3, 7, 3, 9])
    fw = tr.forward(Batch(x, y, torch.arange(B), steps, 0, 11))
    assert sorted(fw.losses) == [1, 2]
    for j in (1, 2):
        ref = _reference_losses(tr, net, x, steps, y, j, fw.directions[j])
        assert torch.allclose(fw.losses[j], ref, atol=1e-12), j
        assert fw.losses[j].std() > 0  # the perturbations change the loss
    # the directions are those any process redraws from (seed, step, layer)
    again = tr.directions(tr.layers[1], 11)
    assert torch.equal(again[0], fw.directions[2][0])
    # the network's own readout: as predict on the full trace
    trace = net.run(x, steps)
    assert torch.equal(fw.prediction, predict(trace.output, trace.membrane))
    recs = [trace.records[s.index] for s in tr.layers]
    assert torch.allclose(fw.rates, torch.stack([r.spikes.float().mean() for r in recs]))
    # step writes param.grad = -G from exactly those losses
    tr.step(Batch(x, y, torch.arange(B), steps, 0, 11))
    s = tr.layers[0]
    G = estimate_improvement(fw.losses[1], fw.directions[1], tr.eps)
    assert torch.allclose(s.module.weight.grad, -G[0]) and torch.allclose(s.module.bias.grad, -G[1])


def test_prototypes_from_config_seed_not_global_rng():
    net, shape = _mlp()
    torch.manual_seed(123)
    a = _trainer(net, shape)
    torch.manual_seed(456)
    b = _trainer(net, shape)
    c = _trainer(net, shape, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.prototypes, b.prototypes))
    assert not torch.allclose(a.prototypes[0], c.prototypes[0])
    assert torch.equal(a.prototypes[1], simplex_prototypes(10, 10, dtype=torch.float64))
    d = _trainer(net, shape, seed=1)
    d.load_state_dict(a.state_dict())
    assert torch.equal(d.prototypes[0], a.prototypes[0])
    with pytest.raises(ValueError, match="prototype"):
        d.load_state_dict({})


def test_step_peak_memory_flat_in_T():
    net, shape = _mlp()
    tr = _trainer(net, shape, ff_directions=8)
    x = torch.rand(16, *shape, dtype=torch.float64)
    y = torch.arange(16) % 10

    def peak(T):
        for p in net.parameters():
            p.grad = None
        return peak_memory(lambda: tr.step(Batch(x, y, torch.arange(16), T, 0, 0)))

    small, large = peak(10), peak(100)
    assert small > 0 and abs(large - small) <= 0.1 * small, (small, large)


def _weights(path):
    net, _ = load_model(path)
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_sequential_freezes_lower_layers(tmp_path):
    cfg = dict(BASE, hidden=[16, 12], epochs=1, ff_schedule="sequential", save_every=1,
               out=str(tmp_path), run_name="seq", test_limit=50)
    res = train(cfg, echo=lambda s: None)
    run = res["run_dir"]
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and "proto_acc_1" in rows[0] and "proto_acc_3" in rows[0]
    init = torch.load(run / "init.pt", weights_only=False)["model"]
    snaps = [init] + [_weights(run / f"epoch_{e:03d}.pt") for e in (1, 2, 3)]
    for phase in (1, 2, 3):  # in phase p only synaptic layer p (child p) moves
        before, after = snaps[phase - 1], snaps[phase]
        for layer in (1, 2, 3):
            same = torch.equal(before[f"{layer}.weight"], after[f"{layer}.weight"])
            assert same == (layer != phase), (phase, layer)


@pytest.mark.parametrize("schedule", ["simultaneous", "sequential"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, schedule):
    cfg = dict(BASE, epochs=2 if schedule == "simultaneous" else 1, ff_schedule=schedule,
               out=str(tmp_path), test_limit=50)
    full = train(dict(cfg, run_name="full"), echo=lambda s: None)
    calls = {"n": 0}
    real = FFzeroTrainer.step

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 8:  # batch 3 of epoch 2 (5 batches per epoch)
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(FFzeroTrainer, "step", flaky)
    cut = train(dict(cfg, run_name="cut"), echo=lambda s: None)
    monkeypatch.setattr(FFzeroTrainer, "step", real)
    assert cut["interrupted"]
    ck = torch.load(cut["run_dir"] / "last.pt", weights_only=False)
    assert (ck["epoch"], ck["batch"]) == (1, 2) and len(ck["trainer_state"]["prototypes"]) == 2
    resumed = train(resume=str(cut["run_dir"]), echo=lambda s: None)
    a, b = _weights(full["run_dir"] / "last.pt"), _weights(resumed["run_dir"] / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    init = torch.load(full["run_dir"] / "init.pt", weights_only=False)["model"]
    assert not torch.equal(init["1.weight"], a["1.weight"])
    assert not torch.equal(init["2.weight"], a["2.weight"])


@pytest.mark.parametrize("args, needle", [
    (["--hidden", "5"], "layer '1' has 5 neurons"),
    (["--hidden", "32", "7"], "layer '2' has 7 neurons"),
    (["--ff-directions", "0"], "ff_directions"),
    (["--ff-eps", "0"], "ff_eps"),
    (["--ff-margin", "-1"], "ff_margin"),
    (["--ff-representation", "voltage"], "ff_representation"),
    (["--ff-schedule", "random"], "ff_schedule"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, args, needle):
    rc = main(["train", "--trainer", "ffzero", *args, "--out", str(tmp_path), "--epochs", "1",
               "--limit", "10"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not any(tmp_path.iterdir()), "nothing may be written on bad input"


def test_cli_train_ffzero_end_to_end(tmp_path, capsys):
    # the digits default (64-128-10, T = 25) with fewer samples, directions and epochs
    rc = main(["train", "--trainer", "ffzero", "--epochs", "3", "--limit", "320",
               "--ff-directions", "16", "--lr", "0.01", "--test-limit", "200",
               "--out", str(tmp_path), "--run-name", "e2e", "--progress", "off"])
    assert rc == 0
    rows = [json.loads(r) for r in (tmp_path / "e2e" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    last = rows[-1]
    for key in ("ff_loss", "proto_acc_1", "proto_acc_2", "ff_loss_1", "test_acc"):
        assert key in last, key
    assert last["ff_loss"] < rows[0]["ff_loss"]  # the local losses go down
    assert last["test_acc"] > 0.3                  # well above chance (0.1) after 3 short epochs
