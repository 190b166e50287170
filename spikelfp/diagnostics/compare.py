"""``spikelfp compare``: several trainers on the same network, data and budget, one report.

For every trainer ``t`` and seed ``s`` one ordinary run folder ``OUT/runs/<t>-s<s>`` is trained
with :func:`spikelfp.train.loop.train` (each can be evaluated, exported or resumed on its own).
All runs share the config's network, data, encoder, T, epochs and batch size: the run config of
``(t, s)`` is::

    defaults <- --config YAML <- command-line values (--epochs, --steps, ...)
             <- {trainer: t, seed: s} <- --set t.KEY=VALUE

so a trainer's own keys (its :class:`~spikelfp.train.registry.Option` s) take their registered
preset unless the YAML or ``--set`` says otherwise. ``--set`` may change only a trainer's own
keys, the optimizer keys (:data:`PER_TRAINER_KEYS`) and the width (:data:`PER_TRAINER_NETWORK_KEYS`:
a trainer on its own network, named in the report); everything else that defines the comparison
is the same for every trainer. Same init per seed: the loop builds the model right after
``seed_everything(seed)`` and before the trainer is built, so ``init.pt`` of ``(t, s)`` is the
same for every ``t``.

Resumable: ``OUT/compare.json`` records the runs that finished (with their config) and the
memory panel. Run again with the same command, a finished run is skipped, an interrupted one
(``last.pt`` present) continues with ``train(resume=...)`` exactly where it stopped, and a run
folder without any checkpoint (killed before its first one) is started again.

The comparison (:func:`comparison_data`) comes from each run's ``metrics.jsonl`` (test accuracy
and wall time per epoch) and from :func:`spikelfp.diagnostics.analyze.analyze_run` of its
``last.pt`` on the test split (spikes and SynOps per sample, silent hidden neurons, update
sparsity from ``updates.jsonl``, the pruning curve); with several seeds, mean and sample
standard deviation (n - 1) over the seeds. The memory panel (:func:`memory_vs_steps`) is the
peak memory of one training step (``trainer.step``: forward and update direction, the
optimizer excluded) at several T, by :func:`spikelfp.diagnostics.memory.peak_memory`. The
exported-network agreement is measured by a function the caller passes (the CLI passes a NIR
round trip, see ``spikelfp.cli``; this room does not import ``hardware_export``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
import yaml

from ..data.encoders import encode_batch
from ..data.registry import build_data, make_loader
from ..nn.zoo import build_model
from ..train.checkpoint import atomic_write_text, load_checkpoint
from ..train.config import BASE_DEFAULTS, ConfigError, load_yaml, model_spec, resolve
from ..train.loop import resolve_device, seed_everything, train
from ..train.protocol import Batch, TrainContext
from ..train.registry import build_trainer, get_trainer_spec, trainer_names
from ..train.runs import RUN_MARKER
from .memory import peak_memory

#: Base keys a ``--set TRAINER.KEY=VALUE`` may change besides the trainer's own keys.
PER_TRAINER_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "grad_clip", "schedule", "step_size", "gamma",
                    "log_updates_every", "save_every")

#: Network keys a ``--set TRAINER.KEY=VALUE`` may change: a trainer that needs another width
#: (e.g. FFzero on its own narrower preset net) trains its own network, stated in the report
#: (its initial weights then differ from the other trainers').
PER_TRAINER_NETWORK_KEYS = ("hidden",)

#: Keys compare sets itself for every run.
MANAGED_KEYS = ("trainer", "seed", "out", "run_name")

#: Keys that may differ between a finished run and a rerun without training it again.
IGNORED_ON_SKIP = ("device", "progress", "num_workers")

DEFAULT_MEMORY_STEPS = (10, 25, 100)

STATE_FILE = "compare.json"

ExportCheck = Callable[[torch.nn.Module, Sequence[int], int], Dict[str, Any]]


class Plan(NamedTuple):
    """One run of the comparison: its name (``<trainer>-s<seed>``), trainer, seed, config."""

    name: str
    trainer: str
    seed: int
    cfg: Dict[str, Any]


# ---------------------------------------------------------------------------- command-line values

def parse_int_list(text: str, flag: str) -> List[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct non-negative integers, in order)."""
    try:
        vals = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: use comma-separated integers, e.g. 0,1,2") from None
    if not vals or any(v < 0 for v in vals) or len(set(vals)) != len(vals):
        raise ValueError(f"{flag} {text!r}: use distinct non-negative integers, e.g. 0,1,2")
    return vals


