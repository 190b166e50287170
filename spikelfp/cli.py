"""The ``spikelfp`` console script: ``train``, ``eval``, ``export``, ``report`` and ``compare``.

Bad input (unknown config keys, values out of range, a missing data root, an unknown
dataset/model/optimizer, CUDA asked for but absent) prints one line and exits with code 2,
before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from hardware_export import nir_roundtrip_agreement
from hardware_export.cli import add_export_parser, run_export

from . import __version__
from .diagnostics.cli import add_compare_parser, add_report_parser, run_compare, run_report
from .train.registry import get_trainer_spec, trainer_names, trainer_options


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="digits (default, embedded) | mnist | fashion_mnist | nmnist | ...")
    p.add_argument("--data-root", dest="data_root", help="folder holding the data set (torchvision/tonic layout)")
    p.add_argument("--download", action="store_true", default=None, help="allow downloading a missing data set")
    p.add_argument("--limit", type=int, help="use at most this many training samples")
    p.add_argument("--test-limit", dest="test_limit", type=int, help="use at most this many test samples")
    p.add_argument("--steps", type=int, help="time steps T per sample")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--cache-dir", dest="cache_dir", help="event data: cache binned frames on disk here")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a spiking network (LFP by default)",
                       description="Train a spiking network. Values: defaults <- --config YAML <- flags.")
    p.add_argument("--config", help="YAML file with config keys (see README)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    _add_common(p)
    p.add_argument("--encoder", help="constant | poisson | latency | delta")
    p.add_argument("--event-window-us", dest="event_window_us", type=float,
                   help="event data: fixed time window per step (default: T equal bins per sample)")
    p.add_argument("--event-denoise-us", dest="event_denoise_us", type=float, help="event data: tonic Denoise filter time")
    p.add_argument("--event-first-saccade", dest="event_first_saccade", action="store_true", default=None,
                   help="N-MNIST: keep only the first saccade")
    p.add_argument("--event-merge-polarity", dest="event_merge_polarity", action="store_true", default=None)
    p.add_argument("--event-downsample", dest="event_downsample", type=int, help="event data: spatial downsampling factor")
    p.add_argument("--event-binary", dest="event_binary", action="store_true", default=None,
                   help="event data: clip frame counts to binary spikes")
    p.add_argument("--model", help="mlp | lenet | convnet")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden layer widths, e.g. --hidden 1000")
    p.add_argument("--beta", type=float, help="membrane decay in (0, 1]")
    p.add_argument("--threshold", type=float, help="firing threshold > 0")
    p.add_argument("--reset", help="subtract | zero")
    p.add_argument("--neuron", help="lif | cuba (current-based LIF: synaptic current with decay --alpha)")
    p.add_argument("--alpha", type=float, help="synaptic-current decay in [0, 1) (neuron cuba)")
    p.add_argument("--recurrent", action=argparse.BooleanOptionalAction, default=None,
                   help="recurrent weights V in the hidden dense layers")
    names = trainer_names()
    p.add_argument("--trainer", help=" | ".join(names) + ": " + "; ".join(
        f"{n}: {get_trainer_spec(n).help}" for n in names))
    _add_trainer_flags(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", help="sgd | adam | adamw")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--grad-clip", dest="grad_clip", type=float,
                   help="clip the update's global L2 norm to this value before the optimizer step "
                        "(after data-parallel averaging; default: off)")
    p.add_argument("--schedule", help="none | cosine | step | onecycle")
    p.add_argument("--val-fraction", dest="val_fraction", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", help="float32 | float64")
    p.add_argument("--out", help="parent folder of run folders (default runs/)")
    p.add_argument("--run-name", dest="run_name", help="name of the run folder (default: time-stamped)")
    p.add_argument("--progress", help="auto | on | off (progress bars)")


def _add_trainer_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config key of the registered trainers (from their :class:`Option`)."""
    owners = {}
    for n in trainer_names():
        for o in get_trainer_spec(n).options:
            owners.setdefault(o.key, []).append(n)
    for key, o in trainer_options().items():
        kind = o.kind if o.kind in (int, float) else None
        help_ = f"{o.help} [{', '.join(owners[key])}]"
        if o.kind is bool:
            p.add_argument(o.cli_flag(), dest=key, action=argparse.BooleanOptionalAction,
                           default=None, help=help_)
        else:
            p.add_argument(o.cli_flag(), dest=key, type=kind, help=help_)


_BASE_TRAIN_KEYS = ("dataset", "data_root", "download", "limit", "test_limit", "steps", "device",
                    "batch_size", "encoder", "model", "hidden", "beta", "threshold", "reset", "neuron",
                    "alpha", "recurrent", "trainer",
                    "epochs", "lr", "optimizer", "momentum", "weight_decay", "grad_clip", "schedule",
                    "val_fraction", "seed", "dtype", "out", "run_name", "progress", "cache_dir",
                    "event_window_us", "event_denoise_us", "event_first_saccade", "event_merge_polarity",
                    "event_downsample", "event_binary")


def train_keys() -> tuple:
    """Config keys the train command forwards: the base keys and every trainer's options."""
    return _BASE_TRAIN_KEYS + tuple(k for k in trainer_options() if k not in _BASE_TRAIN_KEYS)


