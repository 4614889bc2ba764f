"""Feature cache (ONNX Runtime == PyTorch), D4 views, batches, checkpoints and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transferkit.errors import ModelError
from transferkit.io import atomic_write
from transferkit.models.classifier import build_classifier
from transferkit.training.batches import FeatureBatches
from transferkit.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from transferkit.training.compute import Compute
from transferkit.training.feature_cache import onnx_trunk, torch_trunk, trunk_onnx
from transferkit.views import D4_VIEWS, apply_view

CPU = Compute(torch.device("cpu"), "fp32", channels_last=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier("efficientnet_lite0", "imagenet", num_classes=2, dropout=0.2).eval()


def test_d4_views_are_the_eight_distinct_symmetries() -> None:
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    variants = {apply_view(image, v).flatten().tolist().__str__() for v in range(len(D4_VIEWS))}
    assert len(variants) == 8
    assert torch.equal(apply_view(image, 0), image)
    assert torch.equal(apply_view(image, 1), image.flip(-1))  # view 1: the mirror image
    for view, (turns, flip) in enumerate(D4_VIEWS):  # transposes and flips: exactly torch.rot90
        expected = torch.rot90(image, turns, dims=(-2, -1))
        assert torch.equal(apply_view(image, view), expected.flip(-1) if flip else expected)


def test_onnx_runtime_trunk_matches_pytorch(model) -> None:
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    reference = torch_trunk(model, 12, CPU)(images)
    fast = onnx_trunk(trunk_onnx(model, 12, image_size=64), threads=2)(images)
    assert fast.shape == reference.shape == (3, 112, 4, 4)
    assert (fast - reference).abs().max().item() < 1e-4


def test_linear_probe_features_are_pooled(model) -> None:
    features = torch_trunk(model, model.num_units, CPU)(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert features.shape == (2, 1280, 1, 1)


def test_feature_batches_are_reproducible_per_epoch() -> None:
    features = torch.randn(8, 10, 4).half()
    labels = torch.arange(10)
    batches = FeatureBatches(features, labels, batch_size=4, seed=3)
    epoch1 = [y.tolist() for _, y in batches.batches(1, shuffle=True)]
    assert epoch1 == [y.tolist() for _, y in batches.batches(1, shuffle=True)]
    assert epoch1 != [y.tolist() for _, y in batches.batches(2, shuffle=True)]
    unshuffled = list(batches.batches(0, shuffle=False))
    assert torch.equal(unshuffled[0][0], features[0, :4].float())  # evaluation uses the identity view


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path, model) -> None:
    meta = {"architecture": "efficientnet_lite0", "class_names": ["a", "b"], "dropout": 0.2, "image_size": 64}
    save_checkpoint(tmp_path / "m.pt", model, meta)
    payload = load_checkpoint(tmp_path / "m.pt")
    restored = model_from_checkpoint(payload)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))
    assert payload["meta"] == meta


def test_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="run the train stage first"):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


def test_ema_weights_are_validated_and_survive_a_resume(model) -> None:
    from transferkit.config import TrainParams
    from transferkit.training.loop import Trainer

    train = TrainParams(ema_epochs=2.0, frozen_units=17, epochs=2)
    trainer = Trainer(model, train, cut=17, compute=CPU, steps_per_epoch=5)
    assert trainer.ema_decay == pytest.approx(0.9)  # a horizon of 10 steps
    features = torch.randn(4, 320, 2, 2)  # the input of unit 17 (head_conv)
    labels = torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        trainer.train_step(features, labels)
    assert trainer.evaluation_model is not trainer.model
    raw, ema = trainer.model.head[2].weight, trainer.evaluation_model.head[2].weight
    assert not torch.equal(raw, ema)  # the average lags behind the raw weights

    resumed = Trainer(model, train, cut=17, compute=CPU, steps_per_epoch=5)
    resumed.load_state_dict(trainer.state_dict())
    assert torch.equal(resumed.evaluation_model.head[2].weight, ema)


def test_ema_horizon_is_in_epochs_and_the_average_warms_up() -> None:
    from transferkit.training.loop import ema_decay, warming_ema

    assert ema_decay(2.0, steps_per_epoch=54) == pytest.approx(1 - 1 / 108)  # ELPV: about 0.99
    assert ema_decay(2.0, steps_per_epoch=3) == 0.0  # 5 % of ELPV: 6 steps to average, so no EMA
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    warming_ema(0.99)(averaged, current, torch.tensor(1))  # the second update: decay 2/11, not 0.99
    assert averaged[0].tolist() == pytest.approx([1 - 2 / 11] * 3)


def test_temperature_undoes_overconfidence_without_moving_predictions() -> None:
    import numpy as np

    from transferkit.training.calibration import fit_temperature, nll

    rng = np.random.default_rng(0)
    calibrated = rng.normal(size=(2000, 3)) * 2
    labels = np.array([rng.choice(3, p=np.exp(z) / np.exp(z).sum()) for z in calibrated])
    overconfident = calibrated * 4  # logits whose softmax claims far more than it knows
    fit = fit_temperature(overconfident, labels)
    assert fit.temperature == pytest.approx(4, rel=0.15)
    assert fit.val_nll_after < fit.val_nll_before == pytest.approx(nll(overconfident, labels))
    assert fit_temperature(calibrated, labels).temperature == pytest.approx(1, rel=0.15)


def test_auto_preset_follows_the_data_and_probes_only_user_folders() -> None:
    from transferkit.config import AugmentParams
    from transferkit.training.augment import resolve_preset
    from transferkit.training.orientation import OrientationProbe

    probed = []

    def probe(accuracy: float):
        return lambda: probed.append(accuracy) or OrientationProbe(accuracy, 256)

    elpv, _ = resolve_preset(AugmentParams(), "elpv", probe(0.9))
    assert elpv.views == tuple(range(8)) and probed == []  # ELPV: all 8 views, nothing probed
    photos, why = resolve_preset(AugmentParams(), "imagefolder", probe(0.9))
    assert photos.views == (0, 1) and why["turned_vs_original_accuracy"] == 0.9  # turned images look turned
    tiles, _ = resolve_preset(AugmentParams(), "imagefolder", probe(0.5))
    assert tiles.name == "orientation_free"
    chosen, why = resolve_preset(AugmentParams(preset="none"), "imagefolder", probe(0.5))
    assert chosen.views == (0,) and not chosen.jitter and why == {"chosen_by": "train.augment.preset"}
    assert probed == [0.9, 0.5]
