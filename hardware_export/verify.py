"""Compare the spikes of two networks (an original and a re-read export) on the same inputs."""

from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence, Union

import torch

from .nir_export import from_nir, to_nir

Tensor = torch.Tensor


def spike_agreement(reference: Tensor, candidate: Tensor) -> Dict[str, float]:
    """Statistics of two spike tensors of the same shape ``[T, B, ...]``.

    agreement: fraction of (t, b, neuron) entries that are equal; identical: all equal;
    mismatched / total: counts; spikes_reference / spikes_candidate: total spike counts;
    count_agreement: fraction of (b, neuron) whose spike count over T is equal;
    prediction_agreement: fraction of samples whose argmax spike count (first max) is equal.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"spike tensors differ in shape: {tuple(reference.shape)} vs "
                         f"{tuple(candidate.shape)}")
    a, b = reference.detach().float().cpu(), candidate.detach().float().cpu()
    eq = a == b
    ca, cb = a.sum(0), b.sum(0)
    pa = ca.reshape(ca.shape[0], -1).argmax(1)
    pb = cb.reshape(cb.shape[0], -1).argmax(1)
    return {
        "agreement": float(eq.float().mean()),
        "identical": bool(eq.all()),
        "mismatched": int((~eq).sum()),
        "total": int(eq.numel()),
        "spikes_reference": float(a.sum()),
        "spikes_candidate": float(b.sum()),
        "count_agreement": float((ca == cb).float().mean()),
        "prediction_agreement": float((pa == pb).float().mean()),
    }


def random_inputs(input_shape: Sequence[int], steps: int = 25, batch: int = 16, seed: int = 0,
                  scale: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Deterministic random input sequence ``[steps, batch, *input_shape]``, uniform in
    ``[0, scale)``."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand((int(steps), int(batch), *[int(s) for s in input_shape]),
                      generator=g, dtype=dtype) * scale


AUTO_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def compare_networks(reference, candidate, input_shape: Sequence[int], steps: int = 25,
                     batch: int = 16, seed: int = 0, scale: Union[float, str] = "auto",
                     x: Optional[Tensor] = None) -> Dict[str, float]:
    """Run both spikelfp networks on the same random input and compare the output spikes.

    The input is uniform in ``[0, scale)``. ``scale="auto"`` takes the first of 1, 2, 4, ..., 32
    at which the reference network's output fires at a rate >= 1 % (else the most active one),
    so that a silent network does not make the comparison trivially pass. The result has the
    keys of :func:`spike_agreement` plus ``scale`` and ``output_rate``.
    """
    param = next(iter(reference.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    cparam = next(iter(candidate.parameters()), None)
    cdtype = cparam.dtype if cparam is not None else dtype
    with torch.no_grad():
        if x is not None:
            a, used = reference(x.to(dtype)), float("nan")
        elif scale == "auto":
            base = random_inputs(input_shape, steps, batch, seed, 1.0, dtype)
            best = None
            for s in AUTO_SCALES:
                out = reference(base * s)
                rate = float(out.float().mean())
                if best is None or rate > best[0]:
                    best = (rate, s, out)
                if rate >= 0.01:
                    best = (rate, s, out)
                    break
            _, used, a = best
            x = base * used
        else:
            used = float(scale)
            x = random_inputs(input_shape, steps, batch, seed, used, dtype)
            a = reference(x)
        b = candidate(x.to(cdtype))
    res = spike_agreement(a, b)
    res["scale"] = used
    res["output_rate"] = float(a.float().mean())
    return res


def nir_roundtrip_agreement(net, input_shape, steps: int) -> dict:
    """The exported-network agreement ``spikelfp compare`` reports: ``net`` -> NIR -> spikelfp, output
    spikes of both on the random inputs of ``spikelfp export --verify`` (32 samples, T = ``steps``).
    ``applies`` False (with the one-line reason) for a net NIR 1.0 cannot express exactly (reset
    "subtract", ...)."""
    if any(getattr(m, "reset", None) == "subtract" for m in net):
        return {"applies": False, "reason": "NIR 1.0 has no reset 'subtract' (train with reset 'zero' "
                                            "for an exact export)"}
    try:
        graph = to_nir(net, tuple(input_shape), time_steps=steps)
    except ValueError as e:
        return {"applies": False, "reason": "NIR: " + str(e).splitlines()[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = from_nir(graph)
    dtype = next(net.parameters()).dtype
    res = compare_networks(net, back.to(dtype), tuple(input_shape), steps=steps, batch=32, seed=0)
    return {"applies": True, "format": "nir", **res}
