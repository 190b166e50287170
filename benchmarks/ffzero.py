"""FFzero benchmarks: accuracy over seeds and variants, cost of one step, estimator alignment.

    python benchmarks/ffzero.py accuracy --config configs/digits_ffzero.yaml --seeds 0 1 2
    python benchmarks/ffzero.py accuracy --config configs/digits_ffzero.yaml --seeds 0 \
        --variant ff_directions=8 --variant ff_schedule=sequential,ff_directions=8
    python benchmarks/ffzero.py accuracy --config configs/mnist_mlp_ffzero.yaml \
        --data-root /work/shared/data/mnist --seeds 0 1 2
    python benchmarks/ffzero.py step --widths 784 256 10 --steps 10 25 50 100 --directions 64
    python benchmarks/ffzero.py alignment --widths 64 128 --directions 8 64 256 1024

``accuracy``: trains the preset once per (variant, seed) with :func:`spikelfp.train.loop.train`
and prints the final test accuracy per run and the mean/std per variant (a variant is a
comma-separated list of ``key=value`` config overrides; values parsed as YAML).
``step``: per T, forward evaluations per step (2K per trained layer + the network's forward),
median step time and the step's peak memory (:func:`spikelfp.diagnostics.memory.peak_memory`).
``alignment``: on the smooth stand-in (the margin loss on a linear layer z = x W^T + b, autograd
as the reference) the cosine between the FFzero estimate (one step's K directions) and the true
gradient, per K and width (it falls like sqrt(K / d)).
``--json PATH`` writes every number with the machine description.
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
import torch.nn.functional as Fn
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikelfp.core.ffzero import (  # noqa: E402
    cosine_scores, direction_currents, estimate_improvement, layer_prototypes, margin_loss,
    sample_directions,
)
from spikelfp.core.synapse import LinearOps  # noqa: E402
from spikelfp.diagnostics.memory import peak_memory  # noqa: E402
from spikelfp.nn import Sequential  # noqa: E402
from spikelfp.nn.layers import LIFLinear  # noqa: E402
from spikelfp.train.config import load_yaml, resolve  # noqa: E402
from spikelfp.train.ffzero import FFzeroTrainer, forward_evaluations  # noqa: E402
from spikelfp.train.loop import train  # noqa: E402
from spikelfp.train.protocol import Batch, TrainContext  # noqa: E402


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def parse_variant(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def run_accuracy(args) -> dict:
    base = load_yaml(args.config)
    if args.data_root:
        base["data_root"] = args.data_root
    for k, v in parse_variant(args.set or "").items():
        base[k] = v
    variants = [parse_variant(v) for v in (args.variant or [""])]
    results = []
    for var in variants:
        accs = []
        for seed in args.seeds:
            cfg = dict(base, **var, seed=seed, out=args.out, progress="off", log_updates_every=0)
            t0 = time.perf_counter()
            res = train(resolve(None, cfg), echo=lambda s: print("   ", s, flush=True))
            row = res["metrics"]
            accs.append(row["test_acc"])
            results.append({"variant": var, "seed": seed, "test_acc": row["test_acc"],
                            "seconds": time.perf_counter() - t0, "run_dir": str(res["run_dir"]),
                            "last_row": row})
            print(f"{var or 'preset'} seed {seed}: test {row['test_acc']:.4f}", flush=True)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"== {var or 'preset'}: {100 * statistics.mean(accs):.1f} +/- {100 * sd:.1f} % "
              f"over seeds {args.seeds}", flush=True)
    return {"config": args.config, "results": results}


def _mlp(widths, dtype=torch.float32):
    torch.manual_seed(0)
    return Sequential(*[LIFLinear(a, b, dtype=dtype) for a, b in zip(widths[:-1], widths[1:])])


def run_step(args) -> dict:
    widths = args.widths
    net = _mlp(widths)
    rows = []
    for T in args.steps:
        cfg = resolve(None, {"trainer": "ffzero", "ff_directions": args.directions,
                             "hidden": widths[1:-1] or [16]})
        tr = FFzeroTrainer(cfg, net, TrainContext(1000, widths[-1], (widths[0],), False))
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch, widths[0], generator=g) * 2 - 1
        y = torch.randint(0, widths[-1], (args.batch,), generator=g)
        batch = Batch(x, y, torch.arange(args.batch), T, 0, 0)
        tr.step(batch)
        times = []
        for i in range(args.repeats):
            for p in net.parameters():
                p.grad = None
            t0 = time.perf_counter()
            tr.step(batch._replace(global_step=i))
            times.append(time.perf_counter() - t0)
        for p in net.parameters():
            p.grad = None
        mem = peak_memory(lambda tr=tr, batch=batch: tr.step(batch))
        row = {"T": T, "K": args.directions, "layers": len(widths) - 1,
               "forward_evaluations_per_step": forward_evaluations(len(widths) - 1, args.directions) + 1,
               "step_seconds_median": statistics.median(times), "peak_bytes": mem}
        rows.append(row)
        print(f"T={T:4d}  K={args.directions}  forward evals/step {row['forward_evaluations_per_step']}"
              f"  step {1000 * row['step_seconds_median']:.1f} ms  peak {mem / 2**20:.2f} MiB", flush=True)
    return {"widths": widths, "batch": args.batch, "rows": rows}


def alignment(n_in: int, n_out: int, K: int, classes: int = 10, batch: int = 64,
              eps: float = 1e-3, seed: int = 0) -> float:
    """Cosine between one FFzero estimate (K directions) and the autograd gradient of the margin
    loss on a linear layer z = x W^T + b (the smooth stand-in)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n_in, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.arange(batch) % classes
    W = (torch.rand(n_out, n_in, generator=g, dtype=torch.float64) * 2 - 1) / n_in ** 0.5
    b = torch.zeros(n_out, dtype=torch.float64)
    P = layer_prototypes(classes, n_out, n_out > classes, torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    Wr, br = W.clone().requires_grad_(), b.clone().requires_grad_()
    margin_loss(cosine_scores(Fn.linear(x, Wr, br), P), y, 0.3).backward()
    true = torch.cat([Wr.grad.flatten(), br.grad])
    U = sample_directions(K, [W.shape, b.shape], g, dtype=torch.float64)
    I = Fn.linear(x, W, b)
    dI = direction_currents(LinearOps(), x, U[0], U[1])
    losses = margin_loss(cosine_scores(torch.cat([I + eps * dI, I - eps * dI]), P), y, 0.3)
    G = estimate_improvement(losses, U, eps)
    est = -torch.cat([G[0].flatten(), G[1]])
    return float(torch.dot(est, true) / (est.norm() * true.norm()))


def run_alignment(args) -> dict:
    rows = []
    n_in = args.widths[0]
    for n_out in args.widths[1:]:
        for K in args.directions_list:
            cos = statistics.mean(alignment(n_in, n_out, K, seed=s) for s in range(3))
            d = n_in * n_out + n_out
            rows.append({"n_in": n_in, "n_out": n_out, "d": d, "K": K, "cosine": cos,
                         "sqrt_K_over_d": (K / d) ** 0.5})
            print(f"{n_in}->{n_out} (d={d})  K={K:5d}  cosine {cos:.3f}  sqrt(K/d) {(K / d) ** 0.5:.3f}",
                  flush=True)
    return {"rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--json", help="write the results here")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--config", required=True)
    a.add_argument("--data-root")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--set", help="overrides for every run, e.g. epochs=1,limit=10000")
    a.add_argument("--variant", action="append", help="key=value[,key=value]; repeatable")
    a.add_argument("--out", default="runs/bench_ffzero")
    s = sub.add_parser("step")
    s.add_argument("--widths", type=int, nargs="+", default=[784, 256, 10])
    s.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    s.add_argument("--directions", type=int, default=64)
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--repeats", type=int, default=5)
    al = sub.add_parser("alignment")
    al.add_argument("--widths", type=int, nargs="+", default=[64, 32, 128, 512])
    al.add_argument("--directions", dest="directions_list", type=int, nargs="+",
                    default=[8, 64, 256, 1024])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fn = {"accuracy": run_accuracy, "step": run_step, "alignment": run_alignment}[args.cmd]
    out = {"command": " ".join(sys.argv), "machine": machine(), **fn(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
