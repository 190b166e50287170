"""A plain HDF5 layout for spikelfp networks, modelled on Lava-DL's ``netx`` files.

The layout is documented in ``hardware_export/SCHEMA.md``; the constants below are the same
lists, and ``tests/test_export_hdf5.py`` checks the two against each other and against files.
Values are stored exactly (weights, biases, decays and thresholds in spikelfp units, float32 or
float64 as the network); the
netx-style fixed-point names (``vDecay``, ``iDecay``, ``vThMant``) are written alongside as
floats for orientation, see SCHEMA.md for where this differs from what netx loads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from spikelfp.nn import (
    AvgPool2d,
    CubaLIFConv2d,
    CubaLIFLinear,
    Flatten,
    LIFConv2d,
    LIFLinear,
    MaxPool2d,
    Sequential,
)

from ._common import (
    DECAY_UNITY,
    DEFAULT_DT,
    PathLike,
    atomic_write,
    check_output_path,
    describe_network,
    float_dtype,
    set_neuron_params,
    spikelfp_version,
    to_numpy,
    torch_dtype,
)

FORMAT_NAME = "spikelfp-hdf5"
FORMAT_VERSION = 1
HDF5_SUPPORTED = ("dense", "conv", "cuba_dense", "cuba_conv", "avgpool", "maxpool", "flatten")

#: Root attributes (file-level metadata). ``time_steps`` is -1 and ``input_encoding`` "" when
#: unknown.
FILE_ATTRS = ("format", "format_version", "spikelfp_version", "dt", "time_steps",
              "input_encoding", "input_shape", "num_layers", "neuron_model")
#: Keys of every ``layer/<i>`` group.
COMMON_LAYER_KEYS = ("type", "shape", "layerClass", "inputShape")
#: Further keys per layer ``type`` (``bias`` is optional: absent when the layer has none).
LAYER_KEYS = {
    "input": (),
    "dense": ("inFeatures", "outFeatures", "weight", "bias", "neuron"),
    "conv": ("inChannels", "outChannels", "kernelSize", "stride", "padding", "dilation",
             "groups", "weight", "bias", "neuron"),
    "pool": ("operation", "kernelSize", "stride", "padding", "dilation"),
    "flatten": ("frameDims",),
}
OPTIONAL_LAYER_KEYS = ("bias",)
#: Keys of the ``neuron`` group of dense / conv layers.
NEURON_KEYS = ("type", "iDecay", "vDecay", "vThMant", "refDelay", "gradedSpike",
               "beta", "threshold", "reset")
NEURON_MODEL = ("v[t] = beta*v[t-1] + W x[t] + b - reset[t]; s[t] = v[t] > threshold; "
                "reset 'zero': v[t] -> 0 after a spike (applied at t+1, same spikes); "
                "'subtract': reset[t+1] = threshold*s[t]")


def _import_h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("HDF5 export needs the 'h5py' package (pip install h5py)") from err
    return h5py


def _put_type(h5py, group, name: str) -> None:
    # netx/slayer style: a (1,) array of a 10-byte ASCII string
    group.create_dataset("type", (1,), "S10", [name.encode("ascii")])


def _put_str(h5py, group, key: str, value: str) -> None:
    group.create_dataset(key, data=value, dtype=h5py.string_dtype("utf-8"))


def _get_str(ds) -> str:
    v = ds[()]
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0]
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


def _neuron_param(layer, name: str) -> np.ndarray:
    a = to_numpy(getattr(layer, name))
    return a.astype(float_dtype(a))


def _write_neuron(h5py, group, layer) -> None:
    beta = _neuron_param(layer, "beta")
    theta = _neuron_param(layer, "threshold")
    n = group.create_group("neuron")
    _put_str(h5py, n, "type", "CUBA" if layer.reset == "zero" else "CUBA-SUBTRACT")
    if hasattr(layer, "alpha"):  # CUBA: the current keeps alpha of itself per step
        alpha = _neuron_param(layer, "alpha")
        n.create_dataset("iDecay", data=((1.0 - alpha.astype(np.float64)) * DECAY_UNITY))
        n.create_dataset("alpha", data=alpha)
    else:  # the current decays fully each step
        n.create_dataset("iDecay", data=np.int64(DECAY_UNITY))
    n.create_dataset("vDecay", data=((1.0 - beta.astype(np.float64)) * DECAY_UNITY))
    n.create_dataset("vThMant", data=theta)
    n.create_dataset("refDelay", data=np.int64(1))
    n.create_dataset("gradedSpike", data=False)
    n.create_dataset("beta", data=beta)
    n.create_dataset("threshold", data=theta)
    _put_str(h5py, n, "reset", layer.reset)


def _write_file(h5py, tmp: str, infos, dt: float, time_steps, input_encoding,
                extra: Mapping[str, Any]) -> None:
    with h5py.File(tmp, "w") as f:
        attrs = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "spikelfp_version": spikelfp_version(),
            "dt": float(dt),
            "time_steps": int(time_steps) if time_steps is not None else -1,
            "input_encoding": str(input_encoding) if input_encoding is not None else "",
            "input_shape": np.array(infos[0].in_shape, dtype=np.int64),
            "num_layers": len(infos) + 1,
            "neuron_model": NEURON_MODEL,
        }
        for k, v in extra.items():
            if k in attrs:
                raise ValueError(f"metadata key {k!r} is reserved by the HDF5 layout")
            attrs[k] = v
        for k, v in attrs.items():
            f.attrs[k] = v
        root = f.create_group("layer")
        g0 = root.create_group("0")
        _put_type(h5py, g0, "input")
        g0.create_dataset("shape", data=np.array(infos[0].in_shape, dtype=np.int64))
        _put_str(h5py, g0, "layerClass", "Input")
        g0.create_dataset("inputShape", data=np.array(infos[0].in_shape, dtype=np.int64))
        for info in infos:
            layer = info.layer
            g = root.create_group(str(info.index + 1))
            g.create_dataset("shape", data=np.array(info.out_shape, dtype=np.int64))
            g.create_dataset("inputShape", data=np.array(info.in_shape, dtype=np.int64))
            _put_str(h5py, g, "layerClass", type(layer).__name__)
            if info.kind in ("dense", "cuba_dense"):
                _put_type(h5py, g, "dense")
                g.create_dataset("inFeatures", data=np.int64(layer.in_features))
                g.create_dataset("outFeatures", data=np.int64(layer.out_features))
            elif info.kind in ("conv", "cuba_conv"):
                _put_type(h5py, g, "conv")
                g.create_dataset("inChannels", data=np.int64(layer.in_channels))
                g.create_dataset("outChannels", data=np.int64(layer.out_channels))
                g.create_dataset("kernelSize", data=np.array(layer.kernel_size, np.int64))
                g.create_dataset("stride", data=np.array(layer.stride, np.int64))
                g.create_dataset("padding", data=np.array(layer.padding, np.int64))
                g.create_dataset("dilation", data=np.array(layer.dilation, np.int64))
                g.create_dataset("groups", data=np.int64(layer.groups))
            elif info.kind in ("avgpool", "maxpool"):
                _put_type(h5py, g, "pool")
                _put_str(h5py, g, "operation", "average" if info.kind == "avgpool" else "max")
                g.create_dataset("kernelSize", data=np.array(layer.kernel_size, np.int64))
                g.create_dataset("stride", data=np.array(layer.stride, np.int64))
                g.create_dataset("padding", data=np.array(layer.padding, np.int64))
                g.create_dataset("dilation", data=np.array((1, 1), np.int64))
            elif info.kind == "flatten":
                _put_type(h5py, g, "flatten")
                g.create_dataset("frameDims", data=np.int64(layer.frame_dims))
            if info.kind in ("dense", "conv", "cuba_dense", "cuba_conv"):
                w = to_numpy(layer.weight)
                g.create_dataset("weight", data=w.astype(float_dtype(w)))
                if layer.bias is not None:
                    g.create_dataset("bias", data=to_numpy(layer.bias).astype(float_dtype(w)))
                if getattr(layer, "recurrent", False):  # V and b_V (netx's name: weight_rec)
                    g.create_dataset("weight_rec", data=to_numpy(layer.recurrent_weight).astype(float_dtype(w)))
                    if layer.recurrent_bias is not None:
                        g.create_dataset("bias_rec", data=to_numpy(layer.recurrent_bias).astype(float_dtype(w)))
                _write_neuron(h5py, g, layer)


def write_hdf5(network, path: PathLike, input_shape: Optional[Sequence[int]] = None, *,
               dt: float = DEFAULT_DT, time_steps: Optional[int] = None,
               input_encoding: Optional[str] = None, force: bool = False,
               metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``network`` to ``path`` in the layout of SCHEMA.md (one group per layer).

    Args:
        network: a :class:`spikelfp.nn.Sequential` of LIFLinear, LIFConv2d, AvgPool2d, MaxPool2d
            and Flatten layers (ReLULinear is refused: it has no spiking neuron).
        input_shape: per-sample input shape; inferred when the first layer is LIFLinear.
        dt, time_steps, input_encoding: file-level metadata (dt: seconds per step; spikelfp's
            model itself is discrete and does not use it).
        force: overwrite an existing file. metadata: extra root attributes (str/number/array).

    Both reset modes are stored exactly (``neuron/reset``). The file is written to a temporary
    file and renamed. Returns the path.
    """
    h5py = _import_h5py()
    check_output_path(path, force)
    dt = float(dt)
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt={dt!r} is not allowed; dt must be a finite number > 0")
    infos = describe_network(network, input_shape, HDF5_SUPPORTED, "HDF5")
    extra = {str(k): v for k, v in (metadata or {}).items() if v is not None}
    return atomic_write(
        path, lambda tmp: _write_file(h5py, tmp, infos, dt, time_steps, input_encoding, extra),
        force=force)


