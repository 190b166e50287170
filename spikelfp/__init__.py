"""spikelfp: train spiking neural networks with Layer-wise Feedback Propagation (LFP).

LFP (Weber et al., arXiv 2308.12053) gives a reward to each output neuron at each time step and
decomposes it backwards through the network with LRP-style rules; each weight is updated by the
feedback it receives times its sign. The Heaviside spike is never differentiated.
"""

__version__ = "0.1.0"

from . import core, nn
from .core import LFP, Rule, lif_scan, make_rule, predict

__all__ = ["LFP", "Rule", "core", "lif_scan", "make_rule", "nn", "predict", "__version__"]
