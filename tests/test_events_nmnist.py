"""N-MNIST through ``build_data`` on the real subset in ``shared/data/nmnist`` (tonic layout):
sample counts per split and class against MANIFEST.tsv, frame shapes, frames equal to tonic's own
ToFrame on tonic's own reader, per-bin sums equal to the events in each bin, the options, the disk
cache, and one end-to-end training run."""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

tonic = pytest.importorskip("tonic", reason="event data sets need tonic")

from spikelfp.data import DataError, build_data, make_loader  # noqa: E402
from spikelfp.data import events as ev  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "shared/data/nmnist"
if not (ROOT / "NMNIST").is_dir():
    pytest.skip(f"real N-MNIST subset not found at {ROOT} (expected NMNIST/{{Train,Test}}/<label>/<id>.bin)",
                allow_module_level=True)


def cfg(**kw):
    base = {"dataset": "nmnist", "data_root": str(ROOT), "steps": 10, "val_fraction": 0.0}
    base.update(kw)
    return base


def labels_of(ds):
    """Labels of a split (a Subset over the cached frames, or the cached frames)."""
    if isinstance(ds, torch.utils.data.Subset):
        return [labels_of(ds.dataset)[i] for i in ds.indices]
    return list(ds.frames.targets)


def files_of(ds):
    if isinstance(ds, torch.utils.data.Subset):
        return [files_of(ds.dataset)[i] for i in ds.indices]
    return list(ds.frames.source.files)


# tonic's own reader on the partial copy (README workaround: skip the completeness check; the
# class must be called NMNIST because tonic uses the class name as the sub-folder)
TonicNMNIST = type("NMNIST", (tonic.datasets.NMNIST,), {"_check_exists": lambda self: True})


@pytest.fixture(scope="module")
def bundle():
    return build_data(cfg())


def test_counts_per_split_and_class_match_manifest(bundle):
    with open(ROOT / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    want = {s: collections.Counter(int(r["label"]) for r in rows if r["split"] == s) for s in ("Train", "Test")}
    assert bundle.num_classes == 10 and bundle.sequence is True
    assert len(bundle.train) == sum(want["Train"].values()) == 699
    assert len(bundle.test) == sum(want["Test"].values()) == 72
    assert collections.Counter(labels_of(bundle.train)) == want["Train"]
    assert collections.Counter(labels_of(bundle.test)) == want["Test"]
    # every file's label is its folder name, as in the manifest
    by_path = {r["path"]: int(r["label"]) for r in rows}
    for path, lab in zip(files_of(bundle.test), labels_of(bundle.test)):
        assert by_path[str(path.relative_to(ROOT))] == lab


def test_frame_shapes_and_dtype(bundle):
    assert bundle.input_shape == (2, 34, 34)
    x, y = bundle.train[0]
    assert x.shape == (10, 2, 34, 34) and x.dtype == torch.float32 and isinstance(y, int)
    xb, yb = next(iter(make_loader(bundle.test, 4, False)))
    assert xb.shape == (4, 10, 2, 34, 34) and yb.dtype == torch.int64


@pytest.mark.parametrize("index", [0, 17, 41, 70])
def test_frames_equal_tonic_toframe_and_bin_counts(index):
    b = build_data(cfg(steps=10))
    x, y = b.test[index]
    path = files_of(b.test)[index]
    tds = TonicNMNIST(save_to=str(ROOT), train=False)
    j = [str(Path(p)) for p in tds.data].index(str(path))
    events, label = tds[j]
    assert label == y
    ref = tonic.transforms.ToFrame(sensor_size=tonic.datasets.NMNIST.sensor_size, n_time_bins=10)(events)
    assert np.array_equal(x.numpy(), ref.astype(np.float32))
    # each frame holds exactly the events of its time bin [t0 + i w, t0 + (i + 1) w)
    t = events["t"]
    w = (t[-1] - t[0]) // 10
    for i in range(10):
        lo, hi = t[0] + i * w, t[0] + (i + 1) * w
        assert x[i].sum().item() == int(((t >= lo) & (t < hi)).sum())


def test_first_saccade_matches_tonic():
    b = build_data(cfg(steps=5, event_first_saccade=True))
    x, _ = b.test[3]
    path = files_of(b.test)[3]
    tds = TonicNMNIST(save_to=str(ROOT), train=False, first_saccade_only=True,
                      transform=tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_time_bins=5))
    j = [str(Path(p)) for p in tds.data].index(str(path))
    assert np.array_equal(x.numpy(), tds[j][0].astype(np.float32))
    events = tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)
    assert x.sum() < (events["t"] < 1e5).sum() + 1


def test_denoise_matches_tonic():
    b = build_data(cfg(steps=5, event_denoise_us=10_000.0, test_limit=2))
    tds = TonicNMNIST(save_to=str(ROOT), train=False, transform=tonic.transforms.Compose([
        tonic.transforms.Denoise(filter_time=10_000.0),
        tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_time_bins=5)]))
    paths = [str(Path(p)) for p in tds.data]
    for i in range(2):
        x, _ = b.test[i]
        ref = tds[paths.index(str(files_of(b.test)[i]))][0]
        assert np.array_equal(x.numpy(), ref.astype(np.float32))
    plain = build_data(cfg(steps=5, test_limit=2)).test[0][0]
    assert b.test[0][0].sum() < plain.sum()


