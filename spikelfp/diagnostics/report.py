"""The report: ``report.md``, a self-contained ``report.html`` (images as base64 data URIs), the
PNG figures, and optionally a JSON file with every number.

:func:`build_document` turns run results (:func:`spikelfp.diagnostics.analyze.analyze_run`)
into a list of blocks; :func:`render_markdown` / :func:`render_html` render the same blocks, so
the two files always say the same thing. :func:`write_report` does everything.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import plots

Run = Dict[str, Any]
Block = Tuple  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", file, caption)


# ---------------------------------------------------------------------------- formatting

def fmt_pct(v: Optional[float], digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f} %"


def fmt_num(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if v == 0:
        return "0"
    return f"{v:.3g}"


def fmt_ratio(a: Optional[float], b: Optional[float]) -> str:
    """``b / a`` as e.g. ``6.3x``; ``-`` when undefined."""
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return "-"
    if a == 0:
        return "-" if b == 0 else "inf"
    r = b / a
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def _json_default(o):
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def public(run: Run) -> Run:
    """The JSON part of a run result (keys starting with ``_`` dropped, recursively at top)."""
    return {k: v for k, v in run.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------- summary table

def _hidden_layers(run: Run) -> List[Dict[str, Any]]:
    return [d for d in run["activity"]["layers"] if not d["is_output"]]


def _out_layer(run: Run) -> Dict[str, Any]:
    return run["activity"]["layers"][-1]


def _lowest_feedback(run: Run) -> Optional[float]:
    fb = run["updates"].get("feedback_summary") or {}
    if not fb:
        return None
    names = [d["name"] for d in run["activity"]["layers"]]
    known = [k for k in fb if k in names]
    key = min(known, key=names.index) if known else sorted(fb)[0]
    return fb[key]["mean"]


def summary_rows(runs: Sequence[Run]) -> List[Tuple[str, List[Any], str, bool]]:
    """Rows ``(label, [value per run], kind, ratio?)``; kind is ``pct``, ``num`` or ``text``."""
    rows: List[Tuple[str, List[Any], str, bool]] = []

    def add(label, fn, kind="num", ratio=True):
        vals = []
        for r in runs:
            try:
                vals.append(fn(r))
            except (KeyError, TypeError, IndexError, ZeroDivisionError):
                vals.append(None)
        rows.append((label, vals, kind, ratio))

    add("trainer", lambda r: r["trainer"], "text", False)
    add("checkpoint (epoch)", lambda r: f"{r['checkpoint']} ({r['checkpoint_epoch']})", "text", False)
    add("eval accuracy", lambda r: r["eval"]["accuracy"], "pct")
    add("hidden spike rate (spikes / neuron / step)", lambda r: r["activity"]["network"]["hidden_rate"], "pct")
    nh = max(len(_hidden_layers(r)) for r in runs)
    if nh > 1:
        for k in range(nh):
            add(f"  spike rate, hidden layer {k + 1}", lambda r, k=k: _hidden_layers(r)[k]["rate"], "pct")
    add("output spike rate", lambda r: _out_layer(r)["rate"], "pct")
    add("silent hidden neurons", lambda r: r["activity"]["network"]["hidden_silent_fraction"], "pct")
    add("saturated neurons (all layers)", lambda r: r["activity"]["network"]["saturated_fraction"], "pct")
    add("hidden spikes per sample", lambda r: r["activity"]["network"]["hidden_spikes_per_sample"])
    add("SynOps per sample (spike-driven layers)", lambda r: r["activity"]["network"]["synops_per_sample"])
    add("ANN MACs per sample, same layers, x T", lambda r: r["activity"]["network"]["spiking_ann_macs_per_sample"])
    add("SynOps / ANN MACs", lambda r: r["activity"]["network"]["synops_over_ann_macs"], "pct")
    add("input-layer ops per sample (encoded input x fan-out)", lambda r: r["activity"]["network"]["input_ops_per_sample"])
    add("exact-zero weights", lambda r: r["weights"]["all_weights"]["zero_fraction"], "pct")
    add("near-zero weights (|w| < tol)", lambda r: r["weights"]["all_weights"]["near_zero_fraction"], "pct")
    add("median |w|", lambda r: r["weights"]["all_weights"]["median_abs"])
    add("weights with sign flipped vs init", lambda r: r["sign_changes"]["final_vs_init"]["all_weights"]["flip_fraction"], "pct")
    add("zero-update weights (updates.jsonl, mean)", lambda r: r["updates"]["weights_zero_fraction_mean"], "pct")
    add("nonzero feedback reaching the lowest layer (mean)", _lowest_feedback, "pct")
    add("zero-update weights, one LFP pass on eval batch", lambda r: r["lfp_check"]["all_weights"]["zero_update_fraction"], "pct")
    add("prunable within tolerance (global magnitude)", lambda r: r["pruning"]["contiguous"], "pct")
    return rows


def summary_table(runs: Sequence[Run]) -> Tuple[List[str], List[List[str]]]:
    """Headers and formatted rows of the side-by-side summary; with several runs, one ratio
    column per run after the first (``run / first run``)."""
    headers = ["measure"] + [r["run"] for r in runs]
    if len(runs) > 1:
        headers += [f"{r['run']} / {runs[0]['run']}" for r in runs[1:]]
    body = []
    for label, vals, kind, ratio in summary_rows(runs):
        cells = [label]
        for v in vals:
            cells.append(fmt_pct(v) if kind == "pct" and v is not None else
                         fmt_num(v) if kind == "num" and v is not None else ("-" if v is None else str(v)))
        if len(runs) > 1:
            for v in vals[1:]:
                cells.append(fmt_ratio(vals[0], v) if ratio and kind != "text" else "")
        body.append(cells)
    return headers, body


# ---------------------------------------------------------------------------- document

def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def make_figures(runs: Sequence[Run], out: Path, comparison: Optional[Dict[str, Any]] = None) -> Dict[str, Optional[str]]:
    """Write every PNG into ``out``; returns {key: file name or None}."""
    figs: Dict[str, Optional[str]] = {}

    def go(key, fn, *args):
        name = f"{key}.png"
        p = fn(*args, out / name)
        figs[key] = name if p else None

    if comparison is not None:
        go("compare_accuracy", plots.compare_accuracy, comparison)
        go("compare_memory", plots.compare_memory, comparison)
        go("compare_pruning", plots.compare_pruning, comparison)

    go("spike_rate_hist", plots.spike_rate_histograms, runs)
    go("rate_over_time", plots.rate_over_time, runs)
    go("synops", plots.synops_bars, runs)
    for r in runs:
        go(f"raster_{_slug(r['run'])}", plots.raster, r)
    go("weight_hist", plots.weight_histograms, runs)
    go("sign_changes", plots.sign_change_curve, runs)
    go("pruning", plots.pruning_curves, runs)
    go("training", plots.training_curves, runs)
    go("updates", plots.update_curves, runs)
    return figs


def fmt_bytes(v: Optional[float]) -> str:
    return "-" if v is None else f"{v / 2 ** 20:.2f} MiB"


def fmt_spread(s: Optional[Dict[str, Any]], kind: str = "num") -> str:
    """``mean +- std`` of a :func:`spikelfp.diagnostics.compare.spread` dict (``pct``: in %,
    ``sec``: seconds); the mean alone for one value; ``-`` for none."""
    if not s or s.get("mean") is None:
        return "-"
    if kind == "pct":
        m, sd = f"{100 * s['mean']:.1f}", f"{100 * s['std']:.1f}"
        return f"{m} ± {sd} %" if s["n"] > 1 else f"{m} %"
    if kind == "sec":
        m, sd = f"{s['mean']:.2f}", f"{s['std']:.2f}"
        return f"{m} ± {sd} s" if s["n"] > 1 else f"{m} s"
    return f"{fmt_num(s['mean'])} ± {fmt_num(s['std'])}" if s["n"] > 1 else fmt_num(s["mean"])


def _export_run_cell(e: Optional[Dict[str, Any]]) -> str:
    """One run's export agreement; a silent reference output (nothing to compare) is flagged."""
    if not e:
        return "-"
    if not e.get("applies"):
        return "n/a"
    rate = e.get("output_rate") or 0.0
    return fmt_pct(e["agreement"], 2) + (f" (output rate {fmt_pct(rate, 2)})" if rate < 0.01 else "")


