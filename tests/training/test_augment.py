"""The augmentation preset follows the data: orientation-free sources skip the probe, user folders
run it, and the views it allows become the preset (named by its views when no preset has them)."""

from __future__ import annotations

import pytest

from transferkit.config import AugmentParams
from transferkit.training.augment import PRESETS, derived_preset, preset_named, resolve_preset
from transferkit.training.orientation import FamilyProbe, ViewProbe


def found(class_accuracy: float = 0.9, **families: tuple[float, float]) -> ViewProbe:
    """A probe result: per family (told-apart accuracy, class accuracy with copies); chance 0.5."""
    views = {"quarter_turns": (2, 3, 4), "hflip": (1,), "vflip": (6,)}
    return ViewProbe(256, 0.5, class_accuracy, {name: FamilyProbe(views[name], *families[name]) for name in views})


PHOTOS = found(quarter_turns=(0.9, 0.7), hflip=(0.55, 0.9), vflip=(0.55, 0.7))  # only mirrors keep the class
TILES = found(quarter_turns=(0.5, 0.9), hflip=(0.5, 0.9), vflip=(0.5, 0.9))
LEFT_RIGHT = found(quarter_turns=(0.9, 0.6), hflip=(0.5, 0.55), vflip=(0.6, 0.55))  # mirrors swap the classes
CHIRAL_TILES = found(quarter_turns=(0.5, 0.9), hflip=(0.5, 0.55), vflip=(0.5, 0.55))


def test_auto_preset_follows_the_data_and_probes_only_user_folders() -> None:
    probed = []

    def probe(result: ViewProbe):
        return lambda: probed.append(result) or result

    elpv, _ = resolve_preset(AugmentParams(), "elpv", probe(PHOTOS))
    assert elpv.views == tuple(range(8)) and probed == []  # ELPV: all 8 views, nothing probed
    photos, why = resolve_preset(AugmentParams(), "imagefolder", probe(PHOTOS))
    assert photos == PRESETS["natural"] and why["chosen_by"] == "auto: view probe"
    assert why["families"]["quarter_turns"]["told_apart_accuracy"] == 0.9  # turned photos look turned
    assert not why["families"]["vflip"]["keeps_class"] and why["views"] == ["identity", "hflip"]
    tiles, _ = resolve_preset(AugmentParams(), "imagefolder", probe(TILES))
    assert tiles.name == "orientation_free"
    chosen, why = resolve_preset(AugmentParams(preset="none"), "imagefolder", probe(TILES))
    assert chosen.views == (0,) and not chosen.jitter and why == {"chosen_by": "train.augment.preset"}
    assert probed == [PHOTOS, TILES]


def test_views_that_swap_classes_stay_out_even_when_they_pass_for_originals() -> None:
    left_right, why = resolve_preset(AugmentParams(), "imagefolder", lambda: LEFT_RIGHT)
    assert why["families"]["hflip"]["passes_for_original"] and not why["families"]["hflip"]["allowed"]
    assert left_right.views == (0,) and left_right.jitter and left_right.name == "auto[identity]"
    chiral, _ = resolve_preset(AugmentParams(), "imagefolder", lambda: CHIRAL_TILES)
    assert chiral.views == (0, 2, 3, 4) and chiral.name == "auto[identity,rot90,rot180,rot270]"


def test_the_class_test_vetoes_nothing_when_the_probe_cannot_tell_the_classes_apart() -> None:
    blind = found(class_accuracy=0.55, quarter_turns=(0.9, 0.5), hflip=(0.5, 0.5), vflip=(0.9, 0.5))
    assert blind.as_dict()["class_test"] == "inconclusive (no veto)"
    assert blind.views == (0, 1)  # the appearance test alone decides


def test_a_derived_preset_is_read_back_from_its_name_and_composes_its_views() -> None:
    both_flips = derived_preset((1, 6))  # mirroring across both axes is a half turn
    assert both_flips.views == (0, 1, 3, 6) and both_flips.name == "auto[identity,hflip,rot180,vflip]"
    assert derived_preset((1, 2)) == PRESETS["orientation_free"] and derived_preset((1,)) == PRESETS["natural"]
    for preset in (*PRESETS.values(), both_flips, derived_preset(()), derived_preset((2,))):
        assert preset_named(preset.name) == preset
    for wrong in ("auto[hflip]", "auto[identity,sideways]", "mirrors"):  # not a name auto ever writes
        with pytest.raises(ValueError, match="unknown augmentation preset"):
            preset_named(wrong)
