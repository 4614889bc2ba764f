"""The search space is refused before any trial runs when a value could not make valid params."""

from __future__ import annotations

import pytest

from tests.helpers import shrunk_raw
from transferkit.config import parse_params
from transferkit.errors import ConfigError
from transferkit.tuning.report import exp_run_command
from transferkit.tuning.search import check_space


def params_with_space(space: dict[str, object], **tune: object):
    raw = shrunk_raw()
    raw["tune"] = {"space": space, **tune}
    return parse_params(raw)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"data.image_size": {"low": 64, "high": 128}}, r"only train\.\*/model\.\* keys can be tuned"),
        ({"train.lr": {"low": 0.01, "high": 0.001}}, "low < high"),
        ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
        ({"train.lr": {"low": 0.001, "high": 0.1, "choices": [0.01]}}, "either non-empty choices or low and high"),
    ],
)
def test_badly_shaped_dimensions_are_refused_on_load(space: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        params_with_space(space)


def test_a_value_the_pipeline_refuses_is_named_before_any_trial() -> None:
    with pytest.raises(ConfigError, match=r"tune.space \(train.strategy = 'bogus'\)"):
        check_space(params_with_space({"train.strategy": {"choices": ["linear", "bogus"]}}))
    with pytest.raises(ConfigError, match=r"train\.lr_typo is not a parameter"):
        check_space(params_with_space({"train.lr_typo": {"low": 0.1, "high": 0.2}}))
    with pytest.raises(ConfigError, match=r"outside tune\.space"):
        params_with_space({"train.lr": {"low": 0.001, "high": 0.1}}, enqueue=[{"train.epochs": 3}])
    check_space(params_with_space({"train.epochs": {"low": 2, "high": 6}, "model.dropout": {"choices": [0.1, 0.3]}}))


def test_the_printed_command_sets_each_value_for_dvc() -> None:
    command = exp_run_command({"train.lr": 0.00123, "train.strategy": "gradual", "train.frozen_units": 8})
    assert command == "dvc exp run -S train.lr=0.00123 -S train.strategy=gradual -S train.frozen_units=8"
