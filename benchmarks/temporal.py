"""Temporal benchmark: LFP vs surrogate BPTT on the generated ``timing`` task, per neuron model.

    python benchmarks/temporal.py accuracy --seeds 0 1 2 --json temporal.json
    python benchmarks/temporal.py accuracy --nets lif rcuba --trainers lfp --seeds 0 --epochs 5
    python benchmarks/temporal.py summary temporal_*.json

The task (``timing``, ``spikelfp/data/temporal.py``): pulses of two channel groups G0, G1 at a
random onset after a 20-step noise prefix, 15-30 steps apart (T = 100); class = which fired
first. Nets
(``--nets``), each an MLP 32 - hidden - 2 (``--hidden``, default 64):

    lif    feed-forward LIF                 cuba   CUBA LIF (alpha = --alpha, default 0.9)
    rlif   recurrent LIF (V in the hidden)  rcuba  recurrent CUBA LIF

``accuracy``: trains each (net, trainer, seed) with :func:`spikelfp.train.loop.train` (a fresh
run folder under ``--out``) and reports the final test accuracy, and the accuracy of the same
trained net on the test samples with ``--prepend`` (default 30) noise-only steps in front (the
onset check: a net that used the time since the start falls to chance there). Prints one line
per run and a table of mean +/- std over seeds; ``--json`` writes every number. Runs can be split
over processes (``--nets`` / ``--trainers`` / ``--seeds``) and merged by ``summary``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikelfp.core.readout import predict  # noqa: E402
from spikelfp.data.temporal import TEST_SEED, TEST_SIZE, make_timing  # noqa: E402
from spikelfp.train.checkpoint import load_model  # noqa: E402
from spikelfp.train.config import resolve  # noqa: E402
from spikelfp.train.loop import train  # noqa: E402

NETS = {
    "lif": {"neuron": "lif", "recurrent": False},
    "cuba": {"neuron": "cuba", "recurrent": False},
    "rlif": {"neuron": "lif", "recurrent": True},
    "rcuba": {"neuron": "cuba", "recurrent": True},
}


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load": os.getloadavg() if hasattr(os, "getloadavg") else None}


def parse_set(text: str) -> dict:
    out = {}
    for part in filter(None, (text or "").split(",")):
        k, v = part.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


@torch.no_grad()
def accuracy_on(net, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    """Test accuracy of ``net`` on sequences ``x [n, T, C]`` (argmax spike count readout)."""
    net.eval()
    correct = 0
    for i in range(0, len(y), batch):
        trace = net.run(x[i:i + batch].transpose(0, 1))
        correct += int((predict(trace.output, trace.membrane) == y[i:i + batch]).sum())
    return correct / len(y)


def base_config(args) -> dict:
    cfg = {"dataset": "timing", "steps": args.steps, "model": "mlp", "hidden": [args.hidden],
           "epochs": args.epochs, "batch_size": 32, "val_fraction": 0.0, "limit": args.limit,
           "out": args.out, "progress": "off", "log_updates_every": 0, "schedule": "cosine",
           # the settings the README's numbers were measured with (the generic defaults before
           # the lfp trainer got its own: reset zero, epsilon 0.1, layer scope, clip 2, Adam 2e-3)
           "reset": "subtract", "lr": 1e-3, "epsilon": 1e-6, "normalize": "step", "clip_norm": None}
    cfg.update(parse_set(args.set))
    return cfg


def run_accuracy(args) -> dict:
    results = []
    for net_name in args.nets:
        for trainer in args.trainers:
            for seed in args.seeds:
                cfg = dict(base_config(args), **NETS[net_name], trainer=trainer, seed=seed)
                if cfg["neuron"] == "cuba":
                    cfg["alpha"] = args.alpha
                t0 = time.perf_counter()
                res = train(resolve(None, cfg), echo=lambda s: None)
                net, _ = load_model(Path(res["run_dir"]) / "last.pt")
                x, y = make_timing(TEST_SIZE, cfg["steps"], TEST_SEED, prepend=args.prepend)
                shifted = accuracy_on(net, x, y)
                row = {"net": net_name, "trainer": trainer, "seed": seed,
                       "test_acc": res["metrics"]["test_acc"], "prepend": args.prepend,
                       "test_acc_prepended": shifted, "train_acc": res["metrics"].get("train_acc"),
                       "seconds": time.perf_counter() - t0, "run_dir": str(res["run_dir"])}
                results.append(row)
                print(f"{net_name:6s} {trainer:9s} seed {seed}: test {100 * row['test_acc']:.1f} %  "
                      f"with {args.prepend} noise steps prepended {100 * shifted:.1f} %  "
                      f"({row['seconds']:.0f} s)", flush=True)
                if args.json:  # write as we go: a killed process keeps its finished runs
                    Path(args.json).write_text(json.dumps(
                        {"command": " ".join(sys.argv), "machine": machine(), "config": base_config(args),
                         "alpha": args.alpha, "results": results}, indent=1, default=str))
    table(results)
    return {"config": base_config(args), "alpha": args.alpha, "results": results}


def table(results) -> None:
    """Mean +/- std over seeds per (net, trainer), plain and with the noise prefix."""
    def ms(v):
        return f"{100 * statistics.mean(v):5.1f} +/- {100 * (statistics.stdev(v) if len(v) > 1 else 0):4.1f}"

    keys = sorted({(r["net"], r["trainer"]) for r in results},
                  key=lambda k: (list(NETS).index(k[0]), k[1]))
    print(f"{'net':6s} {'trainer':9s} {'seeds':>5s}  {'test %':>13s}  {'prepended %':>13s}")
    for net_name, trainer in keys:
        rows = [r for r in results if r["net"] == net_name and r["trainer"] == trainer]
        print(f"{net_name:6s} {trainer:9s} {len(rows):5d}  {ms([r['test_acc'] for r in rows])}  "
              f"{ms([r['test_acc_prepended'] for r in rows])}")


def run_summary(args) -> dict:
    results = []
    for f in args.files:
        results += json.loads(Path(f).read_text())["results"]
    table(results)
    return {"results": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--json", help="write the results here")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    a.add_argument("--trainers", nargs="+", default=["lfp", "surrogate"])
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--steps", type=int, default=100, help="T of the task (>= 53)")
    a.add_argument("--hidden", type=int, default=64)
    a.add_argument("--alpha", type=float, default=0.9, help="current decay of the CUBA nets")
    a.add_argument("--epochs", type=int, default=20)
    a.add_argument("--limit", type=int, default=2000, help="training samples (of 4,000)")
    a.add_argument("--prepend", type=int, default=30, help="noise steps for the onset check")
    a.add_argument("--set", help="config overrides for every run, e.g. lr=0.002,rule=zplus")
    a.add_argument("--out", default="runs/bench_temporal")
    s = sub.add_parser("summary")
    s.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"command": " ".join(sys.argv), "machine": machine(),
           **{"accuracy": run_accuracy, "summary": run_summary}[args.cmd](args)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
