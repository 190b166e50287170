"""Every command README.md documents runs as written, on a small budget.

The commands are read from README.md itself: lines of ```bash / ``` blocks and 4-space indented
lines that start with ``spikelfp ``, ``python benchmarks/`` or ``torchrun `` (backslash
continuations joined, ``a && b`` split). Each one runs as written, with only its budget shrunk
(``--epochs 1 --limit 64 --test-limit 64`` or the command's own equivalent), ``../shared/data``
replaced by the real shared data folder (skipped with a reason when that is absent) and its
outputs put under a temporary folder. ``spikelfp`` commands run in this process through
``spikelfp.cli.main``, benchmark scripts through ``runpy``, the one ``torchrun`` launch as a
subprocess.

A command with a placeholder (RUN_DIR, RUNS/*, DATA, ``[...]`` syntax, ``runs/x``, a config file
the reader writes) is either instantiated from a run trained here (``INSTANTIATE``,
``FROM_COMMENT``) or listed with the reason it is not run (``NOT_RUN``). A README command in none
of these tables that has a placeholder fails ``test_every_readme_command_is_run_or_listed``, and
so does a table entry that no longer matches a README command: the lists cannot silently rot.
Commands that do not run as written are marked ``xfail(strict=True)`` in ``README_FAILS``.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import yaml

from hardware_export import nir_roundtrip_agreement
from spikelfp import load_checkpoint
from spikelfp.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED_DATA = REPO.parent / "shared" / "data"
README_DATA = "../shared/data"
PREFIXES = ("spikelfp ", "python benchmarks/", "torchrun ")
SHELL_FENCES = ("", "bash", "sh", "shell", "console")
QUICK_START = "spikelfp train --beta 0.9 --steps 25"
BUDGET = {"--epochs": ["1"], "--limit": ["64"], "--test-limit": ["64"]}

# The budget of each command kind: flag -> values (replaced when the command gives the flag,
# appended otherwise). `train --resume` keeps the run's own config (only its --epochs N moves).
SHRINK = {
    ("spikelfp", "train"): {**BUDGET, "--progress": ["off"]},
    ("spikelfp", "compare"): {**BUDGET, "--memory-steps": ["2"], "--progress": ["off"]},
    ("spikelfp", "eval"): {"--limit": ["64"], "--test-limit": ["64"]},
    ("spikelfp", "report"): {"--limit": ["64"], "--progress": ["off"]},
    # 4 nets x 2 trainers x --seeds; every run also evaluates 2 x 1,000 fixed test sequences at
    # T = 100: one seed (8 runs) instead of three keeps it at a few seconds.
    ("temporal.py", "accuracy"): {"--epochs": ["1"], "--limit": ["64"], "--set": ["test_limit=64"],
                                  "--seeds": ["0"]},
}
# Flags whose value is an output path: moved into the command's own folder under tmp.
OUTPUTS = {("spikelfp", "compare"): ("--out",), ("spikelfp", "export"): ("--out",),
           ("spikelfp", "report"): ("--out", "--json"), ("temporal.py", "accuracy"): ("--out",)}
SUBCOMMANDS = ("train", "eval", "export", "report", "compare", "accuracy", "summary", "table", "step")

# Placeholder commands, instantiated. {run}: the README quick-start run (reset "subtract");
# {run}: the same with --reset zero (what NIR and Loihi express exactly); {resume}: a copy of
# {run}; {cuba}: the run of `spikelfp train --config cuba.yaml`; {named_runs}: the run folders of
# the README commands that name their run (--run-name: the F3 MNIST block that RUNS/* refers to).
INSTANTIATE: Dict[str, List[str]] = {
    "spikelfp train [--config configs/NAME.yaml] [flags]": [
        "spikelfp train --config configs/digits_quick.yaml --steps 10"],
    "spikelfp train --resume RUN_DIR [--epochs N]": ["spikelfp train --resume {resume} --epochs 2"],
    "spikelfp eval --checkpoint RUN_DIR/best.pt [--split test|val|train] [--json]": [
        f"spikelfp eval --checkpoint {{run}}/best.pt --split {s} --json" for s in ("test", "val", "train")],
    "spikelfp export --checkpoint RUN_DIR/best.pt --format nir|hdf5|netx --out FILE [--verify]": [
        "spikelfp export --checkpoint {run}/best.pt --format nir --out net.nir --verify",
        "spikelfp export --checkpoint {subtract}/best.pt --format hdf5 --out net.h5 --verify",
        "spikelfp export --checkpoint {run}/best.pt --format netx --out net.h5 --verify"],
    "spikelfp report RUN_DIR [RUN_DIR ...] --out report/ [--json FILE]": [
        "spikelfp report {run} {subtract} --out report/ --json report.json"],
    "spikelfp export --checkpoint RUN_DIR --format netx --out net.h5 --verify": [
        "spikelfp export --checkpoint {run} --format netx --out net.h5 --verify"],
    "spikelfp export --checkpoint runs/x/best.pt --format nir --out net.nir --verify": [
        "spikelfp export --checkpoint {run}/best.pt --format nir --out net.nir --verify"],
    "spikelfp export --checkpoint runs/x/best.pt --format hdf5 --out net.h5 --verify": [
        "spikelfp export --checkpoint {subtract}/best.pt --format hdf5 --out net.h5 --verify"],
    "spikelfp export --checkpoint runs/x/best.pt --format netx --out net.h5 --verify": [
        "spikelfp export --checkpoint {run}/best.pt --format netx --out net.h5 --verify"],
    "spikelfp export --checkpoint runs/x/best.pt --format netx --out net.h5 --input-mode binary": [
        "spikelfp export --checkpoint {run}/best.pt --format netx --out net.h5 --input-mode binary"],
    "spikelfp export --checkpoint runs/cuba/best.pt --format netx --out cuba.h5 --verify": [
        "spikelfp export --checkpoint {cuba}/best.pt --format netx --out cuba.h5 --verify"],
    "python benchmarks/f3.py table RUNS/* --bp-acc 0.9818": [
        "python benchmarks/f3.py table {named_runs} --bp-acc 0.9818"],
}
# Run as written once the config file they name is written from their README comment
# (`# neuron: cuba, alpha: 0.5, ...` lists its keys).
FROM_COMMENT = {"spikelfp train --config cuba.yaml": "cuba.yaml"}
FROM_COMMENT_KEY = "spikelfp train --config cuba.yaml"  # its run is {cuba}

NOT_RUN: Dict[str, str] = {
    "spikelfp compare --config CONFIG --trainers lfp,f3,ffzero,surrogate [--seeds 0,1,2] --out DIR":
        "syntax summary of `compare`; the README's two concrete compare commands run here",
    "torchrun --nproc-per-node 4 -m spikelfp train --config configs/mnist_mlp_lfp.yaml --data-root DATA":
        "4 processes on a 2-core CPU; one torchrun launch per test run (~20 s), the README's 2-process "
        "example, covers the launch",
    "torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint MASTER:29500 "
    "-m spikelfp train --config configs/mnist_mlp_lfp.yaml --data-root DATA --device cuda":
        "two machines with 8 GPUs each",
    "torchrun --nproc-per-node 4 -m spikelfp train --resume runs/NAME":
        "resumes a 4-process run; resume under torchrun (after a killed rank) is tested in "
        "tests/test_train_distributed.py",
}

# README commands that do not run as written (key: the command; value: why), run as strict xfails.
README_FAILS: Dict[str, str] = {}

# "[" only where it opens optional syntax (" [--flag ...]"); "key=[256]" is a YAML list value
PLACEHOLDER = re.compile(r"\b(?:RUN_DIR|RUNS|DATA|MASTER|FILE|NAME|CONFIG|DIR)\b|(?:^|\s)\[|\||(?<![\w/.])runs/")


# ----------------------------------------------------------------------------- README parsing


@dataclass(frozen=True)
class Command:
    lines: Tuple[int, ...]
    text: str  # as in README (continuations joined), comment included
    comment: str

    @property
    def key(self) -> str:
        return normalize(self.text)


def normalize(text: str) -> str:
    return " ".join(shlex.split(text, comments=True))


def _shell_lines(lines):
    """(number, stripped text) of the lines of shell code blocks and of 4-space indented lines."""
    fence = None  # None: outside a fenced block, else its language
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        if s.startswith("```"):
            fence = s[3:].strip() if fence is None else None
        elif fence in SHELL_FENCES or (fence is None and raw.startswith("    ") and s):
            yield n, s


def _joined(lines):
    """Backslash continuations joined: (first line number, full text)."""
    start, acc = None, ""
    for n, s in _shell_lines(lines):
        start, acc = (n, s) if start is None else (start, acc[:-1].rstrip() + " " + s)
        if not acc.endswith("\\"):
            yield start, acc
            start, acc = None, ""


def readme_commands(text: str) -> List[Command]:
    """Every documented command, in README order, one entry per distinct command."""
    found: Dict[str, Command] = {}
    for n, line in _joined(text.splitlines()):
        for seg in (p.strip() for p in line.split("&&")):
            if not seg.startswith(PREFIXES):
                continue
            comment = seg.partition(" #")[2].strip()
            cmd = Command((n,), seg, comment)
            old = found.get(cmd.key)
            found[cmd.key] = cmd if old is None else Command(old.lines + (n,), old.text, old.comment)
    return list(found.values())


def placeholders(cmd: Command) -> List[str]:
    found = PLACEHOLDER.findall(cmd.key)
    argv = shlex.split(cmd.key)
    found += [v for f, v in zip(argv, argv[1:]) if f == "--config" and not (REPO / v).exists()]
    return found


COMMANDS = readme_commands(README.read_text())
BY_KEY = {c.key: c for c in COMMANDS}


# ----------------------------------------------------------------------------- running


def kind(argv: List[str]) -> Tuple[str, str]:
    prog = "torchrun" if argv[0] == "torchrun" else (
        Path(argv[1]).name if argv[0] == "python" else argv[0])
    sub = next((a for a in argv[1:] if a in SUBCOMMANDS), "")
    return prog, sub


def override(argv: List[str], flag: str, values: List[str]) -> List[str]:
    """``flag values`` in place of the flag's values when the command gives it, else appended."""
    if flag not in argv:
        return argv + [flag, *values]
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    return argv[:i + 1] + values + argv[j:]


