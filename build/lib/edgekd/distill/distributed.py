"""torchrun support: detect the process group from the environment and shard epochs like
`DistributedSampler` (pad the shuffled order to a multiple of the world size, rank r takes every
world-th index from r), so N processes with batch B step through the same samples as one
process with batch N*B."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    world_size: int = 1
    rank: int = 0
    owns_group: bool = False  # this run created the process group and must destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes checkpoints and caches."""
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR/PORT), if any."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_world_size(), dist.get_rank(), owns_group=False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_world_size(), dist.get_rank(), owns_group=True)


def teardown(info: DistInfo) -> None:
    """Leave the process group this run created (no barrier: after an error other ranks may be gone)."""
    if info.owns_group:
        dist.destroy_process_group()


def epoch_batches(n: int, *, batch_size: int, seed: int, epoch: int, info: DistInfo) -> list[np.ndarray]:
    """This rank's batches for `epoch`: a seeded permutation, sharded, cut into batches. A lone
    trailing sample joins the batch before it (BatchNorm cannot train on one sample)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if info.enabled:
        padded = -(-n // info.world_size) * info.world_size
        order = np.resize(order, padded)[info.rank::info.world_size]  # repeats the order's head as padding
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """Whether the loss is finite on every rank (so all ranks stop together)."""
    ok = torch.tensor([float(torch.isfinite(value.detach()).all())])
    if info.enabled:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    if not info.enabled or not values:
        return values
    packed = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(packed)
    return dict(zip(values, (packed / info.world_size).tolist()))


def sync_buffers(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) everywhere, so every rank validates the same model."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
