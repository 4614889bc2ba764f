"""What trains when: the four transfer strategies expressed over the backbone's units.

- ``linear``: feature extraction; every backbone unit frozen, only the new head trains.
- ``finetune``: all units above ``frozen_units`` train from the start, the backbone at
  ``lr * backbone_lr_factor`` (discriminative learning rate).
- ``gradual``: start with the head only; every ``unfreeze_every`` epochs the next
  ``unfreeze_step`` units from the top join, never going below ``frozen_units``.
- ``scratch``: same architecture from random init, everything trains at the head's rate.

``cut`` (the lowest unit that ever trains) is fixed for a run: the units below it can be run
once and cached, which is the CPU fast path.
"""

from __future__ import annotations

from typing import Any

from transferkit.config import TrainParams
from transferkit.errors import ConfigError
from transferkit.models.classifier import ImageClassifier


def cut_index(train: TrainParams, num_units: int) -> int:
    """Lowest unit index that trains at any point of the run; units below it stay frozen."""
    if train.frozen_units >= num_units:
        raise ConfigError(
            f"train.frozen_units={train.frozen_units} but the backbone has {num_units} units; "
            f"use 0..{num_units - 1} (or strategy 'linear' to freeze them all)"
        )
    return num_units if train.strategy == "linear" else train.frozen_units


def lowest_trainable(train: TrainParams, num_units: int, epoch: int) -> int:
    """Lowest unit index that trains during ``epoch`` (0-based)."""
    cut = cut_index(train, num_units)
    if train.strategy != "gradual":
        return cut
    unfrozen = train.unfreeze_step * (epoch // train.unfreeze_every)
    return max(cut, num_units - unfrozen)


def set_trainable(model: ImageClassifier, lowest: int) -> None:
    """Freeze units below ``lowest`` (weights and BatchNorm statistics); the rest train."""
    for index, unit in enumerate(model.units):
        trains = index >= lowest
        unit.requires_grad_(trains)
        unit.train(trains and model.training)
    model.head.requires_grad_(True)


def trainable_parameter_names(model: ImageClassifier) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def param_groups(model: ImageClassifier, train: TrainParams, cut: int) -> list[dict[str, Any]]:
    """AdamW groups: the head at ``lr``, trainable backbone units at ``lr * backbone_lr_factor``.

    Units between ``cut`` and the currently unfrozen point are included from the start so a
    gradual run never has to rebuild the optimiser; frozen parameters simply get no gradient.
    Biases and normalisation weights get no weight decay.
    """
    backbone_lr = train.lr if train.strategy == "scratch" else train.lr * train.backbone_lr_factor
    groups: list[dict[str, Any]] = []
    for modules, lr in ((model.units[cut:], backbone_lr), ([model.head], train.lr)):
        decay, no_decay = [], []
        for module in modules:
            for p in module.parameters():
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups += [
            {"params": decay, "lr": lr, "weight_decay": train.weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    return [g for g in groups if g["params"]]
