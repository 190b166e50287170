"""Event data sets (N-MNIST, SHD, DVS Gesture, POKER-DVS, any tonic data set) binned to frames.

Every set is read from a local folder in **tonic's own layout** (``cfg["data_root"]`` is what
tonic calls ``save_to``: the folder that holds ``NMNIST/``, ``SHD/``, ``DVSGesture/``, ...).
Nothing is downloaded unless ``cfg["download"]`` is true; a missing or broken copy raises
:class:`~spikelfp.data.static.DataError` naming the file or folder and saying how to get it.
Partial copies (a subset of the files) load as they are.

==============  ==========================================================  ==========  =======
name            files under ``data_root``                                   sample      classes
==============  ==========================================================  ==========  =======
``nmnist``      ``NMNIST/{Train,Test}/<label 0-9>/<id>.bin``                [T,2,34,34]      10
``shd``         ``SHD/shd_{train,test}.h5`` (spikes/times, spikes/units,    [T,700]          20
                labels)
``dvsgesture``  ``DVSGesture/ibmGesture{Train,Test}/user<NN>_<light>/       [T,2,128,128]    11
                <label>.npy`` (tonic's preprocessed copy, N x 4: x,y,p,t ms)
``pokerdvs``    ``POKERDVS/pips_{train,test}/<..cl|he|di|sp>/<name>.npy``   [T,2,35,35]       4
                (N x 4: t,x,y,p)
``tonic:Name``  whatever ``tonic.datasets.Name`` reads from ``<root>/Name/``  from tonic  from tonic
==============  ==========================================================  ==========  =======

Per sample, events become frames by this pipeline (the options are config keys, read with
``cfg.get`` so that the trainer's current config works with the defaults):

1. ``event_first_saccade`` (N-MNIST only): keep events with t < 100 ms (tonic's rule).
2. ``event_denoise_us``: ``tonic.transforms.Denoise(filter_time=...)`` (2-D sensors only).
3. ``event_merge_polarity``: ``tonic.transforms.MergePolarities`` -> one channel.
4. ``event_downsample`` k: pixel (or SHD channel) coordinates ``x // k``, ``y // k`` (exact
   integer division; the sensor shrinks to ``ceil(W / k)``).
5. ``tonic.transforms.ToFrame``: ``n_time_bins = cfg["steps"]`` by default (so ``--steps 25``
   means 25 bins spanning each recording), or, with ``event_window_us`` w, windows of w
   microseconds from the first event; that gives exactly ``steps`` frames (later events are
   dropped, short recordings end in empty frames).
6. ``event_binary``: counts clipped to 1 (binary spikes) instead of event counts.

Items are ``(frames, label)`` with ``frames`` float32 ``[T, C, H, W]`` (``[T, C * W]`` for 1-D
sensors such as SHD's 700 channels) and ``label`` an int; the DataBundle has ``sequence=True``.
Binned frames (int16 counts, before step 6) are cached: in memory (tonic's
``MemoryCachedDataset``) or, with ``cache_dir``, on disk (tonic's ``DiskCachedDataset``) in a
sub-folder whose name hashes every binning parameter and the list of source files, so changed
options or files never reuse stale frames.

Splits: the data set's own train/test; ``val_fraction`` of the train split (a fixed seeded
shuffle) is held out for validation; ``limit`` / ``test_limit`` keep that many samples of a
fixed seeded shuffle (so a small limit still covers the classes).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import socket
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Subset


from .registry import DataBundle, register_dataset, register_dataset_prefix, stratified_test_split
from .static import DataError

Tensor = torch.Tensor

__all__ = [
    "EVENT_DATASETS", "EventFrames", "EventOptions", "EventSource", "build_event_data",
    "build_tonic_data", "cache_key", "load_event_split", "pad_collate",
]

CACHE_FORMAT = 1          # bump when the meaning of cached frames changes
_FIRST_SACCADE_US = 1e5   # tonic.datasets.NMNIST(first_saccade_only=True): t < 1e5


# ============================================================================ options

@dataclass(frozen=True)
class EventOptions:
    """How events become frames (see the module docstring for the pipeline)."""

    steps: int = 25                       # frames T per sample
    window_us: Optional[float] = None     # None: T bins spanning the recording; else w us each
    denoise_us: Optional[float] = None    # tonic Denoise filter_time, None = off
    first_saccade: bool = False           # N-MNIST: first saccade only
    merge_polarity: bool = False          # one channel instead of two
    downsample: int = 1                   # spatial (or channel) factor
    binary: bool = False                  # clip counts to 1
    cache_dir: Optional[str] = None       # None: cache in memory

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "EventOptions":
        """Read the options from a (flat) config; missing keys take the defaults above."""

        def opt_pos_float(key):
            v = cfg.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise DataError(f"config key {key!r}: {v!r} must be a number > 0 (or null)")
            return float(v)

        def flag(key):
            v = cfg.get(key, False)
            if v is None:
                return False
            if not isinstance(v, bool):
                raise DataError(f"config key {key!r}: {v!r} must be true or false")
            return v

        steps = cfg.get("steps", 25)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DataError(f"config key 'steps': {steps!r} must be an integer >= 1")
        ds = cfg.get("event_downsample", 1)
        ds = 1 if ds is None else ds
        if isinstance(ds, bool) or not isinstance(ds, int) or ds < 1:
            raise DataError(f"config key 'event_downsample': {ds!r} must be an integer >= 1")
        cache_dir = cfg.get("cache_dir")
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise DataError(f"config key 'cache_dir': {cache_dir!r} must be a folder path (or null)")
        return cls(steps=steps, window_us=opt_pos_float("event_window_us"),
                   denoise_us=opt_pos_float("event_denoise_us"),
                   first_saccade=flag("event_first_saccade"),
                   merge_polarity=flag("event_merge_polarity"), downsample=ds,
                   binary=flag("event_binary"),
                   cache_dir=None if cache_dir is None else str(cache_dir))

    def binning(self) -> Dict[str, Any]:
        """The parameters that change the cached (int16 count) frames."""
        d = asdict(self)
        d.pop("binary")
        d.pop("cache_dir")
        return d


# ============================================================================ helpers

def _tonic():
    try:
        import tonic  # noqa: F401
        import tonic.transforms  # noqa: F401
    except ImportError as e:
        raise DataError(f"event data sets need the 'tonic' package ({e}); install it with "
                        "pip install tonic") from None
    return tonic


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise DataError(f"this data set needs the 'h5py' package ({e}); pip install h5py") from None
    return h5py


def _xytp(has_y: bool) -> np.dtype:
    if has_y:
        return np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
    return np.dtype([("t", np.int64), ("x", np.int64), ("p", np.int64)])


def _make_events(has_y: bool, x, y, t, p) -> np.ndarray:
    ev = np.empty(len(t), dtype=_xytp(has_y))
    ev["x"], ev["t"], ev["p"] = x, t, p
    if has_y:
        ev["y"] = y
    return ev


def _finish_events(ev: np.ndarray, sensor: Tuple[int, int, int], has_y: bool, where: str) -> np.ndarray:
    """Check coordinates against the sensor, map polarities to 0/1 and sort by time."""
    w, h, pols = sensor
    if len(ev) == 0:
        return ev
    x = ev["x"]
    if x.min() < 0 or x.max() >= w:
        raise DataError(f"{where}: x coordinates {x.min()}..{x.max()} lie outside the sensor "
                        f"width {w} (is this the right data set / file format?)")
    if has_y:
        y = ev["y"]
        if y.min() < 0 or y.max() >= h:
            raise DataError(f"{where}: y coordinates {y.min()}..{y.max()} lie outside the sensor "
                            f"height {h} (is this the right data set / file format?)")
    p = ev["p"]
    if pols == 1:
        ev["p"] = 0
    elif p.min() < 0 or p.max() >= pols:
        vals = np.unique(p)
        if pols == 2 and set(vals.tolist()) <= {-1, 1}:   # -1/+1 polarities -> 0/1
            ev["p"] = (p > 0).astype(np.int64)
        else:
            raise DataError(f"{where}: polarity values {vals[:5].tolist()} are not in 0..{pols - 1}")
    t = ev["t"]
    if len(t) > 1 and np.any(t[1:] < t[:-1]):
        ev = ev[np.argsort(t, kind="stable")]
    return ev


def _npy_shape(path: Path) -> Tuple[int, ...]:
    """Shape of a .npy file from its header; DataError if it is truncated or not an array."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: holds Python objects, expected a numeric N x 4 event array")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        raise DataError(f"{path} is truncated: {size} bytes, its header announces {need}")
    return tuple(shape)


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataError(f"{path}: expected an N x 4 event array, found shape {arr.shape}")
    return arr


