"""Current-based (CUBA) and recurrent LIF neurons, scanned over a sequence (spec
``lfp-cuba-recurrent.md`` section 1).

For every neuron and step t = 1..T, with i_0 = 0, v_0 = 0, s_0 = 0::

    i_t = (alpha * i_{t-1} + (W x_t + b)) + (V s_{t-1} + b_V)     synaptic current
    v_t = (beta * v_{t-1} + i_t) - reset_t                         membrane
    s_t = H(v_t - theta)                                           (H(a) = 1 if a > 0 else 0)

    reset "subtract":  reset_t = theta * s_{t-1}
    reset "zero":      reset_t = beta * v_{t-1} * s_{t-1}   (the decayed potential is dropped, the
                                                             new current is integrated)

``alpha`` in [0, 1) is the synaptic-current decay (scalar or per neuron). ``V`` (N x N) and
``b_V`` are optional recurrent weights and bias acting on the layer's own spikes of the previous
step (dense layers; the recurrent term is ``Fn.linear(s_{t-1}, V, b_V)`` as snnTorch's recurrent
``nn.Linear`` computes it).

Summation order (it decides spikes within one ulp of theta):

- with a current filter (``alpha`` given, also 0): exactly the order above, which is snnTorch's
  ``Synaptic(reset_delay=True)`` (no V) and ``RSynaptic(all_to_all=True, reset_delay=True)``;
- without a current filter (``alpha=None``) and with V: snnTorch ``RLeaky``'s order,
  v_t = ((beta * v_{t-1} + (W x_t + b)) + (V s_{t-1} + b_V)) - theta * s_{t-1};
- without both: exactly :func:`spikelfp.core.lif.lif_scan`.

All orders are equal in exact arithmetic. ``current`` (W x_t + b, the feed-forward current) is a
sequence ``[T, B, ...]`` or one constant frame ``[B, ...]`` with ``steps=T``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as Fn

from .lif import LIFState, LIFTrace, heaviside, lif_scan, lif_step

Tensor = torch.Tensor
Number = Union[float, int]


class CubaParameters(NamedTuple):
    """Neuron parameters of a CUBA / recurrent LIF population.

    beta, threshold, reset: as :class:`spikelfp.core.lif.LIFParameters`.
    alpha: synaptic-current decay in [0, 1) (scalar or per neuron), or None: no current state.
    """

    beta: Union[Tensor, Number] = 0.9
    threshold: Union[Tensor, Number] = 1.0
    reset: str = "subtract"
    alpha: Optional[Union[Tensor, Number]] = None


class CubaState(NamedTuple):
    """State after one step of :func:`cuba_step`: membrane v_t, spikes s_t and the synaptic
    current i_t (None without a current filter), each ``[B, ...]``."""

    membrane: Tensor
    spikes: Tensor
    current: Optional[Tensor] = None


def check_alpha(alpha, where: str = "CUBA") -> None:
    """alpha must lie in [0, 1) (scalar or tensor); one-line ``ValueError`` otherwise."""
    a = torch.as_tensor(alpha, dtype=torch.float64)
    bad = (a < 0) | (a >= 1) | ~torch.isfinite(a)
    if a.numel() == 0 or bad.any():
        shown = a.flatten()[bad.flatten()][0].item() if a.numel() else "empty"
        raise ValueError(f"{where}: alpha={shown} is out of range; alpha must lie in [0, 1)")


def recurrent_current(spikes: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """V s + b_V for spikes ``[..., N]`` (what snnTorch's recurrent ``nn.Linear`` computes)."""
    return Fn.linear(spikes, weight, bias)


def _advance(i_ff: Tensor, i_prev: Optional[Tensor], v_prev: Tensor, s_prev: Tensor,
             s_prev_rec: Tensor, alpha: Optional[Tensor], beta: Tensor, threshold: Tensor,
             reset: str, V: Optional[Tensor], bV: Optional[Tensor]):
    """One step of the equations from the previous state; returns (i_t or None, v_t).
    ``s_prev`` is the (detached) spike used by the reset, ``s_prev_rec`` the one fed to V."""
    rec = recurrent_current(s_prev_rec, V, bV) if V is not None else None
    if reset == "subtract":
        decayed = beta * v_prev
    else:
        decayed = beta * ((1 - s_prev) * v_prev)
    if alpha is not None:
        i = alpha * i_prev + i_ff
        if rec is not None:
            i = i + rec
        v = decayed + i
    else:
        i = None
        v = decayed + i_ff
        if rec is not None:
            v = v + rec
    if reset == "subtract":
        v = v - s_prev * threshold
    return i, v


def cuba_scan(
    current: Tensor,
    alpha: Optional[Union[Tensor, Number]],
    beta: Union[Tensor, Number],
    threshold: Union[Tensor, Number],
    reset: str = "subtract",
    steps: Optional[int] = None,
    spike_fn: Optional[Callable[[Tensor], Tensor]] = None,
    recurrent_weight: Optional[Tensor] = None,
    recurrent_bias: Optional[Tensor] = None,
) -> LIFTrace:
    """Run the CUBA / recurrent LIF equations (module docstring) over all steps.

    Args:
        current: feed-forward current W x + b, ``[T, B, ...]``, or ``[B, ...]`` with ``steps``.
        alpha: current decay (scalar or broadcastable to ``[B, ...]``), or None for no filter.
        beta, threshold, reset: as :func:`spikelfp.core.lif.lif_scan`.
        spike_fn: None (Heaviside) or a surrogate spike function of ``v - threshold``; resets use
            the detached spike, the recurrent synapses the spike itself (as snnTorch).
        recurrent_weight, recurrent_bias: V ``[N, N]`` and b_V ``[N]`` (dense layers), or None.

    Returns:
        :class:`~spikelfp.core.lif.LIFTrace` (spikes, membranes ``[T, B, ...]``).
    """
    if alpha is None and recurrent_weight is None:
        return lif_scan(current, beta, threshold, reset, steps=steps, spike_fn=spike_fn)
    constant = steps is not None
    T = int(steps) if constant else current.shape[0]
    frame_shape = current.shape if constant else current.shape[1:]
    dt, dev = current.dtype, current.device
    fire = heaviside if spike_fn is None else spike_fn
    a = torch.as_tensor(alpha, dtype=dt, device=dev) if alpha is not None else None
    beta = torch.as_tensor(beta, dtype=dt, device=dev)
    threshold = torch.as_tensor(threshold, dtype=dt, device=dev)
    v = torch.zeros(frame_shape, dtype=dt, device=dev)
    s = torch.zeros_like(v)
    i = torch.zeros_like(v) if a is not None else None
    spikes, membranes = [], []
    for t in range(T):
        i_ff = current if constant else current[t]
        i, v = _advance(i_ff, i, v, s.detach(), s, a, beta, threshold, reset,
                        recurrent_weight, recurrent_bias)
        s = fire(v - threshold)
        spikes.append(s)
        membranes.append(v)
    return LIFTrace(torch.stack(spikes), torch.stack(membranes))


def cuba_step(current: Tensor, state: Optional[Union[CubaState, LIFState]],
              alpha: Optional[Union[Tensor, Number]], beta: Union[Tensor, Number],
              threshold: Union[Tensor, Number], reset: str = "subtract",
              recurrent_weight: Optional[Tensor] = None,
              recurrent_bias: Optional[Tensor] = None) -> CubaState:
    """One step of :func:`cuba_scan` (Heaviside spike) from the previous state (None at t = 1).
    Same arithmetic in the same order, so stepping gives bit-identical spikes and membranes;
    keeps nothing over time."""
    if alpha is None and recurrent_weight is None:
        st = lif_step(current, None if state is None else LIFState(state.membrane, state.spikes),
                      beta, threshold, reset)
        return CubaState(st.membrane, st.spikes, None)
    dt, dev = current.dtype, current.device
    a = torch.as_tensor(alpha, dtype=dt, device=dev) if alpha is not None else None
    beta = torch.as_tensor(beta, dtype=dt, device=dev)
    threshold = torch.as_tensor(threshold, dtype=dt, device=dev)
    if state is None:
        zero = torch.zeros(current.shape, dtype=dt, device=dev)
        v_prev, s_prev, i_prev = zero, zero, zero
    else:
        v_prev, s_prev = state.membrane, state.spikes
        i_prev = getattr(state, "current", None)
        if i_prev is None:
            i_prev = torch.zeros_like(v_prev)
    i, v = _advance(current, i_prev if a is not None else None, v_prev, s_prev, s_prev, a, beta,
                    threshold, reset, recurrent_weight, recurrent_bias)
    return CubaState(v, heaviside(v - threshold), i)


__all__ = ["CubaParameters", "CubaState", "check_alpha", "cuba_scan", "cuba_step",
           "recurrent_current"]
