"""The f3 trainer: running sums against the full-trace formula, conv against its dense
equivalent, memory flat in T, epoch 1 = DRTP, resume = uninterrupted, bad input, the CLI."""

import json

import pytest
import torch

import spikelfp.nn as slnn
from spikelfp.cli import main
from spikelfp.diagnostics.memory import peak_memory
from spikelfp.train.checkpoint import load_model
from spikelfp.train.config import resolve
from spikelfp.train.f3 import F3Trainer
from spikelfp.train.lfp import LFPTrainer
from spikelfp.train.loop import train
from spikelfp.train.protocol import Batch, TrainContext

from _helpers import boost  # noqa: E402

D = torch.float64
ERRORS = ("delayed", "target", "current")
LOCALS = ("none", "spike", "rate", "ratevar")


def _trainer(net, ctx, **cfg):
    return F3Trainer(resolve(None, dict(trainer="f3", **cfg)), net, ctx)


def _mlp(sizes, seed=0):
    torch.manual_seed(seed)
    layers = [slnn.Flatten(1)] + [slnn.LIFLinear(a, b, beta=0.8, dtype=D)
                                  for a, b in zip(sizes[:-1], sizes[1:])]
    return boost(slnn.Sequential(*layers), 3.0)


def _reference(net, tr, x, steps, labels, e_kind, local, local_output):
    """The spec's formula on the full [T, B, N] trace of ``net.run`` (independent of the
    trainer's running sums): G_W = (1/(BT)) sum_t (delta * phi_t)^T a_t."""
    trace = net.run(x, steps)
    syn = [(i, m) for i, m in enumerate(net) if getattr(m, "kind", "") == "synaptic"]
    T, B, C = trace.output.shape
    y = torch.nn.functional.one_hot(labels, C).to(D)
    yhat = trace.output.sum(0) / T
    e = {"delayed": y - 1 / C, "target": y - 1 / C, "current": y - yhat}[e_kind]
    out = {}
    for j, (i, _) in enumerate(syn):
        rec = trace.records[i]
        a = rec.x if rec.x.dim() == 3 else rec.x.expand(T, *rec.x.shape)
        s = rec.spikes
        delta = (y - yhat) if j == len(syn) - 1 else e @ tr.feedback[j]
        kind = local_output if j == len(syn) - 1 else local
        r = s.mean(0, keepdim=True)
        phi = {"none": torch.ones_like(s), "spike": s, "rate": r.expand_as(s),
               "ratevar": (4 * r * (1 - r)).expand_as(s)}[kind]
        n = delta.unsqueeze(0) * phi
        out[f"{i}.weight"] = torch.einsum("tbn,tbi->ni", n, a) / (B * T)
        out[f"{i}.bias"] = n.sum((0, 1)) / (B * T)
    return out


@pytest.mark.parametrize("constant", [True, False])
@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("local", LOCALS)
def test_running_sums_equal_full_trace_formula(constant, error, local, single_thread):
    net = _mlp([12, 9, 7, 4])
    ctx = TrainContext(20, 4, (12,), not constant, dtype=D)
    tr = _trainer(net, ctx, f3_error=error, f3_local=local, f3_local_output=local)
    g = torch.Generator().manual_seed(3)
    T, B = 6, 5
    x = torch.rand(B, 12, generator=g, dtype=D) if constant else \
        (torch.rand(T, B, 12, generator=g) < 0.4).to(D)
    labels = torch.randint(0, 4, (B,), generator=g)
    batch = Batch(x, labels, torch.arange(B) + 3, T if constant else None)
    grads, res = tr.compute(batch)
    ref = _reference(net, tr, x, T if constant else None, labels, error, local, local)
    assert set(grads) == set(ref)
    for k in ref:
        assert torch.allclose(grads[k], ref[k], atol=1e-12), k
    hidden_rates = res.rates[:-1]
    assert (hidden_rates > 0.02).all() and (hidden_rates < 0.98).all(), "the case must spike"
    trace = net.run(x, T if constant else None)
    from spikelfp.core.readout import predict
    assert torch.equal(res.prediction, predict(trace.output, trace.membrane))


