"""F3 for Heaviside LIF networks: pure math (spec ``f3-for-lif.md``).

F3 (Flügel et al., arXiv 2304.13372) trains each hidden layer l from the sample's error of the
*previous epoch*, projected by a fixed random matrix ``B_l`` in R^{C x N_l}, times a local factor
phi^l_t that uses only the layer's own forward quantities; the output layer L uses the current
error (delta rule). With an error known before the forward, every hidden update is formed from
running sums while the forward runs: no backward pass and no [T, B, N] trace.

Notation: batch B, steps T, classes C, a^{l-1}_t the input of layer l at step t, s^l_t its spikes,
``y`` the one-hot target, ``yhat = (1/T) sum_t s^L_t`` the output rate.

    delta_l = e B_l                      (hidden; e from the error kind, the same at every step)
    delta_L = y - yhat                   (output; current forward)
    G_W^l   = (1/(B T)) sum_t (delta_l * phi^l_t)^T a^{l-1}_t     (conv: the weight correlation)
    G_b^l   = (1/(B T)) sum_t sum_b (delta_l * phi^l_t)

Local factors: ``none`` phi = 1, ``spike`` phi_t = s_t, ``rate`` phi = r = (1/T) sum_t s_t,
``ratevar`` phi = 4 r (1 - r). For ``none``/``rate``/``ratevar`` phi does not depend on t, so
sum_t (delta * phi)^T a_t = (delta * phi)^T A with the running sum A = sum_t a_t; ``spike`` needs
M = sum_t (delta * s_t)^T a_t, accumulated one step at a time.

Everything here is a closed form on tensors; no autograd.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

Tensor = torch.Tensor

#: error kinds: what e is for a hidden layer (spec section 1)
ERRORS = ("delayed", "delayed_softmax", "delayed_onehot", "target", "current")
#: error kinds that read and write the per-sample store
DELAYED = ("delayed", "delayed_softmax", "delayed_onehot")
#: local factors phi (spec section 3)
LOCALS = ("none", "spike", "rate", "ratevar")
#: feedback matrix initializations (spec section 2)
INITS = ("kaiming_uniform", "trinomial", "binomial")


def feedback_matrix(num_classes: int, num_neurons: int, init: str = "kaiming_uniform",
                    generator: Optional[torch.Generator] = None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """A fixed random feedback matrix ``B`` ``[C, N]`` drawn from ``generator`` (on the CPU).

    ``kaiming_uniform``: U(-1/sqrt(N), 1/sqrt(N)) (``kaiming_uniform_(B, a=sqrt(5))`` on a [C, N]
    tensor: gain sqrt(2/(1+5)), fan_in N, bound sqrt(3) gain / sqrt(N) = 1/sqrt(N));
    ``trinomial``: uniform on {-1, 0, 1}; ``binomial``: uniform on {0, 1}.
    """
    if init not in INITS:
        raise ValueError(f"feedback init {init!r} is not allowed; use one of {list(INITS)}")
    if num_classes < 1 or num_neurons < 1:
        raise ValueError(f"feedback matrix [{num_classes}, {num_neurons}]: sizes must be >= 1")
    shape = (num_classes, num_neurons)
    if init == "kaiming_uniform":
        bound = 1.0 / math.sqrt(num_neurons)
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        return ((2.0 * u - 1.0) * bound).to(dtype)
    low = -1 if init == "trinomial" else 0
    return torch.randint(low, 2, shape, generator=generator).to(dtype)


def centered_target(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``y - 1/C`` ``[B, C]``: the one-hot target, centered (the store's initial rows; DRTP's e)."""
    y = torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)
    return y - 1.0 / num_classes


def error_to_store(kind: str, y: Tensor, yhat: Tensor, tau: float = 0.1) -> Tensor:
    """What a delayed kind stores for a sample after its forward ``[B, C]``.

    ``delayed``: y - yhat; ``delayed_softmax``: y - softmax(yhat / tau);
    ``delayed_onehot``: y * (y - yhat) (the true-class entry only).
    """
    if kind == "delayed":
        return y - yhat
    if kind == "delayed_softmax":
        return y - torch.softmax(yhat / tau, dim=-1)
    if kind == "delayed_onehot":
        return y * (y - yhat)
    raise ValueError(f"error kind {kind!r} stores nothing; the store is for {list(DELAYED)}")


def read_store(store: Tensor, seen: Tensor, index: Tensor, initial: Tensor) -> Tensor:
    """Rows ``index`` of the error store ``[N, C]``; a row never written (``seen`` False) reads as
    ``initial`` (y - 1/C of the batch): the store is initialized lazily, row by row."""
    return torch.where(seen[index].unsqueeze(-1), store[index], initial)


def hidden_delta(e: Tensor, feedback: Tensor, neuron_shape: Tuple[int, ...]) -> Tensor:
    """``delta_l = e B_l`` ``[B, C] x [C, N_l] -> [B, *neuron_shape]`` (N_l = prod(neuron_shape))."""
    return (e @ feedback).reshape(e.shape[0], *neuron_shape)


def local_factor(local: str, spike_sum: Tensor, steps: int) -> Optional[Tensor]:
    """The time-independent local factor from the spike count ``S = sum_t s_t``:
    ``none`` -> None (phi = 1), ``rate`` -> r = S/T, ``ratevar`` -> 4 r (1 - r).
    (``spike`` depends on t: see :func:`spike_direction`.)"""
    if local == "none":
        return None
    r = spike_sum / steps
    if local == "rate":
        return r
    if local == "ratevar":
        return 4.0 * r * (1.0 - r)
    raise ValueError(f"local factor {local!r} has no time-independent form; use one of "
                     f"['none', 'rate', 'ratevar']")


def direction_from_sums(delta: Tensor, phi: Optional[Tensor], input_sum: Tensor, steps: int, ops,
                        weight_shape: Tuple[int, ...], bias: bool = True
                        ) -> Tuple[Tensor, Optional[Tensor]]:
    """G of one layer for a time-independent phi, from the running input sum ``A = sum_t a_t``:

        n   = delta * phi                      (phi = 1 for ``none``)
        G_W = correlate(n, A) / (B T)          (dense: n^T A)
        G_b = sum_rows(n) / B                  (= (1/(B T)) sum_t sum_b n)
    """
    n = delta if phi is None else delta * phi
    B = delta.shape[0]
    gw = ops.correlate(n, input_sum, weight_shape) / (B * steps)
    gb = ops.bias_sum(n) / B if bias else None
    return gw, gb


def spike_correlation(delta: Tensor, spikes: Tensor, inputs: Tensor, ops,
                      weight_shape: Tuple[int, ...]) -> Tensor:
    """``correlate(delta * s, a)`` (weight-shaped): one step's term of
    M = sum_t (delta * s_t)^T a_t, or all of M at once over T*B rows (``spikes``, ``inputs``
    [T, B, ...] and ``delta`` broadcast over T), or M for a constant input (``spikes`` = S)."""
    return ops.correlate(delta * spikes, inputs, weight_shape)


def spike_direction(delta: Tensor, spike_sum: Tensor, correlation: Tensor, steps: int, ops,
                    bias: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
    """G of one layer for phi_t = s_t, from M = sum_t (delta * s_t)^T a_t and S = sum_t s_t:

        G_W = M / (B T),     G_b = sum_rows(delta * S) / (B T)
    """
    B = delta.shape[0]
    gw = correlation / (B * steps)
    gb = ops.bias_sum(delta * spike_sum) / (B * steps) if bias else None
    return gw, gb
