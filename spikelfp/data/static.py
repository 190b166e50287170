"""Static image data sets read from local files (never downloaded unless asked).

All return ``(images, labels)`` as tensors: images float32 in [0, 1] shaped ``[N, C, H, W]``,
labels int64 ``[N]``.

- digits: the UCI 8x8 optical digits (scikit-learn's ``load_digits``; ships with scikit-learn,
  so it needs no files: the embedded default). 1,797 samples, no official split.
- mnist / fashion_mnist: torchvision's layout ``<root>/MNIST/raw/*-ubyte.gz`` (or
  ``<root>/FashionMNIST/raw``); parsed with numpy (IDX format), torchvision is not needed.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

Tensor = torch.Tensor

_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


class DataError(ValueError):
    """A data set could not be found or read; the message says what is expected."""


def load_digits_arrays() -> Tuple[Tensor, Tensor]:
    """The 8x8 digits as ``[1797, 1, 8, 8]`` in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return x, torch.tensor(d.target, dtype=torch.int64)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) < 8:
        raise DataError(f"{path} is truncated ({len(data)} bytes)")
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path} is not an IDX uint8 file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(data) - offset < n:
        raise DataError(f"{path} is truncated: expected {n} values, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, count=n, offset=offset).reshape(dims)


def _find(raw: Path, stem: str) -> Path:
    for cand in (raw / f"{stem}.gz", raw / stem):
        if cand.exists():
            return cand
    raise FileNotFoundError(stem)


def _download(name: str, raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for split in _IDX.values():
        for stem in split:
            target = raw / f"{stem}.gz"
            if target.exists():
                continue
            url = _MIRRORS[name] + f"{stem}.gz"
            fd, tmp = tempfile.mkstemp(dir=raw, suffix=".part")
            os.close(fd)
            try:
                with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                    shutil.copyfileobj(r, f)
                os.replace(tmp, target)
            except OSError as e:
                raise DataError(f"download of {url} failed ({e}); place the files in {raw} by hand") from None
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)


def load_idx_dataset(name: str, root, split: str, download: bool = False) -> Tuple[Tensor, Tensor]:
    """MNIST / Fashion-MNIST ``split`` ("train" | "test") from ``<root>/<MNIST|FashionMNIST>/raw``."""
    if name not in _FOLDER:
        raise DataError(f"unknown IDX data set {name!r}; use one of {sorted(_FOLDER)}")
    if root is None:
        raise DataError(f"{name}: no data root given; pass --data-root DIR holding "
                        f"{_FOLDER[name]}/raw/*-ubyte.gz (torchvision's layout)")
    raw = Path(root).expanduser() / _FOLDER[name] / "raw"
    if download:
        _download(name, raw)
    img_stem, lab_stem = _IDX[split]
    try:
        img_path, lab_path = _find(raw, img_stem), _find(raw, lab_stem)
    except FileNotFoundError as e:
        raise DataError(
            f"{name}: {raw}/{e}.gz not found. Expected torchvision's layout "
            f"<root>/{_FOLDER[name]}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz; "
            f"get it with torchvision.datasets.{_FOLDER[name]}(root, download=True) or pass --download"
        ) from None
    images, labels = _read_idx(img_path), _read_idx(lab_path)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{name}: {img_path.name} has {images.shape[0]} images but "
                        f"{lab_path.name} has {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        bad = int(np.flatnonzero((labels < 0) | (labels > 9))[0])
        raise DataError(f"{name}: {lab_path} holds label {int(labels[bad])} at index {bad}; "
                        f"the classes are 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))