def _listing(folder: Path, n: int = 6) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "(unreadable)"
    if not names:
        return "nothing"
    more = f", ... ({len(names)} entries)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


# ============================================================================ sources

class EventSource:
    """One split of one data set: its samples' labels and a reader of their events.

    ``read(i)`` returns a structured array with int64 fields x, (y,) t (us), p, sorted by t,
    with coordinates checked against ``sensor_size`` = (W, H, P) (H = 1 for 1-D sensors).
    """

    name: str = ""
    sensor_size: Tuple[int, int, int] = (1, 1, 1)
    has_y: bool = True
    num_classes: int = 0
    labels: List[int]

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self, i: int) -> str:
        return f"{self.name} sample {i}"

    def fingerprint(self) -> str:
        """Identifies the source files (for the disk cache key)."""
        raise NotImplementedError


class _FileSource(EventSource):
    """One file per sample (N-MNIST .bin, DVS Gesture / POKER-DVS .npy)."""

    def __init__(self, name, files: Sequence[Path], labels: Sequence[int], reader, sensor_size,
                 has_y, num_classes):
        self.name, self.files, self.labels = name, list(files), [int(v) for v in labels]
        self.reader, self.sensor_size, self.has_y = reader, tuple(sensor_size), has_y
        self.num_classes = num_classes

    def read(self, i: int) -> np.ndarray:
        path = self.files[i]
        try:
            ev = self.reader(path)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader failure names the file
            raise DataError(f"{self.name}: cannot read {path}: {type(e).__name__}: {e}") from None
        return _finish_events(ev, self.sensor_size, self.has_y, f"{self.name}: {path}")

    def describe(self, i: int) -> str:
        return str(self.files[i])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for f, lab in zip(self.files, self.labels):
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{lab}\n".encode())
        return h.hexdigest()


