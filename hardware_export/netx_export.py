"""A netx-native HDF5 file: what ``lava.lib.dl.netx.hdf5.Network`` loads unchanged for Loihi.

Only what Loihi's CUBA neuron runs is accepted: ``LIFLinear`` / ``LIFConv2d`` and
``CubaLIFLinear`` / ``CubaLIFConv2d`` layers with reset "zero" and one ``beta`` / ``threshold``
/ ``alpha`` per layer (a recurrent ``CubaLIFLinear`` becomes netx's ``dense_rec`` layer with
``weight_rec``), ``Flatten``, and ``AvgPool2d`` (stride = kernel, no padding), which is folded
into the next conv or flatten + dense layer (a linear map of the spikes: exact before
quantization). Everything is quantized to netx's integers, layer by layer, with one scale ``S``
(integer units per unit of spikelfp current)::

    W_int = 2 * round(W * S / s_x / 2)  even integers in [-256, 254] (8-bit signed mantissa k,
                                        W_int = 2 k, k in [-128, 127]: netx/slayer's grid)
    V_int = 2 * round(V * S / 2)        recurrent weights (their input is the layer's own 0/1
                                        spikes), same grid; netx file key ``weight_rec``
    bias  = round((b + b_V) * S)        13-bit signed bias mantissa, netx adds it as bias << 6
    vThMant = round(theta * S)          17-bit, the chip compares v > vThMant << 6
    vDecay = round((1 - beta) * 4096)   12-bit, v <- v * (4096 - vDecay) / 4096 (truncated)
    iDecay = round((1 - alpha) * 4096)  12-bit, u <- u * (4096 - iDecay) / 4096 (truncated);
                                        4096 (the current decays fully) for LIF layers

    S = s_x * min(S_w, 4095 / (max|b + b_V| * s_x), 131071 / (theta * s_x))
    S_w = 254 / (f * max|[W, s_x V]|), f in 0.50 ... 1.00 minimizing the squared error of
          [W, s_x V] on the grid (W and V share one scale, as netx's optimize_weight_bits runs
          on hstack(weight, weight_rec))

Bias and alpha: spikelfp adds b (and b_V) to the synaptic current i, which alpha filters
(``i_t = alpha i_{t-1} + W x_t + b + V s_{t-1} + b_V``), while Loihi adds its bias to v each
step, unfiltered. With alpha = 0 the two are the same and ``b + b_V`` is the Loihi bias. With
alpha > 0 a nonzero bias cannot be expressed (its share of the current grows as
``b (1 - alpha^t) / (1 - alpha)``); such a layer is refused rather than approximated: train it
without biases (config ``bias: false``, which also drops the zoo's recurrent b_V; by hand:
``bias=False, recurrent_bias=False``) or with alpha = 0.

where ``s_x`` is the input scale of the layer: 1 for spikes (binary, or event counts as graded
spikes), ``input_scale`` for the first layer when the input is a real value sent as graded
spikes (the constant encoder: payload ``round(x * input_scale)``). ``S`` multiplies weights,
bias and threshold together, so ``v > theta`` keeps its meaning; the only changes are the
rounding of each number (and, on the chip, the one-step synaptic delay per layer, see
:mod:`hardware_export.loihi_sim`).

Refused, with one line naming the layer and before anything is written (``ValueError``): reset
"subtract", max pooling, average pooling that cannot be folded, ReLU layers, per-neuron or
per-channel ``beta`` / ``threshold`` / ``alpha``, a nonzero bias (b or b_V) with alpha > 0, and
values netx cannot hold (:func:`check_ranges`). The
layout is documented in SCHEMA.md ("netx-native file").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ._common import (
    DECAY_UNITY,
    PathLike,
    atomic_write,
    check_output_path,
    collapse_neuron_param,
    describe_network,
    neuron_array,
    spikelfp_version,
    to_numpy,
)

NETX_FORMAT = "spikelfp-netx"
NETX_FORMAT_VERSION = 1
NETX_SUPPORTED = ("dense", "conv", "cuba_dense", "cuba_conv", "flatten", "avgpool", "maxpool")
#: The netx layer a synaptic kind of :func:`describe_network` becomes.
BASE_KIND = {"dense": "dense", "conv": "conv", "cuba_dense": "dense", "cuba_conv": "conv"}
#: The largest |weight| written: 8-bit signed mantissa k in [-128, 127] times 2 (netx clips
#: mixed-sign weights to [-256, 254]; we use the symmetric part).
WEIGHT_MAX = 254
#: Loihi's bias mantissa is 13-bit signed; netx fixes bias_exp = 6.
BIAS_MAX = 4095
#: Loihi's threshold mantissa is 17-bit unsigned.
VTH_MAX = 2 ** 17 - 1
#: Candidate clip fractions f of the weight scale 254 / (f max|W|) (see :func:`weight_scale`).
CLIP_FRACTIONS = tuple(np.round(np.linspace(0.5, 1.0, 51), 2))
WEIGHT_CLIPS = ("mse", "max")
#: Input modes: binary spikes, or graded spikes (integer payloads).
INPUT_MODES = ("binary", "graded")
#: Keys written in every dense / conv ``neuron`` group (netx reads type, vThMant, vDecay, iDecay).
NETX_NEURON_KEYS = ("type", "iDecay", "vDecay", "vThMant", "refDelay", "gradedSpike")
#: Root attributes of a netx-native file (netx itself reads none of them).
NETX_FILE_ATTRS = ("format", "format_version", "spikelfp_version", "time_steps",
                   "input_encoding", "input_mode", "input_scale", "input_message_bits",
                   "input_shape", "reset_interval", "reset_offset", "num_layers")


@dataclass
class NetxLayer:
    """One layer of a netx network as integers (what the file holds).

    kind: ``dense``, ``conv`` or ``flatten``. For dense/conv: ``weight`` (int64, PyTorch layout
    ``[out, in]`` / ``[out, in/groups, kH, kW]``), ``bias`` (int64 ``[out]`` or None),
    ``v_th_mant``, ``v_decay``, ``i_decay`` (ints), ``scale`` (S: integer units per spikelfp
    unit of current, informational), conv geometry, and the per-sample shapes (CHW). A dense
    layer with ``weight_rec`` (int64 ``[out, out]``: V, acting on the layer's own spikes of the
    previous step) is netx's ``dense_rec``.
    """

    kind: str
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]
    weight: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    v_th_mant: int = 0
    v_decay: int = 0
    i_decay: int = DECAY_UNITY
    scale: float = 1.0
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    name: str = ""
    weight_rec: Optional[np.ndarray] = None

    @property
    def recurrent(self) -> bool:
        return self.weight_rec is not None

    @property
    def netx_type(self) -> str:
        """The layer type netx reads: ``dense_rec`` for a recurrent dense layer, else kind."""
        return "dense_rec" if self.recurrent else self.kind


@dataclass
class NetxNetwork:
    """A quantized network: the layers plus how the input reaches the chip.

    input_mode: ``binary`` (0/1 spikes) or ``graded`` (integer payloads); input_scale: the
    payload of a real input x is ``round(x * input_scale)`` (1 for spikes and event counts).
    """

    layers: List[NetxLayer]
    input_shape: Tuple[int, ...]
    input_mode: str = "binary"
    input_scale: float = 1.0
    time_steps: Optional[int] = None
    input_encoding: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def synaptic(self) -> List[NetxLayer]:
        return [ly for ly in self.layers if ly.kind in ("dense", "conv")]

    @property
    def input_message_bits(self) -> int:
        """What to pass as ``hdf5.Network(..., input_message_bits=)``: 0 for binary spikes."""
        return 0 if self.input_mode == "binary" else 24

    @property
    def output_shape(self) -> Tuple[int, ...]:
        return self.layers[-1].out_shape


# ---------------------------------------------------------------- quantization (pure functions)

def quantize_weight(w: np.ndarray, scale: float) -> np.ndarray:
    """``W_int = 2 * round(W * S / 2)``, clipped to [-256, 254] (even integers, int64)."""
    q = 2 * np.round(np.asarray(w, np.float64) * scale / 2.0)
    return np.clip(q, -256, WEIGHT_MAX).astype(np.int64)


def quantize_decay(beta: float) -> int:
    """netx's ``vDecay = round((1 - beta) * 4096)`` (so ``beta_chip = 1 - vDecay / 4096``); the
    same for the current: ``iDecay = round((1 - alpha) * 4096)``."""
    return int(round((1.0 - float(beta)) * DECAY_UNITY))


def weight_scale(w: np.ndarray, clip_fractions: Sequence[float] = CLIP_FRACTIONS) -> float:
    """The weight scale S_w = 254 / (f max|W|) whose grid fits W best: f in ``clip_fractions``
    minimizing ``sum (W - W_int / S_w)^2`` (f < 1 clips the few largest weights to +-254 and
    gives all others a finer grid; f = 1 is plain max-abs scaling). 0 for all-zero weights."""
    w = np.asarray(w, np.float64).reshape(-1)
    m = float(np.abs(w).max()) if w.size else 0.0
    if m == 0:
        return 0.0
    best = None
    for f in clip_fractions:
        s = WEIGHT_MAX / (m * float(f))
        err = float(np.sum((w - quantize_weight(w, s) / s) ** 2))
        if best is None or err < best[0]:
            best = (err, s)
    return best[1]


def layer_scale(w_scale: float, max_abs_b: float, theta: float, input_scale: float) -> float:
    """S = s_x * min(S_w, 4095 / (max|b| s_x), 131071 / (theta s_x)).

    The weight scale S_w (:func:`weight_scale`) unless the bias or the threshold would not fit
    its 13- or 17-bit field (terms with a zero denominator are left out).
    """
    s_x = float(input_scale)
    cands = [VTH_MAX / (theta * s_x)]
    if w_scale > 0:
        cands.append(w_scale)
    if max_abs_b > 0:
        cands.append(BIAS_MAX / (max_abs_b * s_x))
    return min(cands) * s_x


def _one_value(info, name: str, arr: np.ndarray, field_name: str) -> float:
    arr = collapse_neuron_param(arr, BASE_KIND[info.kind])
    if np.ndim(arr) != 0:
        raise ValueError(
            f"layer {info.index} ({type(info.layer).__name__}) has per-neuron {name} (shape "
            f"{tuple(np.shape(arr))}); netx holds one {name} per layer ({field_name})")
    return float(arr)


def _scalar_param(info, name: str) -> float:
    key = {"beta": "neuron/vDecay", "threshold": "neuron/vThMant"}.get(name, name)
    return _one_value(info, name, neuron_array(info.layer, name, info.out_shape), key)


def _alpha(info) -> float:
    """The layer's synaptic-current decay alpha (0 for LIF layers); one value per layer."""
    decay = info.layer.synaptic_decay() if info.kind.startswith("cuba_") else None
    if decay is None:  # alpha = 0 everywhere: no current state
        return 0.0
    arr = torch.broadcast_to(decay.detach().to("cpu"), tuple(info.out_shape)).numpy().copy()
    return _one_value(info, "alpha", arr, "neuron/iDecay")


