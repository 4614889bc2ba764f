"""Augmentation presets: which views of an image keep its class, and the jitter around them.

A preset is one decision about the data: which flips and turns leave a class as it is? Photos
have an up and a down (a mirrored street is still a street, an upside-down one is not what the
camera sees); solar cells, microscopy and aerial images have neither; in left-against-right
classes the mirror is exactly what must not be drawn. The preset's D4 views (flips / quarter
turns) are what the CPU path caches and what the full-network path draws per sample, so both
paths train on the same geometry. Jitter (small affine, brightness/contrast) cannot be cached
and only runs live.

``auto`` on an ImageFolder source takes the views the probe (training/orientation.py) finds
keep each class. A set that is a named preset's is called by that name; any other is named by
its views, ``auto[identity,rot90,rot180,rot270]`` say, which is what the checkpoint records and
``preset_named`` reads back (the ensemble's test-time augmentation averages over those views).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from transferkit.config import AugmentParams
from transferkit.training.orientation import ViewProbe
from transferkit.views import VIEW_NAMES, apply_view, view_group


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


def derived_preset(views: tuple[int, ...]) -> Preset:
    """The preset of a set of views ``auto`` found: a named preset's when the views are its, with jitter."""
    views = view_group(views)
    for name in ("natural", "orientation_free"):
        if PRESETS[name].views == views:
            return PRESETS[name]
    return Preset(f"auto[{','.join(VIEW_NAMES[view] for view in views)}]", views, jitter=True)


def preset_named(name: str) -> Preset:
    """The preset a checkpoint's ``augment_preset`` names: a named one or one ``auto`` derived."""
    if name in PRESETS:
        return PRESETS[name]
    inner = name.removeprefix("auto[").removesuffix("]")
    views = inner.split(",")
    if inner != name and all(view in VIEW_NAMES for view in views):
        preset = derived_preset(tuple(VIEW_NAMES.index(view) for view in views))
        if preset.name == name:
            return preset
    raise ValueError(f"unknown augmentation preset {name!r}")


def resolve_preset(
    augment: AugmentParams, source: str, probe: Callable[[], ViewProbe]
) -> tuple[Preset, dict[str, Any]]:
    """The preset a run uses and why; ``source`` is the prepared data's, so ``auto`` follows the data.

    ``auto``: the embedded ELPV cells have no preferred orientation; for a user's folder ``probe``
    (run only then) finds, family by family, the views that pass for originals and keep the class.
    """
    if augment.preset != "auto":
        return PRESETS[augment.preset], {"chosen_by": "train.augment.preset"}
    if source == "elpv":
        return PRESETS["orientation_free"], {"chosen_by": "auto: ELPV cells have no preferred orientation"}
    found = probe()
    return derived_preset(found.views), {"chosen_by": "auto: view probe", **found.as_dict()}


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
