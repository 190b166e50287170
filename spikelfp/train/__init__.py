"""Trainers, the training loop, configs and checkpoints.

A trainer is one file that registers itself (:mod:`spikelfp.train.registry`) plus one line
below that imports it. Built in: ``lfp``, ``surrogate``, ``finetune``.
"""

from . import lfp, surrogate, finetune, f3, ffzero  # noqa: F401  (each registers its trainer, in this order)
from .checkpoint import Checkpoint, atomic_save, load_checkpoint, load_model, read_checkpoint
from .config import DEFAULTS, ConfigError, resolve
from .lfp import LFP, LFPResult, LFPTrainer, feedback_entry, layer_feedback, register_feedback
from .loop import evaluate, train
from .protocol import Batch, StepResult, TrainContext, Trainer
from .registry import Option, TrainerSpec, get_trainer_spec, register_trainer, trainer_names
from .surrogate import atan, ce_count_loss, fast_sigmoid, get_surrogate, mse_count_loss

__all__ = [
    "Batch", "Checkpoint", "DEFAULTS", "ConfigError", "LFP", "LFPResult", "LFPTrainer", "Option",
    "StepResult", "TrainContext", "Trainer", "TrainerSpec", "atan", "atomic_save", "ce_count_loss",
    "evaluate", "fast_sigmoid", "feedback_entry", "get_surrogate", "get_trainer_spec",
    "layer_feedback", "load_checkpoint", "load_model", "mse_count_loss", "read_checkpoint",
    "register_feedback", "register_trainer", "resolve", "train", "trainer_names",
]
