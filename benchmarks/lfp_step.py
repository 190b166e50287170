#!/usr/bin/env python
"""Speed of one full LFP training step next to snnTorch BPTT on the same LIF MLP.

Not run by CI. Usage (from the repository root)::

    python benchmarks/lfp_step.py                       # CPU or CUDA (auto), T = 15 and 25
    python benchmarks/lfp_step.py --device cpu --threads 2 --repeats 40 --json /tmp/lfp_step.json

What is timed, per T (784-1000-10 LIF MLP, beta 0.9, threshold 1, reset subtract, batch B,
constant input: one [B, 784] frame fed at every step):

* ``spikelfp LFP step``: ``opt.zero_grad(); lfp.step(x, y, steps=T); opt.step()`` with the
  default LFP (epsilon rule, sequence reward, step-scope max-abs) and Adam (for every method
  as ``spikelfp train`` makes it: torch's fused kernel where available), the forward records
  compact (``net.run(x, T, compact=True)`` + ``lfp.backward`` + ``lfp.apply``: uint8 spikes), the
  reverse scan fused (numba) where available.
* ``spikelfp LFP step, fused kernels off``: the same step with the compiled forward and reverse
  scans switched off (``spikelfp.core.fused.set_enabled(False)``, what ``SPIKELFP_FUSED=0``
  does: the torch loops), only when numba is importable (``--no-torchscan`` to skip).
* ``spikelfp LFP step, silent neurons not skipped`` (CPU): the same step with
  ``spikelfp.core.fused.set_skip_silent(False)`` (what ``SPIKELFP_SKIP_SILENT=0`` does): every
  hidden neuron computed, also those that never spiked in the batch (``--no-skip-row`` to skip).
* ``spikelfp forward``: ``net.run(x, steps=T, compact=True)`` under ``torch.no_grad()`` on the
  LFP step's own network, in the state its training has reached in that round (as the step's
  forward runs it).
* ``snnTorch BPTT step``: the network as snnTorch's tutorials write it (``nn.Linear`` +
  ``snn.Leaky(beta=0.9, spike_grad=surrogate.atan())``, a Python loop over T calling the layers
  once per step with the same input, ``SF.ce_count_loss()``, ``loss.backward()``, Adam).
* ``snnTorch BPTT step, fc1 hoisted`` (extra, not tutorial style): the same, but the constant
  first-layer current is computed once before the loop, as spikelfp does for a constant input.
* ``lfprop LFP step``: only if the ``lfprop`` package is importable (it is not a dependency).

All networks start from the same weights. Each round runs every method once (the order rotates
between rounds) on a batch from a small pool of synthetic MNIST-like frames (strokes on a -1
background, values in [-1, 1], seeded) with random labels; the reported figure is the median
over the rounds after warm-up rounds. On CUDA every timed call is bracketed by
``torch.cuda.synchronize()``.

Memory, labelled by what it measures:

* CPU, ``torch alloc peak``: the peak of the bytes held by torch's CPU allocator during one
  call, above what was live when the call started (from the profiler's allocation events; a
  second call is measured, so that blocks from before profiling do not distort it).
* CPU, ``RSS growth``: the process's peak resident set (VmHWM, reset through
  /proc/self/clear_refs; ru_maxrss if that is not possible) minus its resident set before the
  first full-size call, in a fresh process per method and T, over 3 calls after a batch-2
  warm-up (which creates the optimizer state). The child runs with fixed glibc malloc
  thresholds (MALLOC_MMAP_THRESHOLD_=65536) so that freed tensors leave the resident set; it
  still counts library scratch space and allocator overhead that torch does not see.
* CUDA, ``cuda alloc peak``: ``torch.cuda.max_memory_allocated`` during one call minus
  ``torch.cuda.memory_allocated`` before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quieten the profiler used for memory

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

import spikelfp  # noqa: E402
import spikelfp.nn as slnn  # noqa: E402
from spikelfp import LFP  # noqa: E402
from spikelfp.core import fused  # noqa: E402
from spikelfp.train.loop import make_optimizer  # noqa: E402

N_IN, N_HID, N_OUT, BETA = 784, 1000, 10, 0.9
POOL = 4  # batches in the data pool

LABELS = {
    "lfp_step": "spikelfp LFP step",
    "lfp_step_torchscan": "spikelfp LFP step, fused kernels off (SPIKELFP_FUSED=0)",
    "lfp_step_noskip": "spikelfp LFP step, silent neurons not skipped (SPIKELFP_SKIP_SILENT=0)",
    "forward": "spikelfp forward (no_grad run of the LFP net)",
    "snntorch_bptt": "snnTorch BPTT step (tutorial)",
    "snntorch_bptt_hoisted": "snnTorch BPTT step, fc1 hoisted",
    "lfprop_step": "lfprop LFP step",
}
try:
    import snntorch  # noqa: F401

    HAVE_SNNTORCH = True
except ImportError:
    HAVE_SNNTORCH = False


# ----------------------------------------------------------------------------- data


def mnist_like(n: int, gen: torch.Generator, chunk: int = 64) -> torch.Tensor:
    """``[n, 784]`` frames that look like normalized MNIST: a few smooth pen strokes with values
    up to 1 on a background of -1 (mean about -0.8, about 15 % ink)."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    grid = torch.stack([yy.flatten(), xx.flatten()], -1)  # [784, 2]
    out = []
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        strokes, length = 3, 10
        start = 14 + 3.5 * torch.randn(m, strokes, 1, 2, generator=gen)
        turn = torch.cumsum(0.5 * torch.randn(m, strokes, length, 1, generator=gen), 2)
        ang = torch.rand(m, strokes, 1, 1, generator=gen) * 6.2832 + turn
        step = 1.6 * torch.cat([torch.cos(ang), torch.sin(ang)], -1)
        pts = (start + torch.cumsum(step, 2)).clamp(4, 23).reshape(m, strokes * length, 2)
        d2 = ((grid[None, None] - pts[:, :, None]) ** 2).sum(-1)  # [m, points, 784]
        ink = torch.exp(-d2).sum(1).clamp(max=1.0)
        out.append(ink * 2 - 1)
    return torch.cat(out)


