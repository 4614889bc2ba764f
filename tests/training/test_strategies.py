"""Which parameters train under each strategy, unfreezing steps, and optimiser learning rates."""

from __future__ import annotations

import pytest

from transferkit.config import TrainParams
from transferkit.errors import ConfigError
from transferkit.models.classifier import ImageClassifier, build_classifier
from transferkit.training.loop import Trainer
from transferkit.training.strategies import (
    cut_index,
    lowest_trainable,
    param_groups,
    set_trainable,
    trainable_parameter_names,
)


@pytest.fixture(scope="module")
def model() -> ImageClassifier:
    return build_classifier("efficientnet_lite0", "none", num_classes=2, dropout=0.2)


def test_lite0_has_stem_sixteen_blocks_and_head_conv(model: ImageClassifier) -> None:
    assert model.num_units == 18
    assert model.unit_names[0] == "stem" and model.unit_names[-1] == "head_conv"


def _trainable_units(model: ImageClassifier) -> list[int]:
    names = trainable_parameter_names(model)
    return sorted({int(n.split(".")[1]) for n in names if n.startswith("units.")})


@pytest.mark.parametrize(
    ("strategy", "frozen", "expected_units"),
    [
        ("linear", 0, []),
        ("finetune", 0, list(range(18))),
        ("finetune", 12, list(range(12, 18))),
        ("scratch", 0, list(range(18))),
    ],
)
def test_trainable_units_per_strategy(model: ImageClassifier, strategy: str, frozen: int, expected_units) -> None:
    train = TrainParams(strategy=strategy, frozen_units=frozen)
    model.train()
    set_trainable(model, lowest_trainable(train, model.num_units, epoch=0))
    assert _trainable_units(model) == expected_units
    assert {"head.2.weight", "head.2.bias"} <= trainable_parameter_names(model)
    frozen_unit = model.units[0]
    assert frozen_unit.training == (0 in expected_units)  # frozen BatchNorm keeps its statistics


def test_gradual_unfreezes_from_the_top_on_schedule(model: ImageClassifier) -> None:
    train = TrainParams(strategy="gradual", frozen_units=14, unfreeze_every=2, unfreeze_step=1)
    lowest = [lowest_trainable(train, model.num_units, epoch) for epoch in range(12)]
    assert lowest == [18, 18, 17, 17, 16, 16, 15, 15, 14, 14, 14, 14]
    model.train()
    set_trainable(model, lowest[4])
    assert _trainable_units(model) == [16, 17]


def test_frozen_units_beyond_the_backbone_are_rejected(model: ImageClassifier) -> None:
    with pytest.raises(ConfigError, match="has 18 units"):
        cut_index(TrainParams(frozen_units=18), model.num_units)


def test_param_groups_use_discriminative_learning_rates(model: ImageClassifier) -> None:
    train = TrainParams(strategy="finetune", lr=1e-3, backbone_lr_factor=0.1, frozen_units=12, weight_decay=0.05)
    groups = param_groups(model, train, cut=12)
    head_ids = {id(p) for p in model.head.parameters()}
    backbone_ids = {id(p) for unit in model.units[12:] for p in unit.parameters()}
    for group in groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= head_ids or ids <= backbone_ids
        assert group["lr"] == pytest.approx(1e-3 if ids <= head_ids else 1e-4)
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else 0.05)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == head_ids | backbone_ids  # frozen units are not in the optimiser at all


def test_scratch_trains_the_backbone_at_the_head_rate(model: ImageClassifier) -> None:
    groups = param_groups(
        model, TrainParams(strategy="scratch", lr=2e-3, backbone_lr_factor=0.1, frozen_units=0), cut=0
    )
    assert {g["lr"] for g in groups} == {2e-3}


def _head_lrs(model: ImageClassifier, epochs: int, steps_per_epoch: int) -> list[float]:
    import torch

    from transferkit.training.compute import Compute

    train = TrainParams(lr=1e-3, epochs=epochs, warmup_epochs=1)
    compute = Compute(torch.device("cpu"), "fp32", False)
    trainer = Trainer(model, train, cut=12, compute=compute, steps_per_epoch=steps_per_epoch)
    head_group = trainer.optimizer.param_groups[-1]
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(head_group["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    return lrs


def test_warmup_then_cosine_schedule(model: ImageClassifier) -> None:
    lrs = _head_lrs(model, epochs=12, steps_per_epoch=10)
    assert lrs[0] == pytest.approx(1e-5)  # warmup starts at 1 % of lr
    assert max(lrs) == pytest.approx(1e-3, rel=1e-6) and lrs.index(max(lrs)) == 10
    assert lrs[-1] < 0.02 * 1e-3  # cosine decays towards 0


def test_warmup_cannot_swallow_a_short_run(model: ImageClassifier) -> None:
    """One epoch with warmup_epochs 1: the warm-up is cut to 10 % of the run, not all of it."""
    lrs = _head_lrs(model, epochs=1, steps_per_epoch=30)
    assert lrs.index(max(lrs)) == 3 and max(lrs) == pytest.approx(1e-3, rel=1e-6)
