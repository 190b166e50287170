"""Training and evaluation loops shared by every trainer (LFP, surrogate BPTT, fine-tune).

One run = one folder::

    config.yaml      the resolved configuration
    metrics.csv      one row per epoch (also metrics.jsonl)
    updates.jsonl    update statistics every ``log_updates_every`` steps
    init.pt          the weights before training (for sign-change analyses)
    epoch_NNN.pt     snapshots every ``save_every`` epochs (if set; for sign-change curves)
    last.pt best.pt  checkpoints (atomic writes), resumable with ``--resume``

Determinism: the shuffling of epoch e and the encoder noise of batch i come from generators
seeded by (seed, e) and (seed, e, i), so a run resumed from any checkpoint (also one written
on Ctrl-C in the middle of an epoch) replays exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
import yaml
from torch.utils.data import TensorDataset
from tqdm import tqdm

from ..core.lfp import LFP
from ..core.readout import predict
from ..data.encoders import get_encoder, is_constant
from ..data.registry import DataBundle, build_data, make_loader
from ..nn.zoo import build_model
from .checkpoint import atomic_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from .config import ConfigError, model_spec, resolve
from .surrogate import LOSSES, get_surrogate

Tensor = torch.Tensor


# ---------------------------------------------------------------------------- set-up helpers

def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without CUDA -> ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available here "
                          f"(torch {torch.__version__}); use --device cpu or auto")
    return torch.device(name)


def make_optimizer(cfg: Dict[str, Any], params) -> torch.optim.Optimizer:
    name, lr, wd = cfg["optimizer"], cfg["lr"], cfg["weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def make_scheduler(cfg, optimizer, steps_per_epoch: int):
    """Returns (scheduler or None, per_batch: bool)."""
    s = cfg["schedule"]
    total = cfg["epochs"] * steps_per_epoch
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1)), True
    if s == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["lr"], total_steps=max(total, 1)), True
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg["step_size"], gamma=cfg["gamma"]), False
    return None, False


def _gen(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2 ** 62)
    return torch.Generator().manual_seed(seed)


def data_to_device(data: DataBundle, device: torch.device) -> DataBundle:
    """Move in-memory tensor data sets to ``device`` once (no host-to-device copy per batch)."""
    if device.type == "cpu":
        return data

    def move(ds):
        if isinstance(ds, TensorDataset):
            return TensorDataset(*(t.to(device) for t in ds.tensors))
        return ds

    return data._replace(train=move(data.train), val=move(data.val), test=move(data.test))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def encode_batch(x: Tensor, cfg: Dict[str, Any], sequence: bool, generator=None):
    """Static images [B, ...] in [0, 1] -> (input, steps) for ``net.run``. A constant encoder gives
    one frame and ``steps=T``; others a sequence [T, B, ...]. Sequence data [B, T, ...] is
    transposed to [T, B, ...]."""
    if sequence:
        return x.transpose(0, 1), None
    enc = get_encoder(cfg["encoder"])
    out = enc(x, cfg["steps"], generator)
    return (out, cfg["steps"]) if is_constant(cfg["encoder"]) else (out, None)


# ---------------------------------------------------------------------------- trainers

class Trainer:
    """One optimization step on a batch; LFP, surrogate BPTT, or surrogate-then-LFP."""

    def __init__(self, cfg: Dict[str, Any], net: torch.nn.Module):
        self.cfg = cfg
        self.net = net
        self.kind = cfg["trainer"]
        self.lfp = None
        if self.kind in ("lfp", "finetune"):
            self.lfp = LFP(net, rule=cfg["rule"], reward=cfg["reward"],
                           normalize=cfg["normalize"],
                           temporal=cfg["temporal"], epsilon=cfg["epsilon"], alpha=cfg["ab_alpha"],
                           beta=cfg["ab_beta"], batch_reduction=cfg["batch_reduction"],
                           clip_norm=cfg["clip_norm"], agc=cfg["agc"])
        self.spike_fn = get_surrogate(cfg["surrogate"], cfg["surrogate_slope"])
        self.loss_fn = LOSSES[cfg["loss"]]

    def uses_lfp(self, global_step: int) -> bool:
        return self.kind == "lfp" or (self.kind == "finetune" and global_step >= self.cfg["finetune_iters"])

    def step(self, x, steps, y, optimizer, global_step: int, want_stats: bool = False) -> Dict[str, Any]:
        optimizer.zero_grad(set_to_none=True)
        stats: Dict[str, Any] = {}
        if self.uses_lfp(global_step):
            res = self.lfp.compute(x, y, steps, keep_feedback=want_stats)
            self.lfp.apply(res.grads)
            out = {"reward": res.reward.sum(dim=(0, 2)).mean(),
                   "correct": (res.prediction == y).sum(), "n": len(y),
                   "rates": _rates(self.net, res.trace)}
            if want_stats:
                stats = update_statistics(self.net, res.grads, res.feedback)
        else:
            trace = self.net.run(x, steps, spike_fn=self.spike_fn)
            loss = self.loss_fn(trace.output, y)
            loss.backward()
            with torch.no_grad():
                pred = predict(trace.output, trace.membrane)
            out = {"loss": loss.detach(), "correct": (pred == y).sum(), "n": len(y),
                   "rates": _rates(self.net, trace)}
            if want_stats:
                stats = update_statistics(self.net, {k: -p.grad for k, p in self.net.named_parameters()
                                                     if p.grad is not None}, None)
        optimizer.step()
        out["stats"] = stats
        return out


def _synaptic_records(net, trace):
    return [rec for m, rec in zip(net, trace.records) if getattr(m, "kind", "") == "synaptic"]


def _rates(net, trace) -> Tensor:
    """Mean spike rate of each synaptic layer, as one tensor (no host sync)."""
    return torch.stack([rec.spikes.detach().float().mean() for rec in _synaptic_records(net, trace)])


def update_statistics(net, grads: Dict[str, Tensor], feedback: Optional[Dict[str, Tensor]]) -> Dict[str, Any]:
    """Cheap per-parameter update statistics: fraction of exactly-zero updates, |G| quantiles,
    and (LFP) the fraction of nonzero feedback reaching each layer's output."""
    out: Dict[str, Any] = {}
    for name, g in grads.items():
        a = g.detach().abs().flatten().float()
        q = torch.quantile(a[: 1_000_000], torch.tensor([0.5, 0.9, 0.99], device=a.device)).tolist()
        out[name] = {"numel": a.numel(), "zero_fraction": (a == 0).float().mean().item(), "mean_abs": a.mean().item(),
                     "median_abs": q[0], "p90_abs": q[1], "p99_abs": q[2], "max_abs": a.max().item()}
    if feedback is not None:
        out["feedback_nonzero_fraction"] = {k: (r != 0).float().mean().item() for k, r in feedback.items()}
    return out


