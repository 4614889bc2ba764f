"""Data nobody tuned for: ImageFolder datasets made in the test from images that packages ship.

In ``photo-orientation`` the class is the orientation (upright or upside-down crops): the
orientation-free preset's flips and turns make the classes identical, so it must lose to
``natural``. In ``digits-any-orientation`` every digit was written in a random orientation:
``auto`` must find that out and train on all eight views. Both run the real stages on the
shrunk config; the calibration is checked on the models they train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import shrunk_params
from transferkit.data.examples import write_example
from transferkit.stages import evaluate, prepare, train
from transferkit.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def run_stages(root: Path, data: Path, **overrides: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """prepare -> train -> evaluate in ``root``; returns train summary, test metrics, checkpoint meta."""
    params = shrunk_params(root, data__source="imagefolder", data__path=str(data), **overrides)
    prepare.run(params)
    summary = train.run(params)
    metrics = evaluate.run(params)
    return summary, metrics, load_checkpoint(Path(params.paths.train) / "model.pt")["meta"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "raw"
    write_example("photo-orientation", root)
    return root


def test_classes_that_differ_by_orientation_learn_with_natural_not_orientation_free(
    tmp_path: Path, photos: Path
) -> None:
    auto, natural, meta = run_stages(tmp_path / "auto", photos, train__epochs=3)
    assert auto["augment_preset"] == "natural"  # the probe sees that turned crops look turned
    assert auto["augment_preset_choice"]["turned_vs_original_accuracy"] > 0.65
    _, orientation_free, _ = run_stages(
        tmp_path / "free", photos, train__epochs=3, train__augment__preset="orientation_free"
    )
    assert natural["accuracy"] >= orientation_free["accuracy"] + 0.15, (
        natural["accuracy"],
        orientation_free["accuracy"],
    )

    # Temperature scaling on a real trained model: lower validation NLL, applied in evaluate.
    calibration = meta["calibration"]
    assert calibration["method"] == "temperature" and calibration["temperature"] != 1.0
    assert calibration["val_nll_after"] < calibration["val_nll_before"]
    assert natural["temperature"] == calibration["temperature"] and "ece_uncalibrated" in natural


def test_auto_trains_on_every_view_when_the_data_has_no_orientation(tmp_path: Path) -> None:
    data = tmp_path / "raw"
    write_example("digits-any-orientation", data, per_class=30)
    summary, metrics, meta = run_stages(tmp_path, data, train__epochs=1, train__strategy="linear")
    assert summary["augment_preset"] == meta["augment_preset"] == "orientation_free"
    assert summary["augment_preset_choice"]["turned_vs_original_accuracy"] < 0.65
    assert metrics["accuracy"] > 2 / 8  # a one-epoch linear probe: twice chance (8 classes), not a random head
