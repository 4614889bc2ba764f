"""The error gallery: the test split's worst mistakes as one image grid, missed defects first.

Each cell is the image with the evidence for the positive classes (or the predicted class)
painted over it, titled with its file name, score, decision and true class: what a person
reviewing the model needs to see why it failed, without opening files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from transferkit.decision import DecisionRule
from transferkit.evaluation.plots import plt
from transferkit.heatmap import evidence, overlay

MAX_IMAGES = 16
COLUMNS = 4


def worst_mistakes(
    rule: DecisionRule, probabilities: np.ndarray, labels: np.ndarray, limit: int = MAX_IMAGES
) -> np.ndarray:
    """Indices of the worst wrong automatic decisions: positives passed (lowest score first), then
    negatives flagged (highest first); without positive classes, wrong accepted predictions, most
    confident first. Cells sent to review are not mistakes: a person sees them."""
    decision = rule.decide(probabilities)
    scores = rule.scores(probabilities)
    if rule.positive:
        is_positive = np.isin(labels, rule.positive)
        missed = np.flatnonzero((decision == 0) & is_positive)
        false_flags = np.flatnonzero((decision == 1) & ~is_positive)
        ordered = np.concatenate([missed[np.argsort(scores[missed])], false_flags[np.argsort(-scores[false_flags])]])
    else:
        wrong = np.flatnonzero((decision == 0) & (probabilities.argmax(1) != labels))
        ordered = wrong[np.argsort(-scores[wrong])]
    return ordered[:limit].astype(np.int64)


def gallery_figure(
    images: np.ndarray,
    heatmaps: np.ndarray,
    titles: Sequence[str],
    classes: Sequence[Sequence[int]],
    heading: str,
) -> plt.Figure:
    """``images`` (N, 3, H, W) uint8 with their (N, classes, h, w) ``heatmaps``, the evidence for
    ``classes[i]`` painted over image i."""
    count = max(len(images), 1)
    columns = min(count, COLUMNS)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.5 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, maps, title, explained in zip(axes.ravel(), images, heatmaps, titles, classes, strict=False):
        picture = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
        axis.imshow(overlay(picture, evidence(maps, explained)))
        axis.set_title(title, fontsize=8)
    if not len(images):
        axes[0, 0].text(0.5, 0.5, "no wrong automatic decisions on the test split", ha="center", va="center")
    figure.suptitle(heading)
    figure.tight_layout()
    return figure
