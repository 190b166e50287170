"""Train a small LIF network with LFP on sklearn's digits, export it to NIR and HDF5, read both
back and compare the spikes (and, where installed, run the NIR file in snnTorch and Norse).

    python examples/export_nir_hdf5.py [--epochs 1] [--steps 20] [--lr 1e-2] [--out-dir DIR]

The network uses reset "zero", which NIR's LIF node expresses exactly (reset "subtract", the
spikelfp default, has no NIR 1.0 node; see hardware_export/SCHEMA.md).
"""

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import spikelfp.nn as snn
from spikelfp import LFP
from hardware_export import compare_networks, from_nir, read_hdf5, write_hdf5, write_nir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--out-dir", default=None, help="where to write net.nir / net.h5 "
                    "(default: a temporary folder)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0 - 0.5) / 0.5  # constant encoder: the pixel values are the input current
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    Xtr, Xte = torch.tensor(Xtr, dtype=torch.float32), torch.tensor(Xte, dtype=torch.float32)
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    T = args.steps

    net = snn.Sequential(snn.LIFLinear(64, 32, beta=0.9, reset="zero"),
                         snn.LIFLinear(32, 10, beta=0.9, reset="zero"))
    lfp = LFP(net)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(Xtr))
        for i in range(0, len(Xtr), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            lfp.step(Xtr[idx], ytr[idx], steps=T)
            opt.step()
        acc = (net.predict(Xte, steps=T) == yte).float().mean().item()
        print(f"epoch {epoch + 1}: test accuracy {acc:.3f}")

    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="spikelfp-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    nir_path, h5_path = out_dir / "net.nir", out_dir / "net.h5"
    write_nir(net, nir_path, (64,), force=True, time_steps=T, input_encoding="constant")
    write_hdf5(net, h5_path, (64,), force=True, time_steps=T, input_encoding="constant")
    print(f"wrote {nir_path} and {h5_path}")

    x = Xte.unsqueeze(0).expand(T, *Xte.shape)  # the test set as a constant sequence
    for name, back in (("NIR", from_nir(nir_path)), ("HDF5", read_hdf5(h5_path))):
        on_test = compare_networks(net, back, (64,), x=x)
        on_random = compare_networks(net, back, (64,), steps=T, batch=64)
        acc = (back.predict(Xte, steps=T) == yte).float().mean().item()
        print(f"{name:5s} re-read: spike agreement {on_test['agreement']:.6f} on the test set "
              f"({on_test['mismatched']} of {on_test['total']} differ), "
              f"{on_random['agreement']:.6f} on random inputs; test accuracy {acc:.3f}")

    # Independent simulators, where installed (see SCHEMA.md, "Consumers")
    import nir

    from hardware_export.consumers import simulate_norse, simulate_snntorch
    from hardware_export.verify import spike_agreement

    graph = nir.read(str(nir_path))
    ref = net(x)
    for name, run in (("snnTorch", lambda: simulate_snntorch(graph, x)),
                      ("Norse", lambda: simulate_norse(graph, x, dt=float(graph.metadata["dt"])))):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = run()
        except ImportError:
            print(f"{name}: not installed, skipped")
            continue
        res = spike_agreement(ref, out)
        print(f"{name:8s} on the .nir file: spike agreement {res['agreement']:.6f}, "
              f"prediction agreement {res['prediction_agreement']:.3f}")


if __name__ == "__main__":
    main()
