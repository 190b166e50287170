"""Update diagnostics: what ``updates.jsonl`` says about the updates, and a direct check of the
two LFP sparsity properties (spec section 4) on one batch.

``updates.jsonl`` (written by the training loop every ``log_updates_every`` steps) holds, per
logged step, for every parameter ``zero_fraction`` (fraction of exactly-zero entries of the
update direction G, or of -grad for surrogate steps) and |G| quantiles, and for LFP steps
``feedback_nonzero_fraction`` per layer (fraction of nonzero entries of the feedback r arriving
at that layer's output).

:func:`lfp_update_sparsity` runs one LFP pass and explains the exactly-zero entries of G:

- a weight that is exactly zero gets a zero update (G = |W| * ...);
- a hidden neuron that never spikes on the batch sends no feedback below and receives none from
  above (the layer above gets its spikes as input, which are 0), so its incoming weights and
  bias get zero updates, and so do the outgoing weights it feeds (their input is 0);
- an input element that is 0 on the whole batch gives its outgoing weights zero updates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .activity import layer_kind, synaptic_layers

Tensor = torch.Tensor

_STAT_KEYS = ("zero_fraction", "mean_abs", "median_abs", "p90_abs", "p99_abs", "max_abs")


def read_updates(path) -> List[Dict[str, Any]]:
    """The records of an ``updates.jsonl`` file (an empty list if the file is absent); lines that
    are not valid JSON (a write cut short) are skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def summarize_updates(rows: List[Dict[str, Any]], sizes: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """Series and summaries of the update records.

    Returns ``steps``; ``params`` {name: {stat: [value per record]}}; ``summary`` {name:
    {stat_mean, stat_last}}; ``feedback`` {layer: [nonzero fraction per record]} and
    ``feedback_summary`` {layer: {mean, last}}; ``weights_zero_fraction_mean``: the zero-update
    fraction of all weight tensors (not biases) together, averaged over the records: pooled by
    tensor size when ``sizes`` {name: numel} is given, else the plain mean over tensors.
    """
    out: Dict[str, Any] = {"records": len(rows), "steps": [r.get("step") for r in rows],
                           "trainers": sorted({r.get("trainer", "?") for r in rows}), "params": {},
                           "feedback": {}}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, dict) and k != "feedback_nonzero_fraction":
                d = out["params"].setdefault(k, {s: [] for s in _STAT_KEYS})
                for s in _STAT_KEYS:
                    d[s].append(v.get(s))
        fb = r.get("feedback_nonzero_fraction")
        if isinstance(fb, dict):
            for k, v in fb.items():
                out["feedback"].setdefault(k, []).append(v)
    summary: Dict[str, Any] = {}
    for name, d in out["params"].items():
        vals = {s: [x for x in d[s] if x is not None] for s in _STAT_KEYS}
        summary[name] = {f"{s}_{agg}": (sum(v) / len(v) if agg == "mean" else v[-1]) if v else None
                         for s, v in vals.items() for agg in ("mean", "last")}
    out["summary"] = summary
    out["feedback_summary"] = {k: {"mean": sum(v) / len(v), "last": v[-1]} for k, v in out["feedback"].items() if v}
    wz = [(k, summary[k]["zero_fraction_mean"]) for k in summary
          if k.endswith("weight") and summary[k]["zero_fraction_mean"] is not None]
    if wz and sizes and all(k in sizes for k, _ in wz):
        tot = sum(sizes[k] for k, _ in wz)
        out["weights_zero_fraction_mean"] = sum(v * sizes[k] for k, v in wz) / tot if tot else None
    else:
        out["weights_zero_fraction_mean"] = sum(v for _, v in wz) / len(wz) if wz else None
    return out


