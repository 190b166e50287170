"""NIR -> spikelfp for CUBA and recurrent layers: ``from_nir`` reads CubaLIF nodes and the recurrent
loop ``neuron -> Affine/Linear -> neuron`` (ours and snnTorch's), round trips are exact (parameters
and spikes), what it cannot represent is refused in one line, and ``export --verify`` /
``nir_roundtrip_agreement`` work for CUBA / recurrent reset-"zero" nets."""

import argparse
import copy
import warnings

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")
pytest.importorskip("h5py")

import spikelfp.nn as snn  # noqa: E402
from hardware_export import (  # noqa: E402
    ResetMismatchWarning,
    from_nir,
    nir_roundtrip_agreement,
    to_nir,
    write_nir,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _boost(net, factor=3.0):
    with torch.no_grad():
        for m in net:
            for p in (getattr(m, "weight", None), getattr(m, "recurrent_weight", None)):
                if p is not None:
                    p.mul_(factor)
    return net


def cuba_dense(reset="zero", dtype=torch.float32):
    torch.manual_seed(0)
    return _boost(snn.Sequential(
        snn.CubaLIFLinear(6, 10, alpha=0.5, beta=torch.rand(10) * 0.5 + 0.45,
                          threshold=torch.rand(10) + 0.5, reset=reset, dtype=dtype),
        snn.CubaLIFLinear(10, 4, bias=False, alpha=torch.tensor([0.8, 0.3, 0.6, 0.1]), beta=0.85,
                          threshold=0.7, reset=reset, dtype=dtype),
    )), (6,)


def cuba_conv(reset="zero", dtype=torch.float32):
    torch.manual_seed(1)
    return _boost(snn.Sequential(
        snn.CubaLIFConv2d(2, 4, 3, padding=1, alpha=torch.tensor([0.2, 0.5, 0.7, 0.9]),
                          beta=torch.rand(4) * 0.4 + 0.55, threshold=torch.rand(4, 8, 8) + 0.5,
                          reset=reset, dtype=dtype),
        snn.AvgPool2d(2),
        snn.CubaLIFConv2d(4, 6, 3, stride=2, padding=(1, 0), bias=False, alpha=0.4, beta=0.8,
                          threshold=0.6, reset=reset, dtype=dtype),
        snn.Flatten(),
        snn.CubaLIFLinear(6 * 2 * 1, 5, alpha=0.3, beta=0.9, threshold=0.5, reset=reset, dtype=dtype),
    )), (2, 8, 8)


def recurrent_lif(reset="zero", dtype=torch.float32):
    """alpha = 0 + V without b_V: a LIF node with a Linear loop."""
    torch.manual_seed(2)
    return _boost(snn.Sequential(
        snn.CubaLIFLinear(6, 10, alpha=0.0, recurrent=True, recurrent_bias=False,
                          beta=torch.rand(10) * 0.5 + 0.45, reset=reset, dtype=dtype),
        snn.LIFLinear(10, 3, beta=0.9, threshold=0.6, reset=reset, dtype=dtype),
    )), (6,)


def recurrent_cuba(reset="zero", dtype=torch.float32):
    torch.manual_seed(3)
    return _boost(snn.Sequential(
        snn.CubaLIFLinear(6, 10, alpha=torch.rand(10) * 0.9, recurrent=True, beta=0.9,
                          threshold=torch.rand(10) + 0.5, reset=reset, dtype=dtype),
        snn.CubaLIFLinear(10, 8, alpha=0.6, recurrent=True, beta=0.95, reset=reset, dtype=dtype),
        snn.CubaLIFLinear(8, 3, alpha=0.5, beta=0.8, threshold=0.8, reset=reset, dtype=dtype),
    )), (6,)


NETS = {"cuba_dense": cuba_dense, "cuba_conv": cuba_conv, "recurrent_lif": recurrent_lif,
        "recurrent_cuba": recurrent_cuba}


def _inputs(shape, dtype=torch.float32, T=25, B=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, *shape, generator=g) < 0.4).to(dtype)


