"""HDF5 export: round trip through read_hdf5, the documented schema, and the refusals."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

import spikelfp.nn as snn  # noqa: E402
from _helpers import boost  # noqa: E402
from hardware_export import read_hdf5, read_hdf5_metadata, write_hdf5  # noqa: E402
from hardware_export import hdf5_export as H  # noqa: E402

SCHEMA = Path(H.__file__).with_name("SCHEMA.md")


pytestmark = pytest.mark.usefixtures("single_thread")


def full_net(reset="subtract", seed=0):
    """Every layer type the HDF5 layout holds, per-neuron and per-channel parameters."""
    torch.manual_seed(seed)
    return boost(snn.Sequential(
        snn.LIFConv2d(2, 4, 3, padding=1, beta=torch.rand(4) * 0.4 + 0.55,
                      threshold=torch.rand(4, 8, 8) + 0.5, reset=reset),
        snn.AvgPool2d(2),
        snn.LIFConv2d(4, 6, 3, padding=1, bias=False, groups=2, beta=1.0, threshold=0.7,
                      reset="zero"),
        snn.MaxPool2d(2),
        snn.Flatten(),
        snn.LIFLinear(6 * 2 * 2, 9, beta=torch.rand(9) * 0.5 + 0.4, threshold=0.6, reset=reset),
        snn.LIFLinear(9, 4, bias=False, beta=0.8, threshold=torch.rand(4) + 0.3, reset=reset),
    )), (2, 8, 8)


def _inputs(shape, T=20, B=6, seed=1, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, *shape, generator=g) * scale


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k
    for la, lb in zip(a, b):
        assert type(la) is type(lb) and getattr(la, "reset", None) == getattr(lb, "reset", None)
        for attr in ("stride", "padding", "dilation", "groups", "kernel_size", "frame_dims"):
            assert getattr(la, attr, None) == getattr(lb, attr, None) or \
                tuple(getattr(la, attr)) == tuple(getattr(lb, attr)), attr


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_round_trip_is_exact(tmp_path, reset):
    net, shape = full_net(reset)
    path = write_hdf5(net, tmp_path / "net.h5", shape, time_steps=20, input_encoding="constant")
    back, meta = read_hdf5(path, return_metadata=True)
    _same(net, back)  # same parameters, shapes (scalar / per channel / per neuron) and resets
    x = _inputs(shape)
    ref = net(x)
    assert 0.02 < ref.mean() < 0.9
    assert torch.equal(ref, back(x))
    assert meta["time_steps"] == 20 and meta["input_encoding"] == "constant"
    assert list(meta["input_shape"]) == [2, 8, 8]


def test_linear_net_infers_input_shape_and_metadata(tmp_path):
    torch.manual_seed(0)
    net = snn.Sequential(snn.LIFLinear(5, 3, reset="zero"))
    write_hdf5(net, tmp_path / "a.h5", dt=1e-3, metadata={"dataset": "digits"})
    meta = read_hdf5_metadata(tmp_path / "a.h5")
    assert meta["format"] == H.FORMAT_NAME and meta["format_version"] == H.FORMAT_VERSION
    assert meta["dt"] == 1e-3 and meta["time_steps"] == -1 and meta["input_encoding"] == ""
    assert meta["dataset"] == "digits" and meta["num_layers"] == 2
    assert isinstance(meta["spikelfp_version"], str) and meta["spikelfp_version"]
    _same(net, read_hdf5(tmp_path / "a.h5"))


def _doc_tables():
    """{section heading: [keys in the first column]} of the HDF5 part of SCHEMA.md."""
    text = SCHEMA.read_text()
    text = text[text.index("### HDF5 layout"):]
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("#### "):
            current = line[5:].strip()
            sections.setdefault(current, [])
        m = re.match(r"^\| `([A-Za-z_]+)` \|", line)
        if m and current is not None:
            sections[current].append(m.group(1))
    return sections


def test_schema_document_matches_the_code():
    doc = _doc_tables()
    assert tuple(doc["File attributes"]) == H.FILE_ATTRS
    assert tuple(doc["Layer groups: common keys"]) == H.COMMON_LAYER_KEYS
    for kind, keys in H.LAYER_KEYS.items():
        assert tuple(doc.get(f"type {kind}", [])) == keys, kind
    assert tuple(doc["Neuron group"]) == H.NEURON_KEYS


def test_every_documented_key_is_in_the_file(tmp_path):
    net, shape = full_net()
    write_hdf5(net, tmp_path / "net.h5", shape, time_steps=20, input_encoding="poisson")
    doc = _doc_tables()
    with h5py.File(tmp_path / "net.h5", "r") as f:
        assert set(doc["File attributes"]) <= set(f.attrs)
        groups = [f["layer"][k] for k in sorted(f["layer"], key=int)]
        assert len(groups) == f.attrs["num_layers"] == len(net) + 1
        seen = set()
        for g, layer in zip(groups, [None, *net]):
            kind = g["type"][0].decode("ascii")
            assert g["type"].shape == (1,) and g["type"].dtype == np.dtype("S10")
            seen.add(kind)
            for key in doc["Layer groups: common keys"] + doc[f"type {kind}"]:
                if key == "bias" and getattr(layer, "bias", 0) is None:
                    assert key not in g  # optional: absent exactly when there is no bias
                    continue
                assert key in g, (kind, key)
            if "neuron" in g:
                assert set(doc["Neuron group"]) <= set(g["neuron"])
                n = g["neuron"]
                np.testing.assert_array_equal(n["threshold"][()], n["vThMant"][()])
                np.testing.assert_allclose(n["vDecay"][()], (1 - n["beta"][()]) * 4096,
                                           rtol=1e-7)
                assert n["reset"][()].decode() == layer.reset
                assert n["type"][()].decode() == ("CUBA" if layer.reset == "zero"
                                                  else "CUBA-SUBTRACT")
            if layer is not None:
                assert tuple(g["shape"][()]) == tuple(net[: list(net).index(layer) + 1](
                    torch.zeros(1, 1, *shape)).shape[2:])
        assert seen == {"input", "dense", "conv", "pool", "flatten"}
        # netx conventions: dense weight [out, in], conv weight [out, in/groups, kH, kW]
        assert groups[6]["weight"].shape == (9, 24)
        assert groups[3]["weight"].shape == (6, 2, 3, 3)


def test_netx_style_neuron_group_is_read(tmp_path):
    """A group with only netx's names (vDecay in 1/4096, vThMant) still reads."""
    torch.manual_seed(0)
    net = snn.Sequential(snn.LIFLinear(6, 4, beta=0.75, threshold=0.5, reset="zero"))
    write_hdf5(net, tmp_path / "n.h5")
    with h5py.File(tmp_path / "n.h5", "r+") as f:
        for key in ("beta", "threshold", "reset"):
            del f["layer/1/neuron"][key]
    back = read_hdf5(tmp_path / "n.h5")
    _same(net, back)


def test_refusals_write_nothing(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(ValueError, match="ReLU"):
        write_hdf5(snn.Sequential(snn.ReLULinear(4, 3)), path)
    with pytest.raises(ValueError, match="no layers"):
        write_hdf5(snn.Sequential(), path)
    assert list(tmp_path.iterdir()) == []
    net = snn.Sequential(snn.LIFLinear(4, 3))
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="force"):
        write_hdf5(net, path)
    assert path.read_bytes() == b"old"
    write_hdf5(net, path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]
    with pytest.raises(FileNotFoundError):
        read_hdf5(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="metadata key 'dt' is reserved"):
        write_hdf5(net, tmp_path / "y.h5", metadata={"dt": 3})
    assert not (tmp_path / "y.h5").exists()


def test_float64_network_round_trips_exactly(tmp_path):
    net, shape = full_net()
    net = net.double()
    with torch.no_grad():
        net[0].beta.add_(1e-12)  # a value no float32 can hold
    write_hdf5(net, tmp_path / "d.h5", shape)
    back = read_hdf5(tmp_path / "d.h5")
    assert back[0].weight.dtype == torch.float64
    _same(net, back)
    x = _inputs(shape).double()
    assert torch.equal(net(x), back(x))
