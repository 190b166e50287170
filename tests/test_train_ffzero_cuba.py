"""FFzero on CUBA and recurrent layers (spec ``lfp-cuba-recurrent.md`` section 4): theta_l is
(W, b, V, b_V); the batched perturbed CUBA forwards against explicit per-direction runs of moved
copies of the network, eps = 0 against the unperturbed stream, and one epoch of training."""

import copy

import pytest
import torch

from spikelfp.core.ffzero import cosine_scores, estimate_improvement, margin_loss, recurrent_direction_currents
from spikelfp.nn import Sequential
from spikelfp.nn.layers import CubaLIFConv2d, CubaLIFLinear, Flatten, LIFLinear
from spikelfp.train.config import resolve
from spikelfp.train.ffzero import FFzeroTrainer, layer_parameters
from spikelfp.train.loop import train
from spikelfp.train.protocol import Batch, TrainContext

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def _rcuba(alpha=0.6, per_neuron=False):
    """12 -> 16 recurrent CUBA -> 10 CUBA; weights scaled for activity in every layer."""
    torch.manual_seed(4)
    a = torch.linspace(0.2, 0.8, 16, dtype=D) if per_neuron else alpha
    net = Sequential(Flatten(1), CubaLIFLinear(12, 16, alpha=a, recurrent=True, dtype=D),
                     CubaLIFLinear(16, 10, alpha=alpha, dtype=D))
    with torch.no_grad():
        net[1].weight.mul_(2.0)
        net[1].recurrent_weight.mul_(2.0)
        net[2].weight.mul_(2.0)
    return net, (12,)


def _rlif():
    """recurrent LIF (alpha = 0 with V) -> LIF output."""
    torch.manual_seed(5)
    net = Sequential(Flatten(1), CubaLIFLinear(12, 16, alpha=0.0, recurrent=True, dtype=D),
                     LIFLinear(16, 10, dtype=D))
    with torch.no_grad():
        net[1].weight.mul_(3.0)
        net[1].recurrent_weight.mul_(2.0)
        net[2].weight.mul_(3.0)
    return net, (12,)


def _cuba_conv():
    torch.manual_seed(6)
    net = Sequential(CubaLIFConv2d(1, 4, 3, padding=1, alpha=0.5, dtype=D), Flatten(),
                     CubaLIFLinear(256, 10, alpha=0.5, dtype=D))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[2].weight.mul_(2.0)
    return net, (1, 8, 8)


def _trainer(net, shape, **over):
    cfg = resolve(None, {"trainer": "ffzero", "ff_directions": 3, "ff_eps": 0.5, **over})
    return FFzeroTrainer(cfg, net, TrainContext(100, 10, shape, False, dtype=D))


def _reference_losses(tr, net, x, steps, y, j, dirs):
    """Layer j's 2K losses from explicit runs, one per direction: a copy of the network with
    layer j's W, b, V, b_V moved to theta +/- eps u_k, run with its whole trace. Above layer j
    nothing matters; below it the copy is the unperturbed network."""
    s = tr.layers[j - 1]
    out = []
    for sign in (1.0, -1.0):
        for k in range(tr.K):
            pert = copy.deepcopy(net)
            layer = pert[s.index]
            with torch.no_grad():
                for (_name, p), u in zip(layer_parameters(layer), dirs):
                    if p is not None:
                        p.add_(sign * tr.eps * u[k])
                rec = pert.run(x, steps).records[s.index]
            membrane = tr.representation == "membrane" and j < len(tr.layers)
            z = (rec.membrane if membrane else rec.spikes.to(D)).mean(0).reshape(len(y), -1)
            out.append(margin_loss(cosine_scores(z, tr.prototypes[j - 1]), y, tr.margin))
    return torch.stack(out)


def _inputs(shape, sequence, B=5, T=7):
    g = torch.Generator().manual_seed(3)
    frame = torch.rand(B, *shape, generator=g, dtype=D)
    if sequence:
        return frame.unsqueeze(0) * torch.rand(T, B, *shape, generator=g, dtype=D), None
    return frame, T


@pytest.mark.parametrize("make", [_rcuba, lambda: _rcuba(per_neuron=True), _rlif, _cuba_conv],
                         ids=["rcuba", "rcuba-per-neuron", "rlif", "cuba-conv"])