def parse_trainers(text: Optional[str]) -> List[str]:
    """``"lfp,f3"`` -> registered trainer names (default: every registered trainer)."""
    if text is None:
        return trainer_names()
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    unknown = [n for n in names if n not in trainer_names()]
    if not names or unknown or len(set(names)) != len(names):
        raise ConfigError(f"--trainers {text!r}: use distinct names among {trainer_names()}")
    return names


def parse_sets(items: Sequence[str], trainers: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """``["ffzero.lr=0.01", ...]`` -> ``{"ffzero": {"lr": 0.01}}`` (values parsed as YAML).

    A key must be one of the trainer's own option keys or :data:`PER_TRAINER_KEYS`; the rest is
    the same for every trainer (a one-line :class:`ConfigError` says so)."""
    out: Dict[str, Dict[str, Any]] = {}
    for item in items or ():
        head, sep, value = str(item).partition("=")
        trainer, dot, key = head.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"--set {item!r}: use TRAINER.KEY=VALUE, e.g. ffzero.lr=0.01")
        if trainer not in trainers:
            raise ConfigError(f"--set {item!r}: trainer {trainer!r} is not compared; --trainers is {list(trainers)}")
        own = {o.key for o in get_trainer_spec(trainer).options}
        if key not in own and key not in PER_TRAINER_KEYS + PER_TRAINER_NETWORK_KEYS:
            raise ConfigError(f"--set {item!r}: {key!r} is the same for every trainer in a comparison; "
                              f"per trainer only its own keys {sorted(own)}, "
                              f"{list(PER_TRAINER_KEYS + PER_TRAINER_NETWORK_KEYS)}")
        try:
            out.setdefault(trainer, {})[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def plan_runs(base: Dict[str, Any], trainers: Sequence[str], seeds: Sequence[int],
              sets: Dict[str, Dict[str, Any]], out: Path) -> List[Plan]:
    """The resolved config of every (trainer, seed), trainer-major (all validated here, before
    anything is written). ``base``: the YAML keys and command-line values shared by all runs."""
    clash = sorted(k for k in base if k in MANAGED_KEYS and k != "trainer")
    if clash:
        raise ConfigError(f"config key(s) {clash}: compare sets them itself (--seeds, --out)")
    root = (Path(out).expanduser().resolve() / "runs")
    plans = []
    for t in trainers:
        # a trainer's preferred defaults apply to its own keys (e.g. lr); network keys among them
        # (lfp's reset) keep the common default unless set: every trainer gets the same network
        common = {k: BASE_DEFAULTS[k] for k in get_trainer_spec(t).defaults
                  if k not in PER_TRAINER_KEYS}
        for s in seeds:
            raw = {**common, **base, "trainer": t, "seed": int(s), "out": str(root),
                   "run_name": f"{t}-s{s}", **sets.get(t, {})}
            cfg = resolve(None, raw)
            for k in ("data_root", "cache_dir"):
                if cfg.get(k):
                    cfg[k] = str(Path(cfg[k]).expanduser().resolve())
            plans.append(Plan(f"{t}-s{s}", t, int(s), cfg))
    return plans


def base_config(config: Optional[str], values: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of the ``--config`` YAML with the non-None command-line ``values`` over them;
    the YAML's :data:`MANAGED_KEYS` (trainer, seed, out, run_name) are dropped: compare sets them."""
    base = {k: v for k, v in (load_yaml(config) if config else {}).items() if k not in MANAGED_KEYS}
    base.update({k: v for k, v in values.items() if v is not None})
    return base


# ---------------------------------------------------------------------------- state (resume)

def read_state(out: Path) -> Dict[str, Any]:
    p = Path(out) / STATE_FILE
    if not p.is_file():
        return {"runs": {}, "memory": None}
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{str(p)!r} is not valid JSON; delete it to re-check every run") from None
    data.setdefault("runs", {})
    data.setdefault("memory", None)
    return data


def write_state(out: Path, state: Dict[str, Any]) -> None:
    atomic_write_text(json.dumps(state, indent=1, sort_keys=True), Path(out) / STATE_FILE)


def _same_run(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    keys = (set(a) | set(b)) - set(IGNORED_ON_SKIP)
    return all(a.get(k) == b.get(k) for k in keys)


def run_status(plan: Plan, state: Dict[str, Any]) -> str:
    """``skip`` (finished with this config), ``resume`` (a checkpoint to continue from) or
    ``new``. A run folder without ``last.pt`` (killed before its first checkpoint) holds nothing
    to keep and is emptied for ``new``; a folder that is no spikelfp run is refused."""
    d = Path(plan.cfg["out"]) / plan.cfg["run_name"]
    done = state["runs"].get(plan.name)
    if (d / "last.pt").is_file():
        if done and _same_run(done.get("config", {}), json.loads(json.dumps(plan.cfg))):
            return "skip"
        return "resume"
    if d.exists():
        if not (d / RUN_MARKER).is_file():
            raise ValueError(f"{str(d)!r} exists and is not a spikelfp run folder; choose another --out")
        shutil.rmtree(d)
    return "new"


def run_all(plans: Sequence[Plan], out: Path, echo: Callable[[str], None] = print) -> bool:
    """Train (or skip / resume) every planned run in order; False if one was interrupted
    (Ctrl-C: the run saved its checkpoint; the same command continues it)."""
    state = read_state(out)
    for k, p in enumerate(plans):
        status = run_status(p, state)
        tag = f"[{k + 1}/{len(plans)} {p.name}]"
        if status == "skip":
            echo(f"{tag} finished earlier: skipped")
            continue
        say = (lambda s, tag=tag: echo(f"{tag} {s}"))
        if status == "resume":
            echo(f"{tag} resuming {Path(p.cfg['out']) / p.name}")
            res = train(resume=str(Path(p.cfg["out"]) / p.name), overrides=p.cfg, echo=say)
        else:
            res = train(p.cfg, echo=say)
        if res["interrupted"]:
            return False
        state["runs"][p.name] = {"config": json.loads(json.dumps(p.cfg)), "finished": time.time()}
        write_state(out, state)
    return True


# ---------------------------------------------------------------------------- memory vs T

def step_batch(cfg: Dict[str, Any], data, steps: int, device, dtype) -> Batch:
    """The first training batch (unshuffled), encoded with T = ``steps``. Sequence data (fixed
    T by the data set) is cropped or repeated along time to ``steps`` frames."""
    x, y, idx = next(iter(make_loader(data.train, cfg["batch_size"], False, index=True)))
    x = x.to(device=device, dtype=dtype)
    inp, T = encode_batch(x, cfg["encoder"], steps, data.sequence, torch.Generator().manual_seed(cfg["seed"]))
    if data.sequence:
        inp = inp[torch.arange(steps) % inp.shape[0]]
    return Batch(inp, y.to(device), idx.to(device), T, 0, 0)


def step_peak_memory(cfg: Dict[str, Any], data, steps: int, device) -> int:
    """Peak bytes of one ``trainer.step`` (after one warm-up step) of the run ``cfg`` at T = ``steps``:
    the model as the loop builds it for the seed, the first training batch."""
    cfg = dict(cfg, steps=int(steps))
    dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
    seed_everything(cfg["seed"])
    net = build_model(model_spec(cfg, data.input_shape, data.num_classes)).to(device=device, dtype=dtype)
    context = TrainContext(len(data.train), data.num_classes, tuple(data.input_shape), data.sequence, device, dtype)
    trainer = build_trainer(cfg, net, context)
    batch = step_batch(cfg, data, int(steps), device, dtype)

    def clear():
        for p in net.parameters():
            p.grad = None

    def one():
        trainer.step(batch, want_stats=False)

    net.train()
    one()
    clear()  # outside the measured call: freeing the warm-up's grads must not offset its record
    return peak_memory(one, device)


def memory_vs_steps(plans: Sequence[Plan], steps: Sequence[int], echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Peak memory of one training step per trainer (the first seed's config) at each T of
    ``steps`` and at the runs' T (:func:`step_peak_memory`); ``{}`` for no ``steps``."""
    first: Dict[str, Plan] = {}
    for p in plans:
        first.setdefault(p.trainer, p)
    if not first or not steps:
        return {"steps": [], "bytes": {}, "device": None}
    cfg0 = next(iter(first.values())).cfg
    steps = sorted({int(T) for T in steps} | {int(cfg0["steps"])})  # the runs' own T as well
    device = resolve_device(cfg0["device"])
    data = build_data(cfg0)
    out: Dict[str, List[int]] = {}
    for t, p in first.items():
        out[t] = [step_peak_memory(p.cfg, data, T, device) for T in steps]
        echo(f"memory: {t}: " + ", ".join(f"T={T} {b / 2 ** 20:.2f} MiB" for T, b in zip(steps, out[t])))
    return {"steps": [int(T) for T in steps], "bytes": out, "device": str(device),
            "batch_size": int(cfg0["batch_size"])}


def preflight(plans: Sequence[Plan]) -> None:
    """Build every trainer once on the network and data (its own checks run, e.g. a trainer
    refusing a net without hidden layer): a one-line error before any run starts."""
    seen = set()
    data = None
    for p in plans:
        if p.trainer in seen:
            continue
        seen.add(p.trainer)
        data = data or build_data(p.cfg)
        dtype = torch.float64 if p.cfg["dtype"] == "float64" else torch.float32
        device = resolve_device(p.cfg["device"])
        net = build_model(model_spec(p.cfg, data.input_shape, data.num_classes)).to(device=device, dtype=dtype)
        build_trainer(p.cfg, net, TrainContext(len(data.train), data.num_classes, tuple(data.input_shape),
                                               data.sequence, device, dtype))


# ---------------------------------------------------------------------------- the comparison

def spread(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    """mean, sample std (n - 1; 0 for one value), min, max and n of the non-None values."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(v) / len(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v), "n": len(v)}


def _dig(d: Any, *keys: str) -> Optional[float]:
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


#: Per-run measures of the comparison: name -> function of a run's analysis.
RUN_MEASURES: Dict[str, Callable[[Dict[str, Any]], Optional[float]]] = {
    "final_test_acc": lambda a: a["metrics"][-1].get("test_acc") if a["metrics"] else None,
    "eval_accuracy": lambda a: _dig(a, "eval", "accuracy"),
    "epoch_seconds": lambda a: _mean_of(a["metrics"], "epoch_seconds"),
    "wall_seconds": lambda a: _mean_of(a["metrics"], "wall_seconds"),
    "spikes_per_sample": lambda a: _dig(a, "activity", "network", "spikes_per_sample"),
    "hidden_spikes_per_sample": lambda a: _dig(a, "activity", "network", "hidden_spikes_per_sample"),
    "synops_per_sample": lambda a: _dig(a, "activity", "network", "synops_per_sample"),
    "hidden_silent_fraction": lambda a: _dig(a, "activity", "network", "hidden_silent_fraction"),
    "update_zero_fraction": lambda a: _dig(a, "updates", "weights_zero_fraction_mean"),
    "prunable": lambda a: _dig(a, "pruning", "contiguous"),
}


def _mean_of(rows: Sequence[Dict[str, Any]], key: str) -> Optional[float]:
    v = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(v) / len(v) if v else None


def trainer_summary(analyses: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The comparison numbers of one trainer from its runs' analyses (one per seed): per run
    (:data:`RUN_MEASURES`, ``per_run``) and their :func:`spread` over the runs; the test accuracy
    per epoch and the pruning curve averaged over the runs."""
    epochs = sorted({int(r["epoch"]) for a in analyses for r in a["metrics"] if "test_acc" in r})
    by_epoch = [spread([next((r["test_acc"] for r in a["metrics"] if r.get("epoch") == e), None)
                        for a in analyses]) for e in epochs]
    per_run = [{"run": a["run"], **{k: fn(a) for k, fn in RUN_MEASURES.items()}} for a in analyses]
    curves = [a["pruning"]["curve"] for a in analyses if a.get("pruning")]
    pruning = None
    if curves:
        fracs = [c["fraction"] for c in curves[0]]
        pruning = {"fractions": fracs,
                   "accuracy": [spread([c[j]["accuracy"] for c in curves if j < len(c)]) for j in range(len(fracs))]}
    out = {"runs": [a["run"] for a in analyses], "epochs": epochs, "test_acc_per_epoch": by_epoch,
           "per_run": per_run, "pruning": pruning}
    out.update({k: spread([r[k] for r in per_run]) for k in RUN_MEASURES})
    return out


def network_name(cfg: Dict[str, Any]) -> str:
    """``"mlp hidden [1000]"``: the model and the widths the config gives it."""
    if cfg["model"] == "lenet":
        return "lenet"
    name = f"{cfg['model']} hidden {list(cfg.get('hidden') or [])}"
    if cfg["model"] == "convnet" and cfg.get("channels") is not None:
        name += f" channels {list(cfg['channels'])}"
    return name


def comparison_data(plans: Sequence[Plan], analyses: Dict[str, Dict[str, Any]],
                    memory: Optional[Dict[str, Any]], export: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Everything the comparison section shows: per trainer :func:`trainer_summary`, the memory
    panel, and the export agreement per run."""
    trainers = list(dict.fromkeys(p.trainer for p in plans))
    seeds = list(dict.fromkeys(p.seed for p in plans))
    cfg = plans[0].cfg
    per = {}
    for t in trainers:
        s = trainer_summary([analyses[p.name] for p in plans if p.trainer == t])
        mem = (memory or {}).get("bytes", {}).get(t)
        steps = (memory or {}).get("steps", [])
        s["peak_memory_bytes"] = mem[steps.index(cfg["steps"])] if mem and cfg["steps"] in steps else None
        runs = [export.get(p.name) for p in plans if p.trainer == t]
        s["export"] = runs
        applied = [r for r in runs if r and r.get("applies")]
        s["export_agreement"] = spread([r.get("agreement") for r in applied]) if applied else None
        s["export_note"] = next((r.get("reason") for r in runs if r and not r.get("applies")), None)
        s["network"] = network_name(next(p.cfg for p in plans if p.trainer == t))
        per[t] = s
    return {
        "trainers": trainers, "seeds": seeds,
        "setup": {k: cfg[k] for k in ("dataset", "model", "hidden", "channels", "neuron", "reset", "encoder",
                                      "steps", "epochs", "batch_size", "limit", "test_limit", "val_fraction")},
        "configs": {p.name: {k: p.cfg[k] for k in sorted(p.cfg)} for p in plans},
        "per_trainer": per, "memory": memory,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def export_agreements(plans: Sequence[Plan], check: Optional[ExportCheck]) -> Dict[str, Dict[str, Any]]:
    """``check(net, input_shape, steps)`` on every run's ``last.pt`` (``{}`` without a check)."""
    if check is None:
        return {}
    out = {}
    for p in plans:
        net, cfg, ck = load_checkpoint(Path(p.cfg["out"]) / p.name / "last.pt")
        shape = (ck.get("model_spec") or {}).get("input_shape")
        try:
            out[p.name] = check(net.eval(), tuple(shape), int(cfg["steps"]))
        except (ValueError, RuntimeError) as e:
            out[p.name] = {"applies": False, "reason": str(e).splitlines()[0] if str(e) else type(e).__name__}
    return out


# ---------------------------------------------------------------------------- orchestration

def compare(plans: Sequence[Plan], out, memory_steps: Sequence[int] = DEFAULT_MEMORY_STEPS,
            export_check: Optional[ExportCheck] = None, prune: bool = True, progress: bool = False,
            title: str = "spikelfp compare", echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train every planned run (resumably), measure the memory panel, analyse every run, write
    ``OUT/report/`` (report.md, report.html, PNGs, report.json). Returns the paths written, or
    ``{"interrupted": True}`` if a run was interrupted (rerun to continue)."""
    from .analyze import analyze_run
    from .report import write_report

    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    state = read_state(out)
    mem_key = json.dumps([[p.trainer, {k: v for k, v in p.cfg.items() if k not in IGNORED_ON_SKIP}]
                          for p in plans] + [list(memory_steps)], sort_keys=True, default=str)
    if state.get("memory") and state["memory"].get("key") == mem_key:
        memory = state["memory"]["result"]
    else:
        if not memory_steps:
            preflight(plans)  # memory_vs_steps builds every trainer (and runs its checks) itself
        memory = memory_vs_steps(plans, memory_steps, echo)
        state["memory"] = {"key": mem_key, "result": memory}
        write_state(out, state)
    if not run_all(plans, out, echo):
        echo(f"compare interrupted; run the same command again to continue ({out / STATE_FILE})")
        return {"interrupted": True}
    analyses = {}
    for p in plans:
        analyses[p.name] = analyze_run(Path(p.cfg["out"]) / p.name, checkpoint="last", device=p.cfg["device"],
                                       prune=prune, progress=progress, label=p.name, echo=echo)
    export = export_agreements(plans, export_check)
    comp = comparison_data(plans, analyses, memory, export)
    comp["seconds"] = time.perf_counter() - t0
    first_seed = plans[0].seed
    detailed = [analyses[p.name] for p in plans if p.seed == first_seed]
    res = write_report(detailed, out / "report", json_path=out / "report" / "report.json", title=title,
                       comparison=comp)
    res["comparison"] = comp
    res["interrupted"] = False
    return res

