"""Trainers (LFP, surrogate BPTT, fine-tune), loops, configs and checkpoints."""

from .checkpoint import atomic_save, load_checkpoint, load_model
from .config import DEFAULTS, ConfigError, resolve
from .loop import Trainer, evaluate, train
from .surrogate import atan, ce_count_loss, fast_sigmoid, get_surrogate, mse_count_loss

__all__ = [
    "DEFAULTS", "ConfigError", "Trainer", "atan", "atomic_save", "ce_count_loss", "evaluate",
    "fast_sigmoid", "get_surrogate", "load_checkpoint", "load_model", "mse_count_loss", "resolve",
    "train",
]
