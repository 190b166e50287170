#!/usr/bin/env python
"""F3 benchmark: accuracy of the F3 variants (and DRTP, DFA, LFP, surrogate BPTT) over seeds, and
the time and peak memory of one training step against T.

Not run by CI. From the repository root::

    # accuracy (runs train() per variant and seed; digits takes seconds per run, MNIST minutes)
    python benchmarks/f3.py accuracy --dataset digits --variants f3 f3-ratevar drtp dfa lfp \
        --seeds 0 1 2 --jobs 2 --threads 1
    python benchmarks/f3.py accuracy --dataset mnist --data-root ../shared/data/mnist \
        --variants f3 drtp dfa --seeds 0 1 2 --jobs 2 --threads 1 --json /tmp/f3_mnist.json
    # the same table from run folders trained elsewhere (e.g. with `spikelfp train`)
    python benchmarks/f3.py table /tmp/f3mnist/*
    # one training step (784-1000-10, batch 128, constant input): time and peak memory
    python benchmarks/f3.py step --steps 10 25 100 --threads 1

Variants: ``f3`` is the preset (``configs/digits_f3.yaml`` / ``configs/mnist_mlp_f3.yaml``);
``f3-<local>`` sets ``f3_local`` (none, spike, rate, ratevar); ``f3-softmax`` / ``f3-onehot`` the
delayed_softmax / delayed_onehot error; ``drtp`` = ``f3_error: target`` and ``dfa`` =
``f3_error: current`` on the same preset; ``lfp`` and ``surrogate`` use the LFP / surrogate preset
of the data set (same net, epochs, batch). The table gives test accuracy (mean +- sd over
seeds) after the last epoch, s/epoch, and the paper's "gap closed" (acc - DRTP) / (BP - DRTP)
with the surrogate BPTT as BP where both were run.

The step rows: time of ``opt.zero_grad(); trainer.step(batch); opt.step()`` (Adam) for F3 (local
none, ratevar, spike), DRTP, DFA and LFP (the MNIST preset's settings), median over rounds (each
round calls every method once, the order rotating, so load changes hit all alike); peak
memory of ``trainer.step(batch)`` alone (gradients set to None before it) by
:func:`spikelfp.diagnostics.memory.peak_memory` (CPU: allocations between operators recorded by
the profiler; CUDA: the allocator peak).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PRESETS = {
    "digits": {"f3": "configs/digits_f3.yaml", "lfp": "configs/digits_quick.yaml",
               "surrogate": "configs/digits_quick.yaml"},
    "mnist": {"f3": "configs/mnist_mlp_f3.yaml", "lfp": "configs/mnist_mlp_lfp.yaml",
              "surrogate": "configs/mnist_mlp_surrogate.yaml"},
}
VARIANTS = {
    "f3": ("f3", {}),
    "f3-none": ("f3", {"f3_local": "none"}),
    "f3-spike": ("f3", {"f3_local": "spike"}),
    "f3-rate": ("f3", {"f3_local": "rate"}),
    "f3-ratevar": ("f3", {"f3_local": "ratevar"}),
    "f3-softmax": ("f3", {"f3_error": "delayed_softmax"}),
    "f3-onehot": ("f3", {"f3_error": "delayed_onehot"}),
    "drtp": ("f3", {"f3_error": "target"}),
    "dfa": ("f3", {"f3_error": "current"}),
    "lfp": ("lfp", {"trainer": "lfp"}),
    "surrogate": ("surrogate", {"trainer": "surrogate"}),
}


# ----------------------------------------------------------------------------- accuracy

def _one(job):
    variant, dataset, seed, a = job
    import torch

    if a["threads"]:
        torch.set_num_threads(a["threads"])
    from spikelfp.train.config import load_yaml, resolve
    from spikelfp.train.loop import train

    preset, over = VARIANTS[variant]
    cfg = load_yaml(ROOT / PRESETS[dataset][preset])
    cfg.update(over)
    cfg.update(seed=seed, device=a["device"], out=a["out"], progress="off", log_updates_every=0,
               run_name=f"{dataset}-{variant}-s{seed}-{int(time.time() * 1000) % 10**8}")
    if a["data_root"]:
        cfg["data_root"] = a["data_root"]
    for k in ("epochs", "limit", "steps"):
        if a[k]:
            cfg[k] = a[k]
    res = train(resolve(None, cfg), echo=lambda s: print(f"[{variant} seed {seed}] {s}", flush=True))
    return _read_run(Path(res["run_dir"]), variant)


def _label(cfg) -> str:
    t = cfg.get("trainer")
    if t != "f3":
        return t
    err = cfg.get("f3_error", "delayed")
    base = {"target": "drtp", "current": "dfa"}.get(err, "f3")
    if err in ("delayed_softmax", "delayed_onehot"):
        base += "-" + err.split("_")[1]
    return f"{base} ({cfg.get('f3_local', 'none')})"


def _read_run(run_dir: Path, variant=None):
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"variant": variant or _label(cfg), "seed": cfg["seed"], "run_dir": str(run_dir),
            "epochs_done": len(rows), "epochs": cfg["epochs"], "steps": cfg["steps"],
            "test_acc": [r["test_acc"] for r in rows],
            "epoch_seconds": [r["epoch_seconds"] for r in rows],
            "hidden_spike_rate": rows[-1]["spike_rate"][0] if rows else None}


def _ms(xs):
    xs = [100 * x for x in xs]
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def table(results, bp_acc=None) -> str:
    groups = {}
    for r in results:  # a run that has not finished its epochs is shown apart
        label = r["variant"] if r["epochs_done"] >= r["epochs"] else f"{r['variant']} [unfinished]"
        groups.setdefault(label, []).append(r)
    final = {v: [r["test_acc"][-1] for r in rs if r["test_acc"]] for v, rs in groups.items()}
    done = {v: a for v, a in final.items() if a and "unfinished" not in v}
    drtp = next((statistics.mean(a) for v, a in done.items() if v.startswith("drtp")), None)
    bp = bp_acc if bp_acc is not None else next(
        (statistics.mean(a) for v, a in done.items() if v.startswith("surrogate")), None)
    lines = ["| variant | runs (seeds) | epochs done | test acc % (last epoch) | gap closed | s/epoch | hidden rate |",
             "|---|---|---|---|---|---|---|"]
    for v, rs in groups.items():
        acc = final[v]
        gap = (f"{(statistics.mean(acc) - drtp) / (bp - drtp):.2f}"
               if acc and drtp is not None and bp is not None and bp != drtp else "")
        secs = [s for r in rs for s in r["epoch_seconds"]]
        done = sorted({r["epochs_done"] for r in rs})
        lines.append(f"| {v} | {len(rs)} ({', '.join(str(r['seed']) for r in rs)}) | "
                     f"{'/'.join(map(str, done))} of {rs[0]['epochs']} | {_ms(acc) if acc else ''} | {gap} | "
                     f"{statistics.median(secs):.1f} | {100 * statistics.mean(r['hidden_spike_rate'] for r in rs):.1f} % |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- step time / memory

def step_benchmark(a):
    import torch

    import spikelfp.nn as slnn
    from spikelfp.diagnostics.memory import peak_memory
    from spikelfp.train.config import load_yaml, resolve
    from spikelfp.train.f3 import F3Trainer
    from spikelfp.train.lfp import LFPTrainer
    from spikelfp.train.protocol import Batch, TrainContext

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    net = slnn.Sequential(slnn.Flatten(1), slnn.LIFLinear(784, 1000), slnn.LIFLinear(1000, 10)).to(dev)
    ctx = TrainContext(60000, 10, (784,), False, dev)
    g = torch.Generator().manual_seed(1)
    # MNIST-like frames: mostly background -1, some ink up to 1
    x = torch.where(torch.rand(a.batch, 784, generator=g) < 0.15, torch.rand(a.batch, 784, generator=g), torch.zeros(1))
    x = (x * 2 - 1).to(dev)
    y = torch.randint(0, 10, (a.batch,), generator=g).to(dev)
    idx = torch.arange(a.batch, device=dev)
    lfp_cfg = load_yaml(ROOT / PRESETS["mnist"]["lfp"])
    lfp_keys = {k: lfp_cfg[k] for k in ("rule", "epsilon", "normalize", "reward") if k in lfp_cfg}
    methods = {
        "F3 (none)": lambda: F3Trainer(resolve(None, dict(trainer="f3", f3_local="none")), net, ctx),
        "F3 (ratevar)": lambda: F3Trainer(resolve(None, dict(trainer="f3", f3_local="ratevar")), net, ctx),
        "F3 (spike)": lambda: F3Trainer(resolve(None, dict(trainer="f3", f3_local="spike")), net, ctx),
        "DRTP (none)": lambda: F3Trainer(resolve(None, dict(trainer="f3", f3_error="target")), net, ctx),
        "DFA (none)": lambda: F3Trainer(resolve(None, dict(trainer="f3", f3_error="current")), net, ctx),
        "LFP (mnist preset)": lambda: LFPTrainer(resolve(None, dict(trainer="lfp", **lfp_keys)), net, ctx),
    }
    opt = torch.optim.Adam(net.parameters(), lr=1e-6)
    out = []
    for T in a.steps:
        b = Batch(x, y, idx, T)
        trainers = {name: make() for name, make in methods.items()}

        def call(tr):
            opt.zero_grad(set_to_none=True)
            tr.step(b)
            opt.step()

        times = {name: [] for name in trainers}
        for r in range(a.warmup + a.repeats):  # one call of every method per round, order rotating
            names = list(trainers)
            names = names[r % len(names):] + names[:r % len(names)]
            for name in names:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                call(trainers[name])
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if r >= a.warmup:
                    times[name].append(time.perf_counter() - t0)
        for name, tr in trainers.items():
            mem = None
            if not a.no_memory:  # the trainer step alone (grads set to None before it)
                opt.zero_grad(set_to_none=True)
                mem = peak_memory(lambda tr=tr: tr.step(b), dev)
            med = statistics.median(times[name])
            out.append({"T": T, "method": name, "median_ms": 1000 * med, "peak_bytes": mem,
                        "times_ms": [1000 * v for v in times[name]]})
            print(f"T={T:4d}  {name:20s} {1000 * med:8.1f} ms   "
                  f"peak {'' if mem is None else f'{mem / 2**20:.2f} MiB'}", flush=True)
    return out, str(dev)


def step_table(rows) -> str:
    steps = sorted({r["T"] for r in rows})
    names = list(dict.fromkeys(r["method"] for r in rows))
    get = {(r["method"], r["T"]): r for r in rows}
    head = "| method | " + " | ".join(f"ms T={T}" for T in steps) + " | " + \
        " | ".join(f"peak MiB T={T}" for T in steps) + " |"
    lines = [head, "|---" * (1 + 2 * len(steps)) + "|"]
    for n in names:
        ms = [f"{get[n, T]['median_ms']:.1f}" for T in steps]
        mem = [("" if get[n, T]["peak_bytes"] is None else f"{get[n, T]['peak_bytes'] / 2**20:.2f}")
               for T in steps]
        lines.append(f"| {n} | " + " | ".join(ms) + " | " + " | ".join(mem) + " |")
    return "\n".join(lines)


def _machine():
    import torch

    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg": os.getloadavg()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    acc = sub.add_parser("accuracy", help="train variants over seeds")
    acc.add_argument("--dataset", choices=sorted(PRESETS), default="digits")
    acc.add_argument("--data-root", default=None)
    acc.add_argument("--variants", nargs="+", default=["f3", "drtp", "dfa"], choices=sorted(VARIANTS))
    acc.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    acc.add_argument("--epochs", type=int, default=None)
    acc.add_argument("--limit", type=int, default=None)
    acc.add_argument("--steps", type=int, default=None, help="override T")
    acc.add_argument("--device", default="auto")
    acc.add_argument("--jobs", type=int, default=1)
    acc.add_argument("--threads", type=int, default=None)
    acc.add_argument("--out", default="/tmp/spikelfp-f3-runs")
    acc.add_argument("--json", default=None)
    tab = sub.add_parser("table", help="the accuracy table from run folders")
    tab.add_argument("runs", nargs="+")
    tab.add_argument("--bp-acc", type=float, default=None,
                     help="BP (surrogate BPTT) test accuracy (fraction) for the gap closed, if not among the runs")
    st = sub.add_parser("step", help="time and peak memory of one training step")
    st.add_argument("--steps", type=int, nargs="+", default=[10, 25, 100])
    st.add_argument("--batch", type=int, default=128)
    st.add_argument("--device", default="auto")
    st.add_argument("--threads", type=int, default=None)
    st.add_argument("--warmup", type=int, default=2)
    st.add_argument("--repeats", type=int, default=10)
    st.add_argument("--no-memory", action="store_true")
    st.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.cmd == "table":
        results = [_read_run(Path(r)) for r in a.runs if (Path(r) / "metrics.jsonl").is_file()]
        print(table(results, a.bp_acc))
        return 0
    if a.cmd == "step":
        rows, dev = step_benchmark(a)
        print(step_table(rows))
        if a.json:
            Path(a.json).write_text(json.dumps({"rows": rows, "device": dev, "machine": _machine()}, indent=1))
        return 0
    shared = {"device": a.device, "data_root": a.data_root, "out": a.out, "epochs": a.epochs,
              "limit": a.limit, "steps": a.steps, "threads": a.threads}
    jobs = [(v, a.dataset, s, shared) for v in a.variants for s in a.seeds]
    if a.jobs > 1:
        with mp.get_context("spawn").Pool(a.jobs) as pool:
            results = pool.map(_one, jobs)
    else:
        results = [_one(j) for j in jobs]
    print(table(results))
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "machine": _machine()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
