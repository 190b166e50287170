"""``grad_clip``: the update's global L2 norm is clipped after data-parallel averaging and
before the optimizer step, for every trainer (plain SGD, lr 1: the weight change is the clipped
update, so its norm is exactly the clip)."""

import pytest
import torch

from spikelfp.cli import main
from spikelfp.train.checkpoint import read_checkpoint
from spikelfp.train.config import ConfigError, resolve
from spikelfp.train.loop import train

ONE_STEP = {"epochs": 1, "limit": 32, "test_limit": 32, "steps": 5, "hidden": [16], "batch_size": 32,
            "val_fraction": 0.0, "optimizer": "sgd", "momentum": 0.0, "lr": 1.0, "progress": "off",
            "log_updates_every": 0}


def _change_norm(run) -> float:
    a = read_checkpoint(run / "init.pt")["model"]
    b = read_checkpoint(run / "last.pt")["model"]
    return float(torch.sqrt(sum(((b[k] - a[k]).double() ** 2).sum() for k in a)))


@pytest.mark.parametrize("trainer", ["lfp", "surrogate", "f3", "ffzero"])
def test_clip_bounds_the_update_norm(tmp_path, trainer):
    free = train(dict(ONE_STEP, trainer=trainer, out=str(tmp_path), run_name="free"), echo=lambda s: None)
    clip = train(dict(ONE_STEP, trainer=trainer, out=str(tmp_path), run_name="clip", grad_clip=1e-3),
                 echo=lambda s: None)
    unclipped = _change_norm(free["run_dir"])
    assert unclipped > 1e-2  # the clip below really acts
    assert _change_norm(clip["run_dir"]) == pytest.approx(1e-3, rel=1e-4)
    loose = train(dict(ONE_STEP, trainer=trainer, out=str(tmp_path), run_name="loose", grad_clip=1e6),
                  echo=lambda s: None)
    assert _change_norm(loose["run_dir"]) == pytest.approx(unclipped, rel=1e-6)  # a loose clip changes nothing


@pytest.mark.parametrize("value", [0, -1.0, "x", float("inf")])
def test_bad_clip_is_one_line(value):
    with pytest.raises(ConfigError, match="grad_clip"):
        resolve(None, {"grad_clip": value})


def test_cli_flag(tmp_path, capsys):
    assert main(["train", "--grad-clip", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grad_clip" in err[0]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize("trainer", ["lfp", "finetune"])
def test_lfp_clip_norm_acts_on_the_averaged_update_in_data_parallel_runs(trainer, monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) LFP's ``clip_norm`` is not applied to each process's own
    G but by ``after_average`` to the averaged update (also inside ``finetune``'s LFP phase):
    the single-process update's clip."""
    import spikelfp.nn as snn
    from spikelfp.train.protocol import Batch, TrainContext
    from spikelfp.train.registry import build_trainer

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = resolve(None, {"trainer": trainer, "clip_norm": 0.5, "finetune_iters": 0})
    net = snn.Sequential(snn.LIFLinear(4, 6), snn.LIFLinear(6, 3))
    tr = build_trainer(cfg, net, TrainContext(8, 3, (4,), False))
    x, y = torch.rand(8, 4) * 3, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    tr.step(Batch(x, y, torch.arange(8), 5, 0, 0))
    norm = lambda: float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in net.parameters())))  # noqa: E731
    before = norm()
    assert before > 0.5  # not clipped by the step itself
    for p in net.parameters():
        p.grad = p.grad * 10  # what an all-reduce might leave
    tr.after_average()
    assert norm() == pytest.approx(0.5, rel=1e-5)