def _recurrent(layer) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(V, b_V) as float64 arrays, or None for a feed-forward layer / a missing b_V."""
    get = getattr(layer, "recurrent_parameters", None)
    V, bV = get() if get is not None else (None, None)
    return (None if V is None else to_numpy(V).astype(np.float64),
            None if bV is None else to_numpy(bV).astype(np.float64))


def _layer_bias(info, alpha: float, b_rec: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The Loihi bias in spikelfp units: b + b_V (alpha = 0), None without biases. With alpha >
    0 a nonzero b or b_V is refused: spikelfp filters it through the current, Loihi does not."""
    b = None if info.layer.bias is None else to_numpy(info.layer.bias).astype(np.float64)
    parts = [(n, a) for n, a in (("b", b), ("b_V", b_rec)) if a is not None]
    if alpha > 0:
        nonzero = [n for n, a in parts if np.any(a != 0)]
        if nonzero:
            raise _refuse(info, f"it has a nonzero bias ({' and '.join(nonzero)}) and "
                                f"alpha={alpha:g} > 0: spikelfp adds the bias to the synaptic "
                                f"current, which alpha filters, but Loihi adds its bias to v "
                                f"unfiltered, so netx cannot hold it exactly; train with config "
                                f"'bias: false' (no b and no b_V) or with alpha 0")
        return None
    if not parts:
        return None
    return sum(a for _, a in parts)


