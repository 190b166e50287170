"""Run a netx file in Lava's Loihi simulator (``Loihi2SimCfg``) in a separate Python.

Lava needs Python 3.10 and its own torch, so it lives in its own environment (built by
``../shared/tools/lava-env.sh``); :func:`run_lava` calls that environment's python, given by
the environment variable ``SPIKELFP_LAVA_PYTHON``, on a small script. The script loads the
file with ``lava.lib.dl.netx.hdf5.Network`` unchanged, feeds the input stream from
``lava.proc.io.source.RingBuffer``, records the network's output spikes in
``lava.proc.io.sink.RingBuffer`` and writes them to an ``.npy`` file in a temporary folder.

:func:`run_lava_samples` feeds B samples of T steps back to back with
``hdf5.Network(file, reset_interval=T, reset_offset=1)`` so that every layer starts each sample
from zero state (see :mod:`hardware_export.loihi_sim`), and returns ``[T, B, *out]`` aligned
with spikelfp's steps; :func:`compare_lava` compares it with :func:`loihi_sim.simulate_samples`
(the same stream in loihi_sim; equal to the per-sample :func:`loihi_sim.simulate` except that
a recurrent (``dense_rec``) layer's reset does not clear its recurrent synapse, so the first
step of a sample also receives ``V s`` of the previous sample's last step).

Tags: ``fixed_pt`` runs Lava's bit-accurate models. ``floating_pt`` cannot run a netx network:
netx's block process models (``PyNetworkModel``, ``PyDenseModel``, ``PyConvModel``, ...) are
tagged ``fixed_pt`` only, so ``Loihi2SimCfg(select_tag="floating_pt")`` raises
``AssertionError: No ProcessModels found with tag 'floating_pt' for Process ...Network``
(:class:`LavaTagUnsupported` carries Lava's message); see SCHEMA.md for the further reason (the
float LIF reads netx's 12-bit integer decays as fractions).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .loihi_sim import (num_delays, simulate, simulate_samples, stream_inputs,
                        unstream_outputs)
from .netx_export import NetxNetwork, read_netx

LAVA_PYTHON_ENV = "SPIKELFP_LAVA_PYTHON"
TAGS = ("fixed_pt", "floating_pt")


class LavaTagUnsupported(RuntimeError):
    """Lava refused to build the network for the requested ``select_tag``."""


_SCRIPT = r'''
import json, sys, warnings
import numpy as np
warnings.filterwarnings("ignore")
args = json.loads(sys.argv[1])
from lava.lib.dl.netx import hdf5
from lava.proc.io.source import RingBuffer as Source
from lava.proc.io.sink import RingBuffer as Sink
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.core.run_conditions import RunSteps
x = np.load(args["input"])
n = int(args["num_steps"])
kw = {"input_message_bits": int(args["input_message_bits"])}
if args["reset_interval"]:
    kw["reset_interval"] = int(args["reset_interval"])
    kw["reset_offset"] = int(args["reset_offset"])
net = hdf5.Network(net_config=args["net"], **kw)
src = Source(data=x)
sink = Sink(shape=net.out.shape, buffer=n)
src.s_out.connect(net.inp)
net.out.connect(sink.a_in)
cfg = Loihi2SimCfg(select_tag=args["tag"], select_sub_proc_model=True)
try:
    net.run(condition=RunSteps(num_steps=n), run_cfg=cfg)
except AssertionError as e:
    json.dump({"unsupported": str(e).splitlines()[0]}, open(args["status"], "w"))
    sys.exit(0)
out = sink.data.get()
net.stop()
np.save(args["output"], np.asarray(out))
json.dump({"ok": True, "net_in": [int(v) for v in net.inp.shape],
           "net_out": [int(v) for v in net.out.shape]},
          open(args["status"], "w"))
'''


def lava_python() -> Optional[str]:
    """The Lava environment's python from ``SPIKELFP_LAVA_PYTHON`` (None when unset)."""
    p = os.environ.get(LAVA_PYTHON_ENV, "").strip()
    return p or None


def _first_synaptic(plan: NetxNetwork):
    return next(ly for ly in plan.layers if ly.kind != "flatten")


def to_lava_layout(plan: NetxNetwork, stream: torch.Tensor) -> np.ndarray:
    """``[N, *input_shape]`` (CHW) to what ``net.inp`` takes: ``(*shape, N)`` with shape WHC
    for a conv first layer, the C-order flattened vector for a dense one."""
    x = stream.detach().cpu().numpy()
    N = x.shape[0]
    if _first_synaptic(plan).kind == "dense":
        x = x.reshape(N, -1)
    else:
        x = x.transpose(0, 3, 2, 1)  # N, C, H, W -> N, W, H, C
    return np.ascontiguousarray(np.moveaxis(x, 0, -1)).astype(np.int32)