def _export_cell(p: Dict[str, Any]) -> str:
    if p.get("export_agreement"):
        runs = [r for r in p["export"] if r and r.get("applies")]
        exact = all(r.get("identical") for r in runs)
        quiet = sum(1 for r in runs if (r.get("output_rate") or 0.0) < 0.01)
        return (fmt_spread(p["export_agreement"], "pct") + (" (identical spikes)" if exact else "")
                + (f" ({quiet} with output rate < 1 %)" if quiet else ""))
    if p.get("export_note"):
        return "n/a"
    return "-"


def comparison_table(comp: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """Headers and rows of the comparison summary (one column per trainer)."""
    per = comp["per_trainer"]
    T = comp["setup"]["steps"]
    rows = [
        ("network", lambda p: p.get("network", "-")),
        ("final test accuracy", lambda p: fmt_spread(p["final_test_acc"], "pct")),
        ("training time per epoch", lambda p: fmt_spread(p["epoch_seconds"], "sec")),
        ("wall time per epoch (with evaluation)", lambda p: fmt_spread(p["wall_seconds"], "sec")),
        (f"peak memory of one training step (T = {T})", lambda p: fmt_bytes(p["peak_memory_bytes"])),
        ("spikes per sample (all layers)", lambda p: fmt_spread(p["spikes_per_sample"])),
        ("hidden spikes per sample", lambda p: fmt_spread(p["hidden_spikes_per_sample"])),
        ("SynOps per sample (spike-driven layers)", lambda p: fmt_spread(p["synops_per_sample"])),
        ("silent hidden neurons", lambda p: fmt_spread(p["hidden_silent_fraction"], "pct")),
        ("zero-update weights (updates.jsonl, mean)", lambda p: fmt_spread(p["update_zero_fraction"], "pct")),
        ("prunable within tolerance (global magnitude)",
         lambda p: fmt_spread(p["prunable"], "pct")),
        ("exported-network spike agreement", _export_cell),
    ]
    return ["measure"] + list(per), [[label] + [fn(p) for p in per.values()] for label, fn in rows]


def _samples(limit: Optional[int]) -> str:
    return "all" if limit is None else f"at most {limit}"


def _networks_text(comp: Dict[str, Any]) -> str:
    """"the same mlp hidden [1000] network", or which trainer trains which network."""
    nets = {t: p.get("network", "") for t, p in comp["per_trainer"].items()}
    if len(set(nets.values())) <= 1:
        return f"the same {next(iter(nets.values()), '')} network"
    values = list(nets.values())
    common = max(values, key=values.count)  # the most frequent; ties: the first trainer's
    own = ", ".join(f"{t} on {n} (set per trainer)" for t, n in nets.items() if n != common)
    return f"the {common} network ({own})"


def comparison_blocks(comp: Dict[str, Any], figs: Dict[str, Optional[str]]) -> List[Block]:  # noqa: C901
    """The comparison-of-trainers section (``spikelfp compare``): summary, accuracy per epoch,
    memory vs T, pruning, export agreement, one row per run."""
    per, st, seeds = comp["per_trainer"], comp["setup"], comp["seeds"]
    n = len(seeds)
    doc: List[Block] = [("h", 2, "Comparison of trainers")]
    doc.append(("p", f"{', '.join(per)} on {_networks_text(comp)} ({st['neuron']} neurons, reset "
                     f"{st['reset']}), data ({st['dataset']}, {_samples(st['limit'])} training, "
                     f"{_samples(st['test_limit'])} test samples), "
                     f"{st['encoder']} encoder, T = {st['steps']}, {st['epochs']} epoch{'s' * (st['epochs'] != 1)}, batch {st['batch_size']}; "
                     f"seeds {seeds}, each seed the same initial weights for every trainer on the same network. "
                     "Trainer settings per run: "
                     f"`report.json` (comparison.configs). " +
                     ("Values: mean ± sample standard deviation (n - 1) over the seeds. " if n > 1 else "") +
                     "Accuracy and times from each run's `metrics.jsonl`; activity, update sparsity and pruning from "
                     "its `last.pt` on the test split (the same evaluation as the last metrics row). Times are wall "
                     "clock on a machine that may be shared" +
                     (f" (load average at the end {comp['load_average'][0]:.1f})" if comp.get("load_average") else "")
                     + "; compare them only within one command."))
    headers, body = comparison_table(comp)
    doc.append(("table", headers, body))

    epochs = sorted({e for p in per.values() for e in p["epochs"]})
    rows = []
    for e in epochs:
        row = [str(e)]
        for p in per.values():
            row.append(fmt_spread(p["test_acc_per_epoch"][p["epochs"].index(e)], "pct") if e in p["epochs"] else "-")
        rows.append(row)
    doc.append(("h", 3, "Test accuracy per epoch"))
    doc.append(("table", ["epoch"] + list(per), rows))
    doc.append(("img", figs.get("compare_accuracy"), "Test accuracy per epoch, mean over seeds (band: ± one std)."))

    mem = comp.get("memory") or {}
    doc.append(("h", 3, "Memory of one training step vs T"))
    if mem.get("steps"):
        mrows = [[str(T)] + [fmt_bytes(mem["bytes"][t][j]) for t in mem["bytes"]] for j, T in enumerate(mem["steps"])]
        growth = []
        for t in mem["bytes"]:
            v = mem["bytes"][t]
            growth.append(fmt_ratio(v[0], v[-1]) if v[0] else "-")
        mrows.append([f"T = {mem['steps'][-1]} / T = {mem['steps'][0]}"] + growth)
        doc.append(("table", ["T"] + list(mem["bytes"]), mrows))
        doc.append(("p", f"Peak memory of one `trainer.step` (forward and update direction; the optimizer step "
                         f"excluded) on the first training batch ({mem.get('batch_size')} samples) at each T, "
                         f"after one warm-up step, on {mem.get('device')}, by `spikelfp.diagnostics.memory.peak_memory` "
                         "(CPU: tensors alive between operators, from the profiler). A method that keeps the [T, B, N] "
                         "trace (LFP, BPTT) grows with T; a stepwise one does not."))
        doc.append(("img", figs.get("compare_memory"), "Peak memory of one training step vs T (log-log)."))
    else:
        doc.append(("p", "Not measured (--memory-steps none)."))

    have = {t: p for t, p in per.items() if p.get("pruning")}
    doc.append(("h", 3, "Pruning"))
    if have:
        fr = next(iter(have.values()))["pruning"]["fractions"]
        prow = [[f"{100 * f:.0f} %"] + [fmt_spread(p["pruning"]["accuracy"][j], "pct") for p in have.values()]
                for j, f in enumerate(fr)]
        doc.append(("table", ["pruned"] + list(have), prow))
        doc.append(("img", figs.get("compare_pruning"), "Test accuracy after global magnitude pruning, mean over seeds."))
    else:
        doc.append(("p", "Pruning was not run."))

    doc.append(("h", 3, "Exported network"))
    notes = sorted({p["export_note"] for p in per.values() if p.get("export_note")})
    measured = [t for t, p in per.items() if p.get("export_agreement")]
    text = ("Spike agreement between each trained network and its export read back (NIR round trip through "
            "`hardware_export`) on random inputs, the check of `spikelfp export --verify` (input scale raised "
            "until the output fires at >= 1 % if it can; a lower output rate is shown: the fewer spikes, the "
            "less the agreement says). ")
    if measured:
        text += f"Measured for {measured}. "
    if notes:
        text += "n/a: " + "; ".join(notes) + "."
    if not measured and not notes:
        text = "Not measured."
    doc.append(("p", text))

    doc.append(("h", 3, "Runs"))
    rrows = []
    for p in per.values():
        for k, r in enumerate(p["per_run"]):
            ex = p["export"][k] if k < len(p["export"]) else None
            rrows.append([r["run"], fmt_pct(r["final_test_acc"], 2),
                          "-" if r["epoch_seconds"] is None else f"{r['epoch_seconds']:.2f} s",
                          fmt_num(r["spikes_per_sample"]), fmt_num(r["synops_per_sample"]),
                          fmt_pct(r["hidden_silent_fraction"]), fmt_pct(r["update_zero_fraction"]),
                          fmt_pct(r["prunable"]),
                          _export_run_cell(ex)])
    doc.append(("table", ["run", "final test acc.", "train s / epoch", "spikes / sample", "SynOps / sample",
                          "silent hidden", "zero updates", "prunable", "export agreement"], rrows))
    doc.append(("p", "Run folders: `runs/<trainer>-s<seed>` next to this report (ordinary runs: `spikelfp eval`, "
                     "`spikelfp export`, `spikelfp train --resume` work on each)."))
    return doc


def build_document(runs: Sequence[Run], figs: Dict[str, Optional[str]], title: str,  # noqa: C901
                   comparison: Optional[Dict[str, Any]] = None) -> List[Block]:
    doc: List[Block] = [("h", 1, title)]
    if comparison is not None:
        doc += comparison_blocks(comparison, figs)
        doc.append(("h", 2, f"Per-run details (seed {comparison['seeds'][0]})"))
    lines = []
    for r in runs:
        e = r["eval"]
        lines.append(f"**{r['run']}**: `{r['run_dir']}`, {r['trainer']} trainer, {r['model']} on "
                     f"{r['dataset']}, T={r['steps']} ({r['encoder']} encoder), checkpoint {r['checkpoint']} "
                     f"(epoch {r['checkpoint_epoch']}); evaluated on {e['n']} {e['split']} samples on {r['device']}.")
    doc.append(("list", lines))
    notes = [f"{r['run']}: {n}" for r in runs for n in r["notes"]]
    if notes:
        doc.append(("p", "Notes: " + "; ".join(notes) + "."))

    doc.append(("h", 2, "Summary"))
    headers, body = summary_table(runs)
    doc.append(("table", headers, body))
    doc.append(("p", "Spike rate = spikes / (neurons x samples x steps). SynOps = events x fan-out, counted at "
                     "the input of every synaptic layer fed by a spiking layer (for an MLP: the hidden spikes x "
                     "the number of synapses each hidden neuron has into the next layer; for conv: the kernel "
                     "positions each input feeds x output channels). ANN MACs = the dense multiply-accumulates "
                     "of the same layers for one step (number of synapses) times T, i.e. the network evaluated "
                     "as an ANN at every step; per sample. The input layer is listed apart: its input is the "
                     "encoded (usually real-valued) image, so its operations are MACs. Ratio columns divide "
                     "each run by the first run. Near-zero tolerance: "
                     f"{runs[0]['weights']['tolerance']:g}. Pruning tolerance: "
                     f"{100 * (runs[0]['pruning'] or {}).get('tolerance', 0.01):g} accuracy points."))

    # activity
    doc.append(("h", 2, "Activity"))
    for r in runs:
        doc.append(("h", 3, f"{r['run']}: per layer"))
        hdr = ["layer", "neurons", "spike rate", "silent", "saturated", "spikes / sample", "input",
               "events / sample", "mean fan-out", "SynOps / sample", "ANN MACs / step", "ANN MACs / sample (x T)",
               "SynOps / MACs"]
        rows = []
        for d in r["activity"]["layers"]:
            rows.append([d["label"] + (" (output)" if d["is_output"] else ""), str(d["neurons"]),
                         fmt_pct(d["rate"], 2), fmt_pct(d["silent_fraction"]), fmt_pct(d["saturated_fraction"]),
                         fmt_num(d["spikes_per_sample"]),
                         ("spikes of " + d["input_source"]) if d["input_source"] != "input" else
                         ("input (binary)" if d["input_binary"] else "input (analog: MACs)"),
                         fmt_num(d["input_events_per_sample"]), fmt_num(d["mean_fan_out"]),
                         fmt_num(d["synops_per_sample"]), fmt_num(d["ann_macs_per_step"]),
                         fmt_num(d["ann_macs_per_sample"]), fmt_pct(d["synops_over_ann_macs"], 2)])
        doc.append(("table", hdr, rows))
    doc.append(("img", figs.get("spike_rate_hist"), "Per-neuron spike rates per synaptic layer (silent neurons in the first bin; symlog counts)."))
    doc.append(("img", figs.get("rate_over_time"), "Mean spike rate at each time step."))
    doc.append(("img", figs.get("synops"), "SynOps per sample of the spike-driven layers next to the ANN MACs of the same layers (x T)."))
    for r in runs:
        doc.append(("img", figs.get(f"raster_{_slug(r['run'])}"), f"Spike raster of {r['run']}: the first evaluation samples."))

    # updates
    doc.append(("h", 2, "Updates"))
    doc.append(("p", "From `updates.jsonl` (logged every `log_updates_every` training steps): the fraction of "
                     "exactly-zero entries of each update direction (G for LFP, -grad for surrogate), |G| "
                     "quantiles at the last logged step, and for LFP the fraction of nonzero feedback arriving "
                     "at each layer's output. LFP updates are multiplicative in |w| (a zero weight never "
                     "changes) and a neuron that never spikes sends no feedback below."))
    for r in runs:
        u = r["updates"]
        if not u["records"]:
            doc.append(("p", f"{r['run']}: no update records."))
            continue
        rows = []
        for name, s in u["summary"].items():
            rows.append([name, fmt_pct(s["zero_fraction_mean"]), fmt_pct(s["zero_fraction_last"]),
                         fmt_num(s["median_abs_last"]), fmt_num(s["p99_abs_last"]), fmt_num(s["max_abs_last"])])
        doc.append(("h", 3, f"{r['run']}: {u['records']} logged steps ({', '.join(u['trainers'])})"))
        doc.append(("table", ["parameter", "zero updates (mean)", "zero updates (last)", "median |G| (last)",
                              "p99 |G| (last)", "max |G| (last)"], rows))
        if u["feedback_summary"]:
            frows = [[r["layer_labels"].get(k, k), fmt_pct(v["mean"]), fmt_pct(v["last"])]
                     for k, v in u["feedback_summary"].items()]
            doc.append(("table", ["feedback arriving at layer", "nonzero (mean)", "nonzero (last)"], frows))
    doc.append(("img", figs.get("updates"), "Update sparsity over training (from updates.jsonl)."))
    doc.append(("h", 3, "One LFP pass on the first evaluation batch (nothing applied)"))
    doc.append(("p", "Exactly-zero update entries of G and why: the weight is exactly zero; the entry belongs to "
                     "a hidden neuron (conv: channel) that never spiked on the batch (its incoming weights and "
                     "bias: it gets no feedback); a neuron that spiked but got zero feedback at every step "
                     "(e.g. all layers above are silent); the entry's input never was nonzero on the batch (outgoing "
                     "weights of a silent neuron / an all-zero input); other. For surrogate runs this shows what "
                     "LFP would do with those weights."))
    for r in runs:
        c = r.get("lfp_check")
        if not c:
            continue
        keys = ("zero_update_fraction", "zero_weight", "silent_neuron", "no_feedback", "silent_input", "other")
        rows = [[k, str(v["numel"])] + [fmt_pct(v[key]) for key in keys] for k, v in c["params"].items()]
        a = c["all_weights"]
        rows.append(["all weights", str(a["numel"])] + [fmt_pct(a[key]) for key in keys])
        doc.append(("h", 3, f"{r['run']}: batch of {c['batch']}"))
        doc.append(("table", ["parameter", "entries", "zero update", "zero weight", "silent neuron", "no feedback",
                              "silent input", "other"], rows))

    # weights
    doc.append(("h", 2, "Weights"))
    for r in runs:
        rows = []
        fin = r["sign_changes"].get("final_vs_init", {}).get("params", {}) if r["sign_changes"].get("available") else {}
        for name, p in r["weights"]["params"].items():
            sc = fin.get(name)
            rows.append([name, str(p["numel"]), fmt_pct(p["zero_fraction"], 2), fmt_pct(p["near_zero_fraction"], 2),
                         fmt_num(p["median_abs"]), fmt_num(p["max_abs"]),
                         fmt_pct(sc["flip_fraction"], 2) if sc else "-"])
        a = r["weights"]["all_weights"]
        allsc = r["sign_changes"]["final_vs_init"]["all_weights"]["flip_fraction"] if fin else None
        rows.append(["all weights", str(a["numel"]), fmt_pct(a["zero_fraction"], 2), fmt_pct(a["near_zero_fraction"], 2),
                     fmt_num(a["median_abs"]), "", fmt_pct(allsc, 2) if allsc is not None else "-"])
        doc.append(("h", 3, f"{r['run']} ({r['checkpoint']})"))
        doc.append(("table", ["parameter", "entries", "exact zeros", "near zeros", "median |w|", "max |w|",
                              "sign flipped vs init"], rows))
        series = r["sign_changes"].get("series") or []
        if series:
            srows = [[s["file"], f"{s['epoch']:.2f}", str(s["step"]), fmt_pct(s["vs_init"]["flip_fraction"], 2),
                      fmt_pct(s["vs_previous"]["flip_fraction"], 2), fmt_pct(s["zero_fraction"], 2),
                      fmt_num(s["median_abs"])] for s in series]
            doc.append(("table", ["checkpoint", "epoch", "step", "flipped vs init", "flipped vs previous",
                                  "exact zeros", "median |w|"], srows))
    doc.append(("img", figs.get("weight_hist"), "Weight magnitude histograms (log10 |w|)."))
    doc.append(("img", figs.get("sign_changes"), "Sign changes vs the initial weights and between consecutive checkpoints."))

    # pruning
    doc.append(("h", 2, "Pruning"))
    have = [r for r in runs if r.get("pruning")]
    if have:
        fr = [row["fraction"] for row in have[0]["pruning"]["curve"]]
        rows = []
        for j, f in enumerate(fr):
            row = [f"{100 * f:.0f} %"]
            for r in runs:
                c = (r.get("pruning") or {}).get("curve") or []
                row.append(fmt_pct(c[j]["accuracy"], 2) if j < len(c) else "-")
            rows.append(row)
        doc.append(("table", ["pruned"] + [r["run"] for r in runs], rows))
        doc.append(("p", "Global magnitude pruning of all synaptic weights (biases kept). Largest fraction with "
                         "accuracy within tolerance of the unpruned net at every fraction up to it: " +
                         "; ".join(f"{r['run']}: {fmt_pct(r['pruning']['contiguous'], 0)}"
                                   f" (any fraction: {fmt_pct(r['pruning']['any'], 0)})" for r in have) + "."))
        doc.append(("img", figs.get("pruning"), "Accuracy after global magnitude pruning."))
    else:
        doc.append(("p", "Pruning was not run."))

    doc.append(("h", 2, "Training curves"))
    doc.append(("img", figs.get("training"), "Accuracy, spike rate and training objective per epoch (metrics.jsonl)."))
    doc.append(("p", f"Generated by `spikelfp report` on {time.strftime('%Y-%m-%d %H:%M:%S')}."))
    return doc


# ---------------------------------------------------------------------------- renderers

def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Sequence[Block]) -> str:
    out: List[str] = []
    for b in doc:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "list":
            out.append("\n".join(f"- {x}" for x in b[1]))
        elif b[0] == "table":
            headers, rows = b[1], b[2]
            out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
            out[-1] += "\n|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"
            for r in rows:
                out[-1] += "\n| " + " | ".join(_md_cell(c) for c in r) + " |"
        elif b[0] == "img":
            if b[1]:
                out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _inline_html(s: str) -> str:
    s = html.escape(str(s))
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    return s


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:0.6em 0 1.2em}
th,td{border:1px solid #ccc;padding:3px 8px;font-size:0.88em}td{text-align:right}td:first-child,th:first-child
{text-align:left}th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;
border:1px solid #eee}figure{margin:0.8em 0 1.6em}figcaption{font-size:0.85em;color:#555}code{background:#f4f4f4;
padding:0 3px}"""


def render_html(doc: Sequence[Block], image_dir: Path, title: str) -> str:
    """A self-contained HTML page: every image embedded as a base64 ``data:image/png`` URI."""
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in doc:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{_inline_html(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{_inline_html(b[1])}</p>")
        elif b[0] == "list":
            out.append("<ul>" + "".join(f"<li>{_inline_html(x)}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b[0] == "img" and b[1]:
            data = base64.b64encode((image_dir / b[1]).read_bytes()).decode("ascii")
            out.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(b[2])}\">"
                       f"<figcaption>{_inline_html(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_json(runs: Sequence[Run], path, comparison: Optional[Dict[str, Any]] = None) -> str:
    """Every number of every run (``runs`` list, in order) plus the summary table (and the
    comparison of trainers, if given)."""
    headers, body = summary_table(runs)
    data = {"runs": [public(r) for r in runs],
            "summary": {"headers": headers, "rows": body,
                        "values": {label: vals for label, vals, _, _ in summary_rows(runs)}}}
    if comparison is not None:
        data["comparison"] = comparison
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1, default=_json_default, allow_nan=True))
    return str(p)


def write_report(runs: Sequence[Run], out_dir, json_path=None,
                 title: str = "spikelfp sparsity report",
                 comparison: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write ``report.md``, ``report.html`` and the PNGs into ``out_dir`` (created if needed), and
    the JSON to ``json_path`` if given. Returns the paths written. ``comparison``
    (:func:`spikelfp.diagnostics.compare.comparison_data`) adds the comparison-of-trainers
    section at the top (``spikelfp compare``)."""
    if not runs:
        raise ValueError("report: no runs to report on")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    # unique run labels (two folders with the same name)
    seen: Dict[str, int] = {}
    for r in runs:
        base = r["run"]
        if base in seen:
            seen[base] += 1
            r["run"] = f"{base}-{seen[base]}"
        else:
            seen[base] = 1
    figs = make_figures(runs, out, comparison)
    doc = build_document(runs, figs, title, comparison)
    md = out / "report.md"
    md.write_text(render_markdown(doc))
    page = out / "report.html"
    page.write_text(render_html(doc, out, title))
    res = {"markdown": str(md), "html": str(page), "figures": [str(out / f) for f in figs.values() if f]}
    if json_path:
        res["json"] = write_json(runs, json_path, comparison)
    return res