def _refuse(info, why: str) -> ValueError:
    return ValueError(f"layer {info.index} ({type(info.layer).__name__}) cannot be exported to "
                      f"netx: {why}")


def _check_layer(info) -> None:
    if info.kind == "maxpool":
        raise _refuse(info, "netx has no pooling layer and Loihi cannot max-pool spikes")
    if info.kind in BASE_KIND and info.layer.reset != "zero":
        raise _refuse(info, f"reset={info.layer.reset!r}; Loihi's CUBA neuron resets to zero "
                            f"(train with reset 'zero')")


@dataclass
class FloatLayer:
    """A dense/conv layer in spikelfp units before quantization (after pooling is folded in)."""

    kind: str
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]
    weight: np.ndarray
    bias: Optional[np.ndarray]
    beta: float
    theta: float
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    name: str = ""
    alpha: float = 0.0  # synaptic-current decay (0: no current state)
    weight_rec: Optional[np.ndarray] = None  # V [out, out] of a recurrent dense layer


def float_layer(info) -> FloatLayer:
    """The float parameters of a dense/conv layer, LIF or CUBA (one beta, threshold and alpha,
    the bias b + b_V only with alpha = 0; else a one-line ValueError naming the layer)."""
    layer = info.layer
    kind = BASE_KIND[info.kind]
    alpha = _alpha(info)
    V, bV = _recurrent(layer)
    f = FloatLayer(kind, tuple(info.in_shape), tuple(info.out_shape),
                   to_numpy(layer.weight).astype(np.float64), _layer_bias(info, alpha, bV),
                   _scalar_param(info, "beta"), _scalar_param(info, "threshold"),
                   name=f"layer {info.index} ({type(layer).__name__})", alpha=alpha,
                   weight_rec=V)
    if kind == "conv":
        f.stride, f.padding = tuple(layer.stride), tuple(layer.padding)
        f.dilation, f.groups = tuple(layer.dilation), int(layer.groups)
    return f


