"""Per-step measurements shared by the trainers: spike rates and update statistics."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch

from ..core.feedback import LazyFeedback

Tensor = torch.Tensor
#: elements counted at a time (no full-size mask of the feedback)
COUNT_CHUNK = 1 << 22


def synaptic_records(net, trace) -> List:
    """The records of the layers with parameters (in order)."""
    return [rec for m, rec in zip(net, trace.records) if getattr(m, "kind", "") == "synaptic"]


def spike_rates(net, trace) -> Tensor:
    """Mean spike rate of each synaptic layer, as one float32 tensor (no host sync). Compact
    (uint8) spikes are counted without a float copy."""
    return torch.stack([mean_activity(rec.spikes) for rec in synaptic_records(net, trace)])


def mean_activity(spikes: Tensor) -> Tensor:
    """Mean of a spike tensor as float32: integer (compact) spikes counted exactly, others averaged."""
    s = spikes.detach()
    if not s.is_floating_point():  # 0/1: the count of nonzeros (sum() would make an int64 copy)
        return (torch.count_nonzero(s).double() / max(s.numel(), 1)).float()
    return s.float().mean()


def spike_total(spikes: Tensor) -> Tensor:
    """Sum of a spike tensor in float64; compact 0/1 spikes are counted (``count_nonzero``: no
    int64 or float copy, which ``sum()`` would make)."""
    s = spikes.detach()
    return s.double().sum() if s.is_floating_point() else torch.count_nonzero(s).double()


def update_statistics(net, grads: Dict[str, Tensor], feedback: Optional[Dict[str, Tensor]]) -> Dict[str, Any]:
    """Cheap per-parameter update statistics: fraction of exactly-zero updates, |G| quantiles,
    and (LFP) the fraction of nonzero feedback reaching each layer's output."""
    out: Dict[str, Any] = {}
    for name, g in grads.items():
        a = g.detach().abs().flatten().float()
        q = torch.quantile(a[: 1_000_000], torch.tensor([0.5, 0.9, 0.99], device=a.device)).tolist()
        out[name] = {"numel": a.numel(), "zero_fraction": (a == 0).float().mean().item(), "mean_abs": a.mean().item(),
                     "median_abs": q[0], "p90_abs": q[1], "p99_abs": q[2], "max_abs": a.max().item()}
    if feedback is not None:
        out["feedback_nonzero_fraction"] = {k: nonzero_fraction(r) for k, r in feedback.items()}
    return out


def nonzero_fraction(r) -> float:
    """Fraction of nonzero entries of ``r`` (a tensor or a
    :class:`~spikelfp.core.feedback.LazyFeedback`), counted in slices (no full-size mask or float
    copy; a lazy feedback is made and counted a few steps at a time)."""
    if isinstance(r, LazyFeedback):
        count = sum(int(torch.count_nonzero(rows)) for rows in r.chunks(COUNT_CHUNK))
        return count / max(1, math.prod(r.shape))
    flat = r.detach().reshape(-1)
    if flat.numel() == 0:
        return 0.0
    count = sum(int(torch.count_nonzero(part)) for part in flat.split(COUNT_CHUNK))
    return count / flat.numel()


def current_directions(net) -> Dict[str, Tensor]:
    """G = -param.grad of every parameter that has a gradient (for statistics)."""
    return {k: -p.grad for k, p in net.named_parameters() if p.grad is not None}