@contextlib.contextmanager
def _in_dir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@dataclass
class Result:
    argv: List[str]
    rc: int
    stdout: str
    stderr: str
    out_dir: Path
    run_dir: Optional[Path] = None
    expect_epochs: int = 1

    def why(self) -> str:
        return f"{shlex.join(self.argv)}\nrc={self.rc}\n{self.stdout[-2000:]}\n{self.stderr[-2000:]}"


class Runner:
    """Runs README commands in one work folder (a fresh clone's view: configs/, benchmarks/),
    each at most once; outputs under ``root``."""

    def __init__(self, root: Path):
        self.root, self.work, self.runs = root, root / "work", root / "runs"
        self.work.mkdir()
        for name in ("configs", "benchmarks"):
            (self.work / name).symlink_to(REPO / name)
        self.done: Dict[str, Result] = {}
        self.started: Dict[str, tuple] = {}
        self.port = _free_port()  # one per runner: a command prepared twice is the same launch
        self.mark = f"{os.getpid()}-{id(self)}"  # in the environment of what it launches
        (root / "out").mkdir()
        self.resolvers = {"run": lambda: self.quick_start().run_dir, "subtract": lambda: self.subtract_run().run_dir,
                          "resume": self.resume_copy, "cuba": lambda: self.readme(FROM_COMMENT_KEY).run_dir,
                          "named_runs": self.named_runs}

    # the runs placeholders stand for
    def quick_start(self) -> Result:
        return self.readme(QUICK_START)

    def subtract_run(self) -> Result:
        return self.run(QUICK_START + " --reset subtract", "quickstart-subtract")

    def resume_copy(self) -> Path:
        dst = self.root / "resume" / "quickstart"
        if not dst.exists():
            shutil.copytree(self.quick_start().run_dir, dst)
        return dst

    def named_runs(self) -> str:
        named = [c for c in COMMANDS if "--run-name" in shlex.split(c.key) and c.key not in README_FAILS]
        return " ".join(shlex.quote(str(self.readme(c.key).run_dir)) for c in named)

    def readme(self, key: str) -> Result:
        cmd = BY_KEY[key]
        return self.run(key, f"L{cmd.lines[0]}", cmd)

    def instantiate(self, template: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: str(self.resolvers[m.group(1)]()), template)

    # running one command
    def run(self, text: str, tag: str, cmd: Optional[Command] = None) -> Result:
        if text not in self.done:
            if cmd is not None and cmd.key in FROM_COMMENT:
                write_config_from_comment(self.work / FROM_COMMENT[cmd.key], cmd.comment)
            self.done[text] = self._execute(self.prepare(text, tag), tag)
        return self.done[text]

    def prepare(self, text: str, tag: str) -> List[str]:
        if README_DATA in text:
            sub = text.split(README_DATA, 1)[1].split()[0].strip("/").split("/")[0]
            if not (SHARED_DATA / sub).exists():
                pytest.skip(f"{SHARED_DATA / sub} not present (README: {README_DATA}/{sub})")
        if "--device cuda" in text and not torch.cuda.is_available():
            pytest.skip("--device cuda: CUDA is not available here")
        argv = [a.replace(README_DATA, str(SHARED_DATA)) for a in shlex.split(text, comments=True)]
        argv = self._expand_globs(argv)
        k = kind(argv)
        if k[0] == "torchrun":
            return self._prepare_torchrun(argv, tag)
        return self._shrink(argv, k, tag)

    def _expand_globs(self, argv: List[str]) -> List[str]:
        out = []
        for a in argv:
            hits = sorted(glob.glob(a, root_dir=self.work)) if "*" in a else []
            out += hits or [a]
        return out

    def _shrink(self, argv: List[str], k: Tuple[str, str], tag: str) -> List[str]:
        if k == ("spikelfp", "train"):
            if "--resume" in argv:
                return argv
            argv = override(argv, "--out", [str(self.runs)])
            argv = argv if "--run-name" in argv else argv + ["--run-name", tag]
        for flag, values in SHRINK.get(k, {}).items():
            argv = override(argv, flag, values)
        for flag in OUTPUTS.get(k, ()):
            if flag in argv:
                i = argv.index(flag) + 1
                argv[i] = str(self.root / "out" / tag / argv[i])
        return argv

    def _prepare_torchrun(self, argv: List[str], tag: str) -> List[str]:
        i = argv.index("-m")
        assert argv[i + 1:i + 3] == ["spikelfp", "train"], argv
        port = str(self.port)
        head = [sys.executable, "-m", "torch.distributed.run", "--master-port", port] + argv[1:i + 1]
        return head + self._shrink(argv[i + 1:], ("spikelfp", "train"), tag)

    def _execute(self, argv: List[str], tag: str) -> Result:
        out_dir = self.root / "out" / tag
        out_dir.mkdir(parents=True, exist_ok=True)
        if argv[0] == sys.executable:
            rc, so, se = self._subprocess(argv)
        else:
            rc, so, se = self._in_process(argv)
        res = Result(argv, rc, so, se, out_dir)
        if kind(argv)[1] == "train":
            res.run_dir, res.expect_epochs = train_folder(argv)
        return res

    def start_subprocesses(self, selected) -> None:
        """Start the torchrun launch now, in the background, if its test is among ``selected``
        (README command keys): it spends most of its ~20 s starting processes, which overlaps
        with the in-process commands; its test waits for it."""
        for c in COMMANDS:
            if c.key.startswith("torchrun ") and c.key not in NOT_RUN and c.key in selected:
                try:
                    argv = self.prepare(c.key, f"L{c.lines[0]}")
                except pytest.skip.Exception:
                    continue
                self._launch(argv)

    def _launch(self, argv: List[str]):
        key = shlex.join(argv)
        if key not in self.started:
            log = self.root / "out" / f"subprocess-{len(self.started)}"
            # a mark in the environment, which torchrun's workers inherit: they run in sessions of
            # their own, so close() finds them by it (killing only the launcher, or its process
            # group, left its two ranks waiting forever when the launch was cut short)
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                       SPIKELFP_README_LAUNCH=self.mark)
            with open(f"{log}.out", "w") as so, open(f"{log}.err", "w") as se:
                proc = subprocess.Popen(argv, cwd=self.work, env=env, stdout=so, stderr=se, text=True,
                                        start_new_session=True)
            self.started[key] = (proc, log)
        return self.started[key]

    def _subprocess(self, argv):
        proc, log = self._launch(argv)
        proc.wait(timeout=300)
        return proc.returncode, Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text()

    def close(self) -> None:
        for proc, _ in self.started.values():
            try:  # the launcher and its process group
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        for pid in marked_processes(self.mark):  # workers that outlived it (own sessions)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _in_process(self, argv):
        so, se = io.StringIO(), io.StringIO()
        saved = sys.argv[:], sys.path[:], torch.get_num_threads()
        with _in_dir(self.work), contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            try:
                if argv[0] == "spikelfp":
                    rc = main(argv[1:])
                else:  # python benchmarks/X.py ...: as its own __main__
                    sys.argv = argv[1:]
                    rc = _exit_code(lambda: runpy.run_path(argv[1], run_name="__main__"))
            finally:
                sys.argv[:], sys.path[:] = saved[0], saved[1]
                torch.set_num_threads(saved[2])
        return rc, so.getvalue(), se.getvalue()



