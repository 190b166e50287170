"""Rewards given to the output neurons (spec section 2).

Every reward has the signature ``reward(outputs, labels) -> tensor shaped like outputs`` where
``outputs`` is the output layer's activity ``[T, B, C]`` (spikes, or ``T = 1`` real-valued
activations in the non-spiking mode) and ``labels`` are integer classes ``[B]``. Positive values
mean "this neuron should be more active".
"""

from __future__ import annotations

from typing import Callable, Dict, Union

import torch

Tensor = torch.Tensor
RewardFn = Callable[[Tensor, Tensor], Tensor]


def _check(outputs: Tensor, labels: Tensor) -> None:
    if outputs.dim() != 3:
        raise ValueError(
            f"reward: outputs must be [T, B, C], got shape {tuple(outputs.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != outputs.shape[1]:
        raise ValueError(
            f"reward: labels must be [B] with B={outputs.shape[1]}, got shape {tuple(labels.shape)}"
        )
    C = outputs.shape[2]
    if labels.numel() and (labels.min() < 0 or labels.max() >= C):
        raise ValueError(f"reward: labels must lie in [0, {C - 1}], got {labels.min().item()}..{labels.max().item()}")


def sequence_reward(outputs: Tensor, labels: Tensor) -> Tensor:
    """Paper Eq. A.16 sequence reward matrix, divided by T (the default for SNNs).

    With spike counts n_c = sum_t Y_{t,c} and target c*::

        R_{t,c} = 1 - sigmoid(n_c - floor(T/2))                       if c == c*
        R_{t,c} = -Y_{t,c} * (1 - sigmoid((T - n_c) - floor(T/2)))    otherwise

    The target neuron is rewarded at every step; a wrong neuron is punished at the steps it
    spiked. Both decay to zero as the count approaches the desired end.
    """
    _check(outputs, labels)
    T = outputs.shape[0]
    counts = outputs.sum(0)  # [B, C]
    half = T // 2
    target = torch.nn.functional.one_hot(labels.long(), outputs.shape[2]).to(outputs.dtype)
    pos = 1 - torch.sigmoid(counts - half)  # [B, C]
    neg = 1 - torch.sigmoid((T - counts) - half)
    r = target * pos + (1 - target) * (-outputs * neg)  # broadcast [T, B, C]
    return r / T


def eq7_reward(outputs: Tensor, labels: Tensor) -> Tensor:
    """Paper Eq. 7 in direction-like form on a real-valued output o (logits or spike counts).

    f_c = |o_c| * (onehot_c - sigmoid(o_c)), with o = sum_t outputs_t; the result is spread
    evenly over the T steps (for T = 1 it is f itself).
    """
    _check(outputs, labels)
    T = outputs.shape[0]
    o = outputs.sum(0)
    target = torch.nn.functional.one_hot(labels.long(), outputs.shape[2]).to(outputs.dtype)
    f = o.abs() * (target - torch.sigmoid(o))
    return (f / T).unsqueeze(0).expand_as(outputs).contiguous()


def plusminus_reward(outputs: Tensor, labels: Tensor) -> Tensor:
    """Paper A.1: +1 for the target neuron when the sample is classified right, -1 when wrong.

    The prediction is the argmax of the summed output (spike count); other neurons get 0. The
    reward is spread evenly over the T steps.
    """
    _check(outputs, labels)
    T = outputs.shape[0]
    o = outputs.sum(0)
    correct = (o.argmax(-1) == labels).to(outputs.dtype) * 2 - 1  # +1 / -1
    target = torch.nn.functional.one_hot(labels.long(), outputs.shape[2]).to(outputs.dtype)
    f = target * correct[:, None]
    return (f / T).unsqueeze(0).expand_as(outputs).contiguous()


REWARDS: Dict[str, RewardFn] = {
    "sequence": sequence_reward,
    "eq7": eq7_reward,
    "plusminus": plusminus_reward,
}


def get_reward(reward: Union[str, RewardFn]) -> RewardFn:
    """Look up a reward by name (``sequence``, ``eq7``, ``plusminus``) or pass a callable through."""
    if callable(reward):
        return reward
    if reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}; use one of {sorted(REWARDS)} or a callable")
    return REWARDS[reward]
