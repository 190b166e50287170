"""Triton (CUDA) kernels for the LIF scans: the same two scans as :mod:`spikelfp.core.fused`
(numba, CPU), with the same contract and arithmetic, for CUDA tensors.

Reverse scan (spec section 3), per neuron, t = T..1, c_T = 0 (see :mod:`spikelfp.core.fused`
for the rules)::

    F_t = r_t + c_t;  F_t /= max|F_t| (scope step / sample, where that max > 1e-10)
    n_t = F_t / D_t (by the rule);  c_{t-1} = z^u_t n_t

* no max inside the scan (scope ``None``; ``layer`` is applied to r before): **one launch** per
  layer; each program owns a block of neurons and runs the whole scan over t with F, c (and the
  running sum_t n_t) in registers.
* scope ``step`` (one max over the batch at each t) or ``sample`` (one max per sample): the max
  at step t needs every neuron's F_t, so **one launch per step**: launch t normalizes F_t with
  max_t, computes n_t and c_{t-1}, writes F_{t-1} = r_{t-1} + c_{t-1} and folds its block's
  max|F_{t-1}| into max_{t-1} with an atomic max (non-negative floats order like their bit
  patterns as integers; a NaN there orders above inf, so the max is NaN and, as in torch, no
  scaling happens). T launches instead of the torch loop's ~10 operations per step.

Forward scan (:func:`lif_forward`, no grad, Heaviside): one launch, each program runs its
neurons over t. Multiply and add are kept apart (``enable_fp_fusion=False``), the order is the
torch loop's: spikes and membranes are bit-identical to :func:`spikelfp.core.lif.lif_scan`.

Constants (epsilon, alpha, beta, the floor 1e-10) are passed as tensors of the data's dtype: a
Python float would reach the kernel as float32 and change float64 results. Triton is optional
(it comes with torch's CUDA wheels); :func:`available` says whether it imports. With
``TRITON_INTERPRET=1`` the kernels also run on CPU tensors (the tests use this where there is no
GPU).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

Tensor = torch.Tensor

try:  # optional: torch's CUDA wheels bring triton; without it the torch loops run
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

HAVE_TRITON = triton is not None
BLOCK = 512


def available() -> bool:
    """True when triton imports."""
    return HAVE_TRITON


def _opts():
    """Launch options: no fused multiply-add (the torch loops round after every operation)."""
    return {"enable_fp_fusion": False}


if HAVE_TRITON:

    @triton.jit
    def _neuron(f, vt, vp, sp, beta, th, base_t, p_t, n_t, zuh, eps, alpha, beta_ab, one,
                RULE: tl.constexpr, SUBTRACT: tl.constexpr, ZERO_MASK: tl.constexpr,
                DIRECTION: tl.constexpr):
        """n_t (and n-_t for alphabeta) and c_{t-1} of one block of neurons at one step (the
        arithmetic of the torch loop; ``zuh``: the temporal term exists at this step)."""
        zero = one - one
        zu = vp * beta
        if ZERO_MASK:
            zu = zu * (one - sp)
        zu = tl.where(zuh, zu, zero)
        z = vt
        if SUBTRACT:
            z = tl.where(zuh, vt + sp * th, vt)
        n2 = f
        if RULE == 3:  # alphabeta
            zp = p_t + tl.where(zu > zero, zu, zero)
            zn = n_t + tl.where(zu < zero, zu, zero)
            n1 = f * (alpha / (zp + eps))
            n2 = f * (beta_ab / (tl.abs(zn) + eps))
            nsel = tl.where(zu > zero, n1, n2)
        else:
            if RULE == 0:
                D = tl.abs(z)
                n1 = tl.where(D > zero, f / tl.where(D > zero, D, one), zero)
            elif RULE == 1:
                n1 = f / (tl.abs(z) + eps)
            elif RULE == 2:
                n1 = f / tl.where(zuh, tl.abs(zu) + base_t, base_t)
            else:  # lfprop
                n1 = f / tl.where(zuh, tl.abs(z - vp) + tl.abs(vp) + eps, tl.abs(z) + eps)
            nsel = n1
        if DIRECTION:
            c = tl.abs(zu) * nsel
        else:
            c = zu * nsel
        return n1, n2, tl.where(zuh, c, zero)

    @triton.jit
    def _store_n(n1b, n2b, t, M, i, m, n1, n2, RULE: tl.constexpr):
        """Write n_t (and n-_t for alphabeta) into the n buffers."""
        tl.store(n1b + t * M + i, n1, mask=m)
        if RULE == 3:
            tl.store(n2b + t * M + i, n2, mask=m)

    @triton.jit
    def _load_step(r, v, s, base, P, N, t, i, m, M, T_BASE: tl.constexpr, T_AB: tl.constexpr,
                   SPIKING: tl.constexpr, RULE: tl.constexpr):
        """Loads of step t for the neurons i: r_t, v_t, v_{t-1}, s_{t-1} and the rule's sums."""
        zuh = t > 0
        if not SPIKING:
            zuh = t < 0
        rt = tl.load(r + t * M + i, mask=m, other=0.0)
        vt = tl.load(v + t * M + i, mask=m, other=0.0)
        vp = tl.load(v + (t - 1) * M + i, mask=m & zuh, other=0.0)
        sp = tl.load(s + (t - 1) * M + i, mask=m & zuh, other=0).to(vt.dtype)
        base_t = vt
        p_t = vt
        n_t = vt
        if RULE == 2:
            base_t = tl.load(base + t * T_BASE * M + i, mask=m, other=1.0)
        if RULE == 3:
            p_t = tl.load(P + t * T_AB * M + i, mask=m, other=0.0)
            n_t = tl.load(N + t * T_AB * M + i, mask=m, other=0.0)
        return zuh, rt, vt, vp, sp, base_t, p_t, n_t

    @triton.jit
    def _scan_local(r, v, s, beta, th, base, P, N, n1b, n2b, sum1, sum2, Fb, Cb, consts, carry,
                    T, M, stop, CARRY: tl.constexpr, PB: tl.constexpr, PT: tl.constexpr, T_BASE: tl.constexpr, T_AB: tl.constexpr,
                    RULE: tl.constexpr, SUBTRACT: tl.constexpr, ZERO_MASK: tl.constexpr,
                    SPIKING: tl.constexpr, DIRECTION: tl.constexpr, KEEP: tl.constexpr,
                    DETAILS: tl.constexpr, BLK: tl.constexpr):
        """The reverse scan (t = T-1 .. stop) of one block of neurons, no max (scope None);
        ``CARRY``: c starts from ``carry`` and c_{stop-1} is written back to it."""
        i = tl.program_id(0) * BLK + tl.arange(0, BLK)
        m = i < M
        eps = tl.load(consts)
        alpha = tl.load(consts + 1)
        beta_ab = tl.load(consts + 2)
        one = tl.load(consts + 4)
        bt = tl.load(beta + i * PB, mask=m, other=1.0)
        tht = tl.load(th + i * PT, mask=m, other=1.0)
        C = tl.zeros([BLK], dtype=one.dtype)
        if CARRY:
            C = tl.load(carry + i, mask=m, other=0.0)
        acc1 = tl.zeros([BLK], dtype=one.dtype)
        acc2 = tl.zeros([BLK], dtype=one.dtype)
        for k in range(0, T - stop):
            t = T - 1 - k
            zuh, rt, vt, vp, sp, base_t, p_t, n_t = _load_step(
                r, v, s, base, P, N, t, i, m, M, T_BASE, T_AB, SPIKING, RULE)
            f = rt + C
            if DETAILS:
                tl.store(Fb + t * M + i, f, mask=m)
                tl.store(Cb + t * M + i, C, mask=m)
            n1, n2, C = _neuron(f, vt, vp, sp, bt, tht, base_t, p_t, n_t, zuh, eps, alpha,
                                beta_ab, one, RULE, SUBTRACT, ZERO_MASK, DIRECTION)
            if KEEP:
                _store_n(n1b, n2b, t, M, i, m, n1, n2, RULE)
            else:
                acc1 += n1
                acc2 += n2
        if not KEEP:
            tl.store(sum1 + i, tl.load(sum1 + i, mask=m, other=0.0) + acc1, mask=m)
            if RULE == 3:
                tl.store(sum2 + i, tl.load(sum2 + i, mask=m, other=0.0) + acc2, mask=m)
        if CARRY:
            tl.store(carry + i, C, mask=m)

    @triton.jit
    def _scan_step(r, v, s, beta, th, base, P, N, n1b, n2b, sum1, sum2, Fb, Cb, consts, carry,
                   Fs, Cs, mx_f, mx_i, t, M, per, G, stop, CARRY: tl.constexpr, PB: tl.constexpr, PT: tl.constexpr, T_BASE: tl.constexpr, T_AB: tl.constexpr,
                   RULE: tl.constexpr, SUBTRACT: tl.constexpr, ZERO_MASK: tl.constexpr,
                   SPIKING: tl.constexpr, DIRECTION: tl.constexpr, KEEP: tl.constexpr,
                   DETAILS: tl.constexpr, BLK: tl.constexpr):
        """Step t of a scan with a max (G groups of ``per`` neurons: 1 for scope step, B for
        sample): normalize F_t (in ``Fs``) by max_t of its group, n_t, c_{t-1}, then F_{t-1}
        into ``Fs`` and its block max into max_{t-1} (atomic, on the integer view ``mx_i``)."""
        g = tl.program_id(0)
        j = tl.program_id(1) * BLK + tl.arange(0, BLK)
        m = j < per
        i = g * per + j
        eps = tl.load(consts)
        alpha = tl.load(consts + 1)
        beta_ab = tl.load(consts + 2)
        floor = tl.load(consts + 3)
        one = tl.load(consts + 4)
        bt = tl.load(beta + i * PB, mask=m, other=1.0)
        tht = tl.load(th + i * PT, mask=m, other=1.0)
        mt = tl.load(mx_f + t * G + g)
        mt = tl.where(mt > floor, mt, one)  # NaN > floor is false: no scaling, as in torch
        zuh, rt, vt, vp, sp, base_t, p_t, n_t = _load_step(
            r, v, s, base, P, N, t, i, m, M, T_BASE, T_AB, SPIKING, RULE)
        f = tl.load(Fs + i, mask=m, other=0.0) / mt
        if DETAILS:
            tl.store(Fb + t * M + i, f, mask=m)
            tl.store(Cb + t * M + i, tl.load(Cs + i, mask=m, other=0.0), mask=m)
        n1, n2, C = _neuron(f, vt, vp, sp, bt, tht, base_t, p_t, n_t, zuh, eps, alpha,
                            beta_ab, one, RULE, SUBTRACT, ZERO_MASK, DIRECTION)
        if KEEP:
            _store_n(n1b, n2b, t, M, i, m, n1, n2, RULE)
        else:
            tl.store(sum1 + i, tl.load(sum1 + i, mask=m, other=0.0) + n1, mask=m)
            if RULE == 3:
                tl.store(sum2 + i, tl.load(sum2 + i, mask=m, other=0.0) + n2, mask=m)
        if CARRY:
            if t == stop:
                tl.store(carry + i, C, mask=m)
        if t > stop:
            fn = tl.load(r + (t - 1) * M + i, mask=m, other=0.0) + C
            tl.store(Fs + i, fn, mask=m)
            if DETAILS:
                tl.store(Cs + i, C, mask=m)
            a = tl.where(m, tl.abs(fn), 0.0).to(fn.dtype)
            bits = a.to(mx_i.dtype.element_ty, bitcast=True)
            tl.atomic_max(mx_i + (t - 1) * G + g, tl.max(bits, axis=0))

    @triton.jit
    def _lif_kernel(I, V, S, beta, th, T, M, CONST: tl.constexpr, PB: tl.constexpr,
                    PT: tl.constexpr, SUBTRACT: tl.constexpr, BLK: tl.constexpr):
        """The Heaviside LIF forward of one block of neurons over all t (torch loop's order)."""
        i = tl.program_id(0) * BLK + tl.arange(0, BLK)
        m = i < M
        bt = tl.load(beta + i * PB, mask=m, other=1.0)
        tht = tl.load(th + i * PT, mask=m, other=1.0)
        v = tl.load(I + i, mask=m, other=0.0)
        one = (bt - bt) + 1
        s = tl.where(v > tht, one, one - one)
        tl.store(V + i, v, mask=m)
        tl.store(S + i, s.to(S.dtype.element_ty), mask=m)
        for t in range(1, T):
            it = tl.load(I + (1 - CONST) * t * M + i, mask=m, other=0.0)
            if SUBTRACT:
                v = (v * bt + it) + s * (-tht)
            else:
                v = ((one - s) * v) * bt + it
            s = tl.where(v > tht, one, one - one)
            tl.store(V + t * M + i, v, mask=m)
            tl.store(S + t * M + i, s.to(S.dtype.element_ty), mask=m)