def _pool_geometry(pool) -> Tuple[int, int]:
    """(kh, kw) of an AvgPool2d that can be folded: stride = kernel, no padding."""
    layer = pool.layer
    if tuple(layer.stride) != tuple(layer.kernel_size) or tuple(layer.padding) != (0, 0):
        raise _refuse(pool, f"only AvgPool2d with stride = kernel and no padding can be folded "
                            f"into the next layer (kernel {layer.kernel_size}, stride "
                            f"{layer.stride}, padding {layer.padding})")
    return tuple(layer.kernel_size)


def fold_avgpool_into_conv(pool, f: FloatLayer) -> FloatLayer:
    """conv(avgpool_k(s)) as one conv on s: kernel K k, stride sigma k, padding P k, weights
    ``W'[o, c, a k + i, b k + j] = W[o, c, a, b] / (kh kw)`` (exact when H, W are multiples of
    k; otherwise refused, since the pool drops the last rows)."""
    kh, kw = _pool_geometry(pool)
    c, h, w = pool.in_shape
    if h % kh or w % kw:
        raise _refuse(pool, f"its input {h}x{w} is not a multiple of the kernel {kh}x{kw}, so "
                            f"it cannot be folded into the next conv")
    if f.dilation != (1, 1):
        raise _refuse(pool, "it cannot be folded into a dilated conv")
    wt = np.repeat(np.repeat(f.weight, kh, axis=2), kw, axis=3) / (kh * kw)
    return replace(f, in_shape=tuple(pool.in_shape), weight=wt,
                   stride=(f.stride[0] * kh, f.stride[1] * kw),
                   padding=(f.padding[0] * kh, f.padding[1] * kw), dilation=(1, 1),
                   name=f"{f.name} with {type(pool.layer).__name__} {pool.index} folded in")


def fold_avgpool_into_dense(pool, f: FloatLayer) -> FloatLayer:
    """dense(flatten(avgpool_k(s))) as one dense on flatten(s): ``W'[o, c, y, x] =
    W[o, c, y // kh, x // kw] / (kh kw)``, zero for the rows and columns the pool drops."""
    kh, kw = _pool_geometry(pool)
    c, h, w = pool.in_shape
    _, hp, wp = pool.out_shape
    wt = f.weight.reshape(f.weight.shape[0], c, hp, wp)
    wt = np.repeat(np.repeat(wt, kh, axis=2), kw, axis=3) / (kh * kw)
    full = np.zeros((wt.shape[0], c, h, w))
    full[:, :, :hp * kh, :wp * kw] = wt
    return replace(f, in_shape=(c * h * w,), weight=full.reshape(full.shape[0], -1),
                   name=f"{f.name} with {type(pool.layer).__name__} {pool.index} folded in")


