"""NIR export: spikelfp -> .nir file -> nir.read -> from_nir -> spikelfp, and the refusals."""

import warnings

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")
pytest.importorskip("h5py")

import spikelfp.nn as snn  # noqa: E402
from _helpers import boost  # noqa: E402
from hardware_export import (  # noqa: E402
    ResetMismatchError,
    ResetMismatchWarning,
    from_nir,
    to_nir,
    write_nir,
)
from hardware_export.consumers import fold_resistance  # noqa: E402


pytestmark = pytest.mark.usefixtures("single_thread")


def linear_net(reset="zero", seed=0):
    torch.manual_seed(seed)
    return boost(snn.Sequential(
        snn.LIFLinear(12, 24, beta=torch.rand(24) * 0.5 + 0.45, threshold=torch.rand(24) + 0.5,
                      reset=reset),
        snn.LIFLinear(24, 16, bias=False, beta=0.7, threshold=0.8, reset=reset),
        snn.LIFLinear(16, 5, beta=0.9, threshold=0.6, reset=reset),
    ))


def conv_net(reset="zero", seed=0):
    torch.manual_seed(seed)
    return boost(snn.Sequential(
        snn.LIFConv2d(2, 4, 3, padding=1, beta=torch.rand(4) * 0.4 + 0.55,
                      threshold=torch.rand(4, 8, 8) + 0.5, reset=reset),
        snn.AvgPool2d(2),
        snn.LIFConv2d(4, 6, 3, stride=2, padding=(1, 0), bias=False, beta=0.8, threshold=0.7,
                      reset=reset),
        snn.Flatten(),
        snn.LIFLinear(6 * 2 * 1, 7, beta=0.85, threshold=0.5, reset=reset),
    )), (2, 8, 8)


def _inputs(shape, T=20, B=6, seed=1, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, *shape, generator=g) * scale


def _same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        x, y = sa[k], sb[k]
        shape = torch.broadcast_shapes(x.shape, y.shape)
        assert torch.equal(x.expand(shape), y.expand(shape)), k
    for la, lb in zip(a, b):
        assert type(la) is type(lb)
        if hasattr(la, "reset"):
            assert la.reset == lb.reset


def test_linear_round_trip_is_exact(tmp_path):
    net = linear_net()
    path = tmp_path / "net.nir"
    graph = write_nir(net, path, time_steps=20, input_encoding="constant")
    assert isinstance(graph, nir.NIRGraph) and path.is_file()
    back = from_nir(nir.read(str(path)))
    _same_params(net, back)
    x = _inputs((12,))
    ref = net(x)
    assert 0.05 < ref.mean() < 0.9  # the comparison is not trivial
    assert torch.equal(ref, back(x))
    assert torch.equal(ref, from_nir(path)(x))  # from a path too


def test_conv_avgpool_flatten_round_trip_is_exact(tmp_path):
    net, shape = conv_net()
    write_nir(net, tmp_path / "c.nir", shape)
    back = from_nir(nir.read(str(tmp_path / "c.nir")))
    _same_params(net, back)
    assert back[2].bias is None and tuple(back[2].stride) == (2, 2)
    assert tuple(back[2].padding) == (1, 0)
    x = _inputs(shape)
    ref = net(x)
    assert 0.01 < ref.mean() < 0.9
    assert torch.equal(ref, back(x))


def test_nodes_and_parameters_follow_the_standard_discretization():
    dt = 1e-3
    net = linear_net()
    g = to_nir(net, dt=dt)
    assert list(g.nodes) == ["input", "layer0_affine", "layer0_lif", "layer1_linear",
                             "layer1_lif", "layer2_affine", "layer2_lif", "output"]
    lif = g.nodes["layer0_lif"]
    beta = net[0].beta.double().numpy()
    np.testing.assert_allclose(lif.tau, dt / (1 - beta), rtol=1e-12)
    np.testing.assert_allclose(lif.r, lif.tau / dt, rtol=1e-12)
    assert np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    np.testing.assert_array_equal(lif.v_threshold, net[0].threshold.double().numpy())
    # forward Euler with step dt reproduces v <- beta v + I
    np.testing.assert_allclose(1 - dt / lif.tau, beta, rtol=0, atol=1e-15)
    np.testing.assert_allclose(lif.r * dt / lif.tau, 1.0, rtol=1e-12)
    # per-neuron thresholds are stored per neuron, scalar ones broadcast to the neuron shape
    assert g.nodes["layer2_lif"].v_threshold.shape == (5,)
    assert isinstance(g.nodes["layer1_linear"], nir.Linear)
    assert g.metadata["dt"] == dt and g.metadata["producer"] == "spikelfp"


