"""The trainer protocol: what every training method offers the loop.

A trainer is built from the resolved config, the network and a :class:`TrainContext` (facts
about the data), and offers one :meth:`Trainer.step` on a :class:`Batch`. ``step`` leaves
``param.grad = -G`` on the parameters it trains (G: a direction of improvement) and returns a
:class:`StepResult`; the loop then calls ``optimizer.step()``. A trainer may hold state (an
error store, fixed random matrices, prototypes, ...) through ``state_dict`` /
``load_state_dict``; checkpoints save it and ``--resume`` restores it exactly.

The loop, evaluation, checkpoints and progress know no trainer by name: trainers are looked up
in :mod:`spikelfp.train.registry`.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch

Tensor = torch.Tensor


class TrainContext(NamedTuple):
    """Facts about the data a trainer may need when it is built."""

    num_train: int                 # training samples (rows of a per-sample store)
    num_classes: int
    input_shape: Tuple[int, ...]   # per sample, without T
    sequence: bool                 # inputs are sequences (event data), not encoded images
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32


class Batch(NamedTuple):
    """One training batch.

    x: the encoded input, a sequence ``[T, B, ...]`` or one constant frame ``[B, ...]``;
    labels ``[B]``; index: each sample's index in the training set ``[B]``; steps: T when ``x`` is
    a constant frame (else None); epoch and global_step: where the run is (0-based).
    """

    x: Tensor
    labels: Tensor
    index: Tensor
    steps: Optional[int]
    epoch: int = 0
    global_step: int = 0


class StepResult(NamedTuple):
    """What one step reports (tensors, no host sync).

    objective: the batch mean of what the trainer optimizes (a scalar tensor);
    objective_name: its name in metrics, e.g. ``"reward"`` (higher is better) or ``"loss"``;
    prediction: predicted classes ``[B]``; rates: mean spike rate of each synaptic layer ``[L]``;
    stats: update statistics (only when asked for); extras: further per-batch scalar tensors
    averaged over the epoch into the metrics under their names.
    """

    objective: Tensor
    objective_name: str
    prediction: Tensor
    rates: Tensor
    stats: Optional[Dict[str, Any]] = None
    extras: Optional[Dict[str, Tensor]] = None


class Trainer:
    """Base class of the trainers (a trainer need not inherit from it: the loop only calls the
    methods below). ``name`` is the registry name."""

    name = ""
    #: True if the trainer exchanges what it needs across data-parallel processes itself (e.g.
    #: a few scalar losses); otherwise the loop averages ``param.grad`` after every step.
    reduces_gradients = False

    def __init__(self, cfg: Dict[str, Any], net: torch.nn.Module, context: TrainContext):
        self.cfg, self.net, self.context = cfg, net, context

    def step(self, batch: Batch, want_stats: bool = False) -> StepResult:  # pragma: no cover
        """Forward, and write ``param.grad = -G``; the loop steps the optimizer."""
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based)."""

    def after_average(self) -> None:
        """Called after each batch's gradients are averaged across processes (also in a
        single-process run), before ``grad_clip`` and the optimizer step."""

    def total_epochs(self) -> int:
        """Epochs the run takes in all (a trainer with phases may need more than ``epochs``)."""
        return int(self.cfg["epochs"])

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            raise ValueError(f"trainer {self.name!r} holds no state, but the checkpoint has "
                             f"{sorted(state)}")
