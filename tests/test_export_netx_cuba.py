"""netx export of CUBA layers (synaptic current decay alpha -> neuron/iDecay) and recurrent dense
layers (V -> netx's ``dense_rec`` / ``weight_rec``): numbers in the file, the Loihi simulation
checked by hand, agreement with the float network, refusals, the CLI, and (with
SPIKELFP_LAVA_PYTHON set) Lava's own simulator bit for bit."""

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from _helpers import (  # noqa: E402
    assert_lava_fixed_pt_matches,
    assert_lava_raw_stream_matches,
    assert_netx_refuses,
    lava_or_skip,
)
from hardware_export import loihi_sim as ls  # noqa: E402
from hardware_export.netx_export import (  # noqa: E402
    NetxLayer,
    NetxNetwork,
    _write_netx_file,
    quantize_network,
    read_netx,
    write_netx,
)
from spikelfp.nn import AvgPool2d, Flatten, Sequential  # noqa: E402
from spikelfp.nn.layers import CubaLIFConv2d, CubaLIFLinear  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _run_cli(argv):
    import argparse

    from hardware_export.cli import add_export_parser, run_export

    parser = argparse.ArgumentParser(prog="spikelfp")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    return run_export(parser.parse_args(["export", *argv]))


def _boost(net, w=3.0, b=2.0):
    with torch.no_grad():
        for m in net:
            if getattr(m, "weight", None) is not None:
                m.weight.mul_(w)
                m.bias.mul_(b)
    return net


def _scaled(net, w):
    with torch.no_grad():
        for m in net:
            if getattr(m, "weight", None) is not None:
                m.weight.mul_(w)
    return net


def _cuba(seed=0):
    """Two CUBA layers without biases (alpha > 0 needs bias-free layers)."""
    torch.manual_seed(seed)
    return _scaled(Sequential(
        Flatten(1),
        CubaLIFLinear(12, 10, bias=False, alpha=0.6, beta=0.9, reset="zero"),
        CubaLIFLinear(10, 4, bias=False, alpha=0.3, beta=0.8, threshold=0.7, reset="zero")), 2.0)


def _cuba_conv(seed=1):
    """CUBA conv, an average pool folded into the CUBA dense layer after it."""
    torch.manual_seed(seed)
    return _scaled(Sequential(
        CubaLIFConv2d(2, 4, 3, padding=1, bias=False, alpha=0.5, reset="zero"), AvgPool2d(2),
        Flatten(), CubaLIFLinear(4 * 3 * 3, 3, bias=False, alpha=0.4, reset="zero")), 2.0)


def _rec_lif(seed=0):
    """Recurrent LIF (alpha = 0) with biases b and b_V: the Loihi bias is b + b_V."""
    torch.manual_seed(seed)
    return _boost(Sequential(
        CubaLIFLinear(12, 10, alpha=0.0, recurrent=True, beta=0.9, reset="zero"),
        CubaLIFLinear(10, 4, beta=0.8, threshold=0.7, reset="zero")))


def _rec_cuba(seed=0):
    torch.manual_seed(seed)
    return _scaled(Sequential(
        CubaLIFLinear(12, 10, bias=False, alpha=0.5, recurrent=True, recurrent_bias=False,
                      beta=0.9, reset="zero"),
        CubaLIFLinear(10, 4, bias=False, alpha=0.2, beta=0.8, threshold=0.7, reset="zero")), 2.0)


NETS = [(_cuba, (12,), "binary"), (_cuba_conv, (2, 6, 6), "graded"),
        (_rec_lif, (12,), "binary"), (_rec_cuba, (12,), "binary")]


def _plan(make, shape, mode, **kw):
    return quantize_network(make(), shape, input_mode=mode,
                            input_scale=4 if mode == "graded" else None, **kw)


# ------------------------------------------------------------------ numbers in the file

def test_cuba_file_has_idecay_from_alpha(tmp_path):
    net = _cuba()
    path = write_netx(net, tmp_path / "c.h5", (12,), time_steps=10)
    with h5py.File(path, "r") as f:
        for k, lin, alpha in ((2, net[1], 0.6), (3, net[2], 0.3)):
            g = f[f"layer/{k}"]
            assert g["type"][0] == b"dense" and "bias" not in g and "weight_rec" not in g
            n = g["neuron"]
            assert int(n["iDecay"][()]) == round((1 - alpha) * 4096)  # 1638, 2867
            assert int(n["vDecay"][()]) == round((1 - float(lin.beta)) * 4096)
    assert [ly.i_decay for ly in read_netx(path).synaptic] == [1638, 2867]


