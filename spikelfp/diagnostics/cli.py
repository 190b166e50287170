"""``spikelfp report RUN_DIR [RUN_DIR ...] --out report/``: the sparsity report of one or more runs;
``spikelfp compare --trainers ... --out DIR``: several trainers on one network, one report
(:mod:`.compare`).

Loaded by ``spikelfp.cli`` through :func:`add_report_parser` / :func:`run_report` and
:func:`add_compare_parser` / :func:`run_compare`. Bad input
raises ``ValueError`` / ``FileNotFoundError`` with a one-line message (exit code 2 there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .pruning import DEFAULT_FRACTIONS
from .weights import DEFAULT_TOLERANCE


def add_report_parser(subparsers) -> None:
    """Add the ``report`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "report", help="sparsity diagnostics report of one or more run folders",
        description="Activity (spike rates, silent/saturated neurons, SynOps vs ANN MACs), update "
                    "sparsity, weights (zeros, histograms, sign changes vs init) and a pruning curve "
                    "for each run; several runs are overlaid and compared side by side. Writes "
                    "report.md, a self-contained report.html and PNG figures into --out.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by 'spikelfp train'")
    p.add_argument("--out", default="report", help="output folder (default: report/)")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--limit", type=int, help="evaluate on at most this many samples")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"),
                   help="which checkpoint of each run to analyse (default best)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="evaluation split (default test)")
    p.add_argument("--data-root", dest="data_root", help="data folder, if it moved since training")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"|w| below this counts as near-zero (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--prune-tolerance", dest="prune_tolerance", type=float, default=0.01,
                   help="accuracy drop allowed by the pruning summary (default 0.01 = 1 point)")
    p.add_argument("--no-prune", dest="prune", action="store_false", help="skip the pruning curve")
    p.add_argument("--raster-samples", dest="raster_samples", type=int, default=3,
                   help="samples shown in the raster plots (default 3)")
    p.add_argument("--title", default="spikelfp sparsity report")
    p.add_argument("--progress", default="auto", choices=("auto", "on", "off"),
                   help="progress bars (auto: only on a terminal)")


def _check_writable(folder: Path, flag: str) -> None:
    """One line if ``folder`` cannot be created or written (checked by creating a probe file)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".spikelfp-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{flag} {str(folder)!r} is not writable: {e.strerror or e}") from None


def run_report(args) -> int:
    """Analyse every run folder and write the report; 0 on success."""
    from .analyze import analyze_run
    from .report import write_report

    for d in args.runs:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"run folder {d!r} not found")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: use a positive number of samples")
    if not args.tolerance > 0:
        raise ValueError(f"--tolerance {args.tolerance}: must be > 0")
    if not 0 <= args.prune_tolerance < 1:
        raise ValueError(f"--prune-tolerance {args.prune_tolerance}: use 0 <= value < 1")
    if args.raster_samples < 0:
        raise ValueError(f"--raster-samples {args.raster_samples}: must be >= 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    _check_writable(out, "--out")  # before the (long) evaluation, not after it
    if args.json:
        _check_writable(Path(args.json).parent, "--json")
    progress = {"on": True, "off": False}.get(args.progress, sys.stderr.isatty())
    echo = lambda s: print(s, file=sys.stderr)  # noqa: E731
    runs = [analyze_run(d, checkpoint=args.checkpoint, limit=args.limit, device=args.device,
                        split=args.split, tolerance=args.tolerance, raster_samples=args.raster_samples,
                        prune=args.prune, fractions=DEFAULT_FRACTIONS,
                        prune_tolerance=args.prune_tolerance, progress=progress,
                        data_root=args.data_root, echo=echo) for d in args.runs]
    res = write_report(runs, out, json_path=args.json, title=args.title)
    print(f"report: {res['markdown']}, {res['html']} ({len(res['figures'])} figures)"
          + (f", {res['json']}" if "json" in res else ""))
    return 0


def add_compare_parser(subparsers) -> None:
    """Add the ``compare`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "compare", help="train several trainers on the same network and data; one report",
        description="Train the same network (same initial weights per seed), data, encoder, T, epochs and "
                    "batch with each trainer, resumably (run the same command again to continue), and write "
                    "one report (OUT/report/: report.md, report.html, PNGs, report.json): accuracy per epoch "
                    "over seeds, time per epoch, peak memory per step and vs T, spikes and SynOps per sample, "
                    "silent hidden neurons, update sparsity, pruning curve, exported-network agreement. "
                    "Run folders: OUT/runs/<trainer>-s<seed>.")
    p.add_argument("--config", help="YAML run config shared by every trainer (its trainer, seed, out and run_name keys "
                        "are ignored: --trainers, --seeds and --out set them)")
    p.add_argument("--trainers", help="comma-separated trainer names (default: every registered trainer)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="time steps T")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--limit", type=int, help="use at most this many training samples")
    p.add_argument("--test-limit", dest="test_limit", type=int, help="use at most this many test samples")
    p.add_argument("--dataset")
    p.add_argument("--data-root", dest="data_root")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="TRAINER.KEY=VALUE",
                   help="a setting for one trainer only (repeatable; value parsed as YAML): one of its own "
                        "keys or optimizer, lr, momentum, weight_decay, schedule, step_size, gamma, "
                        "log_updates_every, save_every; e.g. --set ffzero.lr=0.01")
    p.add_argument("--memory-steps", dest="memory_steps", default="10,25,100",
                   help="T values of the memory panel (default 10,25,100; 'none' to skip)")
    p.add_argument("--no-prune", dest="prune", action="store_false", help="skip the pruning curves")
    p.add_argument("--out", required=True, help="output folder: runs/, report/, compare.json")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 is faster for "
                                                 "small nets on a busy CPU)")
    p.add_argument("--title", default="spikelfp compare")
    p.add_argument("--progress", default="auto", choices=("auto", "on", "off"),
                   help="progress bars (auto: only on a terminal)")


def run_compare(args, export_check=None) -> int:
    """Plan, train (resumably), analyse and report; 0 on success, 130 if interrupted.
    ``export_check(net, input_shape, steps) -> dict``: the exported-network agreement (given by
    ``spikelfp.cli``, which may import ``hardware_export``)."""
    from .compare import base_config, compare, parse_int_list, parse_sets, parse_trainers, plan_runs

    trainers = parse_trainers(args.trainers)
    seeds = parse_int_list(args.seeds, "--seeds")
    mem = [] if str(args.memory_steps).strip().lower() in ("none", "") else \
        parse_int_list(args.memory_steps, "--memory-steps")
    if any(T < 1 for T in mem):
        raise ValueError(f"--memory-steps {args.memory_steps!r}: T must be >= 1")
    values = {k: getattr(args, k) for k in ("epochs", "steps", "batch_size", "limit", "test_limit", "dataset",
                                            "data_root", "device")}
    values["progress"] = args.progress
    base = base_config(args.config, values)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    plans = plan_runs(base, trainers, seeds, parse_sets(args.sets, trainers), out)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: use a positive number")
    _check_writable(out, "--out")
    progress = {"on": True, "off": False}.get(args.progress, sys.stderr.isatty())
    echo = lambda s: print(s, file=sys.stderr)  # noqa: E731
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        res = compare(plans, out, memory_steps=mem, export_check=export_check, prune=args.prune,
                      progress=progress, title=args.title, echo=echo)
    finally:
        torch.set_num_threads(threads)
    if res["interrupted"]:
        return 130
    print(f"compare: {res['markdown']}, {res['html']} ({len(res['figures'])} figures), {res['json']}; "
          f"{res['comparison']['seconds']:.0f} s")
    return 0
