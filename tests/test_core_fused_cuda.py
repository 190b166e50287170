"""The Triton kernels (``spikelfp.core.fused_triton``, CUDA) against the torch loops they
replace, and the golden vectors, snnTorch forward oracle and a resumed run on CUDA.

Run where a GPU and triton are present (skipped otherwise, e.g. in CI). Where triton is installed
but there is no GPU, ``TRITON_INTERPRET=1`` runs the scan-level comparison on CPU tensors
(``test_interpreted_scan_equals_torch_loop``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from _helpers import assert_fused_forward_bit_identical

import spikelfp.nn as snn
from spikelfp import LFP
from spikelfp.core import fused_triton
import spikelfp.core.feedback as fb
from spikelfp.core.feedback import reverse_scan_torch
from spikelfp.core.fused import scan_outputs
from spikelfp.core.lif import lif_scan
from spikelfp.core.rules import RULES, make_rule

ROOT = Path(__file__).resolve().parents[1]
HAVE_CUDA = torch.cuda.is_available() and fused_triton.available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU and triton")
CUDA = torch.device("cuda")


def _module(name):
    spec = importlib.util.spec_from_file_location(f"_cuda_{name}", ROOT / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _close(a, b, rel, what):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    if isinstance(a, (tuple, list)):
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, rel, f"{what}[{i}]")
        return
    assert a.dtype == b.dtype and a.shape == b.shape, what
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.equal(a.isnan(), b.isnan()), f"{what}: NaN at different places"
    ok = ~a.isnan()
    scale = max(b[ok].abs().max().item() if ok.any() else 0.0, 1e-300)
    err = (a[ok] - b[ok]).abs().max().item() if ok.any() else 0.0
    assert err <= rel * scale, f"{what}: {err:.3g} > {rel:g} * {scale:.3g}"


def _case(seed, reset, dtype, device, T=7, B=5, n=37, rule="epsilon"):
    """A LIF trace with spikes at some (t, b, j) and random feedback, plus the rule's sums."""
    g = torch.Generator().manual_seed(seed)
    I = torch.randn(T, B, n, generator=g, dtype=dtype) * 1.5
    beta = torch.rand(n, generator=g, dtype=dtype) * 0.5 + 0.5
    tr = lif_scan(I.to(device), beta.to(device), 1.0, reset)
    r = torch.randn(T, B, n, generator=g, dtype=dtype).to(device)
    r[2] = 0  # a silent step (the max-abs floor)
    sums = {"base": None, "P": None, "N": None}
    if rule == "zplus_zminus":
        sums["base"] = (torch.rand(B, n, generator=g, dtype=dtype) + 0.1).to(device)
    if rule == "alphabeta":
        sums["P"] = torch.rand(T, B, n, generator=g, dtype=dtype).to(device)
        sums["N"] = -torch.rand(T, B, n, generator=g, dtype=dtype).to(device)
    return tr, r, beta.to(device), sums


def _in_two_chunks(scan, r, v, s, beta, kw, split=3):
    """The scan as two chunks (steps split..T-1, then 0..split-1) with c carried between them,
    as ``synaptic_layer_feedback`` runs a lazy feedback."""
    k = 2 if kw["rule"].name == "alphabeta" else 1
    out = scan_outputs(v, k, kw["keep"], kw["details"])
    carry = torch.zeros_like(v[0])
    for a, b in ((split, v.shape[0]), (0, split)):
        lo = max(0, a - 1)
        part = {n: (kw[n][lo:b] if kw[n] is not None and kw[n].dim() == v.dim() else kw[n])
                for n in ("base", "P", "N")}
        sub = (None if out[0] is None else [n[lo:b] for n in out[0]], out[1],
               None if out[2] is None else out[2][lo:b], None if out[3] is None else out[3][lo:b])
        scan(r[lo:b], v[lo:b], s[lo:b], beta, 1.0, **{**kw, **part}, out=sub, carry=carry, stop=a - lo)
    return out


def _scan_both(scan, rule, reset, normalize, dtype, device, **flags):
    tr, r, beta, sums = _case(3, reset, dtype, device, rule=rule)
    kw = dict(reset=reset, rule=make_rule(rule, 0.1), normalize=normalize, **flags, **sums)
    k = 2 if rule == "alphabeta" else 1
    a = scan(r, tr.membrane, tr.spikes.to(torch.uint8), beta, 1.0,
             out=scan_outputs(tr.membrane, k, flags["keep"], flags["details"]), **kw)
    th = torch.ones((), dtype=dtype, device=device)
    b = reverse_scan_torch(r, tr.membrane, tr.spikes, beta, th, max_reduce=None, **kw)
    c = _in_two_chunks(scan, r, tr.membrane, tr.spikes.to(torch.uint8), beta, kw)
    for what, x, y, z in zip(("n", "sums", "F", "c"), a, b, c):
        _close(x, y, 1e-12, f"{rule}/{reset}/{normalize}/{flags}: {what}")
        _close(z, y, 1e-12, f"{rule}/{reset}/{normalize}/{flags}: {what} (two chunks)")