def test_beta_one_becomes_if_and_round_trips(tmp_path):
    torch.manual_seed(3)
    net = boost(snn.Sequential(snn.LIFLinear(10, 8, beta=1.0, reset="zero"),
                                snn.LIFLinear(8, 4, beta=0.9, threshold=0.5, reset="zero")))
    write_nir(net, tmp_path / "if.nir", dt=1e-3)
    g = nir.read(str(tmp_path / "if.nir"))
    assert isinstance(g.nodes["layer0_if"], nir.IF)
    np.testing.assert_allclose(g.nodes["layer0_if"].r, 1e3)
    back = from_nir(g)
    _same_params(net, back)
    x = _inputs((10,))
    assert torch.equal(net(x), back(x))


def test_mixed_beta_one_is_refused():
    net = snn.Sequential(snn.LIFLinear(4, 3, beta=torch.tensor([1.0, 0.9, 0.8]), reset="zero"))
    with pytest.raises(ValueError, match="mixes beta == 1"):
        to_nir(net)


def test_sum_pooling_folds_the_average_into_the_next_synapse(tmp_path):
    net, shape = conv_net()
    write_nir(net, tmp_path / "s.nir", shape, pooling="sum")
    g = nir.read(str(tmp_path / "s.nir"))
    assert any(isinstance(n, nir.SumPool2d) for n in g.nodes.values())
    np.testing.assert_array_equal(g.nodes["layer2_conv2d"].weight,
                                  net[2].weight.detach().numpy() / 4)
    back = from_nir(g)
    _same_params(net, back)  # 2x2 pool: the factor 4 is a power of two, exact both ways
    x = _inputs(shape)
    assert torch.equal(net(x), back(x))


def test_r_and_v_leak_are_folded_on_import():
    """A graph in the 'r = 1' convention (Norse's) reads into the same network."""
    net = linear_net()
    g = to_nir(net)
    folded = fold_resistance(g)
    assert np.all(folded.nodes["layer0_lif"].r == 1)
    back = from_nir(folded)
    x = _inputs((12,))
    ref = net(x)
    agree = (back(x) == ref).float().mean().item()
    assert agree > 0.999  # weights were scaled by r and back: float rounding only
    np.testing.assert_allclose(back[0].weight.detach().numpy(), net[0].weight.detach().numpy(),
                               rtol=1e-6)
    # v_leak folds into the bias: dt/tau * v_leak per step
    g2 = to_nir(net)
    lif = g2.nodes["layer2_lif"]
    lif.v_leak = np.full_like(lif.v_leak, 0.5)
    back2 = from_nir(g2)
    expected = net[2].bias.detach().double() + (1 - 0.9) * 0.5
    np.testing.assert_allclose(back2[2].bias.detach().double().numpy(), expected.numpy(),
                               rtol=0, atol=1e-7)


def test_metadata_is_written_and_read(tmp_path):
    net = linear_net()
    write_nir(net, tmp_path / "m.nir", dt=2e-4, time_steps=25, input_encoding="poisson",
              metadata={"dataset": "digits"})
    meta = nir.read(str(tmp_path / "m.nir")).metadata
    assert float(meta["dt"]) == 2e-4 and int(meta["time_steps"]) == 25
    assert meta["input_encoding"] == "poisson" and meta["dataset"] == "digits"
    assert meta["spikelfp_version"] and list(meta["input_shape"]) == [12]
    # from_nir takes dt from the metadata: beta is recovered with the right dt
    back = from_nir(tmp_path / "m.nir")
    _same_params(net, back)


def test_reset_subtract_is_refused_and_nothing_is_written(tmp_path):
    net = linear_net(reset="subtract")
    path = tmp_path / "sub.nir"
    with pytest.raises(ResetMismatchError, match="allow_reset_mismatch"):
        write_nir(net, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="reset='subtract'"):
        to_nir(net)


