"""Everything the report shows about one run folder, computed from its checkpoints and logs.

:func:`analyze_run` loads the chosen checkpoint (``best.pt`` or ``last.pt``), rebuilds the data
set from the run's config, evaluates the network once on the evaluation split while collecting
activity (:mod:`.activity`), prunes it globally at 0..95 % (:mod:`.pruning`), reads the weights
of every checkpoint in the folder for sign changes vs ``init.pt`` (:mod:`.weights`), summarizes
``updates.jsonl`` (:mod:`.updates`), runs one LFP pass on the first evaluation batch to check
the update-sparsity properties, and reads ``metrics.jsonl``.

Checkpoints used for the sign-change curve: every ``*.pt`` in the run folder except
``init.pt`` (``last.pt``, ``best.pt``, and any snapshot such as ``epoch_003.pt``), ordered by
their ``global_step`` (duplicates of the same step are read once).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from ..core.readout import predict
from ..data.encoders import encode_batch
from ..data.registry import build_data, make_loader
from ..train.checkpoint import load_checkpoint, read_checkpoint
from ..train.config import resolve
from ..train.lfp import lfp_from_config
from ..train.loop import resolve_device
from .activity import ActivityAccumulator
from .pruning import DEFAULT_FRACTIONS, max_prunable, pruning_curve
from .updates import lfp_update_sparsity, read_updates, summarize_updates
from .weights import DEFAULT_TOLERANCE, checkpoint_series, sign_changes_between, weight_stats, weight_tensors

Tensor = torch.Tensor


def _eval_generator(seed: int, batch_index: int) -> torch.Generator:
    """The encoder generator of evaluation batch ``i``: the same seeds as
    ``spikelfp.train.loop.evaluate`` uses (``(seed, 10_000_019, i)``), so stochastic encoders
    give the same accuracy as the training log."""
    s = 0
    for k in (seed, 10_000_019, batch_index):
        s = (s * 1_000_003 + int(k)) % (2 ** 62)
    return torch.Generator().manual_seed(s)


class EvalSet:
    """The evaluation batches of a run, held on the device, re-encoded deterministically."""

    #: raw batches are kept on the device when they take at most this many bytes, else on the CPU
    DEVICE_CACHE_BYTES = 512 * 2 ** 20

    def __init__(self, loader, cfg: Dict[str, Any], sequence: bool, device, dtype):
        self.cfg, self.sequence, self.device, self.dtype = cfg, sequence, device, dtype
        self.batches: List[Tuple[Tensor, Tensor]] = [(x.to(dtype=dtype), y) for x, y in loader]
        self.n = sum(len(y) for _, y in self.batches)
        size = sum(x.numel() * x.element_size() for x, _ in self.batches)
        if size <= self.DEVICE_CACHE_BYTES:
            self.batches = [(x.to(device), y.to(device)) for x, y in self.batches]

    def __len__(self) -> int:
        return len(self.batches)

    def encoded(self, progress: bool = False, desc: str = "eval") -> Iterator[Tuple[Tensor, Optional[int], Tensor]]:
        it = tqdm(self.batches, desc=desc, leave=False, disable=not progress)
        for i, (x, y) in enumerate(it):
            x, y = x.to(self.device), y.to(self.device)
            inp, steps = encode_batch(x, self.cfg["encoder"], self.cfg["steps"], self.sequence, _eval_generator(self.cfg["seed"], i))
            yield inp, steps, y

    @torch.no_grad()
    def accuracy(self, net) -> float:
        correct = 0
        for inp, steps, y in self.encoded():
            trace = net.run(inp, steps)
            correct += int((predict(trace.output, trace.membrane) == y).sum().item())
        return correct / self.n


def find_checkpoint(run_dir: Path, which: str) -> Tuple[Path, List[str]]:
    """``best.pt`` / ``last.pt`` of ``run_dir`` (``best`` falls back to ``last``, with a note)."""
    if which not in ("best", "last"):
        raise ValueError(f"--checkpoint {which!r}: use 'best' or 'last'")
    notes = []
    p = run_dir / f"{which}.pt"
    if not p.is_file() and which == "best" and (run_dir / "last.pt").is_file():
        notes.append("no best.pt in the run folder; last.pt was used")
        p = run_dir / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} has no {which}.pt (is it a spikelfp run folder?)")
    return p, notes


def read_metrics(run_dir: Path) -> List[Dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (or ``metrics.csv``); an empty list if neither exists."""
    pj, pc = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
    rows: List[Dict[str, Any]] = []
    if pj.is_file():
        for line in pj.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows
    if pc.is_file():
        with open(pc, newline="") as f:
            for r in csv.DictReader(f):
                row = {}
                for k, v in r.items():
                    try:
                        row[k] = json.loads(v)
                    except (TypeError, json.JSONDecodeError):
                        row[k] = v
                rows.append(row)
    return rows


def _snapshots(run_dir: Path, steps_per_epoch: int) -> List[Dict[str, Any]]:
    """The weights of every checkpoint in the folder except init.pt, by global step."""
    seen, snaps = set(), []
    files = sorted(run_dir.glob("*.pt"), key=lambda p: (p.name in ("best.pt", "last.pt"), p.name))
    for p in files:
        if p.name == "init.pt":
            continue
        try:
            ck = read_checkpoint(p)
        except (ValueError, FileNotFoundError):
            continue
        step = ck.get("global_step")
        if step is None or step in seen:
            continue
        seen.add(step)
        snaps.append({"file": p.name, "step": int(step),
                      "epoch": step / steps_per_epoch if steps_per_epoch else float(ck.get("epoch", 0)),
                      "state": weight_tensors(ck["model"])})
    snaps.sort(key=lambda s: s["step"])
    return snaps