FLAGS = [dict(spiking=True, direction=False, keep=True, details=True),
         dict(spiking=True, direction=True, keep=False, details=False),
         dict(spiking=False, direction=False, keep=False, details=True)]


@pytest.mark.skipif(not (fused_triton.available() and os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="needs triton and TRITON_INTERPRET=1 (the interpreter, on CPU tensors)")
@pytest.mark.parametrize("rule", RULES)
def test_interpreted_scan_equals_torch_loop(rule):
    """Triton's interpreter runs the reverse-scan kernels on CPU tensors: the torch loop's
    numbers (float64, 1e-12) for each rule, both resets, every scope."""
    for reset in ("subtract", "zero"):
        for normalize in (None, "step", "sample"):
            for flags in FLAGS:
                _scan_both(fused_triton.reverse_scan, rule, reset, normalize, torch.float64, "cpu",
                           **flags)


@needs_cuda
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_scan_equals_torch_loop(rule, dtype):
    if dtype == torch.float32:  # float32: the same arithmetic, so equal up to rounding
        tr, r, beta, sums = _case(4, "subtract", dtype, CUDA, rule=rule)
        kw = dict(reset="subtract", rule=make_rule(rule, 0.1), normalize="step", spiking=True,
                  direction=False, keep=True, details=True, **sums)
        a = fused_triton.reverse_scan(r, tr.membrane, tr.spikes.bool(), beta, 1.0,
                                      out=scan_outputs(tr.membrane, 2 if rule == "alphabeta" else 1,
                                                       True, True), **kw)
        th = torch.ones((), dtype=dtype, device=CUDA)
        b = reverse_scan_torch(r, tr.membrane, tr.spikes, beta, th, max_reduce=None, **kw)
        for what, x, y in zip("nsFc", a, b):
            _close(x, y, 2e-6, what)
        return
    for reset in ("subtract", "zero"):
        for normalize in (None, "step", "sample"):
            for flags in FLAGS:
                _scan_both(fused_triton.reverse_scan, rule, reset, normalize, dtype, CUDA, **flags)


@needs_cuda
def test_triton_scan_large_layer_and_nan():
    """More neurons than one block (several programs per group and the atomic max across them),
    and a NaN in F_t: that step is not rescaled, as in torch."""
    for normalize in ("step", "sample"):
        tr, r, beta, _ = _case(5, "subtract", torch.float64, CUDA, T=5, B=3, n=3000)
        r[3, 1, 17] = float("nan")
        kw = dict(reset="subtract", rule=make_rule("epsilon", 1e-6), normalize=normalize,
                  spiking=True, direction=False, keep=True, details=True, base=None, P=None, N=None)
        a = fused_triton.reverse_scan(r, tr.membrane, tr.spikes, beta, 1.0,
                                      out=scan_outputs(tr.membrane, 1, True, True), **kw)
        th = torch.ones((), dtype=torch.float64, device=CUDA)
        b = reverse_scan_torch(r, tr.membrane, tr.spikes, beta, th, max_reduce=None, **kw)
        for what, x, y in zip("nsFc", a, b):
            _close(x, y, 1e-12, f"{normalize}: {what}")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_triton_lif_forward_is_bit_identical(dtype, reset, path_switch):
    """The Triton forward scan: the torch loop's spikes and membranes on CUDA, bit for bit, and
    the CPU's spikes."""
    assert_fused_forward_bit_identical(path_switch, dtype, reset, CUDA, n=900)


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*[_to_cpu(v) for v in obj])
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return type(obj)(**{k: _to_cpu(getattr(obj, k)) for k in obj.__dataclass_fields__})
    return obj


