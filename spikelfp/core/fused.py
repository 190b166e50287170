"""Compiled kernels for the LIF scans (numba on CPU; Triton on CUDA, in
:mod:`spikelfp.core.fused_triton`): the LFP reverse scan of one layer (spec section 3) and the
no-grad Heaviside forward scan (spec section 1); on CPU also the products of narrow dense layers
(few outputs, such as a 10-class output layer), where MKL runs far below its speed:
:func:`narrow_linear` (the no-grad current) and :func:`narrow_correlate` (the weight-shaped
correlation of spec section 4), both reading compact spikes without a float copy.

Reverse scan:
For t = T..1 (c_T = 0), per neuron, exactly what the torch loop of
:func:`spikelfp.core.feedback.synaptic_layer_feedback` computes::

    F_t     = r_t + c_t                        then F_t /= max|F_t| if that max > 1e-10
                                               (scope "step": one max over the batch at step t;
                                               "sample": one max per sample; "layer" is applied
                                               to r before the scan; or off)
    z_t     = v_t + theta s_{t-1}  (reset "subtract"; "zero": z_t = v_t)
    z^u_t   = beta v_{t-1}         (reset "zero": beta v_{t-1} (1 - s_{t-1}); lfprop: beta v_{t-1})
    n_t     = F_t / D_t            D_t by the rule (zero, epsilon, z+z-, lfprop), or for alphabeta
                                   n+_t = F_t alpha / (Z+_t + eps), n-_t = F_t beta / (|Z-_t| + eps)
    c_{t-1} = z^u_t n_t            (alphabeta: n+ where z^u > 0, else n-; "direction": |z^u_t| n_t)

and either n_t is written to a ``[T, M]`` buffer or sum_t n_t is accumulated (the lowest layer
under a constant input needs nothing else). r_t is read from a ``[T, M]`` tensor, or (CPU,
``lowrank``) made at each step from the linear layer above: r_t = x_t (n_t W) (its n, weights
and compact input), so that the feedback between two layers is never stored. Two passes over
``[M]`` per step (the max needs the whole step before the division; nothing else does), with no
temporaries: the torch loop makes about ten. The first pass (F_t, then its max as an integer
max over the bit patterns, :func:`_maxabs`) and the epsilon rule's second pass are written
without data-dependent branches so that they vectorize. The arithmetic and its order are those
of the torch loop (constants in the tensors' dtype; the kernel-made r_t sums its products in its
own order), so the results agree with it to float rounding (in practice
bit for bit). Forward scan (:func:`lif_forward`): one pass per step, bit-identical to the torch
loop of :func:`spikelfp.core.lif.lif_scan` (the same operations, no fused multiply-add).

Silent neurons (CPU): a neuron that never spiked in the batch gets no LFP feedback (its r_t is
gated by its spikes), so :func:`live_columns` finds the columns that hold a spike,
:func:`gather_live` copies an input's live columns (a narrow layer's forward and G run over
them), and the kernel-made reverse scan runs on the live neurons only (:func:`_live_scan`, in
chunks of steps), with the same numbers; ``SPIKELFP_SKIP_SILENT=0`` or :func:`set_skip_silent`
turns this off.

Switch: ``SPIKELFP_FUSED=0`` in the environment (read at import) or :func:`set_enabled` turns the
kernels off; without numba they are off. :func:`usable` says whether a call can take this path
(float32/float64, no cross-process max reduction; CPU with numba, or CUDA with triton: CUDA tensors
go to the Triton kernels of :mod:`spikelfp.core.fused_triton`, same contract and arithmetic). Arrays are flattened to ``[T, M]`` with
M = B * neurons, sample-major (the layout of ``[T, B, *out]``).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import numpy as np
import torch

from .rules import NORM_FLOOR

Tensor = torch.Tensor

try:  # numba is optional: without it the torch loop runs (same numbers)
    import numba
except Exception:  # pragma: no cover - depends on the environment
    numba = None

HAVE_NUMBA = numba is not None
_OFF = ("0", "false", "off", "no")
_ENABLED = os.environ.get("SPIKELFP_FUSED", "1").strip().lower() not in _OFF
_SKIP_SILENT = os.environ.get("SPIKELFP_SKIP_SILENT", "1").strip().lower() not in _OFF

RULE_CODES = {"zero": 0, "epsilon": 1, "zplus_zminus": 2, "alphabeta": 3, "lfprop": 4}
NORM_CODES = {None: 0, "layer": 0, "step": 1, "sample": 2}


def enabled() -> bool:
    """True when the fused kernel is switched on and numba is importable."""
    return _ENABLED and HAVE_NUMBA


def set_enabled(flag: bool) -> bool:
    """Switch the fused kernel on or off for this process; returns the previous setting."""
    global _ENABLED
    prev = _ENABLED
    _ENABLED = bool(flag)
    return prev


def skip_silent() -> bool:
    """Whether the CPU paths leave out neurons that never spiked in the batch (the forward of a
    narrow layer, the LFP scans and correlations; the same numbers up to rounding, see
    :func:`live_columns`): on unless ``SPIKELFP_SKIP_SILENT=0`` or :func:`set_skip_silent`."""
    return _SKIP_SILENT


def set_skip_silent(flag: bool) -> bool:
    """Switch the leaving out of silent neurons on or off; returns the previous setting."""
    global _SKIP_SILENT
    prev = _SKIP_SILENT
    _SKIP_SILENT = bool(flag)
    return prev


# Work per thread below which a kernel stays on one thread (a split costs the start of numba's
# pool and its threads' spinning next to torch's; the 8x8-digits quick start ran 10 % slower on
# 2 threads with small splits): multiply-adds for the narrow products, neuron-steps for the scan
SPLIT_MACS = 1 << 22
SPLIT_STEPS = 1 << 19


def threads() -> int:
    """Threads for the CPU kernels: torch's intra-op thread count (``torch.set_num_threads``,
    ``OMP_NUM_THREADS``), at most numba's; 1 runs the single-threaded compiled code, which never
    starts numba's thread pool. Every kernel splits its work so that each number is computed the
    same way on any number of threads. 1 in a process forked from another (a pool of GNU
    OpenMP threads does not survive ``fork``: numba would end the child)."""
    n = torch.get_num_threads()
    if _FORKED or not HAVE_NUMBA or n < 2:
        return 1
    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


_FORKED = False


def _after_fork_in_child() -> None:
    global _FORKED
    _FORKED = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _parts(work: int, least: int) -> int:
    """How many threads share ``work``: :func:`threads`, each with ``least`` or more."""
    return max(1, min(threads(), work // least))


def usable(membrane: Tensor, max_reduce=None) -> bool:
    """Whether a scan over ``membrane`` can run fused: switched on, a float32/float64 tensor, no
    cross-process reduction of the max (a kernel cannot call one between its passes), and
    numba for a CPU tensor or triton for a CUDA tensor (:mod:`spikelfp.core.fused_triton`)."""
    if not (_ENABLED and max_reduce is None and membrane.dtype in (torch.float32, torch.float64)):
        return False
    if membrane.device.type == "cpu":
        return HAVE_NUMBA
    return membrane.device.type == "cuda" and _triton() is not None


def abs_mul_(out: Tensor, w: Tensor) -> Tensor:
    """``out *= |w|`` in place (G = |W| * correlation, spec section 4): one pass where numba
    runs, on CPU tensors of one float dtype and shape (torch first makes |w|, a weight-sized
    temporary); the same numbers (one product of two numbers per element)."""
    if (_cpu_ok(out.dtype, (out, w)) and out.dtype == w.dtype and out.shape == w.shape
            and out.is_contiguous() and w.is_contiguous()):
        _abs_mul(out.reshape(-1).numpy(), w.reshape(-1).numpy())
        return out
    return out.mul_(w.abs())


def _abs_mul(out, w):  # pragma: no cover - compiled by numba
    for i in range(out.shape[0]):
        out[i] = abs(w[i]) * out[i]


NARROW_MAX = 20  # outputs up to which the narrow kernels run (measured: README "What is fused")


def _cpu_ok(dtype, tensors) -> bool:
    """The conditions every CPU kernel outside the scans shares: switched on with numba, a
    float32/float64 ``dtype``, CPU tensors, and nothing that needs a gradient (the kernels are
    forward only)."""
    return (_ENABLED and HAVE_NUMBA and dtype in (torch.float32, torch.float64)
            and all(t.device.type == "cpu" for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def _narrow_ok(x: Tensor, dtype, tensors) -> bool:
    """:func:`_cpu_ok`, with ``x`` of that dtype or compact (uint8/bool)."""
    return (x.dtype == dtype or x.dtype in (torch.uint8, torch.bool)) and _cpu_ok(dtype, tensors)


def narrow_usable(x: Tensor, W: Tensor, b: Optional[Tensor]) -> bool:
    """Whether :func:`narrow_linear` takes ``x @ W.T + b``: a 2-D ``W`` with at most
    ``NARROW_MAX`` rows, a bias of W's dtype and length, and :func:`_narrow_ok`."""
    if not (W.dim() == 2 and W.shape[0] <= NARROW_MAX and x.dim() >= 1 and x.shape[-1] == W.shape[1]):
        return False
    if b is not None and (b.dtype != W.dtype or b.shape != W.shape[:1]):
        return False
    return _narrow_ok(x, W.dtype, (x, W) if b is None else (x, W, b))


