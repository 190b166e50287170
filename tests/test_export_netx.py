"""netx-native export for Loihi: file layout, quantization, refusals, the Loihi simulation
(checked by hand), the CLI, and (with SPIKELFP_LAVA_PYTHON set) Lava's own simulator."""

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn

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
    quantize_decay,
    quantize_network,
    quantize_weight,
    read_netx,
    weight_scale,
    write_netx,
)
from spikelfp.nn import (  # noqa: E402
    AvgPool2d,
    Flatten,
    LIFConv2d,
    LIFLinear,
    MaxPool2d,
    ReLULinear,
    Sequential,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _boost(net, w=3.0, b=2.0):
    with torch.no_grad():
        for m in net:
            if getattr(m, "weight", None) is not None:
                m.weight.mul_(w)
                m.bias.mul_(b)
    return net


def _dense(seed=0):
    torch.manual_seed(seed)
    return _boost(Sequential(Flatten(1), LIFLinear(12, 8, beta=0.9, reset="zero"),
                             LIFLinear(8, 4, beta=0.8, threshold=0.7, reset="zero")))


def _conv(seed=1):
    torch.manual_seed(seed)
    return _boost(Sequential(LIFConv2d(2, 4, 3, padding=1, beta=0.9, reset="zero"),
                             LIFConv2d(4, 3, 3, stride=2, beta=0.7, reset="zero"), Flatten(),
                             LIFLinear(27, 5, beta=0.95, threshold=0.5, reset="zero")), 2.0, 1.0)


# ------------------------------------------------------------------ file layout and numbers

def test_dense_file_is_netx_layout(tmp_path):
    net = _dense()
    path = write_netx(net, tmp_path / "d.h5", (12,), time_steps=10)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "spikelfp-netx" and f.attrs["input_mode"] == "binary"
        assert f.attrs["reset_interval"] == 10 and f.attrs["reset_offset"] == 1
        assert sorted(f["layer"].keys(), key=int) == ["0", "1", "2", "3"]
        g0 = f["layer/0"]
        assert g0["type"][0] == b"input" and "neuron" not in g0
        assert list(g0["shape"][()]) == [12]
        assert f["layer/1/type"][0] == b"flatten"
        for k, lin in ((2, net[1]), (3, net[2])):
            g = f[f"layer/{k}"]
            assert g["type"][0] == b"dense" and g["type"].dtype == np.dtype("S10")
            w, b = g["weight"][()], g["bias"][()]
            assert w.dtype == np.int64 and w.shape == tuple(lin.weight.shape)
            assert np.all(w % 2 == 0) and w.min() >= -256 and w.max() <= 254
            assert b.dtype == np.int64 and b.shape == (lin.out_features,)
            n = g["neuron"]
            assert n["type"][()] == b"CUBA" and int(n["iDecay"][()]) == 4096
            assert int(n["vDecay"][()]) == round((1 - float(lin.beta)) * 4096)
            assert n["vThMant"][()].dtype == np.int64
            scale = float(g["scale"][()])
            assert int(n["vThMant"][()]) == round(float(lin.threshold) * scale)
            assert np.array_equal(b, np.round(lin.bias.detach().double().numpy() * scale))
            exact = lin.weight.detach().double().numpy() * scale
            inside = (exact >= -256) & (exact <= 254)
            assert np.abs(w - exact)[inside].max() <= 1.0 + 1e-9  # 2 * round(. / 2)
            assert np.all(w[~inside] == np.where(exact[~inside] > 0, 254, -256))  # clipped


def test_conv_file_keys_and_read_back(tmp_path):
    net = _conv()
    path = write_netx(net, tmp_path / "c.h5", (2, 7, 7), input_mode="graded", input_scale=4)
    with h5py.File(path, "r") as f:
        g = f["layer/1"]
        assert g["type"][0] == b"conv" and list(g["shape"][()]) == [4, 7, 7]
        assert list(g["padding"][()]) == [1, 1] and int(g["groups"][()]) == 1
        assert g["weight"].shape == (4, 2, 3, 3)
        assert list(f["layer/2/stride"][()]) == [2, 2]
    plan = read_netx(path)
    assert [ly.kind for ly in plan.layers] == ["conv", "conv", "flatten", "dense"]
    assert plan.input_mode == "graded" and plan.input_scale == 4 and plan.input_shape == (2, 7, 7)
    ref = quantize_network(net, (2, 7, 7), input_mode="graded", input_scale=4)
    for a, b in zip(plan.synaptic, ref.synaptic):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        assert (a.v_th_mant, a.v_decay, a.i_decay) == (b.v_th_mant, b.v_decay, b.i_decay)


def test_quantization_rules():
    w = np.array([0.5, -0.25, 0.126, 0.0])
    assert list(quantize_weight(w, 508.0)) == [254, -128, 64, 0]   # 2 * round(w * S / 2)
    assert quantize_weight(np.array([1.0, -1.0]), 1000.0).tolist() == [254, -256]  # clipped
    assert quantize_decay(0.9) == 410 and quantize_decay(1.0) == 0 and quantize_decay(0.75) == 1024
    # mse scale: never a worse fit than max-abs scaling (f = 1), often a better one
    w = np.random.default_rng(0).normal(0, 0.1, 500)

    def err(s):
        return np.sum((w - quantize_weight(w, s) / s) ** 2)

    s_max = 254 / np.abs(w).max()
    assert weight_scale(w) > s_max and err(weight_scale(w)) < err(s_max)
    assert weight_scale(np.ones(3)) == 254.0 and weight_scale(np.zeros(3)) == 0.0
    # graded first layer: weights on S / s_x, bias and threshold on S
    torch.manual_seed(0)
    lin = LIFLinear(4, 2, threshold=1.5, reset="zero")
    plan = quantize_network(Sequential(lin), input_mode="graded", input_scale=8,
                            weight_clip="max")
    ly = plan.layers[0]
    s_w = 254 / float(lin.weight.detach().abs().max())
    assert ly.scale == pytest.approx(8 * s_w) and ly.v_th_mant == round(1.5 * 8 * s_w)
    assert np.abs(ly.weight).max() == 254


def test_scale_keeps_bias_and_threshold_in_range():
    lin = LIFLinear(3, 2, reset="zero", threshold=2.0)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.01, -0.01, 0.005], [0.0, 0.01, 0.01]]))
        lin.bias.copy_(torch.tensor([0.5, -0.2]))
    ly = quantize_network(Sequential(lin)).layers[0]
    assert ly.bias.tolist() == [4095, round(-0.2 * ly.scale)]  # bias-limited: 13-bit mantissa
    assert np.abs(ly.weight).max() < 254 and ly.v_th_mant <= 2 ** 17 - 1


