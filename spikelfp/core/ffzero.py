"""FFzero math (spec ``ffzero-for-lif.md``): class prototypes, the local margin loss, random
directions and the directional-derivative estimate. Pure functions of tensors, no autograd.

Prototypes (section 2). For C classes and a layer of N >= C neurons, the C vertices of a regular
simplex centered at 0::

    P0[k] = (e_k - 1/C) / ||e_k - 1/C||  (zero-padded to N),   |P0[k]| = 1,
    cos(P0[j], P0[k]) = -1/(C-1)  (j != k)

hidden layers use ``P = P0 R`` with R a Haar-random orthogonal N x N matrix; only the first C
rows of R matter, so they are drawn as an exact Haar C-frame (thin QR of a Gaussian N x C
matrix with the sign fix, = the first C columns of the full Haar matrix of the same draw).

Local loss of a layer with representation z ``[B, N]`` and labels y::

    s_{b,k} = cos(z_b, P[k])          (cos(0, P) := 0)
    L = (1/B) sum_b sum_{k != y_b} max(0, m + s_{b,k} - s_{b,y_b})

Estimator (section 3). With K unit directions u_k of the layer's d parameters (weight and bias
together) and the 2K losses L^+_k = L(theta + eps u_k), L^-_k = L(theta - eps u_k)::

    G = -(d / K) sum_k (L^+_k - L^-_k) / (2 eps) u_k     (direction of improvement, param.grad = -G)

E[d u u^T] = I, so -G is an unbiased estimate of grad L as eps -> 0. The 2K losses are the only
thing that depends on the data: :func:`direction_coefficients` turns them into the K
coefficients of G, so a data-parallel run can all-reduce the losses first, and every process can
redraw the same u_k from :func:`direction_seed`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as Fn

from .synapse import Conv2dOps, LinearOps

Tensor = torch.Tensor

_PROTO_TAG = 0x5F0
_DIRECTION_TAG = 0xD1E


# ----------------------------------------------------------------------------- seeds

def mix_seed(*keys: int) -> int:
    """One 62-bit seed from integer keys (the same mixing as the loop's generators)."""
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2 ** 62)
    return seed


def direction_seed(seed: int, step: int, layer: int) -> int:
    """Seed of the directions of synaptic layer ``layer`` at global step ``step`` of a run seeded
    ``seed``: any process can redraw the same directions from these three integers."""
    return mix_seed(_DIRECTION_TAG, seed, step, layer)


def prototype_seed(seed: int, layer: int) -> int:
    """Seed of the prototype rotation of synaptic layer ``layer`` in a run seeded ``seed``."""
    return mix_seed(_PROTO_TAG, seed, layer)


# ----------------------------------------------------------------------------- prototypes

def simplex_prototypes(num_classes: int, width: int, dtype=torch.float32, device=None) -> Tensor:
    """The C unit vertices of a regular simplex centered at 0, zero-padded to ``width``: ``[C, N]``
    (rows of I_C - 1/C, normalized). Needs 2 <= C <= N."""
    C, N = int(num_classes), int(width)
    if C < 2:
        raise ValueError(f"simplex prototypes: num_classes={C}; need at least 2 classes")
    if N < C:
        raise ValueError(f"simplex prototypes: width {N} is smaller than num_classes={C}")
    eye = torch.eye(C, dtype=torch.float64)
    rows = eye - 1.0 / C
    rows = rows / rows.norm(dim=1, keepdim=True)
    out = torch.zeros(C, N, dtype=torch.float64)
    out[:, :C] = rows
    return out.to(dtype=dtype, device=device)


def haar_frame(n: int, k: int, generator: torch.Generator) -> Tensor:
    """The first ``k`` columns ``[n, k]`` of a Haar-random orthogonal n x n matrix (float64):
    thin QR of a Gaussian matrix whose columns are the first k columns of the Gaussian n x n
    draw, with the sign fix Q <- Q diag(sign(diag(R))) that makes the law exactly Haar."""
    if not 1 <= k <= n:
        raise ValueError(f"haar_frame: need 1 <= k <= n, got n={n}, k={k}")
    # drawn column by column, so the k columns are those of the n x n draw from the same state
    a = torch.stack([torch.randn(n, generator=generator, dtype=torch.float64) for _ in range(k)], 1)
    q, r = torch.linalg.qr(a, mode="reduced")
    d = torch.sign(torch.diagonal(r))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return q * d


def haar_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """A Haar-random orthogonal ``[n, n]`` matrix (float64): QR of a Gaussian with the sign fix."""
    return haar_frame(n, n, generator)