def _same_params(a, b):
    """Same layer types, resets, parameter/buffer names, dtypes and values (scalars compared with
    their per-neuron broadcast)."""
    assert [type(m) for m in a] == [type(m) for m in b]
    assert [getattr(m, "reset", None) for m in a] == [getattr(m, "reset", None) for m in b]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        x, y = sa[k], sb[k]
        assert x.dtype == y.dtype, k
        shape = torch.broadcast_shapes(x.shape, y.shape)
        assert torch.equal(x.expand(shape), y.expand(shape)), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(NETS))
def test_round_trip_is_exact(name, dtype):
    net, shape = NETS[name](dtype=dtype)
    g = to_nir(net, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = from_nir(g)
    _same_params(net, back)
    x = _inputs(shape, dtype)
    ref = net(x)
    assert 0.02 < float(ref.mean()) < 0.9  # the comparison is not trivial
    assert torch.equal(ref, back(x))
    for a, b in zip(net, back):  # the hidden layers too
        x, y = a(x), b(x)
        assert torch.equal(x, y)


def test_round_trip_through_a_file(tmp_path):
    net, shape = recurrent_cuba()
    write_nir(net, tmp_path / "r.nir")
    g = nir.read(str(tmp_path / "r.nir"))
    assert isinstance(g.nodes["layer0_cubalif"], nir.CubaLIF)
    assert isinstance(g.nodes["layer1_cubalif"], nir.CubaLIF) and "layer1_rec_affine" in g.nodes
    back = from_nir(tmp_path / "r.nir")
    _same_params(net, back)
    assert back[0].recurrent and back[1].recurrent and not back[2].recurrent
    x = _inputs(shape)
    assert torch.equal(net(x), back(x))


@pytest.mark.parametrize("name", ["recurrent_cuba", "cuba_conv", "recurrent_lif"])
def test_reset_subtract_comes_back_with_restore_reset(name):
    net, shape = NETS[name](reset="subtract")
    with pytest.warns(ResetMismatchWarning):
        g = to_nir(net, shape, allow_reset_mismatch=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = from_nir(g, restore_reset=True)
    _same_params(net, restored)
    x = _inputs(shape)
    ref = net(x)
    assert torch.equal(ref, restored(x))
    with pytest.warns(ResetMismatchWarning, match="restore_reset"):
        as_nir = from_nir(g)
    assert all(m.reset == "zero" for m in as_nir if hasattr(m, "reset"))


def test_input_gain_is_folded_into_w_b_v_and_b_v():
    """r and w_in other than tau_mem/dt and tau_syn/dt scale the whole input of the node, the
    recurrent one included: here r is doubled and W, b, V, b_V halved (exact powers of two), which
    reads back to the original network."""
    net, shape = recurrent_cuba()
    g = to_nir(net, shape)
    g.nodes["layer0_cubalif"].r = g.nodes["layer0_cubalif"].r * 2.0
    g.nodes["layer1_cubalif"].w_in = g.nodes["layer1_cubalif"].w_in * 4.0
    for name, f in (("layer0_affine", 2.0), ("layer0_rec_affine", 2.0), ("layer1_affine", 4.0),
                    ("layer1_rec_affine", 4.0)):
        node = g.nodes[name]
        node.weight, node.bias = node.weight / f, node.bias / f
    back = from_nir(g)
    _same_params(net, back)


def test_cubalif_with_zero_alpha_and_v_leak_folds_into_the_bias():
    """tau_syn = dt (alpha = 0): the current is the input, so v_leak is a bias as for LIF."""
    net = snn.Sequential(snn.LIFLinear(4, 3, beta=0.5, reset="zero"))
    g = to_nir(net)
    lif = g.nodes["layer0_lif"]
    dt = float(g.metadata["dt"])
    cuba = nir.CubaLIF(tau_syn=np.full(3, dt), tau_mem=lif.tau, r=lif.r, v_leak=np.full(3, 0.25),
                       v_threshold=lif.v_threshold, v_reset=np.zeros(3), w_in=np.ones(3))
    g2 = nir.NIRGraph(nodes={**g.nodes, "layer0_lif": cuba}, edges=g.edges, metadata=g.metadata)
    back = from_nir(g2)
    assert isinstance(back[0], snn.CubaLIFLinear) and float(back[0].alpha) == 0.0
    expected = net[0].bias.detach().double() + 0.5 * 0.25  # dt/tau_mem * v_leak
    np.testing.assert_allclose(back[0].bias.detach().double().numpy(), expected.numpy(), atol=1e-7)


# ------------------------------------------------------------------------------------- refusals


def _cuba_graph(**over):
    """input -> affine -> cubalif -> output (3 neurons, dt = 1e-4: alpha 0.5, beta 0.9)."""
    dt = 1e-4
    tau_syn, tau_mem = np.full(3, dt / 0.5), np.full(3, dt / 0.1)
    kw = dict(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, v_leak=np.zeros(3),
              v_threshold=np.ones(3), v_reset=np.zeros(3), w_in=tau_syn / dt)
    kw.update(over)
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([4])),
               "aff": nir.Affine(weight=np.ones((3, 4), np.float32), bias=np.zeros(3, np.float32)),
               "neu": nir.CubaLIF(**kw), "output": nir.Output(output_type=np.array([3]))},
        edges=[("input", "aff"), ("aff", "neu"), ("neu", "output")], metadata={"dt": dt})