def _quantize_float(f: FloatLayer, input_scale: float,
                    clip_fractions: Sequence[float] = (1.0,)) -> NetxLayer:
    w, b = f.weight, f.bias
    max_b = float(np.abs(b).max()) if b is not None and b.size else 0.0
    # W sees the input payload (x * s_x), V the layer's 0/1 spikes: one grid for [W, s_x V]
    joint = w.reshape(-1) if f.weight_rec is None else np.concatenate(
        [w.reshape(-1), f.weight_rec.reshape(-1) * input_scale])
    scale = layer_scale(weight_scale(joint, clip_fractions), max_b, f.theta, input_scale)
    # the weights see the input payload (x * s_x), bias and threshold the current
    w_int = quantize_weight(w, scale / input_scale)
    w_rec = None if f.weight_rec is None else quantize_weight(f.weight_rec, scale)
    v_th = int(round(f.theta * scale))
    if v_th < 1:
        raise ValueError(f"{f.name} cannot be exported to netx: threshold {f.theta:g} rounds to "
                         f"vThMant={v_th}; it must be >= 1")
    bias = None if b is None else np.clip(np.round(b * scale), -BIAS_MAX - 1,
                                          BIAS_MAX).astype(np.int64)
    return NetxLayer(f.kind, f.in_shape, f.out_shape, weight=w_int, bias=bias, v_th_mant=v_th,
                     v_decay=quantize_decay(f.beta), i_decay=quantize_decay(f.alpha),
                     scale=scale, stride=f.stride, padding=f.padding, dilation=f.dilation,
                     groups=f.groups, name=f.name, weight_rec=w_rec)


def float_layers(infos) -> List[object]:
    """The network as FloatLayer / flatten LayerInfo items, every AvgPool2d folded into the
    next dense or conv layer (exact in real arithmetic); raises a one-line ValueError naming
    a pool that cannot be folded."""
    out: List[object] = []
    pool = None
    for info in infos:
        if info.kind == "avgpool":
            if pool is not None:
                raise _refuse(info, "two pooling layers in a row cannot be folded")
            pool = info
        elif info.kind == "flatten":
            out.append(info)
        else:
            f = float_layer(info)
            if pool is not None:
                flat = bool(out) and not isinstance(out[-1], FloatLayer) and out[-1].index > pool.index
                if f.kind == "conv":
                    f = fold_avgpool_into_conv(pool, f)
                elif flat:
                    out[-1] = _flatten_of(out[-1], pool.in_shape)
                    f = fold_avgpool_into_dense(pool, f)
                else:
                    raise _refuse(pool, "it can only be folded into a conv or a flatten + dense")
                pool = None
            out.append(f)
    if pool is not None:
        raise _refuse(pool, "netx has no pooling layer and nothing follows it to fold it into")
    return out


def _flatten_of(info, in_shape):
    """A copy of a Flatten's LayerInfo that flattens ``in_shape`` (the un-pooled map)."""
    from ._common import LayerInfo

    return LayerInfo(info.index, info.layer, "flatten", tuple(in_shape),
                     (int(np.prod(in_shape)),))