def narrow_correlate_usable(n: Tensor, x: Tensor) -> bool:
    """Whether :func:`narrow_correlate` takes sum over rows of n^T x: ``n`` ``[..., J]`` with J
    <= ``NARROW_MAX`` and ``x`` ``[..., K]`` with the same leading shape, and :func:`_narrow_ok`."""
    return (n.dim() == x.dim() >= 1 and n.shape[:-1] == x.shape[:-1] and n.shape[-1] <= NARROW_MAX
            and _narrow_ok(x, n.dtype, (n, x)))


def narrow_correlate(n: Tensor, x: Tensor) -> Tensor:
    """sum over rows of ``n^T x`` (``[J, K]``, n's dtype) for few columns of n (J <=
    ``NARROW_MAX``): the weight-shaped correlation of a narrow layer (spec section 4). The rows
    of x are taken eight at a time, converted into float rows (a compact x is never copied
    whole), and each of the J rows of the result gets the eight rows' products in one pass
    (:func:`_eight_rows`); the sums are in the kernel's order (equal to torch's to float
    rounding). See :func:`narrow_correlate_usable`."""
    J, K = n.shape[-1], x.shape[-1]
    np_dt = _np_float(n.dtype)
    G = torch.empty((J, K), dtype=n.dtype)
    args = (_flat(n, J), _flat(x, K), G.numpy())
    parts = _parts(n.numel() * K, SPLIT_MACS)
    if parts > 1:
        _narrow_corr_par(*args, np_dt(1.0), parts)
    else:
        _narrow_corr(*args, np.empty((8, min(K, CORR_BLOCK)), np_dt), np_dt(1.0), 0, K)
    return G


CORR_BLOCK = 512  # columns of x per block of :func:`_narrow_corr` (measured: 512-1000 best)


def _narrow_corr(n, x, G, buf, one, c0, c1):  # pragma: no cover - compiled by numba
    """G[:, c0:c1] = n^T x[:, c0:c1] (``n`` [R, J], ``x`` [R, K] uint8 or float): per block of
    columns, per eight rows of x converted into ``buf`` (zero rows past R), all J rows of G
    updated."""
    R = x.shape[0]
    zero = one - one
    G[:, c0:c1] = zero
    KC = buf.shape[1]
    for k0 in range(c0, c1, KC):
        w = min(c1, k0 + KC) - k0
        for r0 in range(0, R, 8):
            rb = min(8, R - r0)
            for q in range(8):
                bq = buf[q]
                if q < rb:
                    xr = x[r0 + q, k0:k0 + w]
                    for k in range(w):
                        bq[k] = xr[k]
                else:
                    for k in range(w):
                        bq[k] = zero
            for j in range(n.shape[1]):
                _eight_rows(G[j, k0:k0 + w], n, r0, rb, j, buf, zero)


def _narrow_corr_par(n, x, G, one, parts):  # pragma: no cover - compiled by numba (parallel)
    """:func:`_narrow_corr` with the columns split into ``parts`` ranges, one per thread: every
    column is summed by one thread in the same order, so the result does not depend on them."""
    K = x.shape[1]
    per = -(-K // parts)
    for p in numba.prange(parts):
        buf = np.empty((8, CORR_BLOCK), G.dtype)
        _narrow_corr(n, x, G, buf, one, p * per, min(K, (p + 1) * per))


def _eight_rows(g, n, r0, rb, j, buf, zero):  # pragma: no cover - compiled by numba
    """g += sum_{q<8} n[r0+q, j] buf[q] over the row g (rows q >= rb weigh zero), as a tree."""
    a0 = n[r0, j]
    a1 = n[r0 + 1, j] if rb > 1 else zero
    a2 = n[r0 + 2, j] if rb > 2 else zero
    a3 = n[r0 + 3, j] if rb > 3 else zero
    a4 = n[r0 + 4, j] if rb > 4 else zero
    a5 = n[r0 + 5, j] if rb > 5 else zero
    a6 = n[r0 + 6, j] if rb > 6 else zero
    a7 = n[r0 + 7, j] if rb > 7 else zero
    b0, b1, b2, b3, b4, b5, b6, b7 = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7]
    for k in range(g.shape[0]):
        g[k] += (((a0 * b0[k] + a1 * b1[k]) + (a2 * b2[k] + a3 * b3[k]))
                 + ((a4 * b4[k] + a5 * b5[k]) + (a6 * b6[k] + a7 * b7[k])))