def _one_line_error(graph, *fragments):
    with pytest.raises(ValueError) as e:
        from_nir(graph)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_valid_cuba_graph_reads():
    layer = from_nir(_cuba_graph())[0]
    assert isinstance(layer, snn.CubaLIFLinear) and not layer.recurrent
    assert float(layer.alpha) == pytest.approx(0.5) and float(layer.beta) == pytest.approx(0.9)


@pytest.mark.parametrize("over,fragments", [
    (dict(v_reset=np.full(3, -0.5)), ["'neu'", "v_reset != 0", "-0.5"]),
    (dict(tau_syn=np.full(3, 5e-5)), ["'neu'", "tau_syn=5e-05", "alpha", "[0, 1)"]),
    (dict(tau_syn=np.full(3, np.inf)), ["'neu'", "tau_syn=inf", "[0, 1)"]),
    (dict(tau_syn=np.array([2e-4, -1e-4, 2e-4])), ["'neu'", "tau_syn=-0.0001"]),
    (dict(tau_mem=np.full(3, 5e-5), r=np.ones(3)), ["'neu'", "tau_mem=5e-05", "tau must exceed dt"]),
    (dict(v_leak=np.full(3, 0.3)), ["'neu'", "v_leak=0.3", "alpha=0.5"]),
])
def test_cubalif_values_spikelfp_cannot_represent_are_refused(over, fragments):
    _one_line_error(_cuba_graph(**over), *fragments)


def _loop_graph(extra_edges=(), extra_nodes=None, neuron="lif", rec_shape=(3, 3)):
    dt = 1e-4
    lif = nir.LIF(tau=np.full(3, dt / 0.1), r=np.full(3, 10.0), v_leak=np.zeros(3),
                  v_threshold=np.ones(3), v_reset=np.zeros(3))
    nodes = {"input": nir.Input(input_type=np.array([4])),
             "aff": nir.Affine(weight=np.ones((3, 4), np.float32), bias=np.zeros(3, np.float32)),
             neuron: lif, "rec": nir.Linear(weight=np.ones(rec_shape, np.float32)),
             "output": nir.Output(output_type=np.array([3])), **(extra_nodes or {})}
    edges = [("input", "aff"), ("aff", neuron), (neuron, "output"), (neuron, "rec"),
             ("rec", neuron), *extra_edges]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": dt})


def test_the_loop_pattern_reads_and_other_cycles_are_refused():
    back = from_nir(_loop_graph())
    assert back[0].recurrent and back[0].recurrent_bias is None
    assert torch.equal(back[0].recurrent_weight, torch.ones(3, 3))
    # the recurrent synapse also feeds the output: not the pattern, a cycle
    _one_line_error(_loop_graph(extra_edges=[("rec", "output")]), "cycle", "'lif'", "'rec'")
    # a two-node cycle of neurons
    g = _loop_graph(extra_nodes={"lif2": copy.deepcopy(_loop_graph().nodes["lif"])},
                    extra_edges=[("lif", "lif2"), ("lif2", "lif")])
    g.edges = [e for e in g.edges if "rec" not in e]
    del g.nodes["rec"]
    msg = _one_line_error(g, "cycle")
    assert "'lif' -> 'lif2' -> 'lif'" in msg or "'lif2' -> 'lif' -> 'lif2'" in msg


