"""Resume equals uninterrupted; checkpoints are atomic; Ctrl-C leaves a resumable checkpoint."""

import torch
import pytest

from spikelfp.train import checkpoint as ckmod
from spikelfp.train.checkpoint import atomic_save, load_model
from spikelfp.train.loop import train

BASE = {"epochs": 3, "limit": 160, "steps": 8, "hidden": [24], "batch_size": 32, "progress": "off",
        "log_updates_every": 0, "schedule": "cosine"}


def _weights(run_dir):
    net, _ = load_model(run_dir / "last.pt")
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("trainer,encoder", [("lfp", "constant"), ("surrogate", "poisson")])
def test_resume_equals_uninterrupted(tmp_path, trainer, encoder):
    # No LR schedule here: a 1-epoch run has a different cosine schedule than a 3-epoch one.
    # The Ctrl-C test below resumes under a cosine schedule.
    cfg = dict(BASE, trainer=trainer, encoder=encoder, out=str(tmp_path), schedule=None)
    full = train(dict(cfg, run_name="full"), echo=lambda s: None)
    part = train(dict(cfg, run_name="part", epochs=1), echo=lambda s: None)
    resumed = train(resume=str(part["run_dir"]), overrides={"epochs": 3}, echo=lambda s: None)
    a, b = _weights(full["run_dir"]), _weights(resumed["run_dir"])
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the training actually changed the weights
    init = torch.load(full["run_dir"] / "init.pt", weights_only=False)["model"]
    assert not torch.equal(init["1.weight"], a["1.weight"])


def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path, monkeypatch):
    cfg = dict(BASE, out=str(tmp_path))
    full = train(dict(cfg, run_name="full"), echo=lambda s: None)

    from spikelfp.train.lfp import LFPTrainer

    calls = {"n": 0}
    real_step = LFPTrainer.step

    def flaky_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # in the middle of epoch 2 (5 batches per epoch)
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(LFPTrainer, "step", flaky_step)
    res = train(dict(cfg, run_name="cut"), echo=lambda s: None)
    monkeypatch.setattr(LFPTrainer, "step", real_step)
    assert res["interrupted"]
    ck = torch.load(res["run_dir"] / "last.pt", weights_only=False)
    assert (ck["epoch"], ck["batch"]) == (1, 1)
    resumed = train(resume=str(res["run_dir"]), echo=lambda s: None)
    a, b = _weights(full["run_dir"]), _weights(resumed["run_dir"])
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_atomic_save_crash_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(3)}}, path)

    def boom(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckmod.torch, "save", boom)
    with pytest.raises(OSError):
        atomic_save({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=False)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temp file left behind"


def test_resume_missing_folder_is_clear(tmp_path):
    from spikelfp.train.config import ConfigError

    with pytest.raises(ConfigError, match="no last.pt"):
        train(resume=str(tmp_path / "nope"))
