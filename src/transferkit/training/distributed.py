"""Data-parallel training under ``torchrun``: one process per device, gradients averaged by DDP.

``torchrun --nproc-per-node N -m transferkit.stages.train`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; the train stage sees them and trains the same way with three differences:
- each rank draws its share of every global batch (``torch.utils.data.DistributedSampler`` over
  the epoch's seeded order), so ``train.batch_size`` stays the global batch and N processes
  take the same optimiser steps as one;
- the trainable top runs in ``DistributedDataParallel`` (gloo on the CPU, nccl on CUDA);
- only rank 0 writes checkpoints, dvclive logs and the model; the others read the same
  checkpoint to resume. Validation runs on every rank (the same full split), so the ranks take
  the same early-stopping decision without talking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from transferkit.errors import ConfigError
from transferkit.models.classifier import ImageClassifier

_TORCHRUN_ENV = {"RANK": 0, "WORLD_SIZE": 1, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 1}


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls) -> World:
        env = {key: int(os.environ.get(key, default)) for key, default in _TORCHRUN_ENV.items()}
        return cls(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"])

    @property
    def cores_per_process(self) -> int:
        """This machine's cores shared between its processes (``train.num_threads: 0``)."""
        return max(1, (os.cpu_count() or 1) // self.local_size)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device_type: str, global_batch: int) -> None:
        """Join the process group (gloo on the CPU, nccl on CUDA) and check the batch splits evenly."""
        if not self.distributed:
            return
        if global_batch % self.size:
            raise ConfigError(
                f"train.batch_size {global_batch} must be divisible by the {self.size} torchrun processes "
                "(it is the global batch, split between them)"
            )
        if device_type == "cuda":
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU under torchrun on CUDA."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.distributed else device

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's positions of ``order``: rank r takes every size-th, so chunk k of every rank's
        share together is chunk k of ``order`` split at the global batch size."""
        if not self.distributed:
            return order
        sampler = DistributedSampler(range(len(order)), num_replicas=self.size, rank=self.rank, shuffle=False)
        return order[list(sampler)]

    def total(self, *values: float) -> list[float]:
        """``values`` summed over the ranks (the epoch's loss and sample count, for one logged mean)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


class TopOf(nn.Module):
    """The trainable top of a classifier (units from ``cut``) as a module DDP can wrap."""

    def __init__(self, model: ImageClassifier, cut: int) -> None:
        super().__init__()
        self.model, self.cut = model, cut

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_top(features, self.cut)


def trainable_top(model: ImageClassifier, cut: int, world: World) -> nn.Module:
    """What a training step calls: the top itself, or the top in DDP on several processes.

    Rebuilt whenever the trainable units change (gradual unfreezing): DDP fixes the parameters it
    synchronises when it is built.
    """
    top = TopOf(model, cut)
    if not world.distributed:
        return top
    device = next(model.parameters()).device
    return DistributedDataParallel(top, device_ids=[device.index] if device.type == "cuda" else None)
