"""Clipping of update directions G: global L2 norm and unit-wise adaptive clipping (AGC)."""

from __future__ import annotations

from typing import Dict

import torch

Tensor = torch.Tensor


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
