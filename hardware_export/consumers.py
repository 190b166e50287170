"""Run an exported NIR graph in other simulators (snnTorch, Norse, Sinabs) over T steps.

These helpers exist to check exports against independent implementations; they import the
consumer lazily, so spikelfp does not depend on any of them. Each takes the input sequence
``x`` of shape ``[T, B, *input_shape]`` and returns the output spikes ``[T, B, *out]``.

What the consumers do with a NIR graph (snnTorch 1.0.0, Norse 1.1.0, Sinabs 3.1.3, measured with
nir 1.0.8 / nirtorch 2.6; see SCHEMA.md, "Consumers"):

* snnTorch (``snntorch.import_nir.import_from_nir``): LIF -> ``snn.Leaky(beta = 1 - 1e-4/tau,
  reset_mechanism="zero", reset_delay=False)``. Its dt is hard-coded to 1e-4, so export with
  dt=1e-4 (the default). Reset "zero" gives the same spikes whether the reset is applied in the
  spiking step (reset_delay=False) or the next one. It needs one threshold per layer (asserts
  uniform ``v_threshold``) and maps ``IF`` to ``Leaky(beta=0.9, reset "subtract")``, which is not
  an IF (and asserts r == 1, so our IF nodes with r = 1/dt are refused): beta == 1 layers do
  not survive snnTorch. Reads AvgPool2d, not SumPool2d.
* Norse (``norse.torch.from_nir``): LIF -> ``LIFBoxCell``, ``v += dt/tau (v_leak - v + I)``: it
  ignores ``r`` (only warns), so with the standard ``r = tau/dt`` its input is scaled by
  (1 - beta) and the network is nearly silent. :func:`fold_resistance` rewrites the graph into
  the NIR-equivalent form with ``r = 1`` (r folded into the synapse before), which Norse then
  simulates up to float rounding. ``IF`` -> ``IAFCell``: ``v += I`` (ignores r and dt), exact
  for our ``r = 1/dt``. Reads SumPool2d, not AvgPool2d (use ``to_nir(..., pooling="sum")``).
* Sinabs (``sinabs.nir.from_nir``): LIF -> ``LIFSqueeze(tau_mem=tau)`` with ``alpha =
  exp(-1/tau)`` (tau read in steps, r, dt and v_reset ignored), reset by subtraction,
  multi-spikes and ``v >= threshold``; a different discretization, so only agreement rates are
  meaningful. Reads SumPool2d only.
* snnTorch and Norse map NIR ``Flatten(start_dim=0)`` to ``torch.nn.Flatten(0, -1)``, which
  also flattens the batch dimension; graphs with a Flatten node are therefore run one sample
  at a time (unbatched input, which is what NIR shapes describe).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from typing import Sequence

import numpy as np
import torch

Tensor = torch.Tensor


def _has_flatten(graph) -> bool:
    import nir

    return any(isinstance(n, nir.Flatten) for n in graph.nodes.values())


@contextlib.contextmanager
def _quiet():
    """Silence the consumers' prints, logging warnings and deprecation warnings."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        logger.setLevel(level)


def _first(o):
    return o[0] if isinstance(o, (tuple, list)) else o


