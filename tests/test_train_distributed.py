"""Data-parallel training with torchrun (gloo, CPU, 2 processes spawned by the test): the update
equals the single-process update on the global batch; a run killed on one rank resumes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spikelfp import LFP
from spikelfp.nn.zoo import build_model
from spikelfp.train import train

BASE = {"epochs": 3, "limit": 96, "steps": 6, "hidden": [16], "batch_size": 32, "progress": "off",
        "log_updates_every": 0, "dtype": "float64", "device": "cpu", "val_fraction": 0.0,
        "lfp_norm_sync": "global"}

# One torchrun launch runs every distributed case in the same process group.
DRIVER = textwrap.dedent('''
    import json, os, sys, torch
    import torch.distributed as dist
    from spikelfp import LFP
    from spikelfp.nn.zoo import build_model
    from spikelfp.train import train
    from spikelfp.train.distributed import average_gradients, setup
    base, out = json.loads(sys.argv[1]), sys.argv[2]
    train(dict(base, trainer="lfp", out=out, run_name="lfp"), echo=print)
    train(dict(base, trainer="surrogate", encoder="constant", out=out, run_name="sg"), echo=print)
    train(dict(base, trainer="ffzero", ff_directions=8, out=out, run_name="ff"), echo=print)
    train(dict(base, trainer="f3", out=out, run_name="f3"), echo=print)
    # one LFP step with per-process normalization on a fixed global batch of 8
    info = setup("cpu")
    torch.manual_seed(0)
    net = build_model({"model": "mlp", "hidden": [16], "input_shape": [1, 8, 8], "num_classes": 10}).double()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    y = torch.arange(8) % 10
    lo, hi = info.rank * 4, info.rank * 4 + 4
    LFP(net, normalize="step").step(x[lo:hi], y[lo:hi], steps=5)
    average_gradients(net.parameters(), 4, info)
    if info.rank == 0:
        torch.save({k: p.grad for k, p in net.named_parameters()}, os.path.join(out, "local_grads.pt"))
    dist.barrier()
''')

# Rank 1 dies (SIGKILL) in the middle of epoch 2; torchrun then stops rank 0.
KILLER = textwrap.dedent('''
    import os, signal, sys
    from spikelfp.train.lfp import LFPTrainer
    real = LFPTrainer.step
    def step(self, batch, want_stats=False):
        if os.environ.get("RANK") == "1" and batch.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, batch, want_stats)
    LFPTrainer.step = step
    from spikelfp.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def _torchrun(tmp_path, script, args, check=True):
    path = tmp_path / f"_{abs(hash(script)) % 10**8}.py"
    path.write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(29500 + os.getpid() % 1000), str(path), *args]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _state(run):
    return torch.load(Path(run) / "last.pt", weights_only=False)["model"]


def _rows(run):
    return [json.loads(s) for s in (Path(run) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dist_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    _torchrun(tmp, DRIVER, [json.dumps(BASE), str(tmp / "d")])
    return tmp


@pytest.mark.parametrize("trainer,run,extra", [("lfp", "lfp", {}), ("surrogate", "sg", {}),
                                               ("ffzero", "ff", {"ff_directions": 8}), ("f3", "f3", {})])
def test_two_processes_equal_one_on_the_global_batch(dist_runs, tmp_path, trainer, run, extra):
    """LFP, surrogate, F3: grads all-reduced (F3: its error-store rows all-gathered); FFzero: only
    its 2K losses per layer."""
    one = train(dict(BASE, trainer=trainer, encoder="constant", out=str(tmp_path), run_name="one", **extra),
                echo=lambda s: None)
    a, b = _state(one["run_dir"]), _state(dist_runs / "d" / run)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-10, rtol=0), k
    ra, rb = _rows(one["run_dir"]), _rows(dist_runs / "d" / run)
    assert [r["test_acc"] for r in ra] == [r["test_acc"] for r in rb]
    assert [r["train_acc"] for r in ra] == [r["train_acc"] for r in rb]
    assert not (dist_runs / "d" / run / "rank1").exists()
    init = torch.load(Path(one["run_dir"]) / "init.pt", weights_only=False)["model"]
    assert any(not torch.equal(init[k], a[k]) for k in a)  # it trained


def test_per_process_normalization_equals_half_batches(dist_runs):
    """lfp_norm_sync: local == one process that normalizes each half-batch on its own."""
    torch.manual_seed(0)
    net = build_model({"model": "mlp", "hidden": [16], "input_shape": [1, 8, 8], "num_classes": 10}).double()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    y = torch.arange(8) % 10
    lfp = LFP(net, normalize="step")
    halves = [lfp.compute(x[i:i + 4], y[i:i + 4], steps=5).grads for i in (0, 4)]
    whole = lfp.compute(x, y, steps=5).grads
    got = torch.load(dist_runs / "d" / "local_grads.pt", weights_only=False)
    for k, g in got.items():
        ref = -(halves[0][k] + halves[1][k]) / 2
        assert torch.allclose(g, ref, atol=1e-12, rtol=0), k
    # and it is not the whole-batch normalization (the scopes do couple the samples)
    assert any(not torch.allclose(got[k], -whole[k], atol=1e-9) for k in got)


def test_killed_rank_resumes_to_the_uninterrupted_result(dist_runs, tmp_path):
    args = ["train", "--epochs", "3", "--limit", "96", "--steps", "6", "--hidden", "16", "--batch-size",
            "32", "--progress", "off", "--dtype", "float64", "--device", "cpu", "--val-fraction", "0",
            "--lfp-norm-sync", "global",
            "--out", str(tmp_path), "--run-name", "k"]
    r = _torchrun(tmp_path, KILLER, args, check=False)
    assert r.returncode != 0
    ck = torch.load(tmp_path / "k" / "last.pt", weights_only=False)
    assert ck["epoch"] == 1  # the last complete epoch before the kill (3 batches per epoch)
    _torchrun(tmp_path, KILLER.replace('== "1"', '== "none"'), ["train", "--resume", str(tmp_path / "k")])
    a, b = _state(dist_runs / "d" / "lfp"), _state(tmp_path / "k")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-12, rtol=0), k
    assert [r["epoch"] for r in _rows(tmp_path / "k")] == [1, 2, 3]