def _attr(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_hdf5_metadata(path: PathLike) -> Dict[str, Any]:
    """The root attributes (file-level metadata) of a spikelfp HDF5 file."""
    h5py = _import_h5py()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"HDF5 file {p} does not exist")
    with h5py.File(p, "r") as f:
        return {k: _attr(v) for k, v in f.attrs.items()}


def _pair(ds) -> Tuple[int, int]:
    a = np.asarray(ds[()]).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _alpha_from(group, fd) -> Optional[np.ndarray]:
    """The current decay alpha of a layer's neuron group (None: the current decays fully)."""
    n = group["neuron"]
    if "alpha" in n:
        return np.asarray(n["alpha"][()], dtype=fd)
    if "iDecay" in n and np.any(np.asarray(n["iDecay"][()], np.float64) != DECAY_UNITY):
        return (1.0 - np.asarray(n["iDecay"][()], np.float64) / DECAY_UNITY).astype(fd)
    return None


def _neuron_from(group, where: str, fd):
    if "neuron" not in group:
        raise ValueError(f"{where}: no 'neuron' group")
    n = group["neuron"]
    if "beta" in n and "threshold" in n:
        beta = np.asarray(n["beta"][()], dtype=fd)
        theta = np.asarray(n["threshold"][()], dtype=fd)
    else:  # a netx-style file: derive from the fixed-point names
        beta = (1.0 - np.asarray(n["vDecay"][()], np.float64) / DECAY_UNITY).astype(fd)
        theta = np.asarray(n["vThMant"][()], dtype=fd)
    if "reset" in n:
        reset = _get_str(n["reset"])
    else:
        ntype = _get_str(n["type"]) if "type" in n else "CUBA"
        reset = "subtract" if ntype == "CUBA-SUBTRACT" else "zero"
    return torch.from_numpy(np.array(beta)), torch.from_numpy(np.array(theta)), reset


