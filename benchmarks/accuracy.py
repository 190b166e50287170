"""MNIST accuracy benchmark: LFP-epsilon vs surrogate BPTT on the paper's 784-1000-10 LIF MLP.

Not run by CI. Trains every (trainer, T, seed) combination with the settings in
``configs/mnist_mlp_lfp.yaml`` and ``configs/mnist_mlp_surrogate.yaml`` (same net, epochs and
batch size; the LFP preset resets to zero since 2026-11-29, the surrogate one subtracts), then reports test accuracy mean +- std per epoch, seconds per epoch and the
hidden-layer spike rate of each trained net.

    python benchmarks/accuracy.py --data-root ../shared/data/mnist --steps 15 25 --seeds 0 1 2 \
        --device cuda --jobs 4 --json benchmarks/results/accuracy.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"lfp": ROOT / "configs/mnist_mlp_lfp.yaml", "surrogate": ROOT / "configs/mnist_mlp_surrogate.yaml"}


def _one(job):
    trainer, steps, seed, args = job
    if args["threads"]:
        import torch

        torch.set_num_threads(args["threads"])
    from spikelfp.train.config import load_yaml, resolve
    from spikelfp.train.loop import train

    cfg = load_yaml(CONFIGS[trainer])
    cfg.update(steps=steps, seed=seed, device=args["device"], data_root=args["data_root"],
               out=args["out"], run_name=f"{trainer}-T{steps}-s{seed}-{int(time.time())}",
               progress="off", log_updates_every=0)
    if args["epochs"]:
        cfg["epochs"] = args["epochs"]
    if args["limit"]:
        cfg["limit"] = args["limit"]
    res = train(resolve(None, cfg), echo=lambda s: print(f"[{trainer} T={steps} seed={seed}] {s}", flush=True))
    rows = [json.loads(line) for line in open(Path(res["run_dir"]) / "metrics.jsonl")]
    return {"trainer": trainer, "steps": steps, "seed": seed, "run_dir": str(res["run_dir"]),
            "test_acc": [r["test_acc"] for r in rows], "epoch_seconds": [r["epoch_seconds"] for r in rows],
            "hidden_spike_rate": rows[-1]["spike_rate"][0]}


def _fmt(xs):
    if len(xs) == 1:
        return f"{100 * xs[0]:.2f}"
    return f"{100 * statistics.mean(xs):.2f} +- {100 * statistics.stdev(xs):.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--steps", type=int, nargs="+", default=[15, 25])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trainers", nargs="+", default=["lfp", "surrogate"], choices=sorted(CONFIGS))
    p.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    p.add_argument("--limit", type=int, default=None, help="training samples (quick runs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (CPU)")
    p.add_argument("--out", default="/tmp/spikelfp-accuracy-runs")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    shared = {"device": a.device, "data_root": a.data_root, "out": a.out, "epochs": a.epochs, "limit": a.limit,
              "threads": a.threads}
    jobs = [(t, s, seed, shared) for t in a.trainers for s in a.steps for seed in a.seeds]
    t0 = time.time()
    if a.jobs > 1:
        with mp.get_context("spawn").Pool(a.jobs) as pool:
            results = pool.map(_one, jobs)
    else:
        results = [_one(j) for j in jobs]
    import torch

    machine = {"torch": torch.__version__, "device": a.device,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "parallel_jobs": a.jobs, "threads": a.threads, "total_seconds": time.time() - t0}
    print(f"\nMNIST 784-1000-10 LIF MLP, beta 0.9, constant input, {machine}\n")
    print("| trainer | T | epoch | test acc % (mean +- std over seeds) | s/epoch | hidden spike rate |")
    print("|---|---|---|---|---|---|")
    summary = []
    for t in a.trainers:
        for s in a.steps:
            rs = [r for r in results if r["trainer"] == t and r["steps"] == s]
            n_ep = min(len(r["test_acc"]) for r in rs)
            for e in range(n_ep):
                accs = [r["test_acc"][e] for r in rs]
                secs = statistics.median(r["epoch_seconds"][e] for r in rs)
                rate = _fmt([r["hidden_spike_rate"] for r in rs]) if e == n_ep - 1 else ""
                print(f"| {t} | {s} | {e + 1} | {_fmt(accs)} | {secs:.1f} | {rate} |")
                summary.append({"trainer": t, "steps": s, "epoch": e + 1, "acc": accs, "seconds": secs})
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"machine": machine, "runs": results, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
