"""The ``spikelfp export`` subcommand: a checkpoint to a NIR or HDF5 file.

    spikelfp export --checkpoint runs/x/best.pt --format nir --out net.nir [--verify]

Wired into ``spikelfp/cli.py`` through :func:`add_export_parser` and :func:`run_export`.
Bad input (missing checkpoint, existing output without ``--force``, a layer with no equivalent
in the format, reset "subtract" to NIR without ``--allow-reset-mismatch``) prints one line to
stderr and returns 2; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from spikelfp.train.checkpoint import load_checkpoint

FORMATS = ("nir", "hdf5", "netx")


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "export", help="export a trained network to NIR or HDF5",
        description="Export a checkpoint to NIR (neuromorphic intermediate representation) or "
                    "to spikelfp's HDF5 layout (close to Lava-DL netx); see "
                    "hardware_export/SCHEMA.md.")
    p.add_argument("--checkpoint", required=True, help="a .pt checkpoint or a run folder")
    p.add_argument("--format", required=True, choices=FORMATS, dest="format")
    p.add_argument("--out", required=True, help="output file (.nir / .h5)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--allow-reset-mismatch", dest="allow_reset_mismatch", action="store_true",
                   help="NIR only: export a reset='subtract' network although NIR's LIF resets "
                        "to zero (the file records it; spikes then differ)")
    p.add_argument("--verify", action="store_true",
                   help="re-read the written file and report spike agreement with the original "
                        "on random inputs")
    p.add_argument("--dt", type=float, default=None,
                   help="time step for tau = dt/(1-beta) (default 1e-4, snnTorch's importer dt)")
    p.add_argument("--steps", type=int, default=None,
                   help="time steps T recorded in the file and used by --verify "
                        "(default: the checkpoint's steps)")
    p.add_argument("--input-shape", dest="input_shape", default=None,
                   help="per-sample input shape, e.g. 1,28,28 (default: from the checkpoint)")
    p.add_argument("--pooling", choices=("avg", "sum"), default="avg",
                   help="NIR only: AvgPool2d nodes (snnTorch) or SumPool2d with 1/(k*k) folded "
                        "into the next weights (Norse, Sinabs)")
    p.add_argument("--input-mode", dest="input_mode", choices=("binary", "graded"), default=None,
                   help="netx only: how the input reaches the chip (default: graded for the "
                        "constant encoder and event counts, binary for spike encoders)")
    p.add_argument("--input-scale", dest="input_scale", type=float, default=None,
                   help="netx only: graded payload = round(x * scale) (default 8 for the "
                        "constant encoder, 1 for event counts)")
    p.set_defaults(func=run_export)
    return p


def _parse_shape(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in str(text).replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise ValueError(
            f"--input-shape {text!r} is not a comma-separated list of integers") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"--input-shape {text!r}: sizes must be positive integers")
    return shape


def _lookup(cfg: Dict[str, Any], *keys: str):
    for key in keys:
        cur: Any = cfg
        for part in key.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                cur = None
                break
        if cur is not None:
            return cur
    return None


def _load(checkpoint: str):
    """(network, config, model_spec) from a checkpoint (``spikelfp.load_checkpoint``)."""
    ck = load_checkpoint(checkpoint, map_location="cpu")
    return ck.network, ck.config, (ck.meta.get("model_spec") or {})


def export_checkpoint(args) -> Dict[str, Any]:
    """Do the export described by parsed ``args``; returns a summary dict. Raises on bad input."""
    from . import DEFAULT_DT, compare_networks, from_nir, read_hdf5, write_hdf5, write_nir
    from ._common import check_output_path

    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} not found")
    check_output_path(args.out, bool(args.force))  # before any work
    net, cfg, spec = _load(str(ckpt))
    net = net.eval()
    if args.input_shape:
        input_shape: Optional[Sequence[int]] = _parse_shape(args.input_shape)
    else:
        found = spec.get("input_shape") or _lookup(cfg, "input_shape", "data.input_shape")
        input_shape = tuple(int(s) for s in found) if found is not None else None
    steps = args.steps if args.steps is not None else _lookup(cfg, "steps", "time_steps", "T")
    if steps is not None and (isinstance(steps, bool) or int(steps) < 1):
        raise ValueError(f"--steps {steps!r}: T must be an integer >= 1")
    steps = int(steps) if steps is not None else None
    encoding = _lookup(cfg, "encoder", "input_encoding", "encoding", "data.encoder")
    dt = float(args.dt) if args.dt is not None else DEFAULT_DT
    meta = {"source_checkpoint": str(ckpt.name)}
    if cfg.get("dataset") is not None:
        meta["dataset"] = str(cfg["dataset"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.format == "netx":
            _write_netx(args, net, input_shape, steps, encoding, cfg, meta)
        elif args.format == "nir":
            write_nir(net, args.out, input_shape, dt, force=bool(args.force),
                      allow_reset_mismatch=bool(args.allow_reset_mismatch), pooling=args.pooling,
                      time_steps=steps, input_encoding=encoding, metadata=meta)
        else:
            write_hdf5(net, args.out, input_shape, dt=dt, time_steps=steps,
                       input_encoding=encoding, force=bool(args.force), metadata=meta)
    notes = [str(w.message).splitlines()[0] for w in caught]
    summary: Dict[str, Any] = {"out": str(args.out), "format": args.format, "notes": notes,
                               "layers": len(list(net)), "dt": dt, "steps": steps}
    if args.verify and args.format == "netx":
        from .loihi_sim import verify_netx
        from .netx_export import read_netx

        summary["verify"] = verify_netx(net, read_netx(args.out), steps=steps or 25, batch=32,
                                        seed=0)
        summary["verify_expected_exact"] = False
    elif args.verify:
        if input_shape is None:
            from ._common import infer_input_shape

            input_shape = infer_input_shape(net)
        if args.format == "nir":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                back = from_nir(args.out, dt=dt)
        else:
            back = read_hdf5(args.out)
        dtype = next(net.parameters()).dtype
        summary["verify"] = compare_networks(net, back.to(dtype), input_shape,
                                             steps=steps or 25, batch=32, seed=0)
        summary["verify_expected_exact"] = not any(
            getattr(m, "reset", "zero") == "subtract" for m in net) or args.format == "hdf5"
    return summary


def netx_input_mode(encoding, cfg: Dict[str, Any]) -> Tuple[str, Optional[float]]:
    """How each encoder reaches Loihi: spike encoders (poisson, latency, delta) and binary
    event frames as binary spikes; the constant encoder as graded spikes round(x * 8); event
    counts as graded spikes (the count itself, scale 1)."""
    dataset = str(cfg.get("dataset") or "")
    if dataset not in ("", "digits", "mnist", "fashion_mnist"):  # event data: frames of counts
        return ("binary", None) if cfg.get("event_binary") else ("graded", 1.0)
    if encoding in ("poisson", "latency", "delta"):
        return "binary", None
    return "graded", 8.0


def _write_netx(args, net, input_shape, steps, encoding, cfg, meta) -> None:
    """The netx branch of :func:`export_checkpoint`: the input mode, then quantize and write."""
    from .netx_export import write_netx

    mode, scale = netx_input_mode(encoding, cfg)
    mode = args.input_mode or mode
    scale = args.input_scale if args.input_scale is not None else (
        scale if mode == "graded" else None)
    write_netx(net, args.out, input_shape, input_mode=mode, input_scale=scale,
               time_steps=steps, input_encoding=encoding, force=bool(args.force), metadata=meta)


def run_export(args) -> int:
    """Handler of ``spikelfp export``: 0 on success, 2 on bad input (one line on stderr), 1 when
    ``--verify`` finds that an export expected to be exact is not."""
    try:
        s = export_checkpoint(args)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, ImportError,
            RuntimeError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"spikelfp export: error: {msg}", file=sys.stderr)
        return 2
    for note in s["notes"]:
        print(f"spikelfp export: warning: {note}", file=sys.stderr)
    print(f"wrote {s['out']} ({s['format']}, {s['layers']} layers, dt={s['dt']:g}"
          + (f", T={s['steps']}" if s["steps"] else "") + ")")
    if "verify" in s:
        v = s["verify"]
        if s["format"] == "netx":
            print(f"verify: Loihi simulation of the file vs the float network: spike agreement "
                  f"{v['agreement']:.6f} ({v['mismatched']} of {v['total']} entries differ), "
                  f"spike counts {v['spikes_reference']:.0f} vs {v['spikes_candidate']:.0f}, "
                  f"prediction agreement {v['prediction_agreement']:.4f}"
                  + (" [identical]" if v["identical"] else " (quantization)"))
            return 0
        print(f"verify: spike agreement {v['agreement']:.6f} ({v['mismatched']} of {v['total']} "
              f"entries differ), spike counts {v['spikes_reference']:.0f} vs "
              f"{v['spikes_candidate']:.0f}, prediction agreement {v['prediction_agreement']:.4f}; "
              f"random inputs in [0, {v['scale']:g}), output rate {v['output_rate']:.3f}"
              + (" [identical]" if v["identical"] else ""))
        if s["verify_expected_exact"] and not v["identical"]:
            print("spikelfp export: error: the re-read file does not reproduce the network's "
                  "spikes", file=sys.stderr)
            return 1
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience: python -m hardware_export.cli
    parser = argparse.ArgumentParser(prog="spikelfp")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    args = parser.parse_args(argv)
    return run_export(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
