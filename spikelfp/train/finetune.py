"""The ``finetune`` trainer: surrogate BPTT for the first ``finetune_iters`` steps, then LFP.

A composition of the two registered trainers, with their own config keys.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from .lfp import LFPTrainer
from .protocol import Batch, StepResult, TrainContext, Trainer
from .registry import Option, TrainerSpec, register_trainer
from .surrogate import SurrogateTrainer


class FinetuneTrainer(Trainer):
    """Surrogate for ``finetune_iters`` optimizer steps, then LFP."""

    name = "finetune"

    def __init__(self, cfg: Dict[str, Any], net: torch.nn.Module, context: TrainContext):
        super().__init__(cfg, net, context)
        self.surrogate = SurrogateTrainer(cfg, net, context)
        self.lfp = LFPTrainer(cfg, net, context)
        self.phase: Trainer = self.surrogate

    def step(self, batch: Batch, want_stats: bool = False) -> StepResult:
        self.phase = self.lfp if batch.global_step >= self.cfg["finetune_iters"] else self.surrogate
        return self.phase.step(batch, want_stats)

    def after_average(self) -> None:
        self.phase.after_average()  # LFP's clip of the averaged update in data-parallel runs


register_trainer(TrainerSpec(
    "finetune", FinetuneTrainer, "surrogate BPTT for finetune_iters steps, then LFP",
    (Option("finetune_iters", 100, "surrogate iterations before switching to LFP (finetune)",
            kind=int, minimum=0),)))
