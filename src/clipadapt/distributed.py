"""Several processes under torchrun: sharded seeded batches, gradients averaged over the global batch, rank 0 writes.

`torchrun --nproc_per_node N -m clipadapt.cli train ...` starts N copies of the command. Each draws
the same global batches as a single process would (the same seeded shuffle over the whole training
set), takes its slice of every batch, and after the backward pass the gradients are summed across
processes weighted by slice size — exactly what DistributedDataParallel's all-reduce computes, so
the update is the single-process update on the global batch. The batch size and learning rate of
the config are therefore the global ones. Only rank 0 writes files and evaluates.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader


def world_size() -> int:
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and evaluates."""
    return rank() == 0


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns the device this rank uses."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    on_cuda = device.startswith("cuda")
    dist.init_process_group(backend="nccl" if on_cuda else "gloo", init_method="env://")
    if on_cuda:  # one GPU per process on each node
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if world_size() > 1:
        dist.barrier()


def global_batches(n: int, batch_size: int, seed: int, drop_last: bool) -> list[list[int]]:
    """The index batches a single process's seeded shuffling loader draws (engine's make_loader)."""
    loader = DataLoader(
        range(n),
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )
    return [b.tolist() for b in loader]


def my_slice(batch: list[int]) -> list[int]:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    w, r = world_size(), rank()
    size, extra = divmod(len(batch), w)
    start = r * size + min(r, extra)
    return batch[start : start + size + (1 if r < extra else 0)]


def average_gradients(params: list[torch.nn.Parameter], local: int, total: int) -> None:
    """Turn each rank's mean-over-its-slice gradient into the mean over the global batch, on every rank."""
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]) * (local / total)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over every rank (each rank gets the sum); itself in one process."""
    if world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: torch.Tensor) -> bool:
    """Whether `flag` (a 0-d tensor) is nonzero on any rank; every rank gets the same answer."""
    if world_size() == 1:
        return bool(flag)
    flag = flag.to(torch.int32).reshape(1).clone()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def shutdown() -> None:
    """Leave the process group at the end of the command."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
