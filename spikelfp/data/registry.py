"""Data sets by name, split into train / val / test, and their DataLoaders.

A builder is ``builder(cfg: dict) -> DataBundle``. Static image sets yield images in [0, 1]
``[C, H, W]`` that an encoder turns into a sequence; sequence sets (events) yield ``[T, ...]``
already (``DataBundle.sequence = True``). Other modules add sets with :func:`register_dataset`.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset, TensorDataset

from .static import DataError, load_digits_arrays, load_idx_dataset

Tensor = torch.Tensor


class DataBundle(NamedTuple):
    """Splits and shape facts of one data set."""

    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    input_shape: Tuple[int, ...]   # per sample, without T (e.g. (1, 28, 28) or (2, 34, 34))
    num_classes: int
    sequence: bool = False         # items are already [T, ...] sequences (no encoder)


_REGISTRY: Dict[str, Callable[[dict], DataBundle]] = {}
_PREFIXES: Dict[str, Callable[[dict], DataBundle]] = {}


def register_dataset(name: str):
    """Decorator adding a builder ``f(cfg) -> DataBundle`` under ``name``."""

    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def register_dataset_prefix(prefix: str):
    """Decorator adding a builder for every name that starts with ``prefix`` (e.g. ``"tonic:"``
    for ``tonic:ClassName``); exact names win over prefixes."""

    def deco(fn):
        _PREFIXES[prefix] = fn
        return fn

    return deco


def dataset_names():
    return sorted(_REGISTRY)


def build_data(cfg: dict) -> DataBundle:
    """Build the data set named ``cfg["dataset"]`` with its splits (event sets register
    themselves when :mod:`spikelfp.data` is imported)."""
    name = cfg["dataset"]
    if name in _REGISTRY:
        return _REGISTRY[name](cfg)
    for prefix, builder in _PREFIXES.items():
        if name.startswith(prefix):
            return builder(cfg)
    hint = "".join(f", or {p}<Name>" for p in _PREFIXES)
    raise DataError(f"unknown dataset {name!r}; use one of {sorted(_REGISTRY)}{hint}")


def split_train_val(x: Tensor, y: Tensor, val_fraction: float, limit: Optional[int],
                    split_seed: int = 0) -> Tuple[Dataset, Optional[Dataset]]:
    """Shuffle once with a fixed seed, hold out ``val_fraction`` for validation, then keep at most
    ``limit`` training samples."""
    g = torch.Generator().manual_seed(split_seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = int(round(len(y) * val_fraction))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if limit is not None:
        train_idx = train_idx[:limit]
    train = TensorDataset(x[train_idx], y[train_idx])
    val = TensorDataset(x[val_idx], y[val_idx]) if n_val > 0 else None
    return train, val


def stratified_test_split(y: Tensor, test_fraction: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    test_idx, train_idx = [], []
    for c in torch.unique(y):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values


@register_dataset("digits")
def _digits(cfg: dict) -> DataBundle:
    x, y = load_digits_arrays()
    tr, te = stratified_test_split(y, 0.25, seed=0)
    train, val = split_train_val(x[tr], y[tr], cfg.get("val_fraction", 0.0), cfg.get("limit"))
    te = te[: cfg["test_limit"]] if cfg.get("test_limit") is not None else te
    return DataBundle(train, val, TensorDataset(x[te], y[te]), (1, 8, 8), 10)


def _idx_builder(name: str):
    def build(cfg: dict) -> DataBundle:
        dl = bool(cfg.get("download", False))
        xtr, ytr = load_idx_dataset(name, cfg.get("data_root"), "train", download=dl)
        xte, yte = load_idx_dataset(name, cfg.get("data_root"), "test", download=dl)
        train, val = split_train_val(xtr, ytr, cfg.get("val_fraction", 0.0), cfg.get("limit"))
        test = TensorDataset(xte, yte)
        if cfg.get("test_limit") is not None:
            test = Subset(test, range(min(cfg["test_limit"], len(test))))
        return DataBundle(train, val, test, tuple(xtr.shape[1:]), 10)

    return build


register_dataset("mnist")(_idx_builder("mnist"))
register_dataset("fashion_mnist")(_idx_builder("fashion_mnist"))


class IndexedDataset(Dataset):
    """Items of ``ds`` with their index appended: ``(*item, index)``."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return (*self.ds[i], i)


def with_index(ds: Dataset) -> Dataset:
    """``ds`` whose items end with the sample's index in ``ds`` (a per-sample store's row)."""
    if isinstance(ds, TensorDataset):
        n = len(ds)
        return TensorDataset(*ds.tensors, torch.arange(n, device=ds.tensors[0].device))
    return IndexedDataset(ds)


class ShardedBatchSampler:
    """The batches of ``BatchSampler(sampler, batch_size)``, each passed through ``part`` (e.g.
    this process's chunk of every global batch in data-parallel training)."""

    def __init__(self, sampler, batch_size: int, part: Callable[[List[int]], List[int]]):
        self.batches = BatchSampler(sampler, batch_size, drop_last=False)
        self.part = part

    def __iter__(self):
        for b in self.batches:
            yield self.part(b)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, generator: Optional[torch.Generator] = None,
                num_workers: int = 0, collate_fn=None, index: bool = False,
                part: Optional[Callable[[List[int]], List[int]]] = None) -> DataLoader:
    """A DataLoader over ``ds``. Tensor data sets are indexed a whole batch at a time (no per-item
    collation); others use the usual per-item collation (``collate_fn`` if given). With
    ``index=True`` every batch ends with the samples' indices in ``ds`` (``[B]``, int64).
    ``part``: keeps only part of each batch (a data-parallel shard); the batches themselves,
    and so their order under a seeded ``generator``, are the same for every process."""
    if index:
        ds = with_index(ds)
    sampler = RandomSampler(ds, generator=generator) if shuffle else SequentialSampler(ds)
    if part is not None:
        batches = ShardedBatchSampler(sampler, batch_size, part)
    elif isinstance(ds, TensorDataset):
        batches = BatchSampler(sampler, batch_size, drop_last=False)
    else:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          num_workers=num_workers, collate_fn=collate_fn)
    if isinstance(ds, TensorDataset):
        return DataLoader(ds, sampler=batches, batch_size=None, num_workers=num_workers)
    return DataLoader(ds, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_fn)