# ---------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(net, loader: Iterable, cfg: Dict[str, Any], sequence: bool, device,
             dtype=torch.float32, progress: bool = False, desc: str = "eval") -> Dict[str, Any]:
    """Accuracy and spike statistics of ``net`` on ``loader``.

    Returns acc, n, spike rate per synaptic layer (mean over samples, steps and neurons), and
    spikes per sample per layer.
    """
    correct, n = 0, 0
    spike_sum: Optional[Tensor] = None
    sizes: List[int] = []
    for i, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=not progress)):
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        inp, steps = encode_batch(x, cfg, sequence, _gen(cfg["seed"], 10_000_019, i))
        trace = net.run(inp, steps)
        correct = correct + (predict(trace.output, trace.membrane) == y).sum()
        n += len(y)
        recs = _synaptic_records(net, trace)
        sums = torch.stack([rec.spikes.double().sum() for rec in recs])
        sizes = [rec.spikes[0, 0].numel() * rec.spikes.shape[0] for rec in recs]
        spike_sum = sums if spike_sum is None else spike_sum + sums
    if n == 0:
        raise ValueError("evaluation set is empty")
    total = spike_sum.tolist()
    return {"acc": int(correct) / n, "n": n,
            "spike_rate": [s / (n * z) for s, z in zip(total, sizes)],
            "spikes_per_sample": [s / n for s in total]}


# ---------------------------------------------------------------------------- the run

