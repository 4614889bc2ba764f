"""On-the-fly augmentation for the full-network path (GPU fine-tuning).

Each sample draws its own parameters: a random D4 view (flips / rot90), a small affine and
brightness/contrast jitter, all from torchvision's v2 transforms on uint8 tensors.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from transferkit.config import AugmentParams
from transferkit.training.feature_cache import D4_VIEWS, apply_view


def build_transform(augment: AugmentParams) -> v2.Transform:
    steps: list[v2.Transform] = []
    if augment.affine_degrees or augment.affine_translate:
        translate = (augment.affine_translate, augment.affine_translate) if augment.affine_translate else None
        steps.append(v2.RandomAffine(degrees=augment.affine_degrees, translate=translate))
    if augment.brightness or augment.contrast:
        steps.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    return v2.Compose(steps) if steps else v2.Identity()


def allowed_views(augment: AugmentParams) -> list[int]:
    """D4 views permitted by the flip/rot90 switches (view 0 is the identity)."""
    return [
        i
        for i, (turns, flip) in enumerate(D4_VIEWS)
        if (augment.rot90 or turns == 0) and (augment.hflip or augment.vflip or not flip)
    ]


def augment_batch(images: torch.Tensor, augment: AugmentParams, transform: v2.Transform) -> torch.Tensor:
    views = allowed_views(augment)
    picks = torch.randint(len(views), (len(images),))
    return torch.stack([transform(apply_view(img, views[int(k)])) for img, k in zip(images, picks, strict=True)])