def make_pool(batch: int, device: torch.device, seed: int, n_batches: int = POOL):
    gen = torch.Generator().manual_seed(seed)
    xs = [mnist_like(batch, gen).to(device) for _ in range(n_batches)]
    ys = [torch.randint(0, N_OUT, (batch,), generator=gen).to(device) for _ in range(n_batches)]
    return xs, ys


# ----------------------------------------------------------------------------- networks


def make_spikelfp(seed: int, device: torch.device) -> slnn.Sequential:
    torch.manual_seed(seed)
    return slnn.Sequential(slnn.LIFLinear(N_IN, N_HID, beta=BETA),
                           slnn.LIFLinear(N_HID, N_OUT, beta=BETA)).to(device)


class TutorialSNN(nn.Module):
    """The 784-1000-10 LIF MLP the way snnTorch's tutorials write it (tutorial 5 style)."""

    def __init__(self, hoist_fc1: bool = False):
        super().__init__()
        import snntorch as snn
        from snntorch import surrogate

        spike_grad = surrogate.atan()
        self.fc1 = nn.Linear(N_IN, N_HID)
        self.lif1 = snn.Leaky(beta=BETA, spike_grad=spike_grad)
        self.fc2 = nn.Linear(N_HID, N_OUT)
        self.lif2 = snn.Leaky(beta=BETA, spike_grad=spike_grad)
        self.hoist_fc1 = hoist_fc1

    def forward(self, x: torch.Tensor, num_steps: int, hidden: Optional[list] = None):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        cur1 = self.fc1(x) if self.hoist_fc1 else None
        for _ in range(num_steps):
            if not self.hoist_fc1:
                cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
            if hidden is not None:
                hidden.append(spk1.detach())
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


def copy_into_snntorch(src: slnn.Sequential, dst: TutorialSNN) -> None:
    with torch.no_grad():
        dst.fc1.weight.copy_(src[0].weight)
        dst.fc1.bias.copy_(src[0].bias)
        dst.fc2.weight.copy_(src[1].weight)
        dst.fc2.bias.copy_(src[1].bias)