def fold_resistance(graph, node_types: Sequence[str] = ("LIF",)):
    """An equivalent NIR graph (same continuous dynamics) with ``r = 1`` in the chosen neuron
    nodes: ``r * (W x + b) = (r W) x + r b``, so r is multiplied into the preceding Affine /
    Linear / Conv2d (per output neuron, or per channel for Conv2d). For consumers that ignore
    ``r`` (Norse's LIF). IF nodes are left alone by default because Norse's IAF integrates
    ``v += I`` per step, ignoring r and dt, which is already what spikelfp's ``r = 1/dt`` means.
    """
    import nir

    g = copy.deepcopy(graph)
    pred = {b: a for a, b in g.edges}
    for name, node in g.nodes.items():
        if type(node).__name__ not in node_types:
            continue
        r = np.asarray(node.r, dtype=np.float64)
        if np.all(r == 1):
            continue
        syn = g.nodes.get(pred.get(name, ""))
        if isinstance(syn, (nir.Affine, nir.Linear)):
            rr = r.reshape(-1)
            syn.weight = (np.asarray(syn.weight, np.float64) * rr[:, None]).astype(np.float32)
            if isinstance(syn, nir.Affine):
                syn.bias = (np.asarray(syn.bias, np.float64) * rr).astype(np.float32)
        elif isinstance(syn, nir.Conv2d):
            rc = r.reshape(r.shape[0], -1)
            if np.any(rc != rc[:, :1]):
                raise ValueError(f"{name}: r varies within a channel; cannot fold it into a conv")
            rc = rc[:, 0]
            syn.weight = (np.asarray(syn.weight, np.float64)
                          * rc[:, None, None, None]).astype(np.float32)
            syn.bias = (np.asarray(syn.bias, np.float64) * rc).astype(np.float32)
        else:
            raise ValueError(f"{name}: no Affine/Linear/Conv2d before it to fold r into")
        node.r = np.ones_like(r)
    return g


def _run_stateful(module_factory, x: Tensor, per_sample: bool, call) -> Tensor:
    """Step a freshly reset consumer module over time, batched or one sample at a time."""
    T, B = x.shape[0], x.shape[1]
    if not per_sample:
        m, state = module_factory()
        outs = []
        for t in range(T):
            o, state = call(m, x[t], state)
            outs.append(o)
        return torch.stack(outs)
    samples = []
    for b in range(B):
        m, state = module_factory()
        outs = []
        for t in range(T):
            o, state = call(m, x[t, b], state)
            outs.append(o)
        samples.append(torch.stack(outs))
    return torch.stack(samples, dim=1)


def simulate_snntorch(graph, x: Tensor) -> Tensor:
    """Output spikes of the graph imported by ``snntorch.import_nir.import_from_nir``."""
    import snntorch.utils as sutils
    from snntorch.import_nir import import_from_nir

    with _quiet():
        module = import_from_nir(copy.deepcopy(graph))

    def factory():
        sutils.reset(module)
        return module, None

    def call(m, xt, state):
        return _first(m(xt)), None

    with torch.no_grad(), _quiet():
        return _run_stateful(factory, x, _has_flatten(graph), call).float()


def simulate_norse(graph, x: Tensor, dt: float, fold_r: bool = True) -> Tensor:
    """Output spikes of the graph imported by ``norse.torch.from_nir(graph, dt=dt)``.

    ``fold_r`` first applies :func:`fold_resistance` (Norse's LIF ignores r). (Norse's
    ``from_nir(reset_method=...)`` only reaches CubaLIF nodes, not LIF, so Norse cannot be asked
    to subtract the threshold on import.)
    """
    import norse.torch as nt

    g = fold_resistance(graph) if fold_r else copy.deepcopy(graph)
    with _quiet():
        module = nt.from_nir(g, dt=dt, ignore_warnings=True)

    def factory():
        return module, None

    def call(m, xt, state):
        o, state = m(xt, state)
        return o, state

    with torch.no_grad(), _quiet():
        return _run_stateful(factory, x, _has_flatten(graph), call).float()


def simulate_sinabs(graph, x: Tensor) -> Tensor:
    """Output of the graph imported by ``sinabs.nir.from_nir`` (multi-spike counts)."""
    from sinabs.nir import from_nir as sinabs_from_nir

    T, B = x.shape[0], x.shape[1]
    with _quiet():
        module = sinabs_from_nir(copy.deepcopy(graph), batch_size=B)
    flat = x.transpose(0, 1).reshape(B * T, *x.shape[2:])  # sinabs: (Batch*Time, ...)
    with torch.no_grad(), _quiet():
        out = _first(module(flat))
    return out.reshape(B, T, *out.shape[1:]).transpose(0, 1).float()