def test_merge_downsample_binary_and_window():
    counts = build_data(cfg(steps=8)).test[5][0]
    merged = build_data(cfg(steps=8, event_merge_polarity=True, event_downsample=2))
    assert merged.input_shape == (1, 17, 17)
    m = merged.test[5][0]
    assert m.shape == (8, 1, 17, 17)
    assert torch.equal(m.sum(dim=(1, 2, 3)), counts.sum(dim=(1, 2, 3)))   # no event lost
    # downsampling by 2 is summing 2 x 2 blocks
    assert torch.equal(m[:, 0], torch.nn.functional.avg_pool2d(counts.sum(1), 2) * 4)
    binary = build_data(cfg(steps=8, event_binary=True)).test[5][0]
    assert torch.equal(binary, (counts > 0).float())
    odd = build_data(cfg(steps=8, event_downsample=3))
    assert odd.input_shape == (2, 12, 12)

    win = build_data(cfg(steps=12, event_window_us=10_000.0))
    x = win.test[5][0]
    assert x.shape == (12, 2, 34, 34)
    path = files_of(win.test)[5]
    t = tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)["t"]
    for i in range(12):
        lo, hi = t[0] + i * 10_000, t[0] + (i + 1) * 10_000
        assert x[i].sum().item() == int(((t >= lo) & (t < hi)).sum())


def test_limits_val_split_and_class_coverage():
    b = build_data(cfg(limit=40, test_limit=20, val_fraction=0.1))
    assert len(b.train) == 40 and len(b.test) == 20 and len(b.val) == 70
    assert len(set(labels_of(b.train))) >= 8          # a seeded shuffle, not the first folders
    assert not set(b.train.indices) & set(b.val.indices)
    again = build_data(cfg(limit=40, test_limit=20, val_fraction=0.1))
    assert b.train.indices == again.train.indices      # deterministic


def test_disk_cache_keyed_by_parameters(tmp_path):
    c = cfg(steps=6, cache_dir=str(tmp_path), test_limit=3)
    b = build_data(c)
    first = [b.test[i][0] for i in range(3)]
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and all(f.startswith("nmnist-") for f in folders)
    test_dir = next(p for p in tmp_path.iterdir() if p.name.startswith("nmnist-test-"))
    assert len(list(test_dir.glob("*.hdf5"))) == 3 and (test_dir / "params.json").is_file()
    again = build_data(c)
    assert all(torch.equal(a, again.test[i][0]) for i, a in enumerate(first))
    assert sorted(p.name for p in tmp_path.iterdir()) == folders       # same key, reused
    build_data(cfg(steps=7, cache_dir=str(tmp_path)))
    assert len(list(tmp_path.iterdir())) == 4                           # new binning, new folders
    # binarization is applied after the cache: same folders, binary values
    binary = build_data({**c, "event_binary": True})
    assert len(list(tmp_path.iterdir())) == 4
    assert torch.equal(binary.test[0][0], (first[0] > 0).float())


def test_tonic_generic_name_reads_the_same():
    named = build_data(cfg(steps=5, test_limit=4))
    generic = build_data(cfg(dataset="tonic:NMNIST", steps=5, test_limit=4))
    assert generic.num_classes == 10 and generic.input_shape == (2, 34, 34)
    assert len(generic.train) == len(named.train) and len(generic.test) == 4
    for i in range(4):
        a, b = named.test[i], generic.test[i]
        assert a[1] == b[1] and torch.equal(a[0], b[0])


def test_root_may_be_the_nmnist_folder_itself():
    b = build_data(cfg(data_root=str(ROOT / "NMNIST")))
    assert len(b.test) == 72


def test_end_to_end_training(tmp_path):
    from spikelfp.train.loop import train

    res = train({"dataset": "nmnist", "data_root": str(ROOT), "limit": 40, "test_limit": 20,
                 "val_fraction": 0.0, "epochs": 1, "steps": 10, "model": "convnet", "channels": [4],
                 "hidden": [], "batch_size": 20, "out": str(tmp_path), "progress": "off",
                 "device": "cpu", "log_updates_every": 0}, echo=lambda s: None)
    assert not res["interrupted"]
    row = res["metrics"]
    assert row["epoch"] == 1 and 0.0 <= row["test_acc"] <= 1.0
    assert (Path(res["run_dir"]) / "last.pt").is_file()


def test_missing_split_folder_names_it(tmp_path):
    (tmp_path / "NMNIST" / "Train" / "3").mkdir(parents=True)
    src = ROOT / "NMNIST" / "Train" / "3"
    one = sorted(src.iterdir())[0]
    (tmp_path / "NMNIST" / "Train" / "3" / one.name).write_bytes(one.read_bytes())
    with pytest.raises(DataError, match=r"NMNIST/Test not found.*Expected .*https://"):
        build_data(cfg(data_root=str(tmp_path)))


def test_event_module_api():
    assert set(ev.EVENT_DATASETS) == {"nmnist", "shd", "dvsgesture", "pokerdvs"}
    o = ev.EventOptions.from_config({"steps": 7, "event_downsample": 2, "cache_dir": None})
    assert o.steps == 7 and o.downsample == 2 and o.window_us is None and not o.binary