def marked_processes(mark: str) -> List[int]:
    """Pids of this user's processes whose environment holds SPIKELFP_README_LAUNCH=mark."""
    want = f"SPIKELFP_README_LAUNCH={mark}".encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if want in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return pids


def _free_port() -> int:
    """A TCP port free on this machine now (the OS picks it), for torchrun's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _exit_code(fn) -> int:
    try:
        fn()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def train_folder(argv: List[str]) -> Tuple[Path, int]:
    """The run folder a train command writes and the number of epochs it ends with."""
    if "--resume" in argv:
        run = Path(argv[argv.index("--resume") + 1])
        return run, int(argv[argv.index("--epochs") + 1]) if "--epochs" in argv else 1
    return Path(argv[argv.index("--out") + 1]) / argv[argv.index("--run-name") + 1], 1


def write_config_from_comment(path: Path, comment: str) -> None:
    """``# neuron: cuba, alpha: 0.5`` -> the YAML file {neuron: cuba, alpha: 0.5}."""
    cfg = yaml.safe_load("{" + comment + "}")
    assert isinstance(cfg, dict) and cfg, f"README comment {comment!r} does not list config keys"
    path.write_text(yaml.safe_dump(cfg))


# ----------------------------------------------------------------------------- outcome checks


def check_train(res: Result) -> None:
    assert res.run_dir is not None and (res.run_dir / "last.pt").is_file(), res.why()
    rows = [json.loads(s) for s in (res.run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    assert [r["epoch"] for r in rows][-1] == res.expect_epochs, rows
    assert 0.0 <= rows[-1]["test_acc"] <= 1.0


def check_compare(res: Result) -> None:
    out = Path(res.argv[res.argv.index("--out") + 1])
    trainers = res.argv[res.argv.index("--trainers") + 1].split(",")
    seeds = res.argv[res.argv.index("--seeds") + 1].split(",") if "--seeds" in res.argv else ["0"]
    for t in trainers:
        for s in seeds:
            assert (out / "runs" / f"{t}-s{s}" / "last.pt").is_file(), f"{t}-s{s}"
    report = json.loads((out / "report" / "report.json").read_text())
    assert sorted(report["comparison"]["trainers"]) == sorted(trainers)
    assert (out / "report" / "report.html").is_file()


def check_eval(res: Result) -> None:
    if "--json" in res.argv:
        data = json.loads(res.stdout.strip().splitlines()[-1])
        assert 0.0 <= data["acc"] <= 1.0 and data["n"] > 0, data


def check_export(res: Result) -> None:
    out = Path(res.argv[res.argv.index("--out") + 1])
    assert out.is_file() and out.stat().st_size > 0, res.why()
    if "--verify" in res.argv:
        m = re.search(r"spike agreement ([0-9.]+)", res.stdout)
        assert m and 0.0 <= float(m.group(1)) <= 1.0, res.why()


def check_report(res: Result) -> None:
    out = Path(res.argv[res.argv.index("--out") + 1])
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    if "--json" in res.argv:
        data = json.loads(Path(res.argv[res.argv.index("--json") + 1]).read_text())
        assert len(data["runs"]) == sum(1 for a in res.argv[2:] if (Path(a) / "config.yaml").is_file())


def check_temporal(res: Result) -> None:
    if "--json" in res.argv:
        data = json.loads((res.out_dir.parents[1] / "work" / res.argv[res.argv.index("--json") + 1]).read_text())
        assert data["results"] and all(0.0 <= r["test_acc"] <= 1.0 for r in data["results"])


def check_printed(res: Result) -> None:
    assert res.stdout.strip(), res.why()


CHECKS = {("spikelfp", "train"): check_train, ("torchrun", "train"): check_train,
          ("spikelfp", "compare"): check_compare, ("spikelfp", "eval"): check_eval,
          ("spikelfp", "export"): check_export, ("spikelfp", "report"): check_report,
          ("temporal.py", "accuracy"): check_temporal, ("temporal.py", "summary"): check_printed,
          ("f3.py", "table"): check_printed}


def check(res: Result) -> None:
    assert res.rc == 0, res.why()
    k = ("torchrun", "train") if "torch.distributed.run" in res.argv else kind(res.argv)
    CHECKS.get(k, check_printed)(res)


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread_module):
    """One intra-op thread: tiny nets; two threads on a busy 2-core machine only spin."""
    yield


@pytest.fixture(scope="module")
def runner(tmp_path_factory, request):
    r = Runner(tmp_path_factory.mktemp("readme"))
    selected = {item.callspec.params["cmd"].key for item in request.session.items
                if "cmd" in getattr(getattr(item, "callspec", None), "params", {})}
    r.start_subprocesses(selected)
    yield r
    r.close()


def _param(cmd: Command):
    ident = f"L{cmd.lines[0]}-" + re.sub(r"[^\w.,=-]+", "_", cmd.key)[:80]
    marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=README_FAILS[cmd.key])] \
        if cmd.key in README_FAILS else []
    return pytest.param(cmd, id=ident, marks=marks)


