"""The study's results store and statistics: which record matches which cell, tamper checks, and the
bootstrap's metrics against scikit-learn's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tests.helpers import record_of
from transferkit.config import parse_params
from transferkit.errors import DataError
from transferkit.study import stats
from transferkit.study.store import decode_labels, encode_labels, find, identity_key, verify


def test_a_record_matches_only_the_params_it_ran_with() -> None:
    record = record_of({})
    assert find([record], record["name"], parse_params({})) is record
    assert find([record], record["name"], parse_params({"train": {"epochs": 3}})) is None
    assert find([record], "2class-finetune-f1-s1", parse_params({})) is None


def test_a_param_added_later_at_its_default_keeps_the_record() -> None:
    """Records written before ``train.label_smoothing`` existed still match while it is at its default."""
    old = record_of({})
    del old["params"]["train"]["label_smoothing"]
    old["key"] = identity_key(old["params"])
    assert find([old], old["name"], parse_params({})) is old
    assert find([old], old["name"], parse_params({"train": {"label_smoothing": 0.0}})) is None


def test_the_newest_matching_record_wins() -> None:
    older, newer = record_of({}, "2026-11-23T10:00:00+00:00"), record_of({}, "2026-11-24T10:00:00+00:00")
    assert find([newer, older], older["name"], parse_params({})) is newer


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["metrics"].update(accuracy=0.9), "its predictions give 0.800000"),
        (lambda r: r["params"]["train"].update(epochs=99), "its params hash to"),
    ],
)
def test_an_edited_record_is_refused_with_what_to_do(edit, message: str) -> None:
    record = copy.deepcopy(record_of({}))
    verify(record)
    edit(record)
    with pytest.raises(DataError, match=message) as error:
        verify(record)
    assert "restore it from git" in str(error.value)


def test_labels_round_trip_through_the_digit_string() -> None:
    labels = np.array([0, 3, 2, 1, 0])
    assert encode_labels(labels) == "03210"
    assert decode_labels("03210").tolist() == labels.tolist()


def test_bootstrap_metrics_equal_scikit_learn_and_the_interval_holds_the_estimate() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    runs = [np.where(rng.random(300) < 0.7, labels, rng.integers(0, 4, 300)) for _ in range(3)]
    identity_idx = np.arange(300)[None, :]
    for run in runs:
        assert stats.macro_f1(labels, run, 4) == pytest.approx(f1_score(labels, run, average="macro"))
    mean_accuracy = np.mean([(run == labels).mean() for run in runs])
    assert stats.seed_mean(labels, runs, 4, "accuracy", identity_idx)[0] == pytest.approx(mean_accuracy)
    interval = stats.interval(stats.seed_mean(labels, runs, 4, "accuracy", stats.resample_indices(300)))
    assert interval.low < mean_accuracy < interval.high
    assert interval.high - interval.low < 0.15  # 300 images x 3 seeds: a few points, not a coin toss