def test_constant_input_spike_equals_rate_at_layer_1(single_thread):
    net = _mlp([12, 9, 4])
    ctx = TrainContext(8, 4, (12,), False, dtype=D)
    x = torch.rand(5, 12, dtype=D)
    batch = Batch(x, torch.tensor([0, 1, 2, 3, 0]), torch.arange(5), 7)
    a, _ = _trainer(net, ctx, f3_local="spike").compute(batch)
    b, _ = _trainer(net, ctx, f3_local="rate").compute(batch)
    assert torch.allclose(a["1.weight"], b["1.weight"]) and torch.allclose(a["1.bias"], b["1.bias"])


def test_conv_equals_dense_equivalent(single_thread):
    """A conv layer whose kernel covers the whole input is a dense layer: same spikes, same G."""
    torch.manual_seed(1)
    conv = slnn.Sequential(slnn.LIFConv2d(2, 5, 3, beta=0.8, dtype=D), slnn.AvgPool2d(1),
                           slnn.Flatten(), slnn.LIFLinear(5, 3, beta=0.8, dtype=D))
    dense = slnn.Sequential(slnn.Flatten(), slnn.LIFLinear(18, 5, beta=0.8, dtype=D),
                            slnn.LIFLinear(5, 3, beta=0.8, dtype=D))
    with torch.no_grad():
        conv[0].weight.mul_(4)
        dense[1].weight.copy_(conv[0].weight.reshape(5, 18))
        dense[1].bias.copy_(conv[0].bias)
        dense[2].weight.copy_(conv[3].weight.mul_(3))
        dense[2].bias.copy_(conv[3].bias)
    x = (torch.rand(6, 4, 2, 3, 3) < 0.5).to(D)
    labels = torch.tensor([0, 1, 2, 1])
    for local in LOCALS:
        tc = _trainer(conv, TrainContext(4, 3, (2, 3, 3), True, dtype=D), f3_local=local)
        td = _trainer(dense, TrainContext(4, 3, (2, 3, 3), True, dtype=D), f3_local=local)
        assert tc.feedback[0].shape == (3, 5)
        td.feedback[0] = tc.feedback[0].clone()
        gc, rc = tc.compute(Batch(x, labels, torch.arange(4), None))
        gd, rd = td.compute(Batch(x, labels, torch.arange(4), None))
        assert (rc.rates[0] > 0.05) and torch.equal(rc.rates, rd.rates)
        assert torch.allclose(gc["0.weight"].reshape(5, 18), gd["1.weight"], atol=1e-12), local
        assert torch.allclose(gc["0.bias"], gd["1.bias"], atol=1e-12), local
        assert torch.allclose(gc["3.weight"], gd["2.weight"], atol=1e-12), local