def try_lfprop(device: torch.device):
    """(factory, None) when lfprop is importable, else (None, reason)."""
    try:
        import lfprop  # noqa: F401
        from lfprop.model.spiking_networks import SmallLifMLP
        from lfprop.propagation.propagator_snn import LFPSNNEpsilonComposite
        from lfprop.rewards import reward_functions
    except Exception as exc:  # not installed (the usual case) or a changed layout
        return None, f"{type(exc).__name__}: {exc}"

    def factory(seed: int, T: int):
        # Written after lfprop's notebook minimal_example_spiking_nets (lfprop 1.0.0); not run
        # in this project's CI. Its own weights (not copied); optimizer Adam as for the others.
        torch.manual_seed(seed)
        model = SmallLifMLP(N_IN, N_OUT, beta=BETA, reset_mechanism="subtract",
                            surrogate_disable=False, spike_grad="step").to(device)
        composite = LFPSNNEpsilonComposite(epsilon=1e-6)
        reward_fn = reward_functions.SnnCorrectClassRewardSpikesRateCoded(device)
        opt = adam(model.parameters(), lr=1e-3)

        def step(x, y):
            model.train()
            model.reset()
            opt.zero_grad()
            with composite.context(model) as modified:
                inp = x.detach().requires_grad_(True)
                spk = torch.stack([modified(inp)[0] for _ in range(T)], dim=0)
                reward = reward_fn(spikes=spk, labels=y).detach() / T
                torch.autograd.grad((spk,), (inp,), grad_outputs=(reward,), retain_graph=False)
            for p in model.parameters():
                p.grad = -p.feedback
            opt.step()
            model.reset()

        return step

    return factory, None


# ----------------------------------------------------------------------------- methods


def adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam as ``spikelfp train`` makes it (torch's fused kernel where available), for every
    method alike."""
    return make_optimizer({"optimizer": "adam", "lr": lr, "weight_decay": 0.0, "momentum": 0.0},
                          params)


def adam_fused() -> bool:
    """Whether :func:`adam` gets torch's fused kernel here (CPU: torch >= 2.4)."""
    return bool(adam([torch.zeros(1, requires_grad=True)], 1e-3).defaults.get("fused"))


@torch.no_grad()
def compact_lfp_step(lfp: LFP, x, y, T: int) -> None:
    """``lfp.step(x, y, steps=T)`` with compact (uint8) forward records: the public
    ``run(compact=True)`` + ``LFP.backward`` + ``LFP.apply``."""
    trace = lfp.network.run(x, T, compact=True)
    lfp.apply(lfp.backward(trace, y).grads)


def build_methods(T: int, args, device: torch.device, lfprop_factory) -> Dict[str, Callable]:
    """Fresh networks (same initial weights) and one callable ``f(x, y)`` per method."""
    methods: Dict[str, Callable] = {}

    net = make_spikelfp(args.seed, device)
    lfp = LFP(net)
    opt = adam(net.parameters(), lr=1e-3)

    def lfp_step(x, y):
        opt.zero_grad()
        compact_lfp_step(lfp, x, y, T)
        opt.step()

    methods["lfp_step"] = lfp_step

    def switched_step(switch):
        """The LFP step on its own network (same initial weights) with ``switch(False)`` in
        force during each call."""
        vnet = make_spikelfp(args.seed, device)
        vlfp = LFP(vnet)
        vopt = adam(vnet.parameters(), lr=1e-3)

        def step(x, y):
            prev = switch(False)
            try:
                vopt.zero_grad()
                compact_lfp_step(vlfp, x, y, T)
                vopt.step()
            finally:
                switch(prev)

        step.net = vnet
        return step

    if args.torchscan and fused.enabled():  # the fused kernels off (the fallback path)
        methods["lfp_step_torchscan"] = switched_step(fused.set_enabled)
    if args.skip_row and fused.enabled() and device.type == "cpu":
        # every neuron computed, also those that never spiked in the batch
        methods["lfp_step_noskip"] = switched_step(fused.set_skip_silent)

    def forward(x, y):  # the LFP step's own network in its current state, run as the step runs it
        with torch.no_grad():
            net.run(x, steps=T, compact=True)

    methods["forward"] = forward

    variants = [("snntorch_bptt", False)] + ([("snntorch_bptt_hoisted", True)] if args.hoisted else [])
    if HAVE_SNNTORCH:
        import snntorch.functional as SF
    else:
        variants = []
    for key, hoist in variants:
        model = TutorialSNN(hoist_fc1=hoist).to(device)
        copy_into_snntorch(make_spikelfp(args.seed, device), model)
        sopt = adam(model.parameters(), lr=5e-4)
        loss_fn = SF.ce_count_loss()

        def bptt_step(x, y, model=model, sopt=sopt, loss_fn=loss_fn):
            spk_rec, _ = model(x, T)
            loss = loss_fn(spk_rec, y)
            sopt.zero_grad()
            loss.backward()
            sopt.step()

        methods[key] = bptt_step
        bptt_step.model = model  # for the spike-rate report

    lfp_step.net = net
    forward.net = net
    if lfprop_factory is not None:
        try:
            methods["lfprop_step"] = lfprop_factory(args.seed, T)
        except Exception as exc:
            print(f"lfprop: could not build the model ({type(exc).__name__}: {exc}); skipped")
    return methods


# ----------------------------------------------------------------------------- measurements


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(methods: Dict[str, Callable], xs, ys, device, warmup: int, repeats: int):
    """Interleaved rounds; returns ({key: [seconds per call]}, failures). ``times[k][i]`` is
    timed round i for every method that did not fail, so the lists are paired by round."""
    keys = list(methods)
    times: Dict[str, List[float]] = {k: [] for k in keys}
    failed: Dict[str, str] = {}
    for r in range(warmup + repeats):
        shift = r % len(keys)
        order = keys[shift:] + keys[:shift]
        x, y = xs[r % len(xs)], ys[r % len(ys)]
        for k in order:
            if k in failed:
                continue
            sync(device)
            t0 = time.perf_counter()
            try:
                methods[k](x, y)
            except Exception as exc:
                failed[k] = f"{type(exc).__name__}: {exc}"
                continue
            sync(device)
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times, failed


def _walk(nodes):
    for n in nodes:
        yield n
        yield from _walk(n.children)


def cpu_alloc_peak(fn: Callable, x, y) -> Optional[int]:
    """Peak bytes of torch's CPU allocator during one call of ``fn`` above the bytes live at its
    start (profiler allocation events; the second of two profiled calls is measured)."""
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile, record_function

        fn(x, y)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn(x, y)
            with record_function("bench::measured"):
                fn(x, y)
        nodes = list(_walk(prof.profiler.kineto_results.experimental_event_tree()))
        mark = next(n for n in nodes if n.name == "bench::measured")
        allocs = sorted((n for n in nodes if n.tag == _EventType.Allocation),
                        key=lambda n: n.start_time_ns)
        before = [a for a in allocs if a.start_time_ns < mark.start_time_ns]
        inside = [a for a in allocs if mark.start_time_ns <= a.start_time_ns <= mark.end_time_ns]
        if not before or not inside:
            return None
        live0 = before[-1].extra_fields.total_allocated
        return max(0, max(a.extra_fields.total_allocated for a in inside) - live0)
    except Exception as exc:  # private profiler API; report n/a rather than a wrong number
        print(f"(torch alloc peak not available: {type(exc).__name__}: {exc})")
        return None


def cuda_alloc_peak(fn: Callable, x, y, device) -> int:
    fn(x, y)
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn(x, y)
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_probe(args) -> None:
    """Child-process mode: peak RSS growth over 3 calls of one method (prints one JSON line)."""
    device = torch.device("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    T = args.steps[0]
    lfprop_factory = try_lfprop(device)[0] if args.rss_probe == "lfprop_step" else None
    methods = build_methods(T, args, device, lfprop_factory)
    fn = methods[args.rss_probe]
    gen = torch.Generator().manual_seed(args.seed + 1)
    tiny_x, tiny_y = mnist_like(2, gen), torch.randint(0, N_OUT, (2,), generator=gen)
    fn(tiny_x, tiny_y)  # code paths, optimizer state: not part of the per-step figure
    xs, ys = make_pool(args.batch, device, args.seed, n_batches=1)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        how = "VmHWM"
    except OSError:
        how = "ru_maxrss"
    base = _proc_status_kib("VmRSS")
    for _ in range(3):
        fn(xs[0], ys[0])
    if how == "VmHWM":
        peak = _proc_status_kib("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_kib": base, "peak_kib": peak, "how": how}))