@pytest.mark.parametrize("representation", ["rate", "membrane"])
@pytest.mark.parametrize("sequence", [False, True])
def test_batched_perturbed_cuba_forwards_equal_explicit_runs(make, representation, sequence):
    net, shape = make()
    tr = _trainer(net, shape, ff_representation=representation)
    x, steps = _inputs(shape, sequence)
    y = torch.tensor([0, 3, 7, 3, 9])
    fw = tr.forward(Batch(x, y, torch.arange(5), steps, 0, 11))
    assert sorted(fw.losses) == [1, 2]
    for j in (1, 2):
        ref = _reference_losses(tr, net, x, steps, y, j, fw.directions[j])
        assert torch.allclose(fw.losses[j], ref, atol=1e-12, rtol=0), j
        assert fw.losses[j].std() > 0  # the perturbations change the loss
    # a recurrent layer's directions span W, b, V, b_V, unit length jointly
    s = tr.layers[0]
    u = fw.directions[1]
    if getattr(s.module, "recurrent", False):
        assert [t is not None for t in u] == [True, True, True, True]
        assert u[2].shape == (3, 16, 16) and u[3].shape == (3, 16)
    norm = sum(t.reshape(3, -1).pow(2).sum(1) for t in u if t is not None)
    assert torch.allclose(norm, torch.ones(3, dtype=D))
    # step writes param.grad = -G on every parameter of theta_l, V and b_V included
    tr.step(Batch(x, y, torch.arange(5), steps, 0, 11))
    G = estimate_improvement(fw.losses[1], [t for t in u if t is not None], tr.eps)
    params = [p for _n, p in layer_parameters(s.module) if p is not None]
    assert len(params) == len(G)
    for p, g in zip(params, G):
        assert torch.allclose(p.grad, -g)


@pytest.mark.parametrize("make", [_rcuba, _rlif, _cuba_conv], ids=["rcuba", "rlif", "cuba-conv"])
def test_eps_zero_perturbed_runs_equal_the_unperturbed_stream(make):
    """With eps = 0 all 2K perturbed runs are the unperturbed layer: their losses equal the
    unperturbed layer's loss computed from the network's own stream."""
    net, shape = make()
    tr = _trainer(net, shape)
    tr.eps = 0.0
    x, steps = _inputs(shape, True)
    y = torch.tensor([0, 3, 7, 3, 9])
    fw = tr.forward(Batch(x, y, torch.arange(5), steps, 0, 2))
    for j in (1, 2):
        assert torch.equal(fw.losses[j], fw.layer_loss[j - 1].expand(6)), j


def test_recurrent_direction_currents_against_a_loop():
    g = torch.Generator().manual_seed(0)
    K, B, N = 3, 4, 5
    s = (torch.rand(2 * K, B, N, generator=g) < 0.5).to(D)
    U = torch.randn(K, N, N, generator=g, dtype=D)
    ub = torch.randn(K, N, generator=g, dtype=D)
    out = recurrent_direction_currents(s, U, ub, 0.25)
    for sign, off in ((1.0, 0), (-1.0, K)):
        for k in range(K):
            ref = sign * 0.25 * (s[off + k] @ U[k].T + ub[k])
            assert torch.allclose(out[off + k], ref, atol=1e-14)
    assert torch.allclose(recurrent_direction_currents(s.bool(), U, None, 1.0)[K + 1], -(s[K + 1] @ U[1].T))


def test_ffzero_trains_a_recurrent_cuba_net_one_epoch(tmp_path):
    cfg = {"trainer": "ffzero", "dataset": "digits", "steps": 8, "limit": 64, "test_limit": 32,
           "val_fraction": 0.0, "hidden": [12], "neuron": "cuba", "alpha": 0.5, "recurrent": True,
           "epochs": 1, "batch_size": 32, "ff_directions": 4, "lr": 0.01, "progress": "off",
           "log_updates_every": 0, "out": str(tmp_path)}
    res = train(resolve(None, cfg), echo=lambda s: None)
    row = res["metrics"]
    assert row["epoch"] == 1 and 0.0 <= row["test_acc"] <= 1.0
    assert torch.isfinite(torch.as_tensor(row["ff_loss"]))
    run = res["run_dir"]
    last = torch.load(run / "last.pt", weights_only=False)["model"]
    init = torch.load(run / "init.pt", weights_only=False)["model"]
    for name in ("1.weight", "1.bias", "1.recurrent_weight", "1.recurrent_bias", "2.weight"):
        assert not torch.equal(last[name], init[name]), name  # V and b_V are trained too
