"""Checkpoints: atomic writes and loading a network back.

A checkpoint is a ``torch.save`` dict with ``model`` (state dict), ``model_spec`` (what
:func:`spikelfp.nn.zoo.build_model` needs), ``config`` (the resolved run config), and for
resuming ``optimizer``, ``scheduler``, ``trainer_state`` (the trainer's ``state_dict``), ``epoch`` (completed epochs), ``batch`` (batches done in
the current epoch; > 0 only after an interruption), ``global_step``, ``best``, ``rng``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import numpy as np
import torch

from ..nn.zoo import build_model


TMP_SUFFIX = ".tmp"


def file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give (0o666 less the umask): temporary files
    are created 0o600, and a checkpoint must be as readable as the metrics beside it."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path, write: Callable[[str], None]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj: Any, path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``: a crash
    mid-write leaves the previous file intact."""
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path) -> None:
    """Write ``text`` to ``path`` the same way (temporary file, then rename)."""
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def remove_stale_temporaries(folder) -> List[str]:
    """Delete the temporary files a killed save left in ``folder`` (``.NAME.*.tmp``)."""
    gone = []
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        gone.append(p.name)
    return gone


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint dict (file, or run folder: best.pt, else last.pt); a clear
    ``FileNotFoundError``/``ValueError`` if it is not one."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.pt" if (p / "best.pt").exists() else p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} not found")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here
        raise ValueError(f"checkpoint {str(p)!r} cannot be read: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_spec" not in ckpt:
        raise ValueError(f"{str(p)!r} is not a spikelfp checkpoint (no 'model'/'model_spec')")
    return ckpt


class Checkpoint(NamedTuple):
    """A checkpoint read back: the rebuilt ``network`` (in the stored dtype, on
    ``map_location``), the run's ``config``, and ``meta``: everything else the file holds
    (``model_spec``, ``epoch``, ``global_step``, ``trainer_state``, ...; ``path``: the file read)."""

    network: torch.nn.Module
    config: Dict[str, Any]
    meta: Dict[str, Any]


def network_from_checkpoint(ckpt: Dict[str, Any]) -> torch.nn.Module:
    """The network of a checkpoint dict (as :func:`read_checkpoint` returns it)."""
    net = build_model(ckpt["model_spec"])
    net.load_state_dict(ckpt["model"])
    dtype = next(iter(ckpt["model"].values())).dtype
    device = next(iter(ckpt["model"].values())).device
    return net.to(device=device, dtype=dtype)


def load_checkpoint(path, map_location="cpu") -> Checkpoint:
    """Load a checkpoint (file, or run folder: best.pt, else last.pt) as network + config + meta.
    ``spikelfp.load_checkpoint``; used by ``eval``, ``report`` and ``hardware_export``."""
    ckpt = read_checkpoint(path, map_location)
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "config")}
    p = Path(path)
    meta["path"] = str(p / "best.pt" if (p / "best.pt").exists() else p / "last.pt") if p.is_dir() else str(p)
    return Checkpoint(network_from_checkpoint(ckpt), dict(ckpt.get("config", {})), meta)


def load_model(path, map_location="cpu") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """``(network, config)`` of a checkpoint (see :func:`load_checkpoint`)."""
    ck = load_checkpoint(path, map_location)
    return ck.network, ck.config