def narrow_linear(x: Tensor, W: Tensor, b: Optional[Tensor],
                  live: Optional[LiveColumns] = None) -> Tensor:
    """``x @ W.T + b`` for a layer with few outputs (W ``[J, K]``, J <= ``NARROW_MAX``; x
    ``[..., K]``, float or compact 0/1 uint8/bool) in W's dtype; see :func:`narrow_usable`.

    Where MKL runs such a product at a fraction of its speed (a 10-wide output), each row of x
    is read once against ten rows of W held in registers (:func:`_ten_dots`); a compact row is
    first converted into a float row, so that float and compact input of the same values run the
    same compiled code and give the same numbers, bit for bit. The sums are in the kernel's own
    order (vectorized partial sums): they agree with torch's to float rounding.

    ``live`` (:func:`gather_live` of x): the columns of x that are not all 0, and x gathered to
    them: the products run over those columns only (the others add nothing; the sums then take
    another order)."""
    if live is not None and live.gathered():
        x, W = live.x, W.detach().index_select(1, live.index)
    J, K = W.shape
    rows = _flat(x, K)
    Wp = _pad_ten(W, 0)  # zero rows of W (and bias) up to a multiple of ten: columns dropped
    bp = _pad_ten(torch.zeros(J, dtype=W.dtype) if b is None else b, 0)
    out = torch.empty((rows.shape[0], Wp.shape[0]), dtype=W.dtype)
    one = _np_float(W.dtype)(1.0)
    args = (rows, Wp.numpy(), bp.numpy(), out.numpy(), one)
    parts = _parts(rows.shape[0] * K * Wp.shape[0], SPLIT_MACS)
    if parts > 1:
        _narrow_rows_par(*args, parts)
    else:
        _narrow_rows(*args, np.empty(K, type(one)), 0, rows.shape[0])
    return (out[:, :J].contiguous() if Wp.shape[0] > J else out).reshape(*x.shape[:-1], J)


def _narrow_rows(x, W, b, out, one, buf, r0, r1):  # pragma: no cover - compiled by numba
    """out[r] = x[r] W^T + b for rows r0..r1-1 of ``x`` [R, K] (uint8 or float); ``W`` [J, K],
    J a multiple of ten. Each row is first copied (converted) into the float row ``buf``, so
    that compact and float rows run the same code on the same values."""
    for r in range(r0, r1):
        row = x[r]
        for k in range(row.shape[0]):
            buf[k] = row[k]
        for j in range(0, W.shape[0], 10):
            _ten_dots(buf, W, b, out[r], j, one)


