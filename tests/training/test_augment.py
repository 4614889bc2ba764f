"""The augmentation preset follows the data: orientation-free sources skip the probe, user folders run it."""

from __future__ import annotations


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
