"""Data nobody tuned for: ImageFolder datasets made in the test from images and fonts that packages ship.

The view probe (training/orientation.py) on the real backbone, one dataset per answer it must
give: ``mirror-letters`` (b, d, p, q: every mirror turns a class into another) gets no flip or
turn, the same letters b and d in random quarter turns get the turns and no mirror,
``digits-any-orientation`` all eight views, ``photo-orientation`` the mirror only.

Then the real stages on the shrunk config: in ``photo-orientation`` the class is the orientation
(upright or upside-down crops), so the orientation-free preset's flips and turns make the classes
identical and it must lose to ``natural``; in ``digits-any-orientation`` ``auto`` trains on all
eight views. The calibration is checked on the models they train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers import shrunk_params
from transferkit.config import AugmentParams
from transferkit.data.cache import PreparedData
from transferkit.data.examples import mirror_letters, write_example
from transferkit.models.classifier import build_classifier
from transferkit.stages import evaluate, prepare, train
from transferkit.training.augment import resolve_preset
from transferkit.training.checkpoint import load_checkpoint
from transferkit.training.fit import view_probe
from transferkit.training.orientation import ViewProbe

pytestmark = pytest.mark.slow


def run_stages(root: Path, data: Path, **overrides: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """prepare -> train -> evaluate in ``root``; returns train summary, test metrics, checkpoint meta."""
    params = shrunk_params(root, data__source="imagefolder", data__path=str(data), **overrides)
    prepare.run(params)
    summary = train.run(params)
    metrics = evaluate.run(params)
    return summary, metrics, load_checkpoint(Path(params.paths.train) / "model.pt")["meta"]


def probe_folder(root: Path, data: Path) -> ViewProbe:
    """prepare ``data`` in ``root`` and run the view probe as ``train`` would (``preset: auto``)."""
    params = shrunk_params(root, data__source="imagefolder", data__path=str(data))
    prepare.run(params)
    prepared = PreparedData.load(params.paths.prepared)
    model = params.model
    classifier = build_classifier(model.architecture, model.weights, len(prepared.class_names), model.dropout)
    return view_probe(params, prepared, classifier, params.train.num_threads)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "raw"
    write_example("photo-orientation", root)
    return root


def test_mirror_image_classes_get_no_mirror_though_mirrored_letters_pass_for_originals(tmp_path: Path) -> None:
    data = tmp_path / "raw"
    write_example("mirror-letters", data, per_class=100)
    probe = probe_folder(tmp_path, data)
    for mirror in ("hflip", "vflip"):  # a mirrored b looks like a d: only the class test sees the swap
        assert not probe.keeps_class(mirror) and probe.class_kept(mirror) < 0.8, probe.as_dict()
    assert probe.passes_for_original("hflip"), probe.as_dict()
    assert probe.views == (0,), probe.as_dict()  # sideways letters look sideways, a half turn makes b a q
    preset, why = resolve_preset(AugmentParams(), "imagefolder", lambda: probe)
    assert preset.name == "auto[identity]" and preset.jitter and why["families"]["hflip"]["allowed"] is False


def test_chiral_classes_in_any_orientation_get_the_turns_and_no_mirror(tmp_path: Path) -> None:
    data = tmp_path / "raw"
    rng = np.random.default_rng(0)
    letters = [(label, image) for label, image in mirror_letters(rng) if label in "bd"][:400]
    for number, (label, image) in enumerate(letters):
        (data / label).mkdir(parents=True, exist_ok=True)
        turned = np.ascontiguousarray(np.rot90(image, int(rng.integers(4))))
        Image.fromarray(turned).save(data / label / f"{number:04d}.png")
    probe = probe_folder(tmp_path, data)
    assert probe.allowed("quarter_turns") and not probe.allowed("hflip"), probe.as_dict()
    assert probe.views == (0, 2, 3, 4), probe.as_dict()


def test_any_orientation_data_gets_every_view(tmp_path: Path) -> None:
    data = tmp_path / "raw"
    write_example("digits-any-orientation", data, per_class=60)
    probe = probe_folder(tmp_path, data)
    assert probe.views == tuple(range(8)), probe.as_dict()


def test_photos_get_the_mirror_only(tmp_path: Path, photos: Path) -> None:
    probe = probe_folder(tmp_path, photos)
    assert probe.views == (0, 1), probe.as_dict()
    assert probe.families["quarter_turns"].told_apart_accuracy > 0.65 and not probe.keeps_class("vflip")


def test_classes_that_differ_by_orientation_learn_with_natural_not_orientation_free(
    tmp_path: Path, photos: Path
) -> None:
    auto, natural, meta = run_stages(tmp_path / "auto", photos, train__epochs=3)
    assert auto["augment_preset"] == "natural"  # the probe sees that turned crops look turned
    assert auto["augment_preset_choice"]["families"]["quarter_turns"]["told_apart_accuracy"] > 0.65
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
    assert summary["augment_preset_choice"]["views"] == [
        "identity",
        "hflip",
        "rot90",
        "rot180",
        "rot270",
        "rot90+hflip",
        "vflip",
        "rot270+hflip",
    ]
    assert metrics["accuracy"] > 2 / 8  # a one-epoch linear probe: twice chance (8 classes), not a random head
