"""FFzero (the ``ffzero`` trainer): forward-only, layer-local learning with directional
derivatives (spec ``ffzero-for-lif.md``; math in :mod:`spikelfp.core.ffzero`).

Every synaptic layer l has fixed unit class prototypes P_l (a regular simplex; Haar-rotated for
hidden layers, unrotated for the output layer so the ordinary spike-count readout names the
class) and a local margin loss on its representation z^l (rate ``(1/T) sum_t s_t``, or for
hidden layers optionally the mean membrane ``(1/T) sum_t v_t``; the output layer always uses the
rate). Its parameters move along K random unit directions u_k (seeded by (seed, global step,
layer)), measured by 2K perturbed forward runs of the layer itself::

    I'^{+/-}_{k,t} = (x_t W^T + b) +/- eps (x_t U_k^T + u_{b,k})      (x_t: the unperturbed input)
    G_l = -(d_l / K) sum_k (L_l(theta + eps u_k) - L_l(theta - eps u_k)) / (2 eps) u_k

One step runs the network once, step by step (:meth:`Sequential.stream`, no [T, B, N] trace);
beside it, each trained layer carries its 2K perturbed LIF states ``[2K, B, *out]``, driven by
the unperturbed current plus eps times the K direction currents (one batched matmul /
convolution per step; for a constant input the first layer's currents are computed once). Only
per-neuron sums over t are kept. No autograd.

CUBA and recurrent layers (``CubaLIFLinear`` / ``CubaLIFConv2d``, spec ``lfp-cuba-recurrent.md``
section 4): theta_l = (W, b, V, b_V) (those the layer has); the directions u_k span all of them
(unit length jointly), and the 2K perturbed runs step the layer's own CUBA equations
(:func:`spikelfp.core.cuba.cuba_step`: their own synaptic currents i'_t and, for a recurrent
layer, their own spikes s'_{t-1} through V)::

    i'_{k,t} = alpha i'_{k,t-1} + [(W x_t + b) +/- eps (U_k x_t + u_{b,k}) +/- eps (U_{V,k} s'_{k,t-1} + u_{bV,k})]
               + (V s'_{k,t-1} + b_V)

(the direction parts in one batched matmul each, :func:`direction_currents` and
:func:`recurrent_direction_currents`). With eps = 0 every perturbed run is the unperturbed layer.

Forward evaluations per step (in units of one layer's forward over T): one network forward plus
2K per trained layer.

Schedules: ``simultaneous`` (every layer every batch) and ``sequential`` (layer l trained for
``epochs`` epochs then frozen: ``L * epochs`` epochs in all).
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from ..core.ffzero import (
    cosine_scores,
    direction_currents,
    direction_seed,
    estimate_improvement,
    layer_prototypes,
    lif_step_,
    margin_loss,
    prototype_seed,
    recurrent_direction_currents,
    sample_directions,
)
from ..core.cuba import cuba_step
from ..core.readout import predict
from ..core.synapse import Conv2dOps, LinearOps
from .distributed import weighted_mean
from .errors import ConfigError
from .protocol import Batch, StepResult, TrainContext, Trainer
from .registry import Option, TrainerSpec, register_trainer
from .stats import update_statistics

Tensor = torch.Tensor

REPRESENTATIONS = ("rate", "membrane")
SCHEDULES = ("simultaneous", "sequential")

OPTIONS = (
    Option("ff_directions", 64, "FFzero: random directions K per layer and step (2K perturbed "
           "forwards of the layer)", kind=int, minimum=1),
    Option("ff_eps", 1.0, "FFzero: L2 norm of a layer's perturbation eps", kind=float,
           minimum=0.0, strict=True),
    Option("ff_representation", "rate", "FFzero: hidden-layer representation: rate | membrane "
           "(the output layer always uses rate)", choices=REPRESENTATIONS),
    Option("ff_schedule", "simultaneous", "FFzero: simultaneous (every layer every batch) | "
           "sequential (layer by layer, epochs each)", choices=SCHEDULES),
    Option("ff_margin", 0.3, "FFzero: margin m of the prototype loss", kind=float, minimum=0.0),
)


class SynapticLayer(NamedTuple):
    """A layer FFzero trains: its index in the network, 1-based synaptic index j, its parameters
    (weight, bias or None) and its number of neurons."""

    index: int
    number: int
    name: str
    module: nn.Module
    width: int


def synaptic_layers(net: nn.Module) -> List[SynapticLayer]:
    """The synaptic layers of ``net`` in order (``width`` left 0: see :func:`layer_widths`)."""
    out = []
    for i, (name, m) in enumerate(net.named_children()):
        if getattr(m, "kind", "") == "synaptic":
            out.append(SynapticLayer(i, len(out) + 1, name, m, 0))
    return out


@torch.no_grad()
def layer_widths(net: nn.Module, input_shape) -> List[int]:
    """Neurons of each synaptic layer (flattened output size) for one input frame of
    ``input_shape`` (one step of the network on zeros)."""
    p = next(net.parameters())
    x = torch.zeros((1, *input_shape), dtype=p.dtype, device=p.device)
    recs = next(iter(net.stream(x, 1)))
    return [recs[i].spikes[0].numel() for i, m in enumerate(net)
            if getattr(m, "kind", "") == "synaptic"]


def layer_parameters(module: nn.Module) -> List[Tuple[str, Optional[Tensor]]]:
    """theta_l of a synaptic layer as ``[(name, parameter or None), ...]``: weight, bias and,
    for a recurrent layer, recurrent_weight, recurrent_bias (V, b_V)."""
    out = [("weight", module.weight), ("bias", module.bias)]
    if getattr(module, "recurrent_parameters", None) is not None:
        V, bV = module.recurrent_parameters()
        if V is not None:
            out += [("recurrent_weight", V), ("recurrent_bias", bV)]
    return out


def check_ffzero(cfg: Dict[str, Any], net: nn.Module, context: TrainContext) -> None:
    """Refuse (one line) a network FFzero cannot train."""
    C = int(context.num_classes)
    layers = [(i, n, m) for i, (n, m) in enumerate(net.named_children())
              if getattr(m, "kind", "") == "synaptic"]
    if C < 2:
        raise ConfigError(f"trainer 'ffzero': the data has {C} class(es); prototypes need >= 2")
    if not layers:
        raise ConfigError("trainer 'ffzero': the network has no synaptic layer to train")
    for _i, n, m in layers:
        if not getattr(m, "spiking", False) or not isinstance(getattr(m, "ops", None),
                                                             (LinearOps, Conv2dOps)):
            raise ConfigError(f"trainer 'ffzero': layer {n!r} ({type(m).__name__}) is not a spiking "
                              f"(CUBA) LIFLinear/LIFConv2d layer; ffzero trains only those")
    try:
        widths = layer_widths(net, context.input_shape)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"trainer 'ffzero': the network does not run on inputs "
                          f"{tuple(context.input_shape)}: {str(e).splitlines()[0]}") from None
    for (_i, n, _m), w in zip(layers, widths):
        if w < C:
            raise ConfigError(f"trainer 'ffzero': layer {n!r} has {w} neurons, fewer than the {C} "
                              f"classes; every synaptic layer needs >= {C} (e.g. --hidden {max(C, 64)})")
    if widths[-1] != C:
        raise ConfigError(f"trainer 'ffzero': the output layer {layers[-1][1]!r} has {widths[-1]} "
                          f"neurons; it must have one per class ({C})")


class FFzeroForward(NamedTuple):
    """What the forward part of one step produced (before any gradient is written).

    losses: ``{synaptic number j: [2K] losses}`` of the trained layers (K plus, then K minus);
    directions: ``{j: [u_weight [K, *W], u_bias [K, *b] or None]}``; layer_loss: the unperturbed
    local loss of every synaptic layer ``[L]``; proto_correct: correct prototype readouts per
    layer ``[L]`` (counts); prediction ``[B]``; rates ``[L]``.
    """

    losses: Dict[int, Tensor]
    directions: Dict[int, List[Optional[Tensor]]]
    layer_loss: Tensor
    proto_correct: Tensor
    prediction: Tensor
    rates: Tensor


class FFzeroTrainer(Trainer):
    """FFzero: per-layer prototype losses, directional derivatives from forward runs only."""

    name = "ffzero"
    #: data-parallel: the processes exchange only the 2K losses per layer (all-reduced in
    #: :meth:`step`); every process draws the same directions from (seed, step, layer).
    reduces_gradients = True

    def __init__(self, cfg: Dict[str, Any], net: nn.Module, context: TrainContext):
        super().__init__(cfg, net, context)
        self.K = int(cfg["ff_directions"])
        self.eps = float(cfg["ff_eps"])
        self.representation = cfg["ff_representation"]
        self.schedule = cfg["ff_schedule"]
        self.margin = float(cfg["ff_margin"])
        self.seed = int(cfg["seed"])
        self.layers = synaptic_layers(net)
        widths = layer_widths(net, context.input_shape)
        self.layers = [s._replace(width=w) for s, w in zip(self.layers, widths)]
        p = next(net.parameters())
        C = int(context.num_classes)
        L = len(self.layers)
        self.prototypes: List[Tensor] = []
        for s in self.layers:
            gen = torch.Generator().manual_seed(prototype_seed(self.seed, s.number))
            self.prototypes.append(layer_prototypes(C, s.width, rotate=s.number < L, generator=gen,
                                                    dtype=p.dtype, device=p.device))
        self.phase = 0

    # ------------------------------------------------------------------ schedule
    def total_epochs(self) -> int:
        e = int(self.cfg["epochs"])
        return e * len(self.layers) if self.schedule == "sequential" else e

    def begin_epoch(self, epoch: int) -> None:
        if self.schedule == "sequential":
            self.phase = min(epoch // int(self.cfg["epochs"]), len(self.layers) - 1)

    def trained_layers(self) -> List[SynapticLayer]:
        """The layers updated in the current phase (all of them when simultaneous)."""
        return list(self.layers) if self.schedule == "simultaneous" else [self.layers[self.phase]]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {"prototypes": [p.clone() for p in self.prototypes], "phase": self.phase}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        protos = state.get("prototypes") if state else None
        if protos is None or len(protos) != len(self.prototypes):
            raise ValueError(f"trainer 'ffzero': the checkpoint's trainer state holds "
                             f"{0 if protos is None else len(protos)} prototype sets; this network "
                             f"has {len(self.prototypes)} synaptic layers")
        for mine, theirs in zip(self.prototypes, protos):
            if tuple(mine.shape) != tuple(theirs.shape):
                raise ValueError(f"trainer 'ffzero': checkpoint prototypes {tuple(theirs.shape)} do "
                                 f"not match this network's {tuple(mine.shape)}")
            mine.copy_(theirs)
        self.phase = int(state.get("phase", self.phase))

    # ------------------------------------------------------------------ the step
    def directions(self, layer: SynapticLayer, global_step: int) -> List[Optional[Tensor]]:
        """The K unit directions of ``layer`` at ``global_step``, one ``[K, *shape]`` part per
        parameter of :func:`layer_parameters` (None where the layer has no such parameter):
        ``[u_weight, u_bias]``, and for a recurrent layer ``[..., u_recurrent_weight,
        u_recurrent_bias]``; unit length jointly over all parts."""
        params = layer_parameters(layer.module)
        w = params[0][1]
        gen = torch.Generator(device=w.device).manual_seed(
            direction_seed(self.seed, global_step, layer.number))
        present = [tuple(p.shape) for _n, p in params if p is not None]
        u = iter(sample_directions(self.K, present, gen, dtype=w.dtype, device=w.device))
        return [next(u) if p is not None else None for _n, p in params]

    @torch.no_grad()
    def forward(self, batch: Batch) -> FFzeroForward:
        """The network's forward and the 2K perturbed forwards of every trained layer; returns the
        losses (nothing is written to the parameters)."""
        x, steps = batch.x, batch.steps
        T = int(steps) if steps is not None else int(x.shape[0])
        labels = batch.labels
        K, eps = self.K, self.eps
        L = len(self.layers)
        trained = {s.number: s for s in self.trained_layers()}
        dirs = {j: self.directions(s, batch.global_step) for j, s in trained.items()}
        first = self.layers[0].index
        use_membrane = [self.representation == "membrane" and s.number < L for s in self.layers]
        spike_sum: List[Optional[Tensor]] = [None] * L
        mem_sum: List[Optional[Tensor]] = [None] * L
        pert_state: Dict[int, Any] = {}
        pert_sum: Dict[int, Tensor] = {}
        const_current: Dict[int, Tensor] = {}
        for recs in self.net.stream(x, steps):
            for n, s in enumerate(self.layers):
                rec = recs[s.index]
                spk = rec.spikes.to(rec.membrane.dtype)  # spike records may be compact (bool)
                spike_sum[n] = spk.clone() if spike_sum[n] is None else spike_sum[n].add_(spk)
                if use_membrane[n] or s.number == L:
                    mem_sum[n] = rec.membrane.clone() if mem_sum[n] is None else mem_sum[n].add_(rec.membrane)
                if s.number not in trained:
                    continue
                j = s.number
                if steps is not None and s.index == first and j in const_current:
                    cur = const_current[j]
                else:
                    cur = self._perturbed_current(s.module, rec.x, rec.current, dirs[j], eps)
                    if steps is not None and s.index == first:
                        const_current[j] = cur  # constant input: the same currents at every t
                first_step = j not in pert_state
                if hasattr(s.module, "synaptic_decay"):  # CUBA / recurrent: the layer's own step
                    v, sp = self._cuba_step(s.module, cur, pert_state, j, dirs[j], eps)
                else:
                    p = s.module.neuron_parameters()
                    if first_step:  # [2K, B, *out] membrane and spikes, updated in place
                        pert_state[j] = (torch.empty_like(cur), torch.empty_like(cur))
                    v, sp = pert_state[j]
                    lif_step_(cur, v, sp, p.beta, p.threshold, p.reset, first=first_step)
                rep = v if use_membrane[n] else sp
                if first_step:
                    pert_sum[j] = rep.clone()
                else:
                    pert_sum[j].add_(rep)
        B = labels.shape[0]
        losses = {}
        for j in trained:
            n = j - 1
            z = pert_sum[j].reshape(2 * K, B, -1) / T
            losses[j] = margin_loss(cosine_scores(z, self.prototypes[n]), labels, self.margin)
        layer_loss, proto_correct = [], []
        for n in range(L):
            z = (mem_sum[n] if use_membrane[n] else spike_sum[n]).reshape(B, -1) / T
            scores = cosine_scores(z, self.prototypes[n])
            layer_loss.append(margin_loss(scores, labels, self.margin))
            proto_correct.append((scores.argmax(-1) == labels).sum().to(z.dtype))
        out_n = L - 1
        pred = predict(spike_sum[out_n].unsqueeze(0), mem_sum[out_n].unsqueeze(0))
        rates = torch.stack([spike_sum[n].float().mean() / T for n in range(L)])
        return FFzeroForward(losses, dirs, torch.stack(layer_loss), torch.stack(proto_correct),
                             pred, rates)

    @staticmethod
    def global_losses(losses: Dict[int, Tensor], n_local: int) -> Dict[int, Tensor]:
        """Each layer's 2K losses as means over the global batch: in data-parallel training one
        all-reduce of the 2K x (trained layers) scalars (plus a count), nothing else."""
        keys = list(losses)
        if not keys:
            return losses
        flat = weighted_mean(torch.cat([losses[j] for j in keys]), n_local)
        return dict(zip(keys, flat.split([losses[j].numel() for j in keys])))

    @staticmethod
    def _perturbed_current(layer: nn.Module, x_t: Tensor, i_t: Optional[Tensor],
                           dirs: List[Optional[Tensor]], eps: float) -> Tensor:
        """``[I + eps dI_1..K ; I - eps dI_1..K]`` ``[2K, B, *out]``: the unperturbed current
        ``i_t`` (the network's own, from :meth:`Sequential.stream`; computed if None), the K
        direction currents in one batched matmul/convolution."""
        if i_t is None:
            i_t = layer.current(x_t)
        d = direction_currents(layer.ops, x_t, dirs[0], dirs[1]).mul_(eps)
        return torch.cat([i_t.unsqueeze(0) + d, i_t.unsqueeze(0) - d])

    @staticmethod
    def _cuba_step(layer: nn.Module, cur: Tensor, pert_state: Dict[int, Any], j: int,
                   dirs: List[Optional[Tensor]], eps: float):
        """One step of the 2K perturbed runs of a CUBA / recurrent layer (state in
        ``pert_state[j]``, a :class:`~spikelfp.core.cuba.CubaState` ``[2K, B, *out]``): the
        recurrent direction currents from the runs' own previous spikes are added to the
        feed-forward ``cur``, then the layer's CUBA step. Returns (membrane, spikes)."""
        beta, theta, reset, alpha = layer.cuba_parameters()
        V, bV = layer.recurrent_parameters()
        state = pert_state.get(j)
        if V is not None:
            prev = state.spikes if state is not None else torch.zeros_like(cur)
            cur = cur + recurrent_direction_currents(prev, dirs[2], dirs[3], eps)
        state = cuba_step(cur, state, alpha, beta, theta, reset, V, bV)
        pert_state[j] = state
        return state.membrane, state.spikes.to(cur.dtype)

    @torch.no_grad()
    def apply_losses(self, losses: Dict[int, Tensor],
                     directions: Dict[int, List[Optional[Tensor]]]) -> Dict[str, Tensor]:
        """G of every trained layer from its 2K losses and its directions; writes
        ``param.grad = -G`` and returns ``{parameter name: G}``. In data-parallel training the
        losses are all-reduced (averaged) before this call; the directions are redrawn by each
        process from :meth:`directions`."""
        grads: Dict[str, Tensor] = {}
        for j, loss in losses.items():
            s = self.layers[j - 1]
            params = [(n, p) for n, p in layer_parameters(s.module) if p is not None]
            us = [u for u in directions[j] if u is not None]
            for (pname, prm), g in zip(params, estimate_improvement(loss, us, self.eps)):
                prm.grad = (-g).to(prm.dtype)
                grads[f"{s.name}.{pname}"] = g
        return grads

    def step(self, batch: Batch, want_stats: bool = False) -> StepResult:
        fw = self.forward(batch)
        grads = self.apply_losses(self.global_losses(fw.losses, batch.labels.shape[0]), fw.directions)
        B = batch.labels.shape[0]
        extras = {f"proto_acc_{n + 1}": fw.proto_correct[n] / B for n in range(len(self.layers))}
        extras.update({f"ff_loss_{n + 1}": fw.layer_loss[n] for n in range(len(self.layers))})
        stats = ({"trainer": self.name, "phase": self.phase,
                  **update_statistics(self.net, grads, None)} if want_stats else None)
        return StepResult(fw.layer_loss.mean(), "ff_loss", fw.prediction, fw.rates, stats, extras)


def forward_evaluations(num_trained_layers: int, K: int) -> int:
    """Layer forwards over T per step beyond the network's own forward: 2K per trained layer."""
    return 2 * K * int(num_trained_layers)


register_trainer(TrainerSpec(
    "ffzero", FFzeroTrainer,
    "FFzero: forward-only layer-local learning (prototype loss, 2K perturbed forwards per layer)",
    OPTIONS, check=check_ffzero))
