"""The fused reverse scan (``spikelfp.core.fused``, numba) against the torch loop it replaces, and
the compact (bool) spike records.

Both paths of :func:`synaptic_layer_feedback` must give the same G, feedback below, F, c and n to
float rounding (float64: 1e-12 relative) for every rule, reset, normalization scope, temporal
mode, constant or sequence input, float or bool spikes, linear and conv layers. The golden
vectors, hand cases and rule properties (their own test modules) run on the default path, which
is the fused one where numba is importable; here they are run again with ``SPIKELFP_FUSED=0``.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import assert_fused_forward_bit_identical

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.core import fused
from spikelfp.core.feedback import synaptic_layer_feedback
from spikelfp.core.rules import RULES, make_rule
from spikelfp.core.synapse import Conv2dOps

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not fused.HAVE_NUMBA, reason="numba is not installed: only the torch path exists")


def _linear_case(seed, reset, dtype, const, T=6, B=5, n_in=7, n_out=6, per_neuron=False):
    g = torch.Generator().manual_seed(seed)
    beta = torch.rand(n_out, generator=g, dtype=dtype) * 0.5 + 0.5 if per_neuron else 0.85
    th = torch.rand(n_out, generator=g, dtype=dtype) + 0.5 if per_neuron else 1.0
    layer = snn.LIFLinear(n_in, n_out, beta=beta, threshold=th, reset=reset, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=g, dtype=dtype) * 0.8)
        layer.bias.copy_(torch.randn(n_out, generator=g, dtype=dtype) * 0.3)
    x = torch.randn(B, n_in, generator=g, dtype=dtype) * 1.2 if const else \
        (torch.rand(T, B, n_in, generator=g, dtype=dtype) > 0.5).to(dtype)
    r = torch.randn(T, B, n_out, generator=g, dtype=dtype)
    r[1] = 0  # a silent step (the max-abs floor)
    with torch.no_grad():
        _, rec = layer.run(x, steps=T if const else None)
    s = rec.spikes
    assert 0 < int(s.sum()) < s.numel()
    return layer, x, r, rec


def _run(layer, x, r, rec, rule, spikes=None, **kw):
    p = layer.neuron_parameters()
    return synaptic_layer_feedback(
        r, x, rec.membrane, rec.spikes if spikes is None else spikes, layer.weight, layer.bias,
        layer.ops, beta=p.beta, threshold=p.threshold, reset=p.reset, rule=make_rule(rule), **kw)


def _close(a, b, rel, what):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    if isinstance(a, tuple):
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, rel, f"{what}[{i}]")
        return
    assert a.dtype == b.dtype and a.shape == b.shape, what
    scale = max(b.abs().max().item(), 1e-300)
    err = (a - b).abs().max().item()
    assert err <= rel * scale, f"{what}: {err:.3g} > {rel:g} * {scale:.3g}"


def _compare(layer, x, r, rec, rule, path_switch, rel, spikes=None, **kw):
    with path_switch(True):
        a = _run(layer, x, r, rec, rule, spikes, **kw)
    with path_switch(False):
        b = _run(layer, x, r, rec, rule, spikes, **kw)
    for field in a._fields:
        _close(getattr(a, field), getattr(b, field), rel, field)
    return a


@needs_numba
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("normalize", ["step", "sample", "layer", None])
def test_fused_equals_torch_loop_float64(rule, reset, normalize, path_switch):
    for const, details, need_below, temporal in ((True, True, True, "relevance"),
                                                 (True, False, False, "direction"),
                                                 (False, False, True, "relevance")):
        layer, x, r, rec = _linear_case(3, reset, torch.float64, const, per_neuron=not const)
        res = _compare(layer, x, r, rec, rule, path_switch, 1e-12, normalize=normalize,
                       temporal=temporal, details=details, need_below=need_below)
        assert res.grad_weight.abs().sum() > 0


@needs_numba
@pytest.mark.parametrize("rule", ["epsilon", "alphabeta", "lfprop"])
def test_fused_equals_torch_loop_float32_and_bool_spikes(rule, path_switch):
    layer, x, r, rec = _linear_case(5, "subtract", torch.float32, True)
    for spikes in (rec.spikes, rec.spikes.to(torch.float32), rec.spikes.to(torch.bool)):
        _compare(layer, x, r, rec, rule, path_switch, 2e-6, spikes=spikes, details=True)
    # bool spikes give the numbers of float spikes
    with path_switch(True):
        a = _run(layer, x, r, rec, rule, spikes=rec.spikes.to(torch.bool), details=True)
        b = _run(layer, x, r, rec, rule, spikes=rec.spikes.to(torch.float32), details=True)
    assert torch.equal(a.grad_weight, b.grad_weight) and torch.equal(a.below, b.below)


@needs_numba
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_fused_equals_torch_loop_conv_per_channel(reset, path_switch):
    g = torch.Generator().manual_seed(7)
    dt = torch.float64
    layer = snn.LIFConv2d(2, 3, 3, padding=1, beta=torch.tensor([0.7, 0.8, 0.95], dtype=dt),
                          threshold=torch.tensor([0.5, 1.0, 1.5], dtype=dt), reset=reset, dtype=dt)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=dt))
    x = (torch.rand(4, 3, 2, 5, 5, generator=g, dtype=dt) > 0.5).to(dt)
    with torch.no_grad():
        _, rec = layer.run(x)
    r = torch.randn(rec.membrane.shape, generator=g, dtype=dt)
    assert isinstance(layer.ops, Conv2dOps)
    for rule in RULES:
        for normalize in ("step", "sample"):
            _compare(layer, x, r, rec, rule, path_switch, 1e-12, normalize=normalize, details=True)
            _compare(layer, x.to(torch.bool), r, rec, rule, path_switch, 1e-12, normalize=normalize)


@needs_numba
def test_fused_keeps_nan_unscaled_like_torch(path_switch):
    """A NaN in F_t: neither path rescales that step (the max is NaN), so both agree."""
    layer, x, r, rec = _linear_case(1, "subtract", torch.float64, True)
    r = r.clone()
    r[3, 0, 0] = float("nan")
    for normalize in ("step", "sample"):
        with path_switch(True):
            a = _run(layer, x, r, rec, "epsilon", normalize=normalize, details=True)
        with path_switch(False):
            b = _run(layer, x, r, rec, "epsilon", normalize=normalize, details=True)
        assert torch.equal(a.feedback.isnan(), b.feedback.isnan())
        ok = ~a.feedback.isnan()
        assert torch.allclose(a.feedback[ok], b.feedback[ok], rtol=1e-12, atol=0)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_maxabs_on_bit_patterns(dtype):
    """The step max is an integer max over the bit patterns without the sign bit: equal to
    max|F| for every finite or infinite F (subnormals, -0, a negative largest), -1 for a NaN."""
    tiny = np.finfo(dtype).smallest_subnormal
    cases = {(-0.0, 0.0): 0.0, (3.5, -7.25, 7.0): 7.25, (tiny, -2 * tiny): 2 * tiny,
             (-np.inf, 1.0): np.inf, (1.0, np.nan, -np.inf): -1.0, (np.nan,): -1.0}
    rng = np.random.default_rng(0)
    big = rng.standard_normal(1001).astype(dtype)
    cases[tuple(big)] = float(np.abs(big).max())
    for values, want in cases.items():
        F, Fi, box, boxi = fused._scratch(len(values), dtype)
        F[:] = values
        got = fused._maxabs(Fi, box, boxi, dtype(1.0))
        assert float(got) == float(dtype(want)), (values[:3], got)


@pytest.mark.parametrize("fused_on", [True, False])
def test_abs_mul_is_the_product_with_abs_weights(fused_on, path_switch):
    """G = |W| * C in place: bit for bit |W| * C on both paths; a transposed (non-contiguous)
    or float64/float32-mixed pair takes torch's path with the same numbers."""
    g = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.float64):
        W = torch.randn(30, 17, generator=g, dtype=dtype)
        C = torch.randn(30, 17, generator=g, dtype=dtype)
        want = W.abs() * C
        with path_switch(fused_on):
            out = C.clone()
            assert fused.abs_mul_(out, W) is out and torch.equal(out, want)
            t = C.t().contiguous().t()  # same values, transposed strides
            assert torch.equal(fused.abs_mul_(t, W), want)
    mixed = fused.abs_mul_(torch.ones(3), torch.tensor([-2.0, 0.5, -0.0], dtype=torch.float64))
    assert mixed.dtype == torch.float32 and mixed.tolist() == [2.0, 0.5, 0.0]


