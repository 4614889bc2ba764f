"""The decision a production line acts on: pass, flag or send to a person, from calibrated probabilities.

With positive classes (ELPV: the defective grades), the score is their summed probability and
two thresholds on it split the cells three ways: below ``lower`` a cell passes, at or above
``upper`` it is flagged, in between it goes to review. ``lower`` never exceeds the operating
point's threshold, so a review band can only catch more positives, never miss more. Without
positive classes the model's top-class confidence decides alone: at or above ``lower`` the
predicted class is acted on, below it a person looks.

With ``ood_threshold`` set, an image whose ``ood_score`` exceeds it goes to review whatever its
probabilities say: a confident answer about something the model never saw is not an answer.
Every review carries its reason (``REASONS``), so a person knows why they are looking.

A rule given to the exporter becomes the graph's ``decision`` output and the model's
``decision`` metadata; this module is the numpy twin the graph is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from transferkit.contract import OOD_OUTPUT

POSITIVE_NAMES = ("pass", "flag", "review")  # decision codes 0, 1, 2 with positive classes
CONFIDENCE_NAMES = ("accept", "review")  # codes 0, 1 without: act on the predicted class, or a person looks
REVIEW = "review"
OUT_OF_DISTRIBUTION, NEAR_THRESHOLD, LOW_CONFIDENCE = "out of distribution", "near the threshold", "low confidence"
# Not the model's own decision: a training image whose given label the data disputes
# (evaluation/label_issues.py, `transferkit review suspects`), queued for a person beside the rest.
LABEL_SUSPECTED = "label suspected"
REASONS = (OUT_OF_DISTRIBUTION, NEAR_THRESHOLD, LOW_CONFIDENCE, LABEL_SUSPECTED)


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds on the score of ``positive`` (class indices), or on top-class confidence if empty."""

    positive: tuple[int, ...]
    lower: float
    upper: float
    threshold: float  # the operating point alone (no review band); equals lower and upper without one
    ood_threshold: float | None = None  # an ood_score above it sends the image to review

    def __post_init__(self) -> None:
        if not self.lower <= self.threshold <= self.upper:
            raise ValueError(f"need lower <= threshold <= upper, got {self.lower}, {self.threshold}, {self.upper}")

    @property
    def review_code(self) -> int:
        return self.names.index(REVIEW)

    @property
    def names(self) -> tuple[str, ...]:
        return POSITIVE_NAMES if self.positive else CONFIDENCE_NAMES

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        """What the thresholds apply to: summed positive probability, or top-class confidence."""
        if self.positive:
            return probabilities[:, list(self.positive)].sum(1)
        return probabilities.max(1)

    def out_of_distribution(self, ood_scores: np.ndarray | None) -> np.ndarray | None:
        """Which images the OOD threshold sends to review (None: no threshold or no scores)."""
        if self.ood_threshold is None or ood_scores is None:
            return None
        return np.asarray(ood_scores, dtype=np.float32) > np.float32(self.ood_threshold)

    def decide(self, probabilities: np.ndarray, ood_scores: np.ndarray | None = None) -> np.ndarray:
        """Decision codes (indices into ``names``) for calibrated ``probabilities`` (N, classes),
        and, with an OOD threshold, the images' ``ood_scores`` (N,)."""
        score = self.scores(probabilities.astype(np.float32))
        if not self.positive:
            codes = np.where(score >= self.lower, 0, 1)
        else:
            codes = np.where(score >= self.upper, 1, np.where(score < self.lower, 0, 2))
        outside = self.out_of_distribution(ood_scores)
        if outside is not None:
            codes = np.where(outside, self.review_code, codes)
        return codes.astype(np.int64)

    def reasons(self, codes: np.ndarray, ood_scores: np.ndarray | None = None) -> list[str | None]:
        """Why each image went to review (one of ``REASONS``), None for the others. Out of
        distribution comes first: it is the reason a confident score cannot be trusted."""
        outside = self.out_of_distribution(ood_scores)
        in_band = NEAR_THRESHOLD if self.positive else LOW_CONFIDENCE
        return [
            None
            if code != self.review_code
            else (OUT_OF_DISTRIBUTION if outside is not None and outside[index] else in_band)
            for index, code in enumerate(np.asarray(codes).tolist())
        ]

    def as_metadata(self, class_names: list[str]) -> dict[str, Any]:
        described = {
            "names": list(self.names),
            "positive_classes": [class_names[index] for index in self.positive],
            "score": "sum of the positive classes' probabilities" if self.positive else "top-class probability",
            "threshold": self.threshold,
            "review_band": [self.lower, self.upper],
            "review_reasons": [OUT_OF_DISTRIBUTION] * (self.ood_threshold is not None)
            + [NEAR_THRESHOLD if self.positive else LOW_CONFIDENCE],
        }
        if self.ood_threshold is not None:
            described["out_of_distribution"] = {"output": OOD_OUTPUT, "above": self.ood_threshold, "decision": REVIEW}
        return described

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], class_names: list[str]) -> DecisionRule:
        lower, upper = metadata["review_band"]
        positive = tuple(class_names.index(name) for name in metadata["positive_classes"])
        ood = metadata.get("out_of_distribution")  # absent in a model exported before OOD scores
        ood_threshold = None if ood is None else float(ood["above"])
        return cls(positive, float(lower), float(upper), float(metadata["threshold"]), ood_threshold)
