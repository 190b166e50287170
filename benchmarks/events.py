#!/usr/bin/env python
"""LFP-epsilon vs surrogate-gradient BPTT on N-MNIST (event frames), same net, same epochs, seeds.

Not run by CI. Usage (from the repository root)::

    python benchmarks/events.py                                   # the shared N-MNIST subset
    python benchmarks/events.py --data-root DIR --seeds 0 1 2 --json out.json
    python benchmarks/events.py --epochs 4 --limit 320 --lrs 0.001 0.01  # a few minutes on 2 cores

Each (trainer, seed) is one ``spikelfp.train.loop.train`` run of the preset
``configs/nmnist_conv_lfp.yaml`` (or ``--config``): the data set's train split for training
(``val_fraction 0``), its test split for testing, the same LIF conv net, optimizer, schedule and
epochs; only ``trainer`` differs (``lfp`` with the preset's rule, reward and epsilon, or
``surrogate`` with its surrogate and loss keys). Flags given on the command line override the
preset for both trainers. Frames are binned by ``spikelfp.data.events`` (``n_time_bins =
--steps``, counts) and cached in memory, so the first epoch of every run includes reading and
binning the events and the later ("cached") epochs do not. Seconds per epoch are the training part of the epoch (``epoch_seconds`` in metrics.csv,
without evaluation).

Prints a markdown table (test accuracy after the last epoch, mean +- sd over seeds, and seconds
per epoch) and writes every number plus the settings and machine facts to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spikelfp.train.config import load_yaml, resolve  # noqa: E402
from spikelfp.train.loop import train  # noqa: E402


def _default_root() -> str:
    return str(REPO.parent / "shared" / "data" / "nmnist")


PRESET = REPO / "configs" / "nmnist_conv_lfp.yaml"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(PRESET), help="base config for both trainers")
    p.add_argument("--data-root", default=_default_root())
    p.add_argument("--dataset", default=None)
    p.add_argument("--trainers", nargs="+", default=["lfp", "surrogate"], choices=["lfp", "surrogate"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="time bins per sample (T)")
    p.add_argument("--channels", type=int, nargs="+", default=None)
    p.add_argument("--hidden", type=int, nargs="*", default=None)
    p.add_argument("--pool-input", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--schedule", default=None, help="cosine, step, onecycle or none")
    p.add_argument("--lrs", type=float, nargs="+", default=None,
                   help="Adam learning rates; every trainer runs with each (one table row each)")
    p.add_argument("--limit", type=int, default=None, help="training samples (default: all)")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    p.add_argument("--json", default="events_benchmark.json")
    return p.parse_args(argv)


def base_config(args) -> dict:
    """The preset with the command line's overrides; shared by both trainers."""
    cfg = load_yaml(args.config)
    flags = {"dataset": args.dataset, "epochs": args.epochs, "steps": args.steps,
             "channels": args.channels, "hidden": args.hidden, "pool_input": args.pool_input,
             "batch_size": args.batch_size, "schedule": args.schedule, "limit": args.limit,
             "test_limit": args.test_limit}
    cfg.update({k: v for k, v in flags.items() if v is not None})
    cfg.update(data_root=args.data_root, val_fraction=0.0, device=args.device,
               progress="off", log_updates_every=0)
    return resolve(None, cfg)


def run_one(args, trainer: str, seed: int, lr: float, out: str):
    cfg = dict(base_config(args), trainer=trainer, lr=lr, seed=seed, out=out,
               run_name=f"{trainer}-lr{lr:g}-seed{seed}")
    t0 = time.perf_counter()
    res = train(cfg, echo=lambda s: None)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in open(Path(res["run_dir"]) / "metrics.jsonl")]
    return {"trainer": trainer, "lr": lr, "seed": seed, "wall_seconds": wall,
            "test_acc": [r["test_acc"] for r in rows], "train_acc": [r["train_acc"] for r in rows],
            "epoch_seconds": [r["epoch_seconds"] for r in rows]}


def summarize(runs, trainer, lr):
    rs = [r for r in runs if r["trainer"] == trainer and r["lr"] == lr]
    final = [r["test_acc"][-1] for r in rs]
    first = [r["epoch_seconds"][0] for r in rs]
    cached = [s for r in rs for s in r["epoch_seconds"][1:]]
    sd = statistics.stdev(final) if len(final) > 1 else 0.0
    return {"trainer": trainer, "lr": lr, "test_acc_mean": statistics.mean(final), "test_acc_sd": sd,
            "test_acc_per_seed": final, "first_epoch_s": statistics.mean(first),
            "cached_epoch_s": statistics.mean(cached) if cached else None}


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="spikelfp-events-bench-")
    base = base_config(args)
    lrs = args.lrs or [base["lr"]]
    runs = []
    for seed in args.seeds:
        for lr in lrs:
            for trainer in args.trainers:    # interleaved so that machine load hits all alike
                r = run_one(args, trainer, seed, lr, out)
                print(f"{trainer:9s} lr {lr:g} seed {seed}: test acc per epoch {['%.3f' % a for a in r['test_acc']]}, "
                      f"s/epoch {['%.1f' % s for s in r['epoch_seconds']]}", flush=True)
                runs.append(r)
    summary = [summarize(runs, t, lr) for t in args.trainers for lr in lrs]
    name = {"lfp": f"LFP ({base['rule']}, epsilon {base['epsilon']:g})",
            "surrogate": f"surrogate BPTT ({base['surrogate']}, {base['loss']})"}
    print()
    print(f"{base['dataset']}, {base['model']} channels={base['channels']} hidden={base['hidden']} "
          f"pool_input={base['pool_input']}, T={base['steps']} bins, {base['epochs']} epochs, batch "
          f"{base['batch_size']}, {base['optimizer']}, schedule {base['schedule']}, normalize "
          f"{base['normalize']}, seeds {args.seeds}, train limit {base.get('limit')}, "
          f"{torch.get_num_threads()} torch threads on {args.device}")
    print()
    print("| trainer | lr | test acc (mean ± sd) | per seed | s/epoch, first (binning) | s/epoch, cached |")
    print("|---|---|---|---|---|---|")
    for s in summary:
        cached = f"{s['cached_epoch_s']:.1f}" if s["cached_epoch_s"] is not None else "-"
        print(f"| {name[s['trainer']]} | {s['lr']:g} | {s['test_acc_mean']:.3f} ± {s['test_acc_sd']:.3f} | "
              f"{', '.join('%.3f' % a for a in s['test_acc_per_seed'])} | {s['first_epoch_s']:.1f} | {cached} |")
    facts = {"python": platform.python_version(), "torch": torch.__version__,
             "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
             "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
             "platform": platform.platform()}
    result = {"settings": vars(args), "config": base, "machine": facts, "summary": summary, "runs": runs}
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.json}; run folders under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
