"""Layers: thin ``torch.nn.Module`` wrappers over :mod:`spikelfp.core`.

Layers only run forward; they know nothing about any trainer. Each works on whole sequences:
``run(x)`` takes the input ``[T, B, ...]`` (or one constant frame ``[B, ...]`` with ``steps``) and
returns the output sequence and a :class:`LayerRecord` (input, membrane, spikes) that trainers
read. ``step(x_t, state)`` advances one time step (for trainers that keep no trace over T).
A synaptic layer exposes its neuron parameters through :meth:`neuron_parameters`.

Synaptic layers (:class:`LIFLinear`, :class:`LIFConv2d`, :class:`ReLULinear`) hold ``weight``
and ``bias`` parameters shaped as in ``torch.nn.Linear`` / ``torch.nn.Conv2d``, and ``beta`` /
``threshold`` buffers (scalar or per neuron). Stateless layers (:class:`Flatten`,
:class:`AvgPool2d`, :class:`MaxPool2d`) act per frame and keep a constant input constant.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as Fn

from ..core import fused
from ..core.fused import LiveColumns
from ..core.cuba import CubaParameters, check_alpha, cuba_scan, cuba_step
from ..core.lif import RESETS, LIFParameters, LIFState, check_lif_parameters, lif_scan, lif_step
from ..core.synapse import Conv2dOps, LinearOps

Tensor = torch.Tensor
#: a compact (uint8) input with more elements than this is turned into the current a slice of
#: steps (of about this many elements) at a time: never a whole float copy of it
COMPACT_WHOLE = 1 << 18


def check_neuron_shapes(layer: nn.Module, names, n_out: int, dense: bool) -> None:
    """One-line ValueError if a per-neuron buffer (beta, threshold, alpha) of ``layer`` has a shape
    that is neither a scalar nor per neuron: ``(n_out,)`` for dense layers; ``(C_out,)`` or
    ``(C_out, H_out, W_out)`` for conv layers."""
    for name in names:
        p = getattr(layer, name)
        if p.numel() == 1 or (tuple(p.shape) == (n_out,) if dense else p.shape[0] == n_out):
            continue
        allowed = f"shape ({n_out},)" if dense else f"({n_out},) or ({n_out}, H_out, W_out)"
        raise ValueError(f"{type(layer).__name__}: {name} has shape {tuple(p.shape)}; use a scalar "
                         f"or {allowed}")


def init_conv_synapses(layer: nn.Module, in_channels, out_channels, kernel_size, stride, padding,
                       dilation, groups, bias, device, dtype) -> None:
    """Give a conv layer ``weight``/``bias`` initialized as ``torch.nn.Conv2d`` and its ops."""
    ref = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, device=device, dtype=dtype)
    if isinstance(ref.padding, str):
        raise ValueError(f"{type(layer).__name__}: padding must be an int or a pair, not a string")
    layer.in_channels, layer.out_channels = in_channels, out_channels
    layer.kernel_size, layer.stride = ref.kernel_size, ref.stride
    layer.padding, layer.dilation, layer.groups = ref.padding, ref.dilation, groups
    layer.weight, layer.bias = ref.weight, ref.bias
    layer.ops = Conv2dOps(ref.stride, ref.padding, ref.dilation, groups)


class LayerRecord(NamedTuple):
    """What the forward keeps of one layer (what trainers read).

    x: the layer's input, ``[T, B, *in]``, or one frame ``[B, *in]`` if constant over time.
    membrane, spikes: v_t and s_t ``[T, B, *out]`` (ReLU mode: pre-activation and activation;
    None for stateless layers).

    Compact records (``run(..., compact=True)``, opt-in; LFP and evaluation use it): on the
    no-grad Heaviside path LIF layers store their spikes as ``torch.uint8`` 0/1 (1 byte per
    element instead of 4), and the next layer's ``x`` is that same tensor. Otherwise (the
    default, autograd, ReLU mode) spikes are in the layer's dtype. Integer arithmetic works on
    compact spikes (``1 - s``, ``s * v``); for a mean or a matmul convert with
    ``spikes.to(dtype)``; count them with ``torch.count_nonzero`` (``sum()`` makes an int64 copy).
    """

    x: Tensor
    membrane: Optional[Tensor] = None
    spikes: Optional[Tensor] = None
    #: :meth:`Sequential.stream` only: the step's feed-forward synaptic current ``W x_t + b``
    #: ``[B, *out]`` of a synaptic layer (for a constant input's first layer the one tensor
    #: computed once); None elsewhere.
    current: Optional[Tensor] = None
    #: the columns of ``x`` that hold a spike and ``x`` gathered to them
    #: (:class:`~spikelfp.core.fused.LiveColumns`), where the no-grad CPU forward of a dense
    #: layer with few outputs ran its product over them only; None elsewhere.
    live: Optional[LiveColumns] = None


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class _Synaptic(nn.Module):
    """Common part of a synaptic map followed by a LIF (or ReLU) population."""

    spiking = True
    kind = "synaptic"
    compact_input = True  # takes uint8 spikes as input (converted for the current)
    compact_output = True  # run(..., compact=True) stores uint8 spikes

    def __init__(self, beta, threshold, reset: str, dtype=None):
        super().__init__()
        check_lif_parameters(beta, threshold, reset, where=type(self).__name__)
        self.reset = reset
        # In the layer's dtype from the start: a float64 layer must not see beta rounded to float32.
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.register_buffer("beta", torch.as_tensor(beta, dtype=dtype).clone())
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=dtype).clone())

    # subclasses set self.ops and implement _check_input / _neuron_param
    def _neuron_param(self, p: Tensor) -> Tensor:
        return p

    def neuron_parameters(self) -> LIFParameters:
        """beta, threshold (shaped to broadcast over the neuron dims ``[*out]``) and reset."""
        return LIFParameters(self._neuron_param(self.beta), self._neuron_param(self.threshold),
                             self.reset)

    def current(self, x: Tensor, live: Optional[LiveColumns] = None) -> Tensor:
        """Synaptic current I = W x + b for a batch of frames (any leading dims); a non-float
        input (compact uint8 spikes) is converted to the weight's dtype. A dense layer with few
        outputs takes the compiled kernel where it can (:func:`spikelfp.core.fused.narrow_linear`:
        no gradient, CPU; compact input read as it is), over the columns ``live`` of x only
        where given (:meth:`live_input`)."""
        self._check_input(x)
        if isinstance(self.ops, LinearOps) and fused.narrow_usable(x, self.weight, self.bias):
            return fused.narrow_linear(x, self.weight, self.bias, live)
        if x.is_floating_point():
            return self.ops.forward(x, self.weight, self.bias)
        dtype = self.weight.dtype
        if x.numel() <= COMPACT_WHOLE or x.dim() < 3:
            return self.ops.forward(x.to(dtype), self.weight, self.bias)
        # a long compact sequence: converted a slice of steps at a time (no full float copy)
        step = max(1, COMPACT_WHOLE // max(1, x[0].numel()))
        return torch.cat([self.ops.forward(x[a:a + step].to(dtype), self.weight, self.bias)
                          for a in range(0, x.shape[0], step)])

    def live_input(self, x: Tensor) -> Optional[LiveColumns]:
        """For a sequence ``x`` ``[T, B, K]`` into a dense layer with few outputs (the compiled
        no-grad CPU product) with finite weights: the columns of x that hold a spike and x
        gathered to them (:func:`spikelfp.core.fused.gather_live`), when at most
        ``LIVE_GATHER_MAX`` of them do (input neurons that never spiked add nothing to the
        current); ``fused.NOT_SPARSE`` where it looked and leaves nothing out (kept in the record,
        so that the backward does not look again); else None."""
        W, b = self.weight, self.bias
        if not (isinstance(self.ops, LinearOps) and x.dim() == 3 and fused.narrow_usable(x, W, b)):
            return None
        live = fused.gather_live(x, fused.LIVE_GATHER_MAX)
        # 0 * inf is NaN in the whole product: with non-finite weights nothing is left out
        return live if live is None or bool(torch.isfinite(W.sum())) else fused.NOT_SPARSE

    def run(self, x: Tensor, steps: Optional[int] = None,
            spike_fn: Optional[Callable[[Tensor], Tensor]] = None,
            compact: bool = False) -> Tuple[Tensor, LayerRecord]:
        """Run the layer on ``x`` ([T, B, *in], or a constant frame [B, *in] with ``steps``).
        ``compact``: spikes as uint8 on the no-grad Heaviside path (see :class:`LayerRecord`)."""
        live = self.live_input(x)
        current = self.current(x, live)  # one matmul/convolution for all rows
        beta, theta, _ = self.neuron_parameters()
        if not self.spiking:
            v = current if steps is None else current.unsqueeze(0).expand(steps, *current.shape)
            a = torch.relu(v) if self.relu else v
            return a, LayerRecord(x, v, a, live=live)
        s, v = lif_scan(current, beta, theta, self.reset, steps=steps, spike_fn=spike_fn,
                        compact=compact)
        return s, LayerRecord(x, v, s, live=live)

    def forward(self, x: Tensor, steps: Optional[int] = None) -> Tensor:
        """Output spikes ``[T, B, *out]`` for an input sequence (or constant frame with ``steps``)."""
        return self.run(x, steps)[0]

    def step(self, x_t: Tensor, state: Optional[LIFState] = None,
             current: Optional[Tensor] = None) -> Tuple[Tensor, LIFState]:
        """One time step: input frame ``x_t`` ``[B, *in]`` (or its precomputed ``current``) and the
        previous :class:`LIFState` (None at t = 0) -> (output ``[B, *out]``, new state). Same
        arithmetic as :meth:`run`, so the outputs are bit-identical step by step."""
        i_t = self.current(x_t) if current is None else current
        if not self.spiking:
            a = torch.relu(i_t) if self.relu else i_t
            return a, LIFState(i_t, a)
        beta, theta, reset = self.neuron_parameters()
        st = lif_step(i_t, state, beta, theta, reset)
        return st.spikes, st

    def extra_repr(self) -> str:
        def show(p):
            return f"{p.item():g}" if p.numel() == 1 else f"tensor{tuple(p.shape)}"

        if not self.spiking:
            return ""
        return f"beta={show(self.beta)}, threshold={show(self.threshold)}, reset={self.reset!r}"


class LIFLinear(_Synaptic):
    """Dense synapses + LIF neurons: ``I = x W^T + b``, then the LIF membrane.

    Args:
        in_features, out_features, bias: as ``torch.nn.Linear`` (same init and parameter shapes).
        beta: decay in (0, 1]; scalar or per-neuron tensor ``[out_features]``.
        threshold: theta > 0; scalar or per-neuron tensor ``[out_features]``.
        reset: ``"subtract"`` (default) or ``"zero"``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, beta=0.9,
                 threshold=1.0, reset: str = "subtract", device=None, dtype=None):
        super().__init__(beta, threshold, reset, dtype=dtype)
        ref = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = ref.weight
        self.bias = ref.bias
        self.ops = LinearOps()
        check_neuron_shapes(self, ("beta", "threshold"), out_features, dense=True)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}({self.in_features}->{self.out_features}): input shape "
                f"{tuple(x.shape)} must end in {self.in_features} features"
            )

    def extra_repr(self) -> str:
        base = f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
        rest = super().extra_repr()
        return f"{base}, {rest}" if rest else base


