"""F3 (Feed-Forward with delayed Feedback): the ``f3`` trainer (spec ``f3-for-lif.md``).

Each hidden layer learns from the sample's output error of the *previous epoch* (a per-sample
store ``E`` ``[num_train, C]``, initialized to ``y - 1/C``), projected by a fixed random matrix
``B_l`` ``[C, N_l]``, times a local factor of the layer's own activity; the output layer uses the
current error ``y - yhat`` (delta rule). The math is in :mod:`spikelfp.core.f3`.

The forward runs step by step (``net.stream``) and keeps per synaptic layer only running sums:
the spike count ``S = sum_t s_t`` (rates, ``rate``/``ratevar`` factors, the prediction), the input
sum ``A = sum_t a_t`` (``none``/``rate``/``ratevar``), and for ``spike`` with an error known
before the forward ``M = sum_t (delta * s_t)^T a_t`` (one weight-shaped accumulator). A constant
input needs no sum at the first synaptic layer (``A = T x``, ``M = (delta * S)^T x``). Peak memory
therefore does not grow with T, except where the signal is known only after the last step:
``f3_error: current`` (DFA) with ``f3_local: spike`` and ``f3_local_output: spike`` keep that
layer's input and spike trace (``[T, B, ...]``) for layers whose input is not constant.

Comparison modes: ``f3_error: target`` is DRTP (e = y - 1/C), ``current`` is DFA (e = y - yhat of
this forward; update-locked). The store is written after the sample's forward and before the
optimizer step; it and the matrices ``B_l`` are trainer state (checkpointed, exact on resume).
``B_l`` is drawn from its own generator seeded from ``cfg["seed"]`` (the global RNG is untouched,
so other trainers with the same seed get the same network init and data order).
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from ..core.f3 import (
    DELAYED,
    ERRORS,
    INITS,
    LOCALS,
    centered_target,
    direction_from_sums,
    error_to_store,
    feedback_matrix,
    hidden_delta,
    local_factor,
    read_store,
    spike_correlation,
    spike_direction,
)
from ..core.readout import predict
from ..core.synapse import LinearOps
from ..nn.layers import AvgPool2d, CubaLIFConv2d, CubaLIFLinear, Flatten, LIFConv2d, LIFLinear, MaxPool2d
from .distributed import all_gather_rows
from .errors import ConfigError
from .protocol import Batch, StepResult, TrainContext, Trainer
from .registry import Option, TrainerSpec, register_trainer
from .stats import update_statistics

Tensor = torch.Tensor

#: seed offset of the feedback-matrix generator (kept apart from every other use of the seed)
FEEDBACK_SEED_KEY = 0xF3F3F3


OPTIONS = (
    Option("f3_error", "delayed", "F3 error kind: " + " | ".join(ERRORS)
           + " (target = DRTP, current = DFA)", choices=ERRORS),
    Option("f3_tau", 0.1, "F3 softmax temperature of delayed_softmax", kind=float, minimum=0.0,
           strict=True),
    Option("f3_local", "ratevar", "F3 local factor of the hidden layers: " + " | ".join(LOCALS),
           choices=LOCALS),
    Option("f3_local_output", "none", "F3 local factor of the output layer: " + " | ".join(LOCALS),
           choices=LOCALS),
    Option("f3_init", "kaiming_uniform", "F3 feedback matrix init: " + " | ".join(INITS),
           choices=INITS),
)

_ALLOWED = (LIFLinear, LIFConv2d, CubaLIFLinear, CubaLIFConv2d, Flatten, AvgPool2d, MaxPool2d)


def _recurrent(layer: nn.Module) -> bool:
    return getattr(layer, "recurrent", False)


def check_network(cfg: Dict[str, Any], net: nn.Module, context: Optional[TrainContext] = None) -> None:
    """Refuse (one line) a network F3 cannot train: fewer than two synaptic layers (no hidden
    layer), a non-spiking or unknown layer, or a last layer that is not synaptic."""
    layers = list(net)
    bad = [type(m).__name__ for m in layers if not isinstance(m, _ALLOWED)]
    if bad:
        raise ConfigError(f"trainer 'f3': layer type(s) {bad} are not supported; F3 handles "
                          f"{[c.__name__ for c in _ALLOWED]}")
    plain = [type(m).__name__ for m in layers if getattr(m, "kind", "") == "synaptic" and not m.spiking]
    if plain:
        raise ConfigError(f"trainer 'f3': non-spiking layer(s) {plain}; F3 needs LIF layers")
    syn = [i for i, m in enumerate(layers) if getattr(m, "kind", "") == "synaptic"]
    if len(syn) < 2:
        raise ConfigError(f"trainer 'f3': the network has {len(syn)} synaptic layer(s) and no "
                          f"hidden layer; F3 needs at least one (e.g. hidden: [128])")
    if syn[-1] != len(layers) - 1:
        raise ConfigError(f"trainer 'f3': the last layer is {type(layers[-1]).__name__}; "
                          f"it must be the synaptic output layer")
    rec = [i for i in syn if _recurrent(layers[i])]
    local = (cfg.get("f3_local"), cfg.get("f3_local_output"))
    if rec and "spike" in local:
        raise ConfigError(f"trainer 'f3': local factor 'spike' with recurrent layer(s) {rec} is not "
                          f"supported; use f3_local none, rate or ratevar")


def neuron_shapes(net: nn.Module, input_shape: Tuple[int, ...], device=None, dtype=None) -> List[Tuple[int, ...]]:
    """The neuron shape ``[*out]`` of every synaptic layer (one step on a zero frame)."""
    p = next(net.parameters())
    x = torch.zeros(1, *input_shape, device=device or p.device, dtype=dtype or p.dtype)
    with torch.no_grad():
        recs = next(iter(net.stream(x, 1)))
    return [tuple(recs[i].spikes.shape[1:]) for i, _ in net.synaptic_layers()]



class ForwardSums(NamedTuple):
    """What :meth:`F3Trainer._forward_sums` keeps per synaptic layer j: S_j = sum_t s_t, A_j =
    sum_t a_t, M_j (spike-factor correlations), the (spike, input) traces where the plan needs
    them, V = sum_t v^L_t of the output layer, the constant input frame x0 and s_T of each layer."""

    S: List[Any]
    A: List[Any]
    M: List[Any]
    traces: Tuple[List[List[Tensor]], List[List[Tensor]]]
    V: Any
    x0: Optional[Tensor]
    last: List[Any]

class F3Trainer(Trainer):
    """F3 / DRTP / DFA for LIF networks, memory flat in T (see the module docstring)."""

    name = "f3"

    def __init__(self, cfg: Dict[str, Any], net: nn.Module, context: TrainContext):
        super().__init__(cfg, net, context)
        check_network(cfg, net, context)
        self.error, self.tau = cfg["f3_error"], float(cfg["f3_tau"])
        self.local, self.local_output = cfg["f3_local"], cfg["f3_local_output"]
        self.syn = net.synaptic_layers()
        self.names = [n for n, _ in net.named_children()]
        C = context.num_classes
        self.num_classes = C
        p = next(net.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.shapes = neuron_shapes(net, tuple(context.input_shape), self.device, self.dtype)
        if self.shapes[-1] != (C,):
            raise ConfigError(f"trainer 'f3': the output layer has {self.shapes[-1]} neurons; "
                              f"it must have one per class ({C})")
        gen = torch.Generator().manual_seed((int(cfg["seed"]) * 1_000_003 + FEEDBACK_SEED_KEY) % (2 ** 62))
        self.feedback: List[Tensor] = [
            feedback_matrix(C, _numel(s), cfg["f3_init"], gen, self.dtype).to(self.device)
            for s in self.shapes[:-1]]
        self.store: Optional[Tensor] = None
        self.seen: Optional[Tensor] = None
        if self.error in DELAYED:
            self.store = torch.zeros(context.num_train, C, device=self.device, dtype=self.dtype)
            self.seen = torch.zeros(context.num_train, dtype=torch.bool, device=self.device)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        st: Dict[str, Any] = {"feedback": [b.clone() for b in self.feedback]}
        if self.store is not None:
            st["store"], st["seen"] = self.store.clone(), self.seen.clone()
        return st

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        fb = state.get("feedback")
        if fb is None or len(fb) != len(self.feedback) or any(
                tuple(a.shape) != tuple(b.shape) for a, b in zip(fb, self.feedback)):
            raise ValueError("trainer 'f3': the checkpoint's feedback matrices do not fit this "
                             "network")
        self.feedback = [b.to(device=self.device, dtype=self.dtype) for b in fb]
        if self.store is not None:
            if "store" not in state or tuple(state["store"].shape) != tuple(self.store.shape):
                raise ValueError(f"trainer 'f3': the checkpoint has no error store of shape "
                                 f"{tuple(self.store.shape)} (error kind {self.error!r})")
            self.store = state["store"].to(device=self.device, dtype=self.dtype)
            self.seen = state["seen"].to(device=self.device, dtype=torch.bool)

    # ------------------------------------------------------------------ step
    def _check_index(self, index: Tensor) -> None:
        n = self.store.shape[0]
        lo, hi = torch.aminmax(index)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= n:
            raise ConfigError(f"trainer 'f3': sample index {hi if hi >= n else lo} is out of range "
                              f"of the error store ({n} training samples)")

    def _error_before(self, batch: Batch, yc: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(e known before the forward or None for ``current``, the batch's store rows or None)."""
        if self.error == "target":
            return yc, None
        if self.error not in DELAYED:
            return None, None
        if batch.index is None:
            raise ConfigError(f"trainer 'f3': f3_error {self.error!r} needs each sample's index "
                              f"in the training set (Batch.index); the batch has none")
        index = batch.index.to(self.device)
        self._check_index(index)
        return read_store(self.store, self.seen, index, yc), index

    def _forward_sums(self, batch: Batch, deltas: List[Optional[Tensor]],
                      plan: Dict[str, List[bool]]) -> "ForwardSums":
        """Run the forward step by step; per synaptic layer j keep S_j = sum_t s_t, and as the
        plan says A_j = sum_t a_t, M_j = sum_t correlate(delta_j * s_t, a_t) or the trace."""
        L = len(self.syn)
        S: List[Any] = [None] * L
        A: List[Any] = [None] * L
        M: List[Any] = [None] * L
        traces: Tuple[List[List[Tensor]], List[List[Tensor]]] = ([[] for _ in range(L)], [[] for _ in range(L)])
        V, x0 = None, None
        last: List[Any] = [None] * L  # s_T (recurrent layers: sum_t s_{t-1} = S - s_T)
        for t, recs in enumerate(self.net.stream(batch.x, batch.steps)):
            if t == 0:
                x0 = recs[self.syn[0][0]].x
            for j, (i, layer) in enumerate(self.syn):
                rec = recs[i]
                S[j] = rec.spikes.to(self.dtype, copy=True) if t == 0 else S[j].add_(rec.spikes)
                last[j] = rec.spikes
                if plan["A"][j]:
                    A[j] = rec.x.clone() if t == 0 else A[j].add_(rec.x)
                if plan["M"][j]:
                    m = spike_correlation(deltas[j], rec.spikes, rec.x, layer.ops, layer.weight.shape)
                    M[j] = m if t == 0 else M[j].add_(m)
                if plan["trace"][j]:
                    traces[0][j].append(rec.spikes)
                    traces[1][j].append(rec.x)
            mem = recs[-1].membrane
            V = mem.clone() if t == 0 else V.add_(mem)
        return ForwardSums(S, A, M, traces, V, x0, last)

    @torch.no_grad()
    def compute(self, batch: Batch) -> Tuple[Dict[str, Tensor], StepResult]:
        """One forward with running sums -> ({parameter name: G}, the step's result), and the
        store rows of this batch written (delayed kinds)."""
        const = batch.steps is not None
        T = batch.steps if const else batch.x.shape[0]
        C = self.num_classes
        y = torch.nn.functional.one_hot(batch.labels.long(), C).to(self.dtype)
        yc = centered_target(batch.labels, C, self.dtype)  # y - 1/C
        e, index = self._error_before(batch, yc)
        L = len(self.syn)
        locals_ = [self.local] * (L - 1) + [self.local_output]
        deltas: List[Optional[Tensor]] = [None] * L
        if e is not None:  # known before the forward: hidden updates form during it
            deltas[:-1] = [hidden_delta(e, b, s) for b, s in zip(self.feedback, self.shapes)]
        const_in = [const and j == 0 for j in range(L)]
        spike = [loc == "spike" and not const_in[j] for j, loc in enumerate(locals_)]
        plan = {"A": [loc != "spike" and not const_in[j] for j, loc in enumerate(locals_)],
                "M": [spike[j] and deltas[j] is not None for j in range(L)],
                "trace": [spike[j] and deltas[j] is None for j in range(L)]}
        S, A, M, traces, V, x0, last = self._forward_sums(batch, deltas, plan)
        yhat = S[-1] / T
        current = y - yhat
        if e is None:  # current (DFA): known only now
            deltas[:-1] = [hidden_delta(current, b, s) for b, s in zip(self.feedback, self.shapes)]
        deltas[-1] = current
        grads: Dict[str, Tensor] = {}
        for j, (i, layer) in enumerate(self.syn):
            bias, wshape, d = layer.bias is not None, layer.weight.shape, deltas[j]
            if locals_[j] == "spike":
                if const_in[j]:  # constant input: sum_t (d * s_t)^T x = (d * S)^T x
                    m = spike_correlation(d, S[j], x0, layer.ops, wshape)
                elif plan["trace"][j]:
                    m = spike_correlation(d, torch.stack(traces[0][j]), torch.stack(traces[1][j]),
                                          layer.ops, wshape)
                else:
                    m = M[j]
                gw, gb = spike_direction(d, S[j], m, T, layer.ops, bias)
            else:
                inp = x0 * T if const_in[j] else A[j]
                gw, gb = direction_from_sums(d, local_factor(locals_[j], S[j], T), inp, T,
                                             layer.ops, wshape, bias)
            grads[f"{self.names[i]}.weight"] = gw
            if gb is not None:
                grads[f"{self.names[i]}.bias"] = gb
            if _recurrent(layer):  # V like W, with input s_{t-1}: sum_t s_{t-1} = S - s_T
                Vw, bV = layer.recurrent_parameters()
                prev = S[j] - last[j].to(self.dtype)
                gv, gbv = direction_from_sums(d, local_factor(locals_[j], S[j], T), prev, T,
                                              LinearOps(), Vw.shape, bV is not None)
                grads[f"{self.names[i]}.recurrent_weight"] = gv
                if gbv is not None:
                    grads[f"{self.names[i]}.recurrent_bias"] = gbv
        if index is not None:  # after the forward, before the optimizer step
            # data-parallel: every process writes every process's rows (the next epoch may
            # send a sample to another process): B x C numbers per step
            index, rows = all_gather_rows(index, error_to_store(self.error, y, yhat, self.tau))
            self.store[index] = rows
            self.seen[index] = True
        pred = predict(S[-1].unsqueeze(0), V.unsqueeze(0))
        rates = torch.stack([s.float().mean() / T for s in S])
        objective = (current ** 2).sum(-1).mean()
        return grads, StepResult(objective, "sq_error", pred, rates)

    def step(self, batch: Batch, want_stats: bool = False) -> StepResult:
        grads, res = self.compute(batch)
        params = dict(self.net.named_parameters())
        for k, g in grads.items():
            params[k].grad = (-g).to(params[k].dtype)
        if want_stats:
            res = res._replace(stats={"trainer": self.name,
                                      **update_statistics(self.net, grads, None)})
        return res


def _numel(shape: Tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


register_trainer(TrainerSpec(
    "f3", F3Trainer,
    "F3: delayed error through fixed random feedback (also DRTP, DFA); no backward pass",
    OPTIONS, check=check_network))
