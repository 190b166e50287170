"""Surrogate-gradient BPTT baseline (the ``surrogate`` trainer): the Heaviside forward with a
smooth derivative in the backward, trained by autograd through time.

Definitions as in snnTorch (``snntorch.surrogate``):

    atan(alpha=2.0):          dS/dx = alpha / 2 / (1 + (pi/2 * alpha * x)^2)
    fast_sigmoid(slope=25):   dS/dx = 1 / (slope * |x| + 1)^2

with x = v - theta. The forward is the same Heaviside as the LFP path (identical spikes for the
same weights and input); resets use the detached spike, as snnTorch does.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as Fn

from ..core.readout import predict
from .protocol import Batch, StepResult, TrainContext, Trainer
from .registry import Option, TrainerSpec, register_trainer
from .stats import current_directions, spike_rates, update_statistics

Tensor = torch.Tensor


class _Heaviside(torch.autograd.Function):
    """H(x) = 1 where x > 0 in the forward; ``derivative(x) * grad`` in the backward."""

    @staticmethod
    def forward(ctx, x, derivative):
        ctx.save_for_backward(x)
        ctx.derivative = derivative
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ctx.derivative(x) * grad, None


def _surrogate(derivative: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda x: _Heaviside.apply(x, derivative)


def atan(alpha: float = 2.0) -> Callable[[Tensor], Tensor]:
    """Heaviside with snnTorch's arctan surrogate derivative."""
    return _surrogate(lambda x: alpha / 2 / (1 + (math.pi / 2 * alpha * x) ** 2))


def fast_sigmoid(slope: float = 25.0) -> Callable[[Tensor], Tensor]:
    """Heaviside with snnTorch's fast-sigmoid surrogate derivative."""
    return _surrogate(lambda x: 1.0 / (slope * x.abs() + 1.0) ** 2)


def get_surrogate(name: str, slope: Optional[float] = None) -> Callable[[Tensor], Tensor]:
    if name == "atan":
        return atan(2.0 if slope is None else slope)
    if name == "fast_sigmoid":
        return fast_sigmoid(25.0 if slope is None else slope)
    raise ValueError(f"unknown surrogate {name!r}; use 'atan' or 'fast_sigmoid'")


def ce_count_loss(spikes: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on output spike counts (snnTorch's ``ce_count_loss``)."""
    return Fn.cross_entropy(spikes.sum(0), labels)


def mse_count_loss(spikes: Tensor, labels: Tensor, correct_rate: float = 0.8,
                   incorrect_rate: float = 0.2) -> Tensor:
    """MSE between spike counts and target counts (T*correct_rate for the target class,
    T*incorrect_rate otherwise), as snnTorch's ``mse_count_loss`` with the tutorials' rates."""
    T = spikes.shape[0]
    onehot = Fn.one_hot(labels, spikes.shape[-1]).to(spikes.dtype)
    target = T * (onehot * correct_rate + (1 - onehot) * incorrect_rate)
    return Fn.mse_loss(spikes.sum(0), target)


LOSSES = {"ce_count": ce_count_loss, "mse_count": mse_count_loss}


OPTIONS = (
    Option("surrogate", "atan", "surrogate derivative: atan | fast_sigmoid",
           choices=("atan", "fast_sigmoid")),
    Option("surrogate_slope", None, "surrogate slope (atan alpha 2, fast_sigmoid 25 by default)",
           kind=float, minimum=0.0, strict=True, nullable=True),
    Option("loss", "ce_count", "surrogate loss on spike counts: " + " | ".join(LOSSES),
           choices=tuple(LOSSES)),
)


class SurrogateTrainer(Trainer):
    """Backpropagation through time with a surrogate spike derivative (the baseline)."""

    name = "surrogate"

    def __init__(self, cfg: Dict[str, Any], net: torch.nn.Module, context: TrainContext):
        super().__init__(cfg, net, context)
        self.spike_fn = get_surrogate(cfg["surrogate"], cfg["surrogate_slope"])
        self.loss_fn = LOSSES[cfg["loss"]]

    def step(self, batch: Batch, want_stats: bool = False) -> StepResult:
        trace = self.net.run(batch.x, batch.steps, spike_fn=self.spike_fn)
        loss = self.loss_fn(trace.output, batch.labels)
        loss.backward()
        with torch.no_grad():
            pred = predict(trace.output, trace.membrane)
        stats = ({"trainer": self.name, **update_statistics(self.net, current_directions(self.net), None)}
                 if want_stats else None)
        return StepResult(loss.detach(), "loss", pred, spike_rates(self.net, trace), stats)


register_trainer(TrainerSpec("surrogate", SurrogateTrainer,
                             "surrogate-gradient BPTT baseline (autograd through time)", OPTIONS))
