"""Intervals for the study's figures: a percentile bootstrap over test images.

The seeds' spread says how much a figure moves when the training run changes; it says nothing
about the test set, which is one sample of ~650 images. Resampling the test images (the same
resample for every seed, and for both sides of a comparison) gives the interval a reader needs to
tell whether a margin is real. Written with numpy because the paired, multi-seed resampling is a
few array lines and no maintained library does it for precomputed predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}


def resample_indices(n: int, seed: int = 0, resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples, n) test-image indices, drawn with replacement; fixed by ``seed`` so reports are stable."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Accuracy along the last axis (works on resampled (resamples, n) arrays)."""
    return (labels == predicted).mean(-1)


def macro_f1(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Macro-F1 along the last axis, as scikit-learn computes it (a class absent from both is left out)."""
    scores, present = [], []
    for c in range(classes):
        actual, guessed = labels == c, predicted == c
        tp = (actual & guessed).sum(-1)
        denominator = actual.sum(-1) + guessed.sum(-1)
        scores.append(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0))
        present.append(denominator > 0)
    return np.sum(scores, axis=0) / np.maximum(np.sum(present, axis=0), 1)


def seed_mean(labels: np.ndarray, runs: list[np.ndarray], classes: int, metric: str, idx: np.ndarray) -> np.ndarray:
    """The mean over seeds of ``metric`` on each resample of the test images."""
    resampled = labels[idx]
    values = [
        accuracy(resampled, run[idx]) if metric == "accuracy" else macro_f1(resampled, run[idx], classes)
        for run in runs
    ]
    return np.mean(values, axis=0)


def interval(values: np.ndarray) -> Interval:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def headline_intervals(labels: np.ndarray, runs: list[np.ndarray], classes: int) -> dict[str, dict[str, float]]:
    """``accuracy_ci`` and ``macro_f1_ci``: 95 % intervals of the mean over ``runs``, one resample for both."""
    idx = resample_indices(len(labels))
    return {
        f"{metric}_ci": interval(seed_mean(labels, runs, classes, metric, idx)).as_dict()
        for metric in ("accuracy", "macro_f1")
    }


def margin_interval(labels: np.ndarray, first: list[np.ndarray], second: list[np.ndarray], classes: int) -> Interval:
    """95 % interval of mean accuracy of ``first`` minus ``second``, both scored on the same resampled test images."""
    idx = resample_indices(len(labels))
    return interval(
        seed_mean(labels, first, classes, "accuracy", idx) - seed_mean(labels, second, classes, "accuracy", idx)
    )
