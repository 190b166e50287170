"""LFP rules and max-abs normalization (spec section 3).

A rule fixes the denominator D_t of ``n_t = F_t / D_t`` (how the feedback F_t at a neuron's
membrane is shared among the contributions to it):

| name           | D_t per neuron j                                         |
|----------------|----------------------------------------------------------|
| ``zero``       | abs(z_j), n = 0 where z_j = 0   (LFP-0)                  |
| ``epsilon``    | abs(z_j) + epsilon               (LFP-epsilon, default)  |
| ``zplus_zminus`` | sum of abs of all contributions + epsilon (LFP-z+z-)   |
| ``alphabeta``  | alpha / (Z+ + eps) for positive, beta / (abs(Z-) + eps) for negative contributions |
| ``lfprop``     | abs(v_{t-1}) + abs(z_t - v_{t-1}) + epsilon (spec 3b, the lfprop package) |
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Tuple, Union

import torch

Tensor = torch.Tensor

RULES: Tuple[str, ...] = ("zero", "epsilon", "zplus_zminus", "alphabeta", "lfprop")
_ALIASES = {
    "lfp-0": "zero", "lfp0": "zero", "lfp_0": "zero", "0": "zero",
    "lfp-epsilon": "epsilon", "lfp_epsilon": "epsilon", "eps": "epsilon",
    "z+z-": "zplus_zminus", "zpluszminus": "zplus_zminus", "zplus-zminus": "zplus_zminus",
    "lfp-z+z-": "zplus_zminus",
    "alpha-beta": "alphabeta", "alpha_beta": "alphabeta", "lfp-alpha-beta": "alphabeta",
}
NORM_SCOPES: Tuple[Optional[str], ...] = ("step", "layer", "sample", None)
TEMPORAL_MODES = ("relevance", "direction")
NORM_FLOOR = 1e-10


class Rule(NamedTuple):
    """An LFP rule with its constants. ``alpha``/``beta`` are used by ``alphabeta`` only."""

    name: str = "epsilon"
    epsilon: float = 1e-6
    alpha: float = 2.0
    beta: float = 1.0


RuleSpec = Union[str, Rule]


def make_rule(spec: RuleSpec, epsilon: float = 1e-6, alpha: float = 2.0, beta: float = 1.0) -> Rule:
    """Build a validated :class:`Rule` from a name (aliases such as ``"z+z-"`` accepted) or a Rule."""
    if isinstance(spec, Rule):
        name, epsilon, alpha, beta = spec
    elif isinstance(spec, str):
        name = spec.strip().lower()
    else:
        raise ValueError(f"rule must be a name or a Rule, got {type(spec).__name__}")
    name = _ALIASES.get(name, name)
    if name not in RULES:
        raise ValueError(f"unknown LFP rule {spec!r}; use one of {list(RULES)}")
    if not (epsilon >= 0) or epsilon != epsilon:
        raise ValueError(f"rule {name}: epsilon={epsilon} is not allowed; epsilon must be >= 0")
    if name == "alphabeta":
        if alpha <= 0 or beta < 0:
            raise ValueError(f"rule alphabeta: alpha={alpha}, beta={beta}; need alpha > 0, beta >= 0")
        if abs((alpha - beta) - 1.0) > 1e-9:
            raise ValueError(
                f"rule alphabeta: alpha - beta = {alpha - beta:g}; it must equal 1 (e.g. alpha=2, beta=1)"
            )
    if name == "zero":
        epsilon = 0.0
    return Rule(name, float(epsilon), float(alpha), float(beta))


def check_norm_scope(scope) -> Optional[str]:
    """Normalize a max-abs scope: "step" (default), "layer", "sample", or None/"off"/False."""
    if scope in (None, False, "off", "none", "None"):
        return None
    if scope is True:
        return "step"
    if scope not in ("step", "layer", "sample"):
        raise ValueError(f"normalize={scope!r} is not allowed; use 'step', 'layer', 'sample' or 'off'")
    return scope


def maxabs_normalize(F: Tensor, per_sample: bool = False, sample_dim: int = 0,
                     inplace: bool = False, reduce=None) -> Tensor:
    """Divide F by max|F| where that max exceeds 1e-10 (left untouched otherwise).

    ``per_sample=False``: one max over the whole tensor. ``per_sample=True``: one max per index
    along ``sample_dim`` (the batch dimension). ``inplace=True`` divides F itself. ``reduce``:
    applied to the max before use (data-parallel training passes an all-reduce of the maximum,
    so that the max is taken over the global batch).
    """
    if per_sample:
        dims = tuple(d for d in range(F.dim()) if d != sample_dim)
        m = F.abs().amax(dim=dims, keepdim=True) if dims else F.abs()
    else:
        lo, hi = torch.aminmax(F)  # one pass over F instead of abs + amax
        m = torch.maximum(hi, -lo)
        if reduce is not None:
            m = reduce(m)
    m = torch.where(m > NORM_FLOOR, m, torch.ones_like(m))
    return F.div_(m) if inplace else F / m


def resolve_rule(rules: Union[RuleSpec, Mapping[str, RuleSpec]], name: str, kinds: Tuple[str, ...],
                 epsilon: float = 1e-6, alpha: float = 2.0, beta: float = 1.0) -> Rule:
    """Pick the rule of one layer from a composite.

    ``rules`` is one rule for every layer, or a mapping whose keys are layer names (as in
    ``named_modules``), layer kinds (class name such as ``"LIFConv2d"``, or ``"conv"`` /
    ``"linear"``) and ``"default"``. A layer name wins over a kind, a kind over the default.
    """
    if not isinstance(rules, Mapping):
        return make_rule(rules, epsilon, alpha, beta)
    for key in (name, *kinds, "default"):
        if key in rules:
            return make_rule(rules[key], epsilon, alpha, beta)
    return make_rule("epsilon", epsilon, alpha, beta)


def layer_kinds(module) -> Tuple[str, ...]:
    """Names under which a composite can address a layer: its class name, then a coarse kind
    (``"conv"``, ``"linear"``, ``"pool"`` or ``"other"``)."""
    name = type(module).__name__
    coarse = ("conv" if "Conv" in name else "linear" if "Linear" in name
              else "pool" if "Pool" in name else "other")
    return (name, coarse)