def quantize_network(network, input_shape: Optional[Sequence[int]] = None, *,
                     input_mode: str = "binary", input_scale: Optional[float] = None,
                     time_steps: Optional[int] = None, input_encoding: Optional[str] = None,
                     weight_clip: str = "mse") -> NetxNetwork:
    """The netx integers of ``network`` (see the module docstring); raises a one-line
    ValueError naming the first layer Loihi cannot run. AvgPool2d layers (stride = kernel, no
    padding) are folded into the next conv or flatten + dense layer. CUBA layers get
    ``iDecay = round((1 - alpha) 4096)``, recurrent dense layers ``weight_rec`` (``dense_rec``).

    input_mode ``binary`` takes 0/1 spikes (spike encoders); ``graded`` takes integer payloads:
    ``round(x * input_scale)`` (constant encoder, default input_scale 8) or event counts
    (input_scale 1). weight_clip ``mse`` picks each layer's weight scale by
    :func:`weight_scale`; ``max`` uses 254 / max|W|.
    """
    if weight_clip not in WEIGHT_CLIPS:
        raise ValueError(f"weight_clip={weight_clip!r} is not allowed; use one of {WEIGHT_CLIPS}")
    fractions = CLIP_FRACTIONS if weight_clip == "mse" else (1.0,)
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode={input_mode!r} is not allowed; use one of {INPUT_MODES}")
    if input_scale is None:
        input_scale = 8.0 if input_mode == "graded" else 1.0
    input_scale = float(input_scale)
    if not math.isfinite(input_scale) or input_scale <= 0:
        raise ValueError(f"input_scale={input_scale!r} is not allowed; it must be > 0")
    if input_mode == "binary" and input_scale != 1.0:
        raise ValueError(f"input_scale={input_scale:g} needs input_mode='graded' (binary spikes "
                         f"carry no payload)")
    infos = describe_network(network, input_shape, NETX_SUPPORTED, "netx")
    for info in infos:
        _check_layer(info)
    if not any(i.kind in BASE_KIND for i in infos):
        raise ValueError("the network has no dense or conv layer; nothing to run on Loihi")
    layers: List[NetxLayer] = []
    s_x = input_scale
    for item in float_layers(infos):
        if not isinstance(item, FloatLayer):
            layers.append(NetxLayer("flatten", tuple(item.in_shape), tuple(item.out_shape),
                                    name=f"layer {item.index} (Flatten)"))
            continue
        layers.append(_quantize_float(item, s_x, fractions))
        s_x = 1.0  # deeper layers receive binary spikes
    if layers[-1].kind == "flatten":
        raise ValueError("the network ends in a Flatten layer; netx needs a neuron layer last")
    return NetxNetwork(layers, tuple(int(s) for s in infos[0].in_shape), input_mode, input_scale,
                       time_steps, str(input_encoding or ""))


def _weight_problem(w: np.ndarray, key: str) -> Optional[str]:
    """Why integer weights do not fit netx's grid (even, [-256, 254]), or None."""
    w = np.asarray(w)
    if w.size == 0 or not (w.min() < -256 or w.max() > WEIGHT_MAX or np.any(w % 2)):
        return None
    return f"{key} in [{w.min()}, {w.max()}] are not even integers in [-256, {WEIGHT_MAX}]"


def _recurrent_problem(ly: NetxLayer) -> Optional[str]:
    if not ly.recurrent:
        return None
    n = int(np.asarray(ly.weight).shape[0])
    if ly.kind != "dense" or tuple(np.shape(ly.weight_rec)) != (n, n):
        return (f"weight_rec of shape {tuple(np.shape(ly.weight_rec))} needs a dense layer and "
                f"shape ({n}, {n})")
    return _weight_problem(ly.weight_rec, "recurrent weights")


def _outside(key: str, value: int, lo: int, hi: int) -> Optional[str]:
    return None if lo <= value <= hi else f"{key}={value} outside [{lo}, {hi}]"


def check_ranges(plan: NetxNetwork) -> None:
    """Raise a one-line ValueError naming the layer when a number does not fit Loihi's field:
    weights and recurrent weights even in [-256, 254] (8-bit signed mantissa), bias in
    [-4096, 4095] (13 bits), vThMant in [1, 131071] (17 bits), vDecay and iDecay in [0, 4096]
    (12-bit decays; netx passes du = iDecay - 1 and Lava adds 1)."""
    for ly in plan.synaptic:
        bias_bad = ly.bias is not None and (np.min(ly.bias) < -BIAS_MAX - 1
                                            or np.max(ly.bias) > BIAS_MAX)
        problems = (
            _weight_problem(ly.weight, "weights"),
            _recurrent_problem(ly),
            f"bias outside [{-BIAS_MAX - 1}, {BIAS_MAX}]" if bias_bad else None,
            _outside("vThMant", ly.v_th_mant, 1, VTH_MAX),
            _outside("vDecay", ly.v_decay, 0, DECAY_UNITY),
            _outside("iDecay", ly.i_decay, 0, DECAY_UNITY),
        )
        for why in problems:
            if why:
                raise ValueError(f"{ly.name or ly.kind} cannot be written for netx: {why}")


# ---------------------------------------------------------------- writing

def _put_bytes(group, key: str, text: str) -> None:
    group.create_dataset(key, data=np.bytes_(text))


def _put_type(group, name: str) -> None:
    group.create_dataset("type", (1,), "S10", [name.encode("ascii")])


def _write_neuron(group, ly: NetxLayer) -> None:
    n = group.create_group("neuron")
    _put_bytes(n, "type", "CUBA")
    n.create_dataset("iDecay", data=np.int64(ly.i_decay))
    n.create_dataset("vDecay", data=np.int64(ly.v_decay))
    n.create_dataset("vThMant", data=np.int64(ly.v_th_mant))
    n.create_dataset("refDelay", data=np.int64(1))
    n.create_dataset("gradedSpike", data=False)