def test_a_loop_on_a_conv_layer_is_refused():
    net, shape = cuba_conv()
    g = to_nir(net, shape)
    neu = g.nodes["layer0_cubalif"]
    n = int(np.prod(neu.v_threshold.shape))
    g.nodes["rec"] = nir.Linear(weight=np.zeros((n, n), np.float32))
    g.edges += [("layer0_cubalif", "rec"), ("rec", "layer0_cubalif")]
    _one_line_error(g, "'layer0_cubalif'", "'rec'", "dense")


def test_two_loops_on_one_neuron_are_refused():
    g = _loop_graph(extra_edges=[("lif", "rec2"), ("rec2", "lif")],
                    extra_nodes={"rec2": nir.Linear(weight=np.ones((3, 3), np.float32))})
    _one_line_error(g, "'lif'", "two recurrent loops")


# ----------------------------------------------------------------- snnTorch's and Norse's graphs


@pytest.mark.filterwarnings("ignore")
def test_snntorch_export_of_rsynaptic_and_rleaky_comes_in_exactly(capsys):
    """snnTorch's ``export_to_nir`` writes RSynaptic / RLeaky as ``<name>.lif <-> <name>.w_rec``
    (flattened by nirtorch) with v_threshold of shape (n,) or (1,): read into recurrent
    CubaLIFLinear layers with bit-identical parameters. Its exporter records no reset; with the
    reset set to snnTorch's (subtract, reset_delay=True) the spikes are identical."""
    snt = pytest.importorskip("snntorch")
    from snntorch import utils as sutils
    from snntorch.export_nir import export_to_nir

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(6, 8)
            self.rs = snt.RSynaptic(alpha=0.5, beta=0.9, all_to_all=True, linear_features=8,
                                    init_hidden=True, reset_mechanism="subtract")
            self.fc2 = torch.nn.Linear(8, 3)
            self.rl = snt.RLeaky(beta=0.8, all_to_all=True, linear_features=3, init_hidden=True,
                                 output=True, reset_mechanism="subtract")

        def forward(self, x):
            return self.rl(self.fc2(self.rs(self.fc1(x))))

    torch.manual_seed(0)
    ref_net = Net()
    g = export_to_nir(ref_net, torch.zeros(6))
    assert ("rs.lif", "rs.w_rec") in g.edges and ("rs.w_rec", "rs.lif") in g.edges
    back = from_nir(g)
    assert [type(m) for m in back] == [snn.CubaLIFLinear, snn.CubaLIFLinear]
    assert back[0].recurrent and back[1].recurrent
    assert float(back[0].alpha) == 0.5 and float(back[1].alpha) == 0.0
    assert float(back[0].beta) == ref_net.rs.beta.item() and float(back[1].beta) == ref_net.rl.beta.item()
    for ours, lin in ((back[0].weight, ref_net.fc1.weight), (back[0].recurrent_weight, ref_net.rs.recurrent.weight),
                      (back[0].recurrent_bias, ref_net.rs.recurrent.bias), (back[1].bias, ref_net.fc2.bias),
                      (back[1].recurrent_weight, ref_net.rl.recurrent.weight)):
        assert torch.equal(ours.detach(), lin.detach())

    x = _inputs((6,), T=30, B=4) * 2
    sutils.reset(ref_net)
    with torch.no_grad():
        ref = torch.stack([ref_net(x[t])[0] for t in range(x.shape[0])])
    for m in back:
        m.reset = "subtract"
    assert float(ref.mean()) > 0.02
    assert torch.equal(back(x), ref)
    capsys.readouterr()


