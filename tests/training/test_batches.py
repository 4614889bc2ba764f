"""Cached-feature batches: the same per epoch and seed, so a resumed run sees the same batches."""

from __future__ import annotations

import torch

from transferkit.training.batches import FeatureBatches


def test_feature_batches_are_reproducible_per_epoch() -> None:
    features = torch.randn(8, 10, 4).half()
    labels = torch.arange(10)
    batches = FeatureBatches(features, labels, batch_size=4, seed=3)
    epoch1 = [y.tolist() for _, y in batches.batches(1, shuffle=True)]
    assert epoch1 == [y.tolist() for _, y in batches.batches(1, shuffle=True)]
    assert epoch1 != [y.tolist() for _, y in batches.batches(2, shuffle=True)]
    unshuffled = list(batches.batches(0, shuffle=False))
    assert torch.equal(unshuffled[0][0], features[0, :4].float())  # evaluation uses the identity view