def test_recurrent_file_is_dense_rec_and_reads_back(tmp_path):
    net = _rec_lif()
    path = write_netx(net, tmp_path / "r.h5", (12,), time_steps=10)
    with h5py.File(path, "r") as f:
        g = f["layer/1"]
        assert g["type"][0] == b"dense_rec" and g["type"].dtype == np.dtype("S10")
        V, W = g["weight_rec"][()], g["weight"][()]
        assert V.dtype == np.int64 and V.shape == (10, 10) and W.shape == (10, 12)
        assert np.all(V % 2 == 0) and V.min() >= -256 and V.max() <= 254
        assert int(g["neuron/iDecay"][()]) == 4096
        scale = float(g["scale"][()])
        b = net[0].bias.detach().double().numpy() + net[0].recurrent_bias.detach().double().numpy()
        assert np.array_equal(g["bias"][()], np.round(b * scale))  # b + b_V, unfiltered on v
        exact = net[0].recurrent_weight.detach().double().numpy() * scale  # same S as W
        inside = (exact >= -256) & (exact <= 254)
        assert np.abs(V - exact)[inside].max() <= 1.0 + 1e-9
        assert f["layer/2/type"][0] == b"dense" and "weight_rec" not in f["layer/2"]
    plan, ref = read_netx(path), quantize_network(net, (12,))
    assert [ly.recurrent for ly in plan.layers] == [True, False]
    for a, b in zip(plan.synaptic, ref.synaptic):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        assert (a.weight_rec is None) == (b.weight_rec is None)
        assert a.weight_rec is None or np.array_equal(a.weight_rec, b.weight_rec)
        assert (a.v_th_mant, a.v_decay, a.i_decay) == (b.v_th_mant, b.v_decay, b.i_decay)
    x = ls.random_payloads(plan, steps=8, batch=4, seed=2, rate=0.4)
    assert torch.equal(ls.simulate(plan, x).spikes, ls.simulate(ref, x).spikes)


def test_w_and_v_share_one_scale():
    """S is chosen on [W, s_x V] jointly (netx optimizes hstack(weight, weight_rec))."""
    lin = CubaLIFLinear(3, 2, bias=False, recurrent=True, recurrent_bias=False, reset="zero")
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.15, -0.1]]))
        lin.recurrent_weight.copy_(torch.tensor([[0.0, 0.5], [-0.25, 0.0]]))
    ly = quantize_network(Sequential(lin), weight_clip="max").layers[0]
    assert ly.scale == pytest.approx(254 / 0.5)  # set by max|V| > max|W|
    assert ly.weight_rec.tolist() == [[0, 254], [-128, 0]]
    assert ly.weight.tolist() == [[50, -102, 26], [0, 76, -50]]
    assert np.array_equal(ly.weight, 2 * np.round(lin.weight.detach().double().numpy()
                                                   * ly.scale / 2))
    # graded input x * 4: W sees payloads (scale S / 4), V the layer's own 0/1 spikes (S)
    g = quantize_network(Sequential(lin), input_mode="graded", input_scale=4,
                         weight_clip="max").layers[0]
    assert g.scale == pytest.approx(4 * 254 / 2.0)  # joint max of [W, 4 V] = 4 * 0.5
    assert g.weight_rec.tolist() == [[0, 254], [-128, 0]]
    assert np.abs(g.weight).max() == round(0.2 * 254 / 2.0 / 2) * 2