class _SHDSource(EventSource):
    """An SHD / SSC style HDF5 file: spikes/times (s), spikes/units, labels (one row per sample).

    The file is opened lazily once per process (DataLoader workers each open their own).
    """

    def __init__(self, name, path: Path, num_classes: int, channels: int = 700):
        h5py = _h5py()
        self.name, self.path, self.num_classes = name, path, num_classes
        self.sensor_size, self.has_y = (channels, 1, 1), False
        self._h5, self._pid = None, None
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("spikes/times", "spikes/units", "labels") if k not in f]
                if missing:
                    raise DataError(f"{name}: {path} lacks {missing}; an SHD file holds the "
                                    "datasets spikes/times, spikes/units and labels")
                labels = np.asarray(f["labels"][()])
                n_t, n_u = len(f["spikes/times"]), len(f["spikes/units"])
        except OSError as e:
            raise DataError(f"{name}: cannot read {path} (truncated or not an HDF5 file?): {e}") from None
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{name}: {path}: 'labels' must be a 1-D integer array, found "
                            f"{labels.dtype} {labels.shape}")
        if not n_t == n_u == len(labels):
            raise DataError(f"{name}: {path}: spikes/times ({n_t}), spikes/units ({n_u}) and "
                            f"labels ({len(labels)}) differ in length")
        self.labels = [int(v) for v in labels]

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_h5"], d["_pid"] = None, None
        return d

    def _file(self):
        if self._h5 is None or self._pid != os.getpid():
            self._h5, self._pid = _h5py().File(self.path, "r"), os.getpid()
        return self._h5

    def read(self, i: int) -> np.ndarray:
        where = f"{self.name}: {self.path} sample {i}"
        try:
            f = self._file()
            times = np.asarray(f["spikes/times"][i], dtype=np.float64)
            units = np.asarray(f["spikes/units"][i])
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{where}: cannot read ({e})") from None
        if times.shape != units.shape or times.ndim != 1:
            raise DataError(f"{where}: spikes/times {times.shape} and spikes/units {units.shape} "
                            "must be 1-D of equal length")
        # as tonic.datasets.SHD: seconds -> microseconds, polarity 1 (one channel)
        ev = _make_events(False, units.astype(np.int64), None, (times * 1e6).astype(np.int64), 1)
        return _finish_events(ev, self.sensor_size, False, where)

    def describe(self, i: int) -> str:
        return f"{self.path} sample {i}"

    def fingerprint(self) -> str:
        st = self.path.stat()
        return hashlib.sha256(f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


class _TonicSource(EventSource):
    """Any ``tonic.datasets`` instance (reads through tonic's own ``__getitem__``)."""

    def __init__(self, name, ds, sensor_size, has_y, num_classes, root: Path):
        self.name, self.ds, self.sensor_size, self.has_y = name, ds, tuple(sensor_size), has_y
        self.num_classes, self.root = num_classes, root
        targets = getattr(ds, "targets", None)
        if isinstance(targets, (list, tuple, np.ndarray)) and len(targets) == len(ds):
            self.labels = [int(np.asarray(v).item()) if np.asarray(v).size == 1 else -1 for v in targets]
        else:
            self.labels = [-1] * len(ds)  # known only once a sample is read

    def describe(self, i: int) -> str:
        data = getattr(self.ds, "data", None)
        if isinstance(data, list) and i < len(data) and isinstance(data[i], (str, os.PathLike)):
            return str(data[i])
        return f"{self.name} sample {i} under {self.root}"

    def read_with_label(self, i: int) -> Tuple[np.ndarray, int]:
        where = f"{self.name}: {self.describe(i)}"
        try:
            events, target = self.ds[i]
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{where}: cannot read: {type(e).__name__}: {e}") from None
        t = np.asarray(target)
        if t.size != 1 or not np.issubdtype(t.dtype, np.number):
            raise DataError(f"{where}: target {target!r} is not a single class label "
                            "(only classification data sets can be used)")
        label = int(t.item())
        if not 0 <= label < self.num_classes:
            raise DataError(f"{where}: label {label} outside 0..{self.num_classes - 1}")
        names = getattr(events, "dtype", np.dtype([])).names or ()
        if "t" not in names or "x" not in names or (self.has_y and "y" not in names):
            raise DataError(f"{where}: events with fields {names} are not x/y/t/p events")
        ev = _make_events(self.has_y, events["x"], events["y"] if self.has_y else None,
                          np.asarray(events["t"]).astype(np.int64),
                          events["p"] if "p" in names else 0)
        return _finish_events(ev, self.sensor_size, self.has_y, where), label

    def read(self, i: int) -> np.ndarray:
        return self.read_with_label(i)[0]

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{type(self.ds).__name__}|{self.root.resolve()}|{len(self.ds)}".encode())
        data = getattr(self.ds, "data", None)
        if isinstance(data, list):
            for d in data:
                if isinstance(d, (str, os.PathLike)) and os.path.exists(d):
                    st = os.stat(d)
                    h.update(f"{d}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


# ============================================================================ frames

@dataclass(frozen=True)
class _FirstSaccade:
    def __call__(self, events):
        return events[events["t"] < _FIRST_SACCADE_US]


@dataclass(frozen=True)
class _Denoise:
    """tonic's Denoise, also for samples without events (tonic's fails on those)."""

    filter_time: float

    def __call__(self, events):
        if len(events) == 0:
            return events
        return _tonic().transforms.Denoise(filter_time=self.filter_time)(events)


@dataclass(frozen=True)
class _SpatialDownsample:
    factor: int

    def __call__(self, events):
        events = events.copy()
        events["x"] //= self.factor
        if "y" in events.dtype.names:
            events["y"] //= self.factor
        return events


@dataclass(frozen=True)
class _ToFrames:
    """tonic's ToFrame, made total: exactly ``steps`` frames, empty samples, 1-D sensors."""

    sensor_size: Tuple[int, int, int]   # (W, H, P) after merging / downsampling
    has_y: bool
    steps: int
    window_us: Optional[float] = None
    fixed_length: bool = True

    def shape(self, n: int) -> Tuple[int, ...]:
        w, h, p = self.sensor_size
        return (n, p, h, w) if self.has_y else (n, p * w)

    def __call__(self, events):
        tonic = _tonic()
        w, h, p = self.sensor_size
        sensor = (w, h, p) if self.has_y else (w, 1, p)
        if len(events) == 0:
            return np.zeros(self.shape(self.steps if self.fixed_length or self.window_us is None else 1),
                            dtype=np.int16)
        if self.window_us is None:
            frames = tonic.transforms.ToFrame(sensor_size=sensor, n_time_bins=self.steps)(events)
        else:
            t0 = float(events["t"][0])
            end = t0 + self.steps * self.window_us if self.fixed_length else None
            frames = tonic.transforms.ToFrame(sensor_size=sensor, time_window=self.window_us,
                                              include_incomplete=True, start_time=t0,
                                              end_time=end)(events)
            if self.fixed_length:
                frames = frames[: self.steps]
                if len(frames) < self.steps:
                    pad = np.zeros((self.steps - len(frames), *frames.shape[1:]), dtype=frames.dtype)
                    frames = np.concatenate([frames, pad])
        frames = np.asarray(frames, dtype=np.int16)
        return frames.reshape(self.shape(len(frames)))


class EventFrames(Dataset):
    """Frames of one split: items ``(int16 counts [T, ...] as numpy, label)`` (uncached, no
    binarization; :func:`load_event_split` wraps it with caching and the float conversion)."""

    def __init__(self, source: EventSource, opts: EventOptions, fixed_length: bool = True,
                 allow_first_saccade: bool = False):
        tonic = _tonic()
        self.source, self.opts = source, opts
        w, h, p = source.sensor_size
        steps: List[Callable] = []
        if opts.first_saccade:
            if not allow_first_saccade:
                raise DataError(f"{source.name}: event_first_saccade applies to N-MNIST only")
            steps.append(_FirstSaccade())
        if opts.denoise_us is not None:
            if not source.has_y:
                raise DataError(f"{source.name}: event_denoise_us needs a 2-D (x, y) sensor; "
                                f"this one is 1-D ({w} channels)")
            steps.append(_Denoise(opts.denoise_us))
        if opts.merge_polarity:
            steps.append(tonic.transforms.MergePolarities())
            p = 1
        if opts.downsample > 1:
            k = opts.downsample
            steps.append(_SpatialDownsample(k))
            w, h = -(-w // k), (-(-h // k) if source.has_y else 1)
        self.frame_sensor = (w, h, p)
        self.to_frames = _ToFrames((w, h, p), source.has_y, opts.steps, opts.window_us, fixed_length)
        steps.append(self.to_frames)
        self.transform = tonic.transforms.Compose(steps)
        self.frame_shape = self.to_frames.shape(opts.steps)[1:]   # per step, without T

    @property
    def targets(self) -> List[int]:
        return self.source.labels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        if isinstance(self.source, _TonicSource):
            events, label = self.source.read_with_label(i)
        else:
            events, label = self.source.read(i), self.source.labels[i]
        try:
            frames = self.transform(events)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{self.source.name}: binning {self.source.describe(i)} failed: "
                            f"{type(e).__name__}: {e}") from None
        return frames, int(label)


@dataclass(frozen=True)
class _ToTensor:
    binary: bool

    def __call__(self, frames):
        x = torch.as_tensor(np.asarray(frames), dtype=torch.float32)
        return x.clamp(max=1.0) if self.binary else x


def _to_int(target) -> int:
    return int(np.asarray(target).item())


def cache_key(source: EventSource, opts: EventOptions, split: str) -> str:
    """Hash of the data set identity, split, source files and binning parameters."""
    blob = json.dumps({"format": CACHE_FORMAT, "dataset": source.name, "split": split,
                       "sensor": list(source.sensor_size), "files": source.fingerprint(),
                       **opts.binning()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def load_event_split(source: EventSource, opts: EventOptions, split: str,
                     allow_first_saccade: bool = False) -> Dataset:
    """A cached, tensor-valued data set over ``source``: items ``(float32 [T, ...], int)``."""
    tonic = _tonic()
    frames = EventFrames(source, opts, allow_first_saccade=allow_first_saccade)
    post = _ToTensor(opts.binary)
    if opts.cache_dir is None:
        ds = tonic.MemoryCachedDataset(frames, transform=post)
    else:
        folder = Path(opts.cache_dir).expanduser() / f"{_safe(source.name)}-{split}-{cache_key(source, opts, split)}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            meta = folder / "params.json"
            if not meta.exists():
                meta.write_text(json.dumps({"dataset": source.name, "split": split,
                                            "sensor": list(source.sensor_size),
                                            "samples": len(source), **opts.binning()}, indent=1))
        except OSError as e:
            raise DataError(f"cache_dir {opts.cache_dir!r}: cannot create {folder}: {e}") from None
        ds = tonic.DiskCachedDataset(frames, cache_path=str(folder), transform=post,
                                     target_transform=_to_int)
    ds.frames = frames  # type: ignore[attr-defined]  # shape facts for callers
    return ds


def pad_collate(batch):
    """Collate ``(frames [T_i, ...], label)`` items of different lengths T_i: zero-pads at the
    end to the longest, returns ``(x [B, T_max, ...], y [B], lengths [B])``. Not needed for the
    sets built here (they always give ``steps`` frames), but for ``EventFrames(...,
    fixed_length=False)`` with ``event_window_us``."""
    xs = [torch.as_tensor(np.asarray(x)) for x, _ in batch]
    lengths = torch.tensor([len(x) for x in xs], dtype=torch.int64)
    t_max = int(lengths.max())
    out = xs[0].new_zeros((len(xs), t_max, *xs[0].shape[1:]))
    for i, x in enumerate(xs):
        out[i, : len(x)] = x
    y = torch.tensor([_to_int(t) for _, t in batch], dtype=torch.int64)
    return out, y, lengths


# ============================================================================ named data sets

@dataclass(frozen=True)
class _Spec:
    name: str
    folder: str                      # tonic class name = sub-folder of the root
    splits: Dict[str, str]           # split -> file / folder name under <root>/<folder>
    sensor_size: Tuple[int, int, int]
    has_y: bool
    num_classes: int
    layout: str
    obtain: str


_SPECS: Dict[str, _Spec] = {
    "nmnist": _Spec(
        "nmnist", "NMNIST", {"train": "Train", "test": "Test"}, (34, 34, 2), True, 10,
        layout="<root>/NMNIST/Train/<label 0-9>/<id>.bin and <root>/NMNIST/Test/<label 0-9>/<id>.bin "
               "(tonic's NMNIST layout; <root> is the folder holding NMNIST/)",
        obtain="download Train.zip and Test.zip from https://www.garrickorchard.com/datasets/n-mnist "
               "(tonic's mirror: https://data.mendeley.com/datasets/468j46mzdv/1) and unzip them into "
               "<root>/NMNIST/, or pass --download (config download: true) to let tonic fetch them"),
    "shd": _Spec(
        "shd", "SHD", {"train": "shd_train.h5", "test": "shd_test.h5"}, (700, 1, 1), False, 20,
        layout="<root>/SHD/shd_train.h5 and <root>/SHD/shd_test.h5 (HDF5 with spikes/times, "
               "spikes/units, labels; tonic's SHD layout)",
        obtain="download shd_train.h5.zip and shd_test.h5.zip from https://zenkelab.org/datasets/ "
               "(see https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/) and unzip them "
               "into <root>/SHD/, or pass --download (config download: true)"),
    "dvsgesture": _Spec(
        "dvsgesture", "DVSGesture", {"train": "ibmGestureTrain", "test": "ibmGestureTest"},
        (128, 128, 2), True, 11,
        layout="<root>/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label 0-10>.npy and "
               "<root>/DVSGesture/ibmGestureTest/... (tonic's preprocessed DVS Gesture: N x 4 arrays "
               "x, y, p, t in ms)",
        obtain="download tonic's preprocessed archives ibmGestureTrain.tar.gz "
               "(https://figshare.com/ndownloader/files/38022171) and ibmGestureTest.tar.gz "
               "(https://figshare.com/ndownloader/files/38020584) and extract them into "
               "<root>/DVSGesture/, or pass --download (config download: true)"),
    "pokerdvs": _Spec(
        "pokerdvs", "POKERDVS", {"train": "pips_train", "test": "pips_test"}, (35, 35, 2), True, 4,
        layout="<root>/POKERDVS/pips_train/<folder ending in cl|he|di|sp>/<name>.npy and "
               "<root>/POKERDVS/pips_test/... (tonic's POKERDVS layout: N x 4 arrays t, x, y, p)",
        obtain="extract tonic's pips_train.tar.gz and pips_test.tar.gz (shipped in the tonic GitHub "
               "repository under tonic/datasets/; formerly "
               "https://www.neuromorphic-vision.com/public/downloads/) into <root>/POKERDVS/; the "
               "recordings come from http://www2.imse-cnm.csic.es/caviar/POKERDVS.html. --download "
               "works only where the installed tonic ships these archives"),
}

EVENT_DATASETS = tuple(_SPECS)
_POKER_CLASSES = {"cl": 0, "he": 1, "di": 2, "sp": 3}   # tonic.datasets.POKERDVS.int_classes


def _missing(spec: _Spec, what: str) -> DataError:
    return DataError(f"{spec.name}: {what}. Expected {spec.layout}. To get it: {spec.obtain}")


def _base(spec: _Spec, root) -> Path:
    if root is None:
        raise DataError(f"{spec.name}: no data root given; pass --data-root DIR (config data_root). "
                        f"Expected {spec.layout}. To get it: {spec.obtain}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _missing(spec, f"data root {root} does not exist" if not root.exists()
                       else f"data root {root} is not a folder")
    base = root / spec.folder
    if not base.is_dir() and root.name == spec.folder:   # the root given is the set's own folder
        base = root
    return base


def _index_nmnist(spec: _Spec, split_dir: Path):
    def read(path: Path):
        from tonic.io import read_mnist_file

        ev = read_mnist_file(str(path), dtype=np.dtype([("x", int), ("y", int), ("t", int), ("p", int)]))
        return _make_events(True, ev["x"], ev["y"], ev["t"], ev["p"])

    files, labels = [], []
    for entry in sorted(split_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.endswith("bin"):
            raise DataError(f"{spec.name}: {entry} lies directly in {split_dir}; samples must sit in "
                            f"label folders. Expected {spec.layout}")
        if not entry.is_dir():
            continue
        bins = sorted(p for p in entry.rglob("*") if p.is_file() and p.name.endswith("bin")
                      and not p.name.startswith("."))
        if not bins:
            continue
        if not re.fullmatch(r"\d+", entry.name):
            raise DataError(f"{spec.name}: unexpected folder {entry} (label folders are named 0-9). "
                            f"Expected {spec.layout}")
        label = int(entry.name)
        if not 0 <= label < spec.num_classes:
            raise DataError(f"{spec.name}: label folder {entry}: label {label} outside 0..{spec.num_classes - 1}")
        for p in bins:
            size = p.stat().st_size
            if size == 0 or size % 5:
                raise DataError(f"{spec.name}: {p} is truncated or not an N-MNIST .bin file: {size} bytes "
                                "is not a positive multiple of 5 (5 bytes per event)")
            files.append(p)
            labels.append(label)
    return files, labels, read


def _index_dvsgesture(spec: _Spec, split_dir: Path):
    def read(path: Path):
        arr = _load_npy(path)
        t = arr[:, 3]
        t = t.astype(np.int64) * 1000 if np.issubdtype(t.dtype, np.integer) else (t.astype(np.float64) * 1000).astype(np.int64)
        return _make_events(True, arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), t,
                            arr[:, 2].astype(np.int64))

    files, labels = [], []
    for entry in sorted(split_dir.iterdir()):
        if not entry.is_dir():
            continue
        npys = sorted(p for p in entry.iterdir() if p.is_file() and p.name.endswith("npy")
                      and not p.name.startswith("."))
        if not npys:
            continue
        if not re.fullmatch(r"user\d+_.+", entry.name):
            raise DataError(f"{spec.name}: unexpected folder {entry} (recording folders are named "
                            f"user<NN>_<lighting>). Expected {spec.layout}")
        for p in npys:
            m = re.fullmatch(r"(\d+)\.npy", p.name)
            if not m:
                raise DataError(f"{spec.name}: unexpected file {p} (samples are named <label>.npy). "
                                f"Expected {spec.layout}")
            label = int(m.group(1))
            if not 0 <= label < spec.num_classes:
                raise DataError(f"{spec.name}: {p}: label {label} outside 0..{spec.num_classes - 1}")
            shape = _npy_shape(p)
            if len(shape) != 2 or shape[1] != 4:
                raise DataError(f"{spec.name}: {p}: expected an N x 4 event array, found shape {shape}")
            files.append(p)
            labels.append(label)
    return files, labels, read


def _index_pokerdvs(spec: _Spec, split_dir: Path):
    def read(path: Path):
        arr = _load_npy(path)
        return _make_events(True, arr[:, 1].astype(np.int64), arr[:, 2].astype(np.int64),
                            arr[:, 0].astype(np.int64), arr[:, 3].astype(np.int64))

    files, labels = [], []
    for folder, _, names in sorted(os.walk(split_dir)):
        npys = sorted(n for n in names if n.endswith("npy") and not n.startswith("."))
        if not npys:
            continue
        folder = Path(folder)
        code = folder.name[-2:]
        if folder == split_dir or code not in _POKER_CLASSES:
            raise DataError(f"{spec.name}: {folder / npys[0]}: its folder name must end in a class code "
                            f"cl, he, di or sp. Expected {spec.layout}")
        for n in npys:
            p = folder / n
            shape = _npy_shape(p)
            if len(shape) != 2 or shape[1] != 4:
                raise DataError(f"{spec.name}: {p}: expected an N x 4 event array, found shape {shape}")
            files.append(p)
            labels.append(_POKER_CLASSES[code])
    return files, labels, read


_INDEXERS = {"nmnist": _index_nmnist, "dvsgesture": _index_dvsgesture, "pokerdvs": _index_pokerdvs}


def _download(spec_name: str, cls_name: str, root: Path, kwargs: Dict[str, Any], obtain: str) -> None:
    """Let tonic fetch a data set (only when the user opted in); never waits forever."""
    tonic = _tonic()
    import tonic.datasets  # noqa: F401, F811  (load the submodule)

    cls = getattr(tonic.datasets, cls_name, None)
    if cls is None:
        raise DataError(f"{spec_name}: tonic {getattr(tonic, '__version__', '?')} has no dataset "
                        f"class {cls_name}; {obtain}")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(save_to=str(root), **kwargs)
    except Exception as e:  # noqa: BLE001 - network, checksum, missing packaged files, ...
        raise DataError(f"{spec_name}: download through tonic.datasets.{cls_name} into {root} failed "
                        f"({type(e).__name__}: {e}). {obtain}") from None
    finally:
        socket.setdefaulttimeout(old)


def _named_source(spec: _Spec, root, split: str, download: bool) -> EventSource:
    if download and root is not None:
        Path(root).expanduser().mkdir(parents=True, exist_ok=True)
    base = _base(spec, root)
    target = base / spec.splits[split]
    present = target.is_file() if spec.name == "shd" else target.is_dir()
    if not present and download:
        # tonic's save_to is the folder above <ClassName>/
        _download(spec.name, spec.folder, base.parent, {"train": split == "train"}, spec.obtain)
        present = target.is_file() if spec.name == "shd" else target.is_dir()
    if spec.name == "shd":
        if not present:
            packed = [p.name for p in (target.with_name(target.name + ".zip"),
                                       target.with_name(target.name + ".gz")) if p.exists()]
            hint = f" ({', '.join(packed)} is there: unpack it)" if packed else ""
            if not base.is_dir():
                raise _missing(spec, f"{base} not found (the root holds {_listing(base.parent)})")
            raise _missing(spec, f"{target} not found{hint} ({base} holds {_listing(base)})")
        return _SHDSource(spec.name, target, spec.num_classes, spec.sensor_size[0])
    if not present:
        if not base.is_dir():
            raise _missing(spec, f"{base} not found (the root holds {_listing(base.parent)})")
        raise _missing(spec, f"{target} not found ({base} holds {_listing(base)})")
    files, labels, reader = _INDEXERS[spec.name](spec, target)
    if not files:
        raise _missing(spec, f"no samples found under {target} (it holds {_listing(target)})")
    return _FileSource(spec.name, files, labels, reader, spec.sensor_size, spec.has_y, spec.num_classes)


def _check_labels(source: EventSource) -> None:
    for i, lab in enumerate(source.labels):
        if lab != -1 and not 0 <= lab < source.num_classes:
            raise DataError(f"{source.name}: {source.describe(i)}: label {lab} outside "
                            f"0..{source.num_classes - 1} ({source.num_classes} classes)")


# ============================================================================ bundles

def _perm(n: int, seed: int = 0) -> List[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def _bundle(train_ds: Dataset, test_ds: Dataset, cfg: Dict[str, Any], input_shape, num_classes,
            name: str) -> DataBundle:
    n = len(train_ds)
    if n == 0 or len(test_ds) == 0:
        raise DataError(f"{name}: the {'train' if n == 0 else 'test'} split is empty")
    vf = float(cfg.get("val_fraction", 0.0) or 0.0)
    perm = _perm(n)
    n_val = min(int(round(n * vf)), n - 1)
    val = Subset(train_ds, sorted(perm[:n_val])) if n_val > 0 else None
    tr = perm[n_val:]
    if cfg.get("limit") is not None:
        tr = tr[: int(cfg["limit"])]
    train = Subset(train_ds, sorted(tr))
    test = test_ds
    if cfg.get("test_limit") is not None and cfg["test_limit"] < len(test_ds):
        test = Subset(test_ds, sorted(_perm(len(test_ds))[: int(cfg["test_limit"])]))
    if cfg.get("num_workers", 0) and getattr(getattr(train_ds, "dataset", train_ds), "cache_path", None) is None:
        warnings.warn(f"{name}: frames are cached in memory, which DataLoader workers do not share "
                      "between epochs; set cache_dir to cache them on disk", stacklevel=3)
    return DataBundle(train, val, test, tuple(int(s) for s in input_shape), int(num_classes), True)


def build_event_data(name: str, cfg: Dict[str, Any]) -> DataBundle:
    """The DataBundle of the named event set (``nmnist``, ``shd``, ``dvsgesture``, ``pokerdvs``)."""
    if name not in _SPECS:
        raise DataError(f"unknown event data set {name!r}; use one of {list(_SPECS)} or tonic:<Class>")
    _tonic()
    spec = _SPECS[name]
    opts = EventOptions.from_config(cfg)
    download = bool(cfg.get("download", False))
    splits = {}
    for split in ("train", "test"):
        source = _named_source(spec, cfg.get("data_root"), split, download)
        _check_labels(source)
        splits[split] = load_event_split(source, opts, split, allow_first_saccade=name == "nmnist")
    shape = splits["train"].frames.frame_shape
    return _bundle(splits["train"], splits["test"], cfg, shape, spec.num_classes, name)


# ---------------------------------------------------------------------------- any tonic class

def _tonic_class(cls_name: str):
    tonic = _tonic()
    import tonic.datasets  # noqa: F401, F811  (load the submodule)

    cls = getattr(tonic.datasets, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, tonic.dataset.Dataset)):
        names = sorted(getattr(tonic.datasets, "__all__", []))
        raise DataError(f"tonic has no dataset class {cls_name!r}; tonic.datasets offers {names}")
    return cls


def _url_hint(cls) -> str:
    urls = sorted({str(getattr(cls, a)) for a in ("url", "base_url", "train_url", "test_url")
                   if isinstance(getattr(cls, a, None), str)})
    return f" (tonic downloads from {', '.join(urls)})" if urls else ""


def build_tonic_data(cfg: Dict[str, Any]) -> DataBundle:  # noqa: C901
    """Dataset name ``tonic:<ClassName>``: any ``tonic.datasets`` classification set, read with
    tonic's own reader from ``<data_root>/<ClassName>/`` (its ``_check_exists`` is skipped so that
    partial copies load; files are downloaded only with ``download``). Splits: the class's own
    ``train=`` or ``split=`` argument; sets without one get a stratified 20% test split."""
    name = cfg["dataset"]
    cls_name = name.split(":", 1)[1] if ":" in name else name
    cls = _tonic_class(cls_name)
    opts = EventOptions.from_config(cfg)
    root, download = cfg.get("data_root"), bool(cfg.get("download", False))
    where = f"<root>/{cls_name}/ in tonic.datasets.{cls_name}'s layout"
    if root is None:
        raise DataError(f"{name}: no data root given; pass --data-root DIR holding {where}{_url_hint(cls)}")
    root = Path(root).expanduser()
    if not download and not (root / cls_name).is_dir():
        raise DataError(f"{name}: {root / cls_name} not found; expected {where}; get the files from "
                        f"the data set's site{_url_hint(cls)} or pass --download")
    sensor = getattr(cls, "sensor_size", None)
    dtype = getattr(cls, "dtype", None)
    if not (isinstance(sensor, tuple) and len(sensor) == 3 and all(isinstance(v, int) for v in sensor)):
        raise DataError(f"{name}: tonic.datasets.{cls_name} has no fixed sensor_size (W, H, P) "
                        f"({sensor!r}); it cannot be binned to frames here")
    if not isinstance(dtype, np.dtype) or not dtype.names:
        raise DataError(f"{name}: tonic.datasets.{cls_name} declares no event dtype")
    has_y = "y" in dtype.names
    params = inspect.signature(cls.__init__).parameters
    if "train" in params:
        split_kwargs = {"train": {"train": True}, "test": {"train": False}}
    elif "split" in params:
        split_kwargs = {"train": {"split": "train"}, "test": {"split": "test"}}
    else:
        split_kwargs = {"all": {}}
    lenient = cls if download else type(cls_name, (cls,), {"_check_exists": lambda self: True})
    datasets = {}
    for split, kw in split_kwargs.items():
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(60)
        try:
            datasets[split] = lenient(save_to=str(root), **kw)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{name}: tonic.datasets.{cls_name}({kw}) could not load {root / cls_name}: "
                            f"{type(e).__name__}: {e}. Expected {where}{_url_hint(cls)}") from None
        finally:
            socket.setdefaulttimeout(old)
    classes = getattr(datasets[next(iter(datasets))], "classes", None)
    if classes is None or len(classes) == 0:
        classes = getattr(cls, "classes", None)
    if classes is not None and len(classes) > 0:
        num_classes = len(classes)
    else:
        labels = [t for d in datasets.values() for t in (getattr(d, "targets", None) or [])]
        if not labels:
            raise DataError(f"{name}: cannot tell the number of classes of tonic.datasets.{cls_name}")
        num_classes = int(max(int(np.asarray(t).item()) for t in labels)) + 1
    sources = {s: _TonicSource(name, d, sensor, has_y, num_classes, root) for s, d in datasets.items()}
    for s in sources.values():
        if len(s) == 0:
            raise DataError(f"{name}: no samples found under {root / cls_name}; expected {where}")
        _check_labels(s)
    allow_saccade = cls_name == "NMNIST"
    if "all" in sources:
        src = sources["all"]
        full = load_event_split(src, opts, "all", allow_first_saccade=allow_saccade)
        if any(v < 0 for v in src.labels):
            raise DataError(f"{name}: tonic.datasets.{cls_name} has no train/test split and no "
                            "targets list to split it by")
        y = torch.tensor(src.labels)
        tr_idx, te_idx = stratified_test_split(y, 0.2, seed=0)
        train_ds, test_ds = Subset(full, tr_idx.tolist()), Subset(full, te_idx.tolist())
        shape = full.frames.frame_shape
    else:
        train_ds = load_event_split(sources["train"], opts, "train", allow_first_saccade=allow_saccade)
        test_ds = load_event_split(sources["test"], opts, "test", allow_first_saccade=allow_saccade)
        shape = train_ds.frames.frame_shape
    return _bundle(train_ds, test_ds, cfg, shape, num_classes, name)


# ============================================================================ registration

for _name in _SPECS:
    register_dataset(_name)(lambda cfg, _n=_name: build_event_data(_n, cfg))

# ``tonic:<ClassName>`` for every tonic data set class, through the registry's prefix hook.
register_dataset_prefix("tonic:")(build_tonic_data)
