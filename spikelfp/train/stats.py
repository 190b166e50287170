"""Per-step measurements shared by the trainers: spike rates and update statistics."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

Tensor = torch.Tensor


def synaptic_records(net, trace) -> List:
    """The records of the layers with parameters (in order)."""
    return [rec for m, rec in zip(net, trace.records) if getattr(m, "kind", "") == "synaptic"]


def spike_rates(net, trace) -> Tensor:
    """Mean spike rate of each synaptic layer, as one tensor (no host sync)."""
    return torch.stack([rec.spikes.detach().float().mean() for rec in synaptic_records(net, trace)])


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
        out["feedback_nonzero_fraction"] = {k: (r != 0).float().mean().item() for k, r in feedback.items()}
    return out


def current_directions(net) -> Dict[str, Tensor]:
    """G = -param.grad of every parameter that has a gradient (for statistics)."""
    return {k: -p.grad for k, p in net.named_parameters() if p.grad is not None}
