"""A new trainer is one file plus one registration: a trainer defined here, outside the package,
trains the digits through ``spikelfp.train.train`` and through the CLI, with its own config key
and flag, without touching the loop, the config or the CLI."""

import json

import pytest
import torch

from spikelfp.cli import main
from spikelfp.train import Option, StepResult, Trainer, TrainerSpec, register_trainer, train
from spikelfp.train.registry import unregister_trainer


class DeltaTrainer(Trainer):
    """The delta rule on the output layer only: G_W = gain * (y - yhat)^T mean_t(a_t) / B."""

    name = "delta"

    def step(self, batch, want_stats=False):
        with torch.no_grad():
            trace = self.net.run(batch.x, batch.steps)
            out = trace.output
            yhat = out.mean(0)
            y = torch.nn.functional.one_hot(batch.labels, out.shape[-1]).to(out.dtype)
            delta = (y - yhat) * self.cfg["delta_gain"]
            a = trace.records[-1].x
            a = a.mean(0) if a.dim() == 3 else a
            last = self.net[-1]
            last.weight.grad = -(delta.T @ a) / len(y)
            last.bias.grad = -delta.mean(0)
            pred = out.sum(0).argmax(-1)
            rates = torch.stack([r.spikes.float().mean() for r in trace.records if r.spikes is not None])
            err = (y - yhat).abs().sum(-1).mean()
        return StepResult(err, "delta_error", pred, rates, {"trainer": self.name} if want_stats else None)


@pytest.fixture
def delta_registered():
    register_trainer(TrainerSpec("delta", DeltaTrainer, "delta rule on the output layer (test)",
                                 (Option("delta_gain", 1.0, "delta rule gain", kind=float, minimum=0.0,
                                         strict=True),)))
    yield
    unregister_trainer("delta")


BASE = {"trainer": "delta", "epochs": 3, "steps": 8, "hidden": [64], "batch_size": 32, "lr": 1e-2,
        "progress": "off", "log_updates_every": 0}


def test_external_trainer_trains_through_train(tmp_path, delta_registered):
    res = train(dict(BASE, out=str(tmp_path), run_name="d"), echo=lambda s: None)
    run = res["run_dir"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert "delta_error" in rows[0] and rows[-1]["delta_error"] < rows[0]["delta_error"]
    assert rows[-1]["test_acc"] > 0.6  # a random hidden layer + a trained readout (chance: 0.1)
    init = torch.load(run / "init.pt", weights_only=False)["model"]
    last = torch.load(run / "last.pt", weights_only=False)["model"]
    assert torch.equal(init["1.weight"], last["1.weight"])       # hidden layer untouched
    assert not torch.equal(init["2.weight"], last["2.weight"])   # readout trained


def test_external_trainer_through_cli(tmp_path, capsys, delta_registered):
    rc = main(["train", "--trainer", "delta", "--delta-gain", "0.5", "--epochs", "1", "--limit", "64",
               "--steps", "4", "--out", str(tmp_path), "--run-name", "c", "--progress", "off"])
    assert rc == 0, capsys.readouterr().err
    cfg = (tmp_path / "c" / "config.yaml").read_text()
    assert "delta_gain: 0.5" in cfg and "trainer: delta" in cfg
    rc = main(["train", "--trainer", "delta", "--delta-gain", "-1", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "delta_gain" in err
    assert not (tmp_path / "bad").exists()


def test_unknown_trainer_lists_the_registry(tmp_path, capsys):
    rc = main(["train", "--trainer", "nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "'nope'" in err and "lfp" in err and "surrogate" in err and "finetune" in err
