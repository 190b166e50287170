"""NIR export of CUBA and recurrent layers: CubaLIF nodes with the standard Euler mapping, the
recurrent loop as edges, Norse and snnTorch running a CUBA export spike for spike, and the
formats without a CUBA equivalent refusing it in one line."""

import numpy as np
import pytest
import torch

from hardware_export.consumers import simulate_norse, simulate_snntorch
from hardware_export.nir_export import to_nir
from spikelfp.nn import Sequential
from spikelfp.nn.layers import CubaLIFLinear

pytest.importorskip("nir")


def _net(recurrent=False, alpha=0.5):
    torch.manual_seed(0)
    net = Sequential(CubaLIFLinear(6, 8, alpha=alpha, recurrent=recurrent, reset="zero"),
                     CubaLIFLinear(8, 3, alpha=torch.tensor([0.8, 0.3, 0.6]), reset="zero"))
    with torch.no_grad():
        for m in net:
            m.weight.mul_(2.0)
    return net


def _x():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(20, 4, 6, generator=g) < 0.4).float()


def test_cubalif_nodes_follow_the_euler_mapping():
    import nir
    dt = 1e-4
    g = to_nir(_net(), dt=dt)
    n0, n1 = g.nodes["layer0_cubalif"], g.nodes["layer1_cubalif"]
    assert isinstance(n0, nir.CubaLIF) and isinstance(n1, nir.CubaLIF)
    # i <- (1 - dt/tau_syn) i + (dt/tau_syn) w_in I = alpha i + I;  v <- beta v + (dt/tau_mem) r i = beta v + i
    assert np.allclose(1 - dt / n1.tau_syn, [0.8, 0.3, 0.6], atol=1e-12)
    assert np.allclose(1 - dt / n0.tau_mem, 0.9, atol=1e-12)
    assert np.allclose(dt / n1.tau_syn * n1.w_in, 1.0) and np.allclose(dt / n0.tau_mem * n0.r, 1.0)
    assert np.all(n0.v_reset == 0) and np.all(n0.v_leak == 0)


def test_recurrent_layer_is_a_loop_of_edges():
    net = _net(recurrent=True)
    g = to_nir(net)
    assert ("layer0_cubalif", "layer0_rec_affine") in g.edges
    assert ("layer0_rec_affine", "layer0_cubalif") in g.edges
    rec = g.nodes["layer0_rec_affine"]
    assert np.array_equal(rec.weight, net[0].recurrent_weight.detach().numpy())
    assert np.array_equal(rec.bias, net[0].recurrent_bias.detach().numpy())
    assert not any(k.startswith("layer1_rec") for k in g.nodes)


def test_alpha_zero_layer_exports_as_lif():
    import nir
    g = to_nir(Sequential(CubaLIFLinear(4, 3, alpha=0.0, reset="zero")))
    assert isinstance(g.nodes["layer0_lif"], nir.LIF)


@pytest.mark.filterwarnings("ignore")
def test_norse_and_snntorch_run_a_cuba_export_identically():
    """Norse (CubaLIF -> w_in, LIBoxCell synapse, r, LIFBoxCell; reset to v_reset in the
    spiking step) and snnTorch (CubaLIF -> Synaptic(alpha, beta, reset "zero")) both give
    spikelfp's output spikes exactly (reset "zero", float32)."""
    pytest.importorskip("norse")
    pytest.importorskip("snntorch")
    net, x = _net(), _x()
    ref = net.run(x).output.float()
    assert 0.05 < float(ref.mean()) < 0.95
    g = to_nir(net)
    assert torch.equal(simulate_norse(g, x, dt=1e-4, fold_r=False), ref)
    assert torch.equal(simulate_snntorch(g, x), ref)


@pytest.mark.filterwarnings("ignore")
def test_recurrent_export_in_snntorch():
    """snnTorch (1.0) finds the loop, cuts it into a sub-graph and runs it through nirtorch as
    Synaptic + Linear(V, b_V) modules (not its RSynaptic; its spikes differ from ours: measured
    ~65 % output agreement on this net). (Norse's importer does not read recurrent graphs: its
    code for that is commented out.)"""
    snn = pytest.importorskip("snntorch")
    from snntorch.import_nir import import_from_nir
    import copy
    net, x = _net(recurrent=True), _x()
    g = to_nir(net)
    module = import_from_nir(copy.deepcopy(g))
    lin = [m for m in module.modules() if isinstance(m, torch.nn.Linear)
           and tuple(m.weight.shape) == (8, 8)]
    assert len(lin) == 1 and any(isinstance(m, snn.Synaptic) for m in module.modules())
    assert torch.equal(lin[0].weight.detach(), net[0].recurrent_weight.detach())
    assert torch.equal(lin[0].bias.detach(), net[0].recurrent_bias.detach())
    assert simulate_snntorch(g, x).shape == (20, 4, 3)


def test_hdf5_round_trip_of_cuba_and_recurrent_layers(tmp_path):
    """HDF5 keeps the current decay (iDecay = (1 - alpha) 4096 unrounded, and alpha) and the
    recurrent weights (weight_rec, bias_rec): the file reads back to the same spikes."""
    from hardware_export import compare_networks, read_hdf5
    from hardware_export.hdf5_export import write_hdf5

    torch.manual_seed(3)
    net = Sequential(
        CubaLIFLinear(6, 8, alpha=0.6, recurrent=True, reset="zero", dtype=torch.float64),
        CubaLIFLinear(8, 3, alpha=torch.linspace(0.1, 0.8, 3, dtype=torch.float64), dtype=torch.float64))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)
    write_hdf5(net, tmp_path / "n.h5")
    back = read_hdf5(tmp_path / "n.h5")
    assert [type(m).__name__ for m in back] == ["CubaLIFLinear", "CubaLIFLinear"]
    assert back[0].recurrent and torch.equal(back[0].recurrent_weight, net[0].recurrent_weight)
    assert torch.equal(back[1].alpha, net[1].alpha)
    res = compare_networks(net, back, (6,), steps=12)
    assert res["identical"] and res["spikes_reference"] > 0


def test_netx_refuses_cuba_layers_in_one_line(tmp_path):
    from hardware_export import write_netx

    with pytest.raises(ValueError) as e:
        write_netx(_net(), tmp_path / "n.net")
    assert "\n" not in str(e.value) and "synaptic current" in str(e.value)