"""End-to-end: the console script trains, writes the run folder, and eval reads it back."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikelfp.cli import main


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "spikelfp.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_train_then_eval_subprocess(tmp_path):
    r = _run(["train", "--beta", "0.9", "--steps", "10", "--epochs", "1", "--limit", "200",
              "--out", str(tmp_path), "--run-name", "r1"], tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "r1"
    for f in ("config.yaml", "metrics.csv", "metrics.jsonl", "init.pt", "last.pt", "best.pt"):
        assert (run / f).is_file(), f
    assert "run folder" in r.stdout and "epoch   1/1" in r.stdout
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["epoch"] == 1 and 0.0 <= row["test_acc"] <= 1.0 and len(row["spike_rate"]) == 2
    e = _run(["eval", "--checkpoint", str(run / "best.pt"), "--json"], tmp_path)
    assert e.returncode == 0, e.stderr
    ev = json.loads(e.stdout)
    assert ev["n"] == 450  # the digits test split
    assert abs(ev["acc"] - row["test_acc"]) < 1e-9  # same net, same data, deterministic encoder


@pytest.mark.parametrize("args, needle", [
    (["--beta", "1.5"], "beta"),
    (["--threshold", "0"], "threshold"),
    (["--steps", "0"], "steps"),
    (["--optimizer", "foo"], "optimizer"),
    (["--dataset", "nope"], "dataset"),
    (["--model", "resnet"], "model"),
    (["--dataset", "mnist", "--data-root", "/nonexistent"], "MNIST/raw"),
    (["--rule", "bogus"], "rule"),
    (["--epsilon", "-1"], "epsilon"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, args, needle):
    rc = main(["train", *args, "--out", str(tmp_path), "--epochs", "1", "--limit", "10"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err
    assert not any(tmp_path.iterdir()), "nothing may be written on bad input"


def test_cli_unknown_yaml_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 0.1\n")
    rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "learning_rate" in err
    assert not (tmp_path / "runs").exists()


def test_cli_cuda_absent_is_clear(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here; the error path cannot be exercised")
    rc = main(["train", "--device", "cuda", "--out", str(tmp_path)])
    assert rc == 2 and "CUDA is not available" in capsys.readouterr().err


def test_config_flags_override_yaml(tmp_path):
    from spikelfp.train.config import resolve

    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 7\nlr: 0.01\nhidden: [16]\n")
    merged = resolve(str(cfg), {"lr": 0.5, "beta": None})
    assert merged["steps"] == 7 and merged["lr"] == 0.5 and merged["hidden"] == [16]
    assert merged["beta"] == 0.9


def test_shipped_configs_are_valid():
    from spikelfp.train.config import resolve

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert any(p.name == "digits_quick.yaml" for p in configs)
    for p in configs:
        resolve(str(p))


def test_train_flags_map_to_config_keys():
    """Every key the train command forwards is a config key and has a flag; values parse."""
    from spikelfp.cli import _TRAIN_KEYS, build_parser
    from spikelfp.train.config import DEFAULTS

    args = build_parser().parse_args(["train", "--epsilon", "0.1", "--normalize", "layer", "--lr", "5e-4"])
    assert (args.epsilon, args.normalize, args.lr) == (0.1, "layer", 5e-4)
    assert set(_TRAIN_KEYS) <= set(DEFAULTS)
    missing = [k for k in _TRAIN_KEYS if not hasattr(args, k)]
    assert not missing, f"no flag for {missing}"


def test_cli_fixes_glibc_mmap_threshold(monkeypatch):
    """The CLI fixes glibc's mmap threshold for long sequences only (bounded resident set there;
    page faults cost speed on short ones); SPIKELFP_MMAP_THRESHOLD decides for every run (0 =
    glibc's default), a bad value is ignored. mallopt is recorded, not called: a real call would
    change this test process's allocator for the rest of the suite."""
    import ctypes
    import sys

    from spikelfp.cli import LONG_SEQUENCE, MMAP_THRESHOLD, fix_mmap_threshold

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("SPIKELFP_MMAP_THRESHOLD", raising=False)
    assert fix_mmap_threshold() is False
    assert fix_mmap_threshold(LONG_SEQUENCE - 1) is False
    monkeypatch.setenv("SPIKELFP_MMAP_THRESHOLD", "0")
    assert fix_mmap_threshold(10 * LONG_SEQUENCE) is False
    monkeypatch.setenv("SPIKELFP_MMAP_THRESHOLD", "lots")
    assert fix_mmap_threshold(10 * LONG_SEQUENCE) is False
    assert calls == []
    monkeypatch.setenv("SPIKELFP_MMAP_THRESHOLD", str(1 << 22))
    assert fix_mmap_threshold(15) is True
    monkeypatch.delenv("SPIKELFP_MMAP_THRESHOLD")
    assert fix_mmap_threshold(LONG_SEQUENCE) is True
    assert calls == [(-3, 1 << 22), (-3, MMAP_THRESHOLD)]  # M_MMAP_THRESHOLD


def test_cli_mallopt_call_works_on_glibc():
    """The real call, in a child process (it changes that process's allocator)."""
    import ctypes.util
    import os
    import subprocess
    import sys

    if not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None:
        pytest.skip("glibc's mallopt exists on Linux only")
    code = "from spikelfp.cli import fix_mmap_threshold; print(fix_mmap_threshold(1000))"
    env = {k: v for k, v in os.environ.items() if k != "SPIKELFP_MMAP_THRESHOLD"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
