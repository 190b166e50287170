"""SHD, DVS Gesture and POKER-DVS: tiny files written in each set's real on-disk format (tonic's
layout) into tmp_path, loaded through ``build_data`` as a user would, and compared with tonic's
own reader + ``tonic.transforms.ToFrame``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

tonic = pytest.importorskip("tonic", reason="event data sets need tonic")
h5py = pytest.importorskip("h5py", reason="SHD needs h5py")

from spikelfp.data import DataError, build_data, make_loader  # noqa: E402
from spikelfp.data.events import pad_collate  # noqa: E402


def lenient(cls):
    """tonic's class with its completeness check off (same class name = same sub-folder)."""
    return type(cls.__name__, (cls,), {"_check_exists": lambda self: True})


def labels_of(ds):
    if isinstance(ds, torch.utils.data.Subset):
        return [labels_of(ds.dataset)[i] for i in ds.indices]
    return list(ds.frames.targets)


# ----------------------------------------------------------------------------- writers

def write_shd(path: Path, samples, labels, vlen: bool = True):
    """An SHD file as published: ragged spikes/times (s, float) and spikes/units (uint16) rows,
    labels (uint8), extra/keys and extra/speaker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if vlen:
            t = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float32))
            u = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
            for i, (times, units) in enumerate(samples):
                t[i] = np.asarray(times, np.float32)
                u[i] = np.asarray(units, np.uint16)
        else:
            f.create_dataset("spikes/times", data=np.array([s[0] for s in samples], np.float16))
            f.create_dataset("spikes/units", data=np.array([s[1] for s in samples], np.uint16))
        f.create_dataset("labels", data=np.asarray(labels, np.uint8))
        f.create_dataset("extra/keys", data=[f"k{i}".encode() for i in range(20)])
        f.create_dataset("extra/speaker", data=np.zeros(len(samples), np.uint16))


def shd_samples(n, rng):
    out = []
    for _ in range(n):
        k = int(rng.integers(20, 60))
        out.append((np.sort(rng.uniform(0, 0.8, k)), rng.integers(0, 700, k)))
    return out


def random_xypt(rng, n, size, t_ms=False):
    x = rng.integers(0, size[0], n)
    y = rng.integers(0, size[1], n)
    p = rng.integers(0, 2, n)
    t = np.sort(rng.integers(0, 1500 if t_ms else 200_000, n))
    return x, y, p, t


def write_dvsgesture(root: Path, rng, split="ibmGestureTrain", files=None):
    files = files or {"user01_fluorescent": [0, 3, 10], "user02_led": [1, 3]}
    written = []
    for folder, labels in files.items():
        d = root / "DVSGesture" / split / folder
        d.mkdir(parents=True, exist_ok=True)
        for lab in labels:
            x, y, p, t = random_xypt(rng, int(rng.integers(200, 400)), (128, 128), t_ms=True)
            arr = np.stack([x, y, p, t], axis=1)
            arr = arr.astype(np.float64) if lab % 2 else arr.astype(np.int64)  # both kinds load
            np.save(d / f"{lab}.npy", arr)
            written.append((d / f"{lab}.npy", lab))
    return written


def write_pokerdvs(root: Path, rng, split="pips_train", files=None):
    files = files or {"cl": 2, "he": 1, "di": 1, "sp": 2}
    for code, n in files.items():
        d = root / "POKERDVS" / split / code
        d.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            x, y, p, t = random_xypt(rng, int(rng.integers(100, 300)), (35, 35))
            np.save(d / f"{code}_{k}.npy", np.stack([t, x, y, p], axis=1).astype(np.int64))


# ----------------------------------------------------------------------------- SHD

@pytest.fixture()
def shd_root(tmp_path):
    rng = np.random.default_rng(0)
    # sample 0 is checked by hand: T = 4 bins of 250 ms from t0 = 0
    hand = (np.array([0.0, 0.25, 0.5, 0.75, 1.0]), np.array([3, 3, 5, 7, 9]))
    write_shd(tmp_path / "SHD" / "shd_train.h5", [hand] + shd_samples(5, rng), [4, 0, 1, 19, 2, 2])
    write_shd(tmp_path / "SHD" / "shd_test.h5", shd_samples(3, rng), [7, 8, 9])
    return tmp_path


def test_shd_loads_with_hand_checked_frames(shd_root):
    b = build_data({"dataset": "shd", "data_root": str(shd_root), "steps": 4, "val_fraction": 0.0})
    assert b.input_shape == (700,) and b.num_classes == 20 and b.sequence
    assert len(b.train) == 6 and len(b.test) == 3
    assert labels_of(b.train) == [4, 0, 1, 19, 2, 2] and labels_of(b.test) == [7, 8, 9]
    x, y = b.train[0]
    want = torch.zeros(4, 700)
    for step, unit in [(0, 3), (1, 3), (2, 5), (3, 7)]:   # the spike at t = 1 s ends the last bin
        want[step, unit] = 1
    assert y == 4 and torch.equal(x, want)
    xb, yb = next(iter(make_loader(b.test, 3, False)))
    assert xb.shape == (3, 4, 700)


def test_shd_matches_tonic_reader(shd_root):
    b = build_data({"dataset": "shd", "data_root": str(shd_root), "steps": 9, "val_fraction": 0.0})
    tds = lenient(tonic.datasets.SHD)(save_to=str(shd_root), train=False)
    to_frame = tonic.transforms.ToFrame(sensor_size=tonic.datasets.SHD.sensor_size, n_time_bins=9)
    for i in range(3):
        events, label = tds[i]
        x, y = b.test[i]
        assert y == int(label)
        assert np.array_equal(x.numpy(), to_frame(events).reshape(9, 700).astype(np.float32))


def test_shd_fixed_width_rows_and_downsample(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(np.sort(rng.random(50)), rng.integers(0, 700, 50)) for _ in range(3)]
    write_shd(tmp_path / "SHD" / "shd_train.h5", rows, [0, 1, 2], vlen=False)   # tonic's test format
    write_shd(tmp_path / "SHD" / "shd_test.h5", rows[:1], [3], vlen=False)
    b = build_data({"dataset": "shd", "data_root": str(tmp_path), "steps": 5, "val_fraction": 0.0,
                    "event_downsample": 4, "event_binary": True})
    assert b.input_shape == (175,)
    x, _ = b.train[1]
    assert x.shape == (5, 175) and set(x.unique().tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------- DVS Gesture

def test_dvsgesture_layout_labels_and_frames(tmp_path):
    rng = np.random.default_rng(2)
    write_dvsgesture(tmp_path, rng)
    write_dvsgesture(tmp_path, rng, "ibmGestureTest", {"user24_natural": [5, 7]})
    b = build_data({"dataset": "dvsgesture", "data_root": str(tmp_path), "steps": 6, "val_fraction": 0.0})
    assert b.input_shape == (2, 128, 128) and b.num_classes == 11
    assert sorted(labels_of(b.train)) == [0, 1, 3, 3, 10] and sorted(labels_of(b.test)) == [5, 7]
    tds = lenient(tonic.datasets.DVSGesture)(save_to=str(tmp_path), train=True)
    to_frame = tonic.transforms.ToFrame(sensor_size=tonic.datasets.DVSGesture.sensor_size, n_time_bins=6)
    ours = {str(p): i for i, p in enumerate(b.train.dataset.frames.source.files)}
    for j, path in enumerate(tds.data):
        events, label = tds[j]
        x, y = b.train.dataset[ours[str(Path(path))]]
        assert y == label
        assert np.array_equal(x.numpy(), to_frame(events).astype(np.float32))


def test_dvsgesture_downsample_for_conv_pooling(tmp_path):
    rng = np.random.default_rng(3)
    write_dvsgesture(tmp_path, rng)
    write_dvsgesture(tmp_path, rng, "ibmGestureTest", {"user24_led": [2]})
    full = build_data({"dataset": "dvsgesture", "data_root": str(tmp_path), "steps": 5, "val_fraction": 0.0})
    small = build_data({"dataset": "dvsgesture", "data_root": str(tmp_path), "steps": 5,
                        "val_fraction": 0.0, "event_downsample": 4, "event_merge_polarity": True})
    assert small.input_shape == (1, 32, 32)
    a, b = full.test[0][0], small.test[0][0]
    assert torch.equal(b[:, 0], torch.nn.functional.avg_pool2d(a.sum(1), 4) * 16)
    from spikelfp.nn.zoo import build_model

    net = build_model({"model": "convnet", "input_shape": list(full.input_shape), "num_classes": 11,
                       "channels": [4], "hidden": [], "pool_input": 4})
    trace = net.run(full.test[0][0].unsqueeze(1))     # [T, B=1, 2, 128, 128]
    assert trace.output.shape[-1] == 11


# ----------------------------------------------------------------------------- POKER-DVS

def test_pokerdvs_matches_tonic_reader(tmp_path):
    rng = np.random.default_rng(4)
    write_pokerdvs(tmp_path, rng)
    write_pokerdvs(tmp_path, rng, "pips_test", {"he": 1, "sp": 1})
    b = build_data({"dataset": "pokerdvs", "data_root": str(tmp_path), "steps": 7, "val_fraction": 0.0})
    assert b.input_shape == (2, 35, 35) and b.num_classes == 4
    assert labels_of(b.train) == [0, 0, 2, 1, 3, 3]    # cl cl di he sp sp (sorted folders)
    tds = lenient(tonic.datasets.POKERDVS)(save_to=str(tmp_path), train=True)
    assert sorted(tds.targets) == sorted(labels_of(b.train))
    to_frame = tonic.transforms.ToFrame(sensor_size=tonic.datasets.POKERDVS.sensor_size, n_time_bins=7)
    ref = sorted((int(lab), to_frame(tds[j][0]).astype(np.float32).tobytes()) for j, lab in enumerate(tds.targets))
    got = sorted((y, x.numpy().tobytes()) for x, y in (b.train.dataset[i] for i in range(6)))
    assert got == ref


# ----------------------------------------------------------------------------- generic + collation

def test_tonic_generic_shd_equals_named(shd_root):
    named = build_data({"dataset": "shd", "data_root": str(shd_root), "steps": 5, "val_fraction": 0.0})
    generic = build_data({"dataset": "tonic:SHD", "data_root": str(shd_root), "steps": 5, "val_fraction": 0.0})
    assert generic.input_shape == (700,) and generic.num_classes == 20
    for i in range(3):
        assert torch.equal(named.test[i][0], generic.test[i][0]) and named.test[i][1] == generic.test[i][1]


def test_window_mode_variable_length_and_pad_collate(tmp_path):
    from spikelfp.data.events import EventFrames, EventOptions, _named_source, _SPECS

    rng = np.random.default_rng(5)
    write_pokerdvs(tmp_path, rng, files={"cl": 1, "he": 1})
    src = _named_source(_SPECS["pokerdvs"], tmp_path, "train", False)
    ds = EventFrames(src, EventOptions(steps=4, window_us=30_000.0), fixed_length=False)
    items = [ds[i] for i in range(len(ds))]
    lengths = [len(x) for x, _ in items]
    assert all(n >= 1 for n in lengths)
    x, y, n = pad_collate(items)
    assert x.shape[:2] == (2, max(lengths)) and n.tolist() == lengths and y.tolist() == [0, 1]
    for i, (frames, _) in enumerate(items):
        assert torch.equal(x[i, : len(frames)], torch.as_tensor(frames))
        assert x[i, len(frames):].abs().sum() == 0
    # through build_data the window mode always gives `steps` frames (padded or cut)
    write_pokerdvs(tmp_path, rng, "pips_test", {"sp": 1})
    fixed = build_data({"dataset": "pokerdvs", "data_root": str(tmp_path), "steps": 4,
                        "event_window_us": 30_000.0, "val_fraction": 0.0})
    for i in range(2):
        frames = fixed.train[i][0]
        assert frames.shape == (4, 2, 35, 35)
        n = min(lengths[i], 4)
        assert torch.equal(frames[:n], x[i, :n].float())


def test_options_that_do_not_apply_are_refused(shd_root, tmp_path):
    with pytest.raises(DataError, match="event_denoise_us needs a 2-D"):
        build_data({"dataset": "shd", "data_root": str(shd_root), "event_denoise_us": 5000})
    rng = np.random.default_rng(6)
    write_pokerdvs(tmp_path, rng)
    write_pokerdvs(tmp_path, rng, "pips_test", {"he": 1})
    with pytest.raises(DataError, match="N-MNIST only"):
        build_data({"dataset": "pokerdvs", "data_root": str(tmp_path), "event_first_saccade": True})
    with pytest.raises(DataError, match="event_downsample"):
        build_data({"dataset": "pokerdvs", "data_root": str(tmp_path), "event_downsample": 0})
    b = build_data({"dataset": "pokerdvs", "data_root": str(tmp_path), "event_denoise_us": 5000.0,
                    "steps": 3, "val_fraction": 0.0})
    assert b.train[0][0].shape == (3, 2, 35, 35)


def test_shd_preset_trains_recurrent_cuba_on_shd_files(tmp_path):
    """configs/shd_mlp_lfp.yaml runs as shipped (only the budget shrunk) on SHD-format files and
    trains the recurrent CUBA hidden layer's V with LFP."""
    from spikelfp.cli import main
    from spikelfp.nn import CubaLIFLinear
    from spikelfp.train.checkpoint import load_model

    rng = np.random.default_rng(3)
    labels = [i % 20 for i in range(40)]

    def dense(n):  # ~4 spikes per channel: enough input for the hidden layer to fire
        return [(np.sort(rng.uniform(0, 0.8, 3000)), rng.integers(0, 700, 3000)) for _ in range(n)]

    write_shd(tmp_path / "SHD" / "shd_train.h5", dense(40), labels)
    write_shd(tmp_path / "SHD" / "shd_test.h5", dense(20), labels[:20])
    preset = Path(__file__).resolve().parents[1] / "configs" / "shd_mlp_lfp.yaml"
    rc = main(["train", "--config", str(preset), "--data-root", str(tmp_path), "--steps", "12",
               "--epochs", "1", "--batch-size", "8", "--hidden", "24", "--out", str(tmp_path / "runs"),
               "--run-name", "shd", "--progress", "off"])
    assert rc == 0
    run = tmp_path / "runs" / "shd"
    net, cfg = load_model(run / "last.pt")
    assert cfg["trainer"] == "lfp" and cfg["recurrent"] is True and cfg["neuron"] == "cuba"
    hidden, out = net[1], net[2]
    assert isinstance(hidden, CubaLIFLinear) and hidden.recurrent and not out.recurrent
    assert tuple(hidden.recurrent_weight.shape) == (24, 24) and hidden.weight.shape[1] == 700
    init = torch.load(run / "init.pt", weights_only=False)["model"]
    assert not torch.equal(init["1.recurrent_weight"], net.state_dict()["1.recurrent_weight"])