@pytest.mark.parametrize("net,shape,words", [
    (Sequential(Flatten(1), LIFLinear(4, 3, reset="subtract")), (4,),
     ["layer 1 (LIFLinear)", "reset='subtract'"]),
    (Sequential(LIFConv2d(1, 2, 3, reset="zero"), MaxPool2d(2), Flatten(),
                LIFLinear(8, 2, reset="zero")), (1, 6, 6), ["layer 1 (MaxPool2d)", "max-pool"]),
    (Sequential(LIFConv2d(1, 2, 3, reset="zero"), AvgPool2d(2, stride=1), Flatten(),
                LIFLinear(18, 2, reset="zero")), (1, 6, 6), ["layer 1 (AvgPool2d)", "stride = kernel"]),
    (Sequential(LIFConv2d(1, 2, 3, reset="zero"), AvgPool2d(2), LIFConv2d(2, 2, 1, reset="zero")),
     (1, 7, 7), ["layer 1 (AvgPool2d)", "not a multiple of the kernel"]),
    (Sequential(LIFLinear(4, 3, beta=torch.tensor([0.9, 0.8, 0.9]), reset="zero")), (4,),
     ["layer 0 (LIFLinear)", "per-neuron beta"]),
    (Sequential(LIFConv2d(1, 2, 3, threshold=torch.tensor([1.0, 2.0]), reset="zero")),
     (1, 5, 5), ["layer 0 (LIFConv2d)", "per-neuron threshold"]),
    (Sequential(ReLULinear(4, 3)), (4,), ["layer 0 (ReLULinear)", "ReLU"]),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path, net, shape, words):
    assert_netx_refuses(tmp_path, net, shape, words)


def test_avgpool_folds_exactly_into_conv_and_dense():
    """conv(avgpool(s)) and dense(flatten(avgpool(s))) equal the folded conv / dense on s."""
    from hardware_export._common import describe_network
    from hardware_export.netx_export import float_layers

    torch.manual_seed(0)
    net = Sequential(AvgPool2d(2), LIFConv2d(2, 3, 3, padding=1, reset="zero"), AvgPool2d(2),
                     Flatten(), LIFLinear(3 * 2 * 2, 4, reset="zero")).double()
    items = float_layers(describe_network(net, (2, 10, 10), ("dense", "conv", "flatten",
                                                             "avgpool"), "netx"))
    conv, flat, dense = items
    assert conv.weight.shape[-2:] == (6, 6) and conv.in_shape == (2, 10, 10)
    assert conv.stride == (2, 2) and conv.padding == (2, 2) and flat.in_shape == (3, 5, 5)
    s = (torch.rand(7, 2, 10, 10, dtype=torch.float64) < 0.5).double()
    ref = net[1].current(net[0](s))
    got = Fn.conv2d(s, torch.from_numpy(conv.weight), torch.from_numpy(conv.bias), conv.stride,
                    conv.padding)
    assert torch.allclose(ref, got, atol=1e-12)
    s2 = (torch.rand(7, 3, 5, 5, dtype=torch.float64) < 0.5).double()
    ref2 = net[4].current(net[3](net[2](s2)))
    got2 = s2.reshape(7, -1) @ torch.from_numpy(dense.weight).T + torch.from_numpy(dense.bias)
    assert torch.allclose(ref2, got2, atol=1e-12)


def test_range_check_names_the_layer():
    from hardware_export.netx_export import check_ranges

    check_ranges(_hand_plan())
    for change, words in (({"weight": np.array([[300, 0], [0, 2]])}, "not even integers"),
                          ({"weight": np.array([[3, 0], [0, 2]])}, "not even integers"),
                          ({"bias": np.array([5000, 0])}, "bias outside"),
                          ({"v_th_mant": 0}, "vThMant=0"), ({"i_decay": 4097}, "iDecay=4097")):
        plan = _hand_plan()
        for k, v in change.items():
            setattr(plan.layers[0], k, v)
        plan.layers[0].name = "layer 0 (LIFLinear)"
        with pytest.raises(ValueError, match=rf"^layer 0 \(LIFLinear\) cannot .*{words}"):
            check_ranges(plan)


def test_input_mode_errors():
    net = _dense()
    with pytest.raises(ValueError, match="input_mode='spikes' is not allowed"):
        quantize_network(net, (12,), input_mode="spikes")
    with pytest.raises(ValueError, match="needs input_mode='graded'"):
        quantize_network(net, (12,), input_scale=4)
    with pytest.raises(ValueError, match="0/1 spikes"):
        ls.encode_input(quantize_network(net, (12,)), torch.full((2, 1, 12), 0.5))


# ------------------------------------------------------------------ the Loihi simulation

def _hand_plan(v_decay=1000, v_th=145):
    ly = NetxLayer("dense", (2,), (2,), weight=np.array([[120, -40], [30, 60]]),
                   bias=np.array([10, 0]), v_th_mant=v_th, v_decay=v_decay)
    return NetxNetwork([ly], (2,))


def test_loihi_sim_by_hand():
    """Two neurons, four steps. Units: v = 64 * (W s + bias) integrated with
    v <- trunc(v * (4096 - 1000) / 4096) (toward zero); spike when v > 145 * 64 = 9280.

    neuron 0 (w = 120, -40; bias 10 -> +640):
      t1 s=(1,0): 0 + 7680 + 640 = 8320                           no spike
      t2 s=(1,1): trunc(8320 * 3096/4096 = 6288.75) = 6288; + 5120 + 640 = 12048 > 9280: spike, v=0
      t3 s=(0,1): 0 - 2560 + 640 = -1920
      t4 s=(0,0): trunc(-1920 * 3096/4096 = -1451.25) = -1451 (not -1452); + 640 = -811
    neuron 1 (w = 30, 60; bias 0):
      t1: 1920;  t2: trunc(1451.25) + 5760 = 7211;  t3: trunc(5450.50) + 3840 = 9290 > 9280
      spike, v = 0;  t4: 0
    """
    x = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.float64).unsqueeze(1)
    tr = ls.simulate(_hand_plan(), x)
    assert tr.spikes[:, 0].tolist() == [[0, 0], [1, 0], [0, 1], [0, 0]]
    assert tr.membrane[:, 0].tolist() == [[8320, 1920], [12048, 7211], [-1920, 9290], [-811, 0]]