def analyze_run(run_dir, checkpoint: str = "best", limit: Optional[int] = None, device: str = "auto",
                split: str = "test", tolerance: float = DEFAULT_TOLERANCE, raster_samples: int = 3,
                prune: bool = True, fractions=DEFAULT_FRACTIONS, prune_tolerance: float = 0.01,
                progress: bool = False, data_root: Optional[str] = None,
                label: Optional[str] = None, echo: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Every diagnostic of one run folder (see the module docstring). Keys starting with ``_``
    hold tensors for the plots and are not part of the JSON."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} not found")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: the number of evaluation samples must be >= 1")
    ck_path, notes = find_checkpoint(run_dir, checkpoint)
    net, stored_cfg, ckpt = load_checkpoint(ck_path)
    over = {"device": device, "data_root": data_root}
    cfg = resolve(None, {**stored_cfg, **{k: v for k, v in over.items() if v is not None}})
    dev = resolve_device(cfg["device"])
    dtype = next(net.parameters()).dtype
    net = net.to(device=dev).eval()

    data = build_data(cfg)
    ds = {"test": data.test, "val": data.val, "train": data.train}.get(split)
    if split not in ("test", "val", "train"):
        raise ValueError(f"--split {split!r}: use test, val or train")
    if ds is None:
        raise ValueError(f"run {run_dir.name!r} has no {split} split (val_fraction is 0)")
    if limit is not None and limit < len(ds):
        ds = Subset(ds, range(limit))
    loader = make_loader(ds, cfg["batch_size"] * 4, False)
    evset = EvalSet(loader, cfg, data.sequence, dev, dtype)
    if evset.n == 0:
        raise ValueError(f"run {run_dir.name!r}: the {split} split is empty")
    name = label or run_dir.name
    echo(f"spikelfp report: {name}: {ck_path.name}, {split} split ({evset.n} samples) on {dev}")

    # activity (one pass)
    acc = ActivityAccumulator(net, raster_samples=raster_samples)
    with torch.no_grad():
        for inp, steps, y in evset.encoded(progress, desc=f"{name} activity"):
            trace = net.run(inp, steps)
            acc.update(trace, predict(trace.output, trace.membrane), y)
    activity = acc.result()
    raster = acc.raster()

    # LFP update sparsity on the first evaluation batch (no update is applied)
    lfp_check = None
    try:
        lfp = lfp_from_config(cfg, net)
        first = next(evset.encoded())
        bs = min(cfg["batch_size"], len(first[2]))
        x0 = first[0][:, :bs] if first[1] is None else first[0][:bs]
        lfp_check = lfp_update_sparsity(lfp, x0, first[2][:bs], first[1])
    except (RuntimeError, ValueError) as e:  # e.g. non-finite feedback in a diverged net
        notes.append(f"LFP update check skipped: {str(e).splitlines()[0]}")

    # pruning curve
    pruning = None
    if prune:
        bar = (lambda seq: tqdm(seq, desc=f"{name} pruning", leave=False)) if progress else None
        curve = pruning_curve(net, evset.accuracy, fractions, progress=bar)
        pruning = {"curve": curve, **max_prunable(curve, prune_tolerance)}

    # weights, sign changes
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    wstats = weight_stats(state, tolerance)
    steps_per_epoch = math.ceil(len(data.train) / cfg["batch_size"]) if len(data.train) else 0
    init_path = run_dir / "init.pt"
    signs: Dict[str, Any] = {"available": False}
    if init_path.is_file():
        init = weight_tensors(read_checkpoint(init_path)["model"])
        snaps = _snapshots(run_dir, steps_per_epoch)
        series = checkpoint_series(init, snaps)
        for row, snap in zip(series, snaps):
            w = torch.cat([t.flatten().double() for k, t in snap["state"].items() if k.endswith("weight")])
            row["zero_fraction"] = float((w == 0).double().mean())
            row["near_zero_fraction"] = float((w.abs() < tolerance).double().mean())
            row["median_abs"] = float(w.abs().median())
        final = sign_changes_between(read_checkpoint(init_path)["model"], state, include_bias=True)
        signs = {"available": True, "final_vs_init": final, "series": series,
                 "init_stats": weight_stats(init, tolerance)["all_weights"]}
    else:
        notes.append("no init.pt in the run folder: sign changes vs init are not available")

    updates = summarize_updates(read_updates(run_dir / "updates.jsonl"),
                                sizes={k: v["numel"] for k, v in wstats["params"].items()})
    if not updates["records"]:
        notes.append("no updates.jsonl records (log_updates_every = 0?)")

    layer_labels = {d["name"]: d["label"] for d in activity["layers"]}
    return {
        "run": name, "run_dir": str(run_dir), "checkpoint": ck_path.name,
        "checkpoint_epoch": ckpt.get("epoch"), "checkpoint_step": ckpt.get("global_step"),
        "trainer": cfg["trainer"], "dataset": cfg["dataset"], "model": cfg["model"],
        "steps": cfg["steps"], "encoder": cfg["encoder"], "device": str(dev),
        "config": cfg, "layer_labels": layer_labels,
        "eval": {"split": split, "n": evset.n, "accuracy": activity.get("accuracy"),
                 "steps": activity["network"]["steps"]},
        "activity": activity, "weights": wstats, "sign_changes": signs, "updates": updates,
        "lfp_check": lfp_check, "pruning": pruning, "metrics": read_metrics(run_dir),
        "notes": notes,
        "_raster": raster, "_weights": weight_tensors(state),
    }


def default_progress() -> bool:
    return sys.stderr.isatty()