def _narrow_rows_par(x, W, b, out, one, parts):  # pragma: no cover - compiled by numba (parallel)
    """:func:`_narrow_rows` with the rows split into ``parts`` ranges, one per thread (each row
    is computed the same way on any thread)."""
    R = x.shape[0]
    per = -(-R // parts)
    for p in numba.prange(parts):
        buf = np.empty(x.shape[1], W.dtype)
        _narrow_rows(x, W, b, out, one, buf, p * per, min(R, (p + 1) * per))


def _ten_dots(xr, W, b, o, j, one):  # pragma: no cover - compiled by numba (reassociating sums)
    """o[j + q] = xr . W[j + q] + b[j + q] for q < 10: one pass over ``xr``, ten sums in
    registers (each vectorized into partial sums, then reduced)."""
    zero = one - one
    w0, w1, w2, w3, w4 = W[j], W[j + 1], W[j + 2], W[j + 3], W[j + 4]
    w5, w6, w7, w8, w9 = W[j + 5], W[j + 6], W[j + 7], W[j + 8], W[j + 9]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = zero
    for k in range(xr.shape[0]):
        p = xr[k]
        a0 += p * w0[k]
        a1 += p * w1[k]
        a2 += p * w2[k]
        a3 += p * w3[k]
        a4 += p * w4[k]
        a5 += p * w5[k]
        a6 += p * w6[k]
        a7 += p * w7[k]
        a8 += p * w8[k]
        a9 += p * w9[k]
    o[j], o[j + 1], o[j + 2], o[j + 3], o[j + 4] = a0 + b[j], a1 + b[j + 1], a2 + b[j + 2], \
        a3 + b[j + 3], a4 + b[j + 4]
    o[j + 5], o[j + 6], o[j + 7], o[j + 8], o[j + 9] = a5 + b[j + 5], a6 + b[j + 6], \
        a7 + b[j + 7], a8 + b[j + 8], a9 + b[j + 9]


def _triton():
    """The Triton module when triton imports (imported on first use: CUDA only), else None."""
    global _TRITON
    if _TRITON is False:
        from . import fused_triton
        _TRITON = fused_triton if fused_triton.available() else None
    return _TRITON


_TRITON = False


def _kernel(  # noqa: C901  (the whole scan in one compiled function)
        r, v, s, beta, th, P, N, base, n1, n2, sums1, sums2, Fbuf, Cbuf, C, have_c, stop,
        rule, norm, subtract, spiking, direction, keep, details, zero_mask, B,
        eps, alpha, beta_ab, floor, one, ln, lW, lg, rdiv, F, Fi, box,
        boxi):  # pragma: no cover - compiled by numba
    T, M = v.shape
    per = M // B
    mx = np.empty(B, v.dtype)
    acc = np.empty(lW.shape[1], v.dtype)
    zero = one - one  # constants in the arrays' dtype (a float64 literal would promote float32)
    lowrank = lW.shape[0] > 0  # r_t made here, one step at a time (see _lowrank_row)
    for t in range(T - 1, stop - 1, -1):
        tr = t
        if lowrank:  # r_t made here: as F_t = r_t + c_t where one max of the step comes next
            _lowrank_row(F if norm != 2 else r[0], ln, lW, lg, t, B, rdiv, one, C,
                         have_c and norm != 2, acc)
            tr = 0
        # pass 1: F_t = r_t + c_t, and its max-abs (per step or per sample); NaN -> no scaling
        if norm != 2:
            if not lowrank:
                _fill(F, r[tr], C, have_c)
            m = _maxabs(Fi, box, boxi, one) if norm == 1 else zero
            m = m if m > floor else one  # also the NaN marker -1
            for b in range(B):
                mx[b] = m
        for b in range(B if norm == 2 else 0):
            m = zero
            nan = False
            for k in range(per):
                i = b * per + k
                f = r[tr, i] + C[i] if have_c else r[tr, i]
                F[i] = f
                if norm != 0:
                    a = abs(f)
                    if a > m:
                        m = a
                    elif a != a:
                        nan = True
            mx[b] = -one if nan else m
        if norm == 2:
            for b in range(B):
                if not mx[b] > floor:
                    mx[b] = one
        zu_here = spiking and t > 0
        if rule == 1 and norm != 2 and not details:  # the default rule: branch-free loops
            _epsilon_step(F, C, v, s, beta, th, n1, sums1, t, mx[0], norm != 0, zu_here, subtract,
                          zero_mask, direction, keep, eps, one)
            have_c = zu_here
            continue
        tb = t if base.shape[0] > 1 else 0
        tp = t if P.shape[0] > 1 else 0
        # pass 2: normalize, n_t, the temporal term c_{t-1}
        for b in range(B):
            m = mx[b]
            for k in range(per):
                i = b * per + k
                f = F[i] / m if norm != 0 else F[i]
                if details:
                    Fbuf[t, i] = f
                    if have_c:
                        Cbuf[t, i] = C[i]
                vt = v[t, i]
                zu = zero
                vp = zero
                z = vt
                if zu_here:
                    vp = v[t - 1, i]
                    sp = s[t - 1, i]
                    zu = vp * beta[i]
                    if zero_mask:
                        zu = zu * (one - sp)
                    if subtract:
                        z = vt + sp * th[i]
                if rule == 3:  # alphabeta
                    Zp = P[tp, i]
                    Zn = N[tp, i]
                    if zu_here:
                        Zp = Zp + (zu if zu > zero else zero)
                        Zn = Zn + (zu if zu < zero else zero)
                    na = f * (alpha / (Zp + eps))
                    nb = f * (beta_ab / (abs(Zn) + eps))
                    if keep:
                        n1[t, i] = na
                        n2[t, i] = nb
                    else:
                        sums1[i] += na
                        sums2[i] += nb
                    nsel = na if zu > zero else nb
                else:
                    if rule == 0:
                        D = abs(z)
                        n = f / D if D > zero else zero
                    else:
                        if rule == 1:
                            D = abs(z) + eps
                        elif rule == 2:
                            D = base[tb, i] if not zu_here else abs(zu) + base[tb, i]
                        else:  # lfprop
                            D = abs(z) + eps if not zu_here else abs(z - vp) + abs(vp) + eps
                        n = f / D
                    if keep:
                        n1[t, i] = n
                    else:
                        sums1[i] += n
                    nsel = n
                if zu_here:
                    C[i] = (abs(zu) if direction else zu) * nsel
        have_c = zu_here


def _lowrank_row(R, ln, lW, lg, t, B, rdiv, one, C, have_c, acc):  # pragma: no cover - numba
    """R = ((n_t W) * g_t) / rdiv (+ C with ``have_c``): the feedback a linear layer above sends
    at step t (spec section 3, r^below_t = x_t (n_t W)) from its n_t ``ln`` [T, B K], weights
    ``lW`` [K, N] and input ``lg`` [T, B N], made per step into ``R`` [B N] instead of read from a
    [T, B N] tensor (``rdiv``: the "layer" scope's max, or 1); ``acc``: an [N] scratch row. K is
    a multiple of ten (:func:`_lowrank_arrays` pads W and n with zero rows): the products are
    summed ten rows of W at a time (:func:`_ten_rows`), the groups one after another."""
    K, Nn = lW.shape
    for b in range(B):
        o = b * Nn
        for k in range(0, K, 10):
            _ten_rows(acc, ln[t], b * K + k, lW, k, k == 0)
        g = lg[t, o:o + Nn]
        out = R[o:o + Nn]
        c = C[o:o + Nn]
        div = rdiv != one  # x / 1 == x: the division only where a "layer" max divides
        for j in range(Nn):
            x = acc[j] * g[j]
            if div:
                x = x / rdiv
            out[j] = x + c[j] if have_c else x


def _ten_rows(acc, n, i, W, k, first):  # pragma: no cover - compiled by numba
    """acc (+)= sum_{q<10} n[i+q] W[k+q] over a row: ten weights per lane held in registers (one
    pass, no partial sums stored), summed as a tree; multiply-add fused where the CPU has it."""
    a0, a1, a2, a3, a4 = n[i], n[i + 1], n[i + 2], n[i + 3], n[i + 4]
    a5, a6, a7, a8, a9 = n[i + 5], n[i + 6], n[i + 7], n[i + 8], n[i + 9]
    w0, w1, w2, w3, w4 = W[k], W[k + 1], W[k + 2], W[k + 3], W[k + 4]
    w5, w6, w7, w8, w9 = W[k + 5], W[k + 6], W[k + 7], W[k + 8], W[k + 9]
    for j in range(acc.shape[0]):
        s = (((a0 * w0[j] + a1 * w1[j]) + (a2 * w2[j] + a3 * w3[j]))
             + ((a4 * w4[j] + a5 * w5[j]) + (a6 * w6[j] + a7 * w7[j]))) + (a8 * w8[j] + a9 * w9[j])
        acc[j] = s if first else acc[j] + s


def _fill(F, r, C, have_c):  # pragma: no cover - compiled by numba
    """F = r + C (or r; r: the row r_t)."""
    if have_c:
        for i in range(F.shape[0]):
            F[i] = r[i] + C[i]
    else:
        for i in range(F.shape[0]):
            F[i] = r[i]


def _maxabs(Fi, box, boxi, one):  # pragma: no cover - compiled by numba
    """max|F|, or -1 if F holds a NaN (torch's max is then NaN and no scaling happens). ``Fi``
    is F's memory as integers of its width (``box``/``boxi``: one float and its integer view):
    for floats >= 0 the order of the bit patterns is the order of the numbers, so the max is an
    integer max over the patterns without the sign bit (exact, and it vectorizes where a float
    max with NaN checks does not); a pattern above inf's is a NaN."""
    zero = one - one
    box[0] = -zero
    mask = ~boxi[0]  # every bit but the sign bit
    box[0] = one / zero
    inf = boxi[0]
    m = boxi[0] & 0
    for i in range(Fi.shape[0]):
        a = Fi[i] & mask
        m = a if a > m else m
    if m > inf:
        return -one
    boxi[0] = m
    return box[0]


def _epsilon_step(F, C, v, s, beta, th, n1, sums1, t, m, scale, zu_here, subtract, zero_mask,
                  direction, keep, eps, one):  # pragma: no cover - compiled by numba
    """Pass 2 of one step for the epsilon rule with one max (or none): the loops have no
    data-dependent branches, so they vectorize. Same arithmetic as the general loop."""
    M = F.shape[0]
    zero = one - one
    sub = one if subtract else zero      # z = v + s theta * sub: exact for sub in {0, 1}
    zm = one if zero_mask else zero      # z^u = (beta v) (1 - s zm): exact for zm in {0, 1}
    if not scale:
        m = one
    if not zu_here:
        for i in range(M):
            n = (F[i] / m) / (abs(v[t, i]) + eps)
            if keep:
                n1[t, i] = n
            else:
                sums1[i] += n
        return
    for i in range(M):
        vp = v[t - 1, i]
        sp = s[t - 1, i]
        zu = (vp * beta[i]) * (one - sp * zm)
        z = v[t, i] + (sp * th[i]) * sub
        n = (F[i] / m) / (abs(z) + eps)
        if keep:
            n1[t, i] = n
        else:
            sums1[i] += n
        C[i] = (abs(zu) if direction else zu) * n


def _lif_kernel(I, V, S, beta, th, subtract, one, a, e):  # pragma: no cover - numba
    """The LIF forward of :func:`spikelfp.core.lif.lif_scan` (Heaviside, no grad) for neurons
    a..e-1 in one pass per step, in the torch path's arithmetic and order: v_1 = I_1; subtract:
    v_t = (v_{t-1} beta + I_t) + s_{t-1} (-theta); zero: v_t = ((1 - s_{t-1}) v_{t-1}) beta + I_t;
    s_t = v_t > theta. ``I`` is ``[T, M]`` or one constant row ``[1, M]``; ``one``: 1 in the
    arrays' dtype (a float64 literal would promote float32 arithmetic)."""
    T = V.shape[0]
    pb = 0 if beta.shape[0] == 1 else 1  # scalar (one element) or one value per element
    pt = 0 if th.shape[0] == 1 else 1
    bb = beta[a * pb:(e - 1) * pb + 1]
    tb = th[a * pt:(e - 1) * pt + 1]
    for t in range(T):
        It = I[t if I.shape[0] > 1 else 0, a:e]
        if t == 0:
            for i in range(e - a):
                v = It[i]
                V[0, a + i] = v
                S[0, a + i] = v > tb[i * pt]
        else:
            _lif_step(It, V[t - 1, a:e], S[t - 1, a:e], V[t, a:e], S[t, a:e], bb, tb, pb, pt,
                      subtract, one)


def _lif_par(I, V, S, beta, th, subtract, one, parts):  # pragma: no cover - numba (parallel)
    """:func:`_lif_kernel` with the neurons split into ``parts`` ranges (multiples of 64), one
    per thread; elementwise, so the same numbers on any number of threads."""
    M = V.shape[1]
    per = -(-M // parts // 64) * 64
    for p in numba.prange(parts):
        if p * per < M:
            _lif_kernel(I, V, S, beta, th, subtract, one, p * per, min(M, (p + 1) * per))


def _lif_step(It, Vp, Sp, Vt, St, beta, th, pb, pt, subtract, one):  # pragma: no cover - numba
    """One step t > 0 of :func:`_lif_kernel` on rows ``[M]``. With one beta and one theta they are
    read once, so that the loop vectorizes (3-5x faster than indexing them per element)."""
    M = Vt.shape[0]
    if pb == 0 and pt == 0:
        b = beta[0]
        h = th[0]
        nh = -h
        if subtract:
            for i in range(M):
                v = (Vp[i] * b + It[i]) + Sp[i] * nh
                Vt[i] = v
                St[i] = v > h
        else:
            for i in range(M):
                v = ((one - Sp[i]) * Vp[i]) * b + It[i]
                Vt[i] = v
                St[i] = v > h
        return
    for i in range(M):
        bi = beta[i * pb]
        hi = th[i * pt]
        if subtract:
            v = (Vp[i] * bi + It[i]) + Sp[i] * (-hi)
        else:
            v = ((one - Sp[i]) * Vp[i]) * bi + It[i]
        Vt[i] = v
        St[i] = v > hi


def lif_forward(current: Tensor, beta: Tensor, threshold: Tensor, reset: str, T: int,
                frame_shape, constant: bool, compact: bool):
    """Fused no-grad Heaviside LIF scan (see :func:`_lif_kernel`): returns ``(spikes, membrane)``
    ``[T, *frame_shape]``, spikes uint8 with ``compact`` else in the current's dtype;
    bit-identical to the torch loop of :func:`spikelfp.core.lif.lif_scan`."""
    if current.device.type == "cuda":
        return _triton().lif_forward(current, beta, threshold, reset, T, frame_shape, constant,
                                     compact)
    dt = current.dtype
    V = torch.empty((T, *frame_shape), dtype=dt, device=current.device)
    S = torch.empty(V.shape, dtype=torch.uint8 if compact else dt, device=V.device)
    cur = current.detach().contiguous()
    rows = cur.reshape(1, -1) if constant else cur.reshape(T, -1)
    args = (rows.numpy(), V.reshape(T, -1).numpy(), S.reshape(T, -1).numpy(),
            _per_neuron(beta, V, scalar=True), _per_neuron(threshold, V, scalar=True),
            reset == "subtract", _np_float(dt)(1.0))
    M = args[1].shape[1]
    parts = _parts(M * T, SPLIT_STEPS)
    if parts > 1:
        _lif_par_compiled(*args, parts)
    else:
        _lif_compiled(*args, 0, M)
    return S, V


if HAVE_NUMBA:
    # error_model="numpy": IEEE division (x/0 = inf or nan, as in torch) without a Python
    # ZeroDivisionError check per division, which would keep the loops from vectorizing
    _JIT = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    _epsilon_step = numba.njit(**_JIT)(_epsilon_step)
    _lowrank_row = numba.njit(**_JIT)(_lowrank_row)
    _ten_rows = numba.njit(fastmath={"contract"}, **_JIT)(_ten_rows)
    _abs_mul = numba.njit(**_JIT)(_abs_mul)
    _ten_dots = numba.njit(fastmath={"reassoc", "contract"}, **_JIT)(_ten_dots)
    _narrow_rows = numba.njit(**_JIT)(_narrow_rows)
    _narrow_rows_par = numba.njit(parallel=True, **_JIT)(_narrow_rows_par)
    _eight_rows = numba.njit(fastmath={"contract"}, **_JIT)(_eight_rows)
    _narrow_corr = numba.njit(**_JIT)(_narrow_corr)
    _narrow_corr_par = numba.njit(parallel=True, **_JIT)(_narrow_corr_par)
    _fill = numba.njit(**_JIT)(_fill)
    _maxabs = numba.njit(**_JIT)(_maxabs)
    _lif_step = numba.njit(**_JIT)(_lif_step)
    _lif_kernel = _lif_compiled = numba.njit(**_JIT)(_lif_kernel)
    _lif_par_compiled = numba.njit(parallel=True, **_JIT)(_lif_par)
    _compiled = numba.njit(**_JIT)(_kernel)
else:  # pragma: no cover
    _compiled = _lif_compiled = _lif_par_compiled = None


def _flat(a: Tensor, cols: Optional[int] = None) -> np.ndarray:
    """``[T, B, ...]`` -> a C-contiguous numpy ``[T, M]`` view, or ``[-1, cols]`` rows with
    ``cols`` (bool spikes as uint8)."""
    a = a.detach()
    if a.dtype == torch.bool:
        a = a.view(torch.uint8)
    a = a.contiguous()
    return (a.reshape(a.shape[0], -1) if cols is None else a.reshape(-1, cols)).numpy()


def _np_float(dt: torch.dtype):
    """numpy's float type for a float32/float64 torch dtype."""
    return np.float64 if dt == torch.float64 else np.float32


def _pad_ten(t: Tensor, dim: int) -> Tensor:
    """``t`` (detached, contiguous) with zeros appended along ``dim`` up to a multiple of ten: the
    kernels that take ten rows at a time (:func:`_ten_rows`, :func:`_ten_dots`)."""
    extra = -t.shape[dim] % 10
    if not extra:  # the common case (ten classes): no copy
        return t.detach().contiguous()
    return torch.nn.functional.pad(t.detach(), [0, 0] * (t.dim() - dim - 1) + [0, extra]).contiguous()


def _per_neuron(p, like: Tensor, scalar: bool = False) -> np.ndarray:
    """beta or theta (scalar or broadcastable to ``[B, *out]``) as a contiguous ``[M]`` array
    (with ``scalar``: a one-element array for a single value, no M-sized copy)."""
    p = torch.as_tensor(p, dtype=like.dtype, device=like.device).detach()
    if scalar and p.numel() == 1:
        return p.reshape(1).contiguous().numpy()
    return p.expand(like.shape[1:]).contiguous().reshape(-1).numpy()


def _steps(a: Optional[Tensor], membrane: Tensor, empty: np.ndarray) -> np.ndarray:
    """A precomputed sum ``[T, B, *out]`` or constant ``[B, *out]`` as ``[T or 1, M]``."""
    if a is None:
        return empty
    if a.dim() == membrane.dim() - 1:
        a = a.unsqueeze(0)
    return a.contiguous().reshape(a.shape[0], -1).numpy()


def scan_outputs(membrane: Tensor, k: int, keep: bool, details: bool):
    """The outputs of a reverse scan over ``membrane`` ``[T, B, *out]``: ``(n, sums, F, c)``: ``k``
    n buffers (``keep``) or ``k`` running sums (zeros), and F, c with ``details`` (else None)."""
    n = [torch.empty_like(membrane) for _ in range(k)] if keep else None
    sums = [torch.zeros_like(membrane[0]) for _ in range(k)] if not keep else None
    F = torch.empty_like(membrane) if details else None
    c = torch.zeros_like(membrane) if details else None
    return n, sums, F, c


def reverse_scan(r: Tensor, membrane: Tensor, spikes: Tensor, beta, threshold, *, reset: str,
                 spiking: bool, rule, normalize: Optional[str], direction: bool, keep: bool,
                 details: bool, base: Optional[Tensor] = None, P: Optional[Tensor] = None,
                 N: Optional[Tensor] = None, out=None, carry: Optional[Tensor] = None,
                 stop: int = 0, lowrank=None, skip_silent: bool = True,
                 live: Optional["LiveColumns"] = None):
    """Run the fused reverse scan (see the module docstring). ``r``, ``membrane``, ``spikes``:
    ``[T, B, *out]`` (spikes uint8, bool or float); ``base``: the z+z- sum ``sum |W||x| + eps (+ |b|)``,
    ``P``/``N``: the alphabeta sums of positive/negative contributions (each ``[T, B, *out]`` or a
    constant ``[B, *out]``). ``normalize``: "step", "sample" or None ("layer" must already be
    applied to ``r``).

    A part of a longer scan: ``stop`` (scan t = T-1 .. stop; rows below ``stop`` are only read,
    as step ``stop`` reads v and s at ``stop - 1``), ``carry`` (``[B, *out]``: c at the top step,
    overwritten with c_{stop-1} at the end) and ``out`` (the outputs to write into, as from
    :func:`scan_outputs`; the running sums accumulate).

    ``lowrank`` (CPU only): ``(n, W, x, m)`` instead of ``r`` (which is then not read): r_t =
    (x_t (n_t W)) / m, the feedback a linear layer above with n ``[T, B, K]``, weights ``[K, N]``
    and compact input ``x`` ``[T, B, N]`` sends, made one step at a time inside the scan (no
    ``[T, B, N]`` tensor of it; ``m``: the "layer" scope's max or None).

    With ``lowrank`` (a whole scan: no ``carry``, ``stop`` 0, no ``details``) and
    ``skip_silent``, the neurons whose input to the layer above is 0 at every step and in every
    sample (a neuron that never spiked) are left out when they are at most ``LIVE_GATHER_MAX`` of
    the layer: their r_t is 0 at every step, so F_t, c_t and n_t are 0 (F / D with D > 0 for
    every rule), and they do not change a max; the others are scanned on gathered copies and
    give the same numbers as the whole scan (see :func:`_live_scan`). ``live``: those neurons
    (and the gate x gathered to them) where the caller has found them already
    (:func:`gather_live`; ``NOT_SPARSE``: it looked, and the whole scan runs without a look).

    Returns ``(n, sums, F, c)``: ``n`` a list of ``[T, B, *out]`` tensors (one, or (n+, n-) for
    alphabeta) when ``keep``, else None; ``sums`` the list of sum_t n_t ``[B, *out]`` when not
    ``keep``; ``F`` and ``c`` (normalized feedback and arriving temporal term) with ``details``.
    """
    ab = rule.name == "alphabeta"
    k = 2 if ab else 1
    if out is None:
        out = scan_outputs(membrane, k, keep, details)
    if membrane.device.type == "cuda":
        if lowrank is not None:
            raise ValueError("reverse_scan: lowrank runs on the CPU kernel only; pass r on CUDA")
        return _triton().reverse_scan(
            r, membrane, spikes, beta, threshold, reset=reset, spiking=spiking, rule=rule,
            normalize=normalize, direction=direction, keep=keep, details=details, base=base,
            P=P, N=N, out=out, carry=carry, stop=stop)
    if not HAVE_NUMBA:  # pragma: no cover
        raise RuntimeError("the fused reverse scan needs numba; check spikelfp.core.fused.usable first")
    if lowrank is not None and skip_silent and carry is None and stop == 0 and not details:
        if live is None:
            idx = live_columns(lowrank[2], membrane[0, 0].numel(), LIVE_GATHER_MAX)
            live = None if idx is None else LiveColumns(idx)
        if live is not None and live.index is not None:
            return _live_scan(live, membrane, spikes, beta, threshold, lowrank, out,
                              dict(reset=reset, spiking=spiking, rule=rule, normalize=normalize,
                                   direction=direction, keep=keep, base=base, P=P, N=N))
    dt = membrane.dtype
    np_dt = _np_float(dt)
    B = membrane.shape[1]
    empty = np.empty((0, 0), np_dt)
    v_np = _flat(membrane)
    if lowrank is None:
        r_np, lr = _flat(r.to(dt)), (empty, empty, np.empty((0, 0), np.uint8), np_dt(1.0))
    else:
        # the kernel writes r_t into F itself; a row for r only where per-sample maxima read it
        rows = v_np.shape[1] if normalize == "sample" else 0
        r_np, lr = np.empty((1, rows), np_dt), _lowrank_arrays(lowrank, dt, np_dt)
    # spikes as uint8 0/1 (one compiled variant per float dtype, not per spike dtype); they are
    # read only for a spiking layer (ReLU mode: activations, never read)
    if not spiking:
        s_np = np.empty((0, 0), np.uint8)
    else:
        s_np = _flat(spikes if spikes.dtype in (torch.uint8, torch.bool) else spikes.to(torch.uint8))
    n_t, sum_t, F_t, c_t = out
    n_np = [_flat(n) for n in n_t] if keep else [empty, empty]
    if keep and k == 1:
        n_np.append(empty)
    s_np_sums = [s.reshape(-1).numpy() for s in sum_t] if not keep else []
    e1 = np.empty(0, np_dt)
    sums1 = s_np_sums[0] if s_np_sums else e1
    sums2 = s_np_sums[1] if len(s_np_sums) > 1 else e1
    C = carry.reshape(-1).numpy() if carry is not None else np.zeros(v_np.shape[1], np_dt)
    _compiled(
        r_np, v_np, s_np, _per_neuron(beta, membrane), _per_neuron(threshold, membrane),
        _steps(P, membrane, empty), _steps(N, membrane, empty), _steps(base, membrane, empty),
        n_np[0], n_np[1], sums1, sums2,
        _flat(F_t) if details else empty, _flat(c_t) if details else empty,
        C, carry is not None, int(stop),
        RULE_CODES[rule.name], NORM_CODES[normalize], reset == "subtract", bool(spiking),
        bool(direction), bool(keep), bool(details), reset == "zero" and rule.name != "lfprop", B,
        np_dt(rule.epsilon), np_dt(rule.alpha), np_dt(rule.beta), np_dt(NORM_FLOOR), np_dt(1.0),
        *lr, *_scratch(v_np.shape[1], np_dt),
    )
    return out


LIVE_GATHER_MAX = 0.4  # largest share of live columns at which kernels gather them (measured)
LIVE_MIN = 1 << 16   # neuron-steps below which no scan or product looks for silent columns


class LiveColumns(NamedTuple):
    """The columns of an input that hold a nonzero (a spike; ``index``, int64, ascending) and,
    when gathered, the input restricted to them (``x``, ``[..., len(index)]``: uint8 for compact
    spikes, else the input's float dtype; or None). ``index`` None: looked at, and too many are
    live (or they must not be left out): every column is computed, and nobody looks again."""

    index: Optional[Tensor]
    x: Optional[Tensor] = None

    def gathered(self) -> bool:
        """Whether some columns are live and x is gathered to them."""
        return self.index is not None and self.x is not None and self.index.numel() > 0


#: what :func:`gather_live` gives when it looked and found too many live columns
NOT_SPARSE = LiveColumns(None)


def gather_live(x: Tensor, most: float) -> Optional[LiveColumns]:
    """:func:`live_columns` of ``x`` ``[..., K]`` over its last dim, with x gathered to them
    (uint8 for compact x); ``NOT_SPARSE`` where more than ``most`` are live; None where
    :func:`live_columns` does not look (switched off, a small or non-CPU x)."""
    K = x.shape[-1]
    if not live_looks(x, K):
        return None
    idx = live_columns(x, K, most)
    if idx is None:
        return NOT_SPARSE
    x_c = torch.empty((*x.shape[:-1], idx.numel()),
                      dtype=x.dtype if x.is_floating_point() else torch.uint8)
    if idx.numel():
        _gather(_flat(x, K), idx.numpy(), x_c.reshape(-1, idx.numel()).numpy())
    return LiveColumns(idx, x_c)


def live_columns(x: Tensor, cols: int, most: float) -> Optional[Tensor]:
    """The indices (int64) of the columns of ``x`` (as rows ``[-1, cols]``; compact uint8/bool,
    or float32/float64 on the CPU) that hold a nonzero entry (NaN counts), when they are at most
    ``most`` of the ``cols`` columns and ``x`` is large enough to gain from leaving the others
    out (``LIVE_MIN``); else None (also with the kernels or :func:`skip_silent` switched off)."""
    if not live_looks(x, cols):
        return None
    seen = np.zeros(cols, np.uint8)
    (_or_nonzero_rows if x.is_floating_point() else _or_rows)(_flat(x, cols), seen)
    live = np.flatnonzero(seen)
    return torch.from_numpy(live) if live.size <= most * cols else None


def live_looks(x: Tensor, cols: int) -> bool:
    """Whether :func:`live_columns` looks at ``x`` at all: switched on (:func:`skip_silent`,
    the kernels), a CPU tensor of a compact or float dtype, at least ``LIVE_MIN`` elements."""
    return (enabled() and _SKIP_SILENT and x.device.type == "cpu" and x.numel() >= LIVE_MIN
            and cols >= 2 and x.dtype in (torch.uint8, torch.bool, torch.float32, torch.float64))


def _or_rows(x, seen):  # pragma: no cover - compiled by numba
    """seen[j] != 0 where a row of x (``x`` [R, N] uint8) holds a nonzero in column j."""
    for r in range(x.shape[0]):
        row = x[r]
        for j in range(seen.shape[0]):
            seen[j] |= row[j]


def _or_nonzero_rows(x, seen):  # pragma: no cover - compiled by numba
    """:func:`_or_rows` for a float x (NaN counts as nonzero)."""
    for r in range(x.shape[0]):
        row = x[r]
        for j in range(seen.shape[0]):
            seen[j] |= row[j] != 0


def _gather_cols(a, idx, out):  # pragma: no cover - compiled by numba
    """out[r, k] = a[r, idx[k]] for every row r."""
    for r in range(a.shape[0]):
        row = a[r]
        o = out[r]
        for k in range(idx.shape[0]):
            o[k] = row[idx[k]]


def _gather_two(a, b, idx, ao, bo):  # pragma: no cover - compiled by numba
    """:func:`_gather_cols` of two arrays with the same rows (v and s) in one pass."""
    for r in range(a.shape[0]):
        ra, rb = a[r], b[r]
        oa, ob = ao[r], bo[r]
        for k in range(idx.shape[0]):
            j = idx[k]
            oa[k] = ra[j]
            ob[k] = rb[j]


def _scatter_cols(c, idx, out):  # pragma: no cover - compiled by numba
    """out[r] = 0, then out[r, idx[k]] = c[r, k] for every row r."""
    for r in range(out.shape[0]):
        o = out[r]
        o[:] = 0
        row = c[r]
        for k in range(idx.shape[0]):
            o[idx[k]] = row[k]


SPLIT_GATHER = 1 << 17  # gathered elements per thread below which a gather stays on one thread


def _gather_par(a, idx, out, parts):  # pragma: no cover - compiled by numba (parallel)
    """:func:`_gather_cols` with the rows split into ``parts`` ranges, one per thread."""
    R = a.shape[0]
    per = -(-R // parts)
    for p in numba.prange(parts):
        r0, r1 = p * per, min(R, (p + 1) * per)
        if r0 < r1:
            _gather_cols(a[r0:r1], idx, out[r0:r1])


def _gather_two_par(a, b, idx, ao, bo, parts):  # pragma: no cover - numba (parallel)
    """:func:`_gather_two` with the rows split into ``parts`` ranges, one per thread."""
    R = a.shape[0]
    per = -(-R // parts)
    for p in numba.prange(parts):
        r0, r1 = p * per, min(R, (p + 1) * per)
        if r0 < r1:
            _gather_two(a[r0:r1], b[r0:r1], idx, ao[r0:r1], bo[r0:r1])


def _gather(a: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """out = a[:, idx] (rows ``[R, N]`` -> ``[R, A]``), over :func:`threads` for large ones (a
    copy: the same result on any number of threads)."""
    parts = _parts(out.size, SPLIT_GATHER)
    if parts > 1:
        _gather_par_compiled(a, idx, out, parts)
    else:
        _gather_cols(a, idx, out)


def _gather2(a, b, idx, ao, bo) -> None:
    """:func:`_gather` of two arrays with the same rows (v and s) in one pass."""
    parts = _parts(ao.size, SPLIT_GATHER)
    if parts > 1:
        _gather_two_par_compiled(a, b, idx, ao, bo, parts)
    else:
        _gather_two(a, b, idx, ao, bo)


if HAVE_NUMBA:
    _or_rows = numba.njit(**_JIT)(_or_rows)
    _or_nonzero_rows = numba.njit(**_JIT)(_or_nonzero_rows)
    _gather_cols = numba.njit(**_JIT)(_gather_cols)
    _gather_two = numba.njit(**_JIT)(_gather_two)
    _gather_par_compiled = numba.njit(parallel=True, **_JIT)(_gather_par)
    _gather_two_par_compiled = numba.njit(parallel=True, **_JIT)(_gather_two_par)
    _scatter_cols = numba.njit(**_JIT)(_scatter_cols)


LIVE_CHUNK = 1 << 21  # bytes of gathered membranes per chunk of steps of the scan (2 MiB)


def _live_scan(live: LiveColumns, membrane: Tensor, spikes: Tensor, beta, threshold, lowrank,
               out, scan: dict):
    """:func:`reverse_scan` on the ``live`` neurons only (see there), from the last steps a chunk
    at a time (``LIVE_CHUNK`` bytes of gathered v; c carried across chunks, as the lazy chunks
    do): v, s and the gate x of a chunk (unless ``live`` brings x gathered), the layer above's W
    columns, per-neuron beta and theta and the rule's sums gathered; n scattered back per chunk
    (zeros for the silent neurons), the sums at the end."""
    T, B = membrane.shape[:2]
    Nn, A = membrane[0, 0].numel(), live.index.numel()
    idx = live.index.numpy()

    def g(a, steps=True, into=None):  # [T', B, *out] -> [T', B, A]; [B, *out] -> [B, A]
        if a is None:
            return None
        res = into if into is not None else torch.empty(
            a.numel() // Nn * A, dtype=torch.uint8 if a.dtype == torch.bool else a.dtype)
        _gather(_flat(a, Nn), idx, res.reshape(-1, A).numpy())
        return res.reshape((-1, B, A) if steps else (B, A))

    def param(p):  # beta or theta: one value as it is, else per neuron of [B, *out]
        t = torch.as_tensor(p, dtype=membrane.dtype)
        return p if t.numel() == 1 else g(t.expand(membrane.shape[1:]), steps=False)

    if out is None:
        out = scan_outputs(membrane, 2 if scan["rule"].name == "alphabeta" else 1, scan["keep"],
                           False)
    if A == 0:  # a silent layer: n = 0 everywhere, the sums stay as they are
        for dst in out[0] or ():
            dst.zero_()
        return out
    n_up, W_up, x_up, m = lowrank
    W_c = W_up.detach().reshape(W_up.shape[0], -1).index_select(1, live.index)
    same = (x_up.data_ptr() == spikes.data_ptr() and x_up.numel() == spikes.numel()
            and x_up.element_size() == spikes.element_size() and x_up.is_contiguous()
            and spikes.is_contiguous())  # the gate is this layer's spikes: gathered once
    gate = None if live.x is None else live.x.reshape(-1, B, A)
    per_step = {k: a for k, a in scan.items() if k in ("base", "P", "N") and a is not None
                and a.dim() == membrane.dim()}
    fixed = {k: g(a, steps=False) for k, a in scan.items() if k in ("base", "P", "N")
             and a is not None and a.dim() < membrane.dim()}
    keep, k = scan["keep"], 2 if scan["rule"].name == "alphabeta" else 1
    steps = max(1, LIVE_CHUNK // (B * A * membrane.element_size()))
    rows = min(T, steps + 1)  # a chunk's slices start one step early (step a reads a - 1)

    def buf(dtype):
        return torch.empty((rows, B, A), dtype=torch.uint8 if dtype == torch.bool else dtype)
    v_buf = buf(membrane.dtype)
    s_buf = None if gate is not None and same else buf(spikes.dtype)
    x_buf = None if gate is not None or same else buf(x_up.dtype)
    n_buf = [buf(membrane.dtype) for _ in range(k)] if keep else None
    sums = None if keep else [torch.zeros((B, A), dtype=membrane.dtype) for _ in range(k)]
    carry = torch.zeros((B, A), dtype=membrane.dtype) if steps < T else None
    beta_c, th_c = param(beta), param(threshold)
    for b in range(T, 0, -steps):
        a = max(0, b - steps)
        lo = a - 1 if a > 0 else 0
        L = b - lo
        v_c = v_buf[:L]
        if s_buf is None:
            g(membrane[lo:b], into=v_c)
            s_c = gate[lo:b]
        else:
            s_c = s_buf[:L]
            _gather2(_flat(membrane[lo:b], Nn), _flat(spikes[lo:b], Nn), idx,
                     v_c.reshape(-1, A).numpy(), s_c.reshape(-1, A).numpy())
        x_c = s_c if same else (gate[lo:b] if gate is not None else g(x_up[lo:b], into=x_buf[:L]))
        part = {**fixed, **{key: g(t[lo:b]) for key, t in per_step.items()}}
        sub = ([n[:L] for n in n_buf] if keep else None, sums, None, None)
        reverse_scan(None, v_c, s_c, beta_c, th_c, details=False, out=sub, carry=carry,
                     stop=a - lo, lowrank=(n_up[lo:b], W_c, x_c, m), skip_silent=False,
                     **{**scan, **part})
        for dst, src in zip(out[0] or (), n_buf or ()):
            _scatter_cols(src[a - lo:L].reshape(-1, A).numpy(), idx,
                          dst[a:b].reshape(-1, Nn).numpy())
    for dst, src in zip(out[1] or (), sums or ()):
        dst.reshape(B, Nn).index_add_(1, live.index, src)
    return out


def _scratch(M: int, np_dt):
    """The kernel's F row ``[M]`` and a one-element box, each with its integer view."""
    it = np.int64 if np_dt == np.float64 else np.int32
    F, box = np.empty(M, np_dt), np.empty(1, np_dt)
    return F, F.view(it), box, box.view(it)


def _lowrank_arrays(lowrank, dt, np_dt):
    """``(n, W, x, m)`` of :func:`reverse_scan` as the kernel's ``[T, B K']``, ``[K', N]``, uint8
    ``[T, B N]`` arrays and the divisor; K' is K rounded up to a multiple of ten, the added rows
    of n and W zero (they add +0 to every sum: :func:`_lowrank_row` sums ten rows at a time)."""
    n, W, x, m = lowrank
    return (_flat(_pad_ten(n.to(dt), n.dim() - 1)), _pad_ten(W.to(dt), 0).numpy(), _flat(x),
            np_dt(1.0) if m is None else np_dt(float(m)))