def test_alpha_with_all_zero_bias_is_written_without_bias(tmp_path):
    lin = CubaLIFLinear(4, 3, alpha=0.5, reset="zero")
    with torch.no_grad():
        lin.bias.zero_()
    path = write_netx(Sequential(lin), tmp_path / "z.h5")
    with h5py.File(path, "r") as f:
        assert "bias" not in f["layer/1"] and int(f["layer/1/neuron/iDecay"][()]) == 2048


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("net,shape,words", [
    (Sequential(CubaLIFLinear(4, 3, bias=False, alpha=torch.tensor([0.5, 0.6, 0.5]),
                              reset="zero")), (4,),
     ["layer 0 (CubaLIFLinear)", "per-neuron alpha", "iDecay"]),
    (Sequential(CubaLIFConv2d(1, 2, 3, bias=False, alpha=torch.tensor([0.5, 0.6]),
                              reset="zero")), (1, 5, 5),
     ["layer 0 (CubaLIFConv2d)", "per-neuron alpha"]),
    (Sequential(CubaLIFLinear(4, 3, alpha=0.5, reset="zero")), (4,),
     ["layer 0 (CubaLIFLinear)", "nonzero bias (b)", "alpha=0.5", "bias: false",
      "synaptic current"]),
    (Sequential(Flatten(1), CubaLIFLinear(4, 3, bias=False, alpha=0.5, reset="zero"),
                CubaLIFLinear(3, 2, bias=False, alpha=0.25, recurrent=True, reset="zero")), (4,),
     ["layer 2 (CubaLIFLinear)", "nonzero bias (b_V)", "alpha=0.25"]),
    (Sequential(CubaLIFLinear(4, 3, bias=False, alpha=0.5, reset="subtract")), (4,),
     ["layer 0 (CubaLIFLinear)", "reset='subtract'"]),
])
def test_cuba_refusals_are_one_line_and_write_nothing(tmp_path, net, shape, words):
    assert_netx_refuses(tmp_path, net, shape, words)


# ------------------------------------------------------------------ the Loihi simulation by hand

def _decay_plan():
    ly = NetxLayer("dense", (2,), (3,), weight=np.array([[50, -20], [-30, 70], [-30, 0]]),
                   v_th_mant=80, v_decay=2048, i_decay=1024)
    return NetxNetwork([ly], (2,))


def test_current_decay_by_hand():
    """Three neurons, five steps, iDecay 1024 (alpha 0.75): u <- trunc(u * 3072 / 4096) +
    64 a; vDecay 2048 (beta 0.5): v <- trunc(v / 2) + u; spike when v > 80 * 64 = 5120.
    Inputs (1,0), (0,1), (0,0), (1,1), (0,0).

    neuron 0 (w 50, -20): u = 3200, 2400-1280 = 1120, 840, 630+1920 = 2550,
      trunc(1912.5) = 1912;  v = 3200, 1600+1120 = 2720, 1360+840 = 2200, 1100+2550 = 3650,
      1825+1912 = 3737 (the float CUBA neuron x 64 up to t4: 50, 42.5, 34.375, 57.03125)
    neuron 1 (w -30, 70): u = -1920, -1440+4480 = 3040, 2280, 1710+2560 = 4270,
      trunc(3202.5) = 3202;  v = -1920, -960+3040 = 2080, 1040+2280 = 3320,
      1660+4270 = 5930 > 5120: spike, v = 0;  t5: 0 + 3202 = 3202 (u is not reset)
    neuron 2 (w -30, 0): u = -1920, -1440, -1080, -810-1920 = -2730, trunc(-2047.5) = -2047
      (toward zero);  v = -1920, -960-1440 = -2400, -1200-1080 = -2280, -1140-2730 = -3870,
      -1935-2047 = -3982
    """
    x = torch.tensor([[1, 0], [0, 1], [0, 0], [1, 1], [0, 0]], dtype=torch.float64).unsqueeze(1)
    tr = ls.simulate(_decay_plan(), x)
    assert tr.membrane[:, 0].tolist() == [[3200, -1920, -1920], [2720, 2080, -2400],
                                         [2200, 3320, -2280], [3650, 5930, -3870],
                                         [3737, 3202, -3982]]
    assert tr.spikes[:, 0].tolist() == [[0, 0, 0]] * 3 + [[0, 1, 0], [0, 0, 0]]


def _rec_plan():
    ly = NetxLayer("dense", (2,), (2,), weight=np.array([[90, 0], [0, 40]]),
                   weight_rec=np.array([[0, -60], [50, 0]]), bias=np.array([0, 10]),
                   v_th_mant=80, v_decay=2048)
    return NetxNetwork([ly], (2,))


