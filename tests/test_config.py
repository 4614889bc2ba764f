"""params.yaml validation: every mistake is named with its key and the allowed values."""

from __future__ import annotations

import itertools
import re
import shlex

import pytest
import yaml

from tests.helpers import REPO, run_tool
from transferkit.cli.common import parse_sets
from transferkit.config import Params, load_params, parse_params
from transferkit.errors import ConfigError


def test_repository_params_file_is_valid_and_complete() -> None:
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # Every section in the file round-trips, i.e. nothing in params.yaml is silently ignored.
    assert params.model_dump(mode="json").keys() == raw.keys()
    assert params.train.strategy in {"linear", "finetune", "gradual", "scratch"}


def test_params_file_and_code_defaults_are_one_recipe() -> None:
    """A library caller (``Params()``) gets exactly the pipeline's recipe, key for key."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    in_file = load_params(REPO / "params.yaml").model_dump(mode="json")  # the file's values, validated
    defaults = Params().model_dump(mode="json")
    differing = {
        f"{section}.{key}": (value, in_file[section][key] if key in raw.get(section, {}) else "(missing)")
        for section, values in defaults.items()
        for key, value in values.items()
        if key not in raw.get(section, {}) or in_file[section][key] != value
    }
    assert not differing, f"params.yaml vs config.py defaults (code, file): {differing}"


def documented_experiments() -> list[list[str]]:
    """The ``-S`` items of every ``dvc exp run`` that the README, the docs and params.yaml print."""
    files = [REPO / "README.md", REPO / "params.yaml", *sorted((REPO / "docs").glob("*.md"))]
    commands = [m for f in files for m in re.findall(r"dvc exp run ([^`\n]*-S[^`\n]*)", f.read_text())]
    sets = []
    for command in commands:
        words = shlex.split(command.rstrip("\\ "))
        pairs = itertools.pairwise(words)
        sets.append([value for flag, value in pairs if flag in ("-S", "--set-param") and "=" in value])
    return [items for items in sets if items]  # prose such as "`dvc exp run -S ...`" names no params


def test_every_documented_experiment_names_valid_params() -> None:
    """A preset in the docs (the GPU recipe, "best") must still run when a param is renamed or narrowed."""
    experiments = documented_experiments()
    assert len(experiments) >= 3, experiments
    for sets in experiments:
        load_params(REPO / "params.yaml", parse_sets(sets))  # raises ConfigError naming the key


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    return str(info.value)


def test_unknown_key_is_named_with_the_allowed_keys() -> None:
    message = _error({"train": {"epoch": 3}})
    assert "train.epoch: unknown key" in message
    assert "epochs" in message and "strategy" in message


def test_unknown_section_is_named() -> None:
    assert "trainer: unknown key" in _error({"trainer": {}})


def test_unknown_strategy_lists_the_choices() -> None:
    message = _error({"train": {"strategy": "finetuning"}})
    assert "train.strategy" in message
    for choice in ("linear", "finetune", "gradual", "scratch"):
        assert choice in message


def test_unknown_architecture_lists_the_choices() -> None:
    message = _error({"model": {"architecture": "resnet101"}})
    assert "model.architecture" in message and "efficientnet_lite0" in message and "resnet18" in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"lr": -1e-3}}, "train.lr"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"data": {"image_size": 8}}, "data.image_size"),
        ({"gate": {"min_accuracy": 1.5}}, "gate.min_accuracy"),
        ({"decision": {"target_recall": 1.0}}, "decision.target_recall"),
        ({"decision": {"confidence": 0.3}}, "decision.confidence"),
        ({"decision": {"review": {"target_accuracy": 0}}}, "decision.review.target_accuracy"),
    ],
)
def test_impossible_values_name_their_key(raw: dict, key: str) -> None:
    assert key in _error(raw)


def test_split_fractions_must_sum_to_one() -> None:
    message = _error({"data": {"split": {"train": 0.7, "val": 0.2, "test": 0.25}}})
    assert "data.split" in message and "sum to 1" in message


def test_decision_needs_exactly_one_target() -> None:
    assert "exactly one of decision.target_recall" in _error({"decision": {"target_recall": None}})
    assert "exactly one" in _error({"decision": {"target_false_alarm": 0.1}})


def test_scratch_cannot_freeze_units() -> None:
    assert "frozen_units must be 0" in _error({"train": {"strategy": "scratch", "frozen_units": 3}})


def test_overrides_use_dotted_keys(tmp_path) -> None:
    file = tmp_path / "params.yaml"
    file.write_text((REPO / "params.yaml").read_text())
    params = load_params(file, {"train.epochs": 3, "train.augment.preset": "none"})
    assert params.train.epochs == 3 and params.train.augment.preset == "none"


def test_replaced_keys_say_what_replaced_them() -> None:
    message = _error({"train": {"cache_views": 8, "ema_decay": 0.99}})
    assert "train.cache_views: unknown key (the cached views follow train.augment.preset now)" in message
    assert "use train.ema_epochs" in message


def test_missing_file_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_section_hash_changes_with_its_section_only() -> None:
    base = Params()
    changed_train = parse_params({"train": {"epochs": 99}})
    assert base.section_hash("data") == changed_train.section_hash("data")
    assert base.section_hash("train") != changed_train.section_hash("train")


def test_cli_check_params_exits_non_zero_with_the_message(tmp_path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  strategy: magic\n")
    result = run_tool(["transferkit", "check-params", "--params", str(bad)], tmp_path, check=False)
    assert result.returncode == 2
    assert "train.strategy" in result.stderr and "finetune" in result.stderr


def test_scratch_needs_random_weights() -> None:
    message = _error({"train": {"strategy": "scratch", "frozen_units": 0}})
    assert "model.weights: none" in message
    parse_params({"train": {"strategy": "scratch", "frozen_units": 0}, "model": {"weights": "none"}})