def layer_prototypes(num_classes: int, width: int, rotate: bool,
                     generator: Optional[torch.Generator] = None, dtype=torch.float32,
                     device=None) -> Tensor:
    """Prototypes ``[C, N]`` of one layer: the simplex, Haar-rotated when ``rotate`` (hidden
    layers; ``P0 R`` with R Haar, computed as ``P0[:, :C] R[:C, :]``), unrotated otherwise (the
    output layer: neuron c stands for class c)."""
    p0 = simplex_prototypes(num_classes, width, dtype=torch.float64)
    if rotate:
        if generator is None:
            raise ValueError("layer_prototypes: rotate=True needs a seeded generator")
        frame = haar_frame(int(width), int(num_classes), generator)  # R[:C, :]^T
        p0 = p0[:, :num_classes] @ frame.t()
    return p0.to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------- loss

def cosine_scores(z: Tensor, prototypes: Tensor) -> Tensor:
    """``s[..., b, k] = cos(z[..., b, :], P[k])`` for unit prototypes ``[C, N]`` and ``z``
    ``[..., B, N]``; a zero z gives 0 (cos(0, P) := 0)."""
    norm = z.norm(dim=-1, keepdim=True)
    dots = z @ prototypes.t()
    return dots / torch.where(norm > 0, norm, torch.ones_like(norm))


