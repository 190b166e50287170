"""Reading a class out of the output layer's spikes (spec section 1)."""

from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor


def predict(output: Tensor, membrane: Optional[Tensor] = None) -> Tensor:
    """Class prediction ``[B]`` from output spikes ``[T, B, C]``.

    The argmax of the spike count sum_t s_t; ties are broken by the larger sum over t of the
    membrane (after integration, before reset), then by the lower index. With ``membrane=None``
    it is the plain argmax of the count (as the paper's code does; may differ by ~0.5 pt).
    """
    counts = output.sum(0)
    if membrane is None:
        return counts.argmax(-1)
    top = counts == counts.amax(-1, keepdim=True)
    score = torch.where(top, membrane.sum(0), torch.full_like(counts, float("-inf")))
    return score.argmax(-1)
