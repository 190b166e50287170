"""Pieces shared by the NIR and HDF5 exporters: walking a network, shapes, atomic writes."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from spikelfp.nn import AvgPool2d, Flatten, LIFConv2d, LIFLinear, MaxPool2d, ReLULinear
from spikelfp.nn.layers import CubaLIFConv2d, CubaLIFLinear
from spikelfp.train.checkpoint import file_mode

PathLike = Union[str, os.PathLike]

#: The time step assumed when none is given. snnTorch's NIR importer hard-codes dt = 1e-4
#: (``beta = 1 - dt / tau``), so exporting with this dt lets snnTorch recover beta exactly.
DEFAULT_DT = 1e-4

#: Loihi's / netx's 12-bit decay scale: a decay fraction d is the number d * 4096 (integer on the
#: chip, unrounded in the HDF5 layout).
DECAY_UNITY = 4096


class ResetMismatchError(ValueError):
    """The network uses reset "subtract", which NIR 1.0 cannot express."""


class ResetMismatchWarning(UserWarning):
    """An export was written although the target format simulates a different reset."""


#: Layer kinds with synapses and spiking neurons (CUBA / recurrent ones are "cuba_*").
SYNAPTIC_KINDS = ("dense", "conv", "cuba_dense", "cuba_conv")


@dataclass
class LayerInfo:
    """One layer of a network with the per-sample shapes around it."""

    index: int
    layer: torch.nn.Module
    kind: str  # "dense" | "conv" | "cuba_dense" | "cuba_conv" | "avgpool" | "maxpool" | "flatten"
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]


def _kind(layer) -> str:
    # ReLULinear subclasses LIFLinear: test it first.
    if isinstance(layer, ReLULinear) or (getattr(layer, "kind", "") == "synaptic"
                                         and not getattr(layer, "spiking", True)):
        return "relu"
    if isinstance(layer, CubaLIFLinear):  # a synaptic current and/or recurrent weights
        return "cuba_dense"
    if isinstance(layer, CubaLIFConv2d):
        return "cuba_conv"
    if isinstance(layer, LIFLinear):
        return "dense"
    if isinstance(layer, LIFConv2d):
        return "conv"
    if isinstance(layer, AvgPool2d):
        return "avgpool"
    if isinstance(layer, MaxPool2d):
        return "maxpool"
    if isinstance(layer, Flatten):
        return "flatten"
    return "unknown"


def infer_input_shape(network) -> Tuple[int, ...]:
    """The per-sample input shape when the network itself determines it (first layer dense)."""
    layers = list(network)
    if layers and _kind(layers[0]) in ("dense", "cuba_dense"):
        return (int(layers[0].in_features),)
    raise ValueError(
        "input_shape is required for a network that does not start with a LIFLinear layer "
        "(e.g. input_shape=(1, 28, 28) for a conv net)"
    )


def describe_network(network, input_shape: Optional[Sequence[int]],
                     supported: Sequence[str], target: str) -> List[LayerInfo]:
    """List the layers with their input/output shapes; raise a one-line ValueError for a layer
    the target format cannot hold."""
    try:
        layers = list(network) if network is not None else []
    except TypeError:
        raise ValueError(f"expected a spikelfp.nn.Sequential of layers, got "
                         f"{type(network).__name__}") from None
    if len(layers) == 0:
        raise ValueError("the network has no layers; nothing to export")
    for i, layer in enumerate(layers):
        kind = _kind(layer)
        if kind not in supported:
            why = {
                "relu": "a non-spiking ReLU layer has no spiking neuron to map",
                "maxpool": "max pooling of spikes has no node in NIR 1.0",
                "unknown": "it is not a spikelfp layer",
                "cuba_dense": "its synaptic current / recurrent weights have no equivalent there",
                "cuba_conv": "its synaptic current has no equivalent there",
            }.get(kind, "the format has no equivalent")
            raise ValueError(
                f"layer {i} ({type(layer).__name__}) cannot be exported to {target}: {why}"
            )
    shape = tuple(int(s) for s in (input_shape if input_shape is not None
                                   else infer_input_shape(network)))
    infos: List[LayerInfo] = []
    with torch.no_grad():
        for i, layer in enumerate(layers):
            param = next((p for p in layer.parameters()), None)
            dtype = param.dtype if param is not None else torch.get_default_dtype()
            device = param.device if param is not None else "cpu"
            x = torch.zeros((1, *shape), dtype=dtype, device=device)
            kind = _kind(layer)
            try:
                y = layer.current(x) if kind in SYNAPTIC_KINDS else layer.run(x)[0]
            except (ValueError, RuntimeError) as err:
                raise ValueError(
                    f"layer {i} ({type(layer).__name__}) does not accept the per-sample shape "
                    f"{shape}: {str(err).splitlines()[0]}"
                ) from None
            out = tuple(int(s) for s in y.shape[1:])
            infos.append(LayerInfo(i, layer, kind, shape, out))
            shape = out
    return infos


def neuron_array(layer, name: str, out_shape: Sequence[int]) -> np.ndarray:
    """beta or threshold of a synaptic layer broadcast to the full neuron shape (its dtype)."""
    p = getattr(layer.neuron_parameters(), name).detach().to("cpu")
    return torch.broadcast_to(p, tuple(out_shape)).numpy().copy()


def collapse_neuron_param(arr: np.ndarray, kind: str) -> np.ndarray:
    """The most compact spikelfp form of a per-neuron array: scalar if uniform, per channel
    ``[C]`` for a conv layer whose values do not vary over space, else the full array."""
    arr = np.asarray(arr)
    flat = arr.reshape(-1)
    if flat.size == 0:
        raise ValueError("empty neuron parameter")
    if np.all(flat == flat[0]):
        return np.asarray(flat[0])
    if kind == "conv" and arr.ndim == 3:
        per_channel = arr[:, :1, :1]
        if np.all(arr == per_channel):
            return per_channel.reshape(-1).copy()
    return arr


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy().copy()


def float_dtype(arr) -> np.dtype:
    """float64 for float64 data, else float32 (the dtype exported/rebuilt networks use)."""
    return np.dtype(np.float64) if np.asarray(arr).dtype == np.float64 else np.dtype(np.float32)


def torch_dtype(np_dtype) -> torch.dtype:
    return torch.float64 if np.dtype(np_dtype) == np.float64 else torch.float32


def set_neuron_params(layer, beta: torch.Tensor, threshold: torch.Tensor) -> None:
    """Overwrite the beta/threshold buffers with exact values in the layer's dtype (the layer
    constructors cast them through the default dtype, which would round float64 values)."""
    dtype = layer.weight.dtype
    layer.beta = beta.detach().clone().to(dtype)
    layer.threshold = threshold.detach().clone().to(dtype)


def check_output_path(path: PathLike, force: bool) -> Path:
    """Refuse to overwrite an existing file unless ``force``; the directory must exist."""
    p = Path(path)
    if p.exists() and not force:
        raise FileExistsError(f"{p} already exists; pass force=True (CLI: --force) to overwrite it")
    if p.exists() and p.is_dir():
        raise IsADirectoryError(f"{p} is a directory, not a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"the directory {parent} does not exist")
    return p


def atomic_write(path: PathLike, writer: Callable[[str], None], force: bool = False) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file next to ``path``, then rename it into
    place: a failure leaves nothing behind and never a half-written ``path``."""
    p = check_output_path(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent or "."))
    os.close(fd)
    try:
        writer(tmp)
        if p.exists() and not force:  # created meanwhile
            raise FileExistsError(
                f"{p} already exists; pass force=True (CLI: --force) to overwrite it")
        os.chmod(tmp, file_mode())  # as readable as a plain open() would make it, not 0600
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p


def spikelfp_version() -> str:
    try:
        import spikelfp

        return str(getattr(spikelfp, "__version__", "unknown"))
    except Exception:  # pragma: no cover
        return "unknown"