RULE_CODES = {"zero": 0, "epsilon": 1, "zplus_zminus": 2, "alphabeta": 3, "lfprop": 4}


@functools.lru_cache(maxsize=64)
def _constants(eps: float, alpha: float, beta: float, dtype, device) -> Tensor:
    """The rule's constants and the norm floor as one device tensor in the data's dtype, made
    once per rule, dtype and device (not copied to the GPU again for every layer and batch)."""
    return torch.tensor([eps, alpha, beta, 1e-10, 1.0], dtype=dtype, device=device)


def _per_neuron(p, frame_shape, like: Tensor):
    """beta / theta (scalar or broadcastable to ``frame_shape`` = ``[B, *out]``) as (flat tensor,
    stride): one element with stride 0, or ``[M]`` with 1."""
    p = torch.as_tensor(p, dtype=like.dtype, device=like.device).detach()
    if p.numel() == 1:
        return p.reshape(1).contiguous(), 0
    return p.expand(frame_shape).contiguous().reshape(-1), 1


def _steps(a: Optional[Tensor], membrane: Tensor):
    """A rule's sum ``[T, B, *out]`` or constant ``[B, *out]`` as (flat tensor, 1 | 0)."""
    if a is None:
        return membrane, 0
    const = a.dim() == membrane.dim() - 1
    return a.contiguous(), 0 if const else 1