def test_readme_is_parsed():
    """The extraction itself: continuations joined, `a && b` split, comments kept apart."""
    keys = [c.key for c in COMMANDS]
    assert QUICK_START in keys, "README quick start command not found"
    assert len(COMMANDS) >= 20, keys
    joined = [k for k in keys if k.startswith("spikelfp compare --config configs/digits_quick.yaml")]
    assert joined and joined[0].endswith("--out compare-digits"), joined
    assert not any("\\" in k or "&&" in k for k in keys)


SYNTHETIC = """
```bash
pip install -e . && spikelfp train --steps 5   # a comment
spikelfp compare --config configs/digits_quick.yaml \\
  --out somewhere
```

```python
spikelfp train --not-a-shell-block
```

    spikelfp eval --checkpoint RUN_DIR/best.pt
    python benchmarks/f3.py table RUNS/*
    torchrun --nproc-per-node 2 -m spikelfp train --config mine.yaml
"""


def test_extraction_and_placeholders_on_a_synthetic_readme():
    """What makes a new README command count: fenced shell blocks and indented lines, joined
    continuations, `&&` segments; and which commands need a table entry (placeholders)."""
    cmds = readme_commands(SYNTHETIC)
    assert [c.key for c in cmds] == [
        "spikelfp train --steps 5", "spikelfp compare --config configs/digits_quick.yaml --out somewhere",
        "spikelfp eval --checkpoint RUN_DIR/best.pt", "python benchmarks/f3.py table RUNS/*",
        "torchrun --nproc-per-node 2 -m spikelfp train --config mine.yaml"]
    assert cmds[0].comment == "a comment" and cmds[1].lines == (4,)
    assert [bool(placeholders(c)) for c in cmds] == [False, False, True, True, True]