class ReLULinear(LIFLinear):
    """Non-spiking mode of the same layer: ``a = relu(x W^T + b)`` (or identity with
    ``relu=False``), no membrane, meant for T = 1. The test bed for Theorem 1."""

    spiking = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, relu: bool = True,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.relu = relu

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, relu={self.relu}"


class LIFConv2d(_Synaptic):
    """2-D convolution synapses + LIF neurons (inputs ``[..., C, H, W]``).

    ``beta`` / ``threshold``: scalar, per channel ``[C_out]``, or per neuron ``[C_out, H', W']``.
    Other arguments as ``torch.nn.Conv2d`` (zero padding only).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, beta=0.9, threshold=1.0,
                 reset: str = "subtract", device=None, dtype=None):
        super().__init__(beta, threshold, reset, dtype=dtype)
        init_conv_synapses(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                           groups, bias, device, dtype)
        check_neuron_shapes(self, ("beta", "threshold"), out_channels, dense=False)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _neuron_param(self, p: Tensor) -> Tensor:
        return p.reshape(-1, 1, 1) if p.dim() == 1 else p

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 4 or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"LIFConv2d({self.in_channels}->{self.out_channels}): input shape {tuple(x.shape)} "
                f"must be [..., {self.in_channels}, H, W]"
            )

    def extra_repr(self) -> str:
        base = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")
        return f"{base}, {super().extra_repr()}"


class _Stateless(nn.Module):
    """A per-frame map without parameters (keeps a constant input constant)."""

    spiking = False
    kind = "stateless"
    compact_input = False  # Sequential.run hands compact spikes over as floats

    def _apply_frames(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, x: Tensor, steps: Optional[int] = None, spike_fn=None):
        return self._apply_frames(x), LayerRecord(x)

    def step(self, x_t: Tensor, state=None, current=None):
        """One frame through the map; no state."""
        return self._apply_frames(x_t), None

    def forward(self, x: Tensor, steps: Optional[int] = None) -> Tensor:
        return self.run(x, steps)[0]


class Flatten(_Stateless):
    """Flatten each frame: ``[T, B, *frame] -> [T, B, prod(frame)]``. ``frame_dims`` is the number
    of trailing dimensions that form one frame (3 for C, H, W)."""

    compact_input = True  # a reshape: compact spikes stay compact

    def __init__(self, frame_dims: int = 3):
        super().__init__()
        self.frame_dims = frame_dims

    def _apply_frames(self, x: Tensor) -> Tensor:
        if x.dim() < self.frame_dims + 1:
            raise ValueError(f"Flatten: input shape {tuple(x.shape)} has fewer than "
                             f"{self.frame_dims} frame dimensions after the batch")
        return x.flatten(start_dim=x.dim() - self.frame_dims)



class _Pool(_Stateless):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)

    def _rows(self, x: Tensor, fn) -> Tensor:
        if x.dim() < 4:
            raise ValueError(f"{type(self).__name__}: input shape {tuple(x.shape)} must be [..., C, H, W]")
        lead = x.shape[:-3]
        out = fn(x.reshape(-1, *x.shape[-3:]))
        return out.reshape(*lead, *out.shape[1:])

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(_Pool):
    """Average pooling of each frame; LFP treats it as a fixed linear layer (epsilon rule)."""

    def _apply_frames(self, x: Tensor) -> Tensor:
        return self._rows(x, lambda v: Fn.avg_pool2d(v, self.kernel_size, self.stride, self.padding))



class MaxPool2d(_Pool):
    """Max pooling of each frame (on spikes)."""

    def _apply_frames(self, x: Tensor) -> Tensor:
        return self._rows(x, lambda v: Fn.max_pool2d(v, self.kernel_size, self.stride, self.padding))


# ----------------------------------------------------------------------------- CUBA / recurrent

class _Cuba(_Synaptic):
    """A synaptic map followed by a current-based (CUBA) LIF population, optionally with recurrent
    synapses V from the population's own spikes of the previous step (dense layers only):
    ``i_t = (alpha i_{t-1} + (W x_t + b)) + (V s_{t-1} + b_V)``, ``v_t = beta v_{t-1} + i_t - reset_t``
    (:mod:`spikelfp.core.cuba`). ``alpha`` is a buffer like ``beta`` (scalar or per neuron); with
    alpha = 0 everywhere the layer keeps no current state. ``current`` (as in the LIF layers) is
    the feed-forward part W x + b."""

    compact_input = False  # the CUBA feedback reads its input as numbers
    compact_output = False

    def _init_alpha(self, alpha, dtype) -> None:
        check_alpha(alpha, where=type(self).__name__)
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.register_buffer("alpha", torch.as_tensor(alpha, dtype=dtype).clone())

    def synaptic_decay(self) -> Optional[Tensor]:
        """alpha shaped to broadcast over the neuron dims, or None when it is 0 everywhere (no
        current state: the layer is a plain, or recurrent, LIF)."""
        if not bool((self.alpha != 0).any()):
            return None
        return self._neuron_param(self.alpha)

    def cuba_parameters(self) -> CubaParameters:
        """beta, threshold, reset (as :meth:`neuron_parameters`) and alpha (:meth:`synaptic_decay`)."""
        beta, theta, reset = self.neuron_parameters()
        return CubaParameters(beta, theta, reset, self.synaptic_decay())

    def recurrent_parameters(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(V, b_V), or (None, None) for a feed-forward layer."""
        return getattr(self, "recurrent_weight", None), getattr(self, "recurrent_bias", None)

    def run(self, x: Tensor, steps: Optional[int] = None,
            spike_fn: Optional[Callable[[Tensor], Tensor]] = None) -> Tuple[Tensor, LayerRecord]:
        """Run the layer on ``x`` ([T, B, *in], or a constant frame [B, *in] with ``steps``)."""
        current = self.current(x)
        beta, theta, reset, alpha = self.cuba_parameters()
        V, bV = self.recurrent_parameters()
        s, v = cuba_scan(current, alpha, beta, theta, reset, steps=steps, spike_fn=spike_fn,
                         recurrent_weight=V, recurrent_bias=bV)
        return s, LayerRecord(x, v, s)

    def step(self, x_t: Tensor, state=None, current: Optional[Tensor] = None):
        """One time step -> (spikes ``[B, *out]``, :class:`~spikelfp.core.cuba.CubaState`); the
        arithmetic of :meth:`run`, so the outputs are bit-identical step by step."""
        i_t = self.current(x_t) if current is None else current
        beta, theta, reset, alpha = self.cuba_parameters()
        V, bV = self.recurrent_parameters()
        st = cuba_step(i_t, state, alpha, beta, theta, reset, V, bV)
        return st.spikes, st

    def extra_repr(self) -> str:
        a = self.alpha
        shown = f"{a.item():g}" if a.numel() == 1 else f"tensor{tuple(a.shape)}"
        return f"{super().extra_repr()}, alpha={shown}"


