"""Which flips and turns keep an image's class? The probe behind ``preset: auto`` for ImageFolder data.

A D4 view (views.py) is a safe augmentation when it does two things, and the probe asks both
questions of each view family, the horizontal mirror, the vertical flip and the quarter turns,
on a seeded sample of training images:

1. **It makes images like the folder's own** (the appearance test). A linear classifier on the
   backbone's pooled features tries to tell the sample from viewed copies of itself; if it
   cannot (grouped cross-validated accuracy under 0.65, chance 0.5), the copies pass for
   originals. Digits or photos turned a quarter score 0.70-0.87: training on such views spends
   the model on images it is never asked about (digits: 0.937 with all eight views against 0.975
   with mirrors only), so a view that is told apart is left out, whatever it does to the class.
2. **It keeps each class** (the class test). Passing for an original is not enough: a mirrored
   ``b`` passes for an original ``d``, and that is the very case where the augmentation is
   wrong, because it labels a ``d`` as ``b``. So the probe runs the augmentation in miniature: a
   linear classifier of the classes is fitted on the same folds twice, on originals, and on
   originals plus their viewed copies labelled as their source, and both are scored on held-out
   originals. A view that maps one class onto another makes the copies' labels contradict the
   other class's originals, and the accuracy above chance collapses (``mirror-letters``
   mirrored: 0.38 of it is kept; b against d in random turns, mirrored: 0.04); a view that keeps
   the class costs nothing (photos mirrored, any-orientation digits turned: all of it). A view
   fails when less than 0.8 of the accuracy above chance (the most frequent class's share) is
   kept. This test sees the backbone's mid-level activations
   averaged on a 2x2 grid as well as the pooled features: which side a letter's bowl is on is a
   matter of *where*, and globally pooled features of a network trained with mirror augmentation
   are nearly mirror-invariant (b against d at chance on them). When the classifier cannot tell
   the classes apart at all (under 0.1 above chance), there is nothing to measure, and the class
   test does not veto.

Either test alone fails somewhere: the appearance test passes views that swap classes
(mirror-image classes pass for each other), and the class test passes views that make images
nobody sees (a linear probe learns sideways digits beside upright ones). Together they ask
whether the view is a symmetry of each class as the folder shows it. The views allowed are those
of the families that pass both, with every composition of them (views.view_group): if two views
keep a class, doing one after the other does too. Folds are drawn by image, so no copy of a
held-out image is ever fitted on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from transferkit.contract import INPUT_NAME
from transferkit.models.classifier import ImageClassifier
from transferkit.onnx_graph import trace_to_onnx
from transferkit.onnx_runtime import CPU, create_session
from transferkit.views import VIEW_NAMES, apply_view, view_group

PROBE_IMAGES = 256  # enough for a clear answer: 15-25 s of backbone and fits on 2 CPU cores at 64 px
# Appearance test: below this accuracy viewed copies pass for originals (chance is 0.5; photos and
# digits turned a quarter score 0.70-0.87, mirrored photos 0.60, any-orientation data 0.45-0.53).
PASSES_FOR_ORIGINAL_BELOW = 0.65
# Class test: the share of the class probe's accuracy above chance a view must keep (on the
# examples, families that make one class look like another keep 0.04-0.69, the others 0.96-1.44).
KEEPS_CLASS_FROM = 0.8
CLASS_TEST_NEEDS = 0.1  # accuracy above chance the class probe must reach to measure anything
LAYOUT_GRID = 2
# The families, in this order (the quarter turns first: their draw from the seed is the one the
# orientation probe before this one made, so their appearance score is the one documented).
FAMILIES: dict[str, tuple[int, ...]] = {"quarter_turns": (2, 3, 4), "hflip": (1,), "vflip": (6,)}

# uint8 NCHW images -> (layout features, pooled features), both (N, D) numpy.
ProbeFeatures = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class FamilyProbe:
    views: tuple[int, ...]
    told_apart_accuracy: float  # appearance test: originals against copies, chance 0.5
    class_accuracy_with_copies: float  # class test: fitted on originals + copies, scored on held-out originals


@dataclass(frozen=True)
class ViewProbe:
    images: int
    chance: float  # the most frequent class's share of the sample
    class_accuracy: float  # the class probe fitted on originals only, scored on held-out originals
    families: dict[str, FamilyProbe]

    @property
    def class_test_conclusive(self) -> bool:
        return self.class_accuracy - self.chance >= CLASS_TEST_NEEDS

    def class_kept(self, family: str) -> float:
        """The share of the class probe's accuracy above chance that survives training on the copies."""
        above = self.class_accuracy - self.chance
        return (self.families[family].class_accuracy_with_copies - self.chance) / above if above > 0 else 1.0

    def passes_for_original(self, family: str) -> bool:
        return self.families[family].told_apart_accuracy < PASSES_FOR_ORIGINAL_BELOW

    def keeps_class(self, family: str) -> bool:
        return not self.class_test_conclusive or self.class_kept(family) >= KEEPS_CLASS_FROM

    def allowed(self, family: str) -> bool:
        return self.passes_for_original(family) and self.keeps_class(family)

    @property
    def views(self) -> tuple[int, ...]:
        """The identity, the allowed families' views and every composition of them."""
        return view_group(
            tuple(v for name, family in self.families.items() if self.allowed(name) for v in family.views)
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "images": self.images,
            "chance": self.chance,
            "class_accuracy": self.class_accuracy,
            "class_test": "conclusive" if self.class_test_conclusive else "inconclusive (no veto)",
            "families": {
                name: {
                    "views": [VIEW_NAMES[v] for v in family.views],
                    "told_apart_accuracy": family.told_apart_accuracy,
                    "class_accuracy_with_copies": family.class_accuracy_with_copies,
                    "class_kept": round(self.class_kept(name), 4),
                    "passes_for_original": self.passes_for_original(name),
                    "keeps_class": self.keeps_class(name),
                    "allowed": self.allowed(name),
                }
                for name, family in self.families.items()
            },
            "views": [VIEW_NAMES[v] for v in self.views],
        }


