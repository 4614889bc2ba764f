"""Does a user's folder have an up and a down? The probe behind ``preset: auto`` for ImageFolder data.

If the images were captured in any orientation (cells, specimens, aerial tiles), a quarter or
half turn produces an image like any other in the folder, and training on all eight views is
right. If they have an orientation (photos, digits), a turned image looks turned. So: a linear
classifier on the backbone's pooled features tries to tell a sample of training images from
turned copies of themselves; if it cannot (cross-validated accuracy near chance), the data is
orientation-free. Held-out folds are grouped by image, so an image and its turned copy are never
split between fitting and scoring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transferkit.views import apply_view

PROBE_IMAGES = 256  # enough for a clear answer, a few seconds of backbone on the CPU
# Below this accuracy turned copies pass for originals (chance is 0.5; photos and digits score > 0.85).
ORIENTATION_FREE_BELOW = 0.65
QUARTER_TURN_VIEWS = (2, 3, 4)  # views.D4_VIEWS: 90, 180 and 270 degrees


@dataclass(frozen=True)
class OrientationProbe:
    turned_vs_original_accuracy: float
    images: int

    @property
    def orientation_free(self) -> bool:
        return self.turned_vs_original_accuracy < ORIENTATION_FREE_BELOW

    def as_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "orientation_free": self.orientation_free}


def probe_orientation(
    pooled_features: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, seed: int
) -> OrientationProbe:
    """Probe uint8 NCHW ``images`` (up to ``PROBE_IMAGES`` of the training split) with ``pooled_features``."""
    rng = np.random.default_rng(seed)
    turns = rng.choice(QUARTER_TURN_VIEWS, len(images))
    turned = torch.stack([apply_view(image, int(view)) for image, view in zip(images, turns, strict=True)])
    features = torch.cat([pooled_features(images), pooled_features(turned)]).flatten(1).numpy()
    is_turned = np.repeat([0, 1], len(images))
    folds = min(5, len(images))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    scores = cross_val_score(
        probe, features, is_turned, groups=np.tile(np.arange(len(images)), 2), cv=GroupKFold(folds)
    )
    return OrientationProbe(round(float(scores.mean()), 4), len(images))
