"""Global magnitude pruning and the accuracy-vs-sparsity curve.

Pruning fraction ``f`` of ``N`` weights (all synaptic weight tensors pooled; biases are never
pruned) sets the ``k = floor(f * N)`` entries of smallest ``|w|`` to zero (ties broken by
position, so the result is deterministic). Weights that are already zero are the smallest and
count towards ``k``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .weights import weight_tensors

Tensor = torch.Tensor

DEFAULT_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(20))   # 0.00, 0.05, ..., 0.95


def prune_count(fraction: float, numel: int) -> int:
    """Number of weights pruned at ``fraction`` of ``numel``: floor(f * N), robust to round-off."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"pruning fraction {fraction} is out of range; use 0 <= fraction <= 1")
    return min(numel, int(math.floor(fraction * numel + 1e-6)))


def _global_order(weights: Dict[str, Tensor]) -> Tensor:
    """Positions of all entries (tensors concatenated in order) by increasing |w|, ties by position."""
    flat = torch.cat([w.detach().abs().flatten().double().cpu() for w in weights.values()]) \
        if weights else torch.zeros(0, dtype=torch.float64)
    return torch.sort(flat, stable=True).indices


def _masks_from_order(weights: Dict[str, Tensor], order: Tensor, fraction: float) -> Dict[str, Tensor]:
    k = prune_count(fraction, order.numel())
    keep = torch.ones(order.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    masks, off = {}, 0
    for name, w in weights.items():
        masks[name] = keep[off: off + w.numel()].reshape(w.shape).to(w.device)
        off += w.numel()
    return masks


def global_magnitude_masks(weights: Dict[str, Tensor], fraction: float) -> Dict[str, Tensor]:
    """Boolean keep-masks (True = kept) that remove the ``floor(fraction * N)`` smallest-|w|
    entries over all tensors in ``weights`` together."""
    return _masks_from_order(weights, _global_order(weights), fraction)


def pruned_state(state: Dict[str, Tensor], fraction: float) -> Dict[str, Tensor]:
    """A copy of ``state`` with its weights globally magnitude-pruned at ``fraction``."""
    weights = weight_tensors(state)
    masks = global_magnitude_masks(weights, fraction)
    out = {k: v.clone() for k, v in state.items()}
    for name, m in masks.items():
        out[name] = torch.where(m, out[name], torch.zeros_like(out[name]))
    return out


@torch.no_grad()
def pruning_curve(net: torch.nn.Module, accuracy_fn: Callable[[torch.nn.Module], float],
                  fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  progress: Optional[Callable] = None) -> List[Dict[str, float]]:
    """Accuracy after global magnitude pruning of ``net`` at each fraction.

    ``accuracy_fn(net) -> float`` evaluates the (temporarily pruned) network. The network's
    weights are restored afterwards. Returns rows ``{"fraction", "accuracy", "zero_fraction"}``
    (``zero_fraction``: the weights that are actually zero after pruning).
    """
    params = dict(net.named_parameters())
    weights = weight_tensors(params)
    saved = {k: v.detach().clone() for k, v in weights.items()}
    total = sum(v.numel() for v in weights.values())
    rows = []
    order = _global_order(saved)
    it = progress(list(fractions)) if progress is not None else fractions
    try:
        for f in it:
            masks = _masks_from_order(saved, order, float(f))
            for name, m in masks.items():
                params[name].copy_(torch.where(m, saved[name], torch.zeros_like(saved[name])))
            zeros = sum(int((params[k] == 0).sum()) for k in weights)
            rows.append({"fraction": float(f), "accuracy": float(accuracy_fn(net)),
                         "zero_fraction": zeros / total if total else 0.0})
    finally:
        for name, w in saved.items():
            params[name].copy_(w)
    return rows


def max_prunable(curve: Sequence[Dict[str, float]], tolerance: float = 0.01) -> Dict[str, Optional[float]]:
    """The largest pruning fraction that keeps accuracy within ``tolerance`` (0.01 = 1 point) of
    the unpruned accuracy (the row with fraction 0, else the first row).

    ``contiguous``: the largest f such that every fraction <= f stays within tolerance (the
    number the report shows); ``any``: the largest f within tolerance, even after a dip.
    """
    if not curve:
        return {"reference_accuracy": None, "contiguous": None, "any": None, "tolerance": tolerance}
    rows = sorted(curve, key=lambda r: r["fraction"])
    ref_row = next((r for r in rows if r["fraction"] == 0), rows[0])
    ref = ref_row["accuracy"]
    floor = ref - tolerance - 1e-12
    contiguous = None
    for r in rows:
        if r["accuracy"] >= floor:
            contiguous = r["fraction"]
        else:
            break
    ok = [r["fraction"] for r in rows if r["accuracy"] >= floor]
    return {"reference_accuracy": ref, "contiguous": contiguous, "any": max(ok) if ok else None,
            "tolerance": tolerance}