@pytest.mark.filterwarnings("ignore")
def test_norse_does_not_run_our_recurrent_graph():
    """Norse 1.1's from_nir has no recurrent support (its code for it is commented out): on our
    loop it either raises a shape error ("size of tensor a (10) must match ... (3)") or returns the
    spikes of another node (shape [T, B, 10], the first recurrent layer, instead of the [T, B, 3]
    output); which of the two varied between our processes. Never our output spikes. (snnTorch's
    import is in test_export_nir_cuba.py: it runs, with other spikes.)"""
    pytest.importorskip("norse")
    from hardware_export.consumers import simulate_norse

    net, shape = recurrent_cuba()
    x = _inputs(shape)
    ref = net(x)
    try:
        out = simulate_norse(to_nir(net, shape), x, dt=1e-4, fold_r=False)
    except RuntimeError as e:
        assert "size of tensor" in str(e)
    else:
        assert out.shape != ref.shape or not torch.equal(out, ref)


# ------------------------------------------------------------------------- verify and the CLI


def test_nir_roundtrip_agreement_is_exact_for_cuba_and_recurrent_nets():
    for make in (recurrent_cuba, cuba_conv, recurrent_lif):
        net, shape = make()
        res = nir_roundtrip_agreement(net, shape, steps=12)
        assert res["applies"] and res["identical"] and res["spikes_reference"] > 0, (make, res)
    net, shape = recurrent_cuba(reset="subtract")
    assert nir_roundtrip_agreement(net, shape, steps=12)["applies"] is False


@pytest.mark.parametrize("neuron,model,extra", [
    ("cuba", "mlp", {"input_shape": [6], "hidden": [8]}),
    ("lif", "mlp", {"input_shape": [6], "hidden": [8]}),
    ("cuba", "convnet", {"input_shape": [1, 8, 8], "channels": [3], "hidden": [6]}),
])
def test_cli_export_verify_of_a_recurrent_net(tmp_path, capsys, neuron, model, extra):
    zoo = pytest.importorskip("spikelfp.nn.zoo")
    from hardware_export.cli import add_export_parser, run_export

    spec = {"model": model, "num_classes": 3, "beta": 0.9, "threshold": 1.0, "reset": "zero",
            "neuron": neuron, "alpha": 0.5 if neuron == "cuba" else 0.0, "recurrent": True, **extra}
    torch.manual_seed(0)
    net = zoo.build_model(spec)
    ck = tmp_path / "ck.pt"
    torch.save({"model": net.state_dict(), "model_spec": spec,
                "config": {"steps": 12, "encoder": "constant", "dataset": "digits"}}, ck)
    out = tmp_path / "net.nir"
    parser = argparse.ArgumentParser(prog="spikelfp")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", "--checkpoint", str(ck), "--format", "nir", "--out", str(out),
                              "--verify"])
    assert run_export(args) == 0
    text = capsys.readouterr().out
    assert "verify: spike agreement 1.000000" in text and "[identical]" in text
    back = from_nir(out)
    rec = [m for m in back if getattr(m, "recurrent", False)]
    assert len(rec) == 1 and isinstance(rec[0], snn.CubaLIFLinear)
    _same_params(net, back)
    x = torch.rand(12, 3, *extra["input_shape"]) * 4
    assert torch.equal(net(x), back(x))


def test_recurrent_if_round_trips_and_cuba_with_beta_one_is_refused_by_to_nir():
    """beta == 1 with alpha = 0 is an IF node (with its loop); with a synaptic current NIR has no
    node (CubaLIF needs a finite tau_mem), so to_nir refuses it in one line instead of writing an
    IF that drops alpha."""
    torch.manual_seed(4)
    net = _boost(snn.Sequential(snn.CubaLIFLinear(6, 5, alpha=0.0, beta=1.0, recurrent=True, reset="zero"),
                                snn.LIFLinear(5, 3, beta=0.9, reset="zero")))
    g = to_nir(net)
    assert isinstance(g.nodes["layer0_if"], nir.IF) and ("layer0_if", "layer0_rec_affine") in g.edges
    back = from_nir(g)
    _same_params(net, back)
    x = _inputs((6,))
    assert torch.equal(net(x), back(x))
    bad = snn.Sequential(snn.CubaLIFLinear(6, 5, alpha=0.5, beta=1.0, reset="zero"))
    with pytest.raises(ValueError) as e:
        to_nir(bad)
    assert "\n" not in str(e.value) and "layer 0" in str(e.value) and "beta == 1" in str(e.value)