@torch.no_grad()
def lfp_update_sparsity(lfp, x: Tensor, y: Tensor, steps: Optional[int] = None) -> Dict[str, Any]:
    """One LFP pass (``lfp.compute``, nothing is applied) and the exactly-zero entries of G.

    Returns, per synaptic-layer weight and bias: ``zero_update_fraction``, and the fractions of
    entries whose zero update is explained by ``zero_weight`` (W is exactly 0), ``silent_neuron``
    (the entry belongs to a hidden neuron that never spiked on the batch: its incoming weights
    and bias), ``no_feedback`` (the entry belongs to a neuron that spiked but received zero
    feedback at every step and sample, e.g. because everything above it is silent, or an output
    neuron whose reward was 0), ``silent_input`` (its input element never was nonzero on the
    batch: the outgoing weights of a silent neuron or of an all-zero input), and ``other`` (zero
    for any other reason). The explanations are checked in that order (an entry is counted once). For conv
    layers a "neuron" is an output channel (silent at every position) and an "input" an input
    channel. Also the feedback-reaching fraction per layer and the pooled ``all_weights`` numbers.
    """
    net = lfp.network
    res = lfp.compute(x, y, steps, keep_feedback=True)
    layers = synaptic_layers(net)
    params: Dict[str, Any] = {}
    tot = {"numel": 0, "zero_update": 0, "zero_weight": 0, "silent_neuron": 0, "no_feedback": 0,
           "silent_input": 0, "other": 0}
    for k, (i, name, layer) in enumerate(layers):
        rec = res.trace.records[i]
        s, xin = rec.spikes, rec.x
        is_output = k == len(layers) - 1
        conv = layer_kind(layer) == "conv"
        # silent output units (neurons, or channels for conv) on this batch
        fired = (s != 0).flatten(0, 1)                     # [T*B, *out]
        fired = fired.any(dim=0)
        if conv:
            fired = fired.flatten(1).any(dim=1)            # per output channel
        silent_out = ~fired if not is_output else torch.zeros_like(fired)
        r = (res.feedback or {}).get(name)
        if r is not None:                                  # no feedback at any step or sample
            got = (r != 0).flatten(0, 1).any(dim=0)
            no_fb = ~(got.flatten(1).any(dim=1) if conv else got)
        else:
            no_fb = torch.zeros_like(fired)
        seq = xin.dim() == s.dim()
        active_in = (xin != 0).flatten(0, 1 if seq else 0).any(dim=0)   # [*in]
        if conv:
            active_in = active_in.flatten(1).any(dim=1)    # per input channel
        silent_in = ~active_in
        W = layer.weight.detach()
        for pname, p in (("weight", W), ("bias", layer.bias)):
            if p is None:
                continue
            key = f"{name}.{pname}"
            G = res.grads.get(key)
            if G is None:
                continue
            zero_upd = G == 0
            zw = (p.detach() == 0) & zero_upd
            if pname == "weight":
                sn = silent_out.reshape(-1, *([1] * (W.dim() - 1))).expand_as(W)
                nf = no_fb.reshape(-1, *([1] * (W.dim() - 1))).expand_as(W)
                if conv:
                    g = layer.groups
                    si = silent_in.reshape(g, -1)          # [groups, C_in/groups]
                    per_out = si.repeat_interleave(W.shape[0] // g, dim=0)  # [C_out, C_in/g]
                    si_map = per_out.reshape(W.shape[0], W.shape[1], 1, 1).expand_as(W)
                else:
                    si_map = silent_in.reshape(1, -1).expand_as(W)
            else:
                sn = silent_out.reshape(-1)
                nf = no_fb.reshape(-1)
                si_map = torch.zeros_like(sn)
            sn_e = zero_upd & ~zw & sn
            nf_e = zero_upd & ~zw & ~sn & nf
            si_e = zero_upd & ~zw & ~sn & ~nf & si_map
            other = zero_upd & ~zw & ~sn & ~nf & ~si_map
            n = p.numel()
            counts = {"numel": n, "zero_update": int(zero_upd.sum()), "zero_weight": int(zw.sum()),
                      "silent_neuron": int(sn_e.sum()), "no_feedback": int(nf_e.sum()),
                      "silent_input": int(si_e.sum()), "other": int(other.sum())}
            params[key] = {"numel": n,
                           "zero_update_fraction": counts["zero_update"] / n,
                           "zero_weight": counts["zero_weight"] / n,
                           "silent_neuron": counts["silent_neuron"] / n,
                           "no_feedback": counts["no_feedback"] / n,
                           "silent_input": counts["silent_input"] / n,
                           "other": counts["other"] / n,
                           "silent_neurons_in_batch": int(silent_out.sum()),
                           "no_feedback_neurons_in_batch": int(no_fb.sum()),
                           "counts": counts}
            if pname == "weight":
                for c in tot:
                    tot[c] += counts[c]
    n = tot["numel"] or 1
    pooled = {"numel": tot["numel"], "zero_update_fraction": tot["zero_update"] / n,
              "zero_weight": tot["zero_weight"] / n, "silent_neuron": tot["silent_neuron"] / n,
              "no_feedback": tot["no_feedback"] / n, "silent_input": tot["silent_input"] / n, "other": tot["other"] / n}
    fb = {k: float((r != 0).double().mean().item()) for k, r in (res.feedback or {}).items()}
    return {"batch": int(len(y)), "params": params, "all_weights": pooled,
            "feedback_nonzero_fraction": fb}