def margin_loss(scores: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """Multi-class margin loss ``(1/B) sum_b sum_{k != y_b} max(0, m + s_{b,k} - s_{b,y_b})`` for
    scores ``[..., B, C]`` and labels ``[B]``: one value per leading index ``[...]``."""
    idx = labels.reshape(*([1] * (scores.dim() - 2)), -1, 1).expand(*scores.shape[:-1], 1)
    s_y = scores.gather(-1, idx)
    h = torch.clamp_min(margin + scores - s_y, 0.0)
    h = h.scatter(-1, idx, 0.0)  # drop k = y
    return h.sum(-1).mean(-1)


def prototype_predict(z: Tensor, prototypes: Tensor) -> Tensor:
    """Prototype readout ``argmax_k cos(z_b, P[k])`` ``[..., B]``."""
    return cosine_scores(z, prototypes).argmax(-1)


# ----------------------------------------------------------------------------- directions

def sample_directions(K: int, shapes: Sequence[Tuple[int, ...]], generator: torch.Generator,
                      dtype=torch.float32, device=None) -> List[Tensor]:
    """K directions ``u_k ~ N(0, I_d)`` over parameters of the given shapes (d = total size),
    normalized to unit length jointly over all of them: one tensor ``[K, *shape]`` per shape."""
    parts = [torch.randn((K, *s), generator=generator, dtype=dtype, device=device) for s in shapes]
    sq = sum(p.reshape(K, -1).pow(2).sum(1) for p in parts)
    inv = sq.rsqrt()
    return [p.mul_(inv.reshape(K, *([1] * (p.dim() - 1)))) for p in parts]


def direction_coefficients(losses: Tensor, eps: float, dim: int) -> Tensor:
    """The K coefficients ``c_k = -(d / K) (L^+_k - L^-_k) / (2 eps)`` of G from the 2K losses
    ``[L^+_1..L^+_K, L^-_1..L^-_K]`` (``G = sum_k c_k u_k``). A data-parallel run all-reduces the
    losses (they are batch means) before calling this."""
    if losses.dim() != 1 or losses.shape[0] % 2:
        raise ValueError(f"direction_coefficients: losses of shape {tuple(losses.shape)}; "
                         f"need [2K] (K plus, then K minus)")
    K = losses.shape[0] // 2
    return (losses[:K] - losses[K:]) * (-float(dim) / (2.0 * float(eps) * K))


def combine_directions(coefficients: Tensor, directions: Sequence[Tensor]) -> List[Tensor]:
    """``G = sum_k c_k u_k`` for each parameter's directions ``[K, *shape]`` -> ``[*shape]``."""
    return [torch.tensordot(coefficients.to(u.dtype), u, dims=1) for u in directions]


def estimate_improvement(losses: Tensor, directions: Sequence[Tensor], eps: float) -> List[Tensor]:
    """G of every parameter of one layer from its 2K losses and its K directions (d counted
    over all the parameters): :func:`direction_coefficients` then :func:`combine_directions`."""
    dim = sum(u[0].numel() for u in directions)
    return combine_directions(direction_coefficients(losses, eps, dim), directions)


# ----------------------------------------------------------------------------- perturbed LIF

def lif_step_(current: Tensor, membrane: Tensor, spikes: Tensor, beta, threshold,
              reset: str = "subtract", first: bool = False) -> None:
    """One LIF step in place on preallocated ``membrane`` / ``spikes`` (the state of t - 1, or
    anything when ``first``): the arithmetic and its order are those of
    :func:`spikelfp.core.lif.lif_step` (bit-identical results), without allocating per step::

        v_t = beta v_{t-1} + I_t - theta s_{t-1}      (subtract)
        v_t = beta ((1 - s_{t-1}) v_{t-1}) + I_t      (zero)
        s_t = H(v_t - theta)
    """
    if first:
        membrane.copy_(current)
    elif reset == "subtract":
        membrane.mul_(beta).add_(current).addcmul_(spikes, -torch.as_tensor(threshold))
    else:
        membrane.mul_(1 - spikes).mul_(beta).add_(current)
    torch.gt(membrane, threshold, out=spikes)


# ----------------------------------------------------------------------------- batched currents

def direction_currents(ops, x: Tensor, u_weight: Tensor, u_bias: Optional[Tensor]) -> Tensor:
    """The synaptic currents of K weight directions for one input frame batch, in one
    matmul/convolution: ``dI[k] = ops.forward(x, U_k, u_k)`` -> ``[K, B, *out]``.

    Linear: ``x [B, N_in]`` against ``U [K, N_out, N_in]`` as one ``[K*N_out, N_in]`` matrix.
    Conv2d: the K kernels stacked along the output channels (group-major when the layer is
    grouped) in one convolution."""
    K = u_weight.shape[0]
    B = x.shape[0]
    if isinstance(ops, LinearOps):
        n_out = u_weight.shape[1]
        b = u_bias.reshape(-1) if u_bias is not None else None
        out = Fn.linear(x, u_weight.reshape(K * n_out, -1), b)          # [B, K*N_out]
        return out.reshape(B, K, n_out).transpose(0, 1)
    if isinstance(ops, Conv2dOps):
        g = ops.groups
        c_out = u_weight.shape[1]
        rest = u_weight.shape[2:]
        w = u_weight.reshape(K, g, c_out // g, *rest).transpose(0, 1).reshape(K * c_out, *rest)
        b = (u_bias.reshape(K, g, c_out // g).transpose(0, 1).reshape(-1)
             if u_bias is not None else None)
        out = Fn.conv2d(x, w, b, ops.stride, ops.padding, ops.dilation, g)  # [B, g*K*c/g, H, W]
        h, wd = out.shape[-2:]
        out = out.reshape(B, g, K, c_out // g, h, wd).permute(2, 0, 1, 3, 4, 5)
        return out.reshape(K, B, c_out, h, wd)
    raise ValueError(f"direction_currents: no batched directions for {type(ops).__name__}; "
                     f"FFzero supports LinearOps and Conv2dOps")


def recurrent_direction_currents(spikes: Tensor, u_rec: Tensor, u_rec_bias: Optional[Tensor],
                                 eps: float) -> Tensor:
    """The recurrent part of the 2K perturbed currents of a recurrent layer (spec
    ``lfp-cuba-recurrent.md`` section 4: V and b_V are part of the layer's parameters)::

        dR_{k,t}     = +eps (U_{V,k} s'_{k,t-1}     + u_{bV,k})      k = 1..K   (theta + eps u_k)
        dR_{K+k,t}   = -eps (U_{V,k} s'_{K+k,t-1}   + u_{bV,k})                 (theta - eps u_k)

    ``spikes`` ``[2K, B, N]`` are the perturbed runs' own spikes of the previous step (zeros at
    t = 1), ``u_rec`` ``[K, N, N]``, ``u_rec_bias`` ``[K, N]`` or None -> ``[2K, B, N]``, in one
    batched matmul. (The unperturbed part V s' + b_V is the layer's own step.)"""
    K = u_rec.shape[0]
    U = torch.cat([u_rec, -u_rec]).transpose(1, 2)                     # [2K, N_in, N_out]
    s = spikes.to(u_rec.dtype)
    if u_rec_bias is None:
        out = torch.bmm(s, U)
    else:
        bias = torch.cat([u_rec_bias, -u_rec_bias]).unsqueeze(1)       # [2K, 1, N]
        out = torch.baddbmm(bias, s, U)
    if out.shape[0] != 2 * K:
        raise ValueError(f"recurrent_direction_currents: spikes {tuple(spikes.shape)} need 2K = {2 * K} runs")
    return out.mul_(eps)


__all__ = [
    "mix_seed", "direction_seed", "prototype_seed", "simplex_prototypes", "haar_frame",
    "haar_orthogonal", "layer_prototypes", "cosine_scores", "margin_loss", "prototype_predict",
    "sample_directions", "direction_coefficients", "combine_directions", "estimate_improvement",
    "direction_currents", "lif_step_", "recurrent_direction_currents",
]