@needs_numba
@pytest.mark.parametrize("J", [1, 3, 10, 13, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_narrow_linear_against_float64_products(J, dtype, path_switch):
    """x W^T + b for few outputs (ten rows of W per pass, zero rows padding J to a multiple of
    ten): equal to the float64 product to the dtype's rounding, with or without bias, for
    [T, B, K] and [B, K] input; uint8 and bool spikes give the float spikes' result bit for bit."""
    g = torch.Generator().manual_seed(J)
    K = 203  # not a multiple of the vector width
    W = torch.randn(J, K, generator=g, dtype=dtype)
    b = torch.randn(J, generator=g, dtype=dtype)
    s = torch.rand(4, 3, K, generator=g) > 0.6
    x = torch.randn(5, K, generator=g, dtype=dtype)
    rel = 1e-13 if dtype == torch.float64 else 2e-6
    with path_switch(True), torch.no_grad():
        for bias in (b, None):
            want = torch.nn.functional.linear(s.double(), W.double(), None if bias is None else bias.double())
            got = fused.narrow_linear(s.to(dtype), W, bias)
            assert got.dtype == dtype and got.shape == (4, 3, J)
            _close(got.double(), want, rel, f"J={J} spikes")
            assert torch.equal(fused.narrow_linear(s, W, bias), got)
            assert torch.equal(fused.narrow_linear(s.to(torch.uint8), W, bias), got)
            want = torch.nn.functional.linear(x.double(), W.double(), None if bias is None else bias.double())
            _close(fused.narrow_linear(x, W, bias).double(), want, rel, f"J={J} float")


@needs_numba
@pytest.mark.parametrize("J", [1, 3, 10, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_narrow_correlate_against_float64_products(J, dtype, path_switch):
    """sum over rows of n^T x (eight rows of x per pass, the last block padded with zero rows;
    columns in blocks of CORR_BLOCK): the float64 product to the dtype's rounding, for rows not a
    multiple of eight and columns over two blocks; uint8, bool and float x bit-identical."""
    g = torch.Generator().manual_seed(J)
    K = 2 * fused.CORR_BLOCK + 37
    n = torch.randn(3, 7, J, generator=g, dtype=dtype)  # 21 rows
    s = torch.rand(3, 7, K, generator=g) > 0.6
    want = n.double().reshape(-1, J).t() @ s.double().reshape(-1, K)
    with path_switch(True), torch.no_grad():
        got = fused.narrow_correlate(n, s.to(dtype))
        assert got.dtype == dtype and got.shape == (J, K)
        _close(got.double(), want, 1e-13 if dtype == torch.float64 else 2e-6, f"J={J}")
        assert torch.equal(fused.narrow_correlate(n, s), got)
        assert torch.equal(fused.narrow_correlate(n, s.to(torch.uint8)), got)
        x = torch.randn(21, K, generator=g, dtype=dtype)
        _close(fused.narrow_correlate(n.reshape(21, J), x).double(),
               n.double().reshape(21, J).t() @ x.double(), 1e-13 if dtype == torch.float64 else 2e-6, "float x")


@needs_numba
def test_kernels_give_the_same_numbers_on_any_number_of_threads(path_switch):
    """With torch's thread count above 1 the narrow products and the LIF forward split their
    work over numba's threads (rows, column blocks, neurons); every number is computed by one
    thread in the same order, so 1, 2 and 3 threads give the same bits (sizes that split)."""
    g = torch.Generator().manual_seed(5)
    R, K = 3 * fused.SPLIT_MACS // (10 * 1000) + 5, 1007
    M = 3 * fused.SPLIT_STEPS // 4 + 33  # neurons over 4 steps
    s = torch.rand(R, K, generator=g) > 0.7
    x = torch.randn(R, K, generator=g)
    W, b = torch.randn(10, K, generator=g), torch.randn(10, generator=g)
    n = torch.randn(R, 13, generator=g)
    current = torch.randn(4, M, generator=g) * 0.7 + 0.4
    beta = torch.rand(M, generator=g) * 0.5 + 0.5
    saved = torch.get_num_threads()
    calls = []

    def counted(name):
        kernel = getattr(fused, name)
        return lambda *a: (calls.append(name), kernel(*a))[1]
    runs = []
    try:
        with path_switch(True), torch.no_grad(), pytest.MonkeyPatch.context() as mp:
            for name in ("_narrow_rows_par", "_narrow_corr_par", "_lif_par_compiled"):
                mp.setattr(fused, name, counted(name))
            for k in (1, 2, 3):
                torch.set_num_threads(k)
                S, V = fused.lif_forward(current, beta, torch.tensor(1.0), "subtract", 4, (M,),
                                         constant=False, compact=True)
                runs.append((fused.narrow_linear(s, W, b), fused.narrow_linear(x, W, None),
                             fused.narrow_correlate(n, s), fused.narrow_correlate(n, x), S, V))
    finally:
        torch.set_num_threads(saved)
    import numba
    if numba.config.NUMBA_NUM_THREADS > 1:  # 2 and 3 threads took the split kernels
        assert sorted(set(calls)) == ["_lif_par_compiled", "_narrow_corr_par", "_narrow_rows_par"]
        assert len(calls) == 2 * 5
    assert 0 < int(runs[0][4].sum()) < runs[0][4].numel()
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert torch.equal(a, c)


@needs_numba
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_runs_the_kernels_on_one_thread(path_switch):
    """After the split kernels ran (numba's GNU OpenMP pool started), a forked child gets the
    same numbers on one thread; on the pool, numba would end it ("fork() called from a process
    already using GNU OpenMP")."""
    import os

    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here: nothing is split")
    g = torch.Generator().manual_seed(6)
    s = torch.rand(4 * fused.SPLIT_MACS // (10 * 300), 300, generator=g) > 0.7
    W = torch.randn(10, 300, generator=g)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with path_switch(True), torch.no_grad():
            want = fused.narrow_linear(s, W, None)
            assert fused.threads() == 2
            pid = os.fork()
            if pid == 0:  # the child: exit 0 only with one thread and the same numbers (compared
                # in numpy: a large torch op would itself start torch's pool, unsafe after fork)
                got = fused.narrow_linear(s, W, None).numpy()
                os._exit(0 if fused.threads() == 1 and np.array_equal(got, want.numpy()) else 1)
            status = _wait_or_kill(pid, 120)
    finally:
        torch.set_num_threads(saved)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def _wait_or_kill(pid: int, seconds: float) -> int:
    """The exit status of child ``pid``; killed (and the test failed) if it hangs."""
    import os
    import signal
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung for {seconds} s")


def test_narrow_usable_only_without_gradients_and_for_few_outputs(path_switch):
    """The forward-only kernel never takes a product that autograd must see, a layer wider than
    NARROW_MAX, mixed dtypes, a non-float weight or a switched-off path."""
    W = torch.randn(10, 6)
    x = torch.rand(4, 6)
    with path_switch(True):
        with torch.no_grad():
            assert fused.narrow_usable(x, W, None) == fused.HAVE_NUMBA
            assert fused.narrow_usable(x > 0.5, W, torch.zeros(10)) == fused.HAVE_NUMBA
            assert not fused.narrow_usable(x, torch.randn(fused.NARROW_MAX + 1, 6), None)
            assert not fused.narrow_usable(x.double(), W, None)
            assert not fused.narrow_usable(x, W, torch.zeros(10, dtype=torch.float64))
            assert not fused.narrow_usable(x, W.to(torch.bfloat16), None)
            assert not fused.narrow_usable(x[:, :5], W, None)
        assert fused.narrow_usable(x, W, None) == fused.HAVE_NUMBA  # grad mode, nothing needs one
        assert not fused.narrow_usable(x, W.requires_grad_(), None)
        assert not fused.narrow_usable(x.requires_grad_(), W.detach(), None)
        n = torch.randn(4, 10)
        with torch.no_grad():
            assert fused.narrow_correlate_usable(n, x.detach() > 0.5) == fused.HAVE_NUMBA
            assert not fused.narrow_correlate_usable(torch.randn(4, fused.NARROW_MAX + 1), x)
            assert not fused.narrow_correlate_usable(n[:3], x)  # rows differ
            assert not fused.narrow_correlate_usable(n.double(), x)
        assert not fused.narrow_correlate_usable(n.requires_grad_(), x.detach())
    with path_switch(False), torch.no_grad():
        assert not fused.narrow_usable(x.detach(), W.detach(), None)
        assert not fused.narrow_correlate_usable(torch.randn(4, 10), x.detach())


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_fused_lif_forward_is_bit_identical(dtype, reset, path_switch):
    """The fused forward scan: the spikes and membranes of the torch loop, bit for bit."""
    assert_fused_forward_bit_identical(path_switch, dtype, reset)


def test_switch_and_usable():
    m = torch.zeros(2, 3, 4)
    prev = fused.set_enabled(False)
    try:
        assert not fused.enabled() and not fused.usable(m)
        fused.set_enabled(True)
        assert fused.enabled() == fused.HAVE_NUMBA
        assert fused.usable(m) == fused.HAVE_NUMBA
        assert not fused.usable(m, max_reduce=lambda v: v)  # distributed max: torch path
        assert not fused.usable(m.to(torch.bfloat16))
    finally:
        fused.set_enabled(prev)


def _module(name):
    spec = importlib.util.spec_from_file_location(f"_fused_{name}", ROOT / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _calls(fn):
    """Every parameter combination of a test function's ``parametrize`` marks (None if the
    function needs a fixture)."""
    combos = [{}]
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else mark.args[0]
        new = []
        for values in mark.args[1]:
            if hasattr(values, "values"):  # pytest.param(...)
                if any(m.name == "skip" for m in values.marks):
                    continue
                values = values.values
            values = values if len(names) > 1 else (values,)
            new.extend({**c, **dict(zip(names, values))} for c in combos)
        combos = new
    wanted = set(inspect.signature(fn).parameters)
    return combos if all(wanted == set(c) for c in combos) else None


@pytest.mark.parametrize("module", ["test_core_vectors", "test_core_hand_cases", "test_core_rule_properties",
                                    "test_core_snntorch_oracle"])
def test_suites_on_the_torch_path(module, path_switch):
    """The golden vectors, hand cases, rule-property tests and snnTorch forward oracles (which run
    on the default path, the fused one where numba is importable) again with the fused kernels
    switched off."""
    mod = _module(module)
    ran = 0
    with path_switch(False):
        for name, fn in vars(mod).items():
            if not name.startswith("test_") or not callable(fn) or "optimizer" in name:
                continue  # (the optimizer-step tests repeat the same feedback many times: slow)
            calls = _calls(fn)
            assert calls is not None, f"{module}.{name} needs a fixture; run it another way"
            for kw in calls:
                torch.manual_seed(0)
                fn(**kw)
                ran += 1
    assert ran >= 10


# ----------------------------------------------------------------------------- compact records

def _nets(dtype):
    torch.manual_seed(3)
    mlp = snn.Sequential(snn.LIFLinear(12, 9, dtype=dtype), snn.LIFLinear(9, 7, dtype=dtype),
                         snn.LIFLinear(7, 3, dtype=dtype))
    conv = snn.Sequential(snn.LIFConv2d(1, 4, 3, padding=1, dtype=dtype), snn.MaxPool2d(2),
                          snn.LIFConv2d(4, 4, 3, padding=1, dtype=dtype), snn.Flatten(),
                          snn.LIFLinear(4 * 4 * 4, 3, dtype=dtype))
    avg = snn.Sequential(snn.LIFConv2d(1, 4, 3, padding=1, dtype=dtype), snn.AvgPool2d(2),
                         snn.Flatten(), snn.LIFLinear(4 * 4 * 4, 3, dtype=dtype))
    with torch.no_grad():
        for net in (mlp, conv, avg):
            for _, m in net.synaptic_layers():
                m.weight.mul_(3.0)
    return [(mlp, torch.rand(6, 12, dtype=dtype) * 2 - 1, None),
            (mlp, (torch.rand(5, 6, 12) > 0.6).to(dtype), 1),
            (conv, torch.rand(6, 1, 8, 8, dtype=dtype), None),
            (avg, torch.rand(6, 1, 8, 8, dtype=dtype), None)]


@pytest.mark.parametrize("fused_on", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compact_records_give_the_same_numbers(fused_on, dtype, path_switch):
    """``run(compact=True)``: uint8 spikes (and uint8 input of the next LIF layer), float input of
    pooling layers and float output; the same spikes and membranes, bit for bit, and LFP gives
    the same G from either trace (to float rounding: the correlations of compact inputs are the
    same products)."""
    for net, x, seq in _nets(dtype):
        steps = None if seq else 5
        y = torch.tensor([0, 1, 2, 0, 1, 2])
        with torch.no_grad():
            full = net.run(x, steps)
            comp = net.run(x, steps, compact=True)
        assert comp.output.dtype == dtype and torch.equal(comp.output, full.output)
        assert torch.equal(comp.membrane, full.membrane)
        for layer, a, b in zip(net, full.records, comp.records):
            if b.spikes is not None:
                assert b.spikes.dtype == torch.uint8 and a.spikes.dtype == dtype
                assert torch.equal(b.spikes.to(dtype), a.spikes) and torch.equal(b.membrane, a.membrane)
            want = torch.uint8 if (layer.compact_input and b.x.dtype != dtype) else dtype
            assert b.x.dtype == want and torch.equal(b.x.to(dtype), a.x)
            if isinstance(layer, (snn.MaxPool2d, snn.AvgPool2d)):
                assert b.x.dtype == dtype
        handed = any(r.x.dtype == torch.uint8 for r in comp.records)  # LIF -> (Flatten ->) LIF
        assert handed == (not isinstance(net[1], snn.AvgPool2d))
        with path_switch(fused_on):
            for rule in ("epsilon", "zplus_zminus", "alphabeta"):
                lfp = LFP(net, rule=rule)
                g_full = lfp.backward(full, y, keep_feedback=True)
                g_comp = lfp.backward(comp, y, keep_feedback=True)
                assert g_full.grads.keys() == g_comp.grads.keys()
                for k in g_full.grads:
                    _close(g_comp.grads[k], g_full.grads[k], 1e-12 if dtype == torch.float64 else 1e-5, k)


@pytest.mark.parametrize("fused_on", [True, False])
def test_golden_vectors_with_compact_records(fused_on, path_switch):
    """The golden vectors through ``run(compact=True)`` + ``LFP.backward`` on both scan paths."""
    mod = _module("test_core_vectors")
    if not mod.CASES:
        pytest.skip(mod._SKIP_REASON)
    with path_switch(fused_on):
        for case in mod.CASES.values():
            net, _ = mod._run_case(case, torch.float64)  # the net with the case's weights
            lfp = LFP(net, rule=case["rule"], normalize=case["norm_scope"] if case["normalize"] else None,
                      batch_reduction=case["batch_reduction"], epsilon=case["epsilon"],
                      **({"alpha": case["alpha"], "beta": case["beta_ab"]} if case["alpha"] is not None else {}))
            x = torch.tensor(case["input"], dtype=torch.float64)
            with torch.no_grad():
                trace = net.run(x, case["T"], compact=True)
            assert trace.records[0].spikes.dtype == torch.uint8
            res = lfp.backward(trace, torch.tensor(case["labels"]), keep_feedback=True)
            mod._check_case(case, net, res, 1e-9)


def test_compact_long_sequence_slices_equal_whole(monkeypatch):
    """Compact inputs above the slicing threshold (current, correlation, input product) give
    the numbers of the whole-tensor path (forced here with a tiny threshold)."""
    import spikelfp.core.feedback as fb
    import spikelfp.nn.layers as layers

    torch.manual_seed(1)
    dt = torch.float64
    net = snn.Sequential(snn.LIFLinear(10, 16, dtype=dt), snn.LIFLinear(16, 8, dtype=dt),
                         snn.LIFLinear(8, 3, dtype=dt))
    with torch.no_grad():
        net[0].weight.mul_(4)
        net[1].weight.mul_(3)
    x, y = torch.rand(5, 10, dtype=dt), torch.tensor([0, 1, 2, 1, 0])
    lfp = LFP(net)
    with torch.no_grad():
        ref_trace = net.run(x, 17, compact=True)
    ref = lfp.backward(ref_trace, y).grads
    monkeypatch.setattr(layers, "COMPACT_WHOLE", 8)
    monkeypatch.setattr(fb, "CORRELATE_WHOLE", 8)
    with torch.no_grad():
        trace = net.run(x, 17, compact=True)
    assert torch.equal(trace.output, ref_trace.output)  # per-slice currents: same spikes here
    got = lfp.backward(trace, y).grads
    for k in ref:
        _close(got[k], ref[k], 1e-12, k)
