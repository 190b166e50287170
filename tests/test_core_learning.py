"""LFP actually learns: a 64-32-10 LIF MLP on the 8x8 digits, from chance to >= 85 %.

LFP-epsilon (the default rule), default Eq. A.16 sequence reward, step-scope max-abs
normalization, Adam 1e-3, constant input encoding over T = 25 steps, batch 32. Fixed seeds and
a stratified 75/25 split; a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import pytest
import torch

import spikelfp.nn as snn
from spikelfp import LFP

pytestmark = pytest.mark.usefixtures("single_thread")

datasets = pytest.importorskip("sklearn.datasets")
model_selection = pytest.importorskip("sklearn.model_selection")

T = 25
EPOCHS = 6


def _digits():
    X, y = datasets.load_digits(return_X_y=True)
    X = (X / 16.0 - 0.5) / 0.5
    Xtr, Xte, ytr, yte = model_selection.train_test_split(X, y, test_size=0.25, random_state=0,
                                                          stratify=y)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return as_x(Xtr), as_x(Xte), torch.tensor(ytr), torch.tensor(yte)


def test_lfp_epsilon_learns_digits():
    Xtr, Xte, ytr, yte = _digits()
    torch.manual_seed(0)
    net = snn.Sequential(snn.LIFLinear(64, 32, beta=0.9), snn.LIFLinear(32, 10, beta=0.9))
    lfp = LFP(net)  # epsilon rule, sequence reward, step normalization, batch mean
    assert lfp.rules["0"].name == "epsilon" and lfp.normalize == "step"
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def accuracy():
        return (net.predict(Xte, steps=T) == yte).float().mean().item()

    before = accuracy()
    assert before < 0.30, f"untrained accuracy {before:.3f} is not near chance"
    gen = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(Xtr), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            lfp.step(Xtr[idx], ytr[idx], steps=T)
            opt.step()
    after = accuracy()
    assert after >= 0.85, f"LFP reached only {after:.3f} test accuracy (from {before:.3f})"
    # the gradient was never produced by autograd
    assert all(not p.grad.requires_grad for p in net.parameters())
