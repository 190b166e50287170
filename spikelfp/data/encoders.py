"""Encoders from a static image batch ``[B, ...]`` to a spike/current sequence ``[T, B, ...]``.

Pure functions of tensors; randomness only through an explicit ``torch.Generator``.

constant  the (normalized) image at every step; returned as ONE frame ``[B, ...]`` so that the
          engine computes the first layer's current once (``net.run(x, steps=T)``). Paper default.
poisson   rate code: spike with probability x in [0, 1] at each step.
latency   time-to-first-spike: brighter pixels fire earlier, one spike each (none for x <= cut).
delta     spikes where the input changes by more than a threshold between consecutive steps
          of a sequence (for a static image: one spike at t = 0 where x > threshold).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

Tensor = torch.Tensor

ENCODERS = ("constant", "poisson", "latency", "delta")


def normalize_constant(x01: Tensor) -> Tensor:
    """Paper normalization for constant encoding: (x - 0.5) / 0.5, x in [0, 1] -> [-1, 1]."""
    return (x01 - 0.5) / 0.5


def constant(x01: Tensor, steps: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """One normalized frame (the engine repeats it over ``steps`` without recomputing)."""
    return normalize_constant(x01)


def poisson(x01: Tensor, steps: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Bernoulli spikes with probability ``x`` (clamped to [0, 1]) at each of ``steps`` steps."""
    p = x01.clamp(0, 1).unsqueeze(0).expand(steps, *x01.shape)
    u = torch.rand(p.shape, generator=generator, device="cpu").to(x01.device)
    return (u < p).to(x01.dtype)


def latency(x01: Tensor, steps: int, generator: Optional[torch.Generator] = None,
            cut: float = 0.01) -> Tensor:
    """One spike per input at t = round((1 - x) * (steps - 1)); inputs <= ``cut`` stay silent."""
    x = x01.clamp(0, 1)
    t_fire = torch.round((1 - x) * (steps - 1)).long()
    t = torch.arange(steps, device=x.device).view(steps, *([1] * x.dim()))
    return ((t == t_fire.unsqueeze(0)) & (x > cut).unsqueeze(0)).to(x01.dtype)


def delta(x01: Tensor, steps: int, generator: Optional[torch.Generator] = None,
          threshold: float = 0.1) -> Tensor:
    """Delta modulation: a spike where the input rose by more than ``threshold`` since the last
    step. A static image is a sequence that jumps from 0 at t = 0 and then stays: one spike at
    t = 0 wherever x > threshold."""
    seq = x01.unsqueeze(0).expand(steps, *x01.shape)
    prev = torch.zeros_like(seq)
    prev[1:] = seq[:-1]
    return ((seq - prev) > threshold).to(x01.dtype)


_FUNCS: Dict[str, Callable] = {"constant": constant, "poisson": poisson, "latency": latency,
                               "delta": delta}


def get_encoder(name: str) -> Callable:
    """Encoder by name; each is ``f(x01 [B, ...], steps, generator) -> [T, B, ...] or [B, ...]``."""
    if name not in _FUNCS:
        raise ValueError(f"unknown encoder {name!r}; use one of {list(ENCODERS)}")
    return _FUNCS[name]


def is_constant(name: str) -> bool:
    """True if the encoder returns one frame to be held for all steps."""
    return name == "constant"


def encode_batch(x: Tensor, encoder: str, steps: int, sequence: bool,
                 generator: Optional[torch.Generator] = None):
    """A data batch -> ``(input, steps)`` for ``net.run``. Static images ``[B, ...]`` in [0, 1]
    go through ``encoder``: a constant encoder gives one frame and ``steps=T``, others a sequence
    ``[T, B, ...]`` and None. Sequence data ``[B, T, ...]`` is transposed to ``[T, B, ...]``."""
    if sequence:
        return x.transpose(0, 1), None
    out = get_encoder(encoder)(x, steps, generator)
    return (out, steps) if is_constant(encoder) else (out, None)