def test_stream_has_one_step_delay_and_bias_prelude():
    """hdf5.Network(file) without reset: the layer sees input t at step t + 1 and integrates its
    bias alone at step 1, so neuron 0 starts from 640: t2: trunc(640*3096/4096=483.75) + 7680
    + 640 = 8803; t3: trunc(8803*.7559=6653.8) + 5120 + 640 = 12413 > 9280 (one step later
    than the per-sample simulation); with reset_interval=4, reset_offset=1 the bias-only step
    is cleared and the output is the per-sample one shifted by one step."""
    plan = _hand_plan()
    x = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.float64).unsqueeze(1)
    raw = ls.simulate_stream(plan, x, 5)[:, 0]
    assert raw.tolist() == [[0, 0], [0, 0], [1, 0], [0, 1], [0, 0]]
    reset = ls.simulate_stream(plan, x, 5, reset_interval=4, reset_offset=1)[:, 0]
    assert torch.equal(reset[1:], ls.simulate(plan, x).spikes[:, 0])


@pytest.mark.parametrize("make,shape,mode", [(_dense, (12,), "binary"),
                                             (_conv, (2, 7, 7), "graded")])
def test_per_sample_simulation_equals_the_reset_stream(make, shape, mode):
    plan = quantize_network(make(), shape, input_mode=mode, input_scale=4 if mode == "graded"
                            else None)
    x = ls.random_payloads(plan, steps=6, batch=5, seed=3, rate=0.4)
    L = ls.num_delays(plan)
    stream = ls.simulate_stream(plan, ls.stream_inputs(x, 6, L), reset_interval=6,
                                reset_offset=1)
    back = ls.unstream_outputs(stream, 6, 5, L)
    sim = ls.simulate(plan, x).spikes
    assert torch.equal(back, sim) and sim.sum() > 0


