"""The operating point and review band, chosen on validation and measured on test with intervals.

Validation is small (ELPV: about 80 defective cells), so a threshold read off its recall curve
at exactly the target would miss the target on new data about half the time, and more for the
points the curve is steepest at. The threshold is instead the highest one whose one-sided
Clopper-Pearson bound, at ``decision.confidence``, meets the target (for a false-alarm target:
the lowest whose upper bound does). The review band is then the widest split of validation
cells into automatic decisions that reaches ``review.target_accuracy`` on them, searched over
every pair of validation scores around the threshold; that is a point estimate, reported as such.

Test figures carry exact (Clopper-Pearson) 95 % intervals from scipy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta, binomtest

from transferkit.config import DecisionParams, ReviewParams
from transferkit.decision import DecisionRule
from transferkit.errors import ConfigError, DataError

ELPV_NEGATIVE = "functional"
MAX_CANDIDATES = 2000  # per side of the band search: validation sets past this are searched on quantiles


def positive_classes(setting: str | list[str], source: str, class_names: Sequence[str]) -> tuple[int, ...]:
    """Indices of the classes whose summed probability is the score (``decision.positive``)."""
    if setting == "auto":
        if source != "elpv":
            return ()
        return tuple(i for i, name in enumerate(class_names) if name != ELPV_NEGATIVE)
    unknown = sorted(set(setting) - set(class_names))
    if unknown:
        raise ConfigError(f"decision.positive names {unknown}, which are not classes of this data: {list(class_names)}")
    if len(set(setting)) == len(class_names):
        raise ConfigError("decision.positive lists every class: leave at least one out, or use [] for none")
    return tuple(sorted(class_names.index(name) for name in setting))


def proportion(count: int, total: int) -> dict[str, Any]:
    """``count`` of ``total`` with its exact 95 % interval; ``value`` None when there is nothing to count."""
    if total == 0:
        return {"value": None, "low": None, "high": None, "count": 0, "of": 0}
    interval = binomtest(count, total).proportion_ci(confidence_level=0.95, method="exact")
    return {"value": count / total, "low": interval.low, "high": interval.high, "count": count, "of": total}


def lower_bound(count: np.ndarray, total: int, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of count/total at ``confidence``."""
    bound = beta.ppf(1 - confidence, np.maximum(count, 1), total - count + 1)
    return np.where(count == 0, 0.0, bound)


def upper_bound(count: np.ndarray, total: int, confidence: float) -> np.ndarray:
    bound = beta.ppf(confidence, count + 1, np.maximum(total - count, 1))
    return np.where(count == total, 1.0, bound)


@dataclass(frozen=True)
class Choice:
    """A rule and whether validation could meet what was asked of it."""

    rule: DecisionRule
    threshold_met: bool
    band_met: bool


def _candidates(scores: np.ndarray) -> np.ndarray:
    """Thresholds that matter: each score (>= includes it) and just above it (excludes it)."""
    unique = np.unique(scores)
    return np.unique(np.concatenate([[0.0], unique, np.nextafter(unique, np.inf)]))


def choose_threshold(scores: np.ndarray, positive: np.ndarray, params: DecisionParams) -> tuple[float, bool]:
    """The operating point on validation ``scores`` (``positive``: the cells of the positive
    classes); False when even the most extreme threshold misses the target's bound."""
    candidates = _candidates(scores)
    if params.target_recall is not None:
        positives = np.sort(scores[positive])
        caught = len(positives) - np.searchsorted(positives, candidates, side="left")
        meets = lower_bound(caught, len(positives), params.confidence) >= params.target_recall
        return (float(candidates[meets].max()), True) if meets.any() else (float(positives.min()), False)
    negatives = np.sort(scores[~positive])
    alarms = len(negatives) - np.searchsorted(negatives, candidates, side="left")
    meets = upper_bound(alarms, len(negatives), params.confidence) <= params.target_false_alarm
    return (
        (float(candidates[meets].min()), True) if meets.any() else (float(np.nextafter(negatives.max(), np.inf)), False)
    )


def _thinned(values: np.ndarray) -> np.ndarray:
    if len(values) <= MAX_CANDIDATES:
        return values
    return np.unique(np.quantile(values, np.linspace(0, 1, MAX_CANDIDATES)))


def _pick(coverage: np.ndarray, accuracy: np.ndarray, review: ReviewParams) -> tuple[int, bool] | None:
    """Index of the best band among the flattened candidates, and whether it met the target."""
    allowed = np.ones_like(coverage, dtype=bool)
    if review.max_fraction is not None:
        allowed &= 1 - coverage <= review.max_fraction + 1e-12
    accuracy = np.nan_to_num(accuracy, nan=-1.0)
    if review.target_accuracy is None:
        if not allowed.any():
            return None
        return int(np.lexsort((coverage, np.where(allowed, accuracy, -2.0)))[-1]), True
    feasible = allowed & (accuracy >= review.target_accuracy)
    if not feasible.any():
        return None
    return int(np.lexsort((accuracy, np.where(feasible, coverage, -1.0)))[-1]), True


