"""Sparsity diagnostics of spiking networks and the ``spikelfp report`` command.

The highest room of the package: it may import from ``core``, ``nn``, ``data`` and ``train``;
nothing below imports it. Pieces:

- :mod:`.activity`: spike rates per neuron, silent / saturated neurons, rate over time, spikes per
  sample, SynOps (events x fan-out) next to the dense ANN MACs (:class:`ActivityAccumulator`,
  :func:`fan_out_map`, :func:`synops`);
- :mod:`.weights`: exact / near zeros, magnitude histograms, sign changes (:func:`weight_stats`,
  :func:`sign_changes`, :func:`sign_changes_between`);
- :mod:`.updates`: ``updates.jsonl`` summaries and :func:`lfp_update_sparsity` (the LFP
  properties: zero weights and silent neurons get exactly-zero updates);
- :mod:`.pruning`: global magnitude pruning and the accuracy curve (:func:`pruning_curve`,
  :func:`max_prunable`);
- :mod:`.analyze`: :func:`analyze_run` (everything about one run folder);
- :mod:`.report` / :mod:`.plots`: markdown, self-contained HTML, PNGs, JSON;
- :mod:`.compare`: ``spikelfp compare``: several trainers on one network, data and budget
  (resumable run folders), the comparison section of the report and the memory-vs-T panel;
- :mod:`.cli`: ``add_report_parser`` / ``run_report`` for ``spikelfp report``,
  ``add_compare_parser`` / ``run_compare`` for ``spikelfp compare``.

matplotlib is imported only when figures are drawn.
"""

from .activity import (
    ActivityAccumulator,
    dense_macs_per_step,
    fan_out_map,
    neuron_rates,
    rate_over_time,
    saturated_mask,
    silent_mask,
    spikes_per_sample,
    synaptic_layers,
    synops,
)
from .pruning import DEFAULT_FRACTIONS, global_magnitude_masks, max_prunable, pruned_state, pruning_curve
from .updates import lfp_update_sparsity, read_updates, summarize_updates
from .weights import (
    magnitude_histogram,
    near_zero_fraction,
    sign_changes,
    sign_changes_between,
    weight_stats,
    weight_tensors,
    zero_fraction,
)


def analyze_run(*args, **kwargs):
    """See :func:`spikelfp.diagnostics.analyze.analyze_run`."""
    from .analyze import analyze_run as _f

    return _f(*args, **kwargs)


def write_report(*args, **kwargs):
    """See :func:`spikelfp.diagnostics.report.write_report`."""
    from .report import write_report as _f

    return _f(*args, **kwargs)


__all__ = [
    "ActivityAccumulator", "DEFAULT_FRACTIONS", "analyze_run", "dense_macs_per_step", "fan_out_map",
    "global_magnitude_masks", "lfp_update_sparsity", "magnitude_histogram", "max_prunable",
    "near_zero_fraction", "neuron_rates", "pruned_state", "pruning_curve", "rate_over_time",
    "read_updates", "saturated_mask", "sign_changes", "sign_changes_between", "silent_mask",
    "spikes_per_sample", "summarize_updates", "synaptic_layers", "synops", "weight_stats",
    "weight_tensors", "write_report", "zero_fraction",
]
