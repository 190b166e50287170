"""The ``export`` subcommand: checkpoint -> NIR / HDF5, --verify, and one-line errors."""

import argparse

import pytest
import torch

pytest.importorskip("nir")
pytest.importorskip("h5py")

from hardware_export import from_nir, read_hdf5  # noqa: E402
from hardware_export.cli import add_export_parser, run_export  # noqa: E402

checkpoint = pytest.importorskip("spikelfp.train.checkpoint")
zoo = pytest.importorskip("spikelfp.nn.zoo")


pytestmark = pytest.mark.usefixtures("single_thread")


def _save(tmp_path, name="ck.pt", **spec_over):
    spec = {"model": "convnet", "input_shape": [1, 8, 8], "num_classes": 5, "channels": [3],
            "hidden": [], "beta": 0.9, "threshold": 1.0, "reset": "zero"}
    spec.update(spec_over)
    torch.manual_seed(0)
    net = zoo.build_model(spec)
    path = tmp_path / name
    torch.save({"model": net.state_dict(), "model_spec": spec,
                "config": {"steps": 12, "encoder": "constant", "dataset": "digits"}}, path)
    return path, net


def _run(argv):
    parser = argparse.ArgumentParser(prog="spikelfp")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    return run_export(parser.parse_args(["export", *argv]))


@pytest.mark.parametrize("fmt,reader", [("nir", from_nir), ("hdf5", read_hdf5)])
def test_export_and_verify(tmp_path, capsys, fmt, reader):
    ck, net = _save(tmp_path)
    out = tmp_path / f"net.{fmt}"
    assert _run(["--checkpoint", str(ck), "--format", fmt, "--out", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "T=12" in text
    assert "verify: spike agreement 1.000000" in text and "[identical]" in text
    back = reader(out)
    x = torch.rand(12, 3, 1, 8, 8) * 8
    assert torch.equal(net(x), back(x))


def test_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    ck, _ = _save(tmp_path)
    out = tmp_path / "o.nir"
    # missing checkpoint
    assert _run(["--checkpoint", str(tmp_path / "none.pt"), "--format", "nir",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spikelfp export: error:") and "not found" in err and "\n" not in err
    # existing output without --force
    out.write_bytes(b"old")
    assert _run(["--checkpoint", str(ck), "--format", "nir", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"old"
    # a layer with no NIR node (LeNet max-pools spikes)
    ck2, _ = _save(tmp_path, "lenet.pt", model="lenet", input_shape=[1, 16, 16])
    out2 = tmp_path / "l.nir"
    assert _run(["--checkpoint", str(ck2), "--format", "nir", "--out", str(out2)]) == 2
    assert "max pooling" in capsys.readouterr().err and not out2.exists()
    # ... which HDF5 holds
    assert _run(["--checkpoint", str(ck2), "--format", "hdf5", "--out",
                 str(tmp_path / "l.h5"), "--verify"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "l.h5", "lenet.pt", "o.nir"]


def test_reset_mismatch_needs_the_flag(tmp_path, capsys):
    ck, _ = _save(tmp_path, reset="subtract")
    out = tmp_path / "s.nir"
    assert _run(["--checkpoint", str(ck), "--format", "nir", "--out", str(out)]) == 2
    assert "--allow-reset-mismatch" in capsys.readouterr().err and not out.exists()
    assert _run(["--checkpoint", str(ck), "--format", "nir", "--out", str(out),
                 "--allow-reset-mismatch", "--verify", "--steps", "30"]) == 0
    cap = capsys.readouterr()
    assert "warning" in cap.err and "reset" in cap.err
    assert "verify: spike agreement" in cap.out and "T=30" in cap.out


def test_wired_into_the_spikelfp_cli(tmp_path, capsys):
    cli = pytest.importorskip("spikelfp.cli")
    parser = cli.build_parser()
    if "export" not in parser._subparsers._group_actions[0].choices:  # pragma: no cover
        pytest.skip("spikelfp.cli does not load the export plugin")
    ck, _ = _save(tmp_path)
    assert cli.main(["export", "--checkpoint", str(ck), "--format", "hdf5",
                     "--out", str(tmp_path / "n.h5")]) == 0
    assert (tmp_path / "n.h5").is_file()
