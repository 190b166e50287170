"""Generated temporal tasks where memory matters: ``timing`` (order) and ``timing_match``.

Every sample is a spike raster ``[T, 32]`` (``T = cfg["steps"]``, at least :func:`min_steps`):
four groups of 8 input channels (G0..G3 = channels 0-7, 8-15, 16-23, 24-31) over background noise
(every channel spikes with probability ``NOISE`` = 0.02 at every step). A pulse is ``WIDTH`` = 3
steps in which every channel of its group spikes with probability ``PULSE`` = 0.7. Two pulses per
sample; the first ``PREFIX`` = 20 steps are noise only, then

    t1 ~ U{PREFIX, ..., T - gap - WIDTH},   gap ~ U{GAP_MIN, ..., GAP_MAX} = U{15, ..., 30},
    t2 = t1 + gap

``timing`` (order; the benchmark's task): the pulses are G0 and G1 (G2, G3 carry noise only);
label 0 if G0 fires first (G0 at t1, G1 at t2), 1 if G1 fires first. Every sample holds one pulse
of each group, so spike counts say nothing about the class.

``timing_match`` (delayed match-to-sample, harder): a cue c ~ U{0, 1} on G_c at t1 and a probe
p on G_{2+p} at t2; label 0 if p == c, 1 otherwise. The class is the XOR of the two identities:
neither pulse alone, nor any spike count, nor any pulse time says anything about it.

What the design guards against (states start at 0, so the time since the start is visible to
every network):

- the noise-only prefix (20 steps, more than the settling time of a LIF with beta = 0.9) keeps
  pulses away from the start-up transient;
- the onset t1 is random and independent of the label. In ``timing`` the time of one pulse
  alone still carries a little information at the edges of the window (G0 at the very start of
  the window can only be first); the test measures it (the Bayes accuracy from the time of G0
  alone, about 0.6 at T = 100). A network that uses it fails when noise-only steps are prepended
  (:func:`make_timing` ``prepend``), which shifts both pulses and leaves the order unchanged: the
  benchmark reports accuracy on such shifted test samples;
- the gap (15-30 steps) is long against a LIF membrane with beta = 0.9 (0.9^15 = 0.21,
  0.9^30 = 0.04): a feed-forward LIF has mostly forgotten the first pulse when the second
  arrives; a synaptic current (alpha = 0.9 keeps a pulse's effect on the membrane for ~30
  steps) or recurrent weights can keep it.

Labels are exactly balanced (half of each split per class, in a seeded random order). The splits
are fixed generated pools (train: 4,000 samples from seed ``TRAIN_SEED``, test: 1,000 from
``TEST_SEED``), independent of the training seed; ``limit`` / ``test_limit`` / ``val_fraction``
act on them as on every data set. The DataBundle has ``sequence=True`` (items ``[T, 32]``).
"""

from __future__ import annotations


import torch
from torch.utils.data import TensorDataset

from .registry import DataBundle, register_dataset, split_train_val
from .static import DataError

Tensor = torch.Tensor

__all__ = ["GROUP", "GAP_MAX", "GAP_MIN", "NOISE", "PREFIX", "PULSE", "TASKS", "TEST_SEED",
           "TRAIN_SEED", "WIDTH", "make_timing", "min_steps", "noise_prefix"]

TASKS = ("order", "match")

GROUP = 8                     # channels per pulse group; 4 groups -> 32 channels
GAP_MIN, GAP_MAX = 15, 30     # steps from the first pulse's onset to the second's
PREFIX = 20                   # noise-only steps before the earliest pulse
WIDTH = 3                     # steps per pulse
PULSE = 0.7                   # spike probability of a group channel during its pulse
NOISE = 0.02                  # background spike probability per channel and step
TRAIN_SEED, TEST_SEED = 1, 2
TRAIN_SIZE, TEST_SIZE = 4000, 1000


def min_steps() -> int:
    """The shortest T that holds the prefix and both pulses at the longest gap."""
    return PREFIX + GAP_MAX + WIDTH


def noise_prefix(n: int, steps: int, seed: int) -> Tensor:
    """``[n, steps, 4 * GROUP]`` background-noise-only spikes (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, steps, 4 * GROUP, generator=g) < NOISE).float()


def make_timing(n: int, steps: int, seed: int, prepend: int = 0, task: str = "order",
                times: bool = False):
    """``n`` samples of the timing task: ``(x [n, prepend + steps, 32] float32 in {0, 1},
    y [n] int64)`` (and, with ``times=True``, the onsets ``[n, 2]`` of the G0-or-cue pulse and of
    the other pulse, counted in the unprepended sample). The same ``(n, steps, seed, task)`` gives
    the same samples for every ``prepend``: ``prepend`` noise-only steps (seeded from ``seed``
    too) go in front of them."""
    if task not in TASKS:
        raise DataError(f"timing task: task={task!r}; use one of {list(TASKS)}")
    if steps < min_steps():
        raise DataError(f"timing task: steps={steps} is too short; use steps >= {min_steps()}")
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    c = torch.randint(0, 2, (n,), generator=g)
    gap = torch.randint(GAP_MIN, GAP_MAX + 1, (n,), generator=g)
    t1 = PREFIX + (torch.rand(n, generator=g) * (steps - gap - WIDTH - PREFIX + 1)).floor().long()
    t2 = t1 + gap
    if task == "order":   # G0 then G1 (label 0) or G1 then G0 (label 1)
        first, second = y, 1 - y
        t_g0 = torch.where(y == 0, t1, t2)
        t_other = torch.where(y == 0, t2, t1)
    else:                 # cue G_c, probe G_{2+p}, p = c (label 0) or 1 - c (label 1)
        first, second = c, 2 + torch.where(y == 0, c, 1 - c)
        t_g0, t_other = t1, t2
    C = 4 * GROUP
    x = torch.rand(n, steps, C, generator=g) < NOISE
    t = torch.arange(steps).view(1, steps, 1)
    ch = torch.arange(C).view(1, 1, C) // GROUP          # the group of each channel

    def pulse(onset, group):
        o = onset.view(n, 1, 1)
        return (t >= o) & (t < o + WIDTH) & (ch == group.view(n, 1, 1))

    x = x | ((pulse(t1, first) | pulse(t2, second)) & (torch.rand(n, steps, C, generator=g) < PULSE))
    x = x.float()
    if prepend:
        x = torch.cat([noise_prefix(n, prepend, seed + 1_000_003), x], dim=1)
    return (x, y, torch.stack([t_g0, t_other], 1)) if times else (x, y)


def _bundle(cfg: dict, task: str) -> DataBundle:
    steps = int(cfg.get("steps", min_steps()))
    x, y = make_timing(TRAIN_SIZE, steps, TRAIN_SEED, task=task)
    train, val = split_train_val(x, y, cfg.get("val_fraction", 0.0), cfg.get("limit"))
    xt, yt = make_timing(TEST_SIZE, steps, TEST_SEED, task=task)
    if cfg.get("test_limit") is not None:
        xt, yt = xt[: cfg["test_limit"]], yt[: cfg["test_limit"]]
    return DataBundle(train, val, TensorDataset(xt, yt), (4 * GROUP,), 2, sequence=True)


@register_dataset("timing")
def _timing(cfg: dict) -> DataBundle:
    return _bundle(cfg, "order")


@register_dataset("timing_match")
def _timing_match(cfg: dict) -> DataBundle:
    return _bundle(cfg, "match")
