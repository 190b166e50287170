"""Layer-wise Feedback Propagation (LFP) over a whole network: the trainer-facing object.

Usage::

    net = spikelfp.nn.Sequential(spikelfp.nn.Flatten(), spikelfp.nn.LIFLinear(64, 32),
                                 spikelfp.nn.LIFLinear(32, 10))
    lfp = LFP(net, rule="epsilon", reward="sequence")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for x, y in loader:
        opt.zero_grad()
        result = lfp.step(x, y, steps=25)   # forward + feedback; writes param.grad = -G
        opt.step()

No autograd is used anywhere: the forward runs under ``torch.no_grad`` with the Heaviside
spike, and every layer's feedback is a closed form (:mod:`spikelfp.core.feedback`). The
network only needs ``run(x, steps)`` returning a trace with ``output``, ``membrane`` and
``records``, and layers with ``feedback(...)`` (see :mod:`spikelfp.nn`).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn as nn

from .readout import predict
from .rewards import get_reward
from .rules import TEMPORAL_MODES, Rule, RuleSpec, check_norm_scope, layer_kinds, resolve_rule

Tensor = torch.Tensor


class LFPResult(NamedTuple):
    """Outcome of one LFP pass.

    output: output layer activity ``[T, B, C]``; reward: the reward given to it;
    prediction: predicted classes ``[B]``; grads: ``{parameter name: G}`` (direction of
    improvement, before clipping); trace: the forward trace; feedback: the feedback arriving at
    each layer's output (``{layer name: r}``), only when asked for.
    """

    output: Tensor
    reward: Tensor
    prediction: Tensor
    grads: Dict[str, Tensor]
    trace: object
    feedback: Optional[Dict[str, Tensor]] = None


class LFP:
    """Layer-wise Feedback Propagation for a spikelfp network.

    Args:
        network: a :class:`spikelfp.nn.Sequential` (or anything with the same ``run`` contract).
        rule: one rule for all layers (``"epsilon"`` default, ``"zero"``, ``"zplus_zminus"``,
            ``"alphabeta"``, ``"lfprop"``, or a :class:`Rule`), or a composite mapping from layer
            name / class name / ``"conv"`` / ``"linear"`` / ``"default"`` to a rule.
        reward: ``"sequence"`` (Eq. A.16 / T, default), ``"eq7"``, ``"plusminus"`` or a callable
            ``reward(outputs, labels) -> tensor shaped like outputs``.
        normalize: max-abs normalization scope ``"step"`` (default), ``"layer"``, ``"sample"``
            or ``None``/``"off"``. Default: ``"step"``, or off when every layer uses ``lfprop``.
        temporal: ``"relevance"`` (c_{t-1} = z^u_t n_t, default) or ``"direction"``
            (c_{t-1} = |z^u_t| n_t), spec 3d.
        epsilon, alpha, beta: rule constants (epsilon 1e-6; alpha-beta = 1 is checked).
        batch_reduction: ``"mean"`` (spec section 4) or ``"sum"`` (lfprop). Default: mean, or
            sum when every layer uses ``lfprop``.
        clip_norm: if set, G is scaled so its global L2 norm is at most this.
        agc: if set, adaptive gradient clipping (Brock et al. 2021) with this clip factor,
            unit-wise ``||G_i|| <= agc * max(||W_i||, agc_eps)``.
    """

    def __init__(self, network: nn.Module,
                 rule: Union[RuleSpec, Mapping[str, RuleSpec]] = "epsilon",
                 reward: Union[str, Callable[[Tensor, Tensor], Tensor]] = "sequence",
                 normalize: Optional[str] = "default", temporal: str = "relevance",
                 epsilon: float = 1e-6, alpha: float = 2.0, beta: float = 1.0,
                 batch_reduction: Optional[str] = None, clip_norm: Optional[float] = None,
                 agc: Optional[float] = None, agc_eps: float = 1e-3):
        self.network = network
        self.reward_fn = get_reward(reward)
        if temporal not in TEMPORAL_MODES:
            raise ValueError(f"temporal={temporal!r} is not allowed; use one of {list(TEMPORAL_MODES)}")
        self.temporal = temporal
        self.layers = [(name, m) for name, m in network.named_children() if hasattr(m, "feedback")]
        if not self.layers:
            raise ValueError("LFP: the network has no spikelfp layers")
        self.rules: Dict[str, Rule] = {}
        for name, m in self.layers:
            if getattr(m, "kind", "") == "synaptic":
                self.rules[name] = resolve_rule(rule, name, layer_kinds(m), epsilon, alpha, beta)
        if isinstance(rule, Mapping):
            known = {n for n, _ in network.named_children()} | {"default", "conv", "linear", "pool"}
            known |= {layer_kinds(m)[0] for _, m in self.layers}
            unknown = sorted(set(rule) - known)
            if unknown:
                raise ValueError(f"LFP composite: keys {unknown} match no layer name or kind; "
                                 f"known: {sorted(known)}")
        all_lfprop = bool(self.rules) and all(r.name == "lfprop" for r in self.rules.values())
        self.normalize = check_norm_scope(None if all_lfprop else "step") if normalize == "default" \
            else check_norm_scope(normalize)
        self.batch_reduction = batch_reduction or ("sum" if all_lfprop else "mean")
        if self.batch_reduction not in ("mean", "sum"):
            raise ValueError(f"batch_reduction={batch_reduction!r}; use 'mean' or 'sum'")
        for label, v in (("clip_norm", clip_norm), ("agc", agc)):
            if v is not None and not v > 0:
                raise ValueError(f"{label}={v} is not allowed; it must be > 0 (or None to disable)")
        self.clip_norm, self.agc, self.agc_eps = clip_norm, agc, agc_eps
        # The walk of the backward pass, top layer down to the lowest synaptic layer (layers
        # below it need no feedback): fixed by the network, so derived once, not per batch.
        children = list(network.named_children())
        lowest = min((i for i, (_, m) in enumerate(children) if getattr(m, "kind", "") == "synaptic"),
                     default=len(children))
        self._walk = [(i, name, m, getattr(m, "kind", "") == "synaptic", i > lowest)
                      for i, (name, m) in reversed(list(enumerate(children))) if i >= lowest]

    # ------------------------------------------------------------------ passes
    @torch.no_grad()
    def compute(self, x: Tensor, labels: Tensor, steps: Optional[int] = None,
                keep_feedback: bool = False) -> LFPResult:
        """Forward over the sequence, reward, and feedback through every layer (no side effects)."""
        trace = self.network.run(x.detach(), steps)
        return self.backward(trace, labels, keep_feedback=keep_feedback)

    @torch.no_grad()
    def backward(self, trace, labels: Tensor, keep_feedback: bool = False) -> LFPResult:
        """Propagate the reward of a forward ``trace`` down the network; returns G per parameter."""
        out = trace.output
        labels = torch.as_tensor(labels, device=out.device)
        reward = self.reward_fn(out, labels)
        if not isinstance(reward, Tensor) or reward.shape != out.shape:
            got = tuple(reward.shape) if isinstance(reward, Tensor) else type(reward).__name__
            raise ValueError(f"reward returned {got}; it must be a tensor shaped like the outputs "
                             f"{tuple(out.shape)}")
        reward = reward.to(out.dtype)
        records = trace.records
        grads: Dict[str, Tensor] = {}
        feedback: Dict[str, Tensor] = {}
        r = reward
        for i, name, layer, synaptic, need_below in self._walk:
            if keep_feedback:
                feedback[name] = r
            res = layer.feedback(
                r, records[i], rule=self.rules[name], need_below=need_below,
                normalize=self.normalize, temporal=self.temporal,
                batch_reduction=self.batch_reduction,
            ) if synaptic else layer.feedback(r, records[i], rule=None, need_below=need_below)
            if res.grad_weight is not None:
                grads[f"{name}.weight"] = res.grad_weight
            if res.grad_bias is not None:
                grads[f"{name}.bias"] = res.grad_bias
            r = res.below
        self._check_finite(grads)
        return LFPResult(out, reward, predict(out, trace.membrane), grads, trace,
                         feedback if keep_feedback else None)

    def step(self, x: Tensor, labels: Tensor, steps: Optional[int] = None) -> LFPResult:
        """:meth:`compute`, then clip G and write ``param.grad = -G`` (call ``optimizer.step()``)."""
        result = self.compute(x, labels, steps)
        self.apply(result.grads)
        return result

    @torch.no_grad()
    def apply(self, grads: Dict[str, Tensor]) -> None:
        """Clip (if configured) and write ``param.grad = -G`` for every parameter in ``grads``."""
        params = dict(self.network.named_parameters())
        gs = grads
        if self.agc is not None:
            gs = {k: adaptive_clip(g, params[k], self.agc, self.agc_eps) for k, g in gs.items()}
        if self.clip_norm is not None:
            gs = clip_global_norm(gs, self.clip_norm)
        for k, g in gs.items():
            p = params[k]
            p.grad = (-g).to(p.dtype)

    def _check_finite(self, grads: Dict[str, Tensor]) -> None:
        if not grads:
            return
        # NaN and inf propagate through a sum: one reduction per tensor and one host sync.
        ok = torch.isfinite(torch.stack([g.sum() for g in grads.values()])).all()
        if not bool(ok):
            bad = next(k for k, g in grads.items() if not torch.isfinite(g).all())
            raise RuntimeError(
                f"LFP: non-finite feedback (NaN/inf) in {bad!r}; check the input and weights for "
                f"NaN, or stabilize with clip_norm/agc or the 'zplus_zminus' rule"
            )


def clip_global_norm(grads: Dict[str, Tensor], max_norm: float) -> Dict[str, Tensor]:
    """Scale all G together so that their global L2 norm is at most ``max_norm`` (no host sync)."""
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return {k: g * scale.to(g.dtype) for k, g in grads.items()}


def adaptive_clip(g: Tensor, w: Tensor, clip: float, eps: float = 1e-3) -> Tensor:
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, NFNets).

    Each unit i (output row of a weight, one element of a bias) is scaled so that
    ``||G_i|| <= clip * max(||W_i||, eps)``.
    """
    if g.dim() <= 1:
        gn, wn = g.abs(), w.detach().abs()
    else:
        dims = tuple(range(1, g.dim()))
        gn = torch.linalg.vector_norm(g, dim=dims, keepdim=True)  # Tensor.norm fails for 3 dims
        wn = torch.linalg.vector_norm(w.detach(), dim=dims, keepdim=True)
    max_norm = clip * wn.clamp(min=eps)
    scale = torch.where(gn > max_norm, max_norm / gn.clamp(min=1e-12), torch.ones_like(gn))
    return g * scale