def rss_growth(key: str, T: int, args) -> Optional[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--_rss-probe", key, "--steps", str(T),
           "--batch", str(args.batch), "--seed", str(args.seed), "--device", "cpu"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if not args.hoisted:
        cmd.append("--no-hoisted")
    if not args.torchscan:
        cmd.append("--no-torchscan")
    if not args.skip_row:
        cmd.append("--no-skip-row")
    # Fixed glibc thresholds: every large block is mmap-ed and handed back when freed, so RSS
    # follows the live memory instead of what malloc's adaptive threshold happens to keep.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True,
                             env=env).stdout
        res = json.loads(out.strip().splitlines()[-1])
        if res["base_kib"] is None or res["peak_kib"] is None:
            return None
        res["growth_mib"] = max(0, res["peak_kib"] - res["base_kib"]) / 1024
        return res
    except Exception as exc:
        print(f"(RSS probe for {key}, T={T} failed: {type(exc).__name__}: {exc})")
        return None


@torch.no_grad()
def spike_rates(methods: Dict[str, Callable], x, T: int) -> Dict[str, float]:
    """Hidden-layer spike rate (spikes per neuron per step) of each trained network on ``x``."""
    out = {}
    if "lfp_step" in methods:
        s = methods["lfp_step"].net.run(x, steps=T).records[0].spikes
        out["lfp_step"] = s.float().mean().item()
        out["lfp_live"] = (s.reshape(-1, s.shape[-1]).amax(0) > 0).float().mean().item()
    if "forward" in methods:
        out["forward"] = methods["forward"].net.run(x, steps=T).records[0].spikes.float().mean().item()
    for key in ("snntorch_bptt", "snntorch_bptt_hoisted"):
        if key in methods:
            hidden: list = []
            methods[key].model(x, T, hidden=hidden)
            out[key] = torch.stack(hidden).mean().item()
    return out


@torch.no_grad()
def same_spikes_at_init(x, T: int, seed: int, device) -> Dict[str, float]:
    """Fraction of equal spikes between spikelfp and the snnTorch tutorial net (same weights)."""
    net = make_spikelfp(seed, device)
    model = TutorialSNN().to(device)
    copy_into_snntorch(net, model)
    trace = net.run(x, steps=T)
    hidden: list = []
    out, _ = model(x, T, hidden=hidden)
    return {"hidden": (trace.records[0].spikes.float() == torch.stack(hidden)).float().mean().item(),
            "output": (trace.output == out).float().mean().item()}


# ----------------------------------------------------------------------------- report


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "spikelfp": spikelfp.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cpu_idle_fraction_start": cpu_idle_fraction(),
    }
    try:
        import snntorch

        info["snntorch"] = snntorch.__version__
    except Exception:
        info["snntorch"] = None
    return info


def cpu_idle_fraction(seconds: float = 1.0) -> Optional[float]:
    """Fraction of all CPUs' time that was idle over ``seconds`` (Linux /proc/stat)."""
    def read():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:8]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
        return (i1 - i0) / max(1, t1 - t0)
    except (OSError, ValueError):
        return None


def fmt_load(load) -> str:
    return "n/a" if not load else "/".join(f"{v:.2f}" for v in load)