def test_dense_weights_survive_netx_and_lava_unchanged():
    rng = np.random.default_rng(0)
    for w in (rng.integers(-128, 128, (5, 7)) * 2, rng.integers(0, 128, (3, 4)) * 2,
              -rng.integers(1, 128, (3, 4)) * 2, rng.integers(-8, 8, (4, 4)) * 16):
        we, exp = ls.lava_dense_weights(w)
        s = rng.integers(0, 2, (7 if w.shape[1] == 7 else w.shape[1], 3)).astype(np.float64)
        a = ls._shift(torch.from_numpy(s.T) @ torch.from_numpy(we.astype(np.float64)).T, exp)
        assert torch.equal(a, torch.from_numpy(s.T @ w.T.astype(np.float64)))


def test_quantized_simulation_tracks_the_float_network():
    net = _dense()
    plan = quantize_network(net, (12,))
    res = ls.verify_netx(net, plan, steps=20, batch=16)
    assert res["output_rate"] >= 0.01 and res["agreement"] > 0.95


# ------------------------------------------------------------------ CLI

def _run_cli(argv):
    from hardware_export.cli import add_export_parser, run_export

    parser = argparse.ArgumentParser(prog="spikelfp")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    return run_export(parser.parse_args(["export", *argv]))


def _checkpoint(tmp_path, reset="zero", name="ck.pt"):
    zoo = pytest.importorskip("spikelfp.nn.zoo")
    spec = {"model": "mlp", "input_shape": [1, 4, 4], "num_classes": 3, "hidden": [6],
            "beta": 0.9, "threshold": 1.0, "reset": reset}
    torch.manual_seed(0)
    net = _boost(zoo.build_model(spec))
    path = tmp_path / name
    torch.save({"model": net.state_dict(), "model_spec": spec,
                "config": {"steps": 8, "encoder": "constant", "dataset": "digits"}}, path)
    return path


def test_cli_netx_export_and_verify(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    out = tmp_path / "n.h5"
    assert _run_cli(["--checkpoint", str(ck), "--format", "netx", "--out", str(out),
                     "--input-shape", "1,4,4", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "verify: Loihi simulation of the file vs the float network" in text
    plan = read_netx(out)
    assert plan.input_mode == "graded" and plan.input_scale == 8 and plan.time_steps == 8


def test_cli_netx_refuses_subtract(tmp_path, capsys):
    ck = _checkpoint(tmp_path, reset="subtract")
    out = tmp_path / "n.h5"
    assert _run_cli(["--checkpoint", str(ck), "--format", "netx", "--out", str(out),
                     "--input-shape", "1,4,4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spikelfp export: error: layer 1 (LIFLinear)") and "\n" not in err
    assert not out.exists()


# ------------------------------------------------------------------ Lava (opt-in)

def _lava():
    return lava_or_skip()


@pytest.mark.parametrize("make,shape,mode", [(_dense, (12,), "binary"),
                                             (_conv, (2, 7, 7), "graded")])
def test_lava_fixed_pt_matches_the_simulation(tmp_path, make, shape, mode):
    assert_lava_fixed_pt_matches(tmp_path, make(), shape, mode)


def test_lava_raw_stream_matches_the_simulation(tmp_path):
    assert_lava_raw_stream_matches(tmp_path, _dense(), (12,))


def test_lava_floating_pt_cannot_select_netx_models(tmp_path):
    lh = _lava()
    path = write_netx(_dense(), tmp_path / "n.h5", (12,))
    x = ls.random_payloads(read_netx(path), steps=4, batch=1)
    with pytest.raises(lh.LavaTagUnsupported, match="No ProcessModels found with tag "
                                                    "'floating_pt'"):
        lh.run_lava_samples(path, x, "floating_pt")