def _write_netx_file(h5py, tmp: str, plan: NetxNetwork, extra: Mapping[str, Any]) -> None:
    with h5py.File(tmp, "w") as f:
        attrs = {
            "format": NETX_FORMAT, "format_version": NETX_FORMAT_VERSION,
            "spikelfp_version": spikelfp_version(),
            "time_steps": int(plan.time_steps) if plan.time_steps is not None else -1,
            "input_encoding": plan.input_encoding, "input_mode": plan.input_mode,
            "input_scale": float(plan.input_scale),
            "input_message_bits": int(plan.input_message_bits),
            "input_shape": np.array(plan.input_shape, np.int64),
            "reset_interval": int(plan.time_steps) if plan.time_steps is not None else -1,
            "reset_offset": 1, "num_layers": len(plan.layers) + 1,
        }
        for k, v in extra.items():
            if k in attrs:
                raise ValueError(f"metadata key {k!r} is reserved by the netx layout")
            attrs[k] = v
        for k, v in attrs.items():
            f.attrs[k] = v
        root = f.create_group("layer")
        g0 = root.create_group("0")
        _put_type(g0, "input")
        g0.create_dataset("shape", data=np.array(plan.input_shape, np.int64))
        for i, ly in enumerate(plan.layers, start=1):
            g = root.create_group(str(i))
            _put_type(g, ly.netx_type)
            g.create_dataset("shape", data=np.array(ly.out_shape, np.int64))
            if ly.kind == "flatten":
                continue
            g.create_dataset("weight", data=ly.weight.astype(np.int64))
            if ly.recurrent:  # netx's dense_rec: V on the layer's own spikes of step t - 1
                g.create_dataset("weight_rec", data=ly.weight_rec.astype(np.int64))
            if ly.bias is not None:
                g.create_dataset("bias", data=ly.bias.astype(np.int64))
            g.create_dataset("scale", data=np.float64(ly.scale))
            if ly.kind == "dense":
                g.create_dataset("inFeatures", data=np.int64(ly.weight.shape[1]))
                g.create_dataset("outFeatures", data=np.int64(ly.weight.shape[0]))
            else:
                g.create_dataset("inChannels", data=np.int64(ly.weight.shape[1] * ly.groups))
                g.create_dataset("outChannels", data=np.int64(ly.weight.shape[0]))
                g.create_dataset("kernelSize", data=np.array(ly.weight.shape[-2:], np.int64))
                g.create_dataset("stride", data=np.array(ly.stride, np.int64))
                g.create_dataset("padding", data=np.array(ly.padding, np.int64))
                g.create_dataset("dilation", data=np.array(ly.dilation, np.int64))
                g.create_dataset("groups", data=np.int64(ly.groups))
            _write_neuron(g, ly)


def _h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("netx export needs the 'h5py' package (pip install h5py)") from err
    return h5py


