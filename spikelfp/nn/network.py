"""A feed-forward spiking network that runs whole sequences layer by layer."""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn as nn

from ..core.readout import predict
from .layers import LayerRecord

Tensor = torch.Tensor


class NetworkTrace(NamedTuple):
    """Everything one forward pass produced.

    output: the last layer's output ``[T, B, C]`` (spikes, or activations in ReLU mode).
    membrane: the last layer's membrane ``[T, B, C]`` (used to break ties in predictions).
    records: one :class:`LayerRecord` per layer, in order.
    """

    output: Tensor
    membrane: Optional[Tensor]
    records: List[LayerRecord]


class Sequential(nn.Sequential):
    """A stack of spikelfp layers run over a whole sequence.

    ``net(x)`` takes a sequence ``[T, B, ...]``; ``net(x, steps=T)`` takes one frame ``[B, ...]``
    that is constant over time (constant encoder): layers before the first LIF layer then work on
    that one frame, and the first synaptic current is computed once, not T times. Each layer runs
    on all T*B rows at once (one matmul/convolution) followed by a scan over T.
    """

    def run(self, x: Tensor, steps: Optional[int] = None,
            spike_fn: Optional[Callable[[Tensor], Tensor]] = None) -> NetworkTrace:
        """Forward pass keeping the records the LFP backward needs."""
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"steps={steps!r} is not allowed; steps (T) must be an integer >= 1")
            if x.dim() < 2:
                raise ValueError(f"input shape {tuple(x.shape)}: a constant frame must be [B, ...]")
        elif x.dim() < 3:
            raise ValueError(
                f"input shape {tuple(x.shape)}: pass a sequence [T, B, ...], or one frame [B, ...] "
                f"with steps=T"
            )
        elif x.shape[0] < 1:
            raise ValueError("input has T=0 steps; T must be >= 1")
        if len(self) == 0:
            raise ValueError("Sequential: the network has no layers")
        records: List[LayerRecord] = []
        h = x
        const_steps = steps
        for layer in self:
            if const_steps is not None and getattr(layer, "kind", "") == "synaptic":
                h, rec = layer.run(h, steps=const_steps, spike_fn=spike_fn)
                const_steps = None  # from here on, the activity is a sequence
            elif const_steps is not None:
                h, rec = layer.run(h)  # stateless: stays one frame
            else:
                h, rec = layer.run(h, spike_fn=spike_fn)
            records.append(rec)
        if const_steps is not None:  # no synaptic layer at all
            h = h.unsqueeze(0).expand(const_steps, *h.shape)
        return NetworkTrace(h, records[-1].membrane, records)

    def forward(self, x: Tensor, steps: Optional[int] = None) -> Tensor:
        """Output spikes ``[T, B, C]``."""
        return self.run(x, steps).output

    @torch.no_grad()
    def predict(self, x: Tensor, steps: Optional[int] = None) -> Tensor:
        """Predicted classes ``[B]`` (spike count, ties by membrane sum)."""
        trace = self.run(x, steps)
        return predict(trace.output, trace.membrane)

    def synaptic_layers(self):
        """(index, layer) of every layer with parameters."""
        return [(i, m) for i, m in enumerate(self) if getattr(m, "kind", "") == "synaptic"]
