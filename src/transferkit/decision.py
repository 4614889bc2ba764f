"""The decision a production line acts on: pass, flag or send to a person, from calibrated probabilities.

With positive classes (ELPV: the defective grades), the score is their summed probability and
two thresholds on it split the cells three ways: below ``lower`` a cell passes, at or above
``upper`` it is flagged, in between it goes to review. ``lower`` never exceeds the operating
point's threshold, so a review band can only catch more positives, never miss more. Without
positive classes the model's top-class confidence decides alone: at or above ``lower`` the
predicted class is acted on, below it a person looks.

A rule given to the exporter becomes the graph's ``decision`` output and the model's
``decision`` metadata; this module is the numpy twin the graph is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

POSITIVE_NAMES = ("pass", "flag", "review")  # decision codes 0, 1, 2 with positive classes
CONFIDENCE_NAMES = ("accept", "review")  # codes 0, 1 without: act on the predicted class, or a person looks


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds on the score of ``positive`` (class indices), or on top-class confidence if empty."""

    positive: tuple[int, ...]
    lower: float
    upper: float
    threshold: float  # the operating point alone (no review band); equals lower and upper without one

    def __post_init__(self) -> None:
        if not self.lower <= self.threshold <= self.upper:
            raise ValueError(f"need lower <= threshold <= upper, got {self.lower}, {self.threshold}, {self.upper}")

    @property
    def names(self) -> tuple[str, ...]:
        return POSITIVE_NAMES if self.positive else CONFIDENCE_NAMES

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        """What the thresholds apply to: summed positive probability, or top-class confidence."""
        if self.positive:
            return probabilities[:, list(self.positive)].sum(1)
        return probabilities.max(1)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Decision codes (indices into ``names``) for calibrated ``probabilities`` (N, classes)."""
        score = self.scores(probabilities.astype(np.float32))
        if not self.positive:
            return np.where(score >= self.lower, 0, 1).astype(np.int64)
        return np.where(score >= self.upper, 1, np.where(score < self.lower, 0, 2)).astype(np.int64)

    def as_metadata(self, class_names: list[str]) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "positive_classes": [class_names[index] for index in self.positive],
            "score": "sum of the positive classes' probabilities" if self.positive else "top-class probability",
            "threshold": self.threshold,
            "review_band": [self.lower, self.upper],
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], class_names: list[str]) -> DecisionRule:
        lower, upper = metadata["review_band"]
        positive = tuple(class_names.index(name) for name in metadata["positive_classes"])
        return cls(positive, float(lower), float(upper), float(metadata["threshold"]))