def test_recurrent_term_by_hand():
    """dense_rec, two neurons: a_t = W x_t + V s_{t-1} (s_0 = 0); iDecay 4096 (u = 64 a),
    vDecay 2048, bias (0, 10) -> +640 on v, threshold 5120. Inputs (1,0), (1,1), (0,0), (0,1).

    t1: n0 a = 90 -> v = 5760 > 5120: spike, v = 0;   n1 a = 0 -> v = 640
    t2: n0 a = 90 + (-60) s1(t1)=0 -> 5760: spike;    n1 a = 40 + 50 s0(t1)=1 -> 90 -> v =
        trunc(640 / 2) + 5760 + 640 = 6720: spike (without V: 3520, no spike)
    t3: n0 a = 0 + (-60) s1(t2)=1 -> v = -3840;       n1 a = 0 + 50 s0(t2)=1 -> v = 3200+640
        = 3840
    t4: n0 a = 0 -> v = trunc(-1920) = -1920;         n1 a = 40 + 50 s0(t3)=0 -> v = 1920 +
        2560 + 640 = 5120, not > 5120: no spike
    netx shifts hstack(W, V) by one bit (weight exponent -1); Lava's truncation keeps it exact.
    """
    plan = _rec_plan()
    we, ve, exp = ls.lava_recurrent_weights(plan.layers[0].weight, plan.layers[0].weight_rec)
    assert exp == -1 and we.tolist() == [[180, 0], [0, 80]] and ve.tolist() == [[0, -120], [100, 0]]
    x = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=torch.float64).unsqueeze(1)
    tr = ls.simulate(plan, x)
    assert tr.membrane[:, 0].tolist() == [[5760, 640], [5760, 6720], [-3840, 3840], [-1920, 5120]]
    assert tr.spikes[:, 0].tolist() == [[1, 0], [1, 1], [0, 0], [0, 0]]
    # hdf5.Network(file) as is: one step of synaptic delay (a bias-only step first), the
    # recurrent term still one step after the spikes in the neuron's own timeline
    assert ls.simulate_stream(plan, x, 5)[:, 0].tolist() == [[0, 0], [1, 0], [1, 1], [0, 0],
                                                              [0, 0]]


def test_reset_keeps_the_recurrent_buffer_between_samples():
    """Back to back with reset_interval=T, Lava resets u and v but not the recurrent synapse:
    sample A ends with a spike of n0 (t4: a = 90), so on B's first step n1 receives 40 + 50 =
    90 -> v = 5760 + 640 > 5120 and spikes, where the zero-state sample gives 2560 + 640 = 3200
    (no spike). Nothing else differs."""
    plan = _rec_plan()
    A = [[1, 0], [0, 0], [0, 0], [1, 0]]
    B = [[0, 1], [0, 0], [0, 0], [0, 0]]
    x = torch.tensor([A, B], dtype=torch.float64).transpose(0, 1)  # [T=4, 2 samples, 2]
    per_sample = ls.simulate(plan, x).spikes
    stream = ls.simulate_samples(plan, x)
    assert per_sample[:, 1].tolist() == [[0, 0]] * 4
    assert stream[:, 1].tolist() == [[0, 1], [0, 0], [0, 0], [0, 0]]
    assert torch.equal(stream[:, 0], per_sample[:, 0]) and torch.equal(stream[1:], per_sample[1:])


@pytest.mark.parametrize("make,shape,mode", NETS[:2])
def test_per_sample_simulation_equals_the_reset_stream_without_recurrence(make, shape, mode):
    plan = _plan(make, shape, mode)
    x = ls.random_payloads(plan, steps=6, batch=5, seed=3, rate=0.4)
    sim = ls.simulate(plan, x).spikes
    assert torch.equal(ls.simulate_samples(plan, x), sim) and sim.sum() > 0


def test_netx_weight_bits_handles_nonpositive_mixed_like_netx():
    """netx treats max = 0 > min as mixed (numpy's 127 / 0 = inf): no ZeroDivisionError."""
    w, bits, exp = ls.netx_weight_bits(np.array([[0, -4], [-2, 0]]))
    assert w.tolist() == [[0, -256], [-128, 0]] and (bits, exp) == (2, -6)  # netx's own output


# ------------------------------------------------------------------ agreement with the float net

@pytest.mark.parametrize("make,shape,mode", NETS)
def test_quantized_simulation_tracks_the_float_network(make, shape, mode):
    net = make()
    plan = _plan(make, shape, mode)
    res = ls.verify_netx(net, plan, steps=30, batch=32, seed=0)
    assert res["output_rate"] >= 0.01 and res["agreement"] > 0.97, res


