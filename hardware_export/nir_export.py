"""Export spikelfp networks to the Neuromorphic Intermediate Representation (NIR) and back.

Discretization (the standard one, also snnTorch's): NIR's LIF is the continuous

    tau * dv/dt = (v_leak - v) + r * I,     spike when v > v_threshold, then v <- v_reset.

One forward-Euler step of length dt gives
``v <- (1 - dt/tau) v + (r dt / tau) I + (dt/tau) v_leak``.
With ``tau = dt / (1 - beta)``, ``r = tau / dt`` and ``v_leak = 0`` that is exactly spikelfp's
``v <- beta v + I``. A layer with beta == 1 everywhere is an NIR ``IF`` (dv/dt = r I) with
``r = 1 / dt``. Thresholds (strictly greater) and per-neuron decays/thresholds are kept as arrays
of the neuron shape. NIR resets to ``v_reset`` (here 0): that is spikelfp's reset "zero", whose
spikes do not depend on whether the reset is applied at the end of the spiking step or at the
start of the next one. Reset "subtract" has no NIR 1.0 node: it is refused unless
``allow_reset_mismatch=True``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from spikelfp.nn import (
    AvgPool2d,
    CubaLIFConv2d,
    CubaLIFLinear,
    Flatten,
    LIFConv2d,
    LIFLinear,
    Sequential,
)

from ._common import (
    DEFAULT_DT,
    SYNAPTIC_KINDS,
    PathLike,
    ResetMismatchError,
    ResetMismatchWarning,
    atomic_write,
    check_output_path,
    collapse_neuron_param,
    describe_network,
    float_dtype,
    neuron_array,
    set_neuron_params,
    spikelfp_version,
    to_numpy,
    torch_dtype,
)

NIR_SUPPORTED = ("dense", "conv", "cuba_dense", "cuba_conv", "avgpool", "flatten")
POOLINGS = ("avg", "sum")

RESET_NOTE = (
    "trained with reset='subtract' (v -= threshold after a spike); NIR's LIF/IF reset to "
    "v_reset, so consumers simulate reset-to-zero and spike trains differ"
)


def _import_nir():
    try:
        import nir  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("NIR export needs the 'nir' package (pip install nir)") from err
    return nir


def _check_dt(dt) -> float:
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise ValueError(f"dt={dt!r} is not a number; dt must be > 0") from None
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt={dt!r} is not allowed; dt must be a finite number > 0")
    return dt


def _reset_check(infos, allow_reset_mismatch: bool) -> List[int]:
    subtract = [info.index for info in infos
                if info.kind in SYNAPTIC_KINDS and info.layer.reset == "subtract"]
    if subtract and not allow_reset_mismatch:
        raise ResetMismatchError(
            f"layer(s) {subtract} use reset='subtract', which NIR 1.0 cannot express (its "
            f"LIF/IF nodes reset to v_reset, i.e. reset 'zero'), so the exported graph would be "
            f"a different network; train with reset='zero' for an exact export, or pass "
            f"allow_reset_mismatch=True (CLI: --allow-reset-mismatch) to write it anyway"
        )
    return subtract


def _neuron_node(nir, info, dt: float, mismatch: bool):
    layer = info.layer
    shape = info.out_shape
    beta = neuron_array(layer, "beta", shape).astype(np.float64)
    theta = neuron_array(layer, "threshold", shape).astype(np.float64)
    meta: Dict[str, Any] = {"spikelfp_reset": layer.reset}
    if layer.beta.dtype == torch.float64:
        # 1 - dt/(dt/(1-beta)) can be 1 ulp off in float64 (exact for float32 betas): keep beta
        meta["spikelfp_beta"] = beta.copy()
    if mismatch:
        meta["reset_note"] = RESET_NOTE
    alpha = _synaptic_decay(layer, shape)
    if alpha is not None and np.any(beta == 1.0):
        raise ValueError(
            f"layer {info.index} ({type(layer).__name__}) has beta == 1 and a synaptic current "
            f"(alpha != 0); NIR's CubaLIF needs tau_mem = dt/(1 - beta) finite (beta < 1) and NIR "
            f"has no current-based IF node"
        )
    if np.all(beta == 1.0):
        return nir.IF(r=np.full(shape, 1.0 / dt), v_threshold=theta,
                      v_reset=np.zeros(shape), metadata=meta)
    if np.any(beta == 1.0):
        raise ValueError(
            f"layer {info.index} ({type(layer).__name__}) mixes beta == 1 and beta < 1; NIR has "
            f"no single node for that (IF needs beta == 1 everywhere, LIF needs beta < 1)"
        )
    tau = dt / (1.0 - beta)
    if alpha is not None:
        # NIR CubaLIF, forward Euler: i <- (1 - dt/tau_syn) i + (dt/tau_syn) w_in I and
        # v <- (1 - dt/tau_mem) v + (dt/tau_mem) r i; tau_syn = dt/(1 - alpha), w_in = tau_syn/dt,
        # r = tau_mem/dt give i <- alpha i + I, v <- beta v + i (spikelfp's CUBA neuron).
        meta["spikelfp_alpha"] = alpha.copy()
        tau_syn = dt / (1.0 - alpha)
        return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau, r=tau / dt, v_leak=np.zeros(shape),
                           v_threshold=theta, v_reset=np.zeros(shape), w_in=tau_syn / dt,
                           metadata=meta)
    return nir.LIF(tau=tau, r=tau / dt, v_leak=np.zeros(shape), v_threshold=theta,
                   v_reset=np.zeros(shape), metadata=meta)


def _synaptic_decay(layer, shape) -> Optional[np.ndarray]:
    """alpha of a CUBA layer broadcast to the neuron shape (float64), or None (no current)."""
    if not hasattr(layer, "synaptic_decay") or layer.synaptic_decay() is None:
        return None
    a = layer.synaptic_decay().detach().to("cpu", torch.float64)
    return torch.broadcast_to(a, tuple(shape)).numpy().copy()


def to_nir(network, input_shape: Optional[Sequence[int]] = None, dt: float = DEFAULT_DT, *,  # noqa: C901
           allow_reset_mismatch: bool = False, pooling: str = "avg",
           time_steps: Optional[int] = None, input_encoding: Optional[str] = None,
           metadata: Optional[Mapping[str, Any]] = None, _stacklevel: int = 2):
    """Translate a spikelfp network into a :class:`nir.NIRGraph`.

    Args:
        network: a :class:`spikelfp.nn.Sequential` of LIFLinear, LIFConv2d, AvgPool2d and
            Flatten layers (ReLULinear and MaxPool2d have no NIR node and are refused).
        input_shape: per-sample input shape without time and batch, e.g. ``(64,)`` or
            ``(1, 8, 8)``; inferred for a network that starts with a LIFLinear layer.
        dt: time step used to express beta as a time constant (``tau = dt / (1 - beta)``,
            ``r = tau / dt``). The default 1e-4 is the dt snnTorch's importer assumes.
        allow_reset_mismatch: export a reset "subtract" network anyway (its LIF nodes carry a
            ``reset_note`` in their metadata and a :class:`ResetMismatchWarning` is issued).
        pooling: ``"avg"`` writes ``AvgPool2d`` nodes (read by snnTorch); ``"sum"`` writes
            ``SumPool2d`` nodes (read by Norse) and folds 1/(kh*kw) into the weights of the next
            synaptic layer (bit-exact when kh*kw is a power of two).
        time_steps, input_encoding, metadata: stored in the graph's metadata.

    Returns:
        the NIR graph ``input -> [affine|linear|conv2d -> lif|if | avgpool2d|sumpool2d |
        flatten]... -> output``; node names are ``layer{i}_<kind>`` with i the spikelfp index.
    """
    nir = _import_nir()
    dt = _check_dt(dt)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not allowed; use one of {POOLINGS}")
    infos = describe_network(network, input_shape, NIR_SUPPORTED, "NIR")
    subtract = _reset_check(infos, allow_reset_mismatch)
    if subtract:
        warnings.warn(
            f"exporting layer(s) {subtract} trained with reset='subtract' to NIR, whose LIF "
            f"resets to zero: consumers will simulate a different network (see the "
            f"'reset_note' metadata)", ResetMismatchWarning, stacklevel=_stacklevel,
        )

    nodes: Dict[str, Any] = {"input": nir.Input(input_type=np.array(infos[0].in_shape))}
    order = ["input"]
    loops: List[Tuple[str, str]] = []
    pending = 1.0  # 1/(kh*kw) of sum pools still to be folded into the next synapse
    pending_from: Optional[int] = None
    for info in infos:
        layer, i = info.layer, info.index
        if info.kind in SYNAPTIC_KINDS:
            w = to_numpy(layer.weight)
            fd = float_dtype(w)
            w = w.astype(fd)
            if pending != 1.0:
                w = (w * fd.type(pending)).astype(fd)
                pending, pending_from = 1.0, None
            has_bias = layer.bias is not None
            b = (to_numpy(layer.bias).astype(fd) if has_bias else np.zeros(w.shape[0], dtype=fd))
            if info.kind in ("dense", "cuba_dense"):
                syn = (nir.Affine(weight=w, bias=b) if has_bias else nir.Linear(weight=w))
                syn_name = f"layer{i}_affine" if has_bias else f"layer{i}_linear"
            else:
                syn = nir.Conv2d(
                    input_shape=tuple(info.in_shape[-2:]), weight=w,
                    stride=tuple(int(s) for s in layer.stride),
                    padding=tuple(int(s) for s in layer.padding),
                    dilation=tuple(int(s) for s in layer.dilation),
                    groups=int(layer.groups), bias=b,
                    metadata={} if has_bias else {"spikelfp_bias": False},
                )
                syn_name = f"layer{i}_conv2d"
            neuron = _neuron_node(nir, info, dt, layer.reset == "subtract")
            neuron_name = f"layer{i}_{type(neuron).__name__.lower()}"
            nodes[syn_name], nodes[neuron_name] = syn, neuron
            order += [syn_name, neuron_name]
            V, bV = layer.recurrent_parameters() if hasattr(layer, "recurrent_parameters") else (None, None)
            if V is not None:  # the loop neuron -> rec_affine -> neuron (input s_{t-1})
                v = to_numpy(V).astype(fd)
                bv = to_numpy(bV).astype(fd) if bV is not None else None
                rec_name = f"layer{i}_rec_{'affine' if bv is not None else 'linear'}"
                nodes[rec_name] = (nir.Affine(weight=v, bias=bv) if bv is not None
                                   else nir.Linear(weight=v))
                loops += [(neuron_name, rec_name), (rec_name, neuron_name)]
        elif info.kind == "avgpool":
            k = np.array(layer.kernel_size, dtype=np.int64)
            s = np.array(layer.stride, dtype=np.int64)
            p = np.array(layer.padding, dtype=np.int64)
            if pooling == "avg":
                nodes[f"layer{i}_avgpool2d"] = nir.AvgPool2d(kernel_size=k, stride=s, padding=p)
                order.append(f"layer{i}_avgpool2d")
            else:
                nodes[f"layer{i}_sumpool2d"] = nir.SumPool2d(kernel_size=k, stride=s, padding=p)
                order.append(f"layer{i}_sumpool2d")
                pending = pending / float(k[0] * k[1])
                pending_from = i
        elif info.kind == "flatten":
            nd = len(info.in_shape)
            if layer.frame_dims > nd:
                raise ValueError(f"layer {i} (Flatten): frame_dims={layer.frame_dims} exceeds "
                                 f"the {nd} dimensions of its input {info.in_shape}")
            nodes[f"layer{i}_flatten"] = nir.Flatten(
                input_type={"input": np.array(info.in_shape)},
                start_dim=nd - layer.frame_dims, end_dim=-1,
            )
            order.append(f"layer{i}_flatten")
    if pending != 1.0:
        raise ValueError(
            f"pooling='sum' needs a synaptic layer after the pooling layer {pending_from} to "
            f"absorb its 1/(kh*kw); use pooling='avg' for this network"
        )
    nodes["output"] = nir.Output(output_type=np.array(infos[-1].out_shape))
    order.append("output")
    edges = [(a, b) for a, b in zip(order[:-1], order[1:])] + loops

    meta: Dict[str, Any] = {
        "producer": "spikelfp",
        "spikelfp_version": spikelfp_version(),
        "dt": dt,
        "discretization": "forward Euler: tau = dt/(1-beta), r = tau/dt, v_leak = 0 "
                          "(LIF); r = 1/dt (IF, beta == 1); CubaLIF: tau_mem = dt/(1-beta), "
                          "r = tau_mem/dt, tau_syn = dt/(1-alpha), w_in = tau_syn/dt; "
                          "spike if v > v_threshold",
        "pooling": pooling,
        "input_shape": np.array(infos[0].in_shape, dtype=np.int64),
    }
    if time_steps is not None:
        meta["time_steps"] = int(time_steps)
    if input_encoding is not None:
        meta["input_encoding"] = str(input_encoding)
    if subtract:
        meta["reset_mismatch"] = ("layers " + ",".join(str(i) for i in subtract) + ": "
                                  + RESET_NOTE)
    for key, value in (metadata or {}).items():
        if value is not None:
            meta[str(key)] = value
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def write_nir(network, path: PathLike, input_shape: Optional[Sequence[int]] = None,
              dt: float = DEFAULT_DT, *, force: bool = False, **kwargs):
    """Export ``network`` with :func:`to_nir` and write it to ``path`` (NIR's HDF5 file).

    The file is written to a temporary file and renamed, so an error leaves nothing behind.
    Raises FileExistsError if ``path`` exists and ``force`` is false. Returns the graph.
    """
    nir = _import_nir()
    check_output_path(path, force)
    graph = to_nir(network, input_shape, dt, _stacklevel=3, **kwargs)
    atomic_write(path, lambda tmp: nir.write(tmp, graph), force=force)
    return graph


# --------------------------------------------------------------------------------------------
# NIR -> spikelfp


def _as_float(v) -> Optional[float]:
    try:
        return float(np.asarray(v).reshape(-1)[0])
    except Exception:
        return None


def _meta_str(meta: Mapping[str, Any], key: str) -> Optional[str]:
    v = (meta or {}).get(key)
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO":
        v = v.reshape(-1)[0]
        return v.decode("utf8") if isinstance(v, bytes) else str(v)
    return str(v)


def _neuron_types(nir) -> tuple:
    return (nir.LIF, nir.IF, nir.CubaLIF)


def _recurrent_loops(nir, graph) -> Dict[str, str]:
    """``{neuron: synapse}`` for each recognised recurrent loop ``N -> R -> N``: N a LIF, IF or
    CubaLIF node, R an Affine or Linear node whose only incoming and only outgoing edge connect it
    to N. That is the loop :func:`to_nir` writes (``layer{i}_rec_affine``) and the one snnTorch's
    ``export_to_nir`` writes for RLeaky / RSynaptic (``<name>.lif <-> <name>.w_rec``)."""
    preds: Dict[str, List[str]] = {}
    succs: Dict[str, List[str]] = {}
    for a, b in graph.edges:
        succs.setdefault(a, []).append(b)
        preds.setdefault(b, []).append(a)
    loops: Dict[str, str] = {}
    for name, node in graph.nodes.items():
        if not isinstance(node, (nir.Affine, nir.Linear)):
            continue
        ins, outs = preds.get(name, []), succs.get(name, [])
        if len(ins) != 1 or ins != outs or ins[0] == name:
            continue
        if not isinstance(graph.nodes.get(ins[0]), _neuron_types(nir)):
            continue
        if ins[0] in loops:
            raise ValueError(f"NIR node {ins[0]!r} has two recurrent loops (through {loops[ins[0]]!r} "
                             f"and {name!r}); a spikelfp layer has one recurrent weight matrix")
        loops[ins[0]] = name
    return loops


def _find_cycle(nodes: Sequence[str], edges: Sequence[Tuple[str, str]]) -> Optional[List[str]]:
    """One directed cycle ``[a, b, ..., a]`` of the graph, or None (iterative depth-first search)."""
    succ: Dict[str, List[str]] = {}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
    state: Dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in nodes:
        if state.get(root):
            continue
        path, iters = [root], [iter(succ.get(root, []))]
        state[root] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(succ.get(nxt, [])))
    return None


def _chain(graph, loops: Optional[Mapping[str, str]] = None) -> List[str]:
    """Node names from the (single) Input to the (single) Output of a feed-forward chain; the
    synapses of the recognised recurrent ``loops`` (:func:`_recurrent_loops`) are left out."""
    nir = _import_nir()
    rec = set((loops or {}).values())
    nodes = [k for k in graph.nodes if k not in rec]
    edges = [(a, b) for a, b in graph.edges if a not in rec and b not in rec]
    cycle = _find_cycle(nodes, edges)
    if cycle is not None:
        raise ValueError(f"the NIR graph has a cycle {' -> '.join(repr(str(n)) for n in cycle)}; only the loop of one "
                         f"LIF/IF/CubaLIF node through one Affine/Linear node with no other edges (a "
                         f"recurrent layer) can be read into spikelfp")
    inputs = [k for k in nodes if isinstance(graph.nodes[k], nir.Input)]
    if len(inputs) != 1:
        raise ValueError(f"the NIR graph has {len(inputs)} Input nodes; exactly one is supported")
    succ: Dict[str, List[str]] = {}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
    order, seen, cur = [inputs[0]], {inputs[0]}, inputs[0]
    while not isinstance(graph.nodes[cur], nir.Output):
        nxt = succ.get(cur, [])
        if len(nxt) != 1:
            raise ValueError(
                f"NIR node {cur!r} has {len(nxt)} successors; only a feed-forward chain "
                f"Input -> ... -> Output (with recurrent layers) can be read into a spikelfp network")
        cur = nxt[0]
        seen.add(cur)
        order.append(cur)
    if len(seen) != len(nodes):
        extra = sorted(set(nodes) - seen)
        raise ValueError(f"NIR nodes {extra} are not on the Input -> Output chain; only a "
                         f"feed-forward chain can be read")
    return order


def _pair_of(v, name: str) -> Tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    if a.size == 1:
        return (int(a[0]), int(a[0]))
    if a.size == 2:
        return (int(a[0]), int(a[1]))
    raise ValueError(f"{name}={v!r} is not an int or a pair")


def _conv_padding(node) -> Tuple[int, int]:
    pad = node.padding
    if isinstance(pad, (str, bytes)):
        pad = pad.decode() if isinstance(pad, bytes) else pad
        if pad == "valid":
            return (0, 0)
        k = node.weight.shape[-2:]
        d = _pair_of(node.dilation, "dilation")
        tot = [d[j] * (k[j] - 1) for j in range(2)]
        if any(t % 2 for t in tot) or any(s != 1 for s in _pair_of(node.stride, "stride")):
            raise ValueError("Conv2d padding='same' with an even kernel or stride > 1 has no "
                             "symmetric zero padding in spikelfp")
        return (tot[0] // 2, tot[1] // 2)
    return _pair_of(pad, "padding")


def _read_graph(nir, graph_or_path):
    if isinstance(graph_or_path, (str, Path)):
        p = Path(graph_or_path)
        if not p.is_file():
            raise FileNotFoundError(f"NIR file {p} does not exist")
        graph = nir.read(str(p))
    else:
        graph = graph_or_path
    if not isinstance(graph, nir.NIRGraph):
        raise ValueError(f"expected a nir.NIRGraph or a path, got {type(graph).__name__}")
    return graph


def _graph_dt(graph, dt) -> float:
    gmeta = graph.metadata if isinstance(graph.metadata, dict) else {}
    if dt is None:
        dt = _as_float(gmeta.get("dt")) if gmeta.get("dt") is not None else DEFAULT_DT
    return _check_dt(dt)


def from_nir(graph_or_path, dt: Optional[float] = None, *, restore_reset: bool = False):
    """Read a NIR graph (object or file path) into a :class:`spikelfp.nn.Sequential`.

    Supported chain: Input -> [Affine|Linear|Conv2d -> LIF|IF|CubaLIF | AvgPool2d | SumPool2d |
    Flatten]... -> Output, where a dense LIF/IF/CubaLIF node may have a recurrent loop through one
    Affine/Linear node (``N -> R -> N``, R with no other edges: what :func:`to_nir` and snnTorch's
    ``export_to_nir`` write for recurrent layers). LIF/IF become LIFLinear/LIFConv2d,
    CubaLIF becomes CubaLIFLinear/CubaLIFConv2d (``alpha = 1 - dt/tau_syn``), a loop makes the
    layer a recurrent CubaLIFLinear (V, b_V from R; alpha = 0 for a LIF/IF). ``beta = 1 - dt/tau``
    (``tau_mem``); the input gain ``r dt/tau`` (times ``w_in dt/tau_syn`` for CubaLIF) and ``v_leak``
    are folded into the synapse(s) when the gain is not 1 or ``v_leak != 0`` (exact under forward
    Euler; a CubaLIF ``v_leak`` only where alpha = 0). A SumPool2d becomes an AvgPool2d with kh*kw
    folded into the next synapse. ``dt`` defaults to the graph's ``dt`` metadata, else 1e-4.
    ``v_reset`` must be 0; the reset is "zero" (NIR's semantics) unless ``restore_reset`` and the
    node records ``spikelfp_reset='subtract'``.

    Raises ValueError (one line) for nodes or structures with no spikelfp equivalent.
    """
    nir = _import_nir()
    graph = _read_graph(nir, graph_or_path)
    dt = _graph_dt(graph, dt)
    loops = _recurrent_loops(nir, graph)
    names = _chain(graph, loops)[1:-1]
    layers: List[torch.nn.Module] = []
    pending_sum = 1.0
    i = 0
    while i < len(names):
        name, node = names[i], graph.nodes[names[i]]
        if isinstance(node, (nir.Affine, nir.Linear, nir.Conv2d)):
            nxt_name = names[i + 1] if i + 1 < len(names) else None
            nxt = graph.nodes[nxt_name] if nxt_name is not None else None
            if not isinstance(nxt, _neuron_types(nir)):
                raise ValueError(
                    f"NIR node {name!r} ({type(node).__name__}) is not followed by a LIF/IF/CubaLIF "
                    f"node; a synapse without spiking neurons has no spikelfp equivalent")
            rec_name = loops.get(nxt_name)
            rec = (rec_name, graph.nodes[rec_name]) if rec_name is not None else None
            layers.append(_synaptic_layer(nir, name, node, nxt_name, nxt, dt, pending_sum,
                                          restore_reset, rec))
            pending_sum = 1.0
            i += 2
            continue
        layer, scale = _plain_layer(nir, name, node)
        layers.append(layer)
        pending_sum *= scale
        i += 1
    if pending_sum != 1.0:
        raise ValueError("a SumPool2d node is not followed by a synapse; spikelfp has only "
                         "average pooling, so the sum cannot be represented")
    if not layers:
        raise ValueError("the NIR graph has no computational nodes")
    return Sequential(*layers)


def _plain_layer(nir, name, node) -> Tuple[torch.nn.Module, float]:
    """A pooling or Flatten layer and the sum-pool factor kh*kw it leaves for the next synapse."""
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        k = _pair_of(node.kernel_size, "kernel_size")
        pool = AvgPool2d(k, _pair_of(node.stride, "stride"), _pair_of(node.padding, "padding"))
        return pool, (float(k[0] * k[1]) if isinstance(node, nir.SumPool2d) else 1.0)
    if isinstance(node, nir.Flatten):
        in_t = node.input_type.get("input") if node.input_type else None
        if in_t is None:
            raise ValueError(f"NIR Flatten node {name!r} has no input type")
        nd = len(np.asarray(in_t).reshape(-1))
        start = int(node.start_dim) % nd if nd else 0
        end = int(node.end_dim) % nd if nd else 0
        if end != nd - 1:
            raise ValueError(f"NIR Flatten node {name!r} flattens dims {start}..{end} of "
                             f"{nd}; spikelfp's Flatten only flattens trailing dimensions")
        return Flatten(frame_dims=nd - start), 1.0
    if isinstance(node, _neuron_types(nir)):
        raise ValueError(f"NIR node {name!r} ({type(node).__name__}) does not follow an "
                         f"Affine/Linear/Conv2d node; spikelfp neurons always sit behind "
                         f"a synapse")
    raise ValueError(f"NIR node {name!r} of type {type(node).__name__} has no spikelfp "
                     f"equivalent (supported: Affine, Linear, Conv2d, LIF, IF, CubaLIF, "
                     f"AvgPool2d, SumPool2d, Flatten)")


class _Dynamics(NamedTuple):
    """A NIR neuron in spikelfp's terms (float64 arrays of the neuron shape): the decays, and the
    gain and per-step leak that fold into the synapse(s)."""

    beta: np.ndarray
    alpha: Optional[np.ndarray]  # None: no current state (LIF / IF)
    gain: np.ndarray
    leak: np.ndarray


def _f64(v, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(v if v is not None else 0.0, dtype=np.float64), shape)


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> float:
    return float(np.asarray(arr)[bad].reshape(-1)[0])


def _membrane_decay(neuron_name, field: str, tau: np.ndarray, dt: float) -> np.ndarray:
    bad = ~np.isfinite(tau) | (tau <= 0) | (dt / np.where(tau > 0, tau, 1.0) >= 1)
    if np.any(bad):
        raise ValueError(f"NIR node {neuron_name!r}: {field}={_first_bad(tau, bad):g}; tau must exceed "
                         f"dt={dt:g} so that beta = 1 - dt/tau lies in (0, 1]; pass the dt it was "
                         f"made for")
    return 1.0 - dt / tau


def _current_decay(neuron_name, tau_syn: np.ndarray, dt: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1.0 - dt / tau_syn
    bad = ~np.isfinite(tau_syn) | (tau_syn <= 0) | ~(alpha >= 0) | ~(alpha < 1)
    if np.any(bad):
        raise ValueError(f"NIR node {neuron_name!r}: tau_syn={_first_bad(tau_syn, bad):g} gives alpha = "
                         f"1 - dt/tau_syn = {_first_bad(alpha, bad):g} (dt={dt:g}); spikelfp's current "
                         f"decay alpha must lie in [0, 1), i.e. dt <= tau_syn < inf")
    return alpha


def _dynamics(nir, neuron_name, neuron, dt: float, shape) -> _Dynamics:
    """beta = 1 - dt/tau (IF: 1), alpha = 1 - dt/tau_syn (CubaLIF), gain = r dt/tau
    (IF: r dt; CubaLIF: r dt/tau_mem * w_in dt/tau_syn), leak = dt/tau v_leak."""
    r = _f64(neuron.r, shape)
    if isinstance(neuron, nir.IF):
        return _Dynamics(np.ones(shape), None, r * dt, np.zeros(shape))
    if isinstance(neuron, nir.LIF):
        tau = _f64(neuron.tau, shape)
        beta = _membrane_decay(neuron_name, "tau", tau, dt)
        return _Dynamics(beta, None, r * dt / tau, dt / tau * _f64(neuron.v_leak, shape))
    tau = _f64(neuron.tau_mem, shape)
    beta = _membrane_decay(neuron_name, "tau_mem", tau, dt)
    tau_syn = _f64(neuron.tau_syn, shape)
    alpha = _current_decay(neuron_name, tau_syn, dt)
    leak = dt / tau * _f64(neuron.v_leak, shape)
    bad = (leak != 0) & (alpha != 0)
    if np.any(bad):
        raise ValueError(f"NIR node {neuron_name!r}: v_leak={_first_bad(_f64(neuron.v_leak, shape), bad):g} "
                         f"with a synaptic current (alpha={_first_bad(alpha, bad):g}) drives the membrane, "
                         f"not the current; spikelfp's CUBA neurons have no membrane bias (v_leak must be 0)")
    gain = (r * dt / tau) * (_f64(neuron.w_in, shape) * dt / tau_syn)
    return _Dynamics(beta, alpha, gain, leak)


def _neuron_shape(nir, neuron, kind: str, n_out: int) -> Tuple[int, ...]:
    """The neuron shape: that of the node's parameter arrays; a dense node whose parameters are
    all scalars (snnTorch writes ``v_threshold`` of shape (1,)) has one neuron per synapse output."""
    fields = ("v_threshold", "tau", "tau_mem", "tau_syn", "r", "w_in", "v_leak", "v_reset")
    arrays = [np.asarray(getattr(neuron, f)) for f in fields if getattr(neuron, f, None) is not None]
    shape = tuple(int(s) for s in np.broadcast_shapes(*[a.shape for a in arrays]))
    if kind == "dense" and int(np.prod(shape)) == 1:
        return (n_out,)
    return shape


def _reset_of(neuron_name, neuron, restore_reset: bool) -> str:
    v_reset = np.asarray(neuron.v_reset if neuron.v_reset is not None else 0.0)
    if np.any(v_reset != 0):
        raise ValueError(f"NIR node {neuron_name!r} resets to v_reset != 0 "
                         f"({float(v_reset[v_reset != 0].reshape(-1)[0]):g}); spikelfp resets to "
                         f"0 ('zero') or subtracts the threshold")
    nmeta = neuron.metadata if isinstance(neuron.metadata, dict) else {}
    if _meta_str(nmeta, "spikelfp_reset") != "subtract":
        return "zero"
    if restore_reset:
        return "subtract"
    warnings.warn(
        f"NIR node {neuron_name!r} records that it was trained with reset='subtract'; "
        f"reading it with NIR's reset-to-zero semantics (pass restore_reset=True to "
        f"get the original network back)", ResetMismatchWarning, stacklevel=4)
    return "zero"


def _synapse_arrays(nir, node, sum_scale: float):
    """(w, b, has_bias, float dtype) of an Affine/Linear/Conv2d node, kh*kw of a preceding sum
    pool multiplied into w."""
    fd = float_dtype(node.weight)
    w = np.asarray(node.weight, dtype=fd)
    has_bias = isinstance(node, (nir.Affine, nir.Conv2d))
    b = (np.asarray(node.bias, dtype=fd).reshape(-1) if has_bias
         else np.zeros(w.shape[0], dtype=fd))
    if isinstance(node, nir.Conv2d):
        smeta = node.metadata if isinstance(node.metadata, dict) else {}
        if smeta.get("spikelfp_bias") is not None and not bool(np.asarray(smeta["spikelfp_bias"])):
            if np.all(b == 0):
                has_bias = False
    if sum_scale != 1.0:
        w = (w * fd.type(sum_scale)).astype(fd)
    return w, b, has_bias, fd


def _recurrent_arrays(nir, rec, kind: str, name, neuron_name, n: int, fd):
    """(V, b_V or None) of the loop synapse ``rec = (name, node)``, or None without a loop."""
    if rec is None:
        return None
    rec_name, node = rec
    if kind != "dense":
        raise ValueError(f"NIR node {neuron_name!r} after the Conv2d node {name!r} has a recurrent "
                         f"loop through {rec_name!r}; spikelfp has recurrent weights only in dense layers")
    V = np.asarray(node.weight, dtype=fd)
    if V.shape != (n, n):
        raise ValueError(f"NIR node {rec_name!r}: recurrent weight of shape {V.shape} does not map the "
                         f"{n} neurons of {neuron_name!r} to themselves")
    bV = np.asarray(node.bias, dtype=fd).reshape(-1) if isinstance(node, nir.Affine) else None
    return V, bV


def _fold(name, neuron_name, conv: bool, dyn: _Dynamics, w, b, has_bias, rec, fd):
    """Multiply the input gain into W, b (and V, b_V) and add the leak to b, when needed."""
    fold_gain = not np.allclose(dyn.gain, 1.0, rtol=1e-6, atol=0.0)
    fold_leak = bool(np.any(dyn.leak != 0))
    if not (fold_gain or fold_leak):
        return w, b, has_bias, rec
    if conv:
        g_c = dyn.gain.reshape(dyn.gain.shape[0], -1)
        l_c = dyn.leak.reshape(dyn.leak.shape[0], -1)
        if np.any(g_c != g_c[:, :1]) or np.any(l_c != l_c[:, :1]):
            raise ValueError(
                f"NIR node {neuron_name!r}: its input gain or v_leak varies within a channel; it "
                f"cannot be folded into the per-channel weights and bias of {name!r}")
        g, lk = g_c[:, 0], l_c[:, 0]
    else:
        g, lk = dyn.gain.reshape(-1), dyn.leak.reshape(-1)
    w = (w * g.reshape((-1,) + (1,) * (w.ndim - 1))).astype(fd)
    b = (b * g + lk).astype(fd)
    if rec is not None:
        V, bV = rec
        rec = ((V * g.reshape(-1, 1)).astype(fd), (bV * g).astype(fd) if bV is not None else None)
    return w, b, has_bias or fold_leak, rec


def _recorded(nmeta: Mapping[str, Any], key: str, value: np.ndarray) -> np.ndarray:
    """The exact decay spikelfp recorded in the node's metadata (``spikelfp_beta`` /
    ``spikelfp_alpha``) when it agrees with the one computed from the time constants."""
    exact = nmeta.get(key)
    if exact is None:
        return value
    exact = np.asarray(exact, dtype=np.float64)
    if exact.shape == value.shape and np.allclose(exact, value, rtol=0, atol=1e-12):
        return exact
    return value


def _build_layer(nir, name, node, kind, w, has_bias, reset, params, rec, tdt):
    """The spikelfp layer; ``params`` = (beta, threshold, alpha or None) as tensors."""
    beta_p, theta_p, alpha_p = params
    cuba = alpha_p is not None or rec is not None
    alpha = alpha_p if alpha_p is not None else 0.0
    if kind == "dense":
        if w.ndim != 2:
            raise ValueError(f"NIR node {name!r}: weight of shape {w.shape} is not a matrix")
        kw = dict(bias=has_bias, beta=beta_p, threshold=theta_p, reset=reset, dtype=tdt)
        if not cuba:
            return LIFLinear(w.shape[1], w.shape[0], **kw)
        return CubaLIFLinear(w.shape[1], w.shape[0], alpha=alpha, recurrent=rec is not None,
                             recurrent_bias=rec is not None and rec[1] is not None, **kw)
    if w.ndim != 4:
        raise ValueError(f"NIR node {name!r}: Conv2d weight of shape {w.shape} is not 4-D")
    kw = dict(kernel_size=tuple(int(k) for k in w.shape[-2:]),
              stride=_pair_of(node.stride, "stride"), padding=_conv_padding(node),
              dilation=_pair_of(node.dilation, "dilation"), groups=int(node.groups),
              bias=has_bias, beta=beta_p, threshold=theta_p, reset=reset, dtype=tdt)
    if cuba:
        return CubaLIFConv2d(w.shape[1] * int(node.groups), w.shape[0], alpha=alpha, **kw)
    return LIFConv2d(w.shape[1] * int(node.groups), w.shape[0], **kw)


def _synaptic_layer(nir, name, node, neuron_name, neuron, dt, sum_scale, restore_reset, rec=None):
    """The spikelfp layer of a synapse node followed by a neuron node (``rec``: the recurrent loop
    ``(name, Affine|Linear node)`` of the neuron, or None)."""
    w, b, has_bias, fd = _synapse_arrays(nir, node, sum_scale)
    kind = "conv" if isinstance(node, nir.Conv2d) else "dense"
    out_shape = _neuron_shape(nir, neuron, kind, w.shape[0])
    if kind == "dense" and out_shape != (w.shape[0],):
        raise ValueError(f"NIR node {neuron_name!r} has shape {out_shape}, but {name!r} "
                         f"has {w.shape[0]} outputs")
    reset = _reset_of(neuron_name, neuron, restore_reset)
    dyn = _dynamics(nir, neuron_name, neuron, dt, out_shape)
    V = _recurrent_arrays(nir, rec, kind, name, neuron_name, w.shape[0], fd)
    w, b, has_bias, V = _fold(name, neuron_name, kind == "conv", dyn, w, b, has_bias, V, fd)

    nmeta = neuron.metadata if isinstance(neuron.metadata, dict) else {}
    beta = _recorded(nmeta, "spikelfp_beta", dyn.beta)
    theta = _f64(neuron.v_threshold, out_shape)
    tdt = torch_dtype(fd)

    def param(arr):
        return torch.from_numpy(np.array(collapse_neuron_param(arr.astype(fd), kind)))

    alpha_p = None
    if dyn.alpha is not None:
        alpha_p = param(_recorded(nmeta, "spikelfp_alpha", dyn.alpha))
    beta_p, theta_p = param(beta), param(theta)
    layer = _build_layer(nir, name, node, kind, w, has_bias, reset, (beta_p, theta_p, alpha_p), V, tdt)
    set_neuron_params(layer, beta_p, theta_p)
    with torch.no_grad():
        if alpha_p is not None:
            layer.alpha = alpha_p.detach().clone().to(tdt)
        layer.weight.copy_(torch.from_numpy(w))
        if has_bias:
            layer.bias.copy_(torch.from_numpy(b))
        if V is not None:
            layer.recurrent_weight.copy_(torch.from_numpy(V[0]))
            if V[1] is not None:
                layer.recurrent_bias.copy_(torch.from_numpy(V[1]))
    return layer
