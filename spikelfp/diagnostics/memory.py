"""Peak memory of one call: the allocator's peak on CUDA, the profiler's allocation record on CPU.

CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before.
CPU: torch keeps no allocator statistics there, so the call runs under ``torch.profiler`` with
``profile_memory=True``; the memory each top-level operator allocates (positive) or frees
(negative) is summed in start order and the running maximum is the peak. This counts tensors
alive between operators (a kept trace, buffers), not scratch space an operator frees before it
returns, and it is the same measure for every trainer, which is what comparisons need.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Callable

import torch


def peak_memory(fn: Callable[[], object], device="cpu") -> int:
    """Bytes allocated at the peak of ``fn()`` above what was allocated before it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _quiet(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.events() if e.cpu_parent is None and e.cpu_memory_usage != 0]
    events.sort(key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.cpu_memory_usage
        peak = max(peak, current)
    return int(peak)


@contextlib.contextmanager
def _quiet():
    """Silence the profiler's start/stop lines on stderr (written by its C++ side)."""
    try:
        fd = os.dup(2)
    except OSError:  # pragma: no cover
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)
