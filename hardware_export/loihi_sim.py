"""What Loihi (Lava's bit-accurate ``fixed_pt`` models) computes for a netx file, without Lava.

A netx file becomes, per dense/conv layer, a synapse process and a CUBA LIF process
(lava-nc 0.10.0 / lava-dl 0.6.0: ``PyDenseModelBitAcc``, ``PyConvModelFixed``,
``PyLifModelBitAcc`` / ``PyLifResetModelBitAcc``). All numbers are integers; at each time step
tau = 1, 2, ... and for each layer::

    synapse:  sends the buffer a[tau-1], then buffers a[tau] = shift(W_e s_in[tau], wexp)
              (dense: W_e, wexp from netx's optimize_weight_bits and Lava's 8-bit clip /
              truncation, shift = arithmetic shift; conv: W unchanged, wrapped to 24 bits)
    recurrent synapse (dense_rec only): sends r[tau-1], then buffers
              r[tau] = shift(V_e s[tau], wexp) of the layer's own spikes s[tau] (V_e, W_e and
              wexp from one optimize_weight_bits on hstack(weight, weight_rec))
    neuron:   (reset every R steps: u = v = 0 when tau % R == (offset + 1 + layer) % R; the
              synapse buffers a, r are not reset)
              u = wrap24(trunc(u * (4096 - iDecay) / 4096) + ((a[tau-1] + r[tau-1]) << 6))
              v = clip(trunc(v * (4096 - vDecay) / 4096) + u + (bias << 6), +-(2**23 - 1))
              s = v > (vThMant << 6);  v = 0 where s

trunc rounds toward zero (sign(x) * (|x| * d >> 12)). So each layer adds one step of delay: the
first layer's neurons see the input of step tau at tau + 1, and before the first input arrives
a layer with a bias integrates the bias alone for as many steps as it is deep. The recurrent
term V s[tau-1] reaches the neuron one step after its spikes, in the neuron's own timeline:
exactly spikelfp's ``V s_{t-1}``; the current u with ``iDecay = round((1 - alpha) 4096)`` is
spikelfp's ``i`` (x 64, up to the truncation).

:func:`simulate_stream` runs exactly this on a stream of input frames (what
``hdf5.Network(file)`` does, with ``reset_interval`` / ``reset_offset`` as its arguments).
:func:`simulate` is the per-sample form spikelfp uses: every layer starts from zero state when
the sample's first input reaches it, which is what ``hdf5.Network(file, reset_interval=T,
reset_offset=1)`` gives for samples fed back to back every T steps (the output of sample k
then appears at steps k T + L + 1 ... k T + L + T for L layers), except for recurrent layers:
Lava's reset clears u and v but not the recurrent synapse's buffer, so on the first step of a
sample the neuron still receives ``V s`` of the previous sample's last step
(:func:`simulate_samples` models that stream exactly; :func:`simulate` starts with s_0 = 0, as
spikelfp does). Both are exact integer arithmetic (float64 tensors holding integers below
2**53).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import math

import numpy as np
import torch
import torch.nn.functional as Fn

from .netx_export import DECAY_UNITY, NetxLayer, NetxNetwork

Tensor = torch.Tensor
#: Loihi's state variables u and v are 24-bit signed.
UV_MAX = 2 ** 23
#: Activations, bias and threshold are MSB-aligned by 6 bits (x << 6).
STATE_SHIFT = 6


# ---------------------------------------------------------------- synapses

def netx_weight_bits(weight: np.ndarray) -> Tuple[np.ndarray, int, int]:
    """netx's ``optimize_weight_bits`` (lava-dl 0.6.0 ``netx/utils.py``) on integer weights:
    returns (shifted weights, num_weight_bits, weight_exponent). For ``dense_rec`` netx runs it
    on ``hstack(weight, weight_rec)``."""
    w = np.asarray(weight, np.int64)
    wmax, wmin = int(w.max()), int(w.min())
    if (wmax > 254 and wmin < 0) or (wmin < -256 and wmax > 0):
        w = np.clip(w, -256, 254)
        wmax, wmin = int(w.max()), int(w.min())
    if wmax == 0 and wmin == 0:
        raise ValueError("all weights are zero; netx's optimize_weight_bits divides by zero")
    if wmax < 0:
        scale, signed = -256 / wmin, 0
    elif wmin >= 0:
        scale, signed = 255 / wmax, 0
    else:  # mixed (netx: max >= 0 > min; numpy's 127 / 0 = inf when max = 0)
        scale, signed = min(127 / wmax if wmax > 0 else math.inf, -128 / wmin), 1
    scale_bits = int(np.floor(np.log2(scale))) + signed
    n = 8
    while n > 0 and np.sum(np.abs(w / 2 ** n - np.round(w / 2 ** n))) != 0:
        n -= 1
    n -= signed
    return np.left_shift(w, scale_bits), 8 - scale_bits - n, -scale_bits


def _lava_clip_truncate(w: np.ndarray, bits: int) -> np.ndarray:
    """Lava's ``clip_weights(.., 8)`` and ``truncate_weights(.., num_weight_bits)`` with the
    sign mode each ``Dense`` process determines from its own weights."""
    mixed = int(w.min() < 0 < w.max())
    inhib = int(w.max() <= 0 and w.min() < 0)
    w = -w if inhib else w
    w = np.clip(w, -(2 ** 8) * mixed, 2 ** 8 - 1)
    drop = 8 - bits + mixed
    w = np.left_shift(np.right_shift(w, drop), drop)
    return -w if inhib else w


def lava_dense_weights(weight: np.ndarray) -> Tuple[np.ndarray, int]:
    """The weights Lava's ``PyDenseModelBitAcc`` multiplies with (netx's shift, then
    ``clip_weights(.., 8)`` and ``truncate_weights(.., num_weight_bits)`` with Lava's own sign
    mode) and the weight exponent; the layer's activation is ``shift(W_e s, wexp)``."""
    w, bits, wexp = netx_weight_bits(weight)
    return _lava_clip_truncate(w, bits), wexp


