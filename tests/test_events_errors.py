"""Bad input to the event data sets: every failure is a DataError that names the file or folder
(and, for missing data, the expected layout and where to get it); nothing is downloaded unless
asked."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import pytest

tonic = pytest.importorskip("tonic", reason="event data sets need tonic")
h5py = pytest.importorskip("h5py", reason="SHD needs h5py")

from spikelfp.data import DataError, build_data  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_events_formats import write_dvsgesture, write_pokerdvs, write_shd  # noqa: E402

SAMPLE_BIN = Path(__file__).resolve().parents[2] / "shared/data/event-format-samples/sample_nmnist.bin"
NAMES = ("nmnist", "shd", "dvsgesture", "pokerdvs")


def nmnist_bytes() -> bytes:
    if SAMPLE_BIN.is_file():
        return SAMPLE_BIN.read_bytes()
    # a few valid 40-bit N-MNIST events: x, y, p|t(22..16), t(15..8), t(7..0)
    return bytes([3, 4, 0x80, 0, 10, 5, 6, 0, 1, 0, 7, 8, 0x80, 2, 0])


def write_nmnist(root: Path, files):
    for rel in files:
        p = root / "NMNIST" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(nmnist_bytes())


@pytest.mark.parametrize("name", NAMES)
def test_root_that_does_not_exist(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        build_data({"dataset": name, "data_root": str(missing)})
    msg = str(e.value)
    assert str(missing) in msg and "does not exist" in msg and "Expected" in msg and "https://" in msg


@pytest.mark.parametrize("name", NAMES)
def test_no_root_given(name):
    with pytest.raises(DataError, match="no data root given.*--data-root"):
        build_data({"dataset": name, "data_root": None})


@pytest.mark.parametrize("name,folder", [("nmnist", "NMNIST"), ("shd", "SHD"),
                                         ("dvsgesture", "DVSGesture"), ("pokerdvs", "POKERDVS")])
def test_root_without_the_data_set_folder(tmp_path, name, folder):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(DataError) as e:
        build_data({"dataset": name, "data_root": str(tmp_path)})
    msg = str(e.value)
    assert str(tmp_path / folder) in msg and "something_else" in msg and "Expected" in msg


def test_nothing_is_downloaded_unless_asked(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("download attempted")

    monkeypatch.setattr(tonic.dataset.Dataset, "download", boom)
    monkeypatch.setattr("urllib.request.urlopen", boom)
    for name in NAMES:
        with pytest.raises(DataError):
            build_data({"dataset": name, "data_root": str(tmp_path)})


def test_download_opt_in_goes_through_tonic_and_failures_are_clear(tmp_path, monkeypatch):
    import urllib.error

    calls = []

    def fake_download(self):
        calls.append((type(self).__name__, self.location_on_system))
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(tonic.dataset.Dataset, "download", fake_download)
    with pytest.raises(DataError, match=r"download through tonic.datasets.SHD .*failed.*no network"):
        build_data({"dataset": "shd", "data_root": str(tmp_path / "new"), "download": True})
    assert calls == [("SHD", str(tmp_path / "new" / "SHD"))]


# ----------------------------------------------------------------------------- wrong layouts

def test_nmnist_label_folder_not_a_digit(tmp_path):
    write_nmnist(tmp_path, ["Train/zero/00001.bin", "Test/0/00002.bin"])
    with pytest.raises(DataError, match=r"unexpected folder .*NMNIST/Train/zero.*named 0-9"):
        build_data({"dataset": "nmnist", "data_root": str(tmp_path)})


def test_nmnist_files_outside_label_folders(tmp_path):
    write_nmnist(tmp_path, ["Train/00001.bin", "Test/0/00002.bin"])
    with pytest.raises(DataError, match=r"NMNIST/Train/00001.bin lies directly in"):
        build_data({"dataset": "nmnist", "data_root": str(tmp_path)})


def test_nmnist_empty_split_folder(tmp_path):
    write_nmnist(tmp_path, ["Test/0/00002.bin"])
    (tmp_path / "NMNIST" / "Train" / "3").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no samples found under .*NMNIST/Train"):
        build_data({"dataset": "nmnist", "data_root": str(tmp_path)})


def test_dvsgesture_wrong_layouts(tmp_path):
    rng = np.random.default_rng(0)
    write_dvsgesture(tmp_path, rng, "ibmGestureTest", {"user24_led": [1]})
    flat = tmp_path / "DVSGesture" / "ibmGestureTrain"
    flat.mkdir(parents=True)
    np.save(flat / "0.npy", np.zeros((3, 4), np.int64))       # no user folder
    with pytest.raises(DataError, match=r"no samples found under .*ibmGestureTrain.*0\.npy"):
        build_data({"dataset": "dvsgesture", "data_root": str(tmp_path)})
    (flat / "alice").mkdir()
    np.save(flat / "alice" / "0.npy", np.zeros((3, 4), np.int64))
    with pytest.raises(DataError, match=r"unexpected folder .*ibmGestureTrain/alice"):
        build_data({"dataset": "dvsgesture", "data_root": str(tmp_path)})
    (flat / "alice" / "0.npy").rename(flat / "alice" / "clap.npy")
    (flat / "alice").rename(flat / "user01_led")
    with pytest.raises(DataError, match=r"unexpected file .*user01_led/clap.npy"):
        build_data({"dataset": "dvsgesture", "data_root": str(tmp_path)})
    (flat / "user01_led" / "clap.npy").unlink()
    np.save(flat / "user01_led" / "2.npy", np.zeros((3, 5), np.int64))
    with pytest.raises(DataError, match=r"user01_led/2.npy: expected an N x 4 event array"):
        build_data({"dataset": "dvsgesture", "data_root": str(tmp_path)})


def test_pokerdvs_folder_without_class_code(tmp_path):
    rng = np.random.default_rng(1)
    write_pokerdvs(tmp_path, rng, "pips_test", {"he": 1})
    write_pokerdvs(tmp_path, rng, "pips_train", {"xx": 1})
    with pytest.raises(DataError, match=r"pips_train/xx/xx_0.npy: its folder name must end in a class code"):
        build_data({"dataset": "pokerdvs", "data_root": str(tmp_path)})


def test_shd_zip_not_unpacked(tmp_path):
    (tmp_path / "SHD").mkdir()
    (tmp_path / "SHD" / "shd_train.h5.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"shd_train.h5 not found \(shd_train.h5.zip is there: unpack it\)"):
        build_data({"dataset": "shd", "data_root": str(tmp_path)})


def test_shd_missing_datasets(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "SHD").mkdir(exist_ok=True)
        with h5py.File(tmp_path / "SHD" / f"shd_{split}.h5", "w") as f:
            f.create_dataset("labels", data=np.zeros(2, np.uint8))
    with pytest.raises(DataError, match=r"shd_train.h5 lacks \['spikes/times', 'spikes/units'\]"):
        build_data({"dataset": "shd", "data_root": str(tmp_path)})


# ----------------------------------------------------------------------------- truncated files

def test_truncated_nmnist_bin(tmp_path):
    write_nmnist(tmp_path, ["Train/1/00001.bin", "Train/1/00002.bin", "Test/1/00003.bin"])
    bad = tmp_path / "NMNIST" / "Train" / "1" / "00002.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"NMNIST/Train/1/00002.bin is truncated"):
        build_data({"dataset": "nmnist", "data_root": str(tmp_path)})


def test_truncated_npy(tmp_path):
    rng = np.random.default_rng(2)
    written = write_dvsgesture(tmp_path, rng)
    write_dvsgesture(tmp_path, rng, "ibmGestureTest", {"user24_led": [1]})
    path = written[1][0]
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=rf"{path.name} is truncated"):
        build_data({"dataset": "dvsgesture", "data_root": str(tmp_path)})
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=rf"{path.parent.name}/{path.name}: not a readable .npy"):
        build_data({"dataset": "dvsgesture", "data_root": str(tmp_path)})


def test_truncated_pokerdvs_npy(tmp_path):
    rng = np.random.default_rng(3)
    write_pokerdvs(tmp_path, rng)
    write_pokerdvs(tmp_path, rng, "pips_test", {"he": 1})
    path = tmp_path / "POKERDVS" / "pips_train" / "sp" / "sp_1.npy"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"pips_train/sp/sp_1.npy is truncated"):
        build_data({"dataset": "pokerdvs", "data_root": str(tmp_path)})


def test_truncated_shd_h5(tmp_path):
    rng = np.random.default_rng(4)
    samples = [(np.sort(rng.random(30)), rng.integers(0, 700, 30)) for _ in range(4)]
    write_shd(tmp_path / "SHD" / "shd_train.h5", samples, [0, 1, 2, 3])
    write_shd(tmp_path / "SHD" / "shd_test.h5", samples, [0, 1, 2, 3])
    path = tmp_path / "SHD" / "shd_train.h5"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cannot read .*SHD/shd_train.h5 \(truncated or not an HDF5"):
        build_data({"dataset": "shd", "data_root": str(tmp_path)})


# ----------------------------------------------------------------------------- labels / values

def test_nmnist_label_out_of_range(tmp_path):
    write_nmnist(tmp_path, ["Train/12/00001.bin", "Test/1/00003.bin"])
    with pytest.raises(DataError, match=r"NMNIST/Train/12: label 12 outside 0\.\.9"):
        build_data({"dataset": "nmnist", "data_root": str(tmp_path)})


def test_dvsgesture_label_out_of_range(tmp_path):
    rng = np.random.default_rng(5)
    write_dvsgesture(tmp_path, rng, files={"user01_led": [0, 11]})
    write_dvsgesture(tmp_path, rng, "ibmGestureTest", {"user24_led": [1]})
    with pytest.raises(DataError, match=r"user01_led/11.npy: label 11 outside 0\.\.10"):
        build_data({"dataset": "dvsgesture", "data_root": str(tmp_path)})


def test_shd_label_out_of_range(tmp_path):
    rng = np.random.default_rng(6)
    samples = [(np.sort(rng.random(30)), rng.integers(0, 700, 30)) for _ in range(3)]
    write_shd(tmp_path / "SHD" / "shd_train.h5", samples, [0, 1, 2])
    write_shd(tmp_path / "SHD" / "shd_test.h5", samples, [3, 20, 4])
    with pytest.raises(DataError, match=r"SHD/shd_test.h5 sample 1: label 20 outside 0\.\.19"):
        build_data({"dataset": "shd", "data_root": str(tmp_path)})


def test_events_outside_the_sensor_name_the_file(tmp_path):
    rng = np.random.default_rng(7)
    write_dvsgesture(tmp_path, rng, files={"user01_led": [0]})
    write_dvsgesture(tmp_path, rng, "ibmGestureTest", {"user24_led": [1]})
    bad = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_led" / "0.npy"
    arr = np.load(bad)
    arr[5, 0] = 300
    np.save(bad, arr)
    b = build_data({"dataset": "dvsgesture", "data_root": str(tmp_path), "val_fraction": 0.0})
    with pytest.raises(DataError, match=r"user01_led/0.npy: x coordinates .*outside the sensor width 128"):
        b.train[0]


def test_unknown_tonic_class():
    with pytest.raises(DataError, match=r"tonic has no dataset class 'NoSuchSet'"):
        from spikelfp.data.events import build_tonic_data

        build_tonic_data({"dataset": "tonic:NoSuchSet", "data_root": "/tmp"})


def test_corrupt_event_content_mid_run_names_the_file_and_keeps_the_run(tmp_path, capsys):
    """Events outside the sensor are only visible when the file is read (during the epoch): the
    run stops with one line naming the file, exit code 2, and keeps its last.pt to resume from."""
    from spikelfp.cli import main

    rng = np.random.default_rng(8)
    write_dvsgesture(tmp_path, rng, files={"user01_led": [0, 1, 2, 3]})
    write_dvsgesture(tmp_path, rng, "ibmGestureTest", {"user24_led": [1, 2]})
    bad = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_led" / "2.npy"
    arr = np.load(bad)
    arr[3, 1] = 999
    np.save(bad, arr)
    rc = main(["train", "--dataset", "dvsgesture", "--data-root", str(tmp_path), "--model", "mlp",
               "--hidden", "12", "--steps", "3", "--epochs", "1", "--batch-size", "2", "--val-fraction", "0",
               "--out", str(tmp_path / "runs"), "--run-name", "r", "--progress", "off"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "user01_led/2.npy" in err and "y coordinates" in err
    ck = torch.load(tmp_path / "runs" / "r" / "last.pt", weights_only=False)
    assert ck["epoch"] == 0  # resumable from the start of the epoch
