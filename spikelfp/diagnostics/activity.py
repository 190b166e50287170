"""Activity diagnostics: spike rates, silent / saturated neurons, SynOps next to ANN MACs.

Everything is counted per *synaptic layer* (a layer with ``kind == "synaptic"``: its neurons are
the LIF population behind the weights) and for the whole network.

Definitions (all on one evaluation set of ``n`` samples and ``T`` steps):

- spike rate of a neuron: its spikes / (n * T), i.e. the mean over samples and steps;
- silent neuron: never spikes on the evaluation set (rate exactly 0);
- saturated neuron: spikes at every step of every sample (rate exactly 1);
- rate over time: for each step t, spikes at t / (n * neurons);
- spikes per sample: all spikes of the layer over the T steps, divided by n;
- events at a synaptic layer's input: the nonzero entries of its input over the T steps (for a
  layer fed by a LIF layer these are that layer's spikes, after any pooling / flattening; a
  constant input frame counts once per step, T times);
- fan-out of an input element: the number of synapses it has into this layer (``out_features``
  for a dense layer; for a convolution, the number of kernel positions that read the element
  times ``out_channels / groups``, padding excluded);
- SynOps per sample: sum over input elements of events * fan-out, divided by n. It equals
  "spikes x fan-out" of the layer below;
- ANN MACs: the same layer run densely. ``ann_macs_per_step`` is the number of synapses (the
  sum of the fan-out map, i.e. multiply-accumulates of one dense pass; for Linear in*out);
  ``ann_macs_per_sample`` is that times T (the same network evaluated as an ANN at every step).
  ``synops / ann_macs_per_sample`` is therefore the event density weighted by fan-out.
- recurrent layers (``recurrent_weight`` V, N x N): each spike at steps 1..T-1 also reaches the N
  neurons of its own layer at the next step, so ``recurrent_synops_per_sample`` = those spikes * N
  / n is added to the layer's ``synops_per_sample`` (and to the network's, the recurrent input
  being spikes), and N*N recurrent synapses to ``ann_macs_per_step``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor


# ---------------------------------------------------------------------------- layer helpers

def synaptic_layers(net) -> List[Tuple[int, str, torch.nn.Module]]:
    """``(index in the net, child name, module)`` of every synaptic layer, in order."""
    return [(i, name, m) for i, (name, m) in enumerate(net.named_children())
            if getattr(m, "kind", "") == "synaptic"]


def layer_kind(layer) -> str:
    """``"conv"`` for 2-D convolutions (a ``kernel_size`` attribute), else ``"linear"``."""
    return "conv" if hasattr(layer, "kernel_size") else "linear"


def layer_label(name: str, layer) -> str:
    """A short human label, e.g. ``"1 LIFLinear 64->128"`` or ``"0 LIFConv2d 1->12 k5"``."""
    cls = type(layer).__name__
    if layer_kind(layer) == "conv":
        k = layer.kernel_size[0] if isinstance(layer.kernel_size, tuple) else layer.kernel_size
        return f"{name} {cls} {layer.in_channels}->{layer.out_channels} k{k}"
    return f"{name} {cls} {layer.in_features}->{layer.out_features}"


def fan_out_map(layer, in_shape: Sequence[int]) -> Tensor:
    """Number of synapses from each input element into ``layer`` (float64, shaped ``in_shape``).

    Dense: every input feeds ``out_features`` neurons. Conv2d: the count of (output position,
    output channel) pairs whose receptive field holds the element, computed exactly as the
    transposed convolution of all-ones (so borders, stride, dilation and groups are honoured;
    padded positions are not synapses).
    """
    in_shape = tuple(int(s) for s in in_shape)
    if layer_kind(layer) == "linear":
        return torch.full(in_shape, float(layer.out_features), dtype=torch.float64)
    if len(in_shape) != 3:
        raise ValueError(f"fan_out_map: a conv layer needs an input shape (C, H, W), got {in_shape}")
    w = torch.ones(layer.weight.shape, dtype=torch.float64)
    probe = torch.zeros((1,) + in_shape, dtype=torch.float64)
    out = torch.nn.functional.conv2d(probe, w, None, layer.stride, layer.padding, layer.dilation,
                                     layer.groups)
    fan = torch.nn.grad.conv2d_input((1,) + in_shape, w, torch.ones_like(out), layer.stride,
                                     layer.padding, layer.dilation, layer.groups)
    return fan[0]


def dense_macs_per_step(layer, in_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one dense pass of ``layer`` (= number of synapses)."""
    return int(round(fan_out_map(layer, in_shape).sum().item()))


def synops(event_counts: Tensor, fan_out: Tensor) -> float:
    """Synaptic operations caused by ``event_counts`` (events per input element, summed over
    samples and steps) through synapses with the given ``fan_out`` map: sum(events * fan-out)."""
    if tuple(event_counts.shape) != tuple(fan_out.shape):
        raise ValueError(f"synops: event counts {tuple(event_counts.shape)} and fan-out "
                         f"{tuple(fan_out.shape)} differ in shape")
    return float((event_counts.double() * fan_out.to(event_counts.device, torch.float64)).sum().item())