def test_reset_mismatch_export_warns_notes_and_measures_the_difference(tmp_path):
    """With allow_reset_mismatch the file simulates reset-to-zero. Measured here: the output
    spikes of the zero-reset reading agree with the subtract-trained original on 85-92 % of the
    (t, sample, neuron) entries at output rates of 0.15-0.35 (seeds 0-5, T=40); for this
    fixture the bound asserted below holds."""
    net = linear_net(reset="subtract")
    path = tmp_path / "sub.nir"
    with pytest.warns(ResetMismatchWarning):
        write_nir(net, path, allow_reset_mismatch=True)
    g = nir.read(str(path))
    assert "reset_mismatch" in g.metadata
    assert g.nodes["layer0_lif"].metadata["spikelfp_reset"] == "subtract"
    assert "reset_note" in g.nodes["layer0_lif"].metadata
    with pytest.warns(ResetMismatchWarning, match="restore_reset"):
        as_nir = from_nir(g)
    assert all(m.reset == "zero" for m in as_nir)
    x = _inputs((12,), T=40, B=8)
    ref = net(x)
    out = as_nir(x)
    agree = (out == ref).float().mean().item()
    assert 0.05 < ref.mean() < 0.9
    assert 0.75 < agree < 1.0, agree
    # restore_reset=True gives the original network back
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = from_nir(g, restore_reset=True)
    _same_params(net, restored)
    assert torch.equal(restored(x), ref)


@pytest.mark.parametrize("layer,match", [
    (snn.ReLULinear(4, 3), "ReLU"),
    (snn.MaxPool2d(2), "max pooling"),
])
def test_layers_without_nir_node_are_refused(tmp_path, layer, match):
    if isinstance(layer, snn.MaxPool2d):
        net = snn.Sequential(snn.LIFConv2d(1, 2, 3, reset="zero"), layer)
        shape = (1, 6, 6)
    else:
        net = snn.Sequential(layer)
        shape = None
    with pytest.raises(ValueError, match=match):
        write_nir(net, tmp_path / "x.nir", shape)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_force(tmp_path):
    net = linear_net()
    path = tmp_path / "net.nir"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="force"):
        write_nir(net, path)
    assert path.read_bytes() == b"keep me"
    write_nir(net, path, force=True)
    assert nir.read(str(path)).nodes["layer0_lif"] is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.nir"]  # no temp file left


def test_conv_net_needs_an_input_shape():
    net, _ = conv_net()
    with pytest.raises(ValueError, match="input_shape is required"):
        to_nir(net)
    with pytest.raises(ValueError, match="does not accept"):
        to_nir(net, (3, 8, 8))


def test_from_nir_refuses_what_spikelfp_cannot_express():
    w = np.ones((3, 4), dtype=np.float32)
    li = nir.NIRGraph.from_list(nir.Affine(weight=w, bias=np.zeros(3, np.float32)),
                                nir.LI(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3)))
    with pytest.raises(ValueError, match="LIF/IF"):
        from_nir(li)
    lif = nir.LIF(tau=np.full(3, 1e-3), r=np.full(3, 10.0), v_leak=np.zeros(3),
                  v_threshold=np.ones(3), v_reset=np.full(3, -0.5))
    g = nir.NIRGraph.from_list(nir.Affine(weight=w, bias=np.zeros(3, np.float32)), lif)
    with pytest.raises(ValueError, match="v_reset != 0"):
        from_nir(g)
    with pytest.raises(FileNotFoundError):
        from_nir("/nonexistent/graph.nir")


def test_float64_network_round_trips_exactly(tmp_path):
    net = linear_net().double()
    with torch.no_grad():
        net[0].beta.copy_(torch.rand(24, dtype=torch.float64) * 0.5 + 0.45)
    write_nir(net, tmp_path / "d.nir")
    back = from_nir(nir.read(str(tmp_path / "d.nir")))
    assert back[0].weight.dtype == torch.float64
    _same_params(net, back)
    x = _inputs((12,)).double()
    assert torch.equal(net(x), back(x))
