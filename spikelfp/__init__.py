"""spikelfp: train spiking neural networks without surrogate gradients and without backprop.

Trainers (``spikelfp.train``): Layer-wise Feedback Propagation (LFP, Weber et al., arXiv
2308.12053) gives a reward to each output neuron at each time step and decomposes it backwards
through the network with LRP-style rules; each weight is updated by the feedback it receives
times its sign. The Heaviside spike is never differentiated. A surrogate-gradient BPTT baseline
and the other backprop-free trainers run on the same networks.
"""

__version__ = "0.1.0"

from . import core, nn, train
from .core import Rule, lif_scan, make_rule, predict
from .train import LFP, LFPResult, load_checkpoint

__all__ = ["LFP", "LFPResult", "Rule", "core", "lif_scan", "load_checkpoint", "make_rule", "nn",
           "predict", "train", "__version__"]