_TRAIN_KEYS = train_keys()


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: accuracy and spike statistics")
    p.add_argument("--checkpoint", required=True, help="a .pt checkpoint or a run folder")
    _add_common(p)
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_train(args) -> int:
    from .train.config import load_yaml, resolve
    from .train.loop import train

    overrides = {k: getattr(args, k) for k in train_keys()}
    if args.resume and args.config:
        raise ValueError("--resume takes the run's own config (RUN_DIR/config.yaml); drop --config "
                         "(flags such as --epochs still apply)")
    if args.resume:
        fix_mmap_threshold(_run_steps(args.resume))
        res = train(resume=args.resume, overrides=overrides)
    else:
        base = load_yaml(args.config) if args.config else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        cfg = resolve(None, base)
        fix_mmap_threshold(cfg["steps"])
        res = train(cfg)
    return 130 if res["interrupted"] else 0


def _run_steps(run_dir: str) -> Optional[int]:
    """``steps`` of a run folder's config.yaml (None if it cannot be read: train says why)."""
    from .train.config import load_yaml

    try:
        steps = load_yaml(os.path.join(run_dir, "config.yaml")).get("steps")
    except (OSError, ValueError):
        return None
    return steps if isinstance(steps, int) else None


def cmd_eval(args) -> int:

    from .data.registry import build_data, make_loader
    from .train.checkpoint import load_checkpoint
    from .train.config import resolve
    from .train.loop import evaluate, resolve_device

    net, cfg, _ = load_checkpoint(args.checkpoint)
    over = {k: getattr(args, k) for k in ("dataset", "data_root", "download", "limit", "test_limit",
                                          "steps", "device", "batch_size", "cache_dir")}
    cfg = resolve(None, {**cfg, **{k: v for k, v in over.items() if v is not None}})
    device = resolve_device(cfg["device"])
    data = build_data(cfg)
    ds = {"test": data.test, "val": data.val, "train": data.train}[args.split]
    if ds is None:
        raise ValueError(f"the run has no {args.split} split (val_fraction is 0)")
    dtype = next(net.parameters()).dtype
    net = net.to(device)
    ev = evaluate(net, make_loader(ds, cfg["batch_size"] * 4, False), cfg, data.sequence, device,
                  dtype, progress=sys.stderr.isatty(), desc=args.split)
    if args.json:
        print(json.dumps(ev))
    else:
        rates = " ".join(f"{r:.4f}" for r in ev["spike_rate"])
        sps = " ".join(f"{r:.1f}" for r in ev["spikes_per_sample"])
        print(f"{args.split} accuracy {ev['acc']:.4f} on {ev['n']} samples (T={cfg['steps']})")
        print(f"spike rate per layer [{rates}]; spikes per sample per layer [{sps}]")
    return 0


def cmd_compare(args) -> int:
    return run_compare(args, export_check=nir_roundtrip_agreement)


_HANDLERS = {"train": cmd_train, "eval": cmd_eval, "export": run_export, "report": run_report,
             "compare": cmd_compare}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikelfp", description=(
        "Train spiking neural networks with Layer-wise Feedback Propagation (no surrogate gradients)."))
    parser.add_argument("--version", action="version", version=f"spikelfp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _eval_parser(sub)
    add_export_parser(sub)
    add_report_parser(sub)
    add_compare_parser(sub)
    return parser


#: glibc's mmap threshold set by the CLI (bytes) for runs of at least LONG_SEQUENCE steps;
#: SPIKELFP_MMAP_THRESHOLD (bytes) sets it for every run, 0 keeps glibc's
MMAP_THRESHOLD = 1 << 20
LONG_SEQUENCE = 100


def fix_mmap_threshold(steps: Optional[int] = None) -> bool:
    """Fix glibc's mmap threshold for this process: blocks above it are mapped and returned to
    the system when freed. glibc's own threshold grows with freed blocks, after which the few-MB
    temporaries of a long-sequence step come from the heap and fragment it (the same run at
    T = 200 grew 6.4 bytes per (step, sample, neuron) against 4.2 with 1 MiB), but each mapped
    block costs page faults when it is used again (the MNIST preset at T = 15 trains ~35 % slower
    with 1 MiB). So: 1 MiB for runs of ``steps`` >= LONG_SEQUENCE, else glibc's own;
    ``SPIKELFP_MMAP_THRESHOLD`` (bytes; 0 = glibc's) decides for every run. True if set (Linux)."""
    raw = os.environ.get("SPIKELFP_MMAP_THRESHOLD")
    if raw is None and (steps is None or steps < LONG_SEQUENCE):
        return False
    try:
        value = int(raw) if raw is not None else MMAP_THRESHOLD
    except ValueError:
        return False
    if value <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt(-3, value) == 1  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "train":
        fix_mmap_threshold()  # only where SPIKELFP_MMAP_THRESHOLD asks (train decides by its steps)
    handler = _HANDLERS[args.command]
    try:
        return handler(args)
    except (ValueError, OSError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 alone says it
            print(f"spikelfp {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