@needs_cuda
@pytest.mark.parametrize("on", [True, False])
def test_golden_vectors_on_cuda(on, path_switch):
    """The 34 golden cases on CUDA (float64), through the Triton kernels and the torch loops."""
    mod = _module("test_core_vectors")
    if not mod.CASES:
        pytest.skip(mod._SKIP_REASON)
    with path_switch(on):
        for case in mod.CASES.values():
            net, _ = mod._run_case(case, torch.float64)
            net.to(CUDA)
            lfp = LFP(net, rule=case["rule"], normalize=case["norm_scope"] if case["normalize"] else None,
                      batch_reduction=case["batch_reduction"], epsilon=case["epsilon"],
                      **({"alpha": case["alpha"], "beta": case["beta_ab"]} if case["alpha"] is not None else {}))
            x = torch.tensor(case["input"], dtype=torch.float64, device=CUDA)
            for compact in (False, True):
                with torch.no_grad():
                    trace = net.run(x, case["T"], compact=compact)
                res = lfp.backward(trace, torch.tensor(case["labels"], device=CUDA), keep_feedback=True)
                mod._check_case(case, net.cpu(), _to_cpu(res), 1e-9)
                net.to(CUDA)


@needs_cuda
@pytest.mark.parametrize("on", [True, False])
@pytest.mark.parametrize("chunk", [None, 2 * 6 * 300])
def test_lfp_step_cuda_matches_cpu(on, chunk, monkeypatch, path_switch):
    """A whole LFP update of a conv net and an MLP on CUDA equals the CPU's (float64); also with
    the lazy feedback scanned in chunks of 2 steps on CUDA."""
    if chunk is not None:
        monkeypatch.setattr(fb, "LAZY_CHUNK_CUDA", chunk)
    torch.manual_seed(3)
    dt = torch.float64
    nets = [snn.Sequential(snn.LIFConv2d(1, 4, 3, padding=1, dtype=dt), snn.MaxPool2d(2),
                           snn.Flatten(), snn.LIFLinear(4 * 4 * 4, 3, dtype=dt)),
            snn.Sequential(snn.LIFLinear(12, 300, dtype=dt, reset="zero"), snn.LIFLinear(300, 3, dtype=dt))]
    xs = [torch.rand(6, 1, 8, 8, dtype=dt), torch.rand(6, 12, dtype=dt)]
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for net, x in zip(nets, xs):
        with torch.no_grad():
            for _, m in net.synaptic_layers():
                m.weight.mul_(3.0)
        for rule in ("epsilon", "alphabeta", "zplus_zminus"):
            for normalize in ("step", "sample", "layer", None):
                cpu = LFP(net, rule=rule, normalize=normalize).compute(x, y, steps=9)
                with path_switch(on):
                    net.to(CUDA)
                    gpu = LFP(net, rule=rule, normalize=normalize).compute(x.to(CUDA), y.to(CUDA), steps=9)
                    net.cpu()
                for k in cpu.grads:
                    _close(gpu.grads[k], cpu.grads[k], 1e-10, f"{rule}/{normalize}: {k}")


@needs_cuda
def test_snntorch_oracle_on_cuda():
    """snnTorch's Leaky on CUDA and our Triton forward: the same spikes and membranes."""
    snntorch = pytest.importorskip("snntorch")
    torch.manual_seed(1)
    for reset in ("subtract", "zero"):
        layer = snn.LIFLinear(20, 50, beta=0.8, threshold=0.7, reset=reset).to(CUDA)
        with torch.no_grad():
            layer.weight.mul_(2.0)
        x = torch.rand(12, 6, 20, device=CUDA)
        with torch.no_grad():
            _, rec = layer.run(x, compact=True)
        leaky = snntorch.Leaky(beta=0.8, threshold=0.7, reset_mechanism=reset)
        mem = torch.zeros(6, 50, device=CUDA)
        spk, vs = [], []
        with torch.no_grad():
            for t in range(12):
                s, mem = leaky(torch.nn.functional.linear(x[t], layer.weight, layer.bias), mem)
                spk.append(s)
                vs.append(mem)
        assert torch.equal(rec.spikes.float(), torch.stack(spk))
        assert torch.allclose(rec.membrane, torch.stack(vs), rtol=0, atol=1e-5)


@needs_cuda
def test_resume_on_cuda_gives_the_weights_of_one_run(tmp_path):
    """Digits on CUDA: 2 epochs in one run, and 1 epoch + ``--resume`` for the second, end with
    identical weights (Triton kernels on)."""
    from spikelfp.cli import main

    common = ["train", "--device", "cuda", "--limit", "256", "--test-limit", "64", "--progress", "off",
              "--out", str(tmp_path)]
    assert main([*common, "--epochs", "2", "--run-name", "whole"]) == 0
    assert main([*common, "--epochs", "1", "--run-name", "split"]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "2", "--progress", "off"]) == 0
    a = torch.load(tmp_path / "whole" / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "split" / "last.pt", map_location="cpu", weights_only=False)
    sa, sb = a["model"], b["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
