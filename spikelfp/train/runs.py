"""Run folders: one run per folder, metrics that stay consistent with the checkpoints, and the
rules of ``--resume``.

- A new run claims its folder with an exclusively created marker (``.spikelfp-run``): two runs
  started with one ``--run-name`` cannot share it (the second is refused in one line), and two
  time-stamped runs started in the same second get ``-1``, ``-2``, ... suffixes.
- ``metrics.jsonl`` is the record; ``metrics.csv`` is rewritten from it after every epoch (one
  header with every column). On resume, rows and update lines written after ``last.pt`` (a run
  killed between the two) are dropped, and temporary files of a killed save are removed.
- On resume only :data:`MUTABLE_ON_RESUME` may change; anything else, or a ``config.yaml``
  edited since the checkpoint, is refused in one line naming the keys. ``config.yaml`` is
  rewritten with the resumed run's config, so it stays true.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from .errors import ConfigError

RUN_MARKER = ".spikelfp-run"

#: Keys that may differ on ``--resume`` (they change neither the model nor its updates).
MUTABLE_ON_RESUME = ("epochs", "device", "progress", "num_workers", "log_updates_every",
                     "save_every", "data_root", "cache_dir", "download")

#: Schedules laid out over the run's epochs at its start (``epochs`` cannot change for them).
PER_RUN_SCHEDULES = ("cosine", "onecycle")


def claim(d: Path) -> bool:
    """Create ``d`` (or take it if it exists empty) and claim it with an exclusively created
    marker; False if another run holds it or it holds other files."""
    d.mkdir(parents=True, exist_ok=True)
    if any(p.name != RUN_MARKER for p in d.iterdir()):
        return False
    try:
        with open(d / RUN_MARKER, "x") as f:
            f.write(f"{os.getpid()}\n")
    except FileExistsError:
        return False
    return True


def new_run_dir(out: str, run_name: Optional[str], label: str) -> Path:
    """A folder of its own for a new run: ``out/run_name`` (refused if it holds anything), or
    ``out/<time>-<label>[-k]`` with the first free k."""
    root = Path(out).expanduser()
    try:
        if run_name:
            d = root / run_name
            if not claim(d):
                raise ConfigError(f"run folder {str(d)!r} already holds a run; resume it with "
                                  f"--resume {d} or choose another --run-name")
            return d
        base = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
        d, k = base, 1
        while not claim(d):
            d, k = Path(f"{base}-{k}"), k + 1
        return d
    except OSError as e:
        raise ConfigError(f"cannot create a run folder under {str(root)!r}: {e.strerror or e}; "
                          f"choose a writable --out") from None


def read_rows(run_dir: Path) -> List[Dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(s) for s in path.read_text().splitlines() if s.strip()]


def write_csv(run_dir: Path, rows: List[Dict[str, Any]]) -> None:
    """metrics.csv from the rows: one header with the union of the columns, in first-seen order."""
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(Path(run_dir) / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})


def append_metrics(run_dir: Path, row: Dict[str, Any]) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    write_csv(run_dir, read_rows(run_dir))


def truncate_to_checkpoint(run_dir: Path, epoch: int, global_step: int) -> None:
    """Drop metrics rows after ``epoch`` and update lines from ``global_step`` on: what a run
    wrote after the checkpoint it resumes from."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    keep = [r for r in rows if r.get("epoch", 0) <= epoch]
    if len(keep) != len(rows):
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    if rows:
        write_csv(run_dir, keep)
    up = run_dir / "updates.jsonl"
    if up.is_file():
        lines = [s for s in up.read_text().splitlines() if s.strip()]
        kept = [s for s in lines if json.loads(s).get("step", 0) < global_step]
        if len(kept) != len(lines):
            up.write_text("".join(s + "\n" for s in kept))


def check_resume(stored: Mapping[str, Any], resumed: Mapping[str, Any], run_dir: Path,
                 yaml_cfg: Optional[Mapping[str, Any]]) -> None:
    """Refuse (one line) what a resume cannot honour: changed keys outside
    :data:`MUTABLE_ON_RESUME`, more or fewer epochs under a per-run schedule, an edited
    config.yaml."""
    if yaml_cfg is not None:
        edited = sorted(k for k in set(stored) | set(yaml_cfg)
                        if k not in MUTABLE_ON_RESUME and stored.get(k) != yaml_cfg.get(k))
        if edited:
            raise ConfigError(f"--resume {str(run_dir)!r}: config.yaml was edited since the checkpoint "
                              f"(keys {edited}); a run resumes with its checkpoint's config: restore "
                              f"config.yaml or start a new run")
    changed = sorted(k for k in resumed if k not in MUTABLE_ON_RESUME and resumed[k] != stored.get(k))
    if changed:
        raise ConfigError(f"--resume: {changed} cannot change when a run resumes (only "
                          f"{list(MUTABLE_ON_RESUME)} can); start a new run for other settings")
    if resumed["epochs"] != stored["epochs"] and stored.get("schedule") in PER_RUN_SCHEDULES:
        raise ConfigError(f"--resume --epochs {resumed['epochs']}: the {stored['schedule']} schedule "
                          f"was laid out over {stored['epochs']} epochs and cannot be extended; "
                          f"resume with --epochs {stored['epochs']} or start a new run")


def read_yaml_config(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError(f"--resume: {str(path)!r} is not valid YAML; restore it") from None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def deferred_sigint(reraise: bool = True):
    """Hold Ctrl-C while a consistent set of files is written: a SIGINT in the block is
    remembered and (``reraise``) raised as KeyboardInterrupt after it; a second Ctrl-C while
    the interrupt checkpoint is saved (``reraise=False``) is ignored instead of losing it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: List[int] = []
    old = signal.signal(signal.SIGINT, lambda sig, frame: got.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got and reraise:
        raise KeyboardInterrupt
