"""Feedback propagation through one layer, in closed form (spec sections 3, 3b, 4).

For a LIF layer the membrane v_t is a sum of contributions (temporal z^u_t, synaptic
z_{t,ij} = W_ji x_{t,i}, bias b_j). Going backwards in time, with c_T = 0::

    F_t     = r_t + c_t                  feedback at the membrane (max-abs normalized)
    n_t     = F_t / D_t                  D_t depends on the rule
    c_{t-1} = z^u_t * n_t                temporal feedback to v_{t-1}
    r^below = x_t * (n_t W)              feedback sent to the layer below
    G_W     = |W| * sum_b sum_t n_t^T x_t / B,   G_b = |b| * sum_b sum_t n_t / B

Only the reverse scan over t is sequential (elementwise on [B, ...]; fused into one compiled
kernel where :mod:`spikelfp.core.fused` can run); everything else is one matrix multiply (or
convolution) over all T*B rows. No autograd is used; the Heaviside spike
is passed straight through. The non-spiking ReLU mode is the same with z^u = 0 and T = 1.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as Fn

from . import fused
from .synapse import LinearOps
from .rules import NORM_FLOOR, TEMPORAL_MODES, Rule, check_norm_scope, maxabs_normalize

Tensor = torch.Tensor
DEFAULT_RULE = Rule()


class LayerFeedback(NamedTuple):
    """What one layer's feedback pass produces.

    grad_weight, grad_bias: G, the direction of improvement (``param.grad = -G``).
    below: feedback sent to the input of this layer, ``[T, B, *in]`` (None if not asked for).
    feedback: F_t at the membrane after normalization, ``[T, B, *out]`` (with ``details``).
    temporal: c_t, the temporal feedback arriving at v_t from step t+1 (with ``details``).
    n: F_t / D_t (for alphabeta, a pair (n+, n-)) (with ``details``).
    """

    grad_weight: Optional[Tensor]
    grad_bias: Optional[Tensor]
    below: Optional[Tensor]
    feedback: Optional[Tensor] = None
    temporal: Optional[Tensor] = None
    n: Optional[Union[Tensor, tuple]] = None


class LazyFeedback(NamedTuple):
    """Feedback ``[T, B, *shape]`` made a slice of steps at a time: ``rows(a, b)`` returns rows
    a..b-1 (``rows(a, b, out)`` writes them into ``out``, a ``[b - a, B, *shape]`` tensor, and
    returns it), so the whole tensor need never exist. A synaptic layer asked for ``lazy_below``
    sends this down (the layer's n and weights, kept until the layer below has scanned it), and
    :func:`synaptic_layer_feedback` below reads it chunk by chunk in its reverse scan. It reads
    the layer's weights when called: use it before an optimizer step changes them."""

    rows: Callable[..., Tensor]
    shape: Tuple[int, ...]
    #: ``(n, W, x)`` when rows(a, b) = x[a:b] * (n[a:b] @ W) (a linear layer above, n ``[T, B, K]``,
    #: compact spikes x): the CPU kernel below then makes each step itself (no rows at all)
    lowrank: Optional[Tuple[Tensor, Tensor, Tensor]] = None
    #: the columns of x that hold a spike, x gathered to them (:func:`fused.gather_live`), where
    #: the layer above has found them: the scan below then leaves the others out
    live: Optional[fused.LiveColumns] = None

    def materialize(self) -> Tensor:
        """The whole feedback as one tensor."""
        return self.rows(0, self.shape[0])

    def chunks(self, limit: int):
        """The feedback made a slice of steps of about ``limit`` elements at a time (each slice
        a new tensor: read it before asking for the next)."""
        T = self.shape[0]
        for a, b in step_ranges(T, math.prod(self.shape[1:]), limit):
            yield self.rows(a, b)


#: elements of r per chunk of steps when a lazy feedback is scanned (1 MB of float32); on a GPU,
#: where each chunk costs kernel launches and memory is rarely the limit, LAZY_CHUNK_CUDA (16 MB)
LAZY_CHUNK = 1 << 18
LAZY_CHUNK_CUDA = 1 << 22


def _neuron_view(p: Tensor, neuron_dims: int) -> Tensor:
    """Bias [C] as a per-neuron tensor broadcastable to [..., C, *spatial]."""
    return p.reshape(p.shape[0], *([1] * (neuron_dims - 1)))


#: a compact (uint8/bool) input with more elements than this is correlated (and multiplied) in
#: slices of steps of about this size, each converted to numbers in turn: no full float copy of
#: it, and the small slices stay in cache (measured ~5 % faster per LFP step than whole copies)
CORRELATE_WHOLE = 1 << 18


def step_ranges(T: int, per_step: int, limit: int):
    """``(start, stop)`` ranges over ``T`` steps of ``per_step`` elements each, about ``limit``
    elements per range (at least one step)."""
    step = max(1, limit // max(1, per_step))
    return [(a, min(T, a + step)) for a in range(0, T, step)]


def step_slices(x: Tensor, limit: int):
    """:func:`step_ranges` over the first dimension of ``x``."""
    return step_ranges(x.shape[0], x[0].numel(), limit)


def correlate_any(ops, n: Tensor, x: Tensor, W_shape, dtype) -> Tensor:
    """``ops.correlate(n, x, W_shape)`` (sum over rows of n^T x, weight-shaped) for a float or a
    compact (uint8/bool) input ``x``: such a sequence is converted slice by slice over T and the
    slices' correlations summed (equal to the one correlation up to float rounding). A dense
    layer with few outputs takes the compiled kernel where it can
    (:func:`spikelfp.core.fused.narrow_correlate`: CPU, no gradient; x read as it is)."""
    if isinstance(ops, LinearOps) and fused.narrow_correlate_usable(n, x):
        return fused.narrow_correlate(n, x)
    if x.is_floating_point():
        return ops.correlate(n, x, W_shape)
    if x.numel() <= CORRELATE_WHOLE or n.dim() != x.dim():
        return ops.correlate(n, x.to(dtype), W_shape)
    out = None
    for a, b in step_slices(x, CORRELATE_WHOLE):
        part = ops.correlate(n[a:b], x[a:b].to(dtype), W_shape)
        out = part if out is None else out.add_(part)
    return out


def mul_input_(out: Tensor, x: Tensor) -> Tensor:
    """``out *= x`` in place (``x`` broadcast to ``out``). A compact (uint8/bool) ``x`` is
    converted a slice of steps at a time: torch's mixed-dtype in-place multiply would make a
    whole float copy of it."""
    if x.is_floating_point() or x.numel() <= CORRELATE_WHOLE or x.dim() != out.dim():
        return out.mul_(x if x.is_floating_point() else x.to(out.dtype))
    for a, b in step_slices(x, CORRELATE_WHOLE):
        out[a:b].mul_(x[a:b].to(out.dtype))
    return out


def synaptic_layer_feedback(  # noqa: C901  (one reverse scan; see issue: fused scan)
    r: Tensor,
    x: Tensor,
    membrane: Tensor,
    spikes: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    ops,
    *,
    beta=0.9,
    threshold=1.0,
    reset: str = "subtract",
    spiking: bool = True,
    rule: Rule = DEFAULT_RULE,
    normalize: Optional[str] = "step",
    temporal: str = "relevance",
    batch_reduction: str = "mean",
    need_below: bool = True,
    details: bool = False,
    max_reduce=None,
    lazy_below: bool = False,
    x_live: Optional[fused.LiveColumns] = None,
) -> LayerFeedback:
    """Propagate the feedback ``r`` (arriving at this layer's output, ``[T, B, *out]``) through a
    synaptic layer (Linear/Conv2d + LIF, or + ReLU when ``spiking=False``).

    ``x`` is the layer's input ``[T, B, *in]``, or one frame ``[B, *in]`` when the input is
    constant over time (then G_W needs one correlation with sum_t n_t instead of T).
    ``membrane`` and ``spikes`` are the forward's v_t and s_t (for ReLU: pre-activation and
    activation); ``spikes`` and ``x`` may be compact (uint8/bool 0/1, ``run(compact=True)``).
    ``max_reduce``: applied to each batch-wide max of the ``step`` and ``layer``
    scopes (an all-reduce MAX across processes in data-parallel training). ``r`` may be a
    :class:`LazyFeedback` (then the scan runs in chunks of steps, each chunk of r made just before
    it is read, carrying c across chunks: the same numbers without a whole r), and
    ``lazy_below=True`` returns the feedback below as one. ``x_live``: the columns of a sequence
    ``x`` that hold a spike, x gathered to them (the record's ``live``, where the forward found
    them): G_W is then correlated over them only (the others are 0), and a lazy feedback below
    carries them to the scan of the layer below. Returns :class:`LayerFeedback`.

    The reverse scan over t runs as compiled kernels (:mod:`spikelfp.core.fused`: numba on CPU,
    Triton on CUDA) on float32/float64 tensors without ``max_reduce``; otherwise (no numba or
    triton, ``SPIKELFP_FUSED=0``, data-parallel max) as a loop of torch ops with the same
    arithmetic.
    """
    normalize = check_norm_scope(normalize)
    if temporal not in TEMPORAL_MODES:
        raise ValueError(f"temporal={temporal!r} is not allowed; use one of {TEMPORAL_MODES}")
    if batch_reduction not in ("mean", "sum"):
        raise ValueError(f"batch_reduction={batch_reduction!r}; use 'mean' or 'sum'")
    W = weight.detach()
    b = bias.detach() if bias is not None else None
    x = x.detach()
    # a record from a forward run with grad enabled must not make G part of an autograd graph
    membrane, spikes = membrane.detach(), spikes.detach()
    if not isinstance(r, LazyFeedback):
        r = r.detach()
    B = membrane.shape[1]
    neuron_dims = membrane.dim() - 2
    const = x.dim() == membrane.dim() - 1
    eps = rule.epsilon

    dt = membrane.dtype
    bview = _neuron_view(b, neuron_dims) if b is not None else None
    name = rule.name
    ab = name == "alphabeta"
    direction = temporal == "direction"

    # The only [T, B, *out]-sized precomputes are the ones that need a matrix multiply.
    base = P = N = lowrank = live = None
    if name in ("zplus_zminus", "alphabeta") and not x.is_floating_point():
        x = x.to(dt)  # compact (uint8) spikes from the layer below: these rules need sign and abs
    if name == "zplus_zminus":  # sum of |contributions| other than the temporal one, + eps
        base = ops.forward(x.abs(), W.abs(), None) + eps
        if bview is not None:
            base = base + bview.abs()
    if ab:  # sums of the positive / negative synaptic and bias contributions
        signed = bool((x < 0).any())
        xp = x.clamp(min=0)
        xn = x.clamp(max=0) if signed else None
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        P, N = ops.forward(xp, Wp, None), ops.forward(xp, Wn, None)
        if signed:
            P, N = P + ops.forward(xn, Wn, None), N + ops.forward(xn, Wp, None)
        if bview is not None:
            P, N = P + bview.clamp(min=0), N + bview.clamp(max=0)

    # n is kept whole only where it is needed: for the feedback below, for a time-varying input,
    # or for details. The lowest layer under a constant input only needs sum_t n_t.
    keep = need_below or not const or details
    scan = dict(reset=reset, spiking=spiking, rule=rule, direction=direction, keep=keep,
                details=details, base=base, P=P, N=N)
    if isinstance(r, LazyFeedback):
        bufs, sums, F_buf, c_buf = _chunked_scan(r, membrane, spikes, beta, threshold, normalize,
                                                 max_reduce, scan)
    else:
        if normalize == "layer":
            r = maxabs_normalize(r, reduce=max_reduce)
        bufs, sums, F_buf, c_buf = _scan(r, membrane, spikes, beta, threshold, normalize,
                                         max_reduce, scan)

    scale = 1.0 / B if batch_reduction == "mean" else 1.0
    if keep:
        totals = [buf.sum(0) for buf in bufs] if const else bufs
    else:
        totals = sums
    if ab:
        sp, sn = totals
        pos_w = ops.correlate(sp, xp, W.shape)  # terms W>0, x>0 are positive
        neg_w = ops.correlate(sn, xp, W.shape)  # terms W<0, x>0 are negative
        if signed:
            pos_w = pos_w + ops.correlate(sn, xn, W.shape)
            neg_w = neg_w + ops.correlate(sp, xn, W.shape)
        G_W = W.abs().mul_(torch.where(W > 0, pos_w, neg_w)).mul_(scale)
        G_b = None
        if b is not None:
            G_b = b.abs() * torch.where(b > 0, ops.bias_sum(sp), ops.bias_sum(sn)) * scale
        if need_below:
            below = _below_alphabeta(ops, bufs, (Wp, Wn), (xp, xn if signed else None), const)
    else:
        n_sum = totals[0]
        if const:  # scale the [B, *out] sum rather than the weight-sized G
            n_sum, scale = n_sum * scale, 1.0
        compact_linear = (not const and x.dtype in (torch.uint8, torch.bool)
                          and isinstance(ops, LinearOps))
        # a kernel below that will leave silent inputs out: find them (and gather x) here, once,
        # unless the forward has
        live = x_live if not const else None
        if live is None and need_below and lazy_below and compact_linear and max_reduce is None:
            live = fused.gather_live(x, fused.LIVE_GATHER_MAX)
        G_W = fused.abs_mul_(_correlate_live(ops, n_sum, x, W.shape, dt, live), W)
        if scale != 1.0:
            G_W.mul_(scale)
        G_b = b.abs() * ops.bias_sum(n_sum) * scale if b is not None else None
        if need_below:
            below = _below_linear(ops, bufs[0], W, x, const)
            if compact_linear:
                lowrank = (bufs[0], W, x)
    if need_below:
        T = membrane.shape[0]
        below = LazyFeedback(below, (T, *x.shape) if const else tuple(x.shape), lowrank,
                             live if lowrank is not None else None) if lazy_below else below(0, T)
    else:
        below = None

    if not details:
        return LayerFeedback(G_W, G_b, below)
    return LayerFeedback(G_W, G_b, below, F_buf, c_buf, tuple(bufs) if ab else bufs[0])


def _correlate_live(ops, n: Tensor, x: Tensor, W_shape, dtype, live) -> Tensor:
    """:func:`correlate_any`; with ``live`` (:class:`fused.LiveColumns` of x) over the gathered
    columns only, the others 0 (each column of the correlation is its own sum over rows: the
    narrow kernel gives the same bits, a BLAS product the same sums to rounding)."""
    if live is None or not live.gathered():
        return correlate_any(ops, n, x, W_shape, dtype)
    part = correlate_any(ops, n, live.x, (W_shape[0], live.index.numel()), dtype)
    return torch.zeros(W_shape, dtype=part.dtype).index_copy_(1, live.index, part)


def _below_linear(ops, n: Tensor, W: Tensor, x: Tensor, const: bool):
    """rows(a, b[, out]) of the feedback below, x_t * (n_t W) (spec section 3), steps a..b-1."""
    def rows(a: int, b: int, out: Optional[Tensor] = None) -> Tensor:
        xa = x if const else x[a:b]
        return mul_input_(ops.transpose(n[a:b], W, xa.shape, out=out), xa)
    return rows


def _below_alphabeta(ops, n, Ws, xs, const: bool):
    """rows(a, b) of the alphabeta feedback below: x+ (n+ W+ + n- W-) [+ x- (n+ W- + n- W+)]."""
    (n_p, n_n), (Wp, Wn), (xp, xn) = n, Ws, xs

    def rows(a: int, b: int, out: Optional[Tensor] = None) -> Tensor:
        xpa = xp if const else xp[a:b]
        sh = xpa.shape
        res = xpa * (ops.transpose(n_p[a:b], Wp, sh) + ops.transpose(n_n[a:b], Wn, sh))
        if xn is not None:
            xna = xn if const else xn[a:b]
            res = res + xna * (ops.transpose(n_p[a:b], Wn, sh) + ops.transpose(n_n[a:b], Wp, sh))
        return res if out is None else out.copy_(res)
    return rows


def _scan(r, membrane, spikes, beta, threshold, normalize, max_reduce, scan, **part):
    """One reverse scan: the compiled kernels where they can run, else the torch loop (``part``:
    ``out``, ``carry``, ``stop`` for one chunk of a longer scan; ``lowrank`` for the CPU kernel
    only, see :func:`spikelfp.core.fused.reverse_scan`)."""
    if fused.usable(membrane, max_reduce):
        return fused.reverse_scan(r, membrane, spikes, beta, threshold,
                                  normalize=normalize if normalize in ("step", "sample") else None,
                                  **scan, **part)
    dt, dev = membrane.dtype, membrane.device
    return reverse_scan_torch(r, membrane, spikes, torch.as_tensor(beta, dtype=dt, device=dev),
                              torch.as_tensor(threshold, dtype=dt, device=dev),
                              normalize=normalize, max_reduce=max_reduce, **scan, **part)


def _lazy_maxabs(r: LazyFeedback, limit: int, reduce=None) -> Tensor:
    """max|r| over every chunk (the ``layer`` scope), as :func:`maxabs_normalize` takes it."""
    m = None
    for rows in r.chunks(limit):
        lo, hi = torch.aminmax(rows)
        mc = torch.maximum(hi, -lo)
        m = mc if m is None else torch.maximum(m, mc)
    if reduce is not None:
        m = reduce(m)
    return torch.where(m > NORM_FLOOR, m, torch.ones_like(m))


def _chunked_scan(r: LazyFeedback, membrane, spikes, beta, threshold, normalize, max_reduce, scan):
    """The reverse scan over a lazy feedback, chunk by chunk from the last steps: each chunk's
    r is made, (``layer`` scope: divided by the max over all chunks), scanned with c carried in
    from the chunk after it, and dropped. Outputs are written into whole buffers."""
    T = membrane.shape[0]
    limit = LAZY_CHUNK_CUDA if membrane.device.type == "cuda" else LAZY_CHUNK
    step = max(1, limit // max(1, membrane[0].numel()))
    out = fused.scan_outputs(membrane, 2 if scan["rule"].name == "alphabeta" else 1,
                             scan["keep"], scan["details"])
    m = _lazy_maxabs(r, limit, max_reduce) if normalize == "layer" else None
    if r.lowrank is not None and membrane.device.type == "cpu" and fused.usable(membrane, max_reduce):
        # the kernel makes r_t from the layer above's n_t, W and x_t itself: one call, no rows
        return _scan(None, membrane, spikes, beta, threshold, normalize, max_reduce, scan,
                     out=out, lowrank=(*r.lowrank, m), live=r.live)
    carry = torch.zeros_like(membrane[0])
    # beta and theta per neuron made once here, not again by every chunk's scan
    beta, threshold = (torch.as_tensor(p, dtype=membrane.dtype, device=membrane.device)
                       .expand(carry.shape).contiguous() for p in (beta, threshold))
    # one buffer for every chunk's rows: step + 1 places, as a chunk's slices of v and s start
    # one step early (step a reads v and s at a - 1); that first place is never read
    buf = torch.empty((min(T, step + 1), *r.shape[1:]), dtype=membrane.dtype, device=membrane.device)
    for b in range(T, 0, -step):
        a = max(0, b - step)
        lo = a - 1 if a > 0 else 0
        rows = buf[:b - lo]
        r.rows(a, b, rows[a - lo:])
        if m is not None:
            rows[a - lo:].div_(m)
        part = {k: (v[lo:b] if v is not None and v.dim() == membrane.dim() else v)
                for k, v in scan.items() if k in ("base", "P", "N")}
        n_o, sums_o, F_o, c_o = out
        sub = (None if n_o is None else [n[lo:b] for n in n_o], sums_o,
               None if F_o is None else F_o[lo:b], None if c_o is None else c_o[lo:b])
        _scan(rows, membrane[lo:b], spikes[lo:b], beta, threshold, normalize, max_reduce,
              {**scan, **part}, out=sub, carry=carry, stop=a - lo)
    return out


def reverse_scan_torch(  # noqa: C901  (one loop over t, all rules)
        r, membrane, spikes, beta_t, th, *, reset, spiking, rule, normalize, direction, keep,
        details, base=None, P=None, N=None, max_reduce=None, out=None, carry=None, stop=0):
    """The reverse scan of :func:`synaptic_layer_feedback` as a loop of torch ops over t (the
    reference path, and the path where the fused kernel cannot run). Same contract as
    :func:`spikelfp.core.fused.reverse_scan` (also ``out``, ``carry``, ``stop``): returns
    ``(n buffers | None, sums | None, F, c)``."""
    T = membrane.shape[0]
    dt, dev = membrane.dtype, membrane.device
    one = torch.ones((), dtype=dt, device=dev)
    name, eps = rule.name, rule.epsilon
    ab = name == "alphabeta"

    def at(a: Tensor, t: int) -> Tensor:  # a [T, B, ...] or a constant [B, ...]
        return a if a.dim() == membrane.dim() - 1 else a[t]

    def spikes_at(t: int) -> Tensor:  # compact (uint8/bool) spikes as numbers
        return spikes[t] if spikes.is_floating_point() else spikes[t].to(dt)

    if out is None:
        out = fused.scan_outputs(membrane, 2 if ab else 1, keep, details)
    bufs, sums, F_buf, c_buf = out

    # Reverse scan over time: elementwise work on [B, *out] views only, in three scratch buffers
    # (F_t; z^u_t, which becomes c_{t-1} in place; D_t) and the n buffers: no per-step allocation.
    F_s, C_s, D_s = (torch.empty_like(membrane[0]) for _ in range(3))
    n_tmp = None if (keep or ab) else torch.empty_like(F_s)
    have_c = carry is not None
    if have_c:
        C_s.copy_(carry)
    for t in range(T - 1, stop - 1, -1):
        F = torch.add(r[t], C_s, out=F_s) if have_c else F_s.copy_(r[t])
        if normalize == "step":
            maxabs_normalize(F, inplace=True, reduce=max_reduce)
        elif normalize == "sample":
            maxabs_normalize(F, per_sample=True, inplace=True)
        if details:
            F_buf[t] = F
            if have_c:
                c_buf[t] = C_s
        v = membrane[t]
        # temporal contribution z^u_t (spec section 3; lfprop: spec 3b) and total z_t
        zu = None
        if spiking and t > 0:
            v_prev = membrane[t - 1]
            zu = torch.mul(v_prev, beta_t, out=C_s)
            if reset == "zero" and name != "lfprop":
                zu.mul_(1 - spikes_at(t - 1))
        if spiking and t > 0 and reset == "subtract":
            z = torch.addcmul(v, spikes_at(t - 1), th, out=D_s)
        else:
            z = v  # read only
        if ab:
            Zp, Zn = at(P, t), at(N, t)
            if zu is not None:
                Zp, Zn = Zp + zu.clamp(min=0), Zn + zu.clamp(max=0)
            ns = (F * (rule.alpha / (Zp + eps)), F * (rule.beta / (Zn.abs() + eps)))
        else:
            n_out = bufs[0][t] if keep else n_tmp
            if name == "zero":
                D = torch.abs(z, out=D_s)
                torch.where(D > 0, F / torch.where(D > 0, D, one), torch.zeros_like(F), out=n_out)
            else:
                if name == "epsilon":
                    D = torch.abs(z, out=D_s).add_(eps)
                elif name == "zplus_zminus":
                    D = at(base, t) if zu is None else torch.abs(zu, out=D_s).add_(at(base, t))
                elif name == "lfprop":
                    if zu is None:
                        D = torch.abs(z, out=D_s).add_(eps)
                    else:
                        D = torch.sub(z, v_prev, out=D_s).abs_().add_(v_prev.abs()).add_(eps)
                else:  # pragma: no cover - make_rule guards this
                    raise ValueError(name)
                torch.div(F, D, out=n_out)
            ns = (n_out,)
        if ab and keep:
            for buf, n_ in zip(bufs, ns):
                buf[t] = n_
        if not keep:
            for acc, n_ in zip(sums, ns):
                acc.add_(n_)
        have_c = zu is not None
        if have_c:  # c_{t-1} = z^u_t * n_t (direction: |z^u_t| * n_t), written over z^u in C_s
            n_sel = torch.where(zu > 0, ns[0], ns[1]) if ab else ns[0]
            if direction:
                zu.abs_()
            zu.mul_(n_sel)

    if carry is not None and have_c:
        carry.copy_(C_s)
    return out


# ----------------------------------------------------------------------------- stateless layers


def flatten_feedback(r: Tensor, frame_shape: Sequence[int]) -> Tensor:
    """Flatten: the feedback ``[T, B, N]`` is reshaped back to ``[T, B, *frame_shape]``."""
    return r.reshape(*r.shape[:2], *frame_shape)


def avgpool_feedback(r: Tensor, x: Tensor, kernel_size, stride, padding, epsilon: float = 1e-6) -> Tensor:
    """Average pooling as a fixed linear layer under the epsilon rule.

    z_j = mean of its window; n = F / (|z| + eps); r^below_i = x_i * sum_j (1/k) n_j.
    ``r`` is ``[T, B, C, H', W']``, ``x`` the input ``[T, B, C, H, W]`` or a constant frame.
    """
    T = r.shape[0]
    xs = x.expand(T, *x.shape) if x.dim() == r.dim() - 1 else x
    rows = xs.reshape(-1, *xs.shape[-3:])
    z = Fn.avg_pool2d(rows, kernel_size, stride, padding)
    n = r.reshape(z.shape) / (z.abs() + epsilon)
    back = torch.ops.aten.avg_pool2d_backward(
        n, rows, _pair(kernel_size), _pair(stride if stride is not None else kernel_size),
        _pair(padding), False, True, None,
    )
    return (rows * back).reshape(xs.shape)


def maxpool_feedback(r: Tensor, x: Tensor, kernel_size, stride, padding, dilation=1) -> Tensor:
    """Max pooling routes each window's feedback to its selected input (none if that input is 0)."""
    T = r.shape[0]
    xs = x.expand(T, *x.shape) if x.dim() == r.dim() - 1 else x
    rows = xs.reshape(-1, *xs.shape[-3:])
    _, idx = Fn.max_pool2d(rows, kernel_size, stride, padding, dilation, return_indices=True)
    out = torch.zeros_like(rows).flatten(2)
    out.scatter_add_(2, idx.flatten(2), r.reshape(idx.shape).flatten(2))
    out = out.reshape(rows.shape) * (rows != 0).to(rows.dtype)
    return out.reshape(xs.shape)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------- CUBA / recurrent

class CubaLayerFeedback(NamedTuple):
    """What one CUBA / recurrent layer's feedback pass produces (spec ``lfp-cuba-recurrent.md``).

    The first six fields are those of :class:`LayerFeedback`; then
    grad_recurrent_weight, grad_recurrent_bias: G of V and b_V (None for a feed-forward layer);
    m: the filtered feedback m_t = n_t + alpha m_{t+1} (a pair (m+, m-) for alphabeta), and
    recurrent: rho_t, the feedback arriving at s_t through V from step t+1 (both with ``details``).
    """

    grad_weight: Optional[Tensor]
    grad_bias: Optional[Tensor]
    below: Optional[Tensor]
    feedback: Optional[Tensor] = None
    temporal: Optional[Tensor] = None
    n: Optional[Union[Tensor, tuple]] = None
    grad_recurrent_weight: Optional[Tensor] = None
    grad_recurrent_bias: Optional[Tensor] = None
    m: Optional[Union[Tensor, tuple]] = None
    recurrent: Optional[Tensor] = None


def current_filter(q: Tensor, alpha: Optional[Tensor]) -> Tensor:
    """P_t = alpha P_{t-1} + q_t (P_1 = q_1) along the first dimension of ``q`` ``[T, B, ...]``;
    without a filter (alpha None) ``q`` itself."""
    if alpha is None:
        return q
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    out[0] = q[0]
    for t in range(1, q.shape[0]):
        torch.add(alpha * out[t - 1], q[t], out=out[t])
    return out


def _contribution_sums(x, W, b, s_prev, V, bV, ops, rule_name, neuron_dims):
    """The unfiltered sums of the non-temporal contributions per step (spec section 2): for
    z+z-, sum |contribution| (one tensor); for alphabeta, the positive and negative sums (a pair);
    else None. ``s_prev`` is s_{t-1} ``[T, B, N]`` (only with V)."""
    if rule_name == "zplus_zminus":
        q = ops.forward(x.abs(), W.abs(), None)
        if b is not None:
            q = q + _neuron_view(b, neuron_dims).abs()
        if V is not None:
            q = q + Fn.linear(s_prev, V.abs(), bV.abs() if bV is not None else None)
        return (q,)
    if rule_name != "alphabeta":
        return None
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    Wp, Wn = W.clamp(min=0), W.clamp(max=0)
    P = ops.forward(xp, Wp, None) + ops.forward(xn, Wn, None)
    N = ops.forward(xp, Wn, None) + ops.forward(xn, Wp, None)
    if b is not None:
        bv = _neuron_view(b, neuron_dims)
        P, N = P + bv.clamp(min=0), N + bv.clamp(max=0)
    if V is not None:
        Vp, Vn = V.clamp(min=0), V.clamp(max=0)
        P = P + Fn.linear(s_prev, Vp, bV.clamp(min=0) if bV is not None else None)
        N = N + Fn.linear(s_prev, Vn, bV.clamp(max=0) if bV is not None else None)
    return (P, N)


def _cuba_n(F, z, zu, v_prev, sums, t, rule, eps):
    """n_t (a 1-tuple, or (n+, n-) for alphabeta) from F_t and the step's contributions."""
    name = rule.name
    if name == "alphabeta":
        Zp, Zn = sums[0][t], sums[1][t]
        if zu is not None:
            Zp, Zn = Zp + zu.clamp(min=0), Zn + zu.clamp(max=0)
        return (F * (rule.alpha / (Zp + eps)), F * (rule.beta / (Zn.abs() + eps)))
    if name == "zero":
        D = z.abs()
        return (torch.where(D > 0, F / torch.where(D > 0, D, torch.ones_like(D)), torch.zeros_like(F)),)
    if name == "epsilon":
        D = z.abs() + eps
    elif name == "zplus_zminus":
        D = sums[0][t] + eps if zu is None else zu.abs() + sums[0][t] + eps
    elif name == "lfprop":
        D = z.abs() + eps if zu is None else (z - v_prev).abs() + v_prev.abs() + eps
    else:  # pragma: no cover - make_rule guards this
        raise ValueError(name)
    return (F / D,)


def cuba_layer_feedback(  # noqa: C901  (one reverse scan, as synaptic_layer_feedback)
    r: Tensor,
    x: Tensor,
    membrane: Tensor,
    spikes: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    ops,
    *,
    alpha=None,
    recurrent_weight: Optional[Tensor] = None,
    recurrent_bias: Optional[Tensor] = None,
    beta=0.9,
    threshold=1.0,
    reset: str = "subtract",
    rule: Rule = DEFAULT_RULE,
    normalize: Optional[str] = "step",
    temporal: str = "relevance",
    batch_reduction: str = "mean",
    need_below: bool = True,
    details: bool = False,
    max_reduce=None,
) -> CubaLayerFeedback:
    """Propagate the feedback ``r`` ``[T, B, *out]`` through a CUBA and/or recurrent LIF layer
    (spec ``lfp-cuba-recurrent.md`` sections 2-3). For t = T..1 (c_T = 0, m_{T+1} = 0, rho_T = 0)::

        F_t       = r_t + rho_t + c_t        (max-abs normalized: step/sample scopes normalize
                                              F_t; "layer" normalizes r once, before the scan)
        n_t       = F_t / D_t                D_t over the unrolled contributions (section 2)
        c_{t-1}   = z^u_t n_t                (|z^u_t| n_t with temporal="direction")
        m_t       = n_t + alpha m_{t+1}      feedback through the current filter
        rho_{t-1} = s_{t-1} (m_t V)          feedback to the layer's own spikes of step t-1
        r^below_t = x_t (m_t W)

    and G_W = |W| sum m_t^T x_t / B, G_V = |V| sum m_t^T s_{t-1} / B, G_b = |b| sum m_t / B,
    G_bV = |b_V| sum m_t / B (alphabeta: m+ / m- by the sign of each contribution). ``alpha``:
    scalar or broadcastable to ``[B, *out]``, or None (no current filter: m = n). With alpha None
    and no V this is :func:`synaptic_layer_feedback` (spiking). ``x`` may be one constant frame.
    """
    normalize = check_norm_scope(normalize)
    if temporal not in TEMPORAL_MODES:
        raise ValueError(f"temporal={temporal!r} is not allowed; use one of {TEMPORAL_MODES}")
    if batch_reduction not in ("mean", "sum"):
        raise ValueError(f"batch_reduction={batch_reduction!r}; use 'mean' or 'sum'")
    W = weight.detach()
    b = bias.detach() if bias is not None else None
    V = recurrent_weight.detach() if recurrent_weight is not None else None
    bV = recurrent_bias.detach() if recurrent_bias is not None and V is not None else None
    x, r, v, s = x.detach(), r.detach(), membrane.detach(), spikes.detach()
    T, B = v.shape[0], v.shape[1]
    dt, dev = v.dtype, v.device
    x = x if x.is_floating_point() else x.to(dt)  # compact (uint8) records read as numbers
    s = s if s.is_floating_point() else s.to(dt)
    a = torch.as_tensor(alpha, dtype=dt, device=dev) if alpha is not None else None
    beta_t = torch.as_tensor(beta, dtype=dt, device=dev)
    th = torch.as_tensor(threshold, dtype=dt, device=dev)
    eps = rule.epsilon
    ab = rule.name == "alphabeta"
    s_prev = torch.cat([torch.zeros_like(s[:1]), s[:-1]]) if V is not None else None
    sums = _contribution_sums(x, W, b, s_prev, V, bV, ops, rule.name, v.dim() - 2)
    if sums is not None:  # P_t: the sums filtered like the current (section 2)
        sums = tuple(current_filter(q if q.dim() == v.dim() else q.unsqueeze(0).expand(T, *q.shape), a)
                     for q in sums)
    if normalize == "layer":
        r = maxabs_normalize(r, reduce=max_reduce)

    k = 2 if ab else 1
    M = [torch.empty_like(v) for _ in range(k)]
    N_buf = [torch.empty_like(v) for _ in range(k)] if details else None
    F_buf = torch.empty_like(v) if details else None
    c_buf = torch.zeros_like(v) if details else None
    rho_buf = torch.zeros_like(v) if details else None
    c = rho = None
    if V is not None:
        Vs = (V.clamp(min=0), V.clamp(max=0)) if ab else (V,)
    for t in range(T - 1, -1, -1):
        F = r[t].clone()
        if c is not None:
            F = F + c
        if rho is not None:
            F = F + rho
        if normalize == "step":
            F = maxabs_normalize(F, reduce=max_reduce)
        elif normalize == "sample":
            F = maxabs_normalize(F, per_sample=True)
        if details:
            F_buf[t] = F
            if c is not None:
                c_buf[t] = c
            if rho is not None:
                rho_buf[t] = rho
        zu = v_prev = None
        z = v[t]
        if t > 0:
            v_prev = v[t - 1]
            zu = beta_t * v_prev
            if reset == "zero" and rule.name != "lfprop":
                zu = zu * (1 - s[t - 1])
            if reset == "subtract":
                z = v[t] + th * s[t - 1]
        ns = _cuba_n(F, z, zu, v_prev, sums, t, rule, eps)
        if details:
            for buf, n_ in zip(N_buf, ns):
                buf[t] = n_
        for j, n_ in enumerate(ns):  # m_t = n_t + alpha m_{t+1}
            if a is not None and t < T - 1:
                torch.add(n_, a * M[j][t + 1], out=M[j][t])
            else:
                M[j][t] = n_
        if zu is None:
            c = rho = None
            continue
        n_sel = torch.where(zu > 0, ns[0], ns[1]) if ab else ns[0]
        c = (zu.abs() if temporal == "direction" else zu) * n_sel
        if V is not None:
            rho = s[t - 1] * sum(Mj[t] @ Vj for Mj, Vj in zip(M, Vs))

    scale = 1.0 / B if batch_reduction == "mean" else 1.0
    const = x.dim() == v.dim() - 1
    xin = x
    Msrc = [m_.sum(0) for m_ in M] if const else M
    G_W, G_b, below, G_V, G_bV = _cuba_grads(W, b, V, bV, ops, xin, Msrc, M, s, ab, need_below)
    G_W = G_W.mul_(scale)
    G_b = G_b * scale if G_b is not None else None
    G_V = G_V * scale if G_V is not None else None
    G_bV = G_bV * scale if G_bV is not None else None
    if not details:
        return CubaLayerFeedback(G_W, G_b, below, grad_recurrent_weight=G_V, grad_recurrent_bias=G_bV)
    return CubaLayerFeedback(G_W, G_b, below, F_buf, c_buf, tuple(N_buf) if ab else N_buf[0], G_V,
                             G_bV, tuple(M) if ab else M[0], rho_buf)


def _cuba_grads(W, b, V, bV, ops, x, Msrc, M, s, ab, need_below):
    """G of W, b, V, b_V (unscaled) and the feedback below, from m (spec section 3)."""
    if not ab:
        m = M[0]
        G_W = fused.abs_mul_(ops.correlate(Msrc[0], x, W.shape), W)
        G_b = b.abs() * ops.bias_sum(m) if b is not None else None
        below = ops.transpose(m, W, x.shape).mul_(x) if need_below else None
        G_V = G_bV = None
        if V is not None:
            G_V = V.abs() * (m[1:].reshape(-1, m.shape[-1]).t() @ s[:-1].reshape(-1, s.shape[-1]))
            G_bV = bV.abs() * ops.bias_sum(m) if bV is not None else None
        return G_W, G_b, below, G_V, G_bV
    mp, mn = M
    sp, sn = Msrc
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    Wp, Wn = W.clamp(min=0), W.clamp(max=0)
    pos_w = ops.correlate(sp, xp, W.shape) + ops.correlate(sn, xn, W.shape)
    neg_w = ops.correlate(sn, xp, W.shape) + ops.correlate(sp, xn, W.shape)
    G_W = W.abs().mul_(torch.where(W > 0, pos_w, neg_w))
    G_b = b.abs() * torch.where(b > 0, ops.bias_sum(mp), ops.bias_sum(mn)) if b is not None else None
    below = None
    if need_below:
        below = xp * (ops.transpose(mp, Wp, x.shape) + ops.transpose(mn, Wn, x.shape)) \
            + xn * (ops.transpose(mp, Wn, x.shape) + ops.transpose(mn, Wp, x.shape))
    G_V = G_bV = None
    if V is not None:
        def corr(m_):
            return m_[1:].reshape(-1, m_.shape[-1]).t() @ s[:-1].reshape(-1, s.shape[-1])
        G_V = V.abs() * torch.where(V > 0, corr(mp), corr(mn))
        if bV is not None:
            G_bV = bV.abs() * torch.where(bV > 0, ops.bias_sum(mp), ops.bias_sum(mn))
    return G_W, G_b, below, G_V, G_bV
