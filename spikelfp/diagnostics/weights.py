"""Weight diagnostics: exact / near zeros, magnitude histograms, sign changes between weight sets.

All functions take ``{parameter name: tensor}`` mappings (a ``state_dict`` works; buffers such
as ``beta`` / ``threshold`` are skipped by :func:`weight_tensors`).

Sign changes compare ``sign(a)`` and ``sign(b)`` elementwise (sign(0) = 0):

- ``flip_fraction``: strict flips, ``a * b < 0`` (+ to - or - to +);
- ``changed_fraction``: ``sign(a) != sign(b)``, i.e. flips plus moves to or from exactly zero;
- ``to_zero_fraction`` / ``from_zero_fraction``: nonzero -> 0 and 0 -> nonzero.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

Tensor = torch.Tensor

DEFAULT_TOLERANCE = 1e-3


def weight_tensors(state: Mapping[str, Tensor], include_bias: bool = False) -> Dict[str, Tensor]:
    """The synaptic weights (names ending in ``weight``; with ``include_bias`` also ``bias``) of a
    state dict or ``named_parameters`` mapping, in order."""
    keep = ("weight", "bias") if include_bias else ("weight",)
    return {k: v.detach() for k, v in state.items()
            if isinstance(v, Tensor) and v.is_floating_point() and k.rsplit(".", 1)[-1] in keep}


def zero_fraction(w: Tensor) -> float:
    """Fraction of entries that are exactly zero."""
    return float((w == 0).double().mean().item()) if w.numel() else 0.0


def near_zero_fraction(w: Tensor, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """Fraction of entries with ``|w| < tolerance`` (exact zeros included)."""
    return float((w.abs() < tolerance).double().mean().item()) if w.numel() else 0.0


def magnitude_histogram(w: Tensor, bins: int = 40, lo: float = -6.0, hi: float = 1.0) -> Dict[str, Any]:
    """Histogram of ``log10 |w|`` over the nonzero entries (``bins`` bins from 10**lo to 10**hi;
    values outside are put in the end bins), plus the count of exact zeros."""
    a = w.detach().abs().flatten().double().cpu()
    nz = a[a > 0]
    logs = torch.log10(nz).clamp(lo, hi - 1e-9) if nz.numel() else nz
    counts = torch.histc(logs, bins=bins, min=lo, max=hi) if nz.numel() else torch.zeros(bins)
    edges = torch.linspace(lo, hi, bins + 1)
    return {"log10_edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()],
            "zeros": int((a == 0).sum().item()), "total": int(a.numel())}


def value_histogram(w: Tensor, bins: int = 60, limit: Optional[float] = None) -> Dict[str, Any]:
    """Histogram of the signed values in ``[-limit, limit]`` (default: the largest |w|)."""
    a = w.detach().flatten().double().cpu()
    m = float(limit if limit is not None else (a.abs().max().item() if a.numel() else 1.0)) or 1.0
    counts = torch.histc(a.clamp(-m, m), bins=bins, min=-m, max=m)
    return {"edges": torch.linspace(-m, m, bins + 1).tolist(), "counts": [int(c) for c in counts.tolist()]}


def weight_stats(state: Mapping[str, Tensor], tolerance: float = DEFAULT_TOLERANCE,
                 include_bias: bool = True) -> Dict[str, Any]:
    """Per parameter and over all weights: exact-zero and near-zero fractions, median and mean
    |w|, and a log-magnitude histogram. The ``"all_weights"`` entry pools the weight tensors
    (biases excluded)."""
    params = weight_tensors(state, include_bias=include_bias)
    per: Dict[str, Any] = {}
    for name, w in params.items():
        a = w.abs().flatten().double()
        per[name] = {
            "numel": int(w.numel()), "shape": list(w.shape),
            "zero_fraction": zero_fraction(w),
            "near_zero_fraction": near_zero_fraction(w, tolerance),
            "median_abs": float(a.median().item()) if a.numel() else 0.0,
            "mean_abs": float(a.mean().item()) if a.numel() else 0.0,
            "max_abs": float(a.max().item()) if a.numel() else 0.0,
            "positive_fraction": float((w > 0).double().mean().item()) if w.numel() else 0.0,
            "log_hist": magnitude_histogram(w),
        }
    ws = [w.flatten().double() for k, w in params.items() if k.endswith("weight")]
    if ws:
        allw = torch.cat(ws)
        per_all = {"numel": int(allw.numel()), "zero_fraction": zero_fraction(allw),
                   "near_zero_fraction": near_zero_fraction(allw, tolerance),
                   "median_abs": float(allw.abs().median().item()),
                   "mean_abs": float(allw.abs().mean().item())}
    else:
        per_all = {"numel": 0, "zero_fraction": 0.0, "near_zero_fraction": 0.0, "median_abs": 0.0,
                   "mean_abs": 0.0}
    return {"tolerance": tolerance, "params": per, "all_weights": per_all}


def sign_changes(a: Tensor, b: Tensor) -> Dict[str, float]:
    """Sign changes from ``a`` to ``b`` (same shape); fractions of all entries."""
    if a.shape != b.shape:
        raise ValueError(f"sign_changes: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    n = a.numel()
    if n == 0:
        return {"numel": 0, "flip_fraction": 0.0, "changed_fraction": 0.0, "to_zero_fraction": 0.0,
                "from_zero_fraction": 0.0}
    sa, sb = torch.sign(a), torch.sign(b)
    return {"numel": n,
            "flip_fraction": float((sa * sb < 0).sum().item() / n),
            "changed_fraction": float((sa != sb).sum().item() / n),
            "to_zero_fraction": float(((sa != 0) & (sb == 0)).sum().item() / n),
            "from_zero_fraction": float(((sa == 0) & (sb != 0)).sum().item() / n)}


def sign_changes_between(before: Mapping[str, Tensor], after: Mapping[str, Tensor],
                         include_bias: bool = False) -> Dict[str, Any]:
    """:func:`sign_changes` for every weight present in both sets, and pooled over all weights
    (``"all_weights"``)."""
    wa, wb = weight_tensors(before, include_bias), weight_tensors(after, include_bias)
    common = [k for k in wa if k in wb]
    if not common:
        raise ValueError("sign_changes_between: the two weight sets share no parameter")
    per = {k: sign_changes(wa[k], wb[k]) for k in common}
    weights = [k for k in common if k.endswith("weight")] or common
    tot = sum(per[k]["numel"] for k in weights)
    pooled = {"numel": tot}
    for key in ("flip_fraction", "changed_fraction", "to_zero_fraction", "from_zero_fraction"):
        pooled[key] = sum(per[k][key] * per[k]["numel"] for k in weights) / tot if tot else 0.0
    return {"params": per, "all_weights": pooled}


def relative_change(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> Dict[str, float]:
    """``||after - before|| / ||before||`` per weight tensor."""
    wa, wb = weight_tensors(before), weight_tensors(after)
    out = {}
    for k in wa:
        if k in wb:
            d = (wb[k].double() - wa[k].double()).norm().item()
            base = wa[k].double().norm().item()
            out[k] = d / base if base > 0 else math.inf if d > 0 else 0.0
    return out


def checkpoint_series(init: Mapping[str, Tensor], snapshots: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Sign changes of each snapshot vs ``init`` and vs the previous snapshot.

    ``snapshots``: dicts with ``"state"`` (weights), and any labels (``"epoch"``, ``"step"``,
    ``"file"``) that are copied through, in training order.
    """
    rows, prev = [], init
    for snap in snapshots:
        row = {k: v for k, v in snap.items() if k != "state"}
        vi = sign_changes_between(init, snap["state"])
        vp = sign_changes_between(prev, snap["state"])
        row["vs_init"] = vi["all_weights"]
        row["vs_init_params"] = {k: v["flip_fraction"] for k, v in vi["params"].items()}
        row["vs_previous"] = vp["all_weights"]
        rows.append(row)
        prev = snap["state"]
    return rows