def choose_band(
    scores: np.ndarray, positive: np.ndarray, threshold: float, review: ReviewParams
) -> tuple[float, float, bool]:
    """``(lower, upper, met)``: pass below lower, flag at or above upper, with lower <= threshold <= upper."""
    if review.target_accuracy is None and review.max_fraction is None:
        return threshold, threshold, True
    candidates = _thinned(_candidates(scores))
    lowers = np.append(candidates[candidates <= threshold], threshold)
    uppers = np.append(candidates[candidates >= threshold], threshold)
    order = np.argsort(scores)
    ranked, ranked_positive = scores[order], positive[order]
    below = np.searchsorted(ranked, lowers, side="left")  # cells passed at each lower
    at_or_above = np.searchsorted(ranked, uppers, side="left")
    negatives_cum = np.concatenate([[0], np.cumsum(~ranked_positive)])
    positives_cum = np.concatenate([[0], np.cumsum(ranked_positive)])
    passed, passed_right = below, negatives_cum[below]
    flagged = len(scores) - at_or_above
    flagged_right = positives_cum[-1] - positives_cum[at_or_above]
    auto = passed[:, None] + flagged[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = (passed_right[:, None] + flagged_right[None, :]) / auto
    picked = _pick((auto / len(scores)).ravel(), accuracy.ravel(), review)
    if picked is None:
        return threshold, threshold, False
    index, met = picked
    row, column = np.unravel_index(index, auto.shape)
    return float(lowers[row]), float(uppers[column]), met


def choose_confidence(probabilities: np.ndarray, labels: np.ndarray, review: ReviewParams) -> tuple[float, bool]:
    """Without positive classes: the lowest top-class confidence acted on automatically."""
    if review.target_accuracy is None and review.max_fraction is None:
        return 0.0, True
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    candidates = _thinned(_candidates(confidence))
    order = np.argsort(-confidence, kind="stable")  # the k most confident are those accepted at a cut
    accepted = len(confidence) - np.searchsorted(np.sort(confidence), candidates, side="left")
    right = np.concatenate([[0], np.cumsum(correct[order])])[accepted]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = right / accepted
    picked = _pick(accepted / len(confidence), accuracy, review)
    if picked is None:
        return 1.0, False
    return float(candidates[picked[0]]), picked[1]


def choose_rule(
    probabilities: np.ndarray, labels: np.ndarray, positive: tuple[int, ...], params: DecisionParams
) -> Choice:
    """The decision rule from validation's calibrated ``probabilities`` and ``labels``."""
    if not positive:
        cut, met = choose_confidence(probabilities, labels, params.review)
        return Choice(DecisionRule((), cut, cut, cut), True, met)
    rule = DecisionRule(positive, 0.0, 0.0, 0.0)
    scores = rule.scores(probabilities).astype(np.float64)
    is_positive = np.isin(labels, positive)
    if is_positive.all() or not is_positive.any():
        raise DataError(
            f"the validation split has {int(is_positive.sum())} of {len(labels)} images in the positive classes "
            "(decision.positive), so no threshold can be chosen on it: it needs both kinds; add labelled images, "
            "raise data.split.val, or set decision.positive: [] for the review band alone"
        )
    threshold, threshold_met = choose_threshold(scores, is_positive, params)
    lower, upper, band_met = choose_band(scores, is_positive, threshold, params.review)
    return Choice(DecisionRule(positive, lower, upper, threshold), threshold_met, band_met)


def decision_figures(rule: DecisionRule, probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """What the rule does on one split, every rate with its count and exact 95 % interval.

    With positive classes, ``recall``, ``false_alarm`` and ``flagged`` are the operating point's
    (threshold alone, no review band); ``missed`` (positives passed) and ``false_flags``
    (negatives flagged) are the three-way decision's. ``review`` and ``auto_accuracy`` (on the
    cells not sent to review) apply to every rule.
    """
    decision = rule.decide(probabilities)
    review_code = rule.names.index("review")
    automatic = decision != review_code
    if rule.positive:
        is_positive = np.isin(labels, rule.positive)
        over = rule.scores(probabilities) >= rule.threshold
        correct = np.where(decision == 1, is_positive, ~is_positive)
        positives, negatives = int(is_positive.sum()), int((~is_positive).sum())
        figures = {
            "recall": proportion(int((over & is_positive).sum()), positives),
            "false_alarm": proportion(int((over & ~is_positive).sum()), negatives),
            "flagged": proportion(int(over.sum()), len(labels)),
            "missed": proportion(int(((decision == 0) & is_positive).sum()), positives),
            "false_flags": proportion(int(((decision == 1) & ~is_positive).sum()), negatives),
        }
    else:
        correct = probabilities.argmax(1) == labels
        figures = {}
    return {
        **figures,
        "review": proportion(int((~automatic).sum()), len(labels)),
        "auto_accuracy": proportion(int((correct & automatic).sum()), int(automatic.sum())),
    }


def operating_point_metrics(
    choice: Choice,
    class_names: Sequence[str],
    params: DecisionParams,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, Sequence[str]],
) -> dict[str, Any]:
    """metrics.json's ``decision``: the rule, how it was chosen, and its figures on val, test
    and each test slice (``test``: probabilities, labels, groups)."""
    probabilities, labels, groups = test
    group_array = np.asarray(groups)
    target = (
        {"recall": params.target_recall}
        if params.target_recall is not None
        else {"false_alarm": params.target_false_alarm}
    )
    return {
        "rule": choice.rule.as_metadata(list(class_names)),
        "chosen_on": "val",
        "target": {**target, "confidence": params.confidence, **params.review.model_dump()},
        "threshold_met_on_val": choice.threshold_met,
        "band_met_on_val": choice.band_met,
        "val": decision_figures(choice.rule, *val),
        "test": decision_figures(choice.rule, probabilities, labels),
        "slices": {
            group: decision_figures(choice.rule, probabilities[mask], labels[mask])
            for group in sorted(set(groups))
            for mask in [group_array == group]
        },
    }