def test_exact_numbers_give_identical_spikes_and_membranes():
    """With alpha = beta = 0.5 and integer weights (S = 1), nothing is rounded for T <= 6 steps
    (u and v are halved at most 5 times from multiples of 64), so the chip computes exactly
    the float CUBA + recurrent network: same spikes, membranes 64 times the float ones."""
    g = torch.Generator().manual_seed(0)

    def even(*shape):
        return 2 * torch.randint(-40, 128, shape, generator=g).double()

    net = Sequential(
        CubaLIFLinear(8, 6, bias=False, alpha=0.5, beta=0.5, threshold=300.0, recurrent=True,
                      recurrent_bias=False, reset="zero"),
        CubaLIFLinear(6, 3, bias=False, alpha=0.5, beta=0.5, threshold=300.0,
                      reset="zero")).double()
    with torch.no_grad():
        net[0].weight.copy_(even(6, 8))
        net[0].weight[0, 0] = 254.0
        net[0].recurrent_weight.copy_(even(6, 6) / 2)
        net[1].weight.copy_(even(3, 6))
        net[1].weight[0, 0] = 254.0
    plan = quantize_network(net, (8,), weight_clip="max")
    assert [ly.scale for ly in plan.synaptic] == [1.0, 1.0]
    assert [ly.i_decay for ly in plan.synaptic] == [2048, 2048]
    x = (torch.rand(6, 16, 8, generator=g) < 0.5).double()
    ref = net.run(x)
    tr = ls.simulate(plan, x)
    assert torch.equal(tr.spikes, ref.output) and 0 < tr.spikes.sum() < tr.spikes.numel()
    assert torch.equal(tr.membrane, 64 * ref.membrane)


# ------------------------------------------------------------------ CLI

def _checkpoint(tmp_path, name="ck.pt", **spec_extra):
    zoo = pytest.importorskip("spikelfp.nn.zoo")
    spec = {"model": "mlp", "input_shape": [1, 4, 4], "num_classes": 3, "hidden": [6],
            "beta": 0.9, "threshold": 1.0, "reset": "zero", **spec_extra}
    torch.manual_seed(0)
    net = _scaled(zoo.build_model(spec), 3.0)
    path = tmp_path / name
    torch.save({"model": net.state_dict(), "model_spec": spec,
                "config": {"steps": 8, "encoder": "poisson", "dataset": "digits"}}, path)
    return path


@pytest.mark.parametrize("extra,types,idecay", [
    ({"neuron": "cuba", "alpha": 0.5, "bias": False}, [b"dense", b"dense"], [2048, 2048]),
    ({"recurrent": True}, [b"dense_rec", b"dense"], [4096, 4096]),
])
def test_cli_exports_cuba_and_recurrent_runs(tmp_path, capsys, extra, types, idecay):
    out = tmp_path / "n.h5"
    assert _run_cli(["--checkpoint", str(_checkpoint(tmp_path, **extra)), "--format", "netx",
                     "--out", str(out), "--verify"]) == 0
    assert "verify: Loihi simulation of the file vs the float network" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        assert [f[f"layer/{k}/type"][0] for k in (2, 3)] == types
        assert [int(f[f"layer/{k}/neuron/iDecay"][()]) for k in (2, 3)] == idecay


def test_cli_refuses_cuba_with_bias_in_one_line(tmp_path, capsys):
    out = tmp_path / "n.h5"
    ck = _checkpoint(tmp_path, neuron="cuba", alpha=0.5)
    assert _run_cli(["--checkpoint", str(ck), "--format", "netx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spikelfp export: error: layer 1 (CubaLIFLinear)") and "\n" not in err
    assert "bias: false" in err and not out.exists()


# ------------------------------------------------------------------ Lava (opt-in)

def _lava():
    return lava_or_skip()


@pytest.mark.parametrize("make,shape,mode", NETS + [(_rec_lif, (12,), "graded")])
def test_lava_fixed_pt_matches_the_simulation(tmp_path, make, shape, mode):
    assert_lava_fixed_pt_matches(tmp_path, make(), shape, mode)


def test_lava_hand_recurrent_plan_and_sample_boundary(tmp_path):
    lh = _lava()
    path = tmp_path / "hand.h5"
    _write_netx_file(h5py, str(path), _rec_plan(), {})
    A = [[1, 0], [0, 0], [0, 0], [1, 0]]
    B = [[0, 1], [0, 0], [0, 0], [0, 0]]
    x = torch.tensor([A, B], dtype=torch.float64).transpose(0, 1)
    lava = lh.run_lava_samples(path, x)
    assert torch.equal(lava, ls.simulate_samples(read_netx(path), x))
    assert lava[0, 1].tolist() == [0, 1]  # the recurrent buffer survives Lava's reset


def test_lava_raw_stream_of_a_recurrent_net_with_bias(tmp_path):
    assert_lava_raw_stream_matches(tmp_path, _rec_lif(), (12,))
