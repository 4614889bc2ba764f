"""Batch sources for the loop: cached activations or images, both seeded per epoch.

Shuffling uses a generator seeded by (seed, epoch), so a resumed run sees the same batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torchvision.transforms import v2

from transferkit.training.augment import Preset, augment_batch
from transferkit.training.distributed import World
from transferkit.training.feature_cache import TrunkFn


def _order(count: int, seed: int, epoch: int, shuffle: bool) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return (torch.randperm(count, generator=generator) if shuffle else torch.arange(count)), generator


class FeatureBatches:
    """Cached activations (views, N, ...); training draws one random view per sample per epoch."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int) -> None:
        self.features, self.labels, self.batch_size, self.seed = features, labels, batch_size, seed

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, epoch: int, shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, generator = _order(len(self), self.seed, epoch, shuffle)
        views = (
            torch.randint(self.features.shape[0], (len(self),), generator=generator)
            if shuffle
            else torch.zeros(len(self), dtype=torch.long)
        )
        for chunk in order.split(self.batch_size):
            yield self.features[views[chunk], chunk].float(), self.labels[chunk]


class ImageBatches:
    """uint8 images, augmented on the fly when training, then run through the frozen trunk.

    With a ``world`` of several processes, training epochs yield only this rank's share.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        seed: int,
        trunk: TrunkFn,
        augment: tuple[Preset, v2.Transform] | None = None,
        world: World | None = None,
    ) -> None:
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed
        self.trunk, self.augment, self.world = trunk, augment, world

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, epoch: int, shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, _ = _order(len(self), self.seed, epoch, shuffle)
        batch_size = self.batch_size
        if shuffle and self.world is not None:  # training under torchrun: this rank's share of each batch
            order, batch_size = self.world.shard(order), batch_size // self.world.size
        for chunk in order.split(batch_size):
            images = self.images[chunk]
            if shuffle and self.augment is not None:
                images = augment_batch(images, *self.augment)
            yield self.trunk(images), self.labels[chunk]
