"""Augmentation presets: which views of an image keep its class, and the jitter around them.

A preset is one decision about the data: does it have an up and a down? Photos do (a mirrored
street is still a street, an upside-down one is not what the camera sees); solar cells,
microscopy and aerial images do not. The preset's D4 views (flips / quarter turns) are what the
CPU path caches and what the full-network path draws per sample, so both paths train on the
same geometry. Jitter (small affine, brightness/contrast) cannot be cached and only runs live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from transferkit.config import AugmentParams
from transferkit.training.orientation import OrientationProbe
from transferkit.views import apply_view


@dataclass(frozen=True)
class Preset:
    name: str
    views: tuple[int, ...]  # indices into views.D4_VIEWS; 0 is the image as it is
    jitter: bool


PRESETS = {
    "natural": Preset("natural", (0, 1), jitter=True),  # identity and the horizontal mirror
    "orientation_free": Preset("orientation_free", tuple(range(8)), jitter=True),
    "none": Preset("none", (0,), jitter=False),
}


def resolve_preset(
    augment: AugmentParams, source: str, probe: Callable[[], OrientationProbe]
) -> tuple[Preset, dict[str, Any]]:
    """The preset a run uses and why; ``source`` is the prepared data's, so ``auto`` follows the data.

    ``auto``: the embedded ELPV cells have no preferred orientation; a user's folder is
    ``natural`` unless ``probe`` (run only then) finds that turned images pass for originals.
    """
    if augment.preset != "auto":
        return PRESETS[augment.preset], {"chosen_by": "train.augment.preset"}
    if source == "elpv":
        return PRESETS["orientation_free"], {"chosen_by": "auto: ELPV cells have no preferred orientation"}
    found = probe()
    name = "orientation_free" if found.orientation_free else "natural"
    return PRESETS[name], {"chosen_by": "auto: orientation probe", **found.as_dict()}


def build_transform(augment: AugmentParams, preset: Preset) -> v2.Transform:
    steps: list[v2.Transform] = []
    if preset.jitter and (augment.affine_degrees or augment.affine_translate):
        translate = (augment.affine_translate, augment.affine_translate) if augment.affine_translate else None
        steps.append(v2.RandomAffine(degrees=augment.affine_degrees, translate=translate))
    if preset.jitter and (augment.brightness or augment.contrast):
        steps.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    return v2.Compose(steps) if steps else v2.Identity()


def augment_batch(images: torch.Tensor, preset: Preset, transform: v2.Transform) -> torch.Tensor:
    """One random preset view plus the jitter, drawn per sample."""
    picks = torch.randint(len(preset.views), (len(images),))
    return torch.stack([transform(apply_view(img, preset.views[int(k)])) for img, k in zip(images, picks, strict=True)])
