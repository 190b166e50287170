"""Training and evaluation loops shared by every trainer (see :mod:`spikelfp.train.registry`).

The loop knows no trainer by name: it builds the one the config names from the registry, calls
``trainer.step(batch)`` (which leaves ``param.grad = -G``), then ``optimizer.step()``; the
trainer's state is saved in every checkpoint and restored on resume.

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

from ..core.readout import predict
from ..data.encoders import encode_batch as encode
from ..data.registry import DataBundle, build_data, make_loader
from ..nn.network import Sequential
from ..nn.zoo import build_model
from .checkpoint import (
    atomic_save,
    atomic_write_text,
    read_checkpoint,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)
from .config import ConfigError, model_spec, resolve
from .distributed import (
    SINGLE,
    DistInfo,
    all_reduce_sum,
    average_gradients,
    broadcast_text,
    device_for,
    setup,
    shard,
)
from .protocol import Batch, TrainContext
from .registry import build_trainer
from .runs import (
    append_metrics,
    check_resume,
    deferred_sigint,
    new_run_dir,
    read_yaml_config,
    truncate_to_checkpoint,
)
from .stats import spike_total, synaptic_records

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
    """The configured optimizer, as torch's fused implementation (one pass over all parameters;
    on CPU since torch 2.4, measured 2.3 vs 10.2 ms per Adam step on the 784-1000-10 MLP with
    one thread) where this torch offers it for the parameters' device, else the default one."""
    name, lr, wd = cfg["optimizer"], cfg["lr"], cfg["weight_decay"]
    params = list(params)
    cls, kw = {"sgd": (torch.optim.SGD, {"momentum": cfg["momentum"]}),
               "adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {})}[name]
    try:
        return cls(params, lr=lr, weight_decay=wd, fused=True, **kw)
    except RuntimeError:  # an older torch or a device without fused kernels
        return cls(params, lr=lr, weight_decay=wd, **kw)


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
    """:func:`spikelfp.data.encoders.encode_batch` with the run's encoder and T."""
    return encode(x, cfg["encoder"], cfg["steps"], sequence, generator)


# ---------------------------------------------------------------------------- evaluation

@torch.no_grad()
def _eval_batch(net, inp, steps, y):
    """Correct predictions, spike totals per synaptic layer and their sizes for one batch (the
    batch's trace is dropped on return, before the next batch runs)."""
    # compact (uint8) spikes: only their counts are read here
    trace = net.run(inp, steps, compact=True) if isinstance(net, Sequential) else net.run(inp, steps)
    recs = synaptic_records(net, trace)
    sums = torch.stack([spike_total(rec.spikes) for rec in recs])
    sizes = [rec.spikes[0, 0].numel() * rec.spikes.shape[0] for rec in recs]
    return (predict(trace.output, trace.membrane) == y).sum(), sums, sizes


def evaluate(net, loader: Iterable, cfg: Dict[str, Any], sequence: bool, device,
             dtype=torch.float32, progress: bool = False, desc: str = "eval",
             info: DistInfo = SINGLE) -> Dict[str, Any]:
    """Accuracy and spike statistics of ``net`` on ``loader``.

    Returns acc, n, spike rate per synaptic layer (mean over samples, steps and neurons), and
    spikes per sample per layer. In data-parallel runs each process evaluates its shard and the
    counts are summed over processes.
    """
    correct, n = 0, 0
    spike_sum: Optional[Tensor] = None
    sizes: List[int] = []
    for i, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=not progress)):
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        inp, steps = encode_batch(x, cfg, sequence, _gen(cfg["seed"], 10_000_019, i))
        right, sums, sizes = _eval_batch(net, inp, steps, y)
        correct = correct + right
        n += len(y)
        spike_sum = sums if spike_sum is None else spike_sum + sums
    if info.enabled:
        packed = all_reduce_sum(torch.cat([torch.as_tensor([correct, n], device=spike_sum.device,
                                                           dtype=torch.float64), spike_sum]), info)
        correct, n, spike_sum = int(packed[0]), int(packed[1]), packed[2:]
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


