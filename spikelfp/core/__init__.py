"""Pure functions: the LIF scan, rewards, LFP rules and the per-layer feedback pass."""

from .cuba import CubaParameters, CubaState, cuba_scan, cuba_step
from .feedback import LayerFeedback, synaptic_layer_feedback
from .clipping import adaptive_clip, clip_global_norm
from .lif import LIFParameters, LIFState, LIFTrace, heaviside, lif_scan, lif_step
from .readout import predict
from .rewards import REWARDS, eq7_reward, get_reward, plusminus_reward, sequence_reward
from .rules import RULES, Rule, make_rule

__all__ = [
    "CubaParameters", "CubaState", "cuba_scan", "cuba_step",
    "LayerFeedback", "LIFParameters", "LIFState", "LIFTrace", "REWARDS", "RULES", "Rule",
    "adaptive_clip", "clip_global_norm", "eq7_reward", "get_reward", "heaviside", "lif_scan", "lif_step",
    "make_rule", "plusminus_reward", "predict", "sequence_reward", "synaptic_layer_feedback",
]
