"""Static data: encoders, the digits default, MNIST from ../shared/data, loader determinism."""

import gzip
from pathlib import Path

import pytest
import torch

from spikelfp.data import DataError, build_data, get_encoder, load_idx_dataset, make_loader
from spikelfp.data.encoders import normalize_constant

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_constant_encoder_is_one_normalized_frame():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    out = get_encoder("constant")(x, 5)
    assert out.shape == x.shape and torch.equal(out, torch.tensor([[-1.0, 0.0, 1.0]]))
    assert torch.equal(normalize_constant(x), out)


def test_poisson_encoder_rates_and_determinism():
    x = torch.tensor([[0.0, 0.25, 1.0]]).expand(2000, 3)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = get_encoder("poisson")(x, 10, g1)
    b = get_encoder("poisson")(x, 10, g2)
    assert torch.equal(a, b) and a.shape == (10, 2000, 3)
    rate = a.mean((0, 1))
    assert rate[0] == 0 and rate[2] == 1 and abs(rate[1] - 0.25) < 0.01


def test_latency_encoder_single_spike_order():
    x = torch.tensor([[1.0, 0.5, 0.0]])
    s = get_encoder("latency")(x, 5)
    assert s.sum(0).tolist() == [[1.0, 1.0, 0.0]]
    assert s[0, 0, 0] == 1 and s[2, 0, 1] == 1  # brighter fires earlier


def test_delta_encoder_static_image():
    x = torch.tensor([[0.05, 0.6]])
    s = get_encoder("delta")(x, 4)
    assert s[:, 0, 1].tolist() == [1, 0, 0, 0] and s[:, 0, 0].sum() == 0


def test_unknown_encoder():
    with pytest.raises(ValueError, match="encoder"):
        get_encoder("rank")


def test_digits_splits_are_fixed_and_disjoint():
    a = build_data({"dataset": "digits", "val_fraction": 0.1})
    b = build_data({"dataset": "digits", "val_fraction": 0.1, "limit": 100})
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert len(a.test) == 450 and len(b.train) == 100
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert a.train.tensors[0].min() >= 0 and a.train.tensors[0].max() <= 1


def test_loader_shuffle_is_reproducible():
    d = build_data({"dataset": "digits", "val_fraction": 0.0, "limit": 50})
    ys = [[y.tolist() for _, y in make_loader(d.train, 16, True, torch.Generator().manual_seed(5))] for _ in range(2)]
    assert ys[0] == ys[1] and len(ys[0]) == 4


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason="../shared/data/mnist not present")
def test_mnist_from_shared():
    x, y = load_idx_dataset("mnist", SHARED_MNIST, "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert torch.bincount(y).tolist()[:2] == [980, 1135]
    assert x.min() == 0 and x.max() == 1


def test_mnist_missing_and_truncated(tmp_path):
    with pytest.raises(DataError, match="MNIST/raw"):
        load_idx_dataset("mnist", tmp_path, "train")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write((0x0803).to_bytes(4, "big") + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 10)
    with gzip.open(raw / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write((0x0801).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\0" * 5)
    with pytest.raises(DataError, match="truncated"):
        load_idx_dataset("mnist", tmp_path, "train")
