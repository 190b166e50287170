"""Data-parallel training on ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc-per-node N -m spikelfp train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT`` set; :func:`setup` joins the process
group (``gloo`` on CPU, ``nccl`` on CUDA, one GPU per local rank). Every epoch's global batches
are the single-process batches (the same seeded permutation); process r takes the r-th of
``world`` contiguous chunks of each (:func:`shard`). After each trainer step the gradients are
averaged over the global batch in one all-reduce of one flat buffer (:func:`average_gradients`),
so the parameter update equals the single-process update on the global batch. Only rank 0
writes the run folder. Evaluation is sharded and its counts are summed (:func:`all_reduce_sum`).
"""

from __future__ import annotations

import os
from typing import Iterable, List, NamedTuple, Optional

import torch
import torch.distributed as dist

from .errors import ConfigError

Tensor = torch.Tensor


class DistInfo(NamedTuple):
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def env_world() -> int:
    """WORLD_SIZE from the environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def setup(device_name: str) -> DistInfo:
    """Join the process group torchrun describes (idempotent); SINGLE when not launched by it."""
    world = env_world()
    if world <= 1:
        return SINGLE
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda and torch.cuda.device_count() == 0:
        raise ConfigError("device 'cuda' was asked for under torchrun but no GPU is visible; "
                          "use --device cpu (gloo)")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """The device of this process: cuda:LOCAL_RANK for CUDA under torchrun."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return device


def shard(batch: List[int], info: DistInfo) -> List[int]:
    """This process's contiguous chunk of one global batch (chunks differ by at most one)."""
    if not info.enabled:
        return batch
    n, w, r = len(batch), info.world, info.rank
    lo, hi = r * n // w, (r + 1) * n // w
    return batch[lo:hi]


def average_gradients(params: Iterable[torch.nn.Parameter], n_local: int, info: DistInfo) -> None:
    """Make every ``p.grad`` the global-batch mean: each process's grad (a mean over its
    ``n_local`` samples) is weighted by ``n_local``, all processes' sums are added in ONE
    all-reduce of one flat buffer in the parameters' dtype (with ``n_local`` appended), then
    divided by the global count: 4 bytes per parameter in float32. A parameter without a grad on
    this process counts as zero."""
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    ref = params[0]
    flat = weighted_mean(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                                    .reshape(-1).to(ref.dtype) for p in params]), n_local)
    offset = 0
    for p in params:
        k = p.numel()
        g = flat[offset:offset + k].view_as(p).to(p.dtype)
        offset += k
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def weighted_mean(values: Tensor, n_local: int) -> Tensor:
    """The mean over the global batch of per-process batch means ``values`` (a flat tensor):
    ``sum_r n_r values_r / sum_r n_r`` in ONE all-reduce (the count rides along as one more
    element). Identity on one process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    flat = torch.cat([values.reshape(-1), values.new_ones(1)]).mul_(n_local)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return flat[:-1] / flat[-1]


def all_gather_rows(index: Tensor, rows: Tensor):
    """Every process's ``(index [n_r], rows [n_r, ...])``, concatenated (identity on one process):
    per-sample state such as F3's error store stays the same on every process. The chunks may
    differ in size (padded with index -1, dropped)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return index, rows
    w = dist.get_world_size()
    n = torch.tensor([index.numel()], device=index.device)
    sizes = [torch.zeros_like(n) for _ in range(w)]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    pad_i = torch.full((m,), -1, dtype=index.dtype, device=index.device)
    pad_i[: index.numel()] = index
    pad_r = rows.new_zeros((m, *rows.shape[1:]))
    pad_r[: rows.shape[0]] = rows
    all_i = [torch.empty_like(pad_i) for _ in range(w)]
    all_r = [torch.empty_like(pad_r) for _ in range(w)]
    dist.all_gather(all_i, pad_i)
    dist.all_gather(all_r, pad_r)
    i, r = torch.cat(all_i), torch.cat(all_r)
    keep = i >= 0
    return i[keep], r[keep]


def all_reduce_max(t: Tensor) -> Tensor:
    """The maximum of ``t`` over all processes (identity on one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """The sum of ``t`` over all processes (float64 for exact counts)."""
    if not info.enabled:
        return t
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = t.to(device=dev, dtype=torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def broadcast_text(text: Optional[str], info: DistInfo) -> str:
    """Rank 0's string on every process (e.g. the run folder)."""
    if not info.enabled:
        return text or ""
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