# ---------------------------------------------------------------------------- pure measures

def neuron_rates(spikes: Tensor) -> Tensor:
    """Per-neuron spike rate of ``spikes [T, B, *neurons]``: mean over steps and samples."""
    return spikes.double().mean(dim=(0, 1))


def silent_mask(spikes: Tensor) -> Tensor:
    """Neurons that never spike in ``spikes [T, B, *neurons]``."""
    return spikes.sum(dim=(0, 1)) == 0


def saturated_mask(spikes: Tensor) -> Tensor:
    """Neurons that spike at every step of every sample in ``spikes [T, B, *neurons]``."""
    return (spikes != 0).all(dim=0).all(dim=0)


def rate_over_time(spikes: Tensor) -> Tensor:
    """Mean spike rate at each step: ``[T]`` (mean over samples and neurons)."""
    return spikes.double().flatten(2).mean(dim=(1, 2))


def spikes_per_sample(spikes: Tensor) -> Tensor:
    """Spikes of each sample over all steps and neurons: ``[B]``."""
    return spikes.double().flatten(2).sum(dim=(0, 2))


# ---------------------------------------------------------------------------- accumulator

class ActivityAccumulator:
    """Accumulates activity over the batches of an evaluation set.

    Call :meth:`update` with each forward trace of ``net`` (``net.run(...)``), then
    :meth:`result`. ``raster_samples`` keeps the spikes of the first few samples for raster plots.
    """

    def __init__(self, net, raster_samples: int = 3):
        self.net = net
        self.layers = synaptic_layers(net)
        if not self.layers:
            raise ValueError("activity: the network has no synaptic layers")
        self.raster_samples = int(raster_samples)
        self.n = 0
        self.correct = 0
        self.labelled = False
        self.T: Optional[int] = None
        L = len(self.layers)
        self.count: List[Optional[Tensor]] = [None] * L         # spikes per neuron
        self.full: List[Optional[Tensor]] = [None] * L          # samples with a spike at every step
        self.time: List[Optional[Tensor]] = [None] * L          # spikes per step
        self.per_sample: List[List[Tensor]] = [[] for _ in range(L)]
        self.events: List[Optional[Tensor]] = [None] * L        # nonzero inputs per input element
        self.rec_events: List[float] = [0.0] * L                # spikes that reach V (steps < T)
        self.in_binary: List[bool] = [True] * L
        self.in_shape: List[Optional[Tuple[int, ...]]] = [None] * L
        self._raster_parts: List[List[Tensor]] = [[] for _ in range(L)]
        self.kept = 0

    @staticmethod
    def _add(acc: Optional[Tensor], v: Tensor) -> Tensor:
        return v if acc is None else acc + v

    @torch.no_grad()
    def update(self, trace, prediction: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> None:
        """Add one batch. ``trace.records[i].spikes`` is ``[T, B, *neurons]``; the record's ``x``
        is the layer input ``[T, B, *in]`` or a constant frame ``[B, *in]``."""
        B = None
        for k, (i, _, _) in enumerate(self.layers):
            rec = trace.records[i]
            s = rec.spikes
            T, B = s.shape[0], s.shape[1]
            if self.T is None:
                self.T = T
            elif T != self.T:
                raise ValueError(f"activity: batches with different numbers of steps ({self.T} and {T})")
            self.count[k] = self._add(self.count[k], s.double().sum(dim=(0, 1)))
            self.full[k] = self._add(self.full[k], (s != 0).all(dim=0).double().sum(dim=0))
            self.time[k] = self._add(self.time[k], s.double().flatten(2).sum(dim=(1, 2)))
            self.per_sample[k].append(spikes_per_sample(s).cpu())
            x = rec.x
            if x.dim() == s.dim():          # a sequence [T, B, *in]
                ev = (x != 0).double().sum(dim=(0, 1))
                in_shape = tuple(x.shape[2:])
            else:                           # one constant frame [B, *in], applied at every step
                ev = (x != 0).double().sum(dim=0) * T
                in_shape = tuple(x.shape[1:])
            self.in_shape[k] = in_shape
            self.events[k] = self._add(self.events[k], ev)
            if getattr(self.layers[k][2], "recurrent_weight", None) is not None:
                self.rec_events[k] += float((s[:-1] != 0).sum().item())
            if self.in_binary[k]:
                self.in_binary[k] = bool(((x == 0) | (x == 1)).all().item())
            if self.kept < self.raster_samples:
                take = min(self.raster_samples - self.kept, B)
                self._raster_parts[k].append((s[:, :take] != 0).flatten(2).cpu())
        if B is not None:
            self.kept = min(self.raster_samples, self.kept + B)
            self.n += B
        if prediction is not None and labels is not None:
            self.correct += int((prediction == labels).sum().item())
            self.labelled = True

    def result(self) -> Dict[str, Any]:
        """Per-layer and whole-network activity (JSON-serializable), see the module docstring."""
        if self.n == 0:
            raise ValueError("activity: the evaluation set is empty")
        n, T = self.n, self.T
        layers = []
        for k, (i, name, layer) in enumerate(self.layers):
            count = self.count[k].cpu()
            neurons = count.numel()
            rates = count / (n * T)
            fan = fan_out_map(layer, self.in_shape[k])
            ev = self.events[k].cpu()
            ops = synops(ev, fan)
            macs_step = float(fan.sum().item())
            V = getattr(layer, "recurrent_weight", None)
            rec_ops = self.rec_events[k] * V.shape[0] if V is not None else 0.0
            ops += rec_ops
            macs_step += float(V.numel()) if V is not None else 0.0
            per_sample = torch.cat(self.per_sample[k])
            # the input comes from the nearest synaptic layer below, or from the encoded input
            src = self.layers[k - 1][1] if k > 0 else "input"
            layers.append({
                "name": name, "index": i, "label": layer_label(name, layer), "type": layer_kind(layer),
                "neurons": neurons, "shape": list(count.shape), "is_output": k == len(self.layers) - 1,
                "rate": float(count.sum().item() / (n * T * neurons)),
                "silent_fraction": float((count == 0).double().mean().item()),
                "silent_count": int((count == 0).sum().item()),
                "saturated_fraction": float((self.full[k].cpu() == n).double().mean().item()),
                "saturated_count": int((self.full[k].cpu() == n).sum().item()),
                "rate_over_time": (self.time[k].cpu() / (n * neurons)).tolist(),
                "spikes_per_sample": float(per_sample.mean().item()),
                "spikes_per_sample_std": float(per_sample.std(unbiased=False).item()),
                "input_source": src,
                "input_binary": self.in_binary[k],
                "input_shape": list(self.in_shape[k]),
                "input_events_per_sample": float(ev.sum().item() / n),
                "mean_fan_out": float(fan.mean().item()),
                "synops_per_sample": ops / n,
                "recurrent_synops_per_sample": rec_ops / n,
                "ann_macs_per_step": macs_step,
                "ann_macs_per_sample": macs_step * T,
                "synops_over_ann_macs": (ops / n) / (macs_step * T) if macs_step else 0.0,
                "neuron_rates": rates.flatten().tolist(),
            })
        total_neurons = sum(d["neurons"] for d in layers)
        hidden = [d for d in layers if not d["is_output"]]
        hid_neurons = sum(d["neurons"] for d in hidden)
        spiking_in = [d for d in layers if d["input_source"] != "input"]
        net = {
            "n": n, "steps": T,
            "neurons": total_neurons,
            "rate": sum(d["rate"] * d["neurons"] for d in layers) / total_neurons,
            "hidden_neurons": hid_neurons,
            "hidden_rate": (sum(d["rate"] * d["neurons"] for d in hidden) / hid_neurons) if hid_neurons else None,
            "silent_fraction": sum(d["silent_count"] for d in layers) / total_neurons,
            "hidden_silent_fraction": (sum(d["silent_count"] for d in hidden) / hid_neurons) if hid_neurons else None,
            "saturated_fraction": sum(d["saturated_count"] for d in layers) / total_neurons,
            "spikes_per_sample": sum(d["spikes_per_sample"] for d in layers),
            "hidden_spikes_per_sample": sum(d["spikes_per_sample"] for d in hidden),
            "synops_per_sample": sum(d["synops_per_sample"] for d in spiking_in)
            + sum(d["recurrent_synops_per_sample"] for d in layers if d["input_source"] == "input"),
            "recurrent_synops_per_sample": sum(d["recurrent_synops_per_sample"] for d in layers),
            "input_ops_per_sample": sum(d["synops_per_sample"] - d["recurrent_synops_per_sample"]
                                        for d in layers if d["input_source"] == "input"),
            "ann_macs_per_step": sum(d["ann_macs_per_step"] for d in layers),
            "ann_macs_per_sample": sum(d["ann_macs_per_sample"] for d in layers),
            "spiking_ann_macs_per_sample": sum(d["ann_macs_per_sample"] for d in spiking_in),
        }
        m = net["spiking_ann_macs_per_sample"]
        net["synops_over_ann_macs"] = net["synops_per_sample"] / m if m else None
        out = {"layers": layers, "network": net}
        if self.labelled:
            out["accuracy"] = self.correct / n
        return out

    def raster(self) -> List[Tensor]:
        """Spikes of the kept samples per synaptic layer: ``[T, samples, neurons]`` (bool)."""
        return [torch.cat(r, dim=1) if r else torch.zeros(0, dtype=torch.bool) for r in self._raster_parts]
