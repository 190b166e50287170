"""Layers and networks: thin torch.nn.Module wrappers over spikelfp.core."""

from .layers import (
    AvgPool2d,
    CubaLIFConv2d,
    CubaLIFLinear,
    Flatten,
    LayerRecord,
    LIFConv2d,
    LIFLinear,
    MaxPool2d,
    ReLULinear,
)
from .network import NetworkTrace, Sequential

__all__ = [
    "AvgPool2d", "CubaLIFConv2d", "CubaLIFLinear", "Flatten", "LayerRecord", "LIFConv2d",
    "LIFLinear", "MaxPool2d", "NetworkTrace",
    "ReLULinear", "Sequential",
]