def test_every_readme_command_is_run_or_listed():
    tables = {**INSTANTIATE, **NOT_RUN, **FROM_COMMENT}
    unlisted = [f"README line {c.lines[0]}: {c.key}  (placeholders {placeholders(c)})"
                for c in COMMANDS if placeholders(c) and c.key not in tables]
    assert not unlisted, ("README commands with placeholders that this test neither instantiates "
                          "(INSTANTIATE / FROM_COMMENT) nor lists in NOT_RUN:\n" + "\n".join(unlisted))
    stale = [k for k in {**tables, **README_FAILS} if k not in BY_KEY]
    assert not stale, "table entries that match no README command any more:\n" + "\n".join(stale)
    overlap = set(NOT_RUN) & (set(INSTANTIATE) | set(README_FAILS))
    assert not overlap, overlap


@pytest.mark.parametrize("cmd", [_param(c) for c in COMMANDS])
def test_readme_command(cmd: Command, runner: Runner):
    if cmd.key in NOT_RUN:
        pytest.skip(f"not run: {NOT_RUN[cmd.key]}")
    templates = INSTANTIATE.get(cmd.key)
    if templates is None:
        assert not placeholders(cmd) or cmd.key in FROM_COMMENT, f"placeholders {placeholders(cmd)}"
        check(runner.readme(cmd.key))
        return
    for i, template in enumerate(templates):
        check(runner.run(runner.instantiate(template), f"L{cmd.lines[0]}-{i}"))