def _train_epoch(trainer, optimizer, scheduler, data, cfg, run_dir, epoch, skip, pos,
                 steps_per_epoch, total_epochs, device, dtype, progress, info: DistInfo = SINGLE):
    """One epoch of ``trainer`` steps (skipping the first ``skip`` batches of a resumed epoch);
    returns the epoch's sums. ``pos`` (``global_step``, ``done``: batches done in this epoch,
    ``sums``: the epoch's running sums) is updated in place after every step, so an interrupt
    saves exactly where the run stopped.
    ``scheduler``: stepped per batch (None if it steps per epoch)."""
    loader = make_loader(data.train, cfg["batch_size"], True, generator=_gen(cfg["seed"], epoch),
                         num_workers=cfg["num_workers"], index=True,
                         part=(lambda b: shard(b, info)) if info.enabled else None)
    sums = pos["sums"]
    pos["done"] = skip
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs}", leave=False,
               disable=not progress, total=steps_per_epoch, initial=skip)
    for batch_i, (x, y, idx) in enumerate(bar):
        if batch_i < skip:
            continue
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        inp, steps = encode_batch(x, cfg, data.sequence, _gen(cfg["seed"], epoch, batch_i))
        step = pos["global_step"]
        want = cfg["log_updates_every"] > 0 and step % cfg["log_updates_every"] == 0
        optimizer.zero_grad(set_to_none=True)
        out = trainer.step(Batch(inp, y, idx.to(device), steps, epoch, step), want_stats=want)
        if not getattr(trainer, "reduces_gradients", False):
            average_gradients(trainer.net.parameters(), len(y), info)  # one all-reduce (no-op alone)
        trainer.after_average()
        if cfg["grad_clip"] is not None:  # on the averaged update: the same in every process
            torch.nn.utils.clip_grad_norm_(trainer.net.parameters(), cfg["grad_clip"])
        optimizer.step()
        pos["global_step"], pos["done"] = step + 1, batch_i + 1
        if scheduler is not None:
            scheduler.step()
        if want and out.stats and info.main:
            with open(run_dir / "updates.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch, **out.stats}) + "\n")
        _accumulate(sums, out, y)
        if progress and batch_i % 10 == 0:  # a host sync: only for the progress bar
            bar.set_postfix(acc=f"{float(sums['correct']) / max(sums['n'], 1):.3f}")
    return sums


def _new_sums() -> Dict[str, Any]:
    return {"correct": 0, "n": 0, "batches": 0, "objective": {}, "extras": {}, "rates": None}


def _sums_state(sums: Dict[str, Any]) -> Dict[str, Any]:
    """The epoch's running sums as plain numbers (saved with a mid-epoch checkpoint)."""
    def num(v):
        return v.tolist() if hasattr(v, "tolist") else v

    return {"correct": num(sums["correct"]), "n": sums["n"], "batches": sums["batches"],
            "objective": {k: [num(t), c] for k, (t, c) in sums["objective"].items()},
            "extras": {k: [num(t), c] for k, (t, c) in sums["extras"].items()},
            "rates": num(sums["rates"])}


def _sums_restore(state: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if not state:
        return _new_sums()
    return {"correct": state["correct"], "n": state["n"], "batches": state["batches"],
            "objective": {k: tuple(v) for k, v in state["objective"].items()},
            "extras": {k: tuple(v) for k, v in state["extras"].items()},
            "rates": torch.tensor(state["rates"]) if state["rates"] is not None else None}


def _accumulate(sums: Dict[str, Any], out, labels: Tensor) -> None:
    """Add one StepResult to the epoch's sums (tensors: no host sync)."""
    sums["correct"] = sums["correct"] + (out.prediction == labels).sum()
    sums["n"] += len(labels)
    sums["batches"] += 1
    tot, cnt = sums["objective"].get(out.objective_name, (0.0, 0))
    sums["objective"][out.objective_name] = (tot + out.objective, cnt + 1)
    for k, v in (out.extras or {}).items():
        tot, cnt = sums["extras"].get(k, (0.0, 0))
        sums["extras"][k] = (tot + v, cnt + 1)
    sums["rates"] = out.rates if sums["rates"] is None else sums["rates"] + out.rates.to(sums["rates"].device)


def _epoch_summary(sums: Dict[str, Any], info: DistInfo = SINGLE) -> Dict[str, Any]:
    """The training part of a metrics row: accuracy, the objective(s), extras, spike rates
    (data-parallel: counts summed, per-batch means averaged over the processes)."""
    keys = list({**sums["objective"], **sums["extras"]})
    means = [float(t) / c for t, c in {**sums["objective"], **sums["extras"]}.values()]
    rates = sums["rates"].tolist() if sums["rates"] is not None else []
    rates = [r / max(sums["batches"], 1) for r in rates]
    correct, n = float(sums["correct"]), float(sums["n"])
    if info.enabled:
        packed = all_reduce_sum(torch.tensor([correct, n, *means, *rates], dtype=torch.float64), info)
        correct, n = float(packed[0]), float(packed[1])
        means = [v / info.world for v in packed[2:2 + len(means)].tolist()]
        rates = [v / info.world for v in packed[2 + len(keys):].tolist()]
    row: Dict[str, Any] = {"train_acc": correct / max(n, 1)}
    row.update(zip(keys, means))
    row["train_spike_rate"] = rates
    return row


def _epoch_line(row: Dict[str, Any], total_epochs: int, train_time: float) -> str:
    skip = {"epoch", "train_acc", "val_acc", "test_acc", "spike_rate", "train_spike_rate", "lr",
            "epoch_seconds", "wall_seconds"}
    metric = "  ".join(f"{k.replace('mean_', '')} {v:.4f}" for k, v in row.items()
                       if k not in skip and isinstance(v, float))
    rates_s = " ".join(f"{r:.3f}" for r in row["spike_rate"])
    val_s = f" val {row['val_acc']:.4f}" if "val_acc" in row else ""
    return (f"epoch {row['epoch']:3d}/{total_epochs}  {metric}  train {row['train_acc']:.4f}{val_s}  "
            f"test {row['test_acc']:.4f}  spike rates [{rates_s}]  {train_time:.1f}s")


def _silent(_: str) -> None:
    pass


def _restore(ckpt, net, optimizer, scheduler, trainer):
    """Load a checkpoint's states; returns (epoch, batch, global step, best, epoch sums)."""
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    trainer.load_state_dict(ckpt.get("trainer_state") or {})
    set_rng_state(ckpt["rng"])
    return (ckpt["epoch"], ckpt.get("batch", 0), ckpt["global_step"], ckpt.get("best", -1.0),
            ckpt.get("epoch_sums"))


def _evaluate_splits(net, val_loader, test_loader, cfg, sequence, device, dtype, progress, info):
    """val_acc (if there is a validation split), test_acc and the test spike rates."""
    row: Dict[str, Any] = {}
    if val_loader is not None:
        row["val_acc"] = evaluate(net, val_loader, cfg, sequence, device, dtype, progress, "val", info)["acc"]
    ev = evaluate(net, test_loader, cfg, sequence, device, dtype, progress, "test", info)
    row["test_acc"], row["spike_rate"] = ev["acc"], ev["spike_rate"]
    return row


def _warn_silent_output(row: Dict[str, Any], echo) -> None:
    if row["train_spike_rate"] and row["train_spike_rate"][-1] == 0:
        echo("warning: the output layer did not spike during this epoch: every prediction is a "
             "tie (a silent net is not a trained one; its reward is no measure of success)")


class RunResult(dict):
    """Summary of a finished (or interrupted) run: run_dir, interrupted, last metrics row."""


def _absolute_paths(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """data_root and cache_dir as absolute paths, so the stored run works from any folder."""
    out = dict(cfg)
    for k in ("data_root", "cache_dir"):
        if out.get(k):
            out[k] = str(Path(out[k]).expanduser().resolve())
    return out


def _run_config(cfg, resume, overrides):
    """(resolved config, checkpoint dict or None): a new run's config, or a resumed run's stored
    config with ``overrides`` applied (only :data:`runs.MUTABLE_ON_RESUME` may change)."""
    if resume is None:
        return _absolute_paths(resolve(None, cfg or {})), None
    run_dir = Path(resume)
    if not (run_dir / "last.pt").is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no last.pt in that folder")
    ckpt = read_checkpoint(run_dir / "last.pt")
    stored = resolve(None, dict(ckpt["config"]))
    new = _absolute_paths(resolve(None, {**stored, **{k: v for k, v in (overrides or {}).items()
                                                      if v is not None}}))
    check_resume(stored, new, run_dir, read_yaml_config(run_dir))
    return new, ckpt


def _open_run_dir(cfg, info: DistInfo, init: Dict[str, Any]) -> Path:
    """Rank 0 creates the run folder with config.yaml and init.pt; every rank gets its path."""
    run_dir = None
    if info.main:
        run_dir = new_run_dir(cfg["out"], cfg["run_name"], f"{cfg['dataset']}-{cfg['trainer']}")
        atomic_write_text(yaml.safe_dump(cfg, sort_keys=True), run_dir / "config.yaml")
        atomic_save(init, run_dir / "init.pt")
    return Path(broadcast_text(str(run_dir) if run_dir else None, info))


def train(cfg: Optional[Dict[str, Any]] = None, resume: Optional[str] = None,
          overrides: Optional[Dict[str, Any]] = None, echo: Callable[[str], None] = print) -> RunResult:
    """Train a network as configured; returns a :class:`RunResult`.

    ``resume``: a run folder; its config is used (``overrides``, e.g. more ``epochs``, win) and
    training continues from ``last.pt`` exactly where it stopped.
    """
    cfg, ckpt = _run_config(cfg, resume, overrides)
    run_dir = Path(resume) if resume is not None else None

    # Everything that can fail on bad input happens before anything is written.
    info = setup(cfg["device"])  # torchrun: join the process group (else one process)
    device = device_for(info, resolve_device(cfg["device"]))
    dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
    data: DataBundle = data_to_device(build_data(cfg), device)
    if data.sequence and cfg["encoder"] != "constant":
        raise ConfigError(f"config key 'encoder': {cfg['encoder']!r} does not apply to {cfg['dataset']!r}, "
                          f"whose samples are already spike sequences; leave encoder at 'constant'")
    if info.world > len(data.train):
        raise ConfigError(f"{info.world} processes but only {len(data.train)} training samples; "
                          f"use at most {len(data.train)} processes")
    seed_everything(cfg["seed"])
    spec = model_spec(cfg, data.input_shape, data.num_classes)
    net = build_model(spec).to(device=device, dtype=dtype)
    context = TrainContext(len(data.train), data.num_classes, tuple(data.input_shape), data.sequence,
                           device, dtype)
    trainer = build_trainer(cfg, net, context)
    total_epochs = trainer.total_epochs()
    optimizer = make_optimizer(cfg, net.parameters())
    bs = cfg["batch_size"]
    steps_per_epoch = math.ceil(len(data.train) / bs)
    scheduler, per_batch = make_scheduler(dict(cfg, epochs=total_epochs), optimizer, steps_per_epoch)

    start_epoch, start_batch, global_step, best, sums_state = 0, 0, 0, -1.0, None
    if ckpt is not None:
        start_epoch, start_batch, global_step, best, sums_state = _restore(
            ckpt, net, optimizer, scheduler, trainer)
        if info.main:  # what a killed run wrote after its checkpoint goes; config.yaml stays true
            remove_stale_temporaries(run_dir)
            truncate_to_checkpoint(run_dir, start_epoch, global_step)
            atomic_write_text(yaml.safe_dump(cfg, sort_keys=True), run_dir / "config.yaml")
    else:
        run_dir = _open_run_dir(cfg, info, {"model": net.state_dict(), "model_spec": spec, "config": cfg})
    echo = echo if info.main else _silent  # rank 0 alone prints

    progress = _progress_enabled(cfg)
    select = "val_acc" if data.val is not None else None  # never selected on the test set
    part = (lambda b: shard(b, info)) if info.enabled else None  # sharded evaluation
    # evaluation records every layer for a batch: on a CPU no larger than a training batch's (the
    # peak memory of long sequences); on a GPU 4x (launch-bound there, memory to spare)
    ebs = bs * 4 if device.type == "cuda" else bs
    val_loader = make_loader(data.val, ebs, False, part=part) if data.val is not None else None
    test_loader = make_loader(data.test, ebs, False, part=part)
    echo(f"spikelfp: training {cfg['model']} on {cfg['dataset']} ({len(data.train)} train samples) "
         f"with {cfg['trainer']} on {device}, T={cfg['steps']}, run folder {run_dir}")

    def checkpoint(epoch_done: int, batch_done: int, name: str = "last.pt") -> None:
        if not info.main:
            return
        atomic_save({"model": net.state_dict(), "model_spec": spec, "config": cfg,
                     "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "trainer_state": trainer.state_dict(), "epoch": epoch_done, "batch": batch_done,
                     "global_step": pos["global_step"],
                     "epoch_sums": _sums_state(pos["sums"]) if batch_done else None,
                     "best": best, "rng": rng_state()}, run_dir / name)

    row: Dict[str, Any] = {}
    epoch = start_epoch
    pos = {"global_step": global_step, "done": start_batch,  # where the run is
           "sums": _sums_restore(sums_state)}
    if ckpt is None:  # resumable from the start: a run that fails in its first epoch can continue
        checkpoint(0, 0)
    try:
        for epoch in range(start_epoch, total_epochs):
            t0 = time.perf_counter()
            net.train()
            trainer.begin_epoch(epoch)
            skip = start_batch if epoch == start_epoch else 0
            if not skip:
                pos["sums"] = _new_sums()
            sums = _train_epoch(
                trainer, optimizer, scheduler if per_batch else None, data, cfg, run_dir, epoch,
                skip, pos, steps_per_epoch, total_epochs, device, dtype, progress and info.main, info)
            if scheduler is not None and not per_batch:
                scheduler.step()
            train_time = time.perf_counter() - t0
            net.eval()
            row = {"epoch": epoch + 1, **_epoch_summary(sums, info)}
            row.update(_evaluate_splits(net, val_loader, test_loader, cfg, data.sequence, device, dtype,
                                        progress and info.main, info))
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["epoch_seconds"] = train_time
            row["wall_seconds"] = time.perf_counter() - t0
            # metrics row and checkpoints as one unit: a Ctrl-C here waits until all are written
            with deferred_sigint():
                if info.main:
                    append_metrics(run_dir, row)
                improved = select is None or row[select] > best
                best = row[select] if select and improved else best
                pos["done"] = 0
                names = ["last.pt"] + ["best.pt"] * improved + [
                    f"epoch_{epoch + 1:03d}.pt"] * bool(cfg["save_every"] and (epoch + 1) % cfg["save_every"] == 0)
                for name in names:
                    checkpoint(epoch + 1, 0, name)
            echo(_epoch_line(row, total_epochs, train_time))
            _warn_silent_output(row, echo)
    except KeyboardInterrupt:
        with deferred_sigint(reraise=False):  # a second Ctrl-C must not lose the checkpoint
            checkpoint(epoch, pos["done"])
        echo(f"interrupted in epoch {epoch + 1} after {pos['done']} batches; saved {run_dir / 'last.pt'}; "
             f"continue with: spikelfp train --resume {run_dir}")
        return RunResult(run_dir=run_dir, interrupted=True, metrics=row, config=cfg)
    chosen = f"best {select} {best:.4f}" if select else "no validation split: best.pt is the last epoch"
    echo(f"done: {run_dir} ({chosen}; checkpoints last.pt, best.pt)")
    if cfg["reset"] == "subtract":
        echo("note: reset 'subtract' has no NIR 1.0 / Loihi equivalent; train with --reset zero "
             "for a network that `spikelfp export` writes exactly")
    return RunResult(run_dir=run_dir, interrupted=False, metrics=row, config=cfg)
