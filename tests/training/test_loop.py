"""The training loop's weight EMA: validated, resumed with the run, its horizon in epochs, warming up."""

from __future__ import annotations

import pytest
import torch

from transferkit.training.compute import Compute

CPU = Compute(torch.device("cpu"), "fp32", channels_last=False)


def test_ema_weights_are_validated_and_survive_a_resume(lite0) -> None:
    from transferkit.config import TrainParams
    from transferkit.training.loop import Trainer

    train = TrainParams(ema_epochs=2.0, frozen_units=17, epochs=2)
    trainer = Trainer(lite0, train, cut=17, compute=CPU, steps_per_epoch=5)
    assert trainer.ema_decay == pytest.approx(0.9)  # a horizon of 10 steps
    features = torch.randn(4, 320, 2, 2)  # the input of unit 17 (head_conv)
    labels = torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        trainer.train_step(features, labels)
    assert trainer.evaluation_model is not trainer.model
    raw, ema = trainer.model.head[2].weight, trainer.evaluation_model.head[2].weight
    assert not torch.equal(raw, ema)  # the average lags behind the raw weights

    resumed = Trainer(lite0, train, cut=17, compute=CPU, steps_per_epoch=5)
    resumed.load_state_dict(trainer.state_dict())
    assert torch.equal(resumed.evaluation_model.head[2].weight, ema)


def test_ema_horizon_is_in_epochs_and_the_average_warms_up() -> None:
    from transferkit.training.loop import ema_decay, warming_ema

    assert ema_decay(2.0, steps_per_epoch=54) == pytest.approx(1 - 1 / 108)  # ELPV: about 0.99
    assert ema_decay(2.0, steps_per_epoch=3) == 0.0  # 5 % of ELPV: 6 steps to average, so no EMA
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    warming_ema(0.99)(averaged, current, torch.tensor(1))  # the second update: decay 2/11, not 0.99
    assert averaged[0].tolist() == pytest.approx([1 - 2 / 11] * 3)