def _export_nir(runner: Runner, run_dir: Path, name: str, capsys):
    out = runner.root / "quickstart" / name
    out.parent.mkdir(exist_ok=True)
    capsys.readouterr()
    rc = main(["export", "--checkpoint", str(run_dir / "last.pt"), "--format", "nir", "--out", str(out),
               "--verify"])
    return rc, capsys.readouterr(), out


def test_runner_close_stops_workers_in_sessions_of_their_own(tmp_path):
    """torchrun starts its workers in sessions of their own: closing the runner must stop them
    too, not only the launcher's process group (a launch cut short used to leave its ranks
    waiting forever). Here the launcher starts one such worker and then waits."""
    r = Runner(tmp_path)
    child = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
             "'import time; time.sleep(300)'], start_new_session=True); time.sleep(300)")
    r._launch([sys.executable, "-c", child])
    for _ in range(100):  # until both are up
        if len(marked_processes(r.mark)) == 2:
            break
        time.sleep(0.05)
    assert len(marked_processes(r.mark)) == 2
    r.close()
    for _ in range(100):  # a killed process leaves /proc once reaped (init reaps the orphan)
        if not marked_processes(r.mark):
            break
        time.sleep(0.05)
    assert marked_processes(r.mark) == []


def test_nir_export_refuses_reset_subtract(runner: Runner, capsys):
    """The quick start with reset 'subtract', which NIR 1.0 cannot express: the export is
    refused (exit 2, one line naming both ways out) and nothing is written."""
    run = runner.subtract_run()
    check(run)
    rc, cap, out = _export_nir(runner, run.run_dir, "subtract.nir", capsys)
    assert rc == 2, cap
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spikelfp export: error: "), cap.err
    assert "--allow-reset-mismatch" in lines[0], lines[0]
    assert "--reset zero" in lines[0] or "reset='zero'" in lines[0], lines[0]
    assert not out.exists()
    net, _, _ = load_checkpoint(run.run_dir / "last.pt")
    assert nir_roundtrip_agreement(net, (1, 8, 8), 25)["applies"] is False


def test_quick_start_exports_identical_spikes(runner: Runner, capsys):
    """The quick start as written (LFP's defaults: reset 'zero') exports to NIR and verifies with
    identical spikes (agreement 1.0)."""
    run = runner.quick_start()
    check(run)
    rc, cap, out = _export_nir(runner, run.run_dir, "zero.nir", capsys)
    assert rc == 0, cap
    assert out.is_file()
    verify = [s for s in cap.out.splitlines() if s.startswith("verify: ")]
    assert len(verify) == 1, cap.out
    assert verify[0].startswith("verify: spike agreement 1.000000 (0 of ") and verify[0].endswith("[identical]")
    net, cfg, _ = load_checkpoint(run.run_dir / "last.pt")
    res = nir_roundtrip_agreement(net, (1, 8, 8), int(cfg["steps"]))
    assert res["applies"] and res["agreement"] == 1.0 and res["identical"], res