def _conv_from(g, where: str):
    """(LIFConv2d or CubaLIFConv2d, weights, beta, threshold) of a conv group."""
    w = np.asarray(g["weight"][()])
    w = w.astype(float_dtype(w))
    if w.ndim == 5:  # slayer stores a trailing time dimension of 1
        w = w.reshape(w.shape[:4])
    groups = int(np.asarray(g["groups"][()]).reshape(-1)[0]) if "groups" in g else 1
    beta, theta, reset = _neuron_from(g, where, w.dtype)
    alpha = _alpha_from(g, w.dtype)
    cls = LIFConv2d if alpha is None else CubaLIFConv2d
    extra = {} if alpha is None else {"alpha": torch.from_numpy(np.array(alpha))}
    layer = cls(
        w.shape[1] * groups, w.shape[0], kernel_size=tuple(w.shape[-2:]),
        stride=_pair(g["stride"]) if "stride" in g else 1,
        padding=_pair(g["padding"]) if "padding" in g else 0,
        dilation=_pair(g["dilation"]) if "dilation" in g else 1,
        groups=groups, bias="bias" in g, beta=beta, threshold=theta, reset=reset,
        dtype=torch_dtype(w.dtype), **extra)
    return layer, w, beta, theta


def _cuba_dense(g, w: np.ndarray, beta, theta, reset: str, alpha: Optional[np.ndarray]):
    """A CubaLIFLinear from a dense group with a current decay and/or ``weight_rec``."""
    rec = "weight_rec" in g
    layer = CubaLIFLinear(w.shape[1], w.shape[0], bias="bias" in g, beta=beta, threshold=theta,
                          reset=reset, alpha=torch.from_numpy(np.array(alpha)) if alpha is not None else 0.0,
                          recurrent=rec, recurrent_bias="bias_rec" in g, dtype=torch_dtype(w.dtype))
    if rec:
        with torch.no_grad():
            layer.recurrent_weight.copy_(torch.from_numpy(np.asarray(g["weight_rec"][()], dtype=w.dtype)))
            if "bias_rec" in g:
                layer.recurrent_bias.copy_(torch.from_numpy(
                    np.asarray(g["bias_rec"][()], dtype=w.dtype).reshape(-1)))
    return layer


