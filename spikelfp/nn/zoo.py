"""Model zoo: networks built from a small, serializable spec (stored in checkpoints).

- ``mlp``: Flatten -> LIFLinear(in, h1) -> ... -> LIFLinear(h_last, classes). The paper's SNN MLP
  is ``hidden: [1000]`` on MNIST (784-1000-10).
- ``lenet``: the paper's LIF LeNet (App. A.6.3, as in snnTorch's tutorial): conv 5x5 to 12
  channels -> LIF -> maxpool 2 -> conv 5x5 to 64 -> LIF -> maxpool 2 -> flatten (1024 on 28x28)
  -> LIFLinear(1024, classes). Pooling acts on spikes here (snnTorch pools currents).
- ``convnet``: a small conv net for any image size: [conv 3x3 (pad 1) -> LIF -> avgpool 2] per
  entry of ``channels`` -> flatten -> LIFLinear hidden layers -> LIFLinear(classes). An optional
  ``pool_input`` sum-free average pooling downsamples large event frames first.

Neuron keys (all models): ``neuron: lif`` (default) or ``cuba`` (current-based LIF with
synaptic-current decay ``alpha``: :class:`CubaLIFLinear` / :class:`CubaLIFConv2d`), and
``recurrent: true`` (recurrent weights V in the *hidden dense* layers; the output layer and conv
layers stay feed-forward). With ``neuron: lif`` and no recurrence the layers are the plain
:class:`LIFLinear` / :class:`LIFConv2d`. CUBA layers integrate their input current to about
1/(1 - alpha) times the LIF's, so their initial W, b (and V, b_V) are scaled by (1 - alpha).
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from .layers import AvgPool2d, CubaLIFConv2d, CubaLIFLinear, Flatten, LIFConv2d, LIFLinear, MaxPool2d
from .network import Sequential

MODELS = ("mlp", "lenet", "convnet")


def _lif(spec: dict) -> dict:
    return dict(beta=spec.get("beta", 0.9), threshold=spec.get("threshold", 1.0),
                reset=spec.get("reset", "subtract"))


def _scaled(layer, factor: float):
    """Scale the initial synaptic parameters of a CUBA layer by ``factor`` (= 1 - alpha)."""
    if factor != 1.0:
        with torch.no_grad():
            for p in layer.parameters():
                p.mul_(factor)
    return layer


def _dense(spec: dict, a: int, b: int, bias: bool, lif: dict, hidden: bool):
    alpha = float(spec.get("alpha", 0.0) or 0.0)
    rec = bool(spec.get("recurrent", False)) and hidden
    if spec.get("neuron", "lif") == "lif" and not rec:
        return LIFLinear(a, b, bias=bias, **lif)
    return _scaled(CubaLIFLinear(a, b, bias=bias, alpha=alpha, recurrent=rec, recurrent_bias=bias, **lif),
                   1.0 - alpha)  # bias: false removes b and b_V (a netx-exportable CUBA net)


def _conv(spec: dict, *args, **kw):
    if spec.get("neuron", "lif") == "lif":
        return LIFConv2d(*args, **kw)
    alpha = float(spec.get("alpha", 0.0) or 0.0)
    return _scaled(CubaLIFConv2d(*args, alpha=alpha, **kw), 1.0 - alpha)


def build_model(spec: Dict) -> Sequential:
    """Build a network from ``spec``: keys ``model``, ``input_shape``, ``num_classes``, ``hidden``,
    ``channels``, ``beta``, ``threshold``, ``reset``, ``bias``, ``pool_input``, ``neuron``, ``alpha``,
    ``recurrent``."""
    name = spec.get("model", "mlp")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; use one of {list(MODELS)}")
    shape = tuple(spec["input_shape"])
    classes = int(spec["num_classes"])
    lif = _lif(spec)
    bias = spec.get("bias", True)
    hidden = list(spec.get("hidden", []) or [])
    for h in hidden:
        if not isinstance(h, int) or h < 1:
            raise ValueError(f"hidden={hidden}: layer widths must be positive integers")
    layers = []
    if name == "mlp":
        layers.append(Flatten(frame_dims=len(shape)))
        widths = [math.prod(shape)] + hidden + [classes]
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(_dense(spec, a, b, bias, lif, hidden=k < len(hidden)))
        return Sequential(*layers)
    if len(shape) != 3:
        raise ValueError(f"model {name!r} needs image inputs [C, H, W]; got input_shape {shape}")
    c, h, w = shape
    if name == "lenet":
        layers += [_conv(spec, c, 12, 5, bias=bias, **lif), MaxPool2d(2),
                   _conv(spec, 12, 64, 5, bias=bias, **lif), MaxPool2d(2)]
        h, w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        c = 64
    else:
        pool = int(spec.get("pool_input", 1) or 1)
        if pool > 1:
            layers.append(AvgPool2d(pool))
            h, w = h // pool, w // pool
        for ch in spec.get("channels", [16, 32]):
            layers += [_conv(spec, c, ch, 3, padding=1, bias=bias, **lif), AvgPool2d(2)]
            c, h, w = ch, h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"model {name!r}: input_shape {shape} is too small for its layers")
    layers.append(Flatten())
    widths = [c * h * w] + hidden + [classes]
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(_dense(spec, a, b, bias, lif, hidden=k < len(hidden)))
    return Sequential(*layers)