def test_feedback_seeded_from_config_not_global_rng():
    net = _mlp([6, 5, 3])
    ctx = TrainContext(4, 3, (6,), False, dtype=D)
    state = torch.random.get_rng_state()
    a = _trainer(net, ctx, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(a.feedback[0], _trainer(net, ctx, seed=5).feedback[0])
    assert not torch.equal(a.feedback[0], _trainer(net, ctx, seed=6).feedback[0])


def test_peak_memory_flat_in_T_where_lfp_grows(single_thread):
    torch.manual_seed(0)
    net = slnn.Sequential(slnn.Flatten(1), slnn.LIFLinear(32, 128), slnn.LIFLinear(128, 10))
    boost(net, 2.0)
    ctx = TrainContext(32, 10, (32,), False)
    x, y, idx = torch.rand(32, 32), torch.randint(0, 10, (32,)), torch.arange(32)
    f3t = F3Trainer(resolve(None, dict(trainer="f3", f3_local="ratevar")), net, ctx)
    lfp = LFPTrainer(resolve(None, dict(trainer="lfp")), net, ctx)
    peaks = {}
    # (LFP only up to T = 30: the profiler makes its longer trace slow to record)
    for name, tr, steps in (("f3", f3t, (10, 100)), ("lfp", lfp, (10, 30))):
        for T in steps:
            tr.step(Batch(x, y, idx, T))  # warm-up (lazy allocations)
            peaks[name, T] = peak_memory(lambda tr=tr, T=T: tr.step(Batch(x, y, idx, T)))
    assert peaks["f3", 100] <= 1.10 * peaks["f3", 10], peaks
    assert peaks["lfp", 30] > 2 * peaks["lfp", 10], peaks
    assert peaks["f3", 100] < peaks["lfp", 30], peaks


BASE = {"epochs": 1, "limit": 96, "steps": 6, "hidden": [24], "batch_size": 32, "progress": "off",
        "log_updates_every": 0, "trainer": "f3"}


def _weights(run_dir):
    net, _ = load_model(run_dir / "last.pt")
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_epoch_one_equals_drtp_then_differs(tmp_path, single_thread):
    quiet = dict(echo=lambda s: None)
    f3a = train(dict(BASE, out=str(tmp_path), run_name="f3", f3_error="delayed"), **quiet)
    drtp = train(dict(BASE, out=str(tmp_path), run_name="drtp", f3_error="target"), **quiet)
    a, b = _weights(f3a["run_dir"]), _weights(drtp["run_dir"])
    for k in a:
        assert torch.equal(a[k], b[k]), k
    f3b = train(dict(BASE, out=str(tmp_path), run_name="f3b", epochs=2, f3_error="delayed"), **quiet)
    drtp2 = train(dict(BASE, out=str(tmp_path), run_name="drtp2", epochs=2, f3_error="target"), **quiet)
    a, b = _weights(f3b["run_dir"]), _weights(drtp2["run_dir"])
    assert not torch.equal(a["1.weight"], b["1.weight"])  # epoch 2 reads the stored errors


def test_resume_equals_uninterrupted(tmp_path, single_thread):
    cfg = dict(BASE, out=str(tmp_path), epochs=3, f3_local="ratevar")
    quiet = dict(echo=lambda s: None)
    full = train(dict(cfg, run_name="full"), **quiet)
    part = train(dict(cfg, run_name="part", epochs=1), **quiet)
    st = torch.load(part["run_dir"] / "last.pt", weights_only=False)["trainer_state"]
    assert st["seen"].all() and st["store"].shape == (96, 10) and len(st["feedback"]) == 1
    resumed = train(resume=str(part["run_dir"]), overrides={"epochs": 3}, **quiet)
    a, b = _weights(full["run_dir"]), _weights(resumed["run_dir"])
    for k in a:
        assert torch.equal(a[k], b[k]), k
    init = torch.load(full["run_dir"] / "init.pt", weights_only=False)["model"]
    assert not torch.equal(init["1.weight"], a["1.weight"])


@pytest.mark.parametrize("args, needle", [
    (["--f3-error", "bogus"], "f3_error"),
    (["--f3-local", "bogus"], "f3_local"),
    (["--f3-local-output", "derivative"], "f3_local_output"),
    (["--f3-init", "gauss"], "f3_init"),
    (["--f3-tau", "0"], "f3_tau"),
])
def test_cli_bad_f3_input_one_line_exit_2(tmp_path, capsys, args, needle):
    rc = main(["train", "--trainer", "f3", *args, "--out", str(tmp_path), "--epochs", "1",
               "--limit", "10"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not any(tmp_path.iterdir())


def test_cli_f3_without_hidden_layer_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer: f3\nhidden: []\nepochs: 1\nlimit: 10\n")
    rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "hidden layer" in err, err
    assert not (tmp_path / "runs").exists()


def test_cli_train_f3_end_to_end(tmp_path, capsys, single_thread):
    rc = main(["train", "--trainer", "f3", "--epochs", "1", "--limit", "96", "--steps", "6",
               "--out", str(tmp_path), "--run-name", "r", "--progress", "off"])
    assert rc == 0, capsys.readouterr().err
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= row["test_acc"] <= 1 and row["sq_error"] > 0 and len(row["spike_rate"]) == 2
    upd = json.loads((tmp_path / "r" / "updates.jsonl").read_text().splitlines()[0])
    assert upd["trainer"] == "f3" and "1.weight" in upd and "2.bias" in upd
