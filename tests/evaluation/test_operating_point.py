"""The operating point and review band: chosen on validation as promised, checked against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import binomtest

from transferkit.config import DecisionParams, ReviewParams
from transferkit.decision import DecisionRule
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.operating_point import (
    choose_band,
    choose_confidence,
    choose_rule,
    choose_threshold,
    decision_figures,
    lower_bound,
    positive_classes,
    upper_bound,
)


def _binary(count: int, seed: int, separation: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated-looking binary probabilities with overlapping classes, a third positive."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(count) < 1 / 3).astype(np.int64)
    score = 1 / (1 + np.exp(-(rng.normal(size=count) + separation * (2 * labels - 1))))
    return np.stack([1 - score, score], 1), labels


def test_bounds_are_the_one_sided_clopper_pearson_bounds() -> None:
    counts = np.array([0, 70, 80])
    expected = [binomtest(k, 80, alternative="greater").proportion_ci(0.9).low for k in counts]
    np.testing.assert_allclose(lower_bound(counts, 80, 0.9), expected, atol=1e-9)
    expected = [binomtest(k, 80, alternative="less").proportion_ci(0.9).high for k in counts]
    np.testing.assert_allclose(upper_bound(counts, 80, 0.9), expected, atol=1e-9)


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.95])
def test_threshold_is_the_highest_whose_recall_bound_meets_the_target(confidence: float) -> None:
    probabilities, labels = _binary(300, 0)
    scores, positive = probabilities[:, 1], labels == 1
    threshold, met = choose_threshold(scores, positive, DecisionParams(target_recall=0.9, confidence=confidence))
    assert met
    caught = int((scores[positive] >= threshold).sum())
    assert lower_bound(np.array([caught]), positive.sum(), confidence)[0] >= 0.9
    # Any higher threshold loses a positive, and with it the bound.
    higher = scores[positive][scores[positive] > threshold]
    if len(higher):
        assert lower_bound(np.array([caught - 1]), positive.sum(), confidence)[0] < 0.9


def test_more_confidence_means_a_lower_threshold() -> None:
    probabilities, labels = _binary(300, 1)
    thresholds = [
        choose_threshold(probabilities[:, 1], labels == 1, DecisionParams(confidence=c))[0] for c in (0.5, 0.8, 0.95)
    ]
    assert thresholds[0] > thresholds[1] > thresholds[2]


def test_false_alarm_target_flags_at_most_what_its_bound_allows() -> None:
    probabilities, labels = _binary(300, 2)
    scores, positive = probabilities[:, 1], labels == 1
    params = DecisionParams(target_recall=None, target_false_alarm=0.1, confidence=0.8)
    threshold, met = choose_threshold(scores, positive, params)
    alarms = int((scores[~positive] >= threshold).sum())
    assert met and upper_bound(np.array([alarms]), (~positive).sum(), 0.8)[0] <= 0.1
    assert upper_bound(np.array([alarms + 1]), (~positive).sum(), 0.8)[0] > 0.1  # the lowest such threshold


def test_too_few_positives_for_the_target_is_reported_not_hidden() -> None:
    probabilities, labels = _binary(30, 3)
    labels[:] = 0
    labels[:4] = 1  # four positives: even catching all, a 0.5 bound on recall is 0.5 ** (1/4) < 0.95
    threshold, met = choose_threshold(probabilities[:, 1], labels == 1, DecisionParams())
    assert not met and threshold == probabilities[:4, 1].min()


def _brute_force_band(scores: np.ndarray, positive: np.ndarray, threshold: float, target: float) -> float:
    """The best coverage over every (lower, upper) pair of thresholds, by counting."""
    cuts = np.unique(np.concatenate([scores, np.nextafter(scores, np.inf), [threshold]]))
    best = 0.0
    for lower, upper in itertools.product(cuts[cuts <= threshold], cuts[cuts >= threshold]):
        passed, flagged = scores < lower, scores >= upper
        auto = passed.sum() + flagged.sum()
        if auto and ((passed & ~positive).sum() + (flagged & positive).sum()) / auto >= target:
            best = max(best, auto / len(scores))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_review_band_is_the_widest_automatic_share_at_the_target_accuracy(seed: int) -> None:
    probabilities, labels = _binary(60, seed, separation=1.5)
    scores, positive = probabilities[:, 1], labels == 1
    threshold = float(np.median(scores))
    lower, upper, met = choose_band(scores, positive, threshold, ReviewParams(target_accuracy=0.95))
    assert met and lower <= threshold <= upper
    rule = DecisionRule((1,), lower, upper, threshold)
    figures = decision_figures(rule, probabilities, labels)
    assert figures["auto_accuracy"]["value"] >= 0.95
    assert 1 - figures["review"]["value"] == pytest.approx(_brute_force_band(scores, positive, threshold, 0.95))


def test_review_fraction_limit_is_kept() -> None:
    probabilities, labels = _binary(200, 4, separation=1.0)
    scores, positive = probabilities[:, 1], labels == 1
    threshold = float(np.median(scores))
    lower, upper, _ = choose_band(scores, positive, threshold, ReviewParams(target_accuracy=None, max_fraction=0.2))
    review = ((scores >= lower) & (scores < upper)).mean()
    assert review <= 0.2
    narrower = choose_band(scores, positive, threshold, ReviewParams(target_accuracy=None, max_fraction=0.05))
    assert ((scores >= narrower[0]) & (scores < narrower[1])).mean() <= 0.05


def test_no_review_settings_means_no_band() -> None:
    probabilities, labels = _binary(100, 5)
    choice = choose_rule(probabilities, labels, (1,), DecisionParams(review=ReviewParams(target_accuracy=None)))
    assert choice.rule.lower == choice.rule.threshold == choice.rule.upper
    assert decision_figures(choice.rule, probabilities, labels)["review"]["count"] == 0


def test_without_positive_classes_confidence_alone_decides() -> None:
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(200, 4)) * 2
    labels = np.where(rng.random(200) < 0.7, logits.argmax(1), rng.integers(0, 4, 200))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cut, met = choose_confidence(probabilities, labels, ReviewParams(target_accuracy=0.9))
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    accepted = confidence >= cut
    assert met and correct[accepted].mean() >= 0.9
    # The lowest such cut: accepting the next less confident cell too breaks the target.
    below = confidence[confidence < cut]
    if len(below):
        wider = confidence >= below.max()
        assert correct[wider].mean() < 0.9
    choice = choose_rule(probabilities, labels, (), DecisionParams())
    assert choice.rule.names == ("accept", "review") and set(decision_figures(choice.rule, probabilities, labels)) == {
        "review",
        "auto_accuracy",
    }


def test_figures_carry_exact_intervals_and_the_band_only_catches_more() -> None:
    probabilities, labels = _binary(400, 7)
    choice = choose_rule(probabilities[:150], labels[:150], (1,), DecisionParams())
    figures = decision_figures(choice.rule, probabilities[150:], labels[150:])
    for name, figure in figures.items():
        assert figure["low"] <= figure["value"] <= figure["high"], name
        assert figure["value"] == figure["count"] / figure["of"]
    assert figures["missed"]["count"] <= figures["recall"]["of"] - figures["recall"]["count"]
    assert figures["false_flags"]["count"] <= figures["false_alarm"]["count"]


def test_a_validation_split_without_positives_is_a_clear_error() -> None:
    probabilities, labels = _binary(50, 8)
    with pytest.raises(DataError, match="validation split has 0 of 50 images in the positive classes"):
        choose_rule(probabilities, np.zeros_like(labels), (1,), DecisionParams())


def test_positive_classes_auto_and_named() -> None:
    four = ["functional", "possibly_defective", "likely_defective", "defective"]
    assert positive_classes("auto", "elpv", ["functional", "defective"]) == (1,)
    assert positive_classes("auto", "elpv", four) == (1, 2, 3)
    assert positive_classes("auto", "imagefolder", ["cat", "dog"]) == ()
    assert positive_classes(["defective", "likely_defective"], "elpv", four) == (2, 3)
    with pytest.raises(ConfigError, match="not classes of this data"):
        positive_classes(["scratched"], "imagefolder", ["ok", "bad"])
    with pytest.raises(ConfigError, match="every class"):
        positive_classes(["ok", "bad"], "imagefolder", ["ok", "bad"])