def read_hdf5(path: PathLike, return_metadata: bool = False):
    """Read a file written by :func:`write_hdf5` back into a :class:`spikelfp.nn.Sequential`.

    With ``return_metadata=True`` returns ``(network, metadata)`` where metadata is the dict of
    root attributes (dt, time_steps, input_encoding, input_shape, spikelfp_version, ...).
    Raises ValueError (one line) for a layer type it cannot build.
    """
    h5py = _import_h5py()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"HDF5 file {p} does not exist")
    layers: List[torch.nn.Module] = []
    with h5py.File(p, "r") as f:
        meta = {k: _attr(v) for k, v in f.attrs.items()}
        if "layer" not in f:
            raise ValueError(f"{p} has no 'layer' group; not a spikelfp/netx HDF5 network")
        root = f["layer"]
        keys = sorted(root.keys(), key=lambda k: int(k))
        if [int(k) for k in keys] != list(range(len(keys))):
            raise ValueError(f"{p}: layer groups must be numbered 0..N-1, found {keys}")
        for k in keys:
            g = root[k]
            where = f"layer/{k}"
            kind = _get_str(g["type"])
            if kind == "input":
                continue
            if kind == "dense":
                w = np.asarray(g["weight"][()])
                w = w.astype(float_dtype(w))
                beta, theta, reset = _neuron_from(g, where, w.dtype)
                alpha = _alpha_from(g, w.dtype)
                if alpha is None and "weight_rec" not in g:
                    layer = LIFLinear(w.shape[1], w.shape[0], bias="bias" in g, beta=beta,
                                      threshold=theta, reset=reset, dtype=torch_dtype(w.dtype))
                else:
                    layer = _cuba_dense(g, w, beta, theta, reset, alpha)
            elif kind == "conv":
                layer, w, beta, theta = _conv_from(g, where)
            elif kind == "pool":
                op = _get_str(g["operation"]) if "operation" in g else None
                cls = {"average": AvgPool2d, "max": MaxPool2d}.get(op)
                if cls is None:
                    raise ValueError(f"{where}: pool operation {op!r} is not 'average' or 'max' "
                                     f"(slayer's weighted sum pool + neuron is not supported)")
                if "dilation" in g and _pair(g["dilation"]) != (1, 1):
                    raise ValueError(f"{where}: pooling with dilation is not supported")
                layers.append(cls(_pair(g["kernelSize"]), _pair(g["stride"]),
                                  _pair(g["padding"]) if "padding" in g else 0))
                continue
            elif kind == "flatten":
                fd = int(np.asarray(g["frameDims"][()])) if "frameDims" in g else 3
                layers.append(Flatten(frame_dims=fd))
                continue
            else:
                raise ValueError(f"{where}: layer type {kind!r} has no spikelfp equivalent")
            set_neuron_params(layer, beta, theta)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w))
                if "bias" in g:
                    layer.bias.copy_(torch.from_numpy(
                        np.asarray(g["bias"][()], dtype=w.dtype).reshape(-1)))
            layers.append(layer)
    if not layers:
        raise ValueError(f"{p} holds no layers")
    net = Sequential(*layers)
    return (net, meta) if return_metadata else net