def _flat(a: Tensor) -> Tensor:
    a = a.detach()
    if a.dtype == torch.bool:
        a = a.view(torch.uint8)
    return a.contiguous()


def reverse_scan(r: Tensor, membrane: Tensor, spikes: Tensor, beta, threshold, *, reset: str,
                 spiking: bool, rule, normalize: Optional[str], direction: bool, keep: bool,
                 details: bool, out, base: Optional[Tensor] = None, P: Optional[Tensor] = None,
                 N: Optional[Tensor] = None, carry: Optional[Tensor] = None, stop: int = 0):
    """The reverse scan on CUDA: same arguments and returns as
    :func:`spikelfp.core.fused.reverse_scan` (``normalize``: "step", "sample" or None; ``out``:
    the outputs to write, from :func:`spikelfp.core.fused.scan_outputs`)."""
    T, B = membrane.shape[:2]
    M = membrane.numel() // T
    dt = membrane.dtype
    v = _flat(membrane)
    rr = _flat(r.to(dt))
    s = _flat(spikes if not spikes.is_floating_point() else spikes.to(torch.uint8)) if spiking else v
    n_t, sum_t, F_t, c_t = out
    outs = n_t if keep else sum_t
    o1, o2 = outs[0], outs[-1]
    bt, pb = _per_neuron(beta, membrane.shape[1:], membrane)
    th, pt = _per_neuron(threshold, membrane.shape[1:], membrane)
    bs, tb = _steps(base, membrane)
    Pp, tab = _steps(P, membrane)
    Nn, _ = _steps(N, membrane)
    consts = _constants(rule.epsilon, rule.alpha, rule.beta, dt, membrane.device)
    Fb = F_t if details else v
    Cb = c_t if details else v
    cr = carry if carry is not None else v
    flags = dict(CARRY=carry is not None, PB=pb, PT=pt, T_BASE=tb, T_AB=tab,
                 RULE=RULE_CODES[rule.name], SUBTRACT=reset == "subtract",
                 ZERO_MASK=reset == "zero" and rule.name != "lfprop", SPIKING=bool(spiking),
                 DIRECTION=bool(direction), KEEP=bool(keep), DETAILS=bool(details), BLK=BLOCK)
    args = (rr, v, s, bt, th, bs, Pp, Nn, o1, o2, o1, o2, Fb, Cb, consts, cr)
    if normalize is None:
        _scan_local[(triton.cdiv(M, BLOCK),)](*args, T, M, int(stop), **flags, **_opts())
        return out
    G = 1 if normalize == "step" else B
    per = M // G
    Fs = rr[T - 1].reshape(-1).clone()
    if carry is not None:
        Fs.add_(carry.reshape(-1))
    mx = torch.zeros((T, G), dtype=dt, device=membrane.device)
    mx[T - 1] = Fs.reshape(G, per).abs().amax(1)
    Cs = (carry.reshape(-1).clone() if carry is not None else torch.zeros_like(Fs)) if details else Fs
    ints = mx.view(torch.int64 if dt == torch.float64 else torch.int32)
    grid = (G, triton.cdiv(per, BLOCK))
    for t in range(T - 1, int(stop) - 1, -1):
        _scan_step[grid](*args, Fs, Cs, mx, ints, t, M, per, G, int(stop), **flags, **_opts())
    return out


def lif_forward(current: Tensor, beta: Tensor, threshold: Tensor, reset: str, T: int,
                frame_shape, constant: bool, compact: bool):
    """The no-grad Heaviside LIF scan on CUDA: same contract as
    :func:`spikelfp.core.fused.lif_forward` (bit-identical to the torch loop)."""
    dt = current.dtype
    V = torch.empty((T, *frame_shape), dtype=dt, device=current.device)
    S = torch.empty(V.shape, dtype=torch.uint8 if compact else dt, device=V.device)
    M = V.numel() // T
    bt, pb = _per_neuron(beta, frame_shape, V)
    th, pt = _per_neuron(threshold, frame_shape, V)
    cur = current.detach().contiguous()
    _lif_kernel[(triton.cdiv(M, BLOCK),)](cur, V, S, bt, th, T, M, CONST=bool(constant), PB=pb,
                                          PT=pt, SUBTRACT=reset == "subtract", BLK=BLOCK,
                                          **_opts())
    return S, V
