"""Small helpers shared by several test modules."""

import torch


def boost(net, factor=3.0):
    """Scale every synaptic weight of ``net`` so that its neurons actually spike."""
    with torch.no_grad():
        for m in net:
            if getattr(m, "weight", None) is not None:
                m.weight.mul_(factor)
    return net


def assert_netx_refuses(tmp_path, net, shape, words):
    """``write_netx`` refuses ``net`` with a one-line ValueError holding every one of ``words``
    and writes nothing."""
    import pytest

    from hardware_export.netx_export import write_netx

    with pytest.raises(ValueError) as e:
        write_netx(net, tmp_path / "x.h5", shape)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert list(tmp_path.iterdir()) == []


def lava_or_skip():
    """The Lava harness module, or skip: the Lava tests run only with SPIKELFP_LAVA_PYTHON."""
    import pytest

    from hardware_export.lava_harness import lava_python

    if not lava_python():
        pytest.skip("SPIKELFP_LAVA_PYTHON is not set: these tests run the file in Lava's "
                    "Loihi simulator (bash ../shared/tools/lava-env.sh /tmp/lava310, then "
                    "SPIKELFP_LAVA_PYTHON=/tmp/lava310/bin/python)")
    from hardware_export import lava_harness

    return lava_harness


def assert_lava_fixed_pt_matches(tmp_path, net, shape, mode):
    """The netx file of ``net`` runs bit for bit the same in Lava (fixed_pt) and in loihi_sim on
    random payloads (binary or graded input), with spikes."""
    from hardware_export import loihi_sim as ls
    from hardware_export.netx_export import read_netx, write_netx

    lh = lava_or_skip()
    path = write_netx(net, tmp_path / "n.h5", shape, input_mode=mode,
                      input_scale=4 if mode == "graded" else None, time_steps=10)
    x = ls.random_payloads(read_netx(path), steps=10, batch=12, seed=0, rate=0.4)
    res = lh.compare_lava(path, x, "fixed_pt")
    assert res["identical"] and res["spikes_reference"] > 0, res


def assert_lava_raw_stream_matches(tmp_path, net, shape):
    """Lava's raw stream of one 30-step input (run 33 steps, no sample resets) equals
    ``loihi_sim.simulate_stream`` spike for spike, with spikes."""
    from hardware_export import loihi_sim as ls
    from hardware_export.netx_export import read_netx, write_netx

    lh = lava_or_skip()
    path = write_netx(net, tmp_path / "n.h5", shape)
    plan = read_netx(path)
    x = ls.random_payloads(plan, steps=30, batch=1, seed=1, rate=0.4)
    lava = lh.run_lava(path, x[:, 0], 33)
    sim = ls.simulate_stream(plan, x, 33)[:, 0]
    assert torch.equal(lava, sim) and sim.sum() > 0


def assert_fused_forward_bit_identical(path_switch, dtype, reset, device="cpu", n=9):
    """The compiled LIF forward scan (numba on CPU, Triton on CUDA) against the torch loop on
    ``device``, bit for bit: scalar, per-neuron and per-channel beta/theta; constant and
    sequence currents; compact or not. On another device than the CPU the spikes must also be
    those of the CPU's torch loop."""
    from spikelfp.core.lif import lif_scan

    g = torch.Generator().manual_seed(2)
    cases = [(torch.randn(6, 4, n, generator=g, dtype=dtype) * 1.5, None, 0.9, 1.0),
             (torch.randn(4, n, generator=g, dtype=dtype) * 1.5, 6,
              torch.rand(n, generator=g, dtype=dtype) * 0.5 + 0.5,
              torch.rand(n, generator=g, dtype=dtype) + 0.5),
             (torch.randn(5, 2, 3, 4, 4, generator=g, dtype=dtype) * 1.5, None,
              torch.tensor([0.6, 0.8, 1.0], dtype=dtype).reshape(3, 1, 1), 0.7)]
    for current, steps, beta, th in cases:
        on = [v.to(device) if torch.is_tensor(v) else v for v in (current, beta, th)]
        for compact in (False, True):
            with path_switch(True):
                a = lif_scan(on[0], on[1], on[2], reset, steps=steps, compact=compact)
            with path_switch(False):
                b = lif_scan(on[0], on[1], on[2], reset, steps=steps, compact=compact)
                cpu = lif_scan(current, beta, th, reset, steps=steps, compact=compact)
            assert a.spikes.dtype == b.spikes.dtype == (torch.uint8 if compact else dtype)
            assert torch.equal(a.spikes, b.spikes) and torch.equal(a.membrane, b.membrane)
            assert torch.equal(a.spikes.cpu(), cpu.spikes)
            assert 0 < int(a.spikes.sum()) < a.spikes.numel()
