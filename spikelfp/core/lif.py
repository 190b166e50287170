"""Leaky integrate-and-fire (LIF) neuron with a Heaviside spike, scanned over a whole sequence.

The equations (spec section 1, paper Eq. A.14-A.15), for every neuron and step t = 1..T::

    I_t = W x_t + b
    v_t = beta * v_{t-1} + I_t - reset_t          (v_0 = 0)
    s_t = H(v_t - theta)                          (H(a) = 1 if a > 0 else 0)

    reset "subtract":  reset_t = theta * s_{t-1}
    reset "zero":      reset_t = beta * v_{t-1} * s_{t-1}

The reset caused by a spike is applied at the next step. This is snnTorch's
``snn.Leaky(beta, threshold, reset_mechanism=..., reset_delay=True)``; ``v_t`` is what snnTorch
returns as ``mem`` (after integration, before the reset of its own spike), and the arithmetic is
done in the same order, so spikes are bit-identical for the same currents.

Everything here is a pure function of tensors. ``current`` is either a sequence ``[T, B, ...]``
or, for a current that is constant over time (constant encoder in front of the first layer),
one frame ``[B, ...]`` together with ``steps=T``: it is then computed once, not T times.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch

from . import fused

Tensor = torch.Tensor
Number = Union[float, int]

RESETS = ("subtract", "zero")


class LIFParameters(NamedTuple):
    """Parameters of a LIF population.

    beta:      membrane decay per step, in (0, 1]; a scalar or a tensor broadcastable to the
               neuron shape (per-neuron decay).
    threshold: firing threshold theta > 0; scalar or per-neuron tensor.
    reset:     "subtract" (v -= theta after a spike) or "zero" (the decayed potential is dropped).
    """

    beta: Union[Tensor, Number] = 0.9
    threshold: Union[Tensor, Number] = 1.0
    reset: str = "subtract"


class LIFTrace(NamedTuple):
    """Result of :func:`lif_scan`: spikes ``s`` and membranes ``v``, both ``[T, B, ...]``."""

    spikes: Tensor
    membrane: Tensor


class LIFState(NamedTuple):
    """State after one step of :func:`lif_step`: membrane ``v_t`` and spikes ``s_t``, ``[B, ...]``."""

    membrane: Tensor
    spikes: Tensor


def heaviside(x: Tensor) -> Tensor:
    """H(x) = 1 where x > 0 (strictly), else 0, in the dtype of ``x``."""
    return (x > 0).to(x.dtype)


def check_lif_parameters(beta, threshold, reset: str, where: str = "LIF") -> None:
    """Validate LIF parameters, raising a one-line ``ValueError`` naming the bad value."""
    if reset not in RESETS:
        raise ValueError(f"{where}: reset={reset!r} is not allowed; use one of {RESETS}")
    b = torch.as_tensor(beta, dtype=torch.float64)
    if b.numel() == 0 or not torch.isfinite(b).all() or (b <= 0).any() or (b > 1).any():
        bad = b.flatten()[((b <= 0) | (b > 1) | ~torch.isfinite(b)).flatten()]
        shown = bad[0].item() if bad.numel() else "empty"
        raise ValueError(f"{where}: beta={shown} is out of range; beta must lie in (0, 1]")
    th = torch.as_tensor(threshold, dtype=torch.float64)
    if th.numel() == 0 or not torch.isfinite(th).all() or (th <= 0).any():
        bad = th.flatten()[((th <= 0) | ~torch.isfinite(th)).flatten()]
        shown = bad[0].item() if bad.numel() else "empty"
        raise ValueError(f"{where}: threshold={shown} is out of range; threshold must be > 0")


def lif_scan(
    current: Tensor,
    beta: Union[Tensor, Number],
    threshold: Union[Tensor, Number],
    reset: str = "subtract",
    steps: Optional[int] = None,
    spike_fn: Optional[Callable[[Tensor], Tensor]] = None,
    compact: bool = False,
) -> LIFTrace:
    """Run the LIF membrane over all steps.

    Args:
        current: synaptic current ``[T, B, ...]``, or ``[B, ...]`` with ``steps`` for a current
            constant over time.
        beta, threshold: decay and threshold, scalars or tensors broadcastable to ``[B, ...]``.
        reset: "subtract" or "zero".
        steps: number of steps T when ``current`` is a single constant frame.
        spike_fn: function of ``v - threshold`` giving the spikes. ``None`` is the Heaviside
            (the LFP path); a surrogate-gradient function gives identical spikes with a
            differentiable backward. Resets use the detached spike, as snnTorch does.
        compact: store the spikes as ``torch.uint8`` 0/1 (1 byte instead of 4 or 8) where no
            autograd graph is needed (Heaviside spike, no grad): the same numbers, and the
            membranes bit-identical. With a graph (or a ``spike_fn``) the spikes stay in the
            current's dtype.

    Returns:
        :class:`LIFTrace` with spikes and membranes ``[T, B, ...]`` in the current's dtype
        (spikes uint8 with ``compact`` on the no-grad Heaviside path).
    """
    constant = steps is not None
    T = int(steps) if constant else current.shape[0]
    frame_shape = current.shape if constant else current.shape[1:]
    fire = heaviside if spike_fn is None else spike_fn
    beta = torch.as_tensor(beta, dtype=current.dtype, device=current.device)
    threshold = torch.as_tensor(threshold, dtype=current.dtype, device=current.device)

    if spike_fn is None and not (torch.is_grad_enabled() and current.requires_grad):
        return _scan_into_buffers(current, beta, threshold, reset, T, frame_shape, constant, compact)
    v = torch.zeros(frame_shape, dtype=current.dtype, device=current.device)
    s = torch.zeros_like(v)
    spikes, membranes = [], []
    for t in range(T):
        i_t = current if constant else current[t]
        if reset == "subtract":
            # snnTorch order: (beta * mem + input) - reset * threshold
            v = beta * v + i_t - s.detach() * threshold
        else:
            # snnTorch order: mem = (1 - reset) * mem; beta * mem + input
            v = beta * ((1 - s.detach()) * v) + i_t
        s = fire(v - threshold)
        spikes.append(s)
        membranes.append(v)
    return LIFTrace(torch.stack(spikes), torch.stack(membranes))


def lif_step(current: Tensor, state: Optional[LIFState], beta: Union[Tensor, Number],
             threshold: Union[Tensor, Number], reset: str = "subtract") -> LIFState:
    """One step of the LIF equations (Heaviside spike) from the previous state (``None`` at t = 1,
    i.e. v_0 = 0, s_0 = 0). The arithmetic and its order are those of :func:`lif_scan`, so
    stepping gives bit-identical spikes and membranes. Keeps nothing over time."""
    beta = torch.as_tensor(beta, dtype=current.dtype, device=current.device)
    threshold = torch.as_tensor(threshold, dtype=current.dtype, device=current.device)
    if state is None:
        v = current.clone()
    elif reset == "subtract":
        v = torch.mul(state.membrane, beta).add_(current).addcmul_(state.spikes, -threshold)
    else:
        v = torch.mul((1 - state.spikes) * state.membrane, beta).add_(current)
    return LIFState(v, torch.gt(v, threshold).to(v.dtype))


def _scan_into_buffers(current: Tensor, beta: Tensor, threshold: Tensor, reset: str, T: int,
                       frame_shape, constant: bool, compact: bool = False) -> LIFTrace:
    """The Heaviside scan of :func:`lif_scan` when no autograd graph is needed: written straight
    into preallocated ``[T, ...]`` outputs, with the same arithmetic in the same order (so the
    spikes and membranes are bit-identical), without per-step temporaries or a final stack.
    ``compact``: spikes stored as uint8 0/1; s * (-theta) and (1 - s) * v promote them to the
    membrane's dtype, so the numbers are those of float spikes."""
    if fused.usable(current) and not current.requires_grad:
        S, V = fused.lif_forward(current, beta, threshold, reset, T, frame_shape, constant, compact)
        return LIFTrace(S, V)
    V = torch.empty((T, *frame_shape), dtype=current.dtype, device=current.device)
    S = torch.empty(V.shape, dtype=torch.uint8 if compact else V.dtype, device=V.device)
    neg_threshold = -threshold
    for t in range(T):
        i_t = current if constant else current[t]
        v = V[t]
        if t == 0:
            v.copy_(i_t)  # beta * 0 + I - 0 * theta
        elif reset == "subtract":
            torch.mul(V[t - 1], beta, out=v)
            # v + s * (-theta) with s in {0, 1} is exactly v - s * theta: one pass instead of two
            v.add_(i_t).addcmul_(S[t - 1], neg_threshold)
        else:
            torch.mul((1 - S[t - 1]) * V[t - 1], beta, out=v)
            v.add_(i_t)
        # v > theta is exactly (v - theta) > 0 in IEEE arithmetic with subnormals (torch's default)
        torch.gt(v, threshold, out=S[t])
    return LIFTrace(S, V)