class _ProbeTrunk(nn.Module):
    """The activations after two thirds of the units (spatial) and the pooled ones after all of them."""

    def __init__(self, model: ImageClassifier) -> None:
        super().__init__()
        self.model, self.middle = model, max(1, model.num_units * 2 // 3)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        middle = self.model.forward_units(self.model.normalize(images), 0, self.middle)
        return middle, self.model.pool(self.model.forward_units(middle, self.middle, self.model.num_units))


def probe_features(model: ImageClassifier, image_size: int, threads: int, batch_size: int = 64) -> ProbeFeatures:
    """The features the probe sees, through ONNX Runtime on the CPU (the grid is averaged outside the
    graph: the exporter cannot size an adaptive pooling)."""
    graph = trace_to_onnx(_ProbeTrunk(model).cpu().eval(), image_size, ["layout", "pooled"], opset=17)
    session = create_session(graph.SerializeToString(), [CPU], threads)

    def run(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        layouts, pooled = [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].cpu().contiguous().numpy()
            middle, last = session.run(None, {INPUT_NAME: chunk})
            layouts.append(nn.functional.adaptive_avg_pool2d(torch.from_numpy(middle), LAYOUT_GRID).flatten(1))
            pooled.append(torch.from_numpy(last).flatten(1))
        return torch.cat(layouts).numpy(), torch.cat(pooled).numpy()

    return run


def _linear() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))


def _held_out_accuracy(
    originals: np.ndarray, copies: np.ndarray | None, labels: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]
) -> float:
    """Accuracy on each fold's held-out originals of a class probe fitted on the rest (plus their copies)."""
    correct = 0
    for fit_on, held_out in folds:
        x, y = originals[fit_on], labels[fit_on]
        if copies is not None:
            x, y = np.concatenate([x, copies[fit_on]]), np.concatenate([y, y])
        if len(np.unique(y)) == 1:
            predicted = np.full(len(held_out), y[0])
        else:
            predicted = _linear().fit(x, y).predict(originals[held_out])
        correct += int((predicted == labels[held_out]).sum())
    return correct / len(labels)


def probe_views(features: ProbeFeatures, images: torch.Tensor, labels: np.ndarray, seed: int) -> ViewProbe:
    """Probe uint8 NCHW ``images`` (up to ``PROBE_IMAGES`` of the training split) and their class ``labels``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    count, folds = len(images), min(5, len(images))
    layout, pooled = features(images)
    described = np.concatenate([layout, pooled], 1)
    class_folds = list(KFold(folds, shuffle=True, random_state=seed).split(described))
    is_copy, groups = np.repeat([0, 1], count), np.tile(np.arange(count), 2)
    families = {}
    for name, views in FAMILIES.items():
        picks = rng.choice(views, count)
        copies = torch.stack([apply_view(image, int(view)) for image, view in zip(images, picks, strict=True)])
        copy_layout, copy_pooled = features(copies)
        told_apart = cross_val_score(
            _linear(), np.concatenate([pooled, copy_pooled]), is_copy, groups=groups, cv=GroupKFold(folds)
        ).mean()
        with_copies = _held_out_accuracy(described, np.concatenate([copy_layout, copy_pooled], 1), labels, class_folds)
        families[name] = FamilyProbe(views, round(float(told_apart), 4), round(with_copies, 4))
    return ViewProbe(
        images=count,
        chance=round(float(np.bincount(labels).max() / count), 4),
        class_accuracy=round(_held_out_accuracy(described, None, labels, class_folds), 4),
        families=families,
    )
