"""PNG figures of the report (matplotlib, Agg canvas; pyplot and the global backend are not
touched). Each function takes the run results of :func:`spikelfp.diagnostics.analyze.analyze_run`
(several runs are overlaid, one colour per run), writes one PNG and returns its path, or
``None`` when there is nothing to draw.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

Run = Dict[str, Any]

DPI = 90


def _figure(rows: int, cols: int, w: float = 4.2, h: float = 3.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * cols, h * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return str(path)


def _color(i: int) -> str:
    return f"C{i % 10}"


def _grid(n: int, max_cols: int = 3):
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _hide_unused(axes, n: int) -> None:
    for ax in axes.flat[n:]:
        ax.set_visible(False)


def _layers(runs: Sequence[Run]) -> int:
    return max(len(r["activity"]["layers"]) for r in runs)


# ---------------------------------------------------------------------------- activity

def _activity_panels(runs: Sequence[Run], path, draw, xlabel: str, ylabel: str, finish=None) -> Optional[str]:
    """One panel per synaptic layer; ``draw(ax, layer_dict, run, i)`` adds each run's curve."""
    L = _layers(runs)
    rows, cols = _grid(L)
    fig, axes = _figure(rows, cols)
    for k in range(L):
        ax = axes.flat[k]
        title = None
        for i, r in enumerate(runs):
            layers = r["activity"]["layers"]
            if k >= len(layers):
                continue
            d = layers[k]
            title = title or d["label"]
            draw(ax, d, r, i)
        ax.set_title(f"layer {title}", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if finish is not None:
            finish(ax)
        ax.legend(fontsize=7)
    _hide_unused(axes, L)
    return _save(fig, path)


def spike_rate_histograms(runs: Sequence[Run], path) -> Optional[str]:
    """Per synaptic layer: histogram of per-neuron spike rates (silent neurons in the first bin)."""
    bins = np.linspace(0, 1, 41)

    def draw(ax, d, r, i):
        ax.hist(np.asarray(d["neuron_rates"]), bins=bins, histtype="step", lw=1.6, color=_color(i),
                label=f"{r['run']} (mean {d['rate']:.3f}, silent {100 * d['silent_fraction']:.0f} %)")

    return _activity_panels(runs, path, draw, "spike rate per neuron (spikes / step)", "neurons",
                            lambda ax: ax.set_yscale("symlog", linthresh=1))


def rate_over_time(runs: Sequence[Run], path) -> Optional[str]:
    """Per synaptic layer: mean spike rate at each time step."""

    def draw(ax, d, r, i):
        y = d["rate_over_time"]
        ax.plot(np.arange(1, len(y) + 1), y, color=_color(i), marker=".", label=r["run"])

    return _activity_panels(runs, path, draw, "time step t", "mean spike rate",
                            lambda ax: ax.set_ylim(bottom=0))


def raster(run: Run, path, max_neurons: int = 256) -> Optional[str]:
    """Spike raster of the first few evaluation samples, one panel per synaptic layer; the
    samples are shown one after the other along time (separated by grey lines). Layers wider
    than ``max_neurons`` show that many evenly spaced neurons."""
    rast = run.get("_raster") or []
    if not rast or rast[0].numel() == 0:
        return None
    L = len(rast)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    heights = [3.0 if s.shape[2] > 32 else 1.6 for s in rast]
    fig = Figure(figsize=(8.0, sum(heights) + 0.4), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(L, 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    labels = [d["label"] for d in run["activity"]["layers"]]
    for k, s in enumerate(rast):
        ax = axes.flat[k]
        T, S, N = s.shape
        idx = np.unique(np.linspace(0, N - 1, min(N, max_neurons)).round().astype(int))
        a = s[:, :, idx].permute(1, 0, 2).reshape(S * T, len(idx)).numpy()
        t_idx, n_idx = np.nonzero(a)
        ax.scatter(t_idx, idx[n_idx], s=1.0 if N > 200 else 2.5, marker="s", linewidths=0,
                   color=_color(0 if k < L - 1 else 3))
        for j in range(1, S):
            ax.axvline(j * T - 0.5, color="0.6", lw=0.8)
        ax.set_xlim(-0.5, S * T - 0.5)
        ax.set_ylim(-0.5, N - 0.5)
        extra = f" ({len(idx)} of {N} neurons shown)" if len(idx) < N else ""
        rate = run["activity"]["layers"][k]["rate"]
        ax.set_ylabel("neuron")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{run['run']}: layer {labels[k]}{extra}, {S} samples x {T} steps "
                     f"(eval-set rate {100 * rate:.1f} %)", fontsize=9)
    axes.flat[-1].set_xlabel("time step (samples one after another)")
    return _save(fig, path)


def synops_bars(runs: Sequence[Run], path) -> Optional[str]:
    """SynOps per sample of each synaptic layer fed by spikes, per run, next to the dense ANN MACs
    of the same layer over T steps (log scale)."""
    names: List[str] = []
    for r in runs:
        for d in r["activity"]["layers"]:
            if d["input_source"] != "input" and d["label"] not in names:
                names.append(d["label"])
    if not names:
        return None
    fig, axes = _figure(1, 1, w=max(5.0, 1.6 * len(names) * (len(runs) + 1)), h=3.4)
    ax = axes[0, 0]
    width = 0.8 / (len(runs) + 1)
    x = np.arange(len(names))
    macs = np.zeros(len(names))
    for i, r in enumerate(runs):
        vals = np.zeros(len(names))
        for d in r["activity"]["layers"]:
            if d["label"] in names:
                vals[names.index(d["label"])] = d["synops_per_sample"]
                macs[names.index(d["label"])] = max(macs[names.index(d["label"])], d["ann_macs_per_sample"])
        ax.bar(x + i * width, vals, width, color=_color(i), label=f"{r['run']} SynOps")
        for xi, v in zip(x + i * width, vals):
            ax.text(xi, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7)
    ax.bar(x + len(runs) * width, macs, width, color="0.7", label="ANN MACs (x T)")
    ax.set_xticks(x + width * len(runs) / 2)
    ax.set_xticklabels([f"into {n}" for n in names], fontsize=8)
    ax.set_yscale("log")
    positive = [v for r in runs for d in r["activity"]["layers"] if d["label"] in names
                for v in (d["synops_per_sample"],) if v > 0]
    low = min(positive + [m for m in macs if m > 0] or [1.0])
    ax.set_ylim(bottom=10 ** math.floor(math.log10(low)), top=max(macs.max(), low) * 3)
    ax.set_ylabel("operations per sample")
    ax.set_title("synaptic operations per sample (spike-driven layers)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------------------- weights

def weight_histograms(runs: Sequence[Run], path) -> Optional[str]:
    """Per weight tensor: histogram of log10 |w| (exact zeros counted in the legend)."""
    names: List[str] = []
    for r in runs:
        for n in r["weights"]["params"]:
            if n.endswith("weight") and n not in names:
                names.append(n)
    if not names:
        return None
    rows, cols = _grid(len(names))
    fig, axes = _figure(rows, cols)
    for k, name in enumerate(names):
        ax = axes.flat[k]
        for i, r in enumerate(runs):
            p = r["weights"]["params"].get(name)
            if p is None:
                continue
            h = p["log_hist"]
            edges = np.asarray(h["log10_edges"])
            ax.stairs(np.asarray(h["counts"]), edges, color=_color(i), lw=1.5,
                      label=f"{r['run']} (zeros {100 * p['zero_fraction']:.1f} %, median |w| {p['median_abs']:.3g})")
            ax.axvline(math.log10(r["weights"]["tolerance"]), color="0.5", ls=":", lw=1)
        ax.set_title(f"{name} {runs[0]['layer_labels'].get(name.rsplit('.', 1)[0], '')}", fontsize=9)
        ax.set_xlabel("log10 |w|  (first bin: <= 1e-6; dotted: near-zero tol.)")
        ax.set_ylabel("weights")
        ax.legend(fontsize=7)
    _hide_unused(axes, len(names))
    return _save(fig, path)


def sign_change_curve(runs: Sequence[Run], path) -> Optional[str]:
    """Fraction of weights whose sign flipped vs init (solid) and vs the previous checkpoint
    (dashed), per checkpoint available, over training epochs."""
    have = [r for r in runs if r["sign_changes"].get("available") and r["sign_changes"]["series"]]
    if not have:
        return None
    fig, axes = _figure(1, 1, w=6.0, h=3.4)
    ax = axes[0, 0]
    for i, r in enumerate(runs):
        if r not in have:
            continue
        s = r["sign_changes"]["series"]
        x = [row["epoch"] for row in s]
        ax.plot(x, [100 * row["vs_init"]["flip_fraction"] for row in s], color=_color(i), marker="o",
                ms=3, label=f"{r['run']} vs init")
        ax.plot(x, [100 * row["vs_previous"]["flip_fraction"] for row in s], color=_color(i), ls="--",
                marker=".", label=f"{r['run']} vs previous checkpoint")
    ax.set_xlabel("epoch (checkpoint)")
    ax.set_ylabel("weights with flipped sign (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("sign changes of the weights", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def pruning_curves(runs: Sequence[Run], path) -> Optional[str]:
    """Accuracy vs global magnitude-pruning fraction; dotted: unpruned accuracy - tolerance."""
    have = [r for r in runs if r.get("pruning")]
    if not have:
        return None
    fig, axes = _figure(1, 1, w=6.0, h=3.4)
    ax = axes[0, 0]
    for i, r in enumerate(runs):
        p = r.get("pruning")
        if not p:
            continue
        c = p["curve"]
        ax.plot([100 * row["fraction"] for row in c], [100 * row["accuracy"] for row in c], color=_color(i),
                marker="o", ms=3, label=f"{r['run']} (keeps acc. to {100 * (p['contiguous'] or 0):.0f} %)")
        if p["reference_accuracy"] is not None:
            ax.axhline(100 * (p["reference_accuracy"] - p["tolerance"]), color=_color(i), ls=":", lw=1)
    ax.set_xlabel("weights pruned (global magnitude, %)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("pruning curve (dotted: unpruned - tolerance)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------------------- training, updates

def _series(rows: List[Dict[str, Any]], key: str):
    xs, ys = [], []
    for row in rows:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(row.get("epoch", len(xs) + 1))
            ys.append(v)
    return xs, ys


def training_curves(runs: Sequence[Run], path) -> Optional[str]:
    """From metrics: accuracy (test solid, val dashed), spike rate per layer, and the training
    objective (LFP mean reward / surrogate loss) per epoch."""
    if not any(r["metrics"] for r in runs):
        return None
    fig, axes = _figure(1, 3, w=4.3, h=3.2)
    a_acc, a_rate, a_obj = axes[0]
    for i, r in enumerate(runs):
        rows = r["metrics"]
        if not rows:
            continue
        x, y = _series(rows, "test_acc")
        a_acc.plot(x, [100 * v for v in y], color=_color(i), label=f"{r['run']} test")
        x, y = _series(rows, "val_acc")
        if y:
            a_acc.plot(x, [100 * v for v in y], color=_color(i), ls="--", label=f"{r['run']} val")
        rates = [row.get("spike_rate") for row in rows if isinstance(row.get("spike_rate"), list)]
        if rates:
            ep = [row.get("epoch") for row in rows if isinstance(row.get("spike_rate"), list)]
            for k in range(len(rates[0])):
                ls = ["-", "--", ":", "-."][k % 4]
                a_rate.plot(ep, [rr[k] for rr in rates], color=_color(i), ls=ls, label=f"{r['run']} layer {k + 1}")
        for key, ls in (("mean_reward", "-"), ("loss", "--")):
            x, y = _series(rows, key)
            if y:
                a_obj.plot(x, y, color=_color(i), ls=ls, label=f"{r['run']} {key}")
    a_acc.set_title("accuracy (%)", fontsize=9)
    a_rate.set_title("test spike rate per synaptic layer", fontsize=9)
    a_obj.set_title("LFP mean reward (solid) / surrogate loss (dashed)", fontsize=9)
    for ax in (a_acc, a_rate, a_obj):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    return _save(fig, path)


def update_curves(runs: Sequence[Run], path) -> Optional[str]:
    """From updates.jsonl: fraction of exactly-zero updates per weight tensor, median |G|, and
    (LFP) the fraction of nonzero feedback reaching each layer, over training steps."""
    have = [r for r in runs if r["updates"]["records"]]
    if not have:
        return None
    fig, axes = _figure(1, 3, w=4.3, h=3.2)
    a_zero, a_med, a_fb = axes[0]
    styles = ["-", "--", ":", "-."]
    for i, r in enumerate(runs):
        u = r["updates"]
        if not u["records"]:
            continue
        steps = u["steps"]
        wnames = [n for n in u["params"] if n.endswith("weight")]
        for k, n in enumerate(sorted(wnames)):
            z = u["params"][n]["zero_fraction"]
            a_zero.plot(steps[: len(z)], [100 * v if v is not None else np.nan for v in z], color=_color(i),
                        ls=styles[k % 4], marker=".", label=f"{r['run']} {n}")
            m = u["params"][n]["median_abs"]
            a_med.plot(steps[: len(m)], [v if v else np.nan for v in m], color=_color(i), ls=styles[k % 4],
                       marker=".", label=f"{r['run']} {n}")
        for k, (layer, vals) in enumerate(sorted(u["feedback"].items())):
            a_fb.plot(steps[: len(vals)], [100 * v for v in vals], color=_color(i), ls=styles[k % 4],
                      marker=".", label=f"{r['run']} into layer {layer}")
    a_zero.set_title("exactly-zero updates (% of weights)", fontsize=9)
    a_med.set_title("median |update direction|", fontsize=9)
    a_med.set_yscale("log")
    a_fb.set_title("nonzero feedback reaching layer output (%)", fontsize=9)
    for ax in (a_zero, a_med, a_fb):
        ax.set_xlabel("training step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not a_fb.get_legend_handles_labels()[0]:
        a_fb.text(0.5, 0.5, "no LFP feedback logged", ha="center", va="center", transform=a_fb.transAxes)
    return _save(fig, path)


# ---------------------------------------------------------------------------- comparison of trainers

def _band(ax, x, stats, i: int, label: str, scale: float = 100.0) -> None:
    """Mean line and a mean +- std band (``stats``: :func:`spikelfp.diagnostics.compare.spread` dicts)."""
    keep = [(xi, s) for xi, s in zip(x, stats) if s["mean"] is not None]
    if not keep:
        return
    xs = np.asarray([k[0] for k in keep], dtype=float)
    m = np.asarray([k[1]["mean"] for k in keep]) * scale
    sd = np.asarray([k[1]["std"] for k in keep]) * scale
    ax.plot(xs, m, color=_color(i), marker="o", ms=3, label=label)
    if any(k[1]["n"] > 1 for k in keep):
        ax.fill_between(xs, m - sd, m + sd, color=_color(i), alpha=0.2, lw=0)


def compare_accuracy(comp: Dict[str, Any], path) -> Optional[str]:
    """Test accuracy per epoch per trainer: mean over seeds, band +- one sample std."""
    per = comp["per_trainer"]
    if not any(p["epochs"] for p in per.values()):
        return None
    fig, axes = _figure(1, 1, w=6.0, h=3.6)
    ax = axes[0, 0]
    n = len(comp["seeds"])
    for i, (t, p) in enumerate(per.items()):
        f = p["final_test_acc"]
        _band(ax, p["epochs"], p["test_acc_per_epoch"], i,
              f"{t} ({100 * f['mean']:.1f} %" + (f" ± {100 * f['std']:.1f})" if n > 1 else ")"))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"test accuracy per epoch (mean over {n} seed{'s' * (n > 1)}" + (", band: ± std)" if n > 1 else ")"),
                 fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def compare_memory(comp: Dict[str, Any], path) -> Optional[str]:
    """Peak memory of one training step vs T per trainer (log-log)."""
    mem = comp.get("memory") or {}
    if not mem.get("steps") or not mem.get("bytes"):
        return None
    fig, axes = _figure(1, 1, w=6.0, h=3.6)
    ax = axes[0, 0]
    for i, (t, vals) in enumerate(mem["bytes"].items()):
        ax.plot(mem["steps"], [max(v, 1) / 2 ** 20 for v in vals], color=_color(i), marker="o", label=t)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(mem["steps"])
    ax.set_xticklabels([str(s) for s in mem["steps"]])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("time steps T")
    ax.set_ylabel("peak memory of one step (MiB)")
    ax.set_title(f"memory of one training step vs T (batch {mem.get('batch_size')}, {mem.get('device')})", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def compare_pruning(comp: Dict[str, Any], path) -> Optional[str]:
    """Accuracy after global magnitude pruning per trainer (mean over seeds, band +- std)."""
    per = {t: p for t, p in comp["per_trainer"].items() if p.get("pruning")}
    if not per:
        return None
    fig, axes = _figure(1, 1, w=6.0, h=3.6)
    ax = axes[0, 0]
    for i, (t, p) in enumerate(comp["per_trainer"].items()):
        if t in per:
            _band(ax, [100 * f for f in p["pruning"]["fractions"]], p["pruning"]["accuracy"], i, t)
    ax.set_xlabel("weights pruned (global magnitude, %)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("pruning curve per trainer (mean over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)