def write_netx(network, path: PathLike, input_shape: Optional[Sequence[int]] = None, *,
               input_mode: str = "binary", input_scale: Optional[float] = None,
               time_steps: Optional[int] = None, input_encoding: Optional[str] = None,
               weight_clip: str = "mse", force: bool = False,
               metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``network`` as a netx-native HDF5 file that ``lava.lib.dl.netx.hdf5.Network``
    loads unchanged (layout: SCHEMA.md, "netx-native file"; numbers: :func:`quantize_network`).

    Everything is checked before the file is opened: a layer Loihi cannot run raises a
    one-line ValueError naming it and nothing is written. The file is written to a temporary
    name and renamed. Returns the path.
    """
    h5py = _h5py()
    check_output_path(path, force)
    plan = quantize_network(network, input_shape, input_mode=input_mode,
                            input_scale=input_scale, time_steps=time_steps,
                            input_encoding=input_encoding, weight_clip=weight_clip)
    check_ranges(plan)
    extra = {str(k): v for k, v in (metadata or {}).items() if v is not None}
    return atomic_write(path, lambda tmp: _write_netx_file(h5py, tmp, plan, extra), force=force)


# ---------------------------------------------------------------- reading

def _ascii(ds) -> str:
    v = ds[()]
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0]
    return v.decode("ascii") if isinstance(v, bytes) else str(v)


def _ints(ds) -> np.ndarray:
    """As netx reads arrays it casts (``astype(int)``: truncation toward zero)."""
    return np.asarray(ds[()]).astype(np.int64)


def _pair(ds) -> Tuple[int, int]:
    a = np.asarray(ds[()]).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _read_dense(g, ly: NetxLayer, shape: Tuple[int, ...], rec: bool) -> None:
    """Dense geometry; ``dense_rec`` also reads ``weight_rec`` (netx reshapes 1-D weights)."""
    n = int(np.prod(shape))
    ly.out_shape = (n,)
    if ly.weight.ndim == 1:
        ly.weight = ly.weight.reshape(n, -1)
    if rec:
        ly.weight_rec = _ints(g["weight_rec"]).reshape(n, -1)


def _read_conv(g, ly: NetxLayer) -> None:
    if ly.weight.ndim == 5:
        ly.weight = ly.weight.reshape(ly.weight.shape[:4])
    ly.stride = _pair(g["stride"]) if "stride" in g else (1, 1)
    ly.padding = _pair(g["padding"]) if "padding" in g else (0, 0)
    ly.dilation = _pair(g["dilation"]) if "dilation" in g else (1, 1)
    ly.groups = int(np.asarray(g["groups"][()]).reshape(-1)[0]) if "groups" in g else 1


def _read_layer(g, where: str, in_shape: Tuple[int, ...]) -> NetxLayer:
    kind = _ascii(g["type"])
    shape = tuple(int(s) for s in np.asarray(g["shape"][()]).reshape(-1))
    if kind == "flatten":
        return NetxLayer("flatten", in_shape, (int(np.prod(in_shape)),), name=where)
    if kind not in ("dense", "dense_rec", "conv"):
        raise ValueError(f"{where}: layer type {kind!r} is not simulated (dense, dense_rec, "
                         f"conv, flatten)")
    n = g["neuron"]
    ntype = _ascii(n["type"])
    if ntype not in ("CUBA", "LOIHI"):
        raise ValueError(f"{where}: neuron type {ntype!r} is not simulated (CUBA)")
    ly = NetxLayer("conv" if kind == "conv" else "dense", in_shape, shape,
                   weight=_ints(g["weight"]),
                   bias=_ints(g["bias"]).reshape(-1) if "bias" in g else None,
                   v_th_mant=int(np.asarray(n["vThMant"][()])),
                   v_decay=int(np.asarray(n["vDecay"][()])),
                   i_decay=int(np.asarray(n["iDecay"][()])),
                   scale=float(np.asarray(g["scale"][()])) if "scale" in g else 1.0, name=where)
    if kind == "conv":
        _read_conv(g, ly)
    else:
        _read_dense(g, ly, shape, kind == "dense_rec")
    return ly


def read_netx(path: PathLike) -> NetxNetwork:
    """Read a netx HDF5 file (ours, or any CUBA dense/dense_rec/conv/flatten file) as
    :class:`NetxNetwork`,
    reading the numbers as netx does (integers via ``astype(int)``)."""
    h5py = _h5py()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"netx file {p} does not exist")
    with h5py.File(p, "r") as f:
        meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if "layer" not in f:
            raise ValueError(f"{p} has no 'layer' group; not a netx HDF5 network")
        root = f["layer"]
        keys = sorted(root.keys(), key=int)
        g0 = root[keys[0]]
        if _ascii(g0["type"]) != "input" or "neuron" in g0:
            raise ValueError(f"{p}: layer/0 must be an input layer without neuron (shape only)")
        shape = tuple(int(s) for s in np.asarray(g0["shape"][()]).reshape(-1))
        layers: List[NetxLayer] = []
        cur = shape
        for k in keys[1:]:
            ly = _read_layer(root[k], f"layer/{k}", cur)
            layers.append(ly)
            cur = ly.out_shape
    ts = int(meta.get("time_steps", -1))
    return NetxNetwork(layers, shape, str(meta.get("input_mode", "binary")),
                       float(meta.get("input_scale", 1.0)), ts if ts > 0 else None,
                       str(meta.get("input_encoding", "")), meta)


__all__ = ["FloatLayer", "NetxLayer", "NetxNetwork", "check_ranges", "quantize_network", "read_netx", "write_netx",
           "quantize_weight", "quantize_decay", "layer_scale"]
