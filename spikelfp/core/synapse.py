"""Linear-algebra primitives of the synaptic maps (Linear, Conv2d).

Each map provides three closed-form operations, all applied to a batch of rows at once (T*B
rows, or B rows for a constant input). None uses autograd:

    forward(x, W, b)          I = W x + b
    transpose(n, W, x_shape)  (n W): the feedback ``n`` sent back through W to the input shape
    correlate(n, x, W_shape)  sum over rows of n^T x: a weight-shaped correlation

For Conv2d the transpose is a transposed convolution and the correlation is the
weight-gradient-shaped correlation (``torch.nn.grad.conv2d_weight``): linear-algebra
primitives, not autograd of the network (spec section 4).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as Fn

from . import fused

Tensor = torch.Tensor


# live_correlate skips silent rows for products of LIVE_MIN_MACS multiply-adds or more (below,
# the gathering costs more than it saves) with at most LIVE_MAX of the rows live (README: measured)
LIVE_MIN_MACS = 1 << 24
LIVE_MAX = 0.6


def live_correlate(n: Tensor, x: Tensor) -> Tensor:
    """``n^T x`` for ``n`` ``[R, J]``, ``x`` ``[R, K]``, computing only the rows of the result
    whose column of ``n`` is not zero throughout: a neuron that never spiked in the batch gets no
    LFP feedback (its n is 0 at every step), and its row of the correlation is 0 without a
    product. On CPU (no gradient, finite ``x``, at least ``LIVE_MIN_MACS`` multiply-adds; the
    columns found by :func:`fused.live_columns`) when at most ``LIVE_MAX`` of the J columns are
    live; the computed rows are the same dot products
    as the whole product's (BLAS may sum a product of fewer rows in another order: equal to
    float rounding), the others are 0."""
    if (n.numel() * x.shape[1] < LIVE_MIN_MACS or x.dtype != n.dtype
            or (torch.is_grad_enabled() and (n.requires_grad or x.requires_grad))):
        return n.t() @ x
    live = fused.live_columns(n, n.shape[1], LIVE_MAX)  # a NaN column counts as live
    # a finite sum means a finite x (inf and NaN survive a sum; an overflow only falls back)
    if live is None or not bool(torch.isfinite(x.sum())):
        return n.t() @ x
    out = torch.zeros((n.shape[1], x.shape[1]), dtype=n.dtype)
    return out.index_copy_(0, live, n.index_select(1, live).t() @ x)


class LinearOps(NamedTuple):
    """Dense synapses: x [..., N_in], W [N_out, N_in]."""

    def forward(self, x: Tensor, W: Tensor, b: Optional[Tensor]) -> Tensor:
        return Fn.linear(x, W, b)

    def transpose(self, n: Tensor, W: Tensor, x_shape: Tuple[int, ...],
                  out: Optional[Tensor] = None) -> Tensor:
        return torch.matmul(n, W) if out is None else torch.matmul(n, W, out=out)

    def correlate(self, n: Tensor, x: Tensor, W_shape: Tuple[int, ...]) -> Tensor:
        return live_correlate(n.reshape(-1, n.shape[-1]), x.reshape(-1, x.shape[-1]))

    def bias_sum(self, n: Tensor) -> Tensor:
        return n.reshape(-1, n.shape[-1]).sum(0)


class Conv2dOps(NamedTuple):
    """2-D convolution synapses: x [..., C, H, W], W [C_out, C_in/groups, kH, kW]."""

    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1

    def _rows(self, x: Tensor) -> Tensor:
        return x.reshape(-1, *x.shape[-3:])

    def forward(self, x: Tensor, W: Tensor, b: Optional[Tensor]) -> Tensor:
        lead = x.shape[:-3]
        out = Fn.conv2d(self._rows(x), W, b, self.stride, self.padding, self.dilation, self.groups)
        return out.reshape(*lead, *out.shape[1:])

    def transpose(self, n: Tensor, W: Tensor, x_shape: Tuple[int, ...],
                  out: Optional[Tensor] = None) -> Tensor:
        lead = n.shape[:-3]
        rows = self._rows(n)
        in_shape = (rows.shape[0], *x_shape[-3:])
        res = torch.nn.grad.conv2d_input(
            in_shape, W, rows, self.stride, self.padding, self.dilation, self.groups
        )
        res = res.reshape(*lead, *res.shape[1:])
        return res if out is None else out.copy_(res)

    def correlate(self, n: Tensor, x: Tensor, W_shape: Tuple[int, ...]) -> Tensor:
        return torch.nn.grad.conv2d_weight(
            self._rows(x), W_shape, self._rows(n), self.stride, self.padding, self.dilation,
            self.groups,
        )

    def bias_sum(self, n: Tensor) -> Tensor:
        rows = self._rows(n)
        return rows.sum(dim=(0, 2, 3))
