"""Runs that never collide, corrupt or lie: run folders, file modes, interrupts (fault
injection), resume rules, bad input (one line, exit 2, nothing written)."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from spikelfp.cli import main
from spikelfp.train import checkpoint as ckmod
from spikelfp.train import loop
from spikelfp.train.lfp import LFPTrainer
from spikelfp.train.loop import train
from spikelfp.train.runs import new_run_dir

BASE = {"epochs": 2, "limit": 96, "steps": 6, "hidden": [16], "batch_size": 32, "progress": "off",
        "log_updates_every": 1}
QUIET = {"echo": lambda s: None}


def _rows(run):
    return [json.loads(s) for s in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _weights(run):
    return torch.load(Path(run) / "last.pt", weights_only=False)["model"]


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _strip_times(rows):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


# ---------------------------------------------------------------------------- run folders

def test_same_run_name_twice_is_refused(tmp_path, capsys):
    args = ["train", "--epochs", "1", "--limit", "32", "--steps", "4", "--out", str(tmp_path),
            "--run-name", "r", "--progress", "off"]
    assert main(args) == 0
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run" in err
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before


def test_a_folder_is_claimed_once(tmp_path):
    a = new_run_dir(str(tmp_path), None, "digits-lfp")
    b = new_run_dir(str(tmp_path), None, "digits-lfp")  # the same second
    assert a != b and a.is_dir() and b.is_dir()
    (tmp_path / "x").mkdir()  # an empty folder may be taken, once
    assert new_run_dir(str(tmp_path), "x", "") == tmp_path / "x"
    with pytest.raises(ValueError, match="already holds a run"):
        new_run_dir(str(tmp_path), "x", "")


def test_files_are_as_readable_as_the_metrics(tmp_path):
    res = train(dict(BASE, epochs=1, out=str(tmp_path), run_name="m"), **QUIET)
    want = 0o666 & ~_umask()
    for f in ("config.yaml", "init.pt", "last.pt", "best.pt", "metrics.jsonl"):
        assert (Path(res["run_dir"]) / f).stat().st_mode & 0o777 == want, f


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_relative_data_root_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = train(dict(BASE, epochs=1, out="runs", run_name="a", data_root="data"), **QUIET)
    cfg = yaml.safe_load((Path(res["run_dir"]) / "config.yaml").read_text())
    assert cfg["data_root"] == str(tmp_path / "data")


# ---------------------------------------------------------------------------- interrupts

def _interrupt_in(monkeypatch, target, attr, when):
    """Make ``target.attr`` raise KeyboardInterrupt on its ``when``-th call."""
    real, calls = getattr(target, attr), {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == when:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(target, attr, flaky)
    return real


def test_ctrl_c_in_evaluation_then_resume(tmp_path, monkeypatch):
    full = train(dict(BASE, out=str(tmp_path), run_name="full"), **QUIET)
    real = _interrupt_in(monkeypatch, loop, "evaluate", 3)  # epoch 2: val is call 3
    cut = train(dict(BASE, out=str(tmp_path), run_name="cut"), **QUIET)
    monkeypatch.setattr(loop, "evaluate", real)
    assert cut["interrupted"]
    res = train(resume=str(cut["run_dir"]), **QUIET)
    assert _same(_weights(full["run_dir"]), _weights(res["run_dir"]))
    assert _strip_times(_rows(full["run_dir"])) == _strip_times(_rows(res["run_dir"]))
    header = (Path(res["run_dir"]) / "metrics.csv").read_text().splitlines()
    assert len(header) == 3 and header[0].startswith("epoch,train_acc")


def test_mid_epoch_stop_keeps_the_epoch_sums(tmp_path, monkeypatch):
    full = train(dict(BASE, out=str(tmp_path), run_name="full"), **QUIET)
    real = _interrupt_in(monkeypatch, LFPTrainer, "step", 5)  # epoch 2, batch 2 of 3
    cut = train(dict(BASE, out=str(tmp_path), run_name="cut"), **QUIET)
    monkeypatch.setattr(LFPTrainer, "step", real)
    res = train(resume=str(cut["run_dir"]), **QUIET)
    a, b = _rows(full["run_dir"]), _rows(res["run_dir"])
    assert [r["train_acc"] for r in a] == [r["train_acc"] for r in b]
    assert [r["mean_reward"] for r in a] == pytest.approx([r["mean_reward"] for r in b], rel=1e-6)
    # update lines are not duplicated by the replayed steps
    steps = [json.loads(s)["step"] for s in (Path(res["run_dir"]) / "updates.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_second_ctrl_c_during_the_save_does_not_lose_it(tmp_path, monkeypatch):
    full = train(dict(BASE, out=str(tmp_path), run_name="full"), **QUIET)
    real_step = _interrupt_in(monkeypatch, LFPTrainer, "step", 5)  # epoch 2, after 1 batch
    real_save = ckmod.atomic_save

    def save(obj, path):
        if obj.get("batch"):  # the interrupt checkpoint: a second Ctrl-C arrives meanwhile
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(obj, path)

    monkeypatch.setattr(loop, "atomic_save", save)
    cut = train(dict(BASE, out=str(tmp_path), run_name="cut"), **QUIET)
    monkeypatch.setattr(loop, "atomic_save", real_save)
    monkeypatch.setattr(LFPTrainer, "step", real_step)
    ck = torch.load(Path(cut["run_dir"]) / "last.pt", weights_only=False)
    assert (ck["epoch"], ck["batch"]) == (1, 1)
    res = train(resume=str(cut["run_dir"]), **QUIET)
    assert _same(_weights(full["run_dir"]), _weights(res["run_dir"]))


def test_killed_save_leaves_no_temporary_and_no_duplicate_row(tmp_path):
    full = train(dict(BASE, epochs=3, out=str(tmp_path), run_name="full"), **QUIET)
    part = train(dict(BASE, out=str(tmp_path), run_name="part"), **QUIET)
    run = Path(part["run_dir"])
    # what a SIGKILL after the metrics row but before/while last.pt was written leaves behind
    (run / ".last.pt.abc123.tmp").write_bytes(b"partial")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**_rows(run)[-1], "epoch": 3}) + "\n")
    res = train(resume=str(run), overrides={"epochs": 3}, **QUIET)
    assert not list(run.glob(".*.tmp"))
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]
    assert _same(_weights(full["run_dir"]), _weights(res["run_dir"]))


# ---------------------------------------------------------------------------- resume rules

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    train(dict(BASE, epochs=1, out=str(out), run_name="cos", schedule="cosine"), **QUIET)
    train(dict(BASE, epochs=1, out=str(out), run_name="plain"), **QUIET)
    return out


@pytest.mark.parametrize("run, flags, needle", [
    ("cos", ["--epochs", "3"], "cosine schedule"),
    ("plain", ["--lr", "0.5"], "'lr'"),
    ("plain", ["--optimizer", "sgd"], "'optimizer'"),
    ("plain", ["--hidden", "500"], "'hidden'"),
    ("plain", ["--dataset", "mnist"], "'dataset'"),
    ("plain", ["--config", "configs/digits_quick.yaml"], "--config"),
])
def test_resume_refuses_what_it_cannot_honour(finished, capsys, run, flags, needle):
    before = (finished / run / "last.pt").read_bytes()
    rc = main(["train", "--resume", str(finished / run), *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert (finished / run / "last.pt").read_bytes() == before


def test_resume_refuses_an_edited_config_yaml(tmp_path, capsys):
    train(dict(BASE, epochs=1, out=str(tmp_path), run_name="e"), **QUIET)
    p = tmp_path / "e" / "config.yaml"
    edited = yaml.safe_load(p.read_text())
    assert edited["lr"] != 0.1
    p.write_text(yaml.safe_dump({**edited, "lr": 0.1}))
    rc = main(["train", "--resume", str(tmp_path / "e"), "--epochs", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "config.yaml was edited" in err and "'lr'" in err


def test_resume_with_more_epochs_keeps_config_yaml_true(tmp_path):
    train(dict(BASE, epochs=1, out=str(tmp_path), run_name="x"), **QUIET)
    train(resume=str(tmp_path / "x"), overrides={"epochs": 2}, **QUIET)
    assert yaml.safe_load((tmp_path / "x" / "config.yaml").read_text())["epochs"] == 2
    assert [r["epoch"] for r in _rows(tmp_path / "x")] == [1, 2]


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("text, needle", [
    ("dataset: 5\n", "dataset"), ("ab_alpha: x\n", "ab_alpha"), ("seed: 1.0e+30\n", "seed"),
    ("gamma: -1\n", "gamma"), ("epsilon: .inf\n", "epsilon"), ("pool_input: 0\n", "pool_input"),
])
def test_bad_yaml_values_name_the_key(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "runs").exists()


def test_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["train", "--epochs", "1", "--limit", "16", "--out", str(blocker / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "writable" in err


def test_report_checks_its_output_before_evaluating(tmp_path, capsys):
    res = train(dict(BASE, epochs=1, out=str(tmp_path), run_name="r"), **QUIET)
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main(["report", str(res["run_dir"]), "--out", str(blocker / "rep"), "--progress", "off"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not writable" in err and len(err.splitlines()) == 1  # nothing evaluated


def test_test_limit_applies_to_the_digits(tmp_path, capsys):
    res = train(dict(BASE, epochs=1, out=str(tmp_path), run_name="t", test_limit=50), **QUIET)
    assert main(["eval", "--checkpoint", str(res["run_dir"]), "--json", "--test-limit", "50"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 50


def test_lfp_api_bad_batches_are_clear():
    import spikelfp
    from spikelfp.nn import Flatten, LIFLinear, Sequential

    net = Sequential(Flatten(), LIFLinear(64, 16), LIFLinear(16, 10))
    lfp = spikelfp.LFP(net)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match="needs steps=T"):
        lfp.step(x, y)
    with pytest.raises(ValueError, match="non-integer"):
        lfp.step(x, torch.tensor([1.0, 2.7, 3.0, 4.0]), steps=5)
    with pytest.raises(ValueError, match="empty"):
        lfp.step(x[:0], y[:0], steps=5)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        lfp.step(x, torch.tensor([1, 2, 3, 12]), steps=5)


# ---------------------------------------------------------------------------- honest output

def test_silent_output_is_reported_and_no_selection_on_test(tmp_path):
    lines = []
    res = train(dict(BASE, epochs=1, out=str(tmp_path), run_name="s", threshold=1e6, val_fraction=0.0,
                     reset="subtract"), echo=lines.append)
    assert any("did not spike" in s for s in lines)
    assert any("best.pt is the last epoch" in s for s in lines)
    assert any("--reset zero" in s for s in lines)  # reset subtract: how to get an exportable net
    a = torch.load(Path(res["run_dir"]) / "best.pt", weights_only=False)
    b = torch.load(Path(res["run_dir"]) / "last.pt", weights_only=False)
    assert _same(a["model"], b["model"])


def _mnist(root, labels):
    import gzip

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    n = len(labels)
    for split in ("train", "t10k"):
        with gzip.open(raw / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write((0x0803).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                    + bytes(n * 784))
        with gzip.open(raw / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write((0x0801).to_bytes(4, "big") + n.to_bytes(4, "big") + bytes(labels))


def test_label_outside_the_classes_names_the_file_before_the_run_folder(tmp_path, capsys):
    _mnist(tmp_path / "data", [1, 2, 12, 3])
    rc = main(["train", "--dataset", "mnist", "--data-root", str(tmp_path / "data"),
               "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "train-labels-idx1-ubyte.gz" in err and "label 12 at index 2" in err
    assert not (tmp_path / "runs").exists()


def test_a_run_is_resumable_from_its_first_batch(tmp_path, monkeypatch):
    """A failure in the first epoch (a corrupt file, a crash) leaves a last.pt to resume from."""
    full = train(dict(BASE, out=str(tmp_path), run_name="full"), **QUIET)

    def boom(self, batch, want_stats=False):
        raise RuntimeError("reading sample 17 failed")

    real = LFPTrainer.step
    monkeypatch.setattr(LFPTrainer, "step", boom)
    with pytest.raises(RuntimeError):
        train(dict(BASE, out=str(tmp_path), run_name="crash"), **QUIET)
    monkeypatch.setattr(LFPTrainer, "step", real)
    ck = torch.load(tmp_path / "crash" / "last.pt", weights_only=False)
    assert (ck["epoch"], ck["batch"], ck["global_step"]) == (0, 0, 0)
    res = train(resume=str(tmp_path / "crash"), **QUIET)
    assert _same(_weights(full["run_dir"]), _weights(res["run_dir"]))