def _progress_enabled(cfg) -> bool:
    if cfg["progress"] == "on":
        return True
    if cfg["progress"] == "off":
        return False
    return sys.stderr.isatty()


def _new_run_dir(cfg) -> Path:
    root = Path(cfg["out"]).expanduser()
    if cfg["run_name"]:
        d = root / cfg["run_name"]
        if (d / "last.pt").exists():
            raise ConfigError(f"run folder {str(d)!r} already holds a run; resume it with "
                              f"--resume {d} or choose another --run-name")
        return d
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{stamp}-{cfg['dataset']}-{cfg['trainer']}"
    d, k = base, 1
    while d.exists():
        d, k = Path(f"{base}-{k}"), k + 1
    return d


def _append_metrics(run_dir: Path, row: Dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    flat = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()}
    path = run_dir / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat))
        if new:
            w.writeheader()
        w.writerow(flat)


class RunResult(dict):
    """Summary of a finished (or interrupted) run: run_dir, interrupted, last metrics row."""


def train(cfg: Optional[Dict[str, Any]] = None, resume: Optional[str] = None,
          overrides: Optional[Dict[str, Any]] = None, echo: Callable[[str], None] = print) -> RunResult:
    """Train a network as configured; returns a :class:`RunResult`.

    ``resume``: a run folder; its config is used (``overrides``, e.g. more ``epochs``, win) and
    training continues from ``last.pt`` exactly where it stopped.
    """
    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "last.pt").is_file():
            raise ConfigError(f"--resume {str(run_dir)!r}: no last.pt in that folder")
        ckpt = load_checkpoint(run_dir / "last.pt")
        cfg = dict(ckpt["config"])
        cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
        cfg = resolve(None, cfg)
    else:
        cfg = resolve(None, cfg or {})

    # Everything that can fail on bad input happens before anything is written.
    device = resolve_device(cfg["device"])
    dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
    data: DataBundle = data_to_device(build_data(cfg), device)
    seed_everything(cfg["seed"])
    spec = model_spec(cfg, data.input_shape, data.num_classes)
    net = build_model(spec).to(device=device, dtype=dtype)
    trainer = Trainer(cfg, net)
    optimizer = make_optimizer(cfg, net.parameters())
    bs = cfg["batch_size"]
    steps_per_epoch = math.ceil(len(data.train) / bs)
    scheduler, per_batch = make_scheduler(cfg, optimizer, steps_per_epoch)

    start_epoch, start_batch, global_step, best = 0, 0, 0, -1.0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, start_batch = ckpt["epoch"], ckpt.get("batch", 0)
        global_step, best = ckpt["global_step"], ckpt.get("best", -1.0)
        set_rng_state(ckpt["rng"])
    else:
        run_dir = _new_run_dir(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(cfg, sort_keys=True), run_dir / "config.yaml")
        atomic_save({"model": net.state_dict(), "model_spec": spec, "config": cfg}, run_dir / "init.pt")

    progress = _progress_enabled(cfg)
    select = "val_acc" if data.val is not None else "train_acc"
    val_loader = make_loader(data.val, bs * 4, False) if data.val is not None else None
    test_loader = make_loader(data.test, bs * 4, False)
    echo(f"spikelfp: training {cfg['model']} on {cfg['dataset']} ({len(data.train)} train samples) "
         f"with {cfg['trainer']} on {device}, T={cfg['steps']}, run folder {run_dir}")

    def checkpoint(epoch_done: int, batch_done: int, name: str = "last.pt") -> None:
        atomic_save({"model": net.state_dict(), "model_spec": spec, "config": cfg,
                     "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "epoch": epoch_done, "batch": batch_done, "global_step": global_step,
                     "best": best, "rng": rng_state()}, run_dir / name)

    row: Dict[str, Any] = {}
    epoch = start_epoch
    done = start_batch  # batches completed in the current epoch
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            t0 = time.perf_counter()
            net.train()
            loader = make_loader(data.train, bs, True, generator=_gen(cfg["seed"], epoch),
                                 num_workers=cfg["num_workers"])
            sums = {"loss": 0.0, "reward": 0.0, "correct": 0, "n": 0, "batches": 0, "lfp_batches": 0}
            rates = None
            skip = start_batch if epoch == start_epoch else 0
            done = skip
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False,
                       disable=not progress, total=steps_per_epoch, initial=skip)
            for batch_i, (x, y) in enumerate(bar):
                if batch_i < skip:
                    continue
                x, y = x.to(device=device, dtype=dtype), y.to(device)
                inp, steps = encode_batch(x, cfg, data.sequence, _gen(cfg["seed"], epoch, batch_i))
                want = cfg["log_updates_every"] > 0 and global_step % cfg["log_updates_every"] == 0
                out = trainer.step(inp, steps, y, optimizer, global_step, want_stats=want)
                global_step += 1
                done = batch_i + 1
                if scheduler is not None and per_batch:
                    scheduler.step()
                if want and out["stats"]:
                    with open(run_dir / "updates.jsonl", "a") as f:
                        f.write(json.dumps({"step": global_step - 1, "epoch": epoch,
                                            "trainer": "lfp" if "reward" in out else "surrogate",
                                            **out["stats"]}) + "\n")
                sums["correct"] = sums["correct"] + out["correct"]
                sums["n"] += out["n"]
                sums["batches"] += 1
                if "reward" in out:
                    sums["reward"] = sums["reward"] + out["reward"]
                    sums["lfp_batches"] += 1
                else:
                    sums["loss"] = sums["loss"] + out["loss"]
                rates = out["rates"] if rates is None else rates + out["rates"]
                if progress and batch_i % 10 == 0:  # a host sync: only for the progress bar
                    bar.set_postfix(acc=f"{float(sums['correct']) / max(sums['n'], 1):.3f}")
            if scheduler is not None and not per_batch:
                scheduler.step()
            train_time = time.perf_counter() - t0
            net.eval()
            row = {"epoch": epoch + 1, "train_acc": float(sums["correct"]) / max(sums["n"], 1)}
            nb, nl = sums["batches"], sums["lfp_batches"]
            if nl:
                row["mean_reward"] = float(sums["reward"]) / nl
            if nb - nl:
                row["loss"] = float(sums["loss"]) / (nb - nl)
            row["train_spike_rate"] = [r / max(nb, 1) for r in (rates.tolist() if rates is not None else [])]
            if val_loader is not None:
                ev = evaluate(net, val_loader, cfg, data.sequence, device, dtype, progress, "val")
                row["val_acc"] = ev["acc"]
            ev = evaluate(net, test_loader, cfg, data.sequence, device, dtype, progress, "test")
            row["test_acc"] = ev["acc"]
            row["spike_rate"] = ev["spike_rate"]
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["epoch_seconds"] = train_time
            row["wall_seconds"] = time.perf_counter() - t0
            _append_metrics(run_dir, row)
            improved = row[select] > best
            if improved:
                best = row[select]
            checkpoint(epoch + 1, 0)
            if improved:
                checkpoint(epoch + 1, 0, "best.pt")
            if cfg["save_every"] and (epoch + 1) % cfg["save_every"] == 0:
                checkpoint(epoch + 1, 0, f"epoch_{epoch + 1:03d}.pt")
            rates_s = " ".join(f"{r:.3f}" for r in row["spike_rate"])
            metric = f"reward {row['mean_reward']:.4f}" if "mean_reward" in row else f"loss {row['loss']:.4f}"
            val_s = f" val {row['val_acc']:.4f}" if "val_acc" in row else ""
            echo(f"epoch {epoch + 1:3d}/{cfg['epochs']}  {metric}  train {row['train_acc']:.4f}{val_s}  "
                 f"test {row['test_acc']:.4f}  spike rates [{rates_s}]  {train_time:.1f}s")
    except KeyboardInterrupt:
        checkpoint(epoch, done)
        echo(f"interrupted in epoch {epoch + 1} after {done} batches; saved {run_dir / 'last.pt'}; "
             f"continue with: spikelfp train --resume {run_dir}")
        return RunResult(run_dir=run_dir, interrupted=True, metrics=row, config=cfg)
    echo(f"done: {run_dir} (best {select} {best:.4f}; checkpoints last.pt, best.pt)")
    return RunResult(run_dir=run_dir, interrupted=False, metrics=row, config=cfg)
