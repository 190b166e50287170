"""The generated temporal tasks (``timing``, ``timing_match``): shapes, seeded determinism,
balanced labels, the pulses where the label says, noise prefixes, and that nothing but the timing
of the pulses gives the class (spike counts: a linear readout is at chance)."""

import pytest
import torch

from spikelfp.data import build_data, dataset_names
from spikelfp.data.static import DataError
from spikelfp.data.temporal import GROUP, NOISE, PREFIX, WIDTH, make_timing, min_steps

T = 100


def _counts_readout_accuracy(task):
    """Least-squares linear readout (with bias) of the per-channel spike counts, fitted on one
    pool and tested on another."""
    xa, ya = make_timing(2000, T, 11, task=task)
    xb, yb = make_timing(1000, T, 12, task=task)

    def feats(x):
        c = x.sum(1).double()
        return torch.cat([c, torch.ones(len(c), 1, dtype=torch.float64)], 1)

    w = torch.linalg.lstsq(feats(xa), (2.0 * ya - 1).double().unsqueeze(1)).solution
    return float(((feats(xb) @ w).squeeze(1) > 0).long().eq(yb).double().mean())


@pytest.mark.parametrize("task", ["order", "match"])
def test_shapes_determinism_balance(task):
    x, y = make_timing(64, T, 3, task=task)
    assert x.shape == (64, T, 4 * GROUP) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert int((y == 0).sum()) == 32 and int((y == 1).sum()) == 32
    x2, y2 = make_timing(64, T, 3, task=task)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = make_timing(64, T, 4, task=task)
    assert not torch.equal(x, x3)
    # the first PREFIX steps are background noise only
    assert abs(float(x[:, :PREFIX].mean()) - NOISE) < 0.01


@pytest.mark.parametrize("task", ["order", "match"])
def test_pulses_sit_where_the_label_says(task):
    x, y, tm = make_timing(200, T, 5, task=task, times=True)
    assert bool((tm[:, 0] >= PREFIX).all()) and bool((tm.max(1).values + WIDTH <= T).all())
    groups = x.reshape(200, T, 4, GROUP).mean(-1)             # [n, T, group] firing fraction
    n = torch.arange(200)

    def active(t0):   # mean activity of each group in the pulse window starting at t0
        w = torch.stack([groups[n, t0 + d] for d in range(WIDTH)]).mean(0)
        return w                                               # [n, 4]

    a, b = active(tm[:, 0]), active(tm[:, 1])
    if task == "order":   # G0 at tm[:, 0], G1 at tm[:, 1]; label 0 <=> G0 first
        assert bool((a[:, 0] > 0.4).all()) and bool((b[:, 1] > 0.4).all())
        assert torch.equal((tm[:, 0] > tm[:, 1]).long(), y)
    else:                 # the cue group (0 or 1) then the probe group (2 or 3); label 0 <=> same index
        cue, probe = a[:, :2].argmax(1), b[:, 2:].argmax(1)
        assert bool((a[:, :2].max(1).values > 0.4).all()) and bool((tm[:, 0] < tm[:, 1]).all())
        assert torch.equal((cue != probe).long(), y)


@pytest.mark.parametrize("task", ["order", "match"])
def test_spike_counts_are_at_chance(task):
    """Every sample has one pulse of each kind: a linear readout of spike counts is at chance
    (a readout that could see the pulses' identities would not be: the match task's XOR)."""
    assert abs(_counts_readout_accuracy(task) - 0.5) < 0.05


@pytest.mark.parametrize("task", ["order", "match"])
def test_prepended_noise_keeps_the_samples(task):
    x, y = make_timing(40, T, 6, task=task)
    xp, yp = make_timing(40, T, 6, prepend=30, task=task)
    assert xp.shape == (40, T + 30, 4 * GROUP) and torch.equal(yp, y)
    assert torch.equal(xp[:, 30:], x)
    assert abs(float(xp[:, :30].mean()) - NOISE) < 0.01


def test_onset_is_not_the_class():
    """The onset of the first pulse has the same distribution in both classes (seeded, so the
    numbers are fixed); the time of one pulse alone carries only the edge information the module
    docstring describes: a per-time majority vote on the time of G0, fitted on one pool and
    tested on another, stays far from the order (which gives 100 %) and vanishes for the match
    task."""
    _, y, tm = make_timing(2000, T, 7, times=True)
    first = tm.min(1).values.double()
    assert abs(float(first[y == 0].mean() - first[y == 1].mean())) < 1.5

    def vote(task):
        _, ya, ta = make_timing(3000, T, 8, task=task, times=True)
        _, yb, tb = make_timing(1000, T, 9, task=task, times=True)
        table = torch.zeros(T, 2).index_put_((ta[:, 0], ya), torch.ones(len(ya)), accumulate=True)
        guess = table.argmax(1)[tb[:, 0]]
        return float((guess == yb).double().mean())

    assert 0.6 < vote("order") < 0.8
    assert abs(vote("match") - 0.5) < 0.05


def test_registered_and_short_steps_refused():
    assert {"timing", "timing_match"} <= set(dataset_names())
    b = build_data({"dataset": "timing", "steps": 60, "limit": 100, "test_limit": 50, "val_fraction": 0.1})
    assert b.sequence and b.input_shape == (4 * GROUP,) and b.num_classes == 2
    assert len(b.train) == 100 and len(b.test) == 50 and len(b.val) == 400
    xb, yb = b.train[:3]
    assert xb.shape == (3, 60, 4 * GROUP)
    with pytest.raises(DataError, match="steps >= "):
        make_timing(4, min_steps() - 1, 0)
    with pytest.raises(DataError, match="task"):
        make_timing(4, T, 0, task="xor")