def lava_recurrent_weights(weight: np.ndarray,
                           weight_rec: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """``dense_rec``: netx shifts ``hstack(weight, weight_rec)`` as one matrix (one
    num_weight_bits and weight exponent), then hands each part to its own Lava ``Dense``
    (feed-forward and recurrent synapse), which clips and truncates it with its own sign mode.
    Returns (W_e, V_e, wexp); the neuron receives ``shift(W_e x, wexp) + shift(V_e s, wexp)``."""
    w = np.asarray(weight, np.int64)
    joint, bits, wexp = netx_weight_bits(np.hstack([w, np.asarray(weight_rec, np.int64)]))
    n_in = w.shape[1]
    return (_lava_clip_truncate(joint[:, :n_in], bits),
            _lava_clip_truncate(joint[:, n_in:], bits), wexp)


def _shift(a: Tensor, exp: int) -> Tensor:
    """Lava's ``left_shift(a, exp)`` / arithmetic ``right_shift(a, -exp)`` on integers."""
    return a * float(2 ** exp) if exp > 0 else torch.floor(a / float(2 ** -exp))


def wrap_signed(x: Tensor, bits: int) -> Tensor:
    """Two's-complement wrap to ``bits`` bits (Lava's ``signed_clamp``)."""
    base = float(2 ** bits)
    return torch.remainder(x + base / 2, base) - base / 2


class _Synapse(NamedTuple):
    kind: str
    weight: Tensor
    exp: int
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int
    rec: Optional[Tensor] = None  # V_e of a dense_rec layer


def _f64(w: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(w).astype(np.float64))


def _synapse(ly: NetxLayer) -> _Synapse:
    rec = None
    if ly.kind == "dense" and ly.recurrent:
        w, v, exp = lava_recurrent_weights(ly.weight, ly.weight_rec)
        rec = _f64(v)
    elif ly.kind == "dense":
        w, exp = lava_dense_weights(ly.weight)
    else:
        w, exp = np.asarray(ly.weight, np.int64), 0
    return _Synapse(ly.kind, _f64(w), exp, ly.stride, ly.padding, ly.dilation, ly.groups, rec)


def synapse_activation(syn: _Synapse, s: Tensor) -> Tensor:
    """Integer activation of a synapse for input frames ``s`` ``[N, *in]`` -> ``[N, *out]``."""
    if syn.kind == "dense":
        return _shift(s.reshape(s.shape[0], -1) @ syn.weight.T, syn.exp)
    a = Fn.conv2d(s, syn.weight, None, syn.stride, syn.padding, syn.dilation, syn.groups)
    return wrap_signed(a, 24)


def recurrent_activation(syn: _Synapse, s: Tensor) -> Tensor:
    """What the recurrent synapse of a ``dense_rec`` layer sends one step after the layer's
    spikes ``s`` ``[B, N]``: ``shift(V_e s, wexp)`` (zeros for a feed-forward layer)."""
    if syn.rec is None:
        return torch.zeros_like(s)
    return _shift(s @ syn.rec.T, syn.exp)


# ---------------------------------------------------------------- neuron

def trunc_decay(x: Tensor, decay: int) -> Tensor:
    """``sign(x) * ((|x| * (4096 - decay)) >> 12)``: Loihi's decay, rounding toward zero."""
    return torch.sign(x) * torch.floor(x.abs() * float(DECAY_UNITY - decay) / DECAY_UNITY)


def wrap_current(x: Tensor) -> Tensor:
    """Lava's 24-bit wrap of the current u (``x > 2**23 -> x - 2**24``; then
    ``<= -2**23 -> x + 2**24``, applied to the unwrapped x)."""
    m = float(UV_MAX)
    w = torch.where(x > m, x - 2 * m, x)
    return torch.where(w <= -m, x + 2 * m, w)


class NeuronState(NamedTuple):
    u: Tensor
    v: Tensor


def neuron_step(ly: NetxLayer, state: NeuronState, a: Tensor,
                bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, NeuronState]:
    """One step of Lava's bit-accurate CUBA LIF: returns (spikes, v before the reset, state)."""
    u = wrap_current(trunc_decay(state.u, ly.i_decay) + a * 2.0 ** STATE_SHIFT)
    v = trunc_decay(state.v, ly.v_decay) + u
    if bias is not None:
        v = v + bias * 2.0 ** STATE_SHIFT
    v = v.clamp(-(UV_MAX - 1), UV_MAX - 1)
    s = (v > ly.v_th_mant * 2.0 ** STATE_SHIFT).to(v.dtype)
    return s, v, NeuronState(u, v * (1 - s))


def _bias(ly: NetxLayer) -> Optional[Tensor]:
    if ly.bias is None:
        return None
    b = torch.from_numpy(np.asarray(ly.bias, np.float64))
    return b.reshape(-1, 1, 1) if ly.kind == "conv" else b


def _zeros(shape) -> NeuronState:
    return NeuronState(torch.zeros(shape, dtype=torch.float64),
                       torch.zeros(shape, dtype=torch.float64))


# ---------------------------------------------------------------- networks

class LoihiTrace(NamedTuple):
    """Output spikes ``[T, B, *out]`` and membranes (v after integration, before the reset, in
    integer units of v: 64 per unit of vThMant) of the last layer."""

    spikes: Tensor
    membrane: Tensor


def _as_float64(x) -> Tensor:
    x = torch.as_tensor(x)
    return x.detach().to("cpu", torch.float64)


def _run_layer(ly: NetxLayer, s: Tensor, T: int, B: int) -> Tuple[Tensor, Tensor]:
    """One layer on its input spikes ``s`` ``[T * B, *in]`` from zero state (and s_0 = 0 for
    the recurrent term): returns (spikes, membranes) ``[T, B, *out]``."""
    syn = _synapse(ly)
    a = synapse_activation(syn, s).reshape(T, B, *ly.out_shape)
    bias = _bias(ly)
    state = _zeros((B, *ly.out_shape))
    out_s, out_v = torch.empty_like(a), torch.empty_like(a)
    rec = torch.zeros_like(a[0])
    for t in range(T):
        out_s[t], out_v[t], state = neuron_step(ly, state, a[t] + rec, bias)
        if syn.rec is not None:
            rec = recurrent_activation(syn, out_s[t])
    return out_s, out_v


def simulate(plan: NetxNetwork, x_int, steps: Optional[int] = None) -> LoihiTrace:
    """Per-sample chip output with the delays removed: ``x_int`` ``[T, B, *input_shape]``
    integer payloads (or one frame ``[B, ...]`` with ``steps``); every layer starts from
    zero state (no recurrent input on the first step). Equals :func:`simulate_stream` with
    ``reset_interval=T, reset_offset=1`` on the samples fed back to back, read L steps later
    (tested), for networks without recurrent layers (for those see :func:`simulate_samples`)."""
    x = _as_float64(x_int)
    if steps is not None:
        x = x.unsqueeze(0).expand(int(steps), *x.shape)
    T, B = x.shape[0], x.shape[1]
    s = x.reshape(T * B, *x.shape[2:])
    v_out = None
    for ly in plan.layers:
        if ly.kind == "flatten":
            s = s.reshape(s.shape[0], -1)
            continue
        out_s, v_out = _run_layer(ly, s, T, B)
        s = out_s.reshape(T * B, *ly.out_shape)
    return LoihiTrace(s.reshape(T, B, *plan.output_shape), v_out)


def simulate_stream(plan: NetxNetwork, x_int, num_steps: Optional[int] = None,
                    reset_interval: Optional[int] = None, reset_offset: int = 0) -> Tensor:
    """Step by step what ``hdf5.Network(file, reset_interval=, reset_offset=)`` computes in
    Lava's ``fixed_pt`` models for the input stream ``x_int`` ``[N, B, *input_shape]`` (frame
    tau - 1 sent at step tau; zeros after the end; B independent streams). Returns the output
    layer's spikes ``[num_steps, B, *out]`` (default num_steps = N), including the delays."""
    x = _as_float64(x_int)
    n = int(num_steps) if num_steps is not None else x.shape[0]
    B = x.shape[1]
    syn = [(ly, _synapse(ly), _bias(ly)) for ly in plan.layers if ly.kind != "flatten"]
    buf = [torch.zeros((B, *ly.out_shape), dtype=torch.float64) for ly, _, _ in syn]
    rbuf = [torch.zeros_like(b) for b in buf]  # recurrent synapse buffers (never reset)
    state = [_zeros((B, *ly.out_shape)) for ly, _, _ in syn]
    offsets = ([(reset_offset + 1 + i) % reset_interval for i in range(len(syn))]
               if reset_interval else None)
    out = torch.zeros((n, B, *plan.output_shape), dtype=torch.float64)
    for tau in range(1, n + 1):
        s = x[tau - 1] if tau - 1 < x.shape[0] else torch.zeros_like(x[0])
        for i, (ly, sy, bias) in enumerate(syn):
            a, buf[i] = buf[i], synapse_activation(sy, s.reshape(B, *ly.in_shape)
                                                   if ly.kind == "conv" else s)
            if offsets is not None and tau % reset_interval == offsets[i]:
                state[i] = _zeros(state[i].u.shape)
            s, _, state[i] = neuron_step(ly, state[i], a + rbuf[i], bias)
            rbuf[i] = recurrent_activation(sy, s)
        out[tau - 1] = s.reshape(B, *plan.output_shape)
    return out


def simulate_samples(plan: NetxNetwork, x_int) -> Tensor:
    """What Lava gives for samples ``[T, B, *input_shape]`` fed back to back through
    ``hdf5.Network(file, reset_interval=T, reset_offset=1)`` (as the Lava harness does), as
    ``[T, B, *out]`` with the L-step delay removed. Equals :func:`simulate` without recurrent
    layers; with them, the first step of each sample also receives ``V s`` of the previous
    sample's last step (the reset does not clear the recurrent synapse's buffer)."""
    x = _as_float64(x_int)
    T, B = x.shape[0], x.shape[1]
    L = num_delays(plan)
    out = simulate_stream(plan, stream_inputs(x, T, L), reset_interval=T, reset_offset=1)
    return unstream_outputs(out, T, B, L)


def stream_inputs(x_int, reset_interval: int, delay: int) -> Tensor:
    """Samples ``[T, B, ...]`` fed back to back as one stream ``[B*T + delay, 1, ...]`` (every
    sample T steps, zeros for the last ``delay`` steps), as the Lava harness feeds them."""
    x = _as_float64(x_int)
    T, B = x.shape[0], x.shape[1]
    if T != reset_interval:
        raise ValueError(f"reset_interval={reset_interval} must equal the steps per sample {T}")
    seq = x.transpose(0, 1).reshape(B * T, 1, *x.shape[2:])
    pad = torch.zeros((delay, 1, *x.shape[2:]), dtype=torch.float64)
    return torch.cat([seq, pad])


def unstream_outputs(out: Tensor, T: int, B: int, delay: int) -> Tensor:
    """Inverse of :func:`stream_inputs` on the output stream: ``[T, B, *out]`` per sample."""
    o = out[delay:delay + B * T, 0]
    return o.reshape(B, T, *o.shape[1:]).transpose(0, 1)


def num_delays(plan: NetxNetwork) -> int:
    """L: the output of input step t appears at step t + L on the chip (one per layer)."""
    return len(plan.synaptic)


# ---------------------------------------------------------------- inputs and comparison

def encode_input(plan: NetxNetwork, x) -> Tensor:
    """Integer payloads for spikelfp input values ``x``: binary spikes must be 0/1 (returned
    as they are); graded inputs become ``round(x * input_scale)``."""
    x = _as_float64(x)
    if plan.input_mode == "binary":
        if not bool(((x == 0) | (x == 1)).all()):
            raise ValueError("binary input mode needs 0/1 spikes; use input_mode='graded' "
                             "for real-valued or count inputs")
        return x
    return torch.round(x * plan.input_scale)


def decode_input(plan: NetxNetwork, x_int) -> Tensor:
    """The spikelfp input that the payloads stand for: ``x_int / input_scale``."""
    return _as_float64(x_int) / plan.input_scale


def predict(trace: LoihiTrace) -> Tensor:
    """Class prediction as spikelfp's (spike count, ties by membrane sum, then lower index)."""
    counts = trace.spikes.sum(0)
    top = counts == counts.amax(-1, keepdim=True)
    score = torch.where(top, trace.membrane.sum(0), torch.full_like(counts, float("-inf")))
    return score.argmax(-1)


def random_payloads(plan: NetxNetwork, steps: int, batch: int, seed: int = 0,
                    rate: float = 0.3) -> Tensor:
    """Random inputs ``[steps, batch, *input_shape]`` in the plan's input mode: Bernoulli(rate)
    spikes, or graded payloads uniform over the integers of ``[-input_scale, input_scale]``."""
    g = torch.Generator().manual_seed(int(seed))
    shape = (int(steps), int(batch), *plan.input_shape)
    if plan.input_mode == "binary":
        return (torch.rand(shape, generator=g, dtype=torch.float64) < rate).to(torch.float64)
    k = int(round(plan.input_scale))
    return torch.randint(-k, k + 1, shape, generator=g).to(torch.float64)


def compare_float(network, plan: NetxNetwork, x_int: Tensor) -> dict:
    """Spike agreement of the float ``network`` on ``decode_input(x_int)`` with the Loihi
    simulation of ``plan`` on ``x_int`` (keys of :func:`hardware_export.spike_agreement`)."""
    from .verify import spike_agreement

    param = next(iter(network.parameters()))
    with torch.no_grad():
        ref = network(decode_input(plan, x_int).to(param.dtype))
    return spike_agreement(ref, simulate(plan, x_int).spikes)


def verify_netx(network, plan: NetxNetwork, steps: int = 25, batch: int = 32,
                seed: int = 0) -> dict:
    """``--verify`` for netx: agreement between the float network and the Loihi simulation of
    the file on random inputs in its input mode (binary: the first rate of 0.1, 0.2, 0.4, 0.8
    at which the float output fires at >= 1 %)."""
    rates: Sequence[float] = (0.1, 0.2, 0.4, 0.8) if plan.input_mode == "binary" else (0.0,)
    res: dict = {}
    for rate in rates:
        x = random_payloads(plan, steps, batch, seed, rate)
        res = compare_float(network, plan, x)
        res["rate"] = rate
        res["output_rate"] = res["spikes_reference"] / max(1, res["total"])
        if res["output_rate"] >= 0.01:
            break
    return res


__all__: List[str] = [
    "LoihiTrace", "compare_float", "decode_input", "encode_input", "lava_dense_weights",
    "lava_recurrent_weights", "netx_weight_bits", "num_delays", "predict", "random_payloads",
    "recurrent_activation", "simulate", "simulate_samples", "simulate_stream", "stream_inputs", "trunc_decay", "unstream_outputs", "verify_netx",
    "wrap_current", "wrap_signed",
]