def from_lava_layout(plan: NetxNetwork, out: np.ndarray) -> torch.Tensor:
    """Lava's sink data ``(*shape, N)`` back to ``[N, *output_shape]`` (CHW)."""
    o = np.moveaxis(np.asarray(out), -1, 0)
    if plan.layers[-1].kind == "conv":
        o = o.transpose(0, 3, 2, 1)
    return torch.from_numpy(o.astype(np.float64)).reshape(o.shape[0], *plan.output_shape)


def run_lava(path, stream: torch.Tensor, num_steps: Optional[int] = None, tag: str = "fixed_pt",
             reset_interval: Optional[int] = None, reset_offset: int = 0,
             python: Optional[str] = None, timeout: float = 600.0) -> torch.Tensor:
    """Run the netx file ``path`` in Lava on one input stream ``[N, *input_shape]`` of integer
    payloads (frame tau - 1 sent at step tau) and return the output spikes
    ``[num_steps, *output_shape]``. Raises RuntimeError (one line) when the Lava python is not
    set or fails, :class:`LavaTagUnsupported` when Lava cannot select models for ``tag``."""
    if tag not in TAGS:
        raise ValueError(f"tag={tag!r} is not allowed; use one of {TAGS}")
    py = python or lava_python()
    if not py:
        raise RuntimeError(f"set {LAVA_PYTHON_ENV} to the python of a Lava environment "
                           f"(bash ../shared/tools/lava-env.sh /tmp/lava310)")
    plan = read_netx(path)
    n = int(num_steps) if num_steps is not None else stream.shape[0]
    with tempfile.TemporaryDirectory(prefix="spikelfp-lava-") as tmp:
        t = Path(tmp)
        data = to_lava_layout(plan, stream)
        if data.shape[-1] < n:  # pad with silent steps (the ring buffer would wrap around)
            pad = np.zeros((*data.shape[:-1], n - data.shape[-1]), np.int32)
            data = np.concatenate([data, pad], axis=-1)
        np.save(t / "input.npy", data)
        args = {"net": str(Path(path).resolve()), "input": str(t / "input.npy"),
                "output": str(t / "output.npy"), "status": str(t / "status.json"),
                "num_steps": n, "tag": tag, "input_message_bits": plan.input_message_bits,
                "reset_interval": int(reset_interval or 0), "reset_offset": int(reset_offset)}
        (t / "run.py").write_text(_SCRIPT)
        proc = subprocess.run([py, str(t / "run.py"), json.dumps(args)], capture_output=True,
                              text=True, timeout=timeout, cwd=tmp)
        status = t / "status.json"
        if proc.returncode != 0 or not status.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"Lava run failed (exit {proc.returncode}): "
                               f"{tail[-1] if tail else 'no output'}")
        st = json.loads(status.read_text())
        if "unsupported" in st:
            raise LavaTagUnsupported(st["unsupported"])
        return from_lava_layout(plan, np.load(t / "output.npy"))


def run_lava_samples(path, x_int: torch.Tensor, tag: str = "fixed_pt",
                     python: Optional[str] = None, timeout: float = 600.0) -> torch.Tensor:
    """Samples ``[T, B, *input_shape]`` (integer payloads) through Lava in one run, back to
    back with ``reset_interval=T, reset_offset=1``; returns ``[T, B, *out]`` with the L-step
    delay removed, comparable to :func:`loihi_sim.simulate`."""
    plan = read_netx(path)
    T, B = int(x_int.shape[0]), int(x_int.shape[1])
    L = num_delays(plan)
    stream = stream_inputs(x_int, T, L)[:, 0]
    out = run_lava(path, stream, B * T + L, tag, reset_interval=T, reset_offset=1,
                   python=python, timeout=timeout)
    return unstream_outputs(out.unsqueeze(1), T, B, L)


def compare_lava(path, x_int: torch.Tensor, tag: str = "fixed_pt",
                 python: Optional[str] = None) -> dict:
    """Lava's output spikes against spikelfp's Loihi simulation of the same file and the same
    back-to-back stream (:func:`loihi_sim.simulate_samples`; keys of
    :func:`hardware_export.spike_agreement`, plus ``samples``, ``tag`` and
    ``per_sample_mismatched``: entries where that stream differs from the zero-state
    per-sample :func:`loihi_sim.simulate`, 0 without recurrent layers)."""
    from .verify import spike_agreement

    plan = read_netx(path)
    lava = run_lava_samples(path, x_int, tag, python)
    sim = simulate_samples(plan, x_int)
    res = spike_agreement(sim, lava)
    per_sample = simulate(plan, x_int).spikes
    res.update(samples=int(x_int.shape[1]), tag=tag,
               per_sample_mismatched=int((per_sample != sim).sum()))
    return res


__all__ = ["LAVA_PYTHON_ENV", "LavaTagUnsupported", "TAGS", "compare_lava", "from_lava_layout",
           "lava_python", "run_lava", "run_lava_samples", "to_lava_layout"]
