"""`transferkit tune`: the search space is refused before any trial runs when a value could not make valid
params, and a real Optuna search on Dask (shrunk config) prunes, keeps its journal and writes its report."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, run_tool, shrunk_params, shrunk_raw
from transferkit.config import load_params, parse_params
from transferkit.errors import ConfigError
from transferkit.stages import prepare
from transferkit.tuning.report import exp_run_command
from transferkit.tuning.search import check_space

TRANSFERKIT = [sys.executable, "-m", "transferkit.cli"]


@pytest.mark.slow
def test_search_prunes_a_hopeless_trial_writes_best_params_and_continues(
    tmp_path: Path, elpv_subset: Path, prefect_env
) -> None:
    params = shrunk_params(tmp_path)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "elpv").symlink_to(elpv_subset)
    prepare.run(params)
    raw = params.model_dump(mode="json")
    raw["tune"] = {
        "space": {
            "train.lr": {"low": 1e-7, "high": 1e-2, "log": True},
            "train.label_smoothing": {"choices": [0.0, 0.1]},
        },
        # trial 0 learns, trial 1 cannot (lr 1e-7): the median pruner stops it early
        "enqueue": [{"train.lr": 1e-3, "train.label_smoothing": 0.1}, {"train.lr": 1e-7, "train.label_smoothing": 0.1}],
        "trials": 3,
        "startup_trials": 1,
        "prune_after_epochs": 0,
        "overrides": {"train.strategy": "linear", "train.epochs": 3, "train.selection_metric": "loss"},
        "root": str(tmp_path / "tune"),
    }
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(raw, sort_keys=False))

    run = run_tool([*TRANSFERKIT, "tune", "-p", str(file)], REPO, env=prefect_env)
    assert "tune-trials" in run.stderr + run.stdout  # the trials ran as a Prefect flow
    rows = list(csv.DictReader((tmp_path / "tune" / "trials.csv").open()))
    assert [row["trial"] for row in rows] == ["0", "1", "2"]
    assert rows[1]["state"] == "PRUNED" and int(rows[1]["epochs"]) < 3  # stopped before its last epoch
    assert rows[0]["state"] == "COMPLETE" and rows[0]["epochs"] == "3"
    best = yaml.safe_load((tmp_path / "tune" / "best_params.yaml").read_text())
    completed = {float(r["score"]): r for r in rows if r["state"] == "COMPLETE"}
    assert best["train"]["lr"] == pytest.approx(float(completed[max(completed)]["train.lr"]))
    assert f"dvc exp run -S train.lr={best['train']['lr']}" in " ".join((run.stdout + run.stderr).split())
    overrides = {f"train.{key}": value for key, value in best["train"].items()}
    assert load_params(file, overrides).train.lr == best["train"]["lr"]  # the file applies as params
    assert (tmp_path / "tune" / "optimization_history.png").stat().st_size > 5_000

    more = run_tool([*TRANSFERKIT, "tune", "-p", str(file), "-S", "tune.trials=4"], REPO, env=prefect_env)
    assert "3 trials finished, 1 to run" in more.stdout + more.stderr  # the journal carries the study on
    assert len(list(csv.DictReader((tmp_path / "tune" / "trials.csv").open()))) == 4


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