def fmt(v, spec=".1f", none="n/a"):
    return none if v is None else format(v, spec)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, nargs="+", default=[15, 25], help="time steps T")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per T (default 40 on CPU, 100 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 5 / 20)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="write every number here")
    p.add_argument("--hoisted", action=argparse.BooleanOptionalAction, default=True,
                   help="also time snnTorch with fc1 computed once (default on)")
    p.add_argument("--skip-row", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: also time the LFP step with silent neurons not skipped")
    p.add_argument("--torchscan", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the LFP step with the fused scan off (default on, if numba)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="measure peak memory (default on)")
    p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: also measure RSS growth in fresh processes (default on)")
    p.add_argument("--_rss-probe", dest="rss_probe", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_probe:
        rss_probe(args)
        return 0
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("--device cuda: CUDA is not available", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    repeats = args.repeats if args.repeats is not None else (100 if cuda else 40)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 5)
    if not HAVE_SNNTORCH:
        print("WARNING: snntorch is not importable; the snnTorch rows are skipped "
              "(pip install snntorch for the comparison)")

    info = machine(device)
    t_start = time.perf_counter()
    print(f"# LFP training step benchmark: {N_IN}-{N_HID}-{N_OUT} LIF MLP, beta {BETA}, "
          f"batch {args.batch}, T {args.steps}")
    print(f"device: {device}" + (f" ({info['gpu']})" if info["gpu"] else "")
          + f" | CPU: {info['cpu_model']}, {info['cpu_count']} cores | torch {info['torch']}, "
          f"{info['torch_threads']} threads | snntorch {info['snntorch']} | spikelfp "
          f"{info['spikelfp']}")
    print(f"timing: median over {repeats} interleaved rounds after {warmup} warm-up rounds; "
          f"Adam for every method, fused: {adam_fused()}")

    lfprop_factory, why = try_lfprop(device)
    if lfprop_factory is None:
        print(f"lfprop: not importable, row skipped ({why})")

    xs, ys = make_pool(args.batch, device, args.seed)
    results = {"machine": info, "config": {
        "layers": [N_IN, N_HID, N_OUT], "beta": BETA, "batch": args.batch, "steps": args.steps,
        "repeats": repeats, "warmup": warmup, "seed": args.seed,
        "input": "synthetic MNIST-like strokes in [-1, 1], constant over T; random labels",
        "optimizers": {"lfp_step": "Adam lr 1e-3", "snntorch": "Adam lr 5e-4",
                       "lfprop_step": "Adam lr 1e-3", "fused": adam_fused()},
    }, "lfprop": None if lfprop_factory is None else "importable", "lfprop_skip_reason": why,
        "input_mean": statistics.fmean(x.mean().item() for x in xs), "runs": {}}

    rows, ratio_rows = [], []
    for T in args.steps:
        methods = build_methods(T, args, device, lfprop_factory)
        rates0 = spike_rates(methods, xs[0], T)
        same = same_spikes_at_init(xs[0], T, args.seed, device) if HAVE_SNNTORCH else None
        c0, w0 = os.times(), time.perf_counter()
        times, failed = time_methods(methods, xs, ys, device, warmup, repeats)
        c1, w1 = os.times(), time.perf_counter()
        cpu_per_wall = ((c1.user + c1.system) - (c0.user + c0.system)) / (w1 - w0)
        for k, msg in failed.items():
            print(f"{LABELS[k]} (T={T}) failed and was dropped: {msg}")
        rates1 = spike_rates(methods, xs[0], T)
        run = {"spike_rate_hidden_init": rates0, "spike_rate_hidden_after": rates1,
               "equal_spikes_spikelfp_vs_snntorch_at_init": same,
               "process_cpu_s_per_wall_s_while_timing": cpu_per_wall, "methods": {}}
        for k, ts in times.items():
            if not ts:
                continue
            ts_sorted = sorted(ts)
            q = statistics.quantiles(ts_sorted, n=4) if len(ts) >= 2 else [ts[0]] * 3
            med = statistics.median(ts)
            entry = {"label": LABELS[k], "median_s": med, "p25_s": q[0], "p75_s": q[2],
                     "min_s": ts_sorted[0], "samples_per_s": args.batch / med, "n": len(ts),
                     "times_s": ts}
            if args.memory:
                if cuda:
                    entry["cuda_alloc_peak_mib"] = cuda_alloc_peak(methods[k], xs[0], ys[0], device) / 2**20
                else:
                    peak = cpu_alloc_peak(methods[k], xs[0], ys[0])
                    entry["torch_cpu_alloc_peak_mib"] = None if peak is None else peak / 2**20
                    if args.rss:
                        rss = rss_growth(k, T, args)
                        entry["rss_growth_mib"] = None if rss is None else rss["growth_mib"]
                        entry["rss_probe"] = rss
            run["methods"][k] = entry
        m = run["methods"]
        ratios = {}
        if "lfp_step" in m and "forward" in m:
            ratios["lfp_step_over_forward"] = m["lfp_step"]["median_s"] / m["forward"]["median_s"]
        for k in ("snntorch_bptt", "snntorch_bptt_hoisted", "lfprop_step"):
            if "lfp_step" in m and k in m:
                ratios[f"lfp_speed_over_{k}"] = m[k]["median_s"] / m["lfp_step"]["median_s"]
        # Paired by round (the methods of one round ran back to back): less sensitive to load
        # that changes slowly during the run. Reported next to the ratio of medians.
        if "lfp_step" in m and "lfp_step_torchscan" in m:
            ratios["fused_speedup"] = m["lfp_step_torchscan"]["median_s"] / m["lfp_step"]["median_s"]
        if "lfp_step" in m and "lfp_step_noskip" in m:
            ratios["skip_speedup"] = m["lfp_step_noskip"]["median_s"] / m["lfp_step"]["median_s"]
        paired = {}
        for name, (num, den) in {"lfp_step_over_forward": ("lfp_step", "forward"),
                                 "lfp_speed_over_snntorch_bptt": ("snntorch_bptt", "lfp_step"),
                                 "lfp_speed_over_snntorch_bptt_hoisted":
                                     ("snntorch_bptt_hoisted", "lfp_step"),
                                 "fused_speedup": ("lfp_step_torchscan", "lfp_step"),
                                 "skip_speedup": ("lfp_step_noskip", "lfp_step")}.items():
            if num in m and den in m and len(times[num]) == len(times[den]):
                paired[name] = statistics.median(a / b for a, b in zip(times[num], times[den]))
        run["ratios_paired_median"] = paired
        run["ratios"] = ratios
        results["runs"][str(T)] = run
        rows.append((T, run))
        ratio_rows.append((T, ratios, rates0, rates1, same))

    mem_cols = (["cuda alloc peak (MiB)"] if cuda else ["torch alloc peak (MiB)", "RSS growth (MiB)"]) \
        if args.memory else []
    print()
    print("| T | method | ms / step (median) | IQR (ms) | samples/s | " + " | ".join(mem_cols)
          + (" |" if mem_cols else "|"))
    print("|---:|---|---:|---:|---:|" + "---:|" * len(mem_cols))
    for T, run in rows:
        for k, e in run["methods"].items():
            cells = [str(T), e["label"], f"{e['median_s'] * 1e3:.1f}",
                     f"{e['p25_s'] * 1e3:.1f}-{e['p75_s'] * 1e3:.1f}", f"{e['samples_per_s']:.0f}"]
            if args.memory:
                if cuda:
                    cells.append(fmt(e.get("cuda_alloc_peak_mib")))
                else:
                    cells.append(fmt(e.get("torch_cpu_alloc_peak_mib")))
                    cells.append(fmt(e.get("rss_growth_mib")) if args.rss else "off")
            print("| " + " | ".join(cells) + " |")
    print()
    print("| T | LFP step / forward (target <= 3.0) | LFP speed / snnTorch BPTT (target >= 5) "
          "| LFP speed / snnTorch fc1 hoisted (target >= 3) | fused kernels speed-up of the step "
          "| silent-neuron skipping speed-up | LFP memory / BPTT (target <= 1) "
          "| hidden spike rate init (LFP / BPTT after) | LFP hidden neurons spiking init -> after |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for T, r, r0, r1, same in ratio_rows:
        pr = results["runs"][str(T)]["ratios_paired_median"]

        def both(key):
            v, pv = r.get(key), pr.get(key)
            return "n/a" if v is None else f"{v:.2f}x" + ("" if pv is None else f" (paired {pv:.2f}x)")

        a = r.get("lfp_step_over_forward")
        b = r.get("lfp_speed_over_snntorch_bptt")
        c = r.get("lfp_speed_over_snntorch_bptt_hoisted")
        verdict_a = "" if a is None else (" met" if a <= 3.0 else " NOT met")
        verdict_b = "" if b is None else (" met" if b >= 5 else " NOT met")
        verdict_c = "" if c is None else (" met" if c >= 3 else " NOT met")
        mm = results["runs"][str(T)]["methods"]
        mem = "n/a"
        for key, what in (("cuda_alloc_peak_mib", "alloc"), ("torch_cpu_alloc_peak_mib", "alloc"),
                          ("rss_growth_mib", "RSS")):
            lm = mm.get("lfp_step", {}).get(key)
            bms = [mm[k][key] for k in ("snntorch_bptt", "snntorch_bptt_hoisted")
                   if mm.get(k, {}).get(key)]
            bm = min(bms) if bms else None
            if lm is not None and bm:
                part = f"{what} {lm / bm:.2f}" + (" met" if lm <= bm else " NOT met")
                mem = part if mem == "n/a" else f"{mem}; {part}"
        rate = (f"{r0.get('forward', float('nan')):.3f} ({r1.get('lfp_step', float('nan')):.3f} / "
                + (f"{r1['snntorch_bptt']:.3f})" if "snntorch_bptt" in r1 else "n/a)"))
        print(f"| {T} | {both('lfp_step_over_forward')}{verdict_a} | "
              f"{both('lfp_speed_over_snntorch_bptt')}{verdict_b} | "
              f"{both('lfp_speed_over_snntorch_bptt_hoisted')}{verdict_c} | "
              f"{both('fused_speedup')} | {both('skip_speedup')} | {mem} | {rate} | "
              f"{r0.get('lfp_live', float('nan')):.3f} -> {r1.get('lfp_live', float('nan')):.3f} |")
    print()
    print("ms / step: wall time of one call (CUDA: synchronized). samples/s = batch / median.")
    print("LFP speed / snnTorch = snnTorch median time / LFP step median time; 'paired' is the "
          "median over rounds of the same ratio taken within each round. Fused kernels speed-up = "
          "step time with SPIKELFP_FUSED=0 / step time; silent-neuron skipping speed-up = step time "
          "with SPIKELFP_SKIP_SILENT=0 / step time. LFP memory / BPTT: against the smaller of the two "
          "snnTorch forms.")
    if args.memory:
        if cuda:
            print("cuda alloc peak: max_memory_allocated during one call minus memory_allocated before it.")
        else:
            print("torch alloc peak: peak of torch's CPU allocator during one call above what was live "
                  "at its start (profiler events).")
            if args.rss:
                print("RSS growth: peak RSS (VmHWM) minus RSS before, 3 calls in a fresh process after a "
                      "batch-2 warm-up, glibc mmap threshold fixed at 64 KiB.")
    print("hidden spike rate: spikes per hidden neuron per step on batch 0, at init (all nets equal) and "
          "after the timed rounds (weights have been trained on random labels). LFP hidden neurons "
          "spiking: the share of hidden neurons with a spike in batch 0 (the others get no LFP "
          "feedback, and the CPU paths leave them out: 'silent neurons not skipped' computes them).")
    if HAVE_SNNTORCH:
        eq = ", ".join(f"T={T}: hidden {s['hidden']:.4f}, output {s['output']:.4f}"
                       for T, _, _, _, s in ratio_rows)
        print(f"spikelfp vs snnTorch spikes equal at init (fraction): {eq}")
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else None
    results["machine"]["loadavg_end"] = load1
    util = ", ".join(f"T={T}: {run['process_cpu_s_per_wall_s_while_timing']:.2f}" for T, run in rows)
    print(f"load average (1/5/15 min) at start {fmt_load(info['loadavg_start'])}, at end "
          f"{fmt_load(load1)}; this process's CPU s per wall s while timing: {util} "
          f"(torch threads {info['torch_threads']})")
    idle0 = info["cpu_idle_fraction_start"]
    idle1 = cpu_idle_fraction()
    results["machine"]["cpu_idle_fraction_end"] = idle1
    print(f"CPU idle just before the run {fmt(None if idle0 is None else 100 * idle0, '.0f')} %, "
          f"just after {fmt(None if idle1 is None else 100 * idle1, '.0f')} %")
    if (idle0 is not None and idle0 < 0.9) or (idle1 is not None and idle1 < 0.9):
        print("WARNING: other processes were using the CPU (idle < 90 % before or after the run); "
              "they compete for the cores and inflate the times.")
    print(f"input mean {results['input_mean']:.3f}; total benchmark time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        results["total_s"] = time.perf_counter() - t_start
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"JSON: {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