class CubaLIFLinear(_Cuba):
    """Dense synapses + current-based LIF neurons, optionally recurrent.

    Args:
        in_features, out_features, bias: as ``torch.nn.Linear`` (same init and parameter shapes).
        beta, threshold, reset: as :class:`LIFLinear`.
        alpha: synaptic-current decay in [0, 1); scalar or per-neuron ``[out_features]``.
        recurrent: add recurrent weights ``recurrent_weight`` V ``[out, out]`` (and, with
            ``recurrent_bias=True``, ``recurrent_bias`` b_V ``[out]``), initialized as
            ``torch.nn.Linear(out, out)``, as snnTorch's ``RLeaky``/``RSynaptic(all_to_all=True)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, beta=0.9,
                 threshold=1.0, reset: str = "subtract", alpha=0.0, recurrent: bool = False,
                 recurrent_bias: bool = True, device=None, dtype=None):
        super().__init__(beta, threshold, reset, dtype=dtype)
        self._init_alpha(alpha, dtype)
        ref = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight, self.bias = ref.weight, ref.bias
        self.recurrent = bool(recurrent)
        if self.recurrent:
            rec = nn.Linear(out_features, out_features, bias=recurrent_bias, device=device,
                            dtype=dtype)
            self.recurrent_weight, self.recurrent_bias = rec.weight, rec.bias
        self.ops = LinearOps()
        check_neuron_shapes(self, ("beta", "threshold", "alpha"), out_features, dense=True)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    _check_input = LIFLinear._check_input

    def extra_repr(self) -> str:
        base = f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
        return f"{base}, {super().extra_repr()}, recurrent={self.recurrent}"


class CubaLIFConv2d(_Cuba):
    """2-D convolution synapses + current-based LIF neurons (feed-forward).

    ``alpha``, ``beta``, ``threshold``: scalar, per channel ``[C_out]`` or per neuron
    ``[C_out, H', W']``; other arguments as :class:`LIFConv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, beta=0.9, threshold=1.0,
                 reset: str = "subtract", alpha=0.0, device=None, dtype=None):
        super().__init__(beta, threshold, reset, dtype=dtype)
        self._init_alpha(alpha, dtype)
        init_conv_synapses(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                           groups, bias, device, dtype)
        self.recurrent = False
        check_neuron_shapes(self, ("beta", "threshold", "alpha"), out_channels, dense=False)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    _neuron_param = LIFConv2d._neuron_param
    _check_input = LIFConv2d._check_input

    def extra_repr(self) -> str:
        base = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")
        return f"{base}, {super().extra_repr()}"


__all__ = [
    "LayerRecord", "LIFLinear", "ReLULinear", "LIFConv2d", "Flatten", "AvgPool2d", "MaxPool2d",
    "CubaLIFLinear", "CubaLIFConv2d", "RESETS",
]
