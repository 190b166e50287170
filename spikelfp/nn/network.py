"""A feed-forward spiking network that runs whole sequences layer by layer."""

from __future__ import annotations

from typing import Callable, Iterator, List, NamedTuple, Optional

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
            spike_fn: Optional[Callable[[Tensor], Tensor]] = None,
            compact: bool = False) -> NetworkTrace:
        """Forward pass over the whole sequence keeping every layer's record ([T, B, ...]).

        ``compact=True`` (no-grad Heaviside path only): the LIF layers' spikes are kept as uint8
        (see :class:`~spikelfp.nn.layers.LayerRecord`) and passed on as such to layers that take
        them (``compact_input``); others, and ``output``, get them as floats in the dtype of the
        membrane that produced them. Same spikes and membranes as the default."""
        _check_run_input(x, steps, len(self))
        records: List[LayerRecord] = []
        h = x
        const_steps = steps
        for layer in self:
            if _compact(h) and not getattr(layer, "compact_input", False):
                h = _as_numbers(h, records)
            kw = {"compact": True} if compact and getattr(layer, "compact_output", False) else {}
            if const_steps is not None and getattr(layer, "kind", "") == "synaptic":
                h, rec = layer.run(h, steps=const_steps, spike_fn=spike_fn, **kw)
                const_steps = None  # from here on, the activity is a sequence
            elif const_steps is not None:
                h, rec = layer.run(h)  # stateless: stays one frame
            else:
                h, rec = layer.run(h, spike_fn=spike_fn, **kw)
            records.append(rec)
        if const_steps is not None:  # no synaptic layer at all
            h = h.unsqueeze(0).expand(const_steps, *h.shape)
        if _compact(h):  # the output as floats (rewards, losses, readout)
            h = _as_numbers(h, records)
        return NetworkTrace(h, records[-1].membrane, records)

    def stream(self, x: Tensor, steps: Optional[int] = None) -> Iterator[List[LayerRecord]]:
        """Step-by-step forward that keeps no trace: yields, for t = 1..T, one
        :class:`LayerRecord` per layer holding that step's input ``[B, *in]``, membrane, spikes
        and (synaptic layers) feed-forward current ``[B, *out]`` (the values :meth:`run` records at t: bit-identical for a constant input; for a
        sequence up to the rounding of one matmul over B rows instead of T*B). With a constant input
        (``steps=T``) the layers up to the first synaptic one see one frame, whose current is
        computed once; their records then carry that frame as ``x`` at every step."""
        _check_run_input(x, steps, len(self))
        T = steps if steps is not None else x.shape[0]
        layers = list(self)
        first = _first_synaptic(layers) if steps is not None else 0
        const_current = None
        const_inputs: List[Tensor] = []
        if steps is not None:  # the constant prefix: computed once
            h = x
            for layer in layers[:first]:
                const_inputs.append(h)
                h = layer.step(h)[0]
            const_inputs.append(h)
            if first < len(layers):
                const_current = layers[first].current(h)
        states: List = [None] * len(layers)
        for t in range(T):
            h = const_inputs[first] if steps is not None else x[t]
            recs: List[LayerRecord] = [LayerRecord(c) for c in const_inputs[:first]]
            for i in range(first, len(layers)):
                cur = _step_current(layers[i], h, const_current if (i == first and steps is not None) else None)
                out, states[i] = layers[i].step(h, states[i], current=cur)
                st = states[i]
                recs.append(LayerRecord(h, st.membrane, st.spikes, cur) if st is not None else LayerRecord(h))
                h = out
            yield recs

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


def _compact(h: Tensor) -> bool:
    return h.dtype in (torch.uint8, torch.bool)


def _as_numbers(h: Tensor, records: List[LayerRecord]) -> Tensor:
    """Compact spikes as 0/1 in the dtype of the last membrane recorded."""
    dtype = next((r.membrane.dtype for r in reversed(records) if r.membrane is not None),
                 torch.get_default_dtype())
    return h.to(dtype)


def _first_synaptic(layers) -> int:
    return next((i for i, m in enumerate(layers) if getattr(m, "kind", "") == "synaptic"), len(layers))


def _check_run_input(x: Tensor, steps: Optional[int], n_layers: int) -> None:
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
    if n_layers == 0:
        raise ValueError("Sequential: the network has no layers")


def _step_current(layer: nn.Module, h: Tensor, known: Optional[Tensor]) -> Optional[Tensor]:
    """The feed-forward current of a synaptic layer at one step (``known`` if given); None for a
    stateless layer."""
    if known is not None or getattr(layer, "kind", "") != "synaptic":
        return known
    return layer.current(h)
